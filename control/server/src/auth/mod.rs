//! Who is asking (`authn`: x509 client certificates, static bearer tokens,
//! ServiceAccount JWTs from `serviceaccount`, bootstrap tokens from
//! `bootstrap_token`) and whether they may (`authz`: one `Authorizer` trait; `rbac` =
//! bootstrap policy + RBAC rules; `node` = what a node may do, in front of RBAC, and
//! the NodeRestriction check of a node's creates).
//!
//! Nothing here reads raw request bodies or writes the store; the API server builds
//! `Attributes` from the URL and asks, and checks that a ServiceAccount token's or
//! bootstrap token's objects still exist. `rbac` and `node` follow the store (list,
//! watch) into in-memory caches, so deciding never waits for it.

pub mod authn;
pub mod authz;
pub mod bootstrap_token;
pub mod node;
pub mod rbac;
pub mod serviceaccount;

/// An authenticated user, as Kubernetes' `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

pub const MASTERS: &str = "system:masters";
/// The user the controller manager acts as (RBAC: `system:skiff-controllers`).
pub const CONTROLLER_USER: &str = "system:kube-controller-manager";
/// The user the scheduler acts as.
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
pub const AUTHENTICATED: &str = "system:authenticated";
