//! End-to-end tests of ServiceAccount tokens with the real kubectl (v1.32 when installed
//! as `kubectl.1.32` next to the dispatcher, else `kubectl` on PATH, or
//! `$SKIFF_KUBECTL`): `kubectl create token`, the token as a bearer credential under
//! RBAC, and the ways a token stops working (audience, tampering, deleted objects).
//!
//! Each test starts its own `skiff-control` through a guard that kills it on drop.
//! A missing kubectl fails them, saying how to get one.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::Server;

trait TokenCalls {
    fn with_token(&self, token: &str, args: &[&str]) -> Output;
}

impl TokenCalls for Server {
    /// kubectl with only a bearer token (an empty kubeconfig, so no certificate).
    fn with_token(&self, token: &str, args: &[&str]) -> Output {
        let empty = self.tmp.path().join("empty.kubeconfig");
        std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").unwrap();
        let ca = self.dir.join("pki/ca.crt");
        Command::new(&self.kubectl)
            .env("KUBECONFIG", &empty)
            .env("HOME", self.tmp.path())
            .args(["--server", &format!("https://127.0.0.1:{}", self.port)])
            .args(["--certificate-authority", ca.to_str().unwrap(), "--token", token])
            .args(args)
            .output()
            .unwrap()
    }
}

