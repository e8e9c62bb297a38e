//! The decisions of the approver and the signer, as pure functions of one
//! CertificateSigningRequest (and, for approval, an authorizer): which requests are
//! kubelet client requests, whether their requester may have them approved (upstream's
//! `nodeclient` / `selfnodeclient` subject access checks), and what the signer issues.
//!
//! Nothing here talks to the API; `certificates` carries the decisions out.

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;

use crate::auth::UserInfo;
use crate::auth::authz::{Attributes, Authorizer, Decision};
use crate::tls::signer::{ClientUsages, ParsedCsr};

pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_PREFIX: &str = "system:node:";
/// Certificates live a year unless the request asks for less (upstream's
/// `--cluster-signing-duration` default).
pub const DEFAULT_LIFETIME_S: i64 = 365 * 24 * 3600;
const MIN_LIFETIME_S: i64 = 600;

/// Where a request stands.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Approved,
    /// Denied or Failed: nothing more happens to it.
    Done,
    Issued,
}

pub fn state(csr: &CertificateSigningRequest) -> State {
    let status = csr.status.as_ref();
    if status.and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty()) {
        return State::Issued;
    }
    let conditions = status.and_then(|s| s.conditions.as_ref()).map(Vec::as_slice).unwrap_or(&[]);
    let has = |t: &str| conditions.iter().any(|c| c.type_ == t && c.status == "True");
    if has("Denied") || has("Failed") {
        State::Done
    } else if has("Approved") {
        State::Approved
    } else {
        State::Pending
    }
}

fn usages(csr: &CertificateSigningRequest) -> Vec<&str> {
    csr.spec.usages.as_deref().unwrap_or(&[]).iter().map(String::as_str).collect()
}

/// Only client authentication, with digital signature and optionally key
/// encipherment (RSA keys); the usages a client certificate may carry.
fn client_usages(usages: &[&str]) -> Result<ClientUsages, String> {
    let allowed = ["digital signature", "key encipherment", "client auth"];
    if let Some(u) = usages.iter().find(|u| !allowed.contains(u)) {
        return Err(format!("usage {u:?} is not allowed for a client certificate"));
    }
    if !usages.contains(&"client auth") {
        return Err("a client certificate needs the \"client auth\" usage".into());
    }
    Ok(ClientUsages { key_encipherment: usages.contains(&"key encipherment") })
}

/// upstream's kubelet client rules: CN `system:node:<name>`, O exactly
/// `system:nodes`, no subject alternative names, digital signature + client auth.
pub fn kubelet_client(csr: &CertificateSigningRequest, parsed: &ParsedCsr) -> Result<ClientUsages, String> {
    if parsed.organizations != [NODES_GROUP] {
        return Err(format!("organization must be exactly [\"{NODES_GROUP}\"], not {:?}", parsed.organizations));
    }
    if parsed.common_name.strip_prefix(NODE_PREFIX).is_none_or(str::is_empty) {
        return Err(format!("common name must start with \"{NODE_PREFIX}\", not {:?}", parsed.common_name));
    }
    if parsed.has_sans {
        return Err("subject alternative names are not allowed".into());
    }
    let u = usages(csr);
    if !u.contains(&"digital signature") {
        return Err("the \"digital signature\" usage is required".into());
    }
    client_usages(&u)
}

/// What the signer does with an approved request of one of our signers.
pub fn signing(csr: &CertificateSigningRequest, parsed: &ParsedCsr) -> Result<(ClientUsages, i64), String> {
    let usages = match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT => kubelet_client(csr, parsed)?,
        APISERVER_CLIENT => {
            if parsed.common_name.is_empty() {
                return Err("a client certificate needs a common name".into());
            }
            client_usages(&usages(csr))?
        }
        other => return Err(format!("signer {other:?} is not served here")),
    };
    let lifetime = csr
        .spec
        .expiration_seconds
        .map(|e| i64::from(e).clamp(MIN_LIFETIME_S, DEFAULT_LIFETIME_S))
        .unwrap_or(DEFAULT_LIFETIME_S);
    Ok((usages, lifetime))
}

