//! The API objects a pod's spec refers to (ConfigMaps, Secrets, ServiceAccount tokens,
//! PersistentVolumeClaims and their volumes),
//! behind a trait so env and volume code is tested against a fake; the real
//! implementation is `skiff_api::Client`. [`TokenCache`] wraps any lookup so a pod's
//! token is requested again only when it nears its expiry, as upstream's token
//! manager does.
//!
//! This module must not interpret what it fetches (keys, modes, optional references
//! are env's and volumes' business) and must never log a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, ServiceAccount};

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("reading {what} from the API server failed: {source}")]
    Api {
        what: String,
        #[source]
        source: skiff_api::client::Error,
    },
    #[error("the API server answered the TokenRequest for ServiceAccount {what} without a token")]
    NoToken { what: String },
}

pub type Result<T, E = LookupError> = std::result::Result<T, E>;

/// What a pod's token is requested for: upstream binds it to the pod by name and uid,
/// so it dies with the pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenSpec {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// Empty: the API server's own audiences.
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
}

/// A token as issued.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    /// When it stops being accepted (the server's `status.expirationTimestamp`).
    pub expiration: jiff::Timestamp,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token itself is a credential: never in a log line.
        f.debug_struct("IssuedToken").field("expiration", &self.expiration).finish_non_exhaustive()
    }
}

/// The objects a pod refers to. `Ok(None)` is "no such object"; errors are failures
/// to find out.
pub trait ObjectLookup: Send + Sync {
    fn config_map(&self, namespace: &str, name: &str) -> impl Future<Output = Result<Option<ConfigMap>>> + Send;
    fn secret(&self, namespace: &str, name: &str) -> impl Future<Output = Result<Option<Secret>>> + Send;
    /// A ServiceAccount token for the pod (the TokenRequest API:
    /// `serviceaccounts/<sa>/token`, bound to the pod by name and uid).
    fn service_account_token(&self, spec: &TokenSpec) -> impl Future<Output = Result<IssuedToken>> + Send;
    fn persistent_volume_claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<PersistentVolumeClaim>>> + Send;
    fn persistent_volume(&self, name: &str) -> impl Future<Output = Result<Option<PersistentVolume>>> + Send;
}

impl ObjectLookup for skiff_api::Client {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>> {
        self.get_opt::<ConfigMap>(Some(namespace), name)
            .await
            .map_err(|source| LookupError::Api { what: format!("ConfigMap {namespace}/{name}"), source })
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
        self.get_opt::<Secret>(Some(namespace), name)
            .await
            .map_err(|source| LookupError::Api { what: format!("Secret {namespace}/{name}"), source })
    }

    async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>> {
        self.get_opt::<PersistentVolumeClaim>(Some(namespace), name)
            .await
            .map_err(|source| LookupError::Api { what: format!("PersistentVolumeClaim {namespace}/{name}"), source })
    }

    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>> {
        self.get_opt::<PersistentVolume>(None, name)
            .await
            .map_err(|source| LookupError::Api { what: format!("PersistentVolume {name}"), source })
    }

    async fn service_account_token(&self, spec: &TokenSpec) -> Result<IssuedToken> {
        let what = format!("{}/{}", spec.namespace, spec.service_account);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: spec.audiences.clone(),
                expiration_seconds: Some(spec.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(spec.pod_name.clone()),
                    // An empty uid would be checked against the pod's and refused.
                    uid: Some(spec.pod_uid.clone()).filter(|u| !u.is_empty()),
                }),
            },
            ..Default::default()
        };
        let answer: TokenRequest = self
            .create_subresource::<ServiceAccount, _, _>(Some(&spec.namespace), &spec.service_account, "token", &request)
            .await
            .map_err(|source| LookupError::Api { what: format!("a token of ServiceAccount {what}"), source })?;
        let status = answer.status.filter(|s| !s.token.is_empty()).ok_or(LookupError::NoToken { what })?;
        Ok(IssuedToken { token: status.token, expiration: status.expiration_timestamp.0 })
    }
}

