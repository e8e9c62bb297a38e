//! The store half of bootstrap tokens: authenticating one (its Secret in
//! `kube-system` must agree, see `auth::bootstrap_token`), and the token skiff-control
//! keeps for its nodes, ensured at every start and remembered in
//! `<data-dir>/bootstrap-token` so that `bootstrap.kubeconfig` stays valid across
//! restarts.
//!
//! It must never log a token's secret half.

use std::path::Path;

use serde_json::json;

use super::api_server::ApiServer;
use super::meta;
use super::object::{to_bytes, to_obj};
use super::resources::by_kind;
use super::status::{ApiError, ApiResult};
use crate::auth::UserInfo;
use crate::auth::bootstrap_token::{self, NAMESPACE, Token};
use crate::store::{self, Store};

const FILE: &str = "bootstrap-token";

impl ApiServer {
    /// The user a bootstrap token is, or why not (for the log; the client gets 401).
    pub(crate) async fn bootstrap_token_user(&self, token: &Token) -> Result<UserInfo, &'static str> {
        secret_user(self.store.as_ref(), token).await
    }
}

async fn secret_user(store: &dyn Store, token: &Token) -> Result<UserInfo, &'static str> {
    let key = by_kind("Secret").ok_or("Secrets are not served")?.key(Some(NAMESPACE), &token.secret_name());
    let secret = match store.get(&key).await {
        Ok(Some(kv)) => to_obj(&kv).map_err(|_| "bootstrap token Secret is unreadable")?,
        Ok(None) => return Err("no Secret for this bootstrap token"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up a bootstrap token Secret");
            return Err("bootstrap token lookup failed");
        }
    };
    bootstrap_token::user_for(token, &secret, meta::unix_now())
}

/// Makes sure the node bootstrap token of this data dir is valid in the store (a new
/// one when the file is missing or its Secret was deleted) and returns it.
pub async fn ensure_bootstrap_token(store: &dyn Store, data_dir: &Path) -> ApiResult<Token> {
    let path = data_dir.join(FILE);
    let remembered = std::fs::read_to_string(&path).ok().and_then(|s| Token::parse(s.trim()));
    if let Some(t) = remembered {
        match secret_user(store, &t).await {
            Ok(_) => return Ok(t),
            Err(why) => {
                tracing::info!(token_id = %t.id, reason = why, "node bootstrap token no longer valid; making a new one")
            }
        }
    }
    let token = Token::generate();
    let mut secret = token.secret_object("skiff-control's node bootstrap token (bootstrap.kubeconfig)");
    secret["metadata"]["uid"] = json!(meta::new_uid());
    secret["metadata"]["creationTimestamp"] = json!(meta::now());
    let key = by_kind("Secret")
        .ok_or_else(|| ApiError::internal("Secrets are not served"))?
        .key(Some(NAMESPACE), &token.secret_name());
    match store.create(&key, to_bytes(&secret)).await {
        Ok(_) => {}
        Err(store::Error::AlreadyExists { .. }) => {
            store.update(&key, to_bytes(&secret), None).await?;
        }
        Err(e) => return Err(e.into()),
    }
    crate::tls::write_private(&path, &format!("{}\n", token.bearer()), true)
        .map_err(|e| ApiError::internal(format!("cannot keep the bootstrap token: {e}")))?;
    tracing::info!(token_id = %token.id, secret = %token.secret_name(), "created node bootstrap token");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_node_token_is_kept_and_renewed_when_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(store::RedbStore::open(&dir.path().join("store.redb")).unwrap());
        let a = ensure_bootstrap_token(store.as_ref(), dir.path()).await.unwrap();
        let u = secret_user(store.as_ref(), &a).await.unwrap();
        assert_eq!(u.name, format!("system:bootstrap:{}", a.id));
        let b = ensure_bootstrap_token(store.as_ref(), dir.path()).await.unwrap();
        assert_eq!(a, b, "a valid token is kept across restarts");
        let key = by_kind("Secret").unwrap().key(Some(NAMESPACE), &a.secret_name());
        store.delete(&key, None).await.unwrap();
        assert!(secret_user(store.as_ref(), &a).await.is_err(), "deleting the Secret revokes the token");
        let c = ensure_bootstrap_token(store.as_ref(), dir.path()).await.unwrap();
        assert_ne!(a, c);
        assert!(secret_user(store.as_ref(), &c).await.is_ok());
    }
}
