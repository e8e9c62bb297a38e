//! The embedded backend: one redb file; every write is durable (fsync,
//! `Durability::Immediate`, redb's default) before it is acknowledged, and the global
//! revision is stored in the same transaction as the change so a crash never splits them.
//!
//! Group commit: writers that arrive while a commit is in flight queue up, and the next
//! commit applies all of them in one transaction (each still gets its own revision and
//! its own success or failure). One fsync then acknowledges many writes, which is what
//! lets concurrent clients create far more objects per second than the disk syncs.
//!
//! redb calls block, so every call runs on tokio's blocking pool. It keeps no history
//! on disk: watch history lives in memory (`EventLog`) and starts at the revision found
//! on open.

use std::path::Path;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::eventlog::EventLog;
use super::{Error, Event, EventType, KeyValue, ListPage, Result, Store, StoreFuture, Watch};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Events kept for watchers that resume from an older revision.
const HISTORY: usize = 20_000;

pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Writes waiting for the next commit, and whether a writer is committing now. Only
    /// the committing writer touches the database, so events reach the log in revision
    /// order.
    pending: Mutex<Pending>,
    log: EventLog,
}

#[derive(Default)]
struct Pending {
    queue: Vec<PendingWrite>,
    committing: bool,
}

/// Where a queued write's outcome goes.
type Reply = SyncSender<Result<KeyValue>>;

struct PendingWrite {
    key: String,
    op: Op,
    reply: Reply,
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    Error::backend_call(format!("redb: {e}"), e)
}

/// Stored value layout: create_revision (u64 BE), mod_revision (u64 BE), then the bytes.
fn encode(create: u64, modr: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + value.len());
    v.extend_from_slice(&create.to_be_bytes());
    v.extend_from_slice(&modr.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue> {
    if raw.len() < 16 {
        return Err(Error::Backend(format!("corrupt record for key {key}: {} bytes", raw.len())));
    }
    let create = u64::from_be_bytes(raw[0..8].try_into().unwrap());
    let modr = u64::from_be_bytes(raw[8..16].try_into().unwrap());
    Ok(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(&raw[16..]),
        create_revision: create,
        mod_revision: modr,
    })
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        let revision = {
            // Creating both tables up front keeps readers from failing on a fresh file.
            txn.open_table(KV).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            meta.get(REVISION).map_err(backend)?.map(|v| v.value()).unwrap_or(0)
        };
        txn.commit().map_err(backend)?;
        tracing::info!(path = %path.display(), revision, "opened embedded store");
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                pending: Mutex::new(Pending::default()),
                log: EventLog::new(revision, HISTORY),
            }),
        })
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let inner = self.inner.clone();
        Box::pin(async move { tokio::task::spawn_blocking(move || f(&inner)).await.map_err(backend)? })
    }
}

/// What a write wants to do with the current value of its key.
enum Op {
    Create(Bytes),
    Update(Bytes, Option<u64>),
    Delete(Option<u64>),
}

impl Inner {
    fn read_revision(&self) -> Result<u64> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        Ok(meta.get(REVISION).map_err(backend)?.map(|v| v.value()).unwrap_or(0))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        match kv.get(key).map_err(backend)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta.get(REVISION).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
        let kv = txn.open_table(KV).map_err(backend)?;
        let start = match start_after {
            Some(s) if s >= prefix => s,
            _ => prefix,
        };
        let mut kvs = Vec::new();
        let mut more = false;
        for item in kv.range(start..).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if start_after == Some(key) {
                continue;
            }
            if limit > 0 && kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(decode(key, v.value())?);
        }
        Ok(ListPage { kvs, revision, more })
    }

    /// Queues one write and returns once it is committed (or failed). The first writer to
    /// find no commit in flight commits batches until the queue is empty.
    fn write(&self, key: &str, op: Op) -> Result<KeyValue> {
        let (reply, result) = sync_channel(1);
        let lead = {
            let mut p = self.pending.lock().unwrap();
            p.queue.push(PendingWrite { key: key.to_string(), op, reply });
            !std::mem::replace(&mut p.committing, true)
        };
        if lead {
            loop {
                let batch = {
                    let mut p = self.pending.lock().unwrap();
                    if p.queue.is_empty() {
                        p.committing = false;
                        break;
                    }
                    std::mem::take(&mut p.queue)
                };
                self.commit_batch(batch);
            }
        }
        result.recv().unwrap_or_else(|_| Err(Error::Backend("the committing writer went away".into())))
    }

    /// Applies `batch` in one transaction, one revision per successful write, then
    /// commits, publishes the events and answers every writer.
    fn commit_batch(&self, batch: Vec<PendingWrite>) {
        let mut outcomes: Vec<(Reply, Result<(KeyValue, Event)>)> = Vec::with_capacity(batch.len());
        let txn = match self.db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                let e = backend(e);
                for w in batch {
                    let _ = w.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let applied = (|| -> Result<()> {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let mut table = txn.open_table(KV).map_err(backend)?;
            let mut revision = meta.get(REVISION).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
            for w in batch {
                let out = apply(&mut table, &w.key, w.op, revision + 1);
                if out.is_ok() {
                    revision += 1;
                }
                outcomes.push((w.reply, out));
            }
            meta.insert(REVISION, revision).map_err(backend)?;
            Ok(())
        })();
        let committed = applied.and_then(|()| txn.commit().map_err(backend));
        for (reply, out) in outcomes {
            let answer = match (&committed, out) {
                (Err(e), _) => Err(e.clone()),
                (Ok(()), Ok((kv, event))) => {
                    self.log.append(event);
                    Ok(kv)
                }
                (Ok(()), Err(e)) => Err(e),
            };
            let _ = reply.send(answer);
        }
    }
}

