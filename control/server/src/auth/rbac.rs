//! RBAC: Role, ClusterRole, RoleBinding and ClusterRoleBinding, evaluated against an
//! in-memory cache that a background task keeps in sync with the store (list, then
//! watch from the list's revision; on compaction it lists again). Authorization stays
//! synchronous and never waits for the store; a binding takes effect as soon as its
//! watch event arrives (milliseconds).
//!
//! Allow-only, as Kubernetes RBAC: the bootstrap policy (`system:masters`, discovery
//! for authenticated users) is consulted first, then the rules. It must not write
//! anything to the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use super::UserInfo;
use super::authz::{Attributes, Authorizer, BootstrapAuthorizer, Decision};
use crate::store::{EventType, KeyValue, Store};

const GROUP: &str = "rbac.authorization.k8s.io";
const KINDS: &[&str] = &["roles", "clusterroles", "rolebindings", "clusterrolebindings"];

/// The RBAC objects by store key (the key encodes kind, namespace and name).
#[derive(Debug, Default)]
pub struct RbacCache {
    objects: HashMap<String, Value>,
}

fn prefix(kind: &str) -> String {
    format!("/registry/{kind}.{GROUP}/")
}

fn key(kind: &str, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{}{ns}/{name}", prefix(kind)),
        None => format!("{}{name}", prefix(kind)),
    }
}

fn strs(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn has(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    match attrs {
        Attributes::Resource { verb, group, resource, subresource, name, .. } => {
            let resources = strs(rule, "resources");
            let res_ok = match subresource {
                Some(sub) => {
                    resources.iter().any(|r| r == "*" || *r == format!("{resource}/{sub}") || *r == format!("*/{sub}"))
                }
                None => has(&resources, resource),
            };
            let names = strs(rule, "resourceNames");
            has(&strs(rule, "verbs"), verb)
                && has(&strs(rule, "apiGroups"), group)
                && res_ok
                && (names.is_empty() || name.as_ref().is_some_and(|n| names.contains(n)))
        }
        Attributes::NonResource { verb, path } => {
            has(&strs(rule, "verbs"), verb)
                && strs(rule, "nonResourceURLs")
                    .iter()
                    .any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p)))
        }
    }
}

