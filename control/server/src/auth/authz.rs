//! Authorization: one `Authorizer` trait over request attributes (the same attributes
//! RBAC rules match: verb, API group, resource, subresource, namespace, name, or a
//! non-resource path).
//!
//! `BootstrapAuthorizer` is the fixed part of the policy: `system:masters` may do
//! everything; any authenticated user may read discovery, version, OpenAPI and health
//! endpoints (what the `system:discovery` and `system:public-info-viewer` roles grant);
//! everything else is up to RBAC (`rbac::RbacAuthorizer` consults this first). It must
//! not look at the store.

use super::{MASTERS, UserInfo};

/// What a request wants to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: Option<String>,
        namespace: Option<String>,
        name: Option<String>,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, with the reason the Status message gives.
    Deny(String),
}

pub trait Authorizer: Send + Sync {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision;

    /// The rules (RBAC `PolicyRule`s as JSON) that grant `user` anything cluster-wide or
    /// in `namespace`, for SelfSubjectRulesReview (`kubectl auth can-i --list`). Like
    /// upstream's `RulesFor`, a summary for display: `authorize` decides.
    fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<serde_json::Value> {
        let _ = (user, namespace);
        Vec::new()
    }

    /// Whether `rules_for` leaves out grants this authorizer makes to `user` (a rules
    /// review then says `incomplete`, as upstream's does).
    fn rules_incomplete(&self, user: &UserInfo) -> bool {
        let _ = user;
        false
    }
}

#[derive(Debug, Default)]
pub struct BootstrapAuthorizer;

const PUBLIC_PATHS: &[&str] = &["/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz"];

impl Authorizer for BootstrapAuthorizer {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        if user.in_group(MASTERS) {
            return Decision::Allow;
        }
        match attrs {
            Attributes::NonResource { verb, path } => {
                let public = PUBLIC_PATHS.iter().any(|p| path == p || path.starts_with(&format!("{p}/")));
                if verb == "get" && public {
                    Decision::Allow
                } else {
                    Decision::Deny(format!("User \"{}\" cannot {verb} path \"{path}\"", user.name))
                }
            }
            Attributes::Resource { verb, group, resource, subresource, namespace, .. } => {
                let res = match subresource {
                    Some(s) => format!("{resource}/{s}"),
                    None => resource.clone(),
                };
                let scope = match namespace {
                    Some(ns) => format!(" in the namespace \"{ns}\""),
                    None => " at the cluster scope".to_string(),
                };
                Decision::Deny(format!(
                    "User \"{}\" cannot {verb} resource \"{res}\" in API group \"{group}\"{scope}",
                    user.name
                ))
            }
        }
    }

    fn rules_for(&self, user: &UserInfo, _namespace: Option<&str>) -> Vec<serde_json::Value> {
        if user.in_group(MASTERS) {
            return vec![
                serde_json::json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                serde_json::json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ];
        }
        let urls: Vec<String> = PUBLIC_PATHS.iter().flat_map(|p| [p.to_string(), format!("{p}/*")]).collect();
        vec![serde_json::json!({"nonResourceURLs": urls, "verbs": ["get"]})]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_policy() {
        let admin = UserInfo { name: "admin".into(), groups: vec![MASTERS.into()] };
        let bob = UserInfo { name: "bob".into(), groups: vec!["system:authenticated".into()] };
        let list_pods = Attributes::Resource {
            verb: "list".into(),
            group: "".into(),
            resource: "pods".into(),
            subresource: None,
            namespace: Some("default".into()),
            name: None,
        };
        let a = BootstrapAuthorizer;
        assert_eq!(a.authorize(&admin, &list_pods), Decision::Allow);
        match a.authorize(&bob, &list_pods) {
            Decision::Deny(m) => assert_eq!(
                m,
                "User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
            ),
            d => panic!("{d:?}"),
        }
        let disc = Attributes::NonResource { verb: "get".into(), path: "/apis/apps/v1".into() };
        assert_eq!(a.authorize(&bob, &disc), Decision::Allow);
        let other = Attributes::NonResource { verb: "get".into(), path: "/metrics".into() };
        assert!(matches!(a.authorize(&bob, &other), Decision::Deny(_)));
    }
}
