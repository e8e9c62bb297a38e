//! The authentication.k8s.io side of the API: the TokenRequest subresource
//! (`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`, what `kubectl create token`
//! calls), SelfSubjectReview (`kubectl auth whoami`), and the store half of
//! authenticating a ServiceAccount token (the ServiceAccount, and the Pod a token is
//! bound to, must still exist with the uids signed into it, so deleting and recreating
//! either revokes old tokens).
//!
//! Signing and signature checks live in `auth::serviceaccount`; this module must not
//! parse or sign JWTs itself, and must never log a token.

use http::StatusCode;
use serde_json::{Value, json};

use super::api_server::ApiServer;
use super::decode::decode_body;
use super::meta;
use super::object::{str_at, to_obj};
use super::request::{Ctx, Resp, json_response};
use super::resources::by_kind;
use super::status::{ApiError, ApiResult, Cause};
use crate::auth::UserInfo;
use crate::auth::serviceaccount::{Claims, ObjectRef};

const GROUP: &str = "authentication.k8s.io";
const DEFAULT_TTL: i64 = 3600;
/// Kubernetes refuses shorter tokens: clients refresh at 80% of the lifetime, and below
/// ten minutes that turns into constant churn.
const MIN_TTL: i64 = 600;
const MAX_TTL: i64 = 48 * 3600;
/// A Pod being deleted keeps its tokens this long after its deletionTimestamp, so its
/// containers can still talk to the API server while they shut down.
const DELETION_GRACE: i64 = 60;

/// Whether the object was deleted long enough ago that its tokens are dead.
fn gone_by(obj: &Value, now: i64) -> bool {
    str_at(obj, "/metadata/deletionTimestamp").and_then(meta::parse_time).is_some_and(|t| t + DELETION_GRACE < now)
}

fn invalid(name: &str, field: &str, value: &Value, detail: &str) -> ApiError {
    ApiError::invalid("TokenRequest", GROUP, name, vec![Cause::invalid(field, value, detail)])
}

/// The accepted parts of a TokenRequest's spec, defaulted.
#[derive(Debug, PartialEq)]
struct Spec {
    audiences: Vec<String>,
    ttl: i64,
    /// Bound Pod name and (optional) uid.
    pod: Option<(String, Option<String>)>,
}

