//! What a node may do, in the spirit of upstream's Node authorizer and NodeRestriction
//! admission: a user `system:node:<name>` in `system:nodes` may
//! - read a Secret, ConfigMap or PersistentVolumeClaim, or create a token for a
//!   ServiceAccount, only when a pod bound to it (`spec.nodeName`) uses that object;
//! - read a PersistentVolume only when a claim such a pod uses is bound to it, as
//!   upstream's graph allows; a volume that does not exist is let through to its 404,
//!   so a node can tell that a local-path volume it holds a directory of is gone;
//! - write only its own Node and its own Lease in `kube-node-lease`;
//! - write the status of, or delete, only pods bound to it (the kubelet deletes its
//!   terminated pods), and create only mirror pods bound to it;
//! - everything else its RBAC role (`system:node`) grants (reading pods, Services,
//!   nodes; creating events).
//!
//! Requests of anyone else go to the inner authorizer unchanged. Which pods run where
//! (and which volume each claim is bound to) comes from `PodGraph`, an in-memory index
//! background tasks keep in step with the store (list, then watch), so deciding never
//! waits for the store; a new pod's
//! objects become readable by its node within the watch's delay (milliseconds).
//! Creates carry the object's name in the body, not the URL: `admit_create` checks
//! those once the body is decoded. This module must not write to the store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use super::UserInfo;
use super::authz::{Attributes, Authorizer, Decision};
use crate::store::{EventType, KeyValue, Store};

pub const NODES_GROUP: &str = "system:nodes";
const NODE_PREFIX: &str = "system:node:";
const LEASE_NAMESPACE: &str = "kube-node-lease";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const PODS_PREFIX: &str = "/registry/pods/";
const CLAIMS_PREFIX: &str = "/registry/persistentvolumeclaims/";
const VOLUMES_PREFIX: &str = "/registry/persistentvolumes/";

/// The kinds the graph follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Followed {
    Pods,
    Claims,
    Volumes,
}

impl Followed {
    fn prefix(self) -> &'static str {
        match self {
            Followed::Pods => PODS_PREFIX,
            Followed::Claims => CLAIMS_PREFIX,
            Followed::Volumes => VOLUMES_PREFIX,
        }
    }
}

/// The node a user acts for, if it is a node.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    user.name.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty() && user.in_group(NODES_GROUP))
}

/// An object a pod refers to: (resource, namespace, name).
type Ref = (&'static str, String, String);

#[derive(Debug, Default)]
struct PodEntry {
    node: String,
    namespace: String,
    name: String,
    refs: Vec<Ref>,
}

/// Which pods are bound to which node, and what each pod uses.
#[derive(Debug, Default)]
pub struct PodGraph {
    pods: HashMap<String, PodEntry>,
    by_node: HashMap<String, HashSet<String>>,
    /// Pods not yet bound, key → (namespace, name): they exist but belong to no node.
    unbound: HashMap<String, (String, String)>,
    /// The volume each claim names, by the claim's store key.
    claim_volumes: HashMap<String, String>,
    /// The PersistentVolumes that exist, by name; `None` until first listed, so that
    /// no volume passes for missing before the graph knows them.
    volumes: Option<HashSet<String>>,
}

fn strs<'a>(v: &'a Value, ptr: &str) -> impl Iterator<Item = &'a Value> {
    v.pointer(ptr).and_then(|a| a.as_array()).into_iter().flatten()
}

