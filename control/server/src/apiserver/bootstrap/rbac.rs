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
/// `system:basic-user` (ask "who am I") for every authenticated user.
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
            json!([{"apiGroups": ["", "apps", "discovery.k8s.io", "coordination.k8s.io"],
            "resources": ["pods", "pods/status", "services", "endpoints", "endpointslices", "configmaps", "deployments",
                          "deployments/scale", "replicasets", "replicasets/scale", "events", "namespaces", "serviceaccounts", "leases"],
            "verbs": read}]),
        ),
        (
            "system:node",
            json!([
            {"apiGroups": [""], "resources": ["pods", "services", "endpoints", "nodes", "configmaps", "secrets", "namespaces"], "verbs": read},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
            {"apiGroups": [""], "resources": ["nodes", "nodes/status", "pods/status"], "verbs": ["create", "update", "patch"]},
            // Mirror pods of static pods, and the final delete of pods it stopped.
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "update", "patch"]},
            // The tokens of pods' projected ServiceAccount token volumes.
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "patch"]}]),
        ),
        (
            "system:basic-user",
            json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]),
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