fn subject_matches(s: &Value, user: &UserInfo, binding_ns: Option<&str>) -> bool {
    let name = s.get("name").and_then(|n| n.as_str()).unwrap_or("");
    match s.get("kind").and_then(|k| k.as_str()) {
        Some("User") => name == user.name,
        Some("Group") => user.in_group(name),
        Some("ServiceAccount") => {
            let ns = s.get("namespace").and_then(|n| n.as_str()).or(binding_ns).unwrap_or("");
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

impl RbacCache {
    fn rules_of(&self, role_ref: &Value, binding_ns: Option<&str>) -> Vec<Value> {
        let name = role_ref.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let k = match role_ref.get("kind").and_then(|k| k.as_str()) {
            Some("ClusterRole") => key("clusterroles", None, name),
            Some("Role") if binding_ns.is_some() => key("roles", binding_ns, name),
            _ => return Vec::new(),
        };
        self.objects.get(&k).and_then(|r| r.get("rules")).and_then(|r| r.as_array()).cloned().unwrap_or_default()
    }

    /// The rules of every binding that names `user`: cluster-wide ones, and those of
    /// RoleBindings in `ns`.
    fn rules_of_user(&self, user: &UserInfo, ns: Option<&str>) -> Vec<Value> {
        let bindings = self.objects.iter().filter(|(k, _)| {
            k.starts_with(&prefix("clusterrolebindings"))
                || ns.is_some_and(|ns| k.starts_with(&format!("{}{ns}/", prefix("rolebindings"))))
        });
        let mut rules = Vec::new();
        for (k, b) in bindings {
            let binding_ns = if k.starts_with(&prefix("rolebindings")) { ns } else { None };
            let subjects = b.get("subjects").and_then(|s| s.as_array()).cloned().unwrap_or_default();
            if !subjects.iter().any(|s| subject_matches(s, user, binding_ns)) {
                continue;
            }
            let role_ref = b.get("roleRef").cloned().unwrap_or(Value::Null);
            rules.extend(self.rules_of(&role_ref, binding_ns));
        }
        rules
    }

    /// Whether any binding that names `user` grants `attrs`.
    pub fn allows(&self, user: &UserInfo, attrs: &Attributes) -> bool {
        let ns = match attrs {
            Attributes::Resource { namespace, .. } => namespace.as_deref(),
            Attributes::NonResource { .. } => None,
        };
        self.rules_of_user(user, ns).iter().any(|r| rule_allows(r, attrs))
    }

    pub fn apply(&mut self, kv: &KeyValue, kind: EventType) {
        match kind {
            EventType::Put => {
                if let Ok(v) = serde_json::from_slice(&kv.value) {
                    self.objects.insert(kv.key.clone(), v);
                }
            }
            EventType::Delete => {
                self.objects.remove(&kv.key);
            }
        }
    }
}

/// Bootstrap policy first, then RBAC rules.
#[derive(Debug, Default, Clone)]
pub struct RbacAuthorizer {
    pub cache: Arc<RwLock<RbacCache>>,
}

impl Authorizer for RbacAuthorizer {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        match BootstrapAuthorizer.authorize(user, attrs) {
            Decision::Allow => Decision::Allow,
            deny => {
                if self.cache.read().unwrap().allows(user, attrs) {
                    Decision::Allow
                } else {
                    deny
                }
            }
        }
    }

    fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<Value> {
        let mut rules = BootstrapAuthorizer.rules_for(user, namespace);
        rules.extend(self.cache.read().unwrap().rules_of_user(user, namespace));
        rules
    }
}

impl RbacAuthorizer {
    /// Keeps the cache in sync with the store until the process ends.
    pub fn spawn_sync(&self, store: Arc<dyn Store>) {
        for kind in KINDS {
            let cache = self.cache.clone();
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = sync_once(store.as_ref(), &cache, kind).await {
                        tracing::warn!(kind, error = %e, "RBAC cache sync restarts");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
        }
    }
}

/// One list + watch cycle; returns when the watch fails (for example after compaction).
async fn sync_once(store: &dyn Store, cache: &RwLock<RbacCache>, kind: &str) -> crate::store::Result<()> {
    let p = prefix(kind);
    let page = store.list(&p, None, 0).await?;
    {
        let mut c = cache.write().unwrap();
        c.objects.retain(|k, _| !k.starts_with(&p));
        for kv in &page.kvs {
            c.apply(kv, EventType::Put);
        }
    }
    let mut w = store.watch(&p, page.revision).await?;
    while let Some(ev) = w.next().await {
        let ev = ev?;
        cache.write().unwrap().apply(&ev.kv, ev.kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(c: &mut RbacCache, k: String, v: Value) {
        c.objects.insert(k, v);
    }

    #[test]
    fn role_bindings_grant_in_their_namespace_only() {
        let mut c = RbacCache::default();
        put(
            &mut c,
            key("roles", Some("dev"), "reader"),
            json!({"rules": [
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]}),
        );
        put(
            &mut c,
            key("rolebindings", Some("dev"), "bob-reads"),
            json!({
            "roleRef": {"kind": "Role", "name": "reader", "apiGroup": GROUP},
            "subjects": [{"kind": "User", "name": "bob"}]}),
        );
        put(
            &mut c,
            key("clusterroles", None, "node-viewer"),
            json!({"rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"], "resourceNames": ["n1"]},
            {"nonResourceURLs": ["/metrics*"], "verbs": ["get"]}]}),
        );
        put(
            &mut c,
            key("clusterrolebindings", None, "ops"),
            json!({
            "roleRef": {"kind": "ClusterRole", "name": "node-viewer", "apiGroup": GROUP},
            "subjects": [{"kind": "Group", "name": "ops"}]}),
        );
        let bob = UserInfo { name: "bob".into(), groups: vec!["ops".into()] };
        let res = |verb: &str, resource: &str, sub: Option<&str>, ns: Option<&str>, name: Option<&str>| {
            Attributes::Resource {
                verb: verb.into(),
                group: "".into(),
                resource: resource.into(),
                subresource: sub.map(String::from),
                namespace: ns.map(String::from),
                name: name.map(String::from),
            }
        };
        assert!(c.allows(&bob, &res("list", "pods", None, Some("dev"), None)));
        assert!(c.allows(&bob, &res("get", "pods", Some("log"), Some("dev"), Some("p"))));
        assert!(!c.allows(&bob, &res("delete", "pods", None, Some("dev"), Some("p"))));
        assert!(!c.allows(&bob, &res("list", "pods", None, Some("prod"), None)));
        assert!(!c.allows(&bob, &res("get", "pods", Some("exec"), Some("dev"), Some("p"))));
        assert!(c.allows(&bob, &res("get", "nodes", None, None, Some("n1"))));
        assert!(!c.allows(&bob, &res("get", "nodes", None, None, Some("n2"))));
        assert!(c.allows(&bob, &Attributes::NonResource { verb: "get".into(), path: "/metrics/x".into() }));
        let eve = UserInfo { name: "eve".into(), groups: vec![] };
        assert!(!c.allows(&eve, &res("list", "pods", None, Some("dev"), None)));
    }
}
