//! ServiceAccount tokens: the cluster's signing key (ECDSA P-256, kept in
//! `<data-dir>/sa-signer.key`, generated on first start and reused afterwards) and the
//! JWTs signed with it, in the shape Kubernetes issues (`alg`/`kid` header; `iss`, `sub`,
//! `aud`, `iat`, `nbf`, `exp` and the `kubernetes.io` claims).
//!
//! This module proves only that a token is ours, unexpired and meant for us. It must
//! not decide whether the ServiceAccount (or the Pod a token is bound to) still exists:
//! that needs the store, and the API server checks it after `verify` succeeds. It never
//! logs a token.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};

use super::{AUTHENTICATED, UserInfo};

/// The issuer Kubernetes uses by default; also the default (and only accepted) API
/// audience, so tokens minted for other audiences are refused here.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const USER_PREFIX: &str = "system:serviceaccount:";
pub const ALL_GROUP: &str = "system:serviceaccounts";

/// Clock skew tolerated on `nbf`/`iat`, so a token minted by a node whose clock is a
/// little ahead is not refused. `exp` gets no leeway: expiry is a promise to the holder.
const LEEWAY_SECS: i64 = 60;
/// Tokens bigger than this are not ours; refusing early bounds the work a stranger causes.
const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the ServiceAccount signing key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the ServiceAccount signing key {path} is unusable ({source}); restore it from a backup, or delete it to \
         generate a new one (every issued token then stops working)"
    )]
    BadKey { path: PathBuf, source: KeyProblem },
    #[error("cannot write the ServiceAccount signing key: {0}")]
    Write(#[from] crate::tls::Error),
    #[error("generating or using the ServiceAccount signing key failed")]
    Crypto,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a signing key file that exists.
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    #[error(transparent)]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("not a PKCS#8 key")]
    NotPkcs8,
    /// Not an ECDSA P-256 key, or a malformed one.
    #[error(transparent)]
    Rejected(#[from] ring::error::KeyRejected),
}

/// Why a token was refused. The text goes to the log (never to the client, which only
/// sees 401) and never contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    WrongKey,
    BadSignature,
    BadClaims,
    WrongIssuer,
    Expired,
    NotYetValid,
    WrongAudience,
}

impl Reject {
    /// Static, so `authn::Outcome::Invalid` can carry it without allocating.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Malformed => "not a JWT",
            Reject::WrongKey => "JWT header is not ES256 with our key id",
            Reject::BadSignature => "JWT signature does not verify",
            Reject::BadClaims => "JWT claims are not a ServiceAccount token",
            Reject::WrongIssuer => "JWT issuer is not this cluster",
            Reject::Expired => "JWT is expired",
            Reject::NotYetValid => "JWT is not valid yet",
            Reject::WrongAudience => "JWT audience is not accepted by this server",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Reject {}

/// Seconds since the Unix epoch, the unit of `iat`/`nbf`/`exp`.
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A reference to the object a token names (ServiceAccount or Pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
}

/// `aud` may be one string or a list (RFC 7519 §4.1.3); we always issue a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireClaims {
    iss: String,
    sub: String,
    aud: Audience,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

/// The claims of a ServiceAccount token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub audiences: Vec<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub kubernetes: KubernetesClaims,
}

impl Claims {
    /// Claims for a token of `namespace`/`sa` valid from `now` for `ttl_secs`.
    pub fn new(now: i64, ttl_secs: i64, audiences: Vec<String>, namespace: &str, sa: ObjectRef) -> Self {
        Self {
            audiences,
            issued_at: now,
            expires_at: now + ttl_secs,
            kubernetes: KubernetesClaims { namespace: namespace.into(), serviceaccount: sa, pod: None },
        }
    }

    pub fn username(&self) -> String {
        format!("{USER_PREFIX}{}:{}", self.kubernetes.namespace, self.kubernetes.serviceaccount.name)
    }

    /// The user a live token authenticates as (Kubernetes' `serviceaccount.UserInfo`).
    pub fn user_info(&self) -> UserInfo {
        UserInfo {
            name: self.username(),
            groups: vec![ALL_GROUP.into(), format!("{ALL_GROUP}:{}", self.kubernetes.namespace), AUTHENTICATED.into()],
        }
    }
}