fn parse_spec(body: &Value, name: &str, default_audiences: &[String]) -> ApiResult<Spec> {
    if let Some(k) = body.get("kind").and_then(|k| k.as_str())
        && k != "TokenRequest"
    {
        return Err(ApiError::bad_request(format!("expected kind TokenRequest, got {k}")));
    }
    if let Some(a) = body.get("apiVersion").and_then(|a| a.as_str())
        && a != "authentication.k8s.io/v1"
    {
        return Err(ApiError::bad_request(format!("expected apiVersion authentication.k8s.io/v1, got {a}")));
    }
    let spec = body.get("spec").cloned().unwrap_or(Value::Null);
    let audiences: Vec<String> = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().filter(|s| !s.is_empty()).map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid(name, "spec.audiences", &Value::Array(a.clone()), "must be non-empty strings"))?,
        Some(other) => return Err(invalid(name, "spec.audiences", other, "must be a list of strings")),
    };
    let audiences = if audiences.is_empty() { default_audiences.to_vec() } else { audiences };
    let ttl = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_TTL,
        Some(v) => v.as_i64().ok_or_else(|| invalid(name, "spec.expirationSeconds", v, "must be an integer"))?,
    };
    if ttl < MIN_TTL {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            &json!(ttl),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if ttl > MAX_TTL {
        return Err(invalid(name, "spec.expirationSeconds", &json!(ttl), "may not specify a duration larger than 48h"));
    }
    let pod = match spec.get("boundObjectRef") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let kind = r.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            if kind != "Pod" {
                return Err(invalid(
                    name,
                    "spec.boundObjectRef.kind",
                    &json!(kind),
                    "only tokens bound to a Pod are supported",
                ));
            }
            if let Some(av) = str_at(r, "/apiVersion")
                && av != "v1"
            {
                return Err(invalid(name, "spec.boundObjectRef.apiVersion", &json!(av), "must be v1 for a Pod"));
            }
            let pod = str_at(r, "/name").ok_or_else(|| {
                ApiError::invalid("TokenRequest", GROUP, name, vec![Cause::required("spec.boundObjectRef.name")])
            })?;
            Some((pod.to_string(), str_at(r, "/uid").map(String::from)))
        }
    };
    Ok(Spec { audiences, ttl, pod })
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`: the caller's own user
/// info. The body carries nothing the answer depends on, so it is not read.
pub(crate) fn self_subject_review(user: &UserInfo) -> ApiResult<Resp> {
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": meta::now()},
            "status": {"userInfo": {"username": user.name, "groups": user.groups}},
        }),
    ))
}

impl ApiServer {
    async fn live_object(&self, kind: &str, ns: &str, name: &str) -> ApiResult<Option<Value>> {
        let def = by_kind(kind).ok_or_else(|| ApiError::internal(format!("{kind} is not served")))?;
        self.store.get(&def.key(Some(ns), name)).await?.map(|kv| to_obj(&kv)).transpose()
    }

    /// The store half of ServiceAccount token authentication: the user, or why not
    /// (for the log; the client gets 401 either way).
    pub(crate) async fn service_account_user(&self, claims: &Claims) -> Result<UserInfo, &'static str> {
        let now = meta::unix_now();
        let k = &claims.kubernetes;
        let sa = match self.live_object("ServiceAccount", &k.namespace, &k.serviceaccount.name).await {
            Ok(Some(sa)) => sa,
            Ok(None) => return Err("ServiceAccount of the token no longer exists"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up the ServiceAccount of a token");
                return Err("ServiceAccount lookup failed");
            }
        };
        if str_at(&sa, "/metadata/uid") != Some(k.serviceaccount.uid.as_str()) {
            return Err("ServiceAccount of the token was deleted and recreated");
        }
        if gone_by(&sa, now) {
            return Err("ServiceAccount of the token is being deleted");
        }
        if let Some(pod_ref) = &k.pod {
            let pod = match self.live_object("Pod", &k.namespace, &pod_ref.name).await {
                Ok(Some(p)) => p,
                Ok(None) => return Err("Pod the token is bound to no longer exists"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look up the Pod of a token");
                    return Err("Pod lookup failed");
                }
            };
            if str_at(&pod, "/metadata/uid") != Some(pod_ref.uid.as_str()) {
                return Err("Pod the token is bound to was deleted and recreated");
            }
            if gone_by(&pod, now) {
                return Err("Pod the token is bound to has been deleted");
            }
        }
        Ok(claims.user_info())
    }

    /// `POST serviceaccounts/<name>/token`: issues a token for an existing ServiceAccount.
    pub(crate) async fn create_token(&self, ns: &str, name: &str, ctx: &Ctx) -> ApiResult<Resp> {
        let body = decode_body(&ctx.content_type, &ctx.body)?;
        let spec = parse_spec(&body, name, self.sa_keys.api_audiences())?;
        let sa = self
            .live_object("ServiceAccount", ns, name)
            .await?
            .ok_or_else(|| ApiError::not_found("serviceaccounts", "", name))?;
        let sa_uid = str_at(&sa, "/metadata/uid")
            .ok_or_else(|| ApiError::internal(format!("ServiceAccount {ns}/{name} has no uid")))?;
        let now = meta::unix_now();
        let mut claims =
            Claims::new(now, spec.ttl, spec.audiences.clone(), ns, ObjectRef { name: name.into(), uid: sa_uid.into() });
        let mut bound = Value::Null;
        if let Some((pod_name, want_uid)) = &spec.pod {
            let pod = self
                .live_object("Pod", ns, pod_name)
                .await?
                .ok_or_else(|| ApiError::not_found("pods", "", pod_name))?;
            let uid = str_at(&pod, "/metadata/uid").unwrap_or("");
            if want_uid.as_deref().is_some_and(|w| w != uid) {
                return Err(ApiError::conflict(
                    "pods",
                    "",
                    pod_name,
                    &format!(
                        "the UID in the bound object reference ({}) does not match the UID in record ({uid}); the \
                         object might have been deleted and then recreated",
                        want_uid.as_deref().unwrap_or("")
                    ),
                ));
            }
            claims.kubernetes.pod = Some(ObjectRef { name: pod_name.clone(), uid: uid.into() });
            bound = json!({"kind": "Pod", "apiVersion": "v1", "name": pod_name, "uid": uid});
        }
        let token = self.sa_keys.issue(&claims).map_err(|e| ApiError::internal(e.to_string()))?;
        tracing::info!(
            namespace = ns,
            serviceaccount = name,
            audiences = ?spec.audiences,
            ttl = spec.ttl,
            pod = spec.pod.as_ref().map(|p| p.0.as_str()).unwrap_or(""),
            user = %ctx.user.name,
            "issued ServiceAccount token"
        );
        let mut spec_out = json!({"audiences": spec.audiences, "expirationSeconds": spec.ttl});
        if !bound.is_null() {
            spec_out["boundObjectRef"] = bound;
        }
        Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": meta::format_time(now)},
                "spec": spec_out,
                "status": {"token": token, "expirationTimestamp": meta::format_time(claims.expires_at)},
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aud() -> Vec<String> {
        vec!["https://kubernetes.default.svc.cluster.local".into()]
    }

    #[test]
    fn spec_defaults_and_limits() {
        let s = parse_spec(&json!({"spec": {}}), "bot", &aud()).unwrap();
        assert_eq!(s, Spec { audiences: aud(), ttl: 3600, pod: None });
        let s = parse_spec(
            &json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "spec": {"audiences": ["vault"], "expirationSeconds": 600,
                         "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u"}}}),
            "bot",
            &aud(),
        )
        .unwrap();
        assert_eq!(s, Spec { audiences: vec!["vault".into()], ttl: 600, pod: Some(("p".into(), Some("u".into()))) });
        for ttl in [599, 48 * 3600 + 1] {
            let e = parse_spec(&json!({"spec": {"expirationSeconds": ttl}}), "bot", &aud()).unwrap_err();
            assert_eq!(e.code, 422, "{e}");
            assert_eq!(e.causes[0].field, "spec.expirationSeconds");
        }
        assert_eq!(parse_spec(&json!({"spec": {"expirationSeconds": 172800}}), "bot", &aud()).unwrap().ttl, 172800);
        let e = parse_spec(&json!({"spec": {"boundObjectRef": {"kind": "Secret", "name": "s"}}}), "bot", &aud());
        assert_eq!(e.unwrap_err().code, 422);
        let e = parse_spec(&json!({"spec": {"boundObjectRef": {"kind": "Pod"}}}), "bot", &aud());
        assert_eq!(e.unwrap_err().code, 422);
        assert_eq!(parse_spec(&json!({"kind": "Pod"}), "bot", &aud()).unwrap_err().code, 400);
    }

    /// The store half of token authentication, without HTTP or kubectl.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_die_with_their_service_account_or_pod() {
        use std::sync::Arc;

        use crate::auth::authn::Authenticator;
        use crate::auth::authz::BootstrapAuthorizer;
        use crate::auth::serviceaccount::Keys;
        use crate::store::{RedbStore, Store};

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
        let keys = Arc::new(Keys::load_or_generate(&dir.path().join("sa-signer.key")).unwrap());
        let cidr: ipnet::Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let api = ApiServer::new(store.clone(), Authenticator::default(), Box::new(BootstrapAuthorizer), cidr, keys);
        let put = |kind: &str, name: &str, uid: &str| {
            let key = by_kind(kind).unwrap().key(Some("ns"), name);
            let obj = json!({"kind": kind, "metadata": {"name": name, "namespace": "ns", "uid": uid}});
            let store = store.clone();
            async move {
                let _ = store.delete(&key, None).await;
                store.create(&key, serde_json::to_vec(&obj).unwrap().into()).await.unwrap();
            }
        };
        let now = meta::unix_now();
        let claims = Claims::new(now, 600, vec![], "ns", ObjectRef { name: "bot".into(), uid: "sa-1".into() });
        assert_eq!(api.service_account_user(&claims).await, Err("ServiceAccount of the token no longer exists"));
        put("ServiceAccount", "bot", "sa-1").await;
        assert_eq!(api.service_account_user(&claims).await.unwrap().name, "system:serviceaccount:ns:bot");

        let mut bound = claims.clone();
        bound.kubernetes.pod = Some(ObjectRef { name: "p".into(), uid: "pod-1".into() });
        assert_eq!(api.service_account_user(&bound).await, Err("Pod the token is bound to no longer exists"));
        put("Pod", "p", "pod-1").await;
        assert!(api.service_account_user(&bound).await.is_ok());
        put("Pod", "p", "pod-2").await;
        assert_eq!(api.service_account_user(&bound).await, Err("Pod the token is bound to was deleted and recreated"));

        put("ServiceAccount", "bot", "sa-2").await;
        assert_eq!(
            api.service_account_user(&claims).await,
            Err("ServiceAccount of the token was deleted and recreated")
        );
    }

    #[test]
    fn deletion_grace() {
        let now = 1_000_000;
        assert!(!gone_by(&json!({"metadata": {}}), now));
        let t = |secs: i64| json!({"metadata": {"deletionTimestamp": meta::format_time(secs)}});
        assert!(!gone_by(&t(now - 30), now));
        assert!(gone_by(&t(now - 61), now));
    }
}