fn check_ok(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts failure; returns stderr.
fn check_fails(args: &[&str], out: Output) -> String {
    assert!(!out.status.success(), "kubectl {args:?} should fail but printed {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

/// kubectl's wording for a 401 depends on the verb; both mean "Unauthorized".
fn is_unauthorized(stderr: &str) -> bool {
    stderr.contains("Unauthorized") || stderr.contains("provide credentials")
}

/// Retries `f` until it returns true, for changes that arrive through the RBAC watch.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn decode_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn create_token_rbac_audience_tampering_and_revocation() {
    let mut s = Server::start();
    let key = s.dir.join("sa-signer.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // Discovery advertises the subresource, so kubectl knows it can ask.
    let v1 = s.ok(&["get", "--raw", "/api/v1"]);
    let v1: serde_json::Value = serde_json::from_str(&v1).unwrap();
    let tr = v1["resources"].as_array().unwrap().iter().find(|r| r["name"] == "serviceaccounts/token").cloned();
    assert_eq!(tr.as_ref().map(|r| r["verbs"].clone()), Some(serde_json::json!(["create"])), "{v1}");

    s.ok(&["create", "namespace", "team"]);
    s.ok(&["create", "serviceaccount", "bot", "-n", "team"]);
    let e = s.fails(&["create", "token", "nobody", "-n", "team"]);
    assert!(e.contains("NotFound") || e.contains("not found"), "{e}");

    let token = s.ok(&["create", "token", "bot", "-n", "team"]).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let claims = decode_claims(&token);
    assert_eq!(claims["sub"], "system:serviceaccount:team:bot");
    assert_eq!(claims["iss"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(claims["aud"], serde_json::json!(["https://kubernetes.default.svc.cluster.local"]));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
    let sa_uid = s.ok(&["get", "sa", "bot", "-n", "team", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], sa_uid.as_str());

    // `kubectl auth whoami` (SelfSubjectReview) is open to every authenticated user.
    let who = check_ok(&["auth", "whoami"], s.with_token(&token, &["auth", "whoami", "-o", "json"]));
    let who: serde_json::Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:serviceaccount:team:bot", "{who}");
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        serde_json::json!(["system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"])
    );
    let who = s.ok(&["auth", "whoami"]);
    assert!(who.contains("Username") && who.contains("admin") && who.contains("system:masters"), "{who}");

    // Authenticated, but RBAC grants nothing yet.
    let e = check_fails(&["get", "pods"], s.with_token(&token, &["get", "pods", "-n", "team"]));
    assert!(
        e.contains("Forbidden") && e.contains("User \"system:serviceaccount:team:bot\" cannot list resource \"pods\""),
        "{e}"
    );
    // Creating tokens is itself authorized (serviceaccounts/token), so bot cannot mint more.
    let e = check_fails(&["create", "token"], s.with_token(&token, &["create", "token", "bot", "-n", "team"]));
    assert!(e.contains("is forbidden") && e.contains("cannot create resource \"serviceaccounts/token\""), "{e}");

    s.ok(&["create", "rolebinding", "bot-view", "-n", "team", "--clusterrole=view", "--serviceaccount=team:bot"]);
    eventually("the RoleBinding granting bot view", || {
        s.with_token(&token, &["get", "pods", "-n", "team"]).status.success()
    });
    let e = check_fails(&["get", "pods"], s.with_token(&token, &["get", "pods", "-n", "default"]));
    assert!(e.contains("Forbidden"), "the binding is namespaced: {e}");

    // The raw TokenRequest: defaults echoed back, expiry in status.
    let body = s.write(
        "tr.json",
        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":7200}}"#,
    );
    let tr = s.ok(&["create", "--raw", "/api/v1/namespaces/team/serviceaccounts/bot/token", "-f", &body]);
    let tr: serde_json::Value = serde_json::from_str(&tr).unwrap();
    assert_eq!(tr["kind"], "TokenRequest");
    assert_eq!(tr["spec"]["expirationSeconds"], 7200);
    assert_eq!(tr["spec"]["audiences"], serde_json::json!(["https://kubernetes.default.svc.cluster.local"]));
    assert!(tr["status"]["expirationTimestamp"].as_str().unwrap().ends_with('Z'), "{tr}");
    assert!(s.with_token(tr["status"]["token"].as_str().unwrap(), &["get", "sa", "-n", "team"]).status.success());

    // Lifetimes outside [10m, 48h] are 422.
    let e = s.fails(&["create", "token", "bot", "-n", "team", "--duration=5m"]);
    assert!(e.contains("less than 10 minutes"), "{e}");
    let e = s.fails(&["create", "token", "bot", "-n", "team", "--duration=49h"]);
    assert!(e.contains("larger than 48h"), "{e}");

    // A token for another audience is not for us.
    let vault = s.ok(&["create", "token", "bot", "-n", "team", "--audience=vault"]).trim().to_string();
    assert_eq!(decode_claims(&vault)["aud"], serde_json::json!(["vault"]));
    let e = check_fails(&["get", "pods"], s.with_token(&vault, &["get", "pods", "-n", "team"]));
    assert!(is_unauthorized(&e), "{e}");

    // Tampering: swap in another namespace's claims under the original signature.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = "system:serviceaccount:kube-system:bot".into();
    forged_claims["kubernetes.io"]["namespace"] = "kube-system".into();
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64.encode(forged_claims.to_string()), parts[2]);
    let e = check_fails(&["get", "pods"], s.with_token(&forged, &["get", "pods", "-n", "team"]));
    assert!(is_unauthorized(&e), "{e}");

    // The signing key survives a restart, and so do the tokens it signed.
    s.restart();
    assert!(s.with_token(&token, &["get", "pods", "-n", "team"]).status.success(), "token after restart");

    // A token bound to a Pod dies with the Pod.
    let pod = s.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: team\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
    );
    s.ok(&["apply", "-f", &pod]);
    let bound = s
        .ok(&["create", "token", "bot", "-n", "team", "--bound-object-kind=Pod", "--bound-object-name=p"])
        .trim()
        .to_string();
    assert_eq!(decode_claims(&bound)["kubernetes.io"]["pod"]["name"], "p");
    assert!(s.with_token(&bound, &["get", "pods", "-n", "team"]).status.success());
    s.ok(&["delete", "pod", "p", "-n", "team"]);
    let e = check_fails(&["get", "pods"], s.with_token(&bound, &["get", "pods", "-n", "team"]));
    assert!(is_unauthorized(&e), "{e}");
    let e = s.fails(&["create", "token", "bot", "-n", "team", "--bound-object-kind=Pod", "--bound-object-name=p"]);
    assert!(e.contains("not found"), "{e}");

    // Deleting and recreating the ServiceAccount revokes its old tokens (new uid), while
    // the RoleBinding (by name) applies to the new one's tokens.
    s.ok(&["delete", "serviceaccount", "bot", "-n", "team"]);
    s.ok(&["create", "serviceaccount", "bot", "-n", "team"]);
    let e = check_fails(&["get", "pods"], s.with_token(&token, &["get", "pods", "-n", "team"]));
    assert!(is_unauthorized(&e), "{e}");
    let fresh = s.ok(&["create", "token", "bot", "-n", "team"]).trim().to_string();
    assert!(s.with_token(&fresh, &["get", "pods", "-n", "team"]).status.success());

    // The reasons are logged at info; the tokens never are.
    let log = s.log();
    assert!(log.contains("rejected ServiceAccount token"), "{log}");
    assert!(log.contains("JWT audience is not accepted"), "{log}");
    for t in [&token, &vault, &bound, &fresh] {
        assert!(!log.contains(t.as_str()), "a token leaked into the log");
    }
    // Static tokens and certificates are unaffected: the admin still works.
    s.ok(&["get", "ns", "team"]);
}

/// skiff-api's in-cluster configuration, as a pod would use it: the token and CA laid
/// out as the kubelet mounts them, the Service's host and port in the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_config_acts_as_the_service_account() {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    use k8s_openapi::api::core::v1::Pod;
    use skiff_api::incluster;

    let s = Server::start();
    s.ok(&["create", "namespace", "team"]);
    s.ok(&["create", "serviceaccount", "bot", "-n", "team"]);
    s.ok(&["create", "rolebinding", "bot-view", "-n", "team", "--clusterrole=view", "--serviceaccount=team:bot"]);
    let token = s.ok(&["create", "token", "bot", "-n", "team"]);

    let sa_dir = s.tmp.path().join("serviceaccount");
    std::fs::create_dir(&sa_dir).unwrap();
    std::fs::write(sa_dir.join(incluster::TOKEN_FILE), &token).unwrap();
    std::fs::copy(s.dir.join("pki/ca.crt"), sa_dir.join(incluster::CA_FILE)).unwrap();
    std::fs::write(sa_dir.join(incluster::NAMESPACE_FILE), "team").unwrap();
    let port = s.port.to_string();
    let env = |var: &str| match var {
        incluster::HOST_ENV => Some("127.0.0.1".to_string()),
        incluster::PORT_ENV => Some(port.clone()),
        _ => None,
    };
    let config = incluster::load_from(&sa_dir, env).unwrap();
    assert_eq!(config.namespace, "team");
    let client = skiff_api::Client::from_credentials(&config.credentials, "in-cluster-test").unwrap();

    let review: SelfSubjectReview = client.create(None, &SelfSubjectReview::default()).await.unwrap();
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:team:bot"));

    // RBAC applies to it as to any ServiceAccount; the binding arrives through a watch.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = client.list::<Pod>(Some(&config.namespace), &Default::default()).await {
        assert!(e.is_forbidden() && std::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = client.list::<Pod>(Some("default"), &Default::default()).await.unwrap_err();
    assert!(e.is_forbidden(), "{e}");
}