/// Whether the approver approves `csr` (still pending): a kubelet client request
/// whose requester may create `certificatesigningrequests/selfnodeclient` (renewing
/// its own identity) or `certificatesigningrequests/nodeclient` (a new node, as the
/// bootstrap token's group may). `None` leaves the request to a person.
pub fn auto_approve(
    csr: &CertificateSigningRequest,
    parsed: &ParsedCsr,
    authz: &dyn Authorizer,
) -> Option<&'static str> {
    if csr.spec.signer_name != KUBELET_CLIENT || kubelet_client(csr, parsed).is_err() {
        return None;
    }
    let requester = UserInfo {
        name: csr.spec.username.clone().unwrap_or_default(),
        groups: csr.spec.groups.clone().unwrap_or_default(),
    };
    let subresource = if requester.name == parsed.common_name { "selfnodeclient" } else { "nodeclient" };
    let attrs = Attributes::Resource {
        verb: "create".into(),
        group: "certificates.k8s.io".into(),
        resource: "certificatesigningrequests".into(),
        subresource: Some(subresource.into()),
        namespace: None,
        name: None,
    };
    (authz.authorize(&requester, &attrs) == Decision::Allow).then_some(subresource)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::signer::parse_csr;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec;
    use rcgen::KeyPair;

    fn csr(
        cn: &str,
        orgs: &[&str],
        requester: &str,
        groups: &[&str],
        usages: &[&str],
    ) -> (CertificateSigningRequest, ParsedCsr) {
        let key = KeyPair::generate().unwrap();
        let pem = crate::tls::signer::request_pem(cn, orgs, &key).unwrap();
        let csr = CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: ByteString(pem.clone().into_bytes()),
                signer_name: KUBELET_CLIENT.into(),
                usages: Some(usages.iter().map(|u| u.to_string()).collect()),
                username: Some(requester.into()),
                groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                ..Default::default()
            },
            ..Default::default()
        };
        (csr, parse_csr(pem.as_bytes()).unwrap())
    }

    /// Allows exactly the bootstrappers `nodeclient` and the nodes `selfnodeclient`.
    struct Policy;
    impl Authorizer for Policy {
        fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
            let sub = match attrs {
                Attributes::Resource { subresource, .. } => subresource.as_deref().unwrap_or(""),
                _ => "",
            };
            let ok = (sub == "nodeclient" && user.in_group("system:bootstrappers"))
                || (sub == "selfnodeclient" && user.in_group(NODES_GROUP));
            if ok { Decision::Allow } else { Decision::Deny("no".into()) }
        }
    }

    const KUBELET: &[&str] = &["digital signature", "client auth"];

    #[test]
    fn approves_bootstrap_and_renewal_only() {
        let boot = ["system:bootstrappers", "system:authenticated"];
        let (c, p) = csr("system:node:n1", &["system:nodes"], "system:bootstrap:abcdef", &boot, KUBELET);
        assert_eq!(auto_approve(&c, &p, &Policy), Some("nodeclient"));
        assert_eq!(state(&c), State::Pending);
        let (c, p) = csr("system:node:n1", &["system:nodes"], "system:node:n1", &["system:nodes"], KUBELET);
        assert_eq!(auto_approve(&c, &p, &Policy), Some("selfnodeclient"));
        // A node asking for another node's identity needs nodeclient, which it lacks.
        let (c, p) = csr("system:node:n2", &["system:nodes"], "system:node:n1", &["system:nodes"], KUBELET);
        assert_eq!(auto_approve(&c, &p, &Policy), None);
        // Not a kubelet client request: wrong group, extra group, wrong usages, someone else.
        let (c, p) = csr("system:node:n1", &["system:masters"], "system:bootstrap:abcdef", &boot, KUBELET);
        assert_eq!(auto_approve(&c, &p, &Policy), None);
        let (c, p) =
            csr("system:node:n1", &["system:nodes", "system:masters"], "system:bootstrap:abcdef", &boot, KUBELET);
        assert_eq!(auto_approve(&c, &p, &Policy), None);
        let (c, p) = csr(
            "system:node:n1",
            &["system:nodes"],
            "system:bootstrap:abcdef",
            &boot,
            &["digital signature", "server auth"],
        );
        assert_eq!(auto_approve(&c, &p, &Policy), None);
        let (c, p) = csr("system:node:n1", &["system:nodes"], "mallory", &["system:authenticated"], KUBELET);
        assert_eq!(auto_approve(&c, &p, &Policy), None);
    }

    #[test]
    fn signing_rules() {
        let (mut c, p) = csr("system:node:n1", &["system:nodes"], "x", &[], KUBELET);
        assert_eq!(signing(&c, &p).unwrap(), (ClientUsages { key_encipherment: false }, DEFAULT_LIFETIME_S));
        c.spec.expiration_seconds = Some(60);
        assert_eq!(signing(&c, &p).unwrap().1, MIN_LIFETIME_S);
        let (mut c, p) = csr("alice", &["devs"], "x", &[], &["client auth", "key encipherment"]);
        assert!(signing(&c, &p).is_err(), "alice is no kubelet");
        c.spec.signer_name = APISERVER_CLIENT.into();
        assert_eq!(signing(&c, &p).unwrap().0, ClientUsages { key_encipherment: true });
        c.spec.signer_name = "example.com/other".into();
        assert!(signing(&c, &p).is_err());
    }
}
