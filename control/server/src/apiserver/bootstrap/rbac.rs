//! The bootstrap RBAC policy, reconciled on every start.

use serde_json::json;

use super::super::meta;
use super::super::resources::by_kind;
use super::super::status::ApiResult;
use super::reconcile::put;
use crate::store;

/// Bootstrap RBAC policy, reconciled on every start: `cluster-admin` for
/// `system:masters`, `view` for read-only users to bind, `system:node` for the node
/// agents (group `system:nodes`; their client certificates carry `O=system:nodes`), and
/// `system:basic-user` (ask "who am I" and "may I") for every authenticated user.
pub(super) async fn bootstrap_rbac(store: &dyn store::Store) -> ApiResult<()> {
    const G: &str = "rbac.authorization.k8s.io";
    let read = json!(["get", "list", "watch"]);
    let meta = |name: &str| {
        json!({"name": name, "uid": meta::new_uid(), "creationTimestamp": meta::now(),
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}})
    };
    let roles = [
        (
            "cluster-admin",
            json!([
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ),
        (
            "view",
            json!([{"apiGroups": ["", "apps", "batch", "discovery.k8s.io", "coordination.k8s.io", "networking.k8s.io",
                          "policy", "autoscaling", "events.k8s.io"],
            "resources": ["pods", "pods/status", "services", "endpoints", "endpointslices", "configmaps", "deployments",
                          "deployments/scale", "replicasets", "replicasets/scale", "events", "namespaces", "serviceaccounts", "leases",
                          "statefulsets", "statefulsets/scale", "controllerrevisions", "daemonsets", "jobs", "cronjobs",
                          "persistentvolumeclaims", "resourcequotas", "limitranges", "ingresses", "networkpolicies",
                          "poddisruptionbudgets", "horizontalpodautoscalers"],
            "verbs": read},
            // What upstream's metrics-server aggregates into view (`kubectl top`).
            {"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"], "verbs": read}]),
        ),
        (
            "system:node",
            json!([
            // Secrets, ConfigMaps, PVCs and ServiceAccount tokens: only those of the node's
            // own pods, which the node authorizer (`auth::node`) grants, not RBAC.
            // pods/status: what `kubectl patch --subresource=status` reads first.
            {"apiGroups": [""], "resources": ["pods", "pods/status", "services", "endpoints", "nodes", "namespaces"], "verbs": read},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
            {"apiGroups": [""], "resources": ["nodes", "nodes/status", "pods/status"], "verbs": ["create", "update", "patch"]},
            // Creates: mirror pods only (`auth::node::admit_create`).
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "update", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "patch"]},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get", "list", "watch"]}]),
        ),
        (
            "system:node-bootstrapper",
            json!([{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"],
            "verbs": ["create", "get", "list", "watch"]}]),
        ),
        // What the approver asks before approving a kubelet client request (upstream names).
        (
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!([{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/nodeclient"], "verbs": ["create"]}]),
        ),
        (
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!([{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/selfnodeclient"], "verbs": ["create"]}]),
        ),
        (
            "system:basic-user",
            json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
                   {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]}]),
        ),
    ];
    let role_def = by_kind("ClusterRole").unwrap();
    for (name, rules) in roles {
        let obj =
            json!({"kind": "ClusterRole", "apiVersion": format!("{G}/v1"), "metadata": meta(name), "rules": rules});
        put(store, &role_def.key(None, name), &obj).await?;
    }
    let binding_def = by_kind("ClusterRoleBinding").unwrap();
    let subject = |kind: &str, name: &str| json!([{"apiGroup": G, "kind": kind, "name": name}]);
    let controllers = json!([
        {"apiGroup": G, "kind": "User", "name": crate::auth::CONTROLLER_USER},
        {"apiGroup": G, "kind": "User", "name": crate::auth::SCHEDULER_USER}]);
    for (name, role, subjects) in [
        ("cluster-admin", "cluster-admin", subject("Group", "system:masters")),
        ("system:node", "system:node", subject("Group", "system:nodes")),
        ("system:basic-user", "system:basic-user", subject("Group", crate::auth::AUTHENTICATED)),
        // Bootstrap tokens may ask for a node certificate, which is then approved at once;
        // nodes may renew their own.
        ("system:node-bootstrapper", "system:node-bootstrapper", subject("Group", crate::auth::bootstrap_token::GROUP)),
        (
            "system:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            subject("Group", crate::auth::bootstrap_token::GROUP),
        ),
        (
            "system:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            subject("Group", "system:nodes"),
        ),
        // The in-process scheduler and controllers own most kinds; rather than one role
        // per controller (as upstream), one binding to cluster-admin, named for them.
        ("system:skiff-controllers", "cluster-admin", controllers),
    ] {
        let obj = json!({"kind": "ClusterRoleBinding", "apiVersion": format!("{G}/v1"), "metadata": meta(name),
            "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": role},
            "subjects": subjects});
        put(store, &binding_def.key(None, name), &obj).await?;
    }
    Ok(())
}