/// One write against the open transaction's table, at `revision`.
fn apply(table: &mut redb::Table<'_, &str, &[u8]>, key: &str, op: Op, revision: u64) -> Result<(KeyValue, Event)> {
    let prev = match table.get(key).map_err(backend)? {
        Some(v) => Some(decode(key, v.value())?),
        None => None,
    };
    let check = |expected: Option<u64>, prev: &Option<KeyValue>| -> Result<()> {
        match (expected, prev) {
            (_, None) => Err(Error::NotFound { key: key.to_string() }),
            (Some(e), Some(p)) if e != p.mod_revision => {
                Err(Error::Conflict { key: key.to_string(), expected: e, actual: p.mod_revision })
            }
            _ => Ok(()),
        }
    };
    match op {
        Op::Create(value) => {
            if prev.is_some() {
                return Err(Error::AlreadyExists { key: key.to_string() });
            }
            table.insert(key, encode(revision, revision, &value).as_slice()).map_err(backend)?;
            let kv = KeyValue { key: key.to_string(), value, create_revision: revision, mod_revision: revision };
            Ok((kv.clone(), Event { kind: EventType::Put, kv, prev: None }))
        }
        Op::Update(value, expected) => {
            check(expected, &prev)?;
            let create = prev.as_ref().map(|p| p.create_revision).unwrap_or(revision);
            table.insert(key, encode(create, revision, &value).as_slice()).map_err(backend)?;
            let kv = KeyValue { key: key.to_string(), value, create_revision: create, mod_revision: revision };
            Ok((kv.clone(), Event { kind: EventType::Put, kv, prev }))
        }
        Op::Delete(expected) => {
            check(expected, &prev)?;
            table.remove(key).map_err(backend)?;
            let p = prev.clone().unwrap();
            let kv = KeyValue {
                key: key.to_string(),
                value: Bytes::new(),
                create_revision: p.create_revision,
                mod_revision: revision,
            };
            // The caller gets the deleted value, stamped with the deletion revision.
            let deleted = KeyValue { mod_revision: revision, ..p };
            Ok((deleted, Event { kind: EventType::Delete, kv, prev }))
        }
    }
}

impl Store for RedbStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<KeyValue>> {
        let key = key.to_string();
        self.blocking(move |i| i.get(&key))
    }

    fn list<'a>(&'a self, prefix: &'a str, start_after: Option<&'a str>, limit: usize) -> StoreFuture<'a, ListPage> {
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        self.blocking(move |i| i.list(&prefix, start_after.as_deref(), limit))
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> StoreFuture<'a, KeyValue> {
        let key = key.to_string();
        self.blocking(move |i| i.write(&key, Op::Create(value)))
    }

    fn update<'a>(&'a self, key: &'a str, value: Bytes, expected_revision: Option<u64>) -> StoreFuture<'a, KeyValue> {
        let key = key.to_string();
        self.blocking(move |i| i.write(&key, Op::Update(value, expected_revision)))
    }

    fn delete<'a>(&'a self, key: &'a str, expected_revision: Option<u64>) -> StoreFuture<'a, KeyValue> {
        let key = key.to_string();
        self.blocking(move |i| i.write(&key, Op::Delete(expected_revision)))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after_revision: u64) -> StoreFuture<'a, Watch> {
        Box::pin(async move { self.inner.log.watch(prefix, after_revision) })
    }

    fn revision(&self) -> StoreFuture<'_, u64> {
        self.blocking(|i| i.read_revision())
    }

    fn compact(&self, revision: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.inner.log.compact(revision);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_passes_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        crate::store::conformance::run_all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let rev = {
            let store = RedbStore::open(&path).unwrap();
            store.create("/a", Bytes::from_static(b"1")).await.unwrap();
            store.update("/a", Bytes::from_static(b"2"), None).await.unwrap().mod_revision
        };
        let store = RedbStore::open(&path).unwrap();
        let kv = store.get("/a").await.unwrap().unwrap();
        assert_eq!(kv.value, Bytes::from_static(b"2"));
        assert_eq!((kv.create_revision, kv.mod_revision), (1, rev));
        assert_eq!(store.revision().await.unwrap(), rev);
        // History does not survive a restart: older watches must re-list.
        assert!(matches!(store.watch("/", rev - 1).await, Err(Error::Compacted { .. })));
        assert!(store.watch("/", rev).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_keeps_each_write_separate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
        let base = store.create("/race", Bytes::from_static(b"0")).await.unwrap().mod_revision;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64 {
            let s = store.clone();
            tasks.spawn(async move {
                let created = s.create(&format!("/g/{i:02}"), Bytes::from(i.to_string())).await.unwrap();
                // All 64 race to update from the same revision: exactly one may win.
                let won = s.update("/race", Bytes::from(i.to_string()), Some(base)).await.is_ok();
                (created.mod_revision, won)
            });
        }
        let mut revisions = Vec::new();
        let mut winners = 0;
        while let Some(r) = tasks.join_next().await {
            let (rev, won) = r.unwrap();
            revisions.push(rev);
            winners += won as usize;
        }
        revisions.sort();
        revisions.dedup();
        assert_eq!(revisions.len(), 64, "every create gets its own revision");
        assert_eq!(winners, 1, "optimistic concurrency holds inside a batch");
        assert_eq!(store.revision().await.unwrap(), base + 65);
        let page = store.list("/g/", None, 0).await.unwrap();
        assert_eq!(page.kvs.len(), 64);
    }
}