/// A token is requested again once 80% of its lifetime has passed, or after a day,
/// whichever comes first (upstream's rule: the pod always holds a token with time
/// left, and a long-lived one is still rotated).
const REFRESH_FRACTION: f64 = 0.8;
const MAX_TOKEN_AGE: Duration = Duration::from_secs(24 * 3600);

struct CachedToken {
    token: IssuedToken,
    refresh_at: Instant,
}

/// An [`ObjectLookup`] that keeps each pod's tokens until they are due for refresh;
/// ConfigMaps and Secrets pass through (a volume refresh must see their changes).
pub struct TokenCache<L> {
    inner: L,
    tokens: Mutex<HashMap<TokenSpec, CachedToken>>,
}

impl<L> std::fmt::Debug for TokenCache<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.tokens.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("TokenCache").field("tokens", &n).finish_non_exhaustive()
    }
}

impl<L: ObjectLookup> TokenCache<L> {
    pub fn new(inner: L) -> Self {
        Self { inner, tokens: Mutex::new(HashMap::new()) }
    }

    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// Forgets the tokens of a pod (by uid), e.g. once it is gone.
    pub fn forget_pod(&self, pod_uid: &str) {
        if let Ok(mut t) = self.tokens.lock() {
            t.retain(|k, _| k.pod_uid != pod_uid);
        }
    }

    fn cached(&self, spec: &TokenSpec) -> Option<IssuedToken> {
        let tokens = self.tokens.lock().ok()?;
        tokens.get(spec).filter(|c| Instant::now() < c.refresh_at).map(|c| c.token.clone())
    }
}

/// When a token issued now with this expiry is due for refresh.
fn refresh_at(now: Instant, issued_at: jiff::Timestamp, expiration: jiff::Timestamp) -> Instant {
    let lifetime = expiration.duration_since(issued_at).as_secs_f64().max(0.0);
    let wait = Duration::from_secs_f64(lifetime * REFRESH_FRACTION).min(MAX_TOKEN_AGE);
    now + wait
}

impl<L: ObjectLookup> ObjectLookup for TokenCache<L> {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>> {
        self.inner.config_map(namespace, name).await
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
        self.inner.secret(namespace, name).await
    }

    async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>> {
        self.inner.persistent_volume_claim(namespace, name).await
    }

    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>> {
        self.inner.persistent_volume(name).await
    }

    async fn service_account_token(&self, spec: &TokenSpec) -> Result<IssuedToken> {
        if let Some(t) = self.cached(spec) {
            return Ok(t);
        }
        let issued_at = jiff::Timestamp::now();
        let token = self.inner.service_account_token(spec).await?;
        let entry =
            CachedToken { refresh_at: refresh_at(Instant::now(), issued_at, token.expiration), token: token.clone() };
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(spec.clone(), entry);
        }
        tracing::debug!(
            namespace = %spec.namespace,
            service_account = %spec.service_account,
            pod = %spec.pod_name,
            "requested a ServiceAccount token"
        );
        Ok(token)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory [`ObjectLookup`] for the env and volume tests.

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    #[derive(Default)]
    pub struct FakeLookup {
        pub config_maps: BTreeMap<(String, String), ConfigMap>,
        pub secrets: BTreeMap<(String, String), Secret>,
        pub claims: BTreeMap<(String, String), PersistentVolumeClaim>,
        pub volumes: BTreeMap<String, PersistentVolume>,
        /// How long issued tokens live.
        pub token_ttl_seconds: i64,
        pub tokens_issued: AtomicU32,
        /// Every lookup fails with this message when set (an API server that is away).
        pub fail: Option<String>,
    }

    impl FakeLookup {
        pub fn new() -> Self {
            Self { token_ttl_seconds: 3600, ..Default::default() }
        }

        pub fn with_config_map(mut self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
            let cm = ConfigMap {
                metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
                data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            };
            self.config_maps.insert((ns.into(), name.into()), cm);
            self
        }

