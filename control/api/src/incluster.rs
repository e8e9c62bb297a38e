//! In-cluster configuration, as client-go's `InClusterConfig`: a process in a pod (a
//! DaemonSet's node agent, a controller) reaches the API server through the
//! `kubernetes` Service the kubelet names in `KUBERNETES_SERVICE_HOST` and
//! `KUBERNETES_SERVICE_PORT`, trusts the CA and presents the ServiceAccount token that
//! are mounted under `/var/run/secrets/kubernetes.io/serviceaccount/`.
//!
//! The directory and the environment are parameters so that tests can lay out their
//! own. It must not fall back to a kubeconfig or to defaults for host, token or CA: a
//! missing piece is an error that names it.

use std::path::{Path, PathBuf};

use crate::kubeconfig::Credentials;

/// Where the kubelet mounts the ServiceAccount token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub const TOKEN_FILE: &str = "token";
pub const CA_FILE: &str = "ca.crt";
pub const NAMESPACE_FILE: &str = "namespace";
pub const HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
pub const PORT_ENV: &str = "KUBERNETES_SERVICE_PORT";
/// Set from the downward API; wins over the namespace file, as in client-go.
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "not running in a cluster: {var} is not set (in a pod the kubelet sets {HOST_ENV} and {PORT_ENV}; \
         outside one, use a kubeconfig)"
    )]
    NotInCluster { var: &'static str },
    #[error("{PORT_ENV}={port:?} is not a port number: {source}")]
    Port { port: String, source: std::num::ParseIntError },
    #[error(
        "the ServiceAccount token {path} is not usable (is a ServiceAccount token mounted into the pod?): {source}"
    )]
    Token { path: PathBuf, source: crate::token::Error },
    #[error("cannot read the cluster CA {path} (is a ServiceAccount token mounted into the pod?): {source}")]
    Ca { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a pod knows about the cluster it runs in.
#[derive(Debug, Clone)]
pub struct InClusterConfig {
    /// Server, CA and token; the transport re-reads the token file as it rotates.
    pub credentials: Credentials,
    /// The pod's namespace: `$POD_NAMESPACE`, else the namespace file, else "default".
    pub namespace: String,
}

/// The configuration of the pod this process runs in.
pub fn load() -> Result<InClusterConfig> {
    load_from(Path::new(SERVICE_ACCOUNT_DIR), |var| std::env::var(var).ok())
}

/// `load` with the ServiceAccount directory and the environment given.
pub fn load_from(dir: &Path, env: impl Fn(&str) -> Option<String>) -> Result<InClusterConfig> {
    let var = |name: &'static str| {
        env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).ok_or(Error::NotInCluster { var: name })
    };
    let host = var(HOST_ENV)?;
    let port = var(PORT_ENV)?;
    port.parse::<u16>().map_err(|source| Error::Port { port: port.clone(), source })?;
    // An IPv6 Service IP needs brackets in a URL, as Go's net.JoinHostPort adds them.
    let server = if host.contains(':') { format!("https://[{host}]:{port}") } else { format!("https://{host}:{port}") };

    let token_path = dir.join(TOKEN_FILE);
    let token = crate::token::read(&token_path).map_err(|source| Error::Token { path: token_path.clone(), source })?;
    let ca_path = dir.join(CA_FILE);
    let ca_pem = std::fs::read(&ca_path).map_err(|source| Error::Ca { path: ca_path, source })?;

    let namespace = env(POD_NAMESPACE_ENV)
        .or_else(|| std::fs::read_to_string(dir.join(NAMESPACE_FILE)).ok())
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_string());

    let credentials =
        Credentials { server, ca_pem, token: Some(token), token_file: Some(token_path), ..Default::default() };
    Ok(InClusterConfig { credentials, namespace })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn service_account_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    const SERVICE: &[(&str, &str)] = &[(HOST_ENV, "10.96.0.1"), (PORT_ENV, "443")];

    #[test]
    fn reads_the_mounted_files_and_the_service_env() {
        let dir = service_account_dir(&[(TOKEN_FILE, "tok\n"), (CA_FILE, "CA PEM"), (NAMESPACE_FILE, "team\n")]);
        let c = load_from(dir.path(), env(SERVICE)).unwrap();
        assert_eq!(c.credentials.server, "https://10.96.0.1:443");
        assert_eq!(c.credentials.token.as_deref(), Some("tok"));
        assert_eq!(c.credentials.token_file.as_deref(), Some(dir.path().join(TOKEN_FILE).as_path()));
        assert_eq!(c.credentials.ca_pem, b"CA PEM");
        assert!(c.credentials.client_cert_pem.is_none());
        assert_eq!(c.namespace, "team");
    }

    #[test]
    fn ipv6_hosts_are_bracketed_and_the_namespace_has_fallbacks() {
        let dir = service_account_dir(&[(TOKEN_FILE, "tok"), (CA_FILE, "CA")]);
        let c = load_from(dir.path(), env(&[(HOST_ENV, "fd00::1"), (PORT_ENV, "6443")])).unwrap();
        assert_eq!(c.credentials.server, "https://[fd00::1]:6443");
        assert_eq!(c.namespace, "default", "no namespace file");
        std::fs::write(dir.path().join(NAMESPACE_FILE), "team").unwrap();
        let c = load_from(dir.path(), env(&[(HOST_ENV, "h"), (PORT_ENV, "1"), (POD_NAMESPACE_ENV, "mine")])).unwrap();
        assert_eq!(c.namespace, "mine", "the downward API wins");
    }

    #[test]
    fn each_missing_piece_is_named() {
        let full = service_account_dir(&[(TOKEN_FILE, "tok"), (CA_FILE, "CA")]);
        let e = load_from(full.path(), env(&[(PORT_ENV, "443")])).unwrap_err();
        assert!(matches!(e, Error::NotInCluster { var: HOST_ENV }), "{e}");
        assert!(e.to_string().contains("KUBERNETES_SERVICE_HOST is not set"), "{e}");
        let e = load_from(full.path(), env(&[(HOST_ENV, "h"), (PORT_ENV, "")])).unwrap_err();
        assert!(matches!(e, Error::NotInCluster { var: PORT_ENV }), "{e}");
        let e = load_from(full.path(), env(&[(HOST_ENV, "h"), (PORT_ENV, "https")])).unwrap_err();
        assert!(matches!(e, Error::Port { .. }), "{e}");

        let no_token = service_account_dir(&[(CA_FILE, "CA")]);
        let e = load_from(no_token.path(), env(SERVICE)).unwrap_err();
        assert!(e.to_string().contains(&no_token.path().join(TOKEN_FILE).display().to_string()), "{e}");
        let source = std::error::Error::source(&e).expect("the read error is kept");
        assert!(matches!(source.downcast_ref::<crate::token::Error>(), Some(crate::token::Error::Read { .. })));

        let no_ca = service_account_dir(&[(TOKEN_FILE, "tok")]);
        let e = load_from(no_ca.path(), env(SERVICE)).unwrap_err();
        assert!(matches!(&e, Error::Ca { path, .. } if path.ends_with(CA_FILE)), "{e}");
    }
}
