//! The ServiceAccount controller: every namespace that is not terminating has a
//! ServiceAccount `default`, which pods without `serviceAccountName` run as; it is
//! created again if deleted.
//!
//! It must not touch any other ServiceAccount, nor change an existing `default` (users
//! may add image pull secrets or annotations to it); tokens are not its business.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};

use super::Context;

pub const DEFAULT_NAME: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating ServiceAccount {namespace}/default failed: {source}")]
    Create {
        namespace: String,
        #[source]
        source: skiff_api::client::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a namespace accepts new objects (not being deleted).
pub fn is_active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<String> = WorkQueue::new();
    let feeder = {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        async move {
            let mut namespaces = ctx.informers.namespaces.subscribe();
            let mut accounts = ctx.informers.service_accounts.subscribe();
            loop {
                tokio::select! {
                    Some(c) = namespaces.recv() => {
                        if let Change::Applied(ns) = c && let Some(name) = ns.metadata.name.clone() {
                            queue.add(name);
                        }
                    }
                    Some(c) = accounts.recv() => {
                        // Only a deletion can take `default` away; creations are ours or harmless.
                        if let Change::Deleted(sa) = c
                            && sa.metadata.name.as_deref() == Some(DEFAULT_NAME)
                            && let Some(ns) = sa.metadata.namespace.clone()
                        {
                            queue.add(ns);
                        }
                    }
                    else => return,
                }
            }
        }
    };
    let workers = run_workers("serviceaccount", queue, 1, move |ns: String| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &ns).await }
    });
    tokio::join!(feeder, workers);
}

async fn reconcile(ctx: &Context, ns: &str) -> Result<Action> {
    let Some(namespace) = ctx.informers.namespaces.get_named(None, ns) else { return Ok(Action::Done) };
    if !is_active(&namespace) || ctx.informers.service_accounts.get_named(Some(ns), DEFAULT_NAME).is_some() {
        return Ok(Action::Done);
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some(DEFAULT_NAME.into()), namespace: Some(ns.to_string()), ..Default::default() },
        ..Default::default()
    };
    match ctx.client.create(Some(ns), &sa).await {
        Ok(_) => {
            tracing::info!(namespace = ns, "created ServiceAccount default");
            Ok(Action::Done)
        }
        // Already there (our cache lagged) or the namespace is going away: nothing to do.
        Err(e) if e.is_already_exists() || e.is_not_found() => Ok(Action::Done),
        Err(e) if e.is_forbidden() && !ctx.informers.namespaces.get_named(None, ns).is_some_and(|n| is_active(&n)) => {
            Ok(Action::Done)
        }
        Err(source) => Err(Error::Create { namespace: ns.to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NamespaceStatus;

    use super::*;

    #[test]
    fn terminating_namespaces_get_no_account() {
        let mut ns = Namespace::default();
        assert!(is_active(&ns));
        ns.status = Some(NamespaceStatus { phase: Some("Terminating".into()), ..Default::default() });
        assert!(!is_active(&ns));
    }
}