        pub fn with_secret(mut self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
            let s = Secret {
                metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
                data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
                ..Default::default()
            };
            self.secrets.insert((ns.into(), name.into()), s);
            self
        }

        pub fn with_claim(mut self, ns: &str, claim: serde_json::Value) -> Self {
            let c: PersistentVolumeClaim = serde_json::from_value(claim).unwrap();
            self.claims.insert((ns.into(), c.metadata.name.clone().unwrap_or_default()), c);
            self
        }

        pub fn with_volume(mut self, volume: serde_json::Value) -> Self {
            let v: PersistentVolume = serde_json::from_value(volume).unwrap();
            self.volumes.insert(v.metadata.name.clone().unwrap_or_default(), v);
            self
        }

        fn check(&self) -> Result<()> {
            match &self.fail {
                Some(m) => Err(LookupError::NoToken { what: m.clone() }),
                None => Ok(()),
            }
        }
    }

    impl ObjectLookup for FakeLookup {
        async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>> {
            self.check()?;
            Ok(self.config_maps.get(&(namespace.into(), name.into())).cloned())
        }

        async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
            self.check()?;
            Ok(self.secrets.get(&(namespace.into(), name.into())).cloned())
        }

        async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>> {
            self.check()?;
            Ok(self.claims.get(&(namespace.into(), name.into())).cloned())
        }

        async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>> {
            self.check()?;
            Ok(self.volumes.get(name).cloned())
        }

        async fn service_account_token(&self, spec: &TokenSpec) -> Result<IssuedToken> {
            self.check()?;
            let n = self.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
            let expiration = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(self.token_ttl_seconds);
            Ok(IssuedToken {
                token: format!("token-{n}-for-{}/{}-{}", spec.namespace, spec.service_account, spec.pod_name),
                expiration,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::fake::FakeLookup;
    use super::*;

    fn spec(pod_uid: &str) -> TokenSpec {
        TokenSpec {
            namespace: "ns".into(),
            service_account: "default".into(),
            pod_name: "p".into(),
            pod_uid: pod_uid.into(),
            audiences: vec![],
            expiration_seconds: 3607,
        }
    }

    #[tokio::test]
    async fn tokens_are_reused_until_due_for_refresh() {
        let cache = TokenCache::new(FakeLookup::new());
        let a = cache.service_account_token(&spec("u1")).await.unwrap();
        let b = cache.service_account_token(&spec("u1")).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(cache.inner().tokens_issued.load(Ordering::SeqCst), 1);
        // Another pod (uid) gets its own token.
        let c = cache.service_account_token(&spec("u2")).await.unwrap();
        assert_ne!(a.token, c.token);
        cache.forget_pod("u1");
        let d = cache.service_account_token(&spec("u1")).await.unwrap();
        assert_ne!(a.token, d.token);
    }

    #[tokio::test]
    async fn an_expired_token_is_requested_again() {
        let mut fake = FakeLookup::new();
        fake.token_ttl_seconds = 0;
        let cache = TokenCache::new(fake);
        let a = cache.service_account_token(&spec("u1")).await.unwrap();
        // The fake's expiry is its own "now", microseconds after the cache's: only a
        // moment later is that token certainly due.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = cache.service_account_token(&spec("u1")).await.unwrap();
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn refresh_at_80_percent_or_a_day() {
        let now = Instant::now();
        let t0 = jiff::Timestamp::UNIX_EPOCH;
        let hour = t0 + jiff::SignedDuration::from_secs(3600);
        assert_eq!(refresh_at(now, t0, hour), now + Duration::from_secs(2880));
        let week = t0 + jiff::SignedDuration::from_secs(7 * 86400);
        assert_eq!(refresh_at(now, t0, week), now + MAX_TOKEN_AGE);
        // A token that expired before it arrived is refreshed at once.
        assert_eq!(refresh_at(now, hour, t0), now);
    }
}
