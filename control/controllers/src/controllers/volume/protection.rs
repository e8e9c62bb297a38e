//! PVC protection, as upstream's `pvc-protection` controller: a claim is created with the
//! `kubernetes.io/pvc-protection` finalizer (by the API server's admission), and once it
//! is being deleted this controller removes the finalizer only when no pod that may
//! still run uses the claim. So deleting a claim under a running pod leaves it
//! Terminating until the pod is gone, and its volume (and, for local-path, the
//! directory) is never reclaimed under a running container.
//!
//! It must not touch claims that are not being deleted, nor anything but the finalizer.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use skiff_api::ObjectKey;
use skiff_api::reflector::Change;
use skiff_api::workqueue::{Action, WorkQueue, run_workers};

use super::super::Context;
use crate::scheduler::volumes::claim_names;

/// The finalizer that keeps a claim while pods use it.
pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";

#[derive(Debug, thiserror::Error)]
#[error("removing the protection finalizer of claim {claim}: {source}")]
pub struct Error {
    claim: ObjectKey,
    #[source]
    source: skiff_api::client::Error,
}

/// Whether the pod may still run (and so still use its claims).
fn may_run(pod: &Pod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Whether a pod that may still run uses claim `name` (among the pods of its namespace).
pub fn in_use<'a>(name: &str, pods: impl IntoIterator<Item = &'a Pod>) -> bool {
    pods.into_iter().any(|p| may_run(p) && claim_names(p).any(|c| c == name))
}

fn protected(pvc: &PersistentVolumeClaim) -> bool {
    pvc.metadata.finalizers.iter().flatten().any(|f| f == PVC_PROTECTION_FINALIZER)
}

/// Runs the controller until aborted.
pub async fn run(ctx: Arc<Context>) {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new();
    let feeder = {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        async move {
            let mut claims = ctx.informers.persistent_volume_claims.subscribe();
            let mut pods = ctx.informers.pods.subscribe();
            loop {
                tokio::select! {
                    // Matched in the body: a pattern in the branch would disable it until
                    // another branch fires once a deletion arrives.
                    Some(c) = claims.recv() => {
                        if let Change::Applied(pvc) = c
                            && pvc.metadata.deletion_timestamp.is_some()
                            && protected(&pvc)
                        {
                            queue.add(ObjectKey::of(pvc.as_ref()));
                        }
                    }
                    Some(c) = pods.recv() => {
                        // A pod that finished or went may free its claims.
                        let (Change::Applied(p) | Change::Deleted(p)) = &c;
                        if matches!(c, Change::Deleted(_)) || !may_run(p) {
                            let ns = p.metadata.namespace.as_deref();
                            for name in claim_names(p) {
                                queue.add(ObjectKey::new(ns, name));
                            }
                        }
                    }
                    else => return,
                }
            }
        }
    };
    let workers = run_workers("pvc-protection", queue, 1, move |key: ObjectKey| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    });
    tokio::join!(feeder, workers);
}

async fn reconcile(ctx: &Context, key: &ObjectKey) -> Result<Action, Error> {
    let Some(pvc) = ctx.informers.persistent_volume_claims.get(key) else { return Ok(Action::Done) };
    if pvc.metadata.deletion_timestamp.is_none() || !protected(&pvc) {
        return Ok(Action::Done);
    }
    let pods = ctx.informers.pods.list_namespace(key.ns().unwrap_or_default());
    if in_use(&key.name, pods.iter().map(|p| p.as_ref())) {
        tracing::debug!(claim = %key, "claim is being deleted but still used by a pod; keeping it");
        return Ok(Action::Done);
    }
    let mut claim = pvc.as_ref().clone();
    if let Some(f) = claim.metadata.finalizers.as_mut() {
        f.retain(|f| f != PVC_PROTECTION_FINALIZER);
    }
    match ctx.client.replace(key.ns(), &key.name, &claim).await {
        Ok(_) => {
            tracing::info!(claim = %key, "no pod uses the claim any more; letting its deletion finish");
            Ok(Action::Done)
        }
        Err(e) if e.is_not_found() => Ok(Action::Done),
        Err(source) => Err(Error { claim: key.clone(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(claim: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}, "status": {"phase": phase}}))
        .unwrap()
    }

    #[test]
    fn only_pods_that_may_still_run_hold_a_claim() {
        let pods = [pod("data", "Running"), pod("logs", "Succeeded"), pod("cache", "Pending")];
        assert!(in_use("data", &pods));
        assert!(in_use("cache", &pods));
        assert!(!in_use("logs", &pods), "a finished pod no longer uses its claim");
        assert!(!in_use("other", &pods));
    }
}