/// The Secrets, ConfigMaps, PVCs and the ServiceAccount a pod spec uses.
fn refs_of(pod: &Value, ns: &str) -> Vec<Ref> {
    let mut out: Vec<Ref> = Vec::new();
    let mut add = |res: &'static str, name: Option<&str>| {
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            out.push((res, ns.to_string(), n.to_string()));
        }
    };
    let s = |v: &Value, p: &str| v.pointer(p).and_then(|x| x.as_str()).map(str::to_string);
    add("serviceaccounts", Some(s(pod, "/spec/serviceAccountName").as_deref().unwrap_or("default")));
    for v in strs(pod, "/spec/volumes") {
        add("secrets", s(v, "/secret/secretName").as_deref());
        add("configmaps", s(v, "/configMap/name").as_deref());
        add("persistentvolumeclaims", s(v, "/persistentVolumeClaim/claimName").as_deref());
        for src in strs(v, "/projected/sources") {
            add("secrets", s(src, "/secret/name").as_deref());
            add("configmaps", s(src, "/configMap/name").as_deref());
        }
    }
    for p in strs(pod, "/spec/imagePullSecrets") {
        add("secrets", s(p, "/name").as_deref());
    }
    for list in ["/spec/containers", "/spec/initContainers", "/spec/ephemeralContainers"] {
        for c in strs(pod, list) {
            for e in strs(c, "/env") {
                add("secrets", s(e, "/valueFrom/secretKeyRef/name").as_deref());
                add("configmaps", s(e, "/valueFrom/configMapKeyRef/name").as_deref());
            }
            for e in strs(c, "/envFrom") {
                add("secrets", s(e, "/secretRef/name").as_deref());
                add("configmaps", s(e, "/configMapRef/name").as_deref());
            }
        }
    }
    out
}

impl PodGraph {
    /// Records a pod (as stored at `key`); a pod not yet bound is remembered unbound.
    pub fn put(&mut self, key: &str, pod: &Value) {
        self.remove(key);
        let text = |p: &str| pod.pointer(p).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let (node, namespace, name) = (text("/spec/nodeName"), text("/metadata/namespace"), text("/metadata/name"));
        if node.is_empty() {
            self.unbound.insert(key.to_string(), (namespace, name));
            return;
        }
        let refs = refs_of(pod, &namespace);
        self.by_node.entry(node.clone()).or_default().insert(key.to_string());
        self.pods.insert(key.to_string(), PodEntry { node, namespace, name, refs });
    }

    pub fn remove(&mut self, key: &str) {
        self.unbound.remove(key);
        if let Some(old) = self.pods.remove(key)
            && let Some(keys) = self.by_node.get_mut(&old.node)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_node.remove(&old.node);
            }
        }
    }

    fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a PodEntry> {
        self.by_node.get(node).into_iter().flatten().filter_map(|k| self.pods.get(k))
    }

    /// Whether pod `ns/name` exists, bound or not.
    pub fn exists(&self, ns: &str, name: &str) -> bool {
        self.pods.values().any(|p| p.namespace == ns && p.name == name)
            || self.unbound.values().any(|(n, p)| n == ns && p == name)
    }

    /// Whether pod `ns/name` is bound to `node`.
    pub fn bound_to(&self, node: &str, ns: &str, name: &str) -> bool {
        self.pods_on(node).any(|p| p.namespace == ns && p.name == name)
    }

    /// Whether a pod bound to `node` uses the object.
    pub fn uses(&self, node: &str, resource: &str, ns: &str, name: &str) -> bool {
        self.pods_on(node).any(|p| p.refs.iter().any(|(r, n, o)| *r == resource && n == ns && o == name))
    }

    /// Whether a claim used by a pod bound to `node` is bound to volume `pv`.
    pub fn uses_volume(&self, node: &str, pv: &str) -> bool {
        self.pods_on(node).any(|p| {
            p.refs.iter().any(|(r, ns, claim)| {
                *r == "persistentvolumeclaims"
                    && self.claim_volumes.get(&format!("{CLAIMS_PREFIX}{ns}/{claim}")).is_some_and(|v| v == pv)
            })
        })
    }

    /// Whether volume `pv` is known not to exist.
    pub fn volume_missing(&self, pv: &str) -> bool {
        self.volumes.as_ref().is_some_and(|v| !v.contains(pv))
    }

    /// Forgets everything of one followed kind (before a fresh list).
    fn clear(&mut self, kind: Followed) {
        match kind {
            Followed::Pods => {
                self.pods.clear();
                self.by_node.clear();
                self.unbound.clear();
            }
            Followed::Claims => self.claim_volumes.clear(),
            Followed::Volumes => self.volumes = Some(HashSet::new()),
        }
    }

    fn apply(&mut self, followed: Followed, kv: &KeyValue, kind: EventType) {
        let value = match kind {
            EventType::Put => serde_json::from_slice::<Value>(&kv.value).ok(),
            _ => None,
        };
        match followed {
            Followed::Pods => match value {
                Some(v) => self.put(&kv.key, &v),
                None => self.remove(&kv.key),
            },
            Followed::Claims => {
                let volume = value.as_ref().and_then(|v| v.pointer("/spec/volumeName")).and_then(Value::as_str);
                match volume.filter(|v| !v.is_empty()) {
                    Some(v) => self.claim_volumes.insert(kv.key.clone(), v.to_string()),
                    None => self.claim_volumes.remove(&kv.key),
                };
            }
            Followed::Volumes => {
                let name = kv.key.strip_prefix(VOLUMES_PREFIX).unwrap_or(&kv.key).to_string();
                let volumes = self.volumes.get_or_insert_with(HashSet::new);
                if value.is_some() {
                    volumes.insert(name);
                } else {
                    volumes.remove(&name);
                }
            }
        }
    }
}

