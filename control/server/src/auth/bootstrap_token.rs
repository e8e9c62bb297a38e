//! Bootstrap tokens, as upstream: a bearer token `<id>.<secret>` (6 and 16 characters
//! of `[a-z0-9]`) is checked against the Secret `kube-system/bootstrap-token-<id>` of
//! type `bootstrap.kubernetes.io/token`, and authenticates as `system:bootstrap:<id>`
//! in group `system:bootstrappers` plus the Secret's `auth-extra-groups`, until its
//! `expiration`. Nodes use one to ask for their client certificate.
//!
//! Pure: the store lookup is the API server's (`Outcome::BootstrapToken` says "look
//! this up"); this module parses tokens, judges a Secret and makes new tokens. It must
//! never log a token's secret half.

use base64::Engine;
use serde_json::{Value, json};

use super::{AUTHENTICATED, UserInfo};

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const NAMESPACE: &str = "kube-system";
pub const GROUP: &str = "system:bootstrappers";
const USER_PREFIX: &str = "system:bootstrap:";

/// A token, split into its public id and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("id", &self.id).finish_non_exhaustive()
    }
}

fn token_chars(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Token {
    /// Parses `<id>.<secret>`; anything else is not a bootstrap token.
    pub fn parse(s: &str) -> Option<Self> {
        let (id, secret) = s.split_once('.')?;
        (token_chars(id, 6) && token_chars(secret, 16)).then(|| Self { id: id.into(), secret: secret.into() })
    }

    /// A new random token.
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let rng = ring::rand::SystemRandom::new();
        let pick = |n: usize| -> String {
            let mut bytes = vec![0u8; n];
            ring::rand::SecureRandom::fill(&rng, &mut bytes).expect("the system random source works");
            // 256 % 36 = 4: the bias is small and the secret long; kubeadm accepts it too.
            bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
        };
        Self { id: pick(6), secret: pick(16) }
    }

    pub fn secret_name(&self) -> String {
        format!("bootstrap-token-{}", self.id)
    }

    /// The bearer token as clients send it.
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The Secret that makes this token valid (no expiration: skiff-control's own node
    /// token lives as long as the cluster; delete the Secret to revoke it).
    pub fn secret_object(&self, description: &str) -> Value {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        json!({"kind": "Secret", "apiVersion": "v1", "type": SECRET_TYPE,
            "metadata": {"name": self.secret_name(), "namespace": NAMESPACE},
            "data": {"token-id": b(&self.id), "token-secret": b(&self.secret), "description": b(description),
                     "usage-bootstrap-authentication": b("true"), "usage-bootstrap-signing": b("true")}})
    }
}

fn data<'a>(secret: &'a Value, key: &str) -> Option<String> {
    let v: &'a str = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).ok()?).ok()
}

/// The user `token` is, given its Secret (as stored) and the time; or why not.
pub fn user_for(token: &Token, secret: &Value, now: i64) -> Result<UserInfo, &'static str> {
    if secret.get("type").and_then(|t| t.as_str()) != Some(SECRET_TYPE) {
        return Err("bootstrap token Secret has the wrong type");
    }
    if secret.pointer("/metadata/deletionTimestamp").is_some() {
        return Err("bootstrap token Secret is being deleted");
    }
    if data(secret, "token-id").as_deref() != Some(token.id.as_str()) {
        return Err("bootstrap token id does not match its Secret");
    }
    // Compared in constant time: the secret half is the password.
    let stored = data(secret, "token-secret").unwrap_or_default();
    let differ = stored.len() != token.secret.len()
        || stored.bytes().zip(token.secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0;
    if differ {
        return Err("bootstrap token secret does not match");
    }
    if data(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err("bootstrap token is not for authentication");
    }
    if let Some(exp) = data(secret, "expiration") {
        match exp.parse::<jiff::Timestamp>() {
            Ok(t) if t.as_second() > now => {}
            Ok(_) => return Err("bootstrap token has expired"),
            Err(_) => return Err("bootstrap token has an unreadable expiration"),
        }
    }
    let mut groups = vec![GROUP.to_string()];
    for g in data(secret, "auth-extra-groups").unwrap_or_default().split(',').map(str::trim).filter(|g| !g.is_empty()) {
        // As upstream: extra groups must be bootstrap groups, never e.g. system:masters.
        if !g.starts_with("system:bootstrappers:") {
            return Err("bootstrap token has an extra group outside system:bootstrappers:");
        }
        groups.push(g.to_string());
    }
    groups.push(AUTHENTICATED.into());
    Ok(UserInfo { name: format!("{USER_PREFIX}{}", token.id), groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_their_secrets() {
        assert!(Token::parse("abcdef.0123456789abcdef").is_some());
        for bad in
            ["abcdef0123456789abcdef", "abcde.0123456789abcdef", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde"]
        {
            assert!(Token::parse(bad).is_none(), "{bad}");
        }
        let t = Token::generate();
        assert_eq!(Token::parse(&t.bearer()), Some(t.clone()));
        assert!(!format!("{t:?}").contains(&t.secret));
        let mut s = t.secret_object("test");
        let u = user_for(&t, &s, 0).unwrap();
        assert_eq!(u.name, format!("system:bootstrap:{}", t.id));
        assert_eq!(u.groups, [GROUP, AUTHENTICATED]);
        let wrong = Token { id: t.id.clone(), secret: "0000000000000000".into() };
        assert_eq!(user_for(&wrong, &s, 0), Err("bootstrap token secret does not match"));

        let b = |v: &str| json!(base64::engine::general_purpose::STANDARD.encode(v));
        s["data"]["auth-extra-groups"] = b("system:bootstrappers:worker, system:bootstrappers:x");
        s["data"]["expiration"] = b("2030-01-01T00:00:00Z");
        let u = user_for(&t, &s, 0).unwrap();
        assert_eq!(u.groups, [GROUP, "system:bootstrappers:worker", "system:bootstrappers:x", AUTHENTICATED]);
        let after = "2030-01-01T00:00:01Z".parse::<jiff::Timestamp>().unwrap().as_second();
        assert_eq!(user_for(&t, &s, after), Err("bootstrap token has expired"));
        s["data"]["auth-extra-groups"] = b("system:masters");
        assert!(user_for(&t, &s, 0).is_err());
        s["type"] = json!("Opaque");
        assert!(user_for(&t, &s, 0).is_err());
    }
}
