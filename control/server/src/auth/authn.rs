//! Authentication: maps a verified client certificate (user = CN, groups = O), a
//! bearer token from the static token file, or a ServiceAccount JWT signed by this
//! cluster to a `UserInfo`.
//!
//! The token file is Kubernetes' `--token-auth-file` format, one
//! `token,user,uid[,"group1,group2"]` per line. It must not accept unverified
//! certificates: rustls has checked the chain against our CA before we see it.
//!
//! A ServiceAccount token is only half-checked here (signature, expiry, audience): it
//! comes back as `Outcome::ServiceAccount`, and the caller must confirm against the
//! store that the ServiceAccount (and bound Pod) still exist before trusting it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::bootstrap_token::Token;
use super::serviceaccount::{self, Claims, Keys};
use super::{AUTHENTICATED, UserInfo};
use crate::tls::x509::Subject;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("token file {path} line {line}: expected token,user,uid[,\"groups\"]")]
    Malformed { path: PathBuf, line: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The outcome of looking at a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    User(UserInfo),
    /// No credentials at all.
    Anonymous,
    /// Credentials that did not check out (unknown token): also 401, but logged.
    Invalid(&'static str),
    /// A ServiceAccount token with a valid signature, issuer, lifetime and audience.
    /// Not yet a user: the ServiceAccount (and Pod) it names must still exist with the
    /// uids in the claims, which only the store can tell.
    ServiceAccount(Box<Claims>),
    /// A bearer token of the bootstrap-token form: a user only if its Secret in
    /// `kube-system` (which only the store has) agrees, see `bootstrap_token`.
    BootstrapToken(Token),
}

#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
    service_accounts: Option<Arc<Keys>>,
}

/// Splits a CSV line honouring double quotes (the groups field is quoted).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

impl Authenticator {
    /// Loads the token file; a missing file means no tokens.
    pub fn from_token_file(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(Error::Read { path: path.into(), source }),
        };
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv_fields(line);
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                return Err(Error::Malformed { path: path.into(), line: i + 1 });
            }
            let mut groups: Vec<String> = f
                .get(3)
                .map(|g| g.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect())
                .unwrap_or_default();
            groups.push(AUTHENTICATED.into());
            tokens.insert(f[0].clone(), UserInfo { name: f[1].clone(), groups });
        }
        tracing::info!(path = %path.display(), count = tokens.len(), "loaded static tokens");
        Ok(Self { tokens, service_accounts: None })
    }

    /// Also accept ServiceAccount tokens signed with `keys`.
    pub fn with_service_account_keys(mut self, keys: Arc<Keys>) -> Self {
        self.service_accounts = Some(keys);
        self
    }

    pub fn authenticate(&self, cert_subject: Option<&Subject>, authorization: Option<&str>) -> Outcome {
        if let Some(h) = authorization {
            let Some(token) = h.strip_prefix("Bearer ").map(str::trim) else {
                return Outcome::Invalid("unsupported Authorization scheme");
            };
            // Static tokens first: a hash lookup, so they never pay for JWT parsing.
            if let Some(u) = self.tokens.get(token) {
                return Outcome::User(u.clone());
            }
            if let Some(t) = Token::parse(token) {
                return Outcome::BootstrapToken(t);
            }
            return match &self.service_accounts {
                Some(keys) if serviceaccount::looks_like_jwt(token) => {
                    match keys.verify(token, serviceaccount::unix_now()) {
                        Ok(claims) => Outcome::ServiceAccount(Box::new(claims)),
                        Err(why) => Outcome::Invalid(why.as_str()),
                    }
                }
                _ => Outcome::Invalid("unknown bearer token"),
            };
        }
        if let Some(s) = cert_subject {
            return match &s.common_name {
                Some(cn) if !cn.is_empty() => {
                    let mut groups = s.organizations.clone();
                    groups.push(AUTHENTICATED.into());
                    Outcome::User(UserInfo { name: cn.clone(), groups })
                }
                _ => Outcome::Invalid("client certificate without a common name"),
            };
        }
        Outcome::Anonymous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_and_certs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.csv");
        std::fs::write(&p, "# comment\nabc,bob,1001,\"dev,ops\"\nxyz,alice,1002\n").unwrap();
        let a = Authenticator::from_token_file(&p).unwrap();
        match a.authenticate(None, Some("Bearer abc")) {
            Outcome::User(u) => {
                assert_eq!(u.name, "bob");
                assert_eq!(u.groups, ["dev", "ops", AUTHENTICATED]);
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(a.authenticate(None, Some("Bearer nope")), Outcome::Invalid(_)));
        assert!(matches!(a.authenticate(None, Some("Bearer abcdef.0123456789abcdef")), Outcome::BootstrapToken(_)));
        assert!(matches!(a.authenticate(None, Some("Basic x")), Outcome::Invalid(_)));
        assert_eq!(a.authenticate(None, None), Outcome::Anonymous);
        let s = Subject { common_name: Some("admin".into()), organizations: vec!["system:masters".into()] };
        assert!(matches!(a.authenticate(Some(&s), None), Outcome::User(u) if u.in_group("system:masters")));
        std::fs::write(&p, "justone\n").unwrap();
        assert!(Authenticator::from_token_file(&p).is_err());
        assert!(Authenticator::from_token_file(&dir.path().join("missing")).is_ok());
    }

    #[test]
    fn service_account_tokens_are_verified_but_not_yet_users() {
        use crate::auth::serviceaccount::{ISSUER, ObjectRef};
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(Keys::load_or_generate(&dir.path().join("sa.key")).unwrap());
        let now = serviceaccount::unix_now();
        let sa = ObjectRef { name: "bot".into(), uid: "u".into() };
        let t = keys.issue(&Claims::new(now, 600, vec![ISSUER.into()], "ns", sa.clone())).unwrap();
        let bearer = format!("Bearer {t}");
        // Without keys configured a JWT is just an unknown token.
        let plain = Authenticator::default();
        assert_eq!(plain.authenticate(None, Some(&bearer)), Outcome::Invalid("unknown bearer token"));
        let a = Authenticator::default().with_service_account_keys(keys.clone());
        match a.authenticate(None, Some(&bearer)) {
            Outcome::ServiceAccount(c) => assert_eq!(c.user_info().name, "system:serviceaccount:ns:bot"),
            o => panic!("{o:?}"),
        }
        let old = keys.issue(&Claims::new(now - 7200, 600, vec![ISSUER.into()], "ns", sa)).unwrap();
        assert_eq!(a.authenticate(None, Some(&format!("Bearer {old}"))), Outcome::Invalid("JWT is expired"));
    }
}
