//! Reading a kubeconfig (the file kubectl uses) into the credentials a transport needs:
//! the current context's server, CA, and client certificate or bearer token, inline
//! (`*-data`, base64) or as file paths relative to the kubeconfig.
//!
//! It must not do any I/O beyond reading the files the kubeconfig names.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Token(#[from] crate::token::Error),
    #[error("kubeconfig {path} is not valid YAML: {source}")]
    Parse { path: PathBuf, source: serde_norway::Error },
    #[error("kubeconfig {path} has no contexts")]
    NoContexts { path: PathBuf },
    #[error("kubeconfig {path}: current-context {context:?} is not among the contexts")]
    UnknownContext { path: PathBuf, context: String },
    #[error("kubeconfig {path}: context {context:?} names unknown cluster {cluster:?}")]
    UnknownCluster { path: PathBuf, context: String, cluster: String },
    #[error("kubeconfig {path}: cluster {cluster:?} has no certificate-authority")]
    NoCa { path: PathBuf, cluster: String },
    #[error("kubeconfig {path}: {field}-data is not base64: {source}")]
    Base64 { path: PathBuf, field: &'static str, source: base64::DecodeError },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a transport needs to reach and authenticate to one API server.
#[derive(Clone, Default)]
pub struct Credentials {
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    pub token: Option<String>,
    /// Where `token` was read from; a transport re-reads it, since such tokens rotate.
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    // Never print keys or tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("client_cert", &self.client_cert_pem.is_some())
            .field("token", &self.token.is_some())
            .field("token_file", &self.token_file)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    current_context: String,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    users: Vec<NamedUser>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

/// Loads the current context of the kubeconfig at `path`.
pub fn load(path: &Path) -> Result<Credentials> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
    parse(&text, path)
}

/// Parses kubeconfig text; relative file paths resolve against `path`'s directory.
pub fn parse(text: &str, path: &Path) -> Result<Credentials> {
    let cfg: Kubeconfig = serde_norway::from_str(text).map_err(|source| Error::Parse { path: path.into(), source })?;
    let ctx_name = if cfg.current_context.is_empty() {
        cfg.contexts.first().map(|c| c.name.clone()).ok_or_else(|| Error::NoContexts { path: path.into() })?
    } else {
        cfg.current_context.clone()
    };
    let ctx = cfg
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .ok_or_else(|| Error::UnknownContext { path: path.into(), context: ctx_name.clone() })?;
    let cluster = cfg.clusters.iter().find(|c| c.name == ctx.value.cluster).ok_or_else(|| Error::UnknownCluster {
        path: path.into(),
        context: ctx_name.clone(),
        cluster: ctx.value.cluster.clone(),
    })?;
    let user = cfg.users.iter().find(|u| u.name == ctx.value.user).map(|u| &u.user);
    let dir = path.parent().unwrap_or(Path::new("."));
    let material = |data: &Option<String>, file: &Option<PathBuf>, field: &'static str| -> Result<Option<Vec<u8>>> {
        if let Some(d) = data {
            return base64::engine::general_purpose::STANDARD
                .decode(d.trim())
                .map(Some)
                .map_err(|source| Error::Base64 { path: path.into(), field, source });
        }
        match file {
            Some(f) => {
                let f = dir.join(f);
                std::fs::read(&f).map(Some).map_err(|source| Error::Read { path: f, source })
            }
            None => Ok(None),
        }
    };
    let ca_pem = material(
        &cluster.value.certificate_authority_data,
        &cluster.value.certificate_authority,
        "certificate-authority",
    )?
    .ok_or_else(|| Error::NoCa { path: path.into(), cluster: cluster.name.clone() })?;
    let mut creds = Credentials { server: cluster.value.server.clone(), ca_pem, ..Default::default() };
    if let Some(u) = user {
        creds.client_cert_pem = material(&u.client_certificate_data, &u.client_certificate, "client-certificate")?;
        creds.client_key_pem = material(&u.client_key_data, &u.client_key, "client-key")?;
        match (&u.token, &u.token_file) {
            (Some(t), _) => creds.token = Some(t.clone()),
            (None, Some(f)) => {
                let f = dir.join(f);
                creds.token = Some(crate::token::read(&f)?);
                creds.token_file = Some(f);
            }
            (None, None) => {}
        }
    }
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_current_context_with_inline_data() {
        let text = "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: c1\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: Q0E=\ncontexts:\n- name: a\n  context: {cluster: nope, user: u}\n- name: b\n  context: {cluster: c1, user: u}\nusers:\n- name: u\n  user:\n    token: abc\n";
        let c = parse(text, Path::new("/tmp/x")).unwrap();
        assert_eq!(c.server, "https://127.0.0.1:6443");
        assert_eq!(c.ca_pem, b"CA");
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert!(c.client_cert_pem.is_none());
    }

    #[test]
    fn a_token_file_is_remembered_for_rereading_and_bad_base64_keeps_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "abc\n").unwrap();
        let text = "current-context: a\nclusters:\n- name: c\n  cluster: {server: https://h, certificate-authority-data: Q0E=}\ncontexts:\n- name: a\n  context: {cluster: c, user: u}\nusers:\n- name: u\n  user: {token-file: tok}\n";
        let c = parse(text, &dir.path().join("config")).unwrap();
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert_eq!(c.token_file, Some(dir.path().join("tok")));

        let e = parse(&text.replace("Q0E=", "not base64!"), Path::new("/tmp/x")).unwrap_err();
        assert!(matches!(e, Error::Base64 { field: "certificate-authority", .. }), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn unknown_cluster_is_a_clear_error() {
        let text = "current-context: a\ncontexts:\n- name: a\n  context: {cluster: missing, user: u}\n";
        let e = parse(text, Path::new("/tmp/x")).unwrap_err().to_string();
        assert!(e.contains("unknown cluster \"missing\""), "{e}");
    }
}
