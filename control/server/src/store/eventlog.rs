//! Recent change history and live fan-out for backends without a native watch (redb),
//! and `Watch`, the stream every backend's `Store::watch` returns (fed either by this
//! log or by a backend's own task through a channel).
//!
//! Writers append events in revision order while holding the backend's write lock, so a
//! watcher that subscribes under the same lock sees no gap and no duplicate. It must not
//! persist anything: after a restart the history starts at the current revision, and
//! older watches get `Compacted` (clients re-list, as they do after etcd compaction).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};

use super::{Error, Event, Result};

/// How many events a lagging watcher may fall behind before it is cut off with
/// `Compacted` (it then re-lists) instead of buffering without bound.
const LIVE_BUFFER: usize = 4096;

pub(crate) struct EventLog {
    inner: Mutex<LogInner>,
    tx: broadcast::Sender<Arc<Event>>,
    capacity: usize,
}

struct LogInner {
    events: VecDeque<Arc<Event>>,
    /// Every revision <= this is gone from `events`.
    compacted: u64,
}

impl EventLog {
    pub(crate) fn new(current_revision: u64, capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(LIVE_BUFFER);
        Self { inner: Mutex::new(LogInner { events: VecDeque::new(), compacted: current_revision }), tx, capacity }
    }

    /// Records an event; the caller holds the backend's write lock so revisions arrive in order.
    pub(crate) fn append(&self, event: Event) {
        let event = Arc::new(event);
        let mut inner = self.inner.lock().unwrap();
        inner.events.push_back(event.clone());
        while inner.events.len() > self.capacity {
            if let Some(old) = inner.events.pop_front() {
                inner.compacted = old.kv.mod_revision;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    pub(crate) fn compact(&self, revision: u64) {
        let mut inner = self.inner.lock().unwrap();
        while inner.events.front().is_some_and(|e| e.kv.mod_revision <= revision) {
            inner.events.pop_front();
        }
        inner.compacted = inner.compacted.max(revision);
    }

    pub(crate) fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch> {
        let inner = self.inner.lock().unwrap();
        if after_revision < inner.compacted {
            return Err(Error::Compacted { requested: after_revision, compacted: inner.compacted });
        }
        let backlog: VecDeque<Arc<Event>> = inner
            .events
            .iter()
            .filter(|e| e.kv.mod_revision > after_revision && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        // Subscribing under the lock: every later append lands in `rx`, none twice.
        let rx = self.tx.subscribe();
        let last = backlog.back().map(|e| e.kv.mod_revision).unwrap_or(after_revision);
        Ok(Watch {
            source: Source::Log(LogWatch {
                prefix: prefix.to_string(),
                backlog,
                rx,
                last,
                compacted_hint: inner.compacted,
            }),
        })
    }
}

/// A stream of changes under one prefix, in revision order. Backends without a native
/// watch fill it from an `EventLog`; backends with one (etcd) feed it through a channel
/// from a task that owns the remote stream.
pub struct Watch {
    source: Source,
}

enum Source {
    Log(LogWatch),
    /// Events (or the error that ends the stream) sent by a backend task; the task
    /// notices the receiver being dropped and cancels its remote watch.
    Channel {
        prefix: String,
        rx: mpsc::Receiver<Result<Arc<Event>>>,
    },
}

struct LogWatch {
    prefix: String,
    backlog: VecDeque<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
    /// Revision of the last event delivered; live events at or below it are duplicates.
    last: u64,
    compacted_hint: u64,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Log(l) => f.debug_struct("Watch").field("prefix", &l.prefix).field("last", &l.last).finish(),
            Source::Channel { prefix, .. } => f.debug_struct("Watch").field("prefix", prefix).finish(),
        }
    }
}

impl Watch {
    /// A watch fed by a backend task. The task must send events in revision order,
    /// already filtered to the prefix, and end with at most one `Err`.
    pub(crate) fn from_channel(prefix: String, rx: mpsc::Receiver<Result<Arc<Event>>>) -> Self {
        Self { source: Source::Channel { prefix, rx } }
    }

    /// The next change; `None` when the store shut down, `Err(Compacted)` when this
    /// watcher fell too far behind.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>>> {
        match &mut self.source {
            Source::Log(l) => l.next().await,
            Source::Channel { rx, .. } => rx.recv().await,
        }
    }
}

impl LogWatch {
    async fn next(&mut self) -> Option<Result<Arc<Event>>> {
        if let Some(e) = self.backlog.pop_front() {
            self.last = e.kv.mod_revision;
            return Some(Ok(e));
        }
        loop {
            match self.rx.recv().await {
                Ok(e) => {
                    if e.kv.mod_revision <= self.last || !e.kv.key.starts_with(&self.prefix) {
                        continue;
                    }
                    self.last = e.kv.mod_revision;
                    return Some(Ok(e));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Some(Err(Error::Compacted {
                        requested: self.last,
                        compacted: self.compacted_hint.max(self.last),
                    }));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