/// The node restrictions in front of another authorizer (RBAC).
pub struct NodeAuthorizer<A> {
    pub graph: Arc<RwLock<PodGraph>>,
    inner: A,
}

impl<A: Authorizer> NodeAuthorizer<A> {
    pub fn new(inner: A) -> Self {
        Self { graph: Arc::default(), inner }
    }

    /// Keeps the pod graph in step with the store until the process ends.
    pub fn spawn_sync(&self, store: Arc<dyn Store>) {
        for kind in [Followed::Pods, Followed::Claims, Followed::Volumes] {
            let (graph, store) = (self.graph.clone(), store.clone());
            tokio::spawn(async move {
                loop {
                    if let Err(e) = follow(store.as_ref(), &graph, kind).await {
                        tracing::warn!(error = %e, ?kind, "node authorizer: index sync restarts");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
        }
    }
}

/// Lists one kind into the graph, then applies its changes until the watch ends.
async fn follow(store: &dyn Store, graph: &RwLock<PodGraph>, kind: Followed) -> crate::store::Result<()> {
    let snapshot = store.list(kind.prefix(), None, 0).await?;
    {
        let mut g = graph.write().unwrap();
        g.clear(kind);
        snapshot.kvs.iter().for_each(|kv| g.apply(kind, kv, EventType::Put));
    }
    let mut events = store.watch(kind.prefix(), snapshot.revision).await?;
    while let Some(ev) = events.next().await.transpose()? {
        graph.write().unwrap().apply(kind, &ev.kv, ev.kind);
    }
    Ok(())
}

fn deny(node: &str, what: &str) -> Decision {
    Decision::Deny(format!("node \"{node}\" {what}"))
}

impl<A: Authorizer> Authorizer for NodeAuthorizer<A> {
    /// The inner authorizer's rules: what a node may reach through its pods is per
    /// object, which a rules summary cannot say (upstream marks it incomplete too).
    fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<serde_json::Value> {
        self.inner.rules_for(user, namespace)
    }

    fn rules_incomplete(&self, user: &UserInfo) -> bool {
        node_of(user).is_some() || self.inner.rules_incomplete(user)
    }

    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        let (Some(node), Attributes::Resource { verb, group, resource, subresource, namespace, name }) =
            (node_of(user), attrs)
        else {
            return self.inner.authorize(user, attrs);
        };
        let (ns, obj) = (namespace.as_deref().unwrap_or(""), name.as_deref());
        let graph = || self.graph.read().unwrap();
        let sub = subresource.as_deref();
        match (group.as_str(), resource.as_str(), sub) {
            ("", "secrets" | "configmaps" | "persistentvolumeclaims", None) => match obj {
                Some(n) if verb == "get" && graph().uses(node, resource, ns, n) => Decision::Allow,
                _ => deny(node, &format!("may only get {resource} of pods bound to it")),
            },
            ("", "persistentvolumes", None) => match obj {
                Some(n) if verb == "get" && (graph().uses_volume(node, n) || graph().volume_missing(n)) => {
                    Decision::Allow
                }
                _ => deny(node, "may only get persistentvolumes of claims of pods bound to it"),
            },
            ("", "serviceaccounts", Some("token")) => match obj {
                Some(n) if verb == "create" && graph().uses(node, resource, ns, n) => Decision::Allow,
                _ => deny(node, "may only create tokens for ServiceAccounts of pods bound to it"),
            },
            ("", "nodes", _) if !matches!(verb.as_str(), "get" | "list" | "watch" | "create") && obj != Some(node) => {
                deny(node, "may only modify its own Node object")
            }
            ("coordination.k8s.io", "leases", _)
                if verb != "create" && (ns != LEASE_NAMESPACE || obj != Some(node)) =>
            {
                deny(node, "may only use its own Lease in kube-node-lease")
            }
            ("", "pods", Some("status")) | ("", "pods", None)
                if matches!(verb.as_str(), "update" | "patch" | "delete")
                    && !obj.is_some_and(|n| {
                        // A pod that is gone is let through to its 404, as upstream's
                        // NodeRestriction answers: a kubelet finishing a deletion twice
                        // then knows it is done instead of retrying a 403.
                        let g = graph();
                        g.bound_to(node, ns, n) || !g.exists(ns, n)
                    }) =>
            {
                deny(node, "may only modify pods bound to it")
            }
            _ => self.inner.authorize(user, attrs),
        }
    }
}

/// NodeRestriction for creates, whose names are in the body: a node may create only its
/// own Node and Lease, and only mirror pods bound to itself. Anyone else passes.
pub fn admit_create(user: &UserInfo, kind: &str, obj: &Value) -> Result<(), String> {
    let Some(node) = node_of(user) else { return Ok(()) };
    let text = |p: &str| obj.pointer(p).and_then(|v| v.as_str()).unwrap_or("");
    let own = text("/metadata/name") == node;
    match kind {
        "Node" if !own => Err(format!("node \"{node}\" may not create Node \"{}\"", text("/metadata/name"))),
        "Lease" if !own || text("/metadata/namespace") != LEASE_NAMESPACE => {
            Err(format!("node \"{node}\" may only create its own Lease in {LEASE_NAMESPACE}"))
        }
        "Pod" if obj.pointer(&format!("/metadata/annotations/{}", MIRROR_ANNOTATION.replace('/', "~1"))).is_none() => {
            Err(format!("node \"{node}\" may only create mirror pods"))
        }
        "Pod" if text("/spec/nodeName") != node => {
            Err(format!("node \"{node}\" may only create mirror pods bound to itself"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Allows everything, so only the node restrictions can deny.
    struct AllowAll;
    impl Authorizer for AllowAll {
        fn authorize(&self, _: &UserInfo, _: &Attributes) -> Decision {
            Decision::Allow
        }
    }

    fn node(n: &str) -> UserInfo {
        UserInfo { name: format!("system:node:{n}"), groups: vec![NODES_GROUP.into(), "system:authenticated".into()] }
    }

    fn res(
        verb: &str,
        group: &str,
        resource: &str,
        sub: Option<&str>,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.map(String::from),
            namespace: ns.map(String::from),
            name: name.map(String::from),
        }
    }

    fn authorizer() -> NodeAuthorizer<AllowAll> {
        let a = NodeAuthorizer::new(AllowAll);
        let pod = json!({"metadata": {"name": "web", "namespace": "app"}, "spec": {"nodeName": "n1", "serviceAccountName": "web-sa",
            "volumes": [{"name": "v", "secret": {"secretName": "tls"}}, {"name": "p", "persistentVolumeClaim": {"claimName": "data"}},
                        {"name": "x", "projected": {"sources": [{"configMap": {"name": "proj"}}]}}],
            "containers": [{"name": "c", "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "a"}}}],
                            "envFrom": [{"secretRef": {"name": "creds"}}]}]}});
        a.graph.write().unwrap().put("/registry/pods/app/web", &pod);
        let unbound = json!({"metadata": {"name": "new", "namespace": "app"}, "spec": {"volumes": [{"name": "v", "secret": {"secretName": "later"}}]}});
        a.graph.write().unwrap().put("/registry/pods/app/new", &unbound);
        let other = json!({"metadata": {"name": "elsewhere", "namespace": "app"}, "spec": {"nodeName": "n2"}});
        a.graph.write().unwrap().put("/registry/pods/app/elsewhere", &other);
        a
    }

    #[test]
    fn a_node_reads_only_what_its_pods_use() {
        let a = authorizer();
        let (n1, n2) = (node("n1"), node("n2"));
        let get = |r: &str, name: &str| res("get", "", r, None, Some("app"), Some(name));
        for (r, name) in [
            ("secrets", "tls"),
            ("secrets", "creds"),
            ("configmaps", "settings"),
            ("configmaps", "proj"),
            ("persistentvolumeclaims", "data"),
        ] {
            assert_eq!(a.authorize(&n1, &get(r, name)), Decision::Allow, "{r}/{name}");
            assert!(matches!(a.authorize(&n2, &get(r, name)), Decision::Deny(_)), "{r}/{name} from n2");
        }
        assert!(matches!(a.authorize(&n1, &get("secrets", "later")), Decision::Deny(_)), "unbound pods give nothing");
        assert!(matches!(a.authorize(&n1, &get("secrets", "other")), Decision::Deny(_)));
        assert!(matches!(a.authorize(&n1, &res("list", "", "secrets", None, Some("app"), None)), Decision::Deny(_)));
        let token = |name: &str| res("create", "", "serviceaccounts", Some("token"), Some("app"), Some(name));
        assert_eq!(a.authorize(&n1, &token("web-sa")), Decision::Allow);
        assert!(matches!(a.authorize(&n1, &token("default")), Decision::Deny(_)));
        // Once the pod is gone, so is the access.
        a.graph.write().unwrap().remove("/registry/pods/app/web");
        assert!(matches!(a.authorize(&n1, &get("secrets", "tls")), Decision::Deny(_)));
        // Not a node (no system:nodes group): the inner authorizer decides.
        let pretender = UserInfo { name: "system:node:n2".into(), groups: vec![] };
        assert_eq!(a.authorize(&pretender, &get("secrets", "tls")), Decision::Allow);
    }

    #[test]
    fn a_node_reads_the_volumes_of_its_pods_claims_and_learns_of_missing_ones() {
        let a = authorizer();
        let (n1, n2) = (node("n1"), node("n2"));
        let get = |name: &str| res("get", "", "persistentvolumes", None, None, Some(name));
        let put = |kind: Followed, key: &str, v: Value| {
            let value = serde_json::to_vec(&v).unwrap().into();
            let kv = KeyValue { key: key.into(), value, create_revision: 1, mod_revision: 1 };
            a.graph.write().unwrap().apply(kind, &kv, EventType::Put);
        };
        // Before the volumes are listed, nothing passes for missing.
        assert!(matches!(a.authorize(&n1, &get("pv-other")), Decision::Deny(_)));
        put(Followed::Volumes, "/registry/persistentvolumes/pv-data", json!({}));
        put(Followed::Volumes, "/registry/persistentvolumes/pv-other", json!({}));
        assert!(matches!(a.authorize(&n1, &get("pv-data")), Decision::Deny(_)), "the claim is not bound yet");
        put(Followed::Claims, "/registry/persistentvolumeclaims/app/data", json!({"spec": {"volumeName": "pv-data"}}));
        assert_eq!(a.authorize(&n1, &get("pv-data")), Decision::Allow);
        assert!(matches!(a.authorize(&n2, &get("pv-data")), Decision::Deny(_)), "n2 runs no pod of the claim");
        assert!(matches!(a.authorize(&n1, &get("pv-other")), Decision::Deny(_)));
        assert!(matches!(a.authorize(&n1, &res("list", "", "persistentvolumes", None, None, None)), Decision::Deny(_)));
        // A volume that does not exist: the request goes on to its 404.
        assert_eq!(a.authorize(&n2, &get("pvc-deleted")), Decision::Allow);
        let key = "/registry/persistentvolumes/pv-other".into();
        let kv = KeyValue { key, value: Default::default(), create_revision: 1, mod_revision: 2 };
        a.graph.write().unwrap().apply(Followed::Volumes, &kv, EventType::Delete);
        assert_eq!(a.authorize(&n2, &get("pv-other")), Decision::Allow);
    }

    #[test]
    fn a_node_writes_only_its_own_objects() {
        let a = authorizer();
        let n1 = node("n1");
        let allowed = [
            res("patch", "", "nodes", Some("status"), None, Some("n1")),
            res("update", "", "nodes", None, None, Some("n1")),
            res("get", "", "nodes", None, None, Some("n2")),
            res("list", "", "nodes", None, None, None),
            res("update", "coordination.k8s.io", "leases", None, Some(LEASE_NAMESPACE), Some("n1")),
            res("patch", "", "pods", Some("status"), Some("app"), Some("web")),
            res("delete", "", "pods", None, Some("app"), Some("web")),
            res("list", "", "pods", None, None, None),
            res("create", "", "events", None, Some("app"), None),
            // Gone pods: the request goes on to its 404.
            res("delete", "", "pods", None, Some("app"), Some("gone")),
            res("patch", "", "pods", Some("status"), Some("app"), Some("gone")),
        ];
        for at in &allowed {
            assert_eq!(a.authorize(&n1, at), Decision::Allow, "{at:?}");
        }
        let denied = [
            res("patch", "", "nodes", Some("status"), None, Some("n2")),
            res("delete", "", "nodes", None, None, Some("n2")),
            res("update", "coordination.k8s.io", "leases", None, Some(LEASE_NAMESPACE), Some("n2")),
            res("get", "coordination.k8s.io", "leases", None, Some("default"), Some("n1")),
            res("patch", "", "pods", Some("status"), Some("app"), Some("new")),
            res("delete", "", "pods", None, Some("app"), Some("elsewhere")),
            res("delete", "", "pods", None, Some("app"), Some("new")),
        ];
        for at in &denied {
            assert!(matches!(a.authorize(&n1, at), Decision::Deny(_)), "{at:?}");
        }
    }

    #[test]
    fn creates_are_admitted_by_name_and_binding() {
        let n1 = node("n1");
        assert!(admit_create(&n1, "Node", &json!({"metadata": {"name": "n1"}})).is_ok());
        assert!(admit_create(&n1, "Node", &json!({"metadata": {"name": "n2"}})).is_err());
        assert!(admit_create(&n1, "Lease", &json!({"metadata": {"name": "n1", "namespace": LEASE_NAMESPACE}})).is_ok());
        assert!(
            admit_create(&n1, "Lease", &json!({"metadata": {"name": "n2", "namespace": LEASE_NAMESPACE}})).is_err()
        );
        let mirror = |node: &str| json!({"metadata": {"name": "static-web-n1", "annotations": {MIRROR_ANNOTATION: "hash"}}, "spec": {"nodeName": node}});
        assert!(admit_create(&n1, "Pod", &mirror("n1")).is_ok());
        assert!(admit_create(&n1, "Pod", &mirror("n2")).is_err());
        assert!(admit_create(&n1, "Pod", &json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}})).is_err());
        assert!(admit_create(&n1, "Event", &json!({})).is_ok());
        let admin = UserInfo { name: "admin".into(), groups: vec!["system:masters".into()] };
        assert!(admit_create(&admin, "Node", &json!({"metadata": {"name": "n2"}})).is_ok());
    }
}