/// Cheap shape test so static tokens and other garbage never pay for base64 and JSON:
/// a compact JWS is three base64url parts, and its header always starts `{"` = `eyJ`.
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN_LEN && token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// The signing key pair and what verification needs.
pub struct Keys {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
    /// Audiences this server accepts (Kubernetes' `--api-audiences`).
    audiences: Vec<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("Keys").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Keys {
    fn from_pkcs8(der: &[u8], path: &Path) -> Result<Self> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| Error::BadKey { path: path.into(), source: e.into() })?;
        // Kubernetes derives the key id from the public key; any stable digest of it
        // lets verifiers pick the right key once there is more than one.
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref());
        let kid = b64().encode(digest.as_ref());
        Ok(Self { pair, kid, rng, audiences: vec![ISSUER.into()] })
    }

    /// Loads the key from `path` (PKCS#8 PEM), generating and saving one (mode 0600) if
    /// the file does not exist. A present but unreadable key is an error, never silently
    /// replaced: that would invalidate every token in the cluster.
    pub fn load_or_generate(path: &Path) -> Result<Self> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        match std::fs::read(path) {
            Ok(pem) => {
                let key = PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| Error::BadKey { path: path.into(), source: e.into() })?;
                let PrivateKeyDer::Pkcs8(der) = key else {
                    return Err(Error::BadKey { path: path.into(), source: KeyProblem::NotPkcs8 });
                };
                Self::from_pkcs8(der.secret_pkcs8_der(), path)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                    .map_err(|_| Error::Crypto)?;
                let body = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
                let lines: Vec<&str> =
                    body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
                let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
                crate::tls::write_private(path, &pem, true)?;
                let keys = Self::from_pkcs8(doc.as_ref(), path)?;
                tracing::info!(path = %path.display(), kid = %keys.kid, "generated ServiceAccount signing key");
                Ok(keys)
            }
            Err(source) => Err(Error::Read { path: path.into(), source }),
        }
    }

    /// The audiences this server accepts; the default audience of a TokenRequest.
    pub fn api_audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Signs `claims` into a compact JWS.
    pub fn issue(&self, claims: &Claims) -> Result<String> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid});
        let wire = WireClaims {
            iss: ISSUER.into(),
            sub: claims.username(),
            aud: Audience::Many(claims.audiences.clone()),
            iat: claims.issued_at,
            nbf: claims.issued_at,
            exp: claims.expires_at,
            kubernetes: claims.kubernetes.clone(),
        };
        let payload = serde_json::to_vec(&wire).map_err(|_| Error::Crypto)?;
        let signing_input = format!("{}.{}", b64().encode(header.to_string()), b64().encode(payload));
        let sig = self.pair.sign(&self.rng, signing_input.as_bytes()).map_err(|_| Error::Crypto)?;
        Ok(format!("{signing_input}.{}", b64().encode(sig.as_ref())))
    }

    /// Checks signature, issuer, validity window (at unix time `now`) and audience.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, Reject> {
        if !looks_like_jwt(token) {
            return Err(Reject::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Reject::Malformed);
        };
        let header: serde_json::Value =
            b64().decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(Reject::Malformed)?;
        // Pinning alg to ES256 closes the classic `alg: none` / algorithm-confusion holes.
        if header.get("alg").and_then(|a| a.as_str()) != Some("ES256")
            || header.get("kid").and_then(|k| k.as_str()).is_some_and(|k| k != self.kid)
        {
            return Err(Reject::WrongKey);
        }
        let sig = b64().decode(s).map_err(|_| Reject::Malformed)?;
        let signed = &token[..h.len() + 1 + p.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref())
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| Reject::BadSignature)?;
        // Only signed bytes are parsed beyond the header.
        let payload = b64().decode(p).map_err(|_| Reject::Malformed)?;
        let wire: WireClaims = serde_json::from_slice(&payload).map_err(|_| Reject::BadClaims)?;
        if wire.iss != ISSUER {
            return Err(Reject::WrongIssuer);
        }
        let k = &wire.kubernetes;
        if k.namespace.is_empty()
            || k.serviceaccount.name.is_empty()
            || k.serviceaccount.uid.is_empty()
            || wire.sub != format!("{USER_PREFIX}{}:{}", k.namespace, k.serviceaccount.name)
        {
            return Err(Reject::BadClaims);
        }
        if now >= wire.exp {
            return Err(Reject::Expired);
        }
        if wire.nbf > now + LEEWAY_SECS || wire.iat > now + LEEWAY_SECS {
            return Err(Reject::NotYetValid);
        }
        let audiences = match wire.aud {
            Audience::One(a) => vec![a],
            Audience::Many(a) => a,
        };
        if !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(Reject::WrongAudience);
        }
        Ok(Claims { audiences, issued_at: wire.iat, expires_at: wire.exp, kubernetes: wire.kubernetes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> ObjectRef {
        ObjectRef { name: "bot".into(), uid: "u-1".into() }
    }

    fn keys(dir: &Path) -> Keys {
        Keys::load_or_generate(&dir.join("sa-signer.key")).unwrap()
    }

    fn part(token: &str, i: usize) -> serde_json::Value {
        serde_json::from_slice(&b64().decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn key_is_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = keys(dir.path());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("sa-signer.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = keys(dir.path());
        assert_eq!(a.kid, b.kid);
        // A token from before a restart still verifies after it.
        let t = a.issue(&Claims::new(1000, 3600, vec![ISSUER.into()], "ns", sa())).unwrap();
        assert!(b.verify(&t, 1001).is_ok());
        std::fs::write(dir.path().join("sa-signer.key"), "garbage").unwrap();
        assert!(matches!(Keys::load_or_generate(&dir.path().join("sa-signer.key")), Err(Error::BadKey { .. })));
    }

    #[test]
    fn encode_has_the_kubernetes_shape_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path());
        let mut c = Claims::new(1000, 3600, vec![ISSUER.into()], "ns", sa());
        c.kubernetes.pod = Some(ObjectRef { name: "p".into(), uid: "u-2".into() });
        let t = k.issue(&c).unwrap();
        assert!(looks_like_jwt(&t));
        let h = part(&t, 0);
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["kid"], k.kid.as_str());
        let p = part(&t, 1);
        assert_eq!(p["iss"], ISSUER);
        assert_eq!(p["sub"], "system:serviceaccount:ns:bot");
        assert_eq!(p["aud"], serde_json::json!([ISSUER]));
        assert_eq!((p["iat"].as_i64(), p["nbf"].as_i64(), p["exp"].as_i64()), (Some(1000), Some(1000), Some(4600)));
        assert_eq!(p["kubernetes.io"]["serviceaccount"], serde_json::json!({"name": "bot", "uid": "u-1"}));
        assert_eq!(p["kubernetes.io"]["pod"]["uid"], "u-2");
        assert_eq!(k.verify(&t, 2000), Ok(c.clone()));
        let u = c.user_info();
        assert_eq!(u.name, "system:serviceaccount:ns:bot");
        assert_eq!(u.groups, ["system:serviceaccounts", "system:serviceaccounts:ns", AUTHENTICATED]);
    }

    #[test]
    fn expired_early_tampered_foreign_and_wrong_audience_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path());
        let t = k.issue(&Claims::new(1000, 600, vec![ISSUER.into()], "ns", sa())).unwrap();
        assert_eq!(k.verify(&t, 1600), Err(Reject::Expired));
        assert_eq!(k.verify(&t, 1000 - LEEWAY_SECS - 1), Err(Reject::NotYetValid));
        assert!(k.verify(&t, 1599).is_ok());

        // Changing one claim (the namespace) without re-signing breaks the signature.
        let mut p = part(&t, 1);
        p["kubernetes.io"]["namespace"] = "kube-system".into();
        p["sub"] = "system:serviceaccount:kube-system:bot".into();
        let mut segs: Vec<String> = t.split('.').map(String::from).collect();
        segs[1] = b64().encode(p.to_string());
        assert_eq!(k.verify(&segs.join("."), 1001), Err(Reject::BadSignature));
        // So does flipping a signature byte.
        let mut sig = b64().decode(t.split('.').nth(2).unwrap()).unwrap();
        sig[10] ^= 1;
        let forged = format!("{}.{}", t.rsplit_once('.').unwrap().0, b64().encode(sig));
        assert_eq!(k.verify(&forged, 1001), Err(Reject::BadSignature));
        // `alg: none` with an empty signature.
        let none = format!("{}.{}.", b64().encode(r#"{"alg":"none"}"#), t.split('.').nth(1).unwrap());
        assert_eq!(k.verify(&none, 1001), Err(Reject::WrongKey));

        // A token from another cluster's key.
        let other_dir = tempfile::tempdir().unwrap();
        let other = keys(other_dir.path());
        let foreign = other.issue(&Claims::new(1000, 600, vec![ISSUER.into()], "ns", sa())).unwrap();
        assert!(matches!(k.verify(&foreign, 1001), Err(Reject::WrongKey | Reject::BadSignature)));

        let vault = k.issue(&Claims::new(1000, 600, vec!["vault".into()], "ns", sa())).unwrap();
        assert_eq!(k.verify(&vault, 1001), Err(Reject::WrongAudience));
        let both = k.issue(&Claims::new(1000, 600, vec!["vault".into(), ISSUER.into()], "ns", sa())).unwrap();
        assert!(k.verify(&both, 1001).is_ok());

        for junk in ["", "abc", "eyJ.eyJ", "eyJhbGciOiJFUzI1NiJ9.e30.", "eyJ!.x.y"] {
            assert!(k.verify(junk, 1001).is_err(), "{junk}");
        }
    }
}
