//! Writes one pod's status to the API beside its worker, as upstream's status manager
//! does: an API round trip (a TLS request, admission, a store write with its fsync)
//! never holds up the pod's next runtime step. The latest status wins: one computed
//! while a write is in flight replaces any that waited, and a failed write is retried
//! with the latest status. It writes the status subresource only, as a merge patch.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use skiff_api::{Client, ObjectKey, Patch};
use tokio::sync::watch;
use tracing::{debug, warn};

/// The first wait after a failed write; it doubles up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// The status to write, with a number that tells each new one apart.
type Pending = Option<(u64, Arc<serde_json::Value>)>;

/// The writer of one pod's status; its task ends when this is dropped.
pub(super) struct StatusWriter {
    pending: watch::Sender<Pending>,
    /// The last status handed over, so the same status is not written twice.
    last: Option<Arc<serde_json::Value>>,
    serial: u64,
    task: tokio::task::JoinHandle<()>,
}

impl StatusWriter {
    /// A writer for the pod `key` (a static pod's mirror for static pods).
    pub(super) fn new(api: Client, key: ObjectKey) -> Self {
        let (pending, rx) = watch::channel(None);
        let task = tokio::spawn(write_loop(api, key, rx));
        Self { pending, last: None, serial: 0, task }
    }

    /// Hands over `status` unless it is what was last handed over or what the API
    /// already holds (`current`): a status the API normalises differently is then not
    /// written again and again.
    pub(super) fn send(&mut self, status: serde_json::Value, current: &serde_json::Value) {
        if &status == current || self.last.as_deref() == Some(&status) {
            return;
        }
        let status = Arc::new(status);
        self.last = Some(status.clone());
        self.serial += 1;
        self.pending.send_replace(Some((self.serial, status)));
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write_loop(api: Client, key: ObjectKey, mut rx: watch::Receiver<Pending>) {
    let mut retry = FIRST_RETRY;
    while rx.changed().await.is_ok() {
        let Some((serial, status)) = rx.borrow_and_update().clone() else { continue };
        let patch = Patch::Merge(serde_json::json!({ "status": status.as_ref() }));
        match api.patch::<Pod>(key.ns(), &key.name, Some("status"), &patch).await {
            Ok(_) => {
                debug!(pod = %key, serial, phase = ?status.get("phase"), "status sent");
                retry = FIRST_RETRY;
            }
            // The pod is gone: nothing to report to.
            Err(e) if e.is_not_found() => debug!(pod = %key, "the pod is gone; its status is dropped"),
            Err(e) => {
                warn!(pod = %key, error = %e, retry_ms = retry.as_millis() as u64, "cannot send the pod's status; will retry");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                // Retry with whatever is newest, this status if nothing newer came.
                if !rx.has_changed().unwrap_or(false) {
                    rx.mark_changed();
                }
            }
        }
    }
}
