//! The etcd backend: the `Store` trait over etcd's v3 gRPC API (tested against etcd
//! 3.4), for control planes that keep their state in an external etcd cluster.
//!
//! Every key lives under a configurable prefix (default `/skiff`) so that several
//! clusters can share one etcd; the prefix is added on the way in and stripped on the
//! way out, and nothing outside it is ever read or written. Writes are single `Txn`s
//! whose compare encodes the trait's precondition (absent for create, present or at an
//! expected mod_revision for update and delete), so etcd, not this process, decides.
//!
//! The client is connected to every endpoint and balances between them. A member that
//! dies or loses its leader makes the requests that land on it fail with `Unavailable`
//! until the balancer stops picking it or a new leader is elected, so each request is
//! retried for a bounded time (`RETRY_FOR`). A retried write may have been applied by an
//! attempt whose answer was lost; `create` and `update` recognise their own value in
//! that case instead of reporting a false `AlreadyExists` or `Conflict`.
//!
//! It must not cache objects or keep its own history: reads go to etcd (linearizable),
//! and watches are etcd watches. The only local state is the compaction floor (see
//! `compact`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Error, Event, EventType, KeyValue, ListPage, Result, Store, StoreFuture, Watch};

/// The key prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "/skiff";

/// How long one request keeps retrying `Unavailable` answers. It covers a leader
/// election (one to two election timeouts, 1 s each by default) and the balancer
/// picking a dead member a few times in a row, and stays well inside Kubernetes
/// clients' own request timeouts; a longer outage is an error the client sees.
const RETRY_FOR: Duration = Duration::from_secs(6);
/// How long start-up waits for etcd to answer: on boot etcd may be starting alongside.
const START_WAIT: Duration = Duration::from_secs(15);
/// Upper bound of one attempt, so a request stuck on a member that stopped answering
/// (but kept its connection) is retried elsewhere within `RETRY_FOR`. It bounds the
/// wait for a unary answer or for a watch to start, not a watch's lifetime.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest message accepted from etcd (the client's default is 4 MiB): a full list of
/// a large prefix is one message.
const MAX_MESSAGE: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings detect a silently dead connection (e.g. a partitioned member), which
/// matters most for long-lived watch streams.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Events buffered between the watch task and a slow consumer; beyond that the task
/// waits, and etcd buffers on its side.
const WATCH_BUFFER: usize = 1024;

/// The connection settings (the `--etcd-servers` and `--etcd-prefix` flags).
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Prefix for every key; a trailing `/` is ignored.
    pub prefix: String,
}

/// Cheap to clone: clones share the connection and the compaction floor (watch tasks
/// hold one).
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    client: Client,
    /// The prefix without a trailing slash; store keys start with `/`.
    prefix: String,
    /// The endpoints as given, for error messages.
    endpoints: Arc<str>,
    /// Highest revision passed to `compact`. etcd keeps the state at its compaction
    /// revision, so a watch may start right at it; the trait forgets that revision too,
    /// so watches from before this floor are refused here.
    compacted: Arc<AtomicU64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.endpoints).field("prefix", &self.prefix).finish()
    }
}

/// Whether an etcd error is worth another attempt: the member was unreachable, had no
/// leader, lost its leader mid-request, or did not answer in time.
fn retryable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
                && !s.message().contains("compacted")
        }
        _ => false,
    }
}

/// An etcd error for people: etcd's own message, or the transport's message with its
/// root cause ("tcp connect error: Connection refused") instead of nested debug output.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let mut root = None;
            let mut source = std::error::Error::source(s);
            // Bounded: error chains are short, and this stops at 16 links regardless.
            for _ in 0..16 {
                let Some(x) = source else { break };
                root = Some(x);
                source = x.source();
            }
            match root {
                Some(r) => format!("{}: {r}", s.message()),
                None => s.message().to_string(),
            }
        }
        other => other.to_string(),
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

/// The smallest key greater than every key starting with `p` (etcd's range end for a
/// prefix); `[0]` means "to the end of the keyspace".
fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn rev(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

impl EtcdStore {
    /// Connects to the endpoints and checks that the cluster answers, so a wrong
    /// `--etcd-servers` fails at start-up with a message instead of at the first request.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self> {
        let endpoints: Arc<str> = cfg.endpoints.join(",").into();
        if cfg.endpoints.is_empty() {
            return Err(Error::Backend("no etcd endpoints given".into()));
        }
        for e in &cfg.endpoints {
            if !e.starts_with("http://") {
                return Err(Error::Backend(format!(
                    "etcd endpoint {e:?} is not supported: use http://host:port (TLS to etcd is not built in)"
                )));
            }
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(ATTEMPT_TIMEOUT)
            .with_keep_alive(KEEPALIVE, KEEPALIVE)
            // A member cut off from the quorum refuses requests (and ends watches)
            // instead of serving them from a stale view; they are retried elsewhere.
            .with_require_leader(true);
        let client = Client::connect(&cfg.endpoints, Some(options))
            .await
            .map_err(|e| Error::backend_call(format!("cannot connect to etcd at {endpoints}: {e}"), e))?;
        let store = Self {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            client,
            prefix: cfg.prefix.trim_end_matches('/').to_string(),
            endpoints: endpoints.clone(),
            compacted: Arc::new(AtomicU64::new(0)),
        };
        let key = store.full("");
        let probe = store
            .retry_raw(START_WAIT, "read revision at", "", |mut kv, _| {
                let key = key.clone();
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await;
        let revision = match probe {
            Ok(resp) => resp.header().map(|h| rev(h.revision())).unwrap_or(0),
            Err(e) => {
                let context = format!(
                    "etcd at {endpoints} did not answer within {}s ({}); check that etcd is running and \
                     that --etcd-servers lists its client URLs (etcdctl --endpoints {endpoints} endpoint health)",
                    START_WAIT.as_secs(),
                    describe(&e)
                );
                return Err(Error::backend_call(context, e));
            }
        };
        tracing::info!(endpoints = %endpoints, prefix = %store.prefix, revision, "connected to etcd");
        Ok(store)
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// The store key of an etcd key (which always carries our prefix: we only read and
    /// watch inside it).
    fn strip(&self, key: &[u8]) -> String {
        let key = key.strip_prefix(self.prefix.as_bytes()).unwrap_or(key);
        String::from_utf8_lossy(key).into_owned()
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: self.strip(kv.key()),
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: rev(kv.create_revision()),
            mod_revision: rev(kv.mod_revision()),
        }
    }

    fn backend(&self, what: &str, key: &str, e: etcd_client::Error) -> Error {
        Error::backend_call(format!("etcd at {}: {what} {key}: {}", self.endpoints, describe(&e)), e)
    }

    /// Runs `op` until it succeeds, fails for good, or `RETRY_FOR` has passed. `op` is
    /// told whether an earlier attempt failed (and so may have been applied).
    async fn retry<T, F, Fut>(&self, what: &str, key: &str, op: F) -> Result<T>
    where
        F: FnMut(KvClient, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.retry_raw(RETRY_FOR, what, key, op).await.map_err(|e| self.backend(what, key, e))
    }

    async fn retry_raw<T, F, Fut>(
        &self,
        within: Duration,
        what: &str,
        key: &str,
        mut op: F,
    ) -> Result<T, etcd_client::Error>
    where
        F: FnMut(KvClient, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + within;
        let mut backoff = Duration::from_millis(25);
        let mut retried = false;
        // Bounded by the deadline; the attempt cap only guards against a clock that
        // does not advance.
        for attempt in 1..=1000u32 {
            match op(self.kv.clone(), retried).await {
                Ok(v) => {
                    if retried {
                        tracing::info!(what, key, attempt, "etcd request succeeded after retrying");
                    }
                    return Ok(v);
                }
                Err(e) if retryable(&e) && Instant::now() + backoff < deadline => {
                    tracing::debug!(what, key, attempt, error = %describe(&e), "etcd unavailable, retrying");
                    retried = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
        Err(etcd_client::Error::Internal("gave up retrying".into()))
    }

    async fn current_revision(&self) -> Result<u64> {
        let key = self.full("");
        self.retry("read revision at", "", |mut kv, _| {
            let key = key.clone();
            async move {
                let resp = kv.get(key, Some(GetOptions::new().with_count_only())).await?;
                Ok(resp.header().map(|h| rev(h.revision())).unwrap_or(0))
            }
        })
        .await
    }

    /// The current value of `key` from the else-branch of a failed `Txn` (a `get`).
    fn failed_get(&self, resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| self.to_kv(kv)),
            _ => None,
        })
    }

    async fn get_impl(&self, key: &str) -> Result<Option<KeyValue>> {
        let full = self.full(key);
        let resp = self
            .retry("get", key, |mut kv, _| {
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(|kv| self.to_kv(kv)))
    }

    async fn list_impl(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage> {
        let full_prefix = self.full(prefix);
        let end = prefix_end(&full_prefix);
        let start = match start_after {
            // The smallest key after `s` is `s` followed by a zero byte.
            Some(s) if s >= prefix => {
                let mut k = self.full(s);
                k.push(0);
                k
            }
            _ => full_prefix,
        };
        if end != [0] && start >= end {
            // Past the end of the range: etcd would read `start` alone with an empty
            // range, so answer without asking it.
            return Ok(ListPage { kvs: Vec::new(), revision: self.current_revision().await?, more: false });
        }
        let mut opts = GetOptions::new().with_range(end);
        if limit > 0 {
            opts = opts.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let resp = self
            .retry("list", prefix, |mut kv, _| {
                let (start, opts) = (start.clone(), opts.clone());
                async move { kv.get(start, Some(opts)).await }
            })
            .await?;
        Ok(ListPage {
            kvs: resp.kvs().iter().map(|kv| self.to_kv(kv)).collect(),
            revision: resp.header().map(|h| rev(h.revision())).unwrap_or(0),
            more: resp.more(),
        })
    }

    async fn create_impl(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let full = self.full(key);
        let resp = self
            .retry("create", key, |mut kv, retried| {
                let txn = Txn::new()
                    .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(full.clone(), value.to_vec(), None)])
                    .or_else([TxnOp::get(full.clone(), None)]);
                async move { Ok((kv.txn(txn).await?, retried)) }
            })
            .await?;
        let (resp, retried) = resp;
        if resp.succeeded() {
            let r = resp.header().map(|h| rev(h.revision())).unwrap_or(0);
            return Ok(KeyValue { key: key.to_string(), value, create_revision: r, mod_revision: r });
        }
        match self.failed_get(&resp) {
            // An earlier attempt created it and its answer was lost.
            Some(kv) if retried && kv.value == value && kv.create_revision == kv.mod_revision => Ok(kv),
            _ => Err(Error::AlreadyExists { key: key.to_string() }),
        }
    }

    /// The precondition of update and delete: the key exists, and is at `expected`.
    fn precondition(full: &[u8], expected: Option<u64>) -> Compare {
        match expected {
            Some(e) => Compare::mod_revision(full.to_vec(), CompareOp::Equal, i64::try_from(e).unwrap_or(i64::MAX)),
            None => Compare::version(full.to_vec(), CompareOp::Greater, 0),
        }
    }

    fn precondition_failed(&self, key: &str, expected: Option<u64>, current: Option<KeyValue>) -> Error {
        match (current, expected) {
            (None, _) => Error::NotFound { key: key.to_string() },
            (Some(kv), Some(e)) => Error::Conflict { key: key.to_string(), expected: e, actual: kv.mod_revision },
            // The key exists and no revision was expected: the compare cannot fail.
            (Some(_), None) => Error::Backend(format!("etcd at {}: update of {key} was refused", self.endpoints)),
        }
    }

    async fn update_impl(&self, key: &str, value: Bytes, expected: Option<u64>) -> Result<KeyValue> {
        let full = self.full(key);
        let (resp, retried) = self
            .retry("update", key, |mut kv, retried| {
                let txn = Txn::new()
                    .when([Self::precondition(&full, expected)])
                    .and_then([TxnOp::put(full.clone(), value.to_vec(), Some(PutOptions::new().with_prev_key()))])
                    .or_else([TxnOp::get(full.clone(), None)]);
                async move { Ok((kv.txn(txn).await?, retried)) }
            })
            .await?;
        if resp.succeeded() {
            let r = resp.header().map(|h| rev(h.revision())).unwrap_or(0);
            let create = resp
                .op_responses()
                .into_iter()
                .find_map(|o| match o {
                    TxnOpResponse::Put(p) => p.prev_key().map(|p| rev(p.create_revision())),
                    _ => None,
                })
                .unwrap_or(r);
            return Ok(KeyValue { key: key.to_string(), value, create_revision: create, mod_revision: r });
        }
        let current = self.failed_get(&resp);
        match current {
            // An earlier attempt wrote this value and its answer was lost; the
            // conflict is with ourselves.
            Some(kv) if retried && kv.value == value && expected.is_some_and(|e| kv.mod_revision > e) => Ok(kv),
            other => Err(self.precondition_failed(key, expected, other)),
        }
    }

    async fn delete_impl(&self, key: &str, expected: Option<u64>) -> Result<KeyValue> {
        let full = self.full(key);
        let (resp, retried) = self
            .retry("delete", key, |mut kv, retried| {
                let txn = Txn::new()
                    .when([Self::precondition(&full, expected)])
                    .and_then([TxnOp::delete(full.clone(), Some(DeleteOptions::new().with_prev_key()))])
                    .or_else([TxnOp::get(full.clone(), None)]);
                async move { Ok((kv.txn(txn).await?, retried)) }
            })
            .await?;
        if resp.succeeded() {
            let r = resp.header().map(|h| rev(h.revision())).unwrap_or(0);
            let prev = resp.op_responses().into_iter().find_map(|o| match o {
                TxnOpResponse::Delete(d) => d.prev_kvs().first().map(|p| self.to_kv(p)),
                _ => None,
            });
            let prev = prev.ok_or_else(|| {
                Error::Backend(format!("etcd at {}: delete of {key} returned no previous value", self.endpoints))
            })?;
            // The caller gets the deleted value, stamped with the deletion revision.
            return Ok(KeyValue { mod_revision: r, ..prev });
        }
        let current = self.failed_get(&resp);
        if current.is_none() && retried {
            // Possibly deleted by an attempt whose answer was lost; the deleted value is
            // gone with it, so NotFound is the honest answer.
            tracing::warn!(key, "delete retried after an ambiguous failure and found the key gone");
        }
        Err(self.precondition_failed(key, expected, current))
    }

    /// Opens an etcd watch on `[full, end)` from `start` and waits for etcd to confirm it.
    async fn open_watch(&self, prefix: &str, full: &[u8], start: u64) -> Result<(WatchStream, u64)> {
        let end = prefix_end(full);
        let deadline = Instant::now() + RETRY_FOR;
        let mut last_err = None;
        for attempt in 1..=100u32 {
            if Instant::now() >= deadline {
                break;
            }
            let opts = WatchOptions::new()
                .with_range(end.clone())
                .with_start_revision(i64::try_from(start).unwrap_or(i64::MAX))
                .with_prev_key();
            let mut wc = self.client.watch_client().max_decoding_message_size(MAX_MESSAGE);
            let res = async {
                let mut stream = wc.watch(full.to_vec(), Some(opts)).await?;
                // etcd answers a create request first, before any event.
                match tokio::time::timeout(ATTEMPT_TIMEOUT, stream.message()).await {
                    Ok(Ok(Some(r))) if r.created() && !r.canceled() => {
                        Ok((stream, r.header().map(|h| rev(h.revision())).unwrap_or(0)))
                    }
                    Ok(Ok(Some(r))) => {
                        Err(etcd_client::Error::WatchError(format!("watch not created: {}", r.cancel_reason())))
                    }
                    Ok(Ok(None)) => Err(etcd_client::Error::WatchError("watch stream closed".into())),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(etcd_client::Error::WatchError("no answer to the watch request".into())),
                }
            }
            .await;
            match res {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::debug!(prefix, attempt, error = %e, "opening etcd watch failed, retrying");
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(match last_err {
            Some(e) => self.backend("watch", prefix, e),
            None => Error::Backend(format!("etcd at {}: watch {prefix}: timed out", self.endpoints)),
        })
    }

    async fn watch_impl(&self, prefix: &str, after: u64) -> Result<Watch> {
        let floor = self.compacted.load(Ordering::Acquire);
        if after < floor {
            return Err(Error::Compacted { requested: after, compacted: floor });
        }
        let full = self.full(prefix);
        let (stream, head) = self.open_watch(prefix, &full, after + 1).await?;
        if after < head {
            // A watch into compacted history is created and then cancelled
            // asynchronously; a read at the start revision fails the same way at once,
            // so the caller gets `Compacted` from this call, not from the first `next`.
            let probe = self
                .retry("check history of", prefix, |mut kv, _| {
                    let key = full.clone();
                    let r = i64::try_from(after + 1).unwrap_or(i64::MAX);
                    async move {
                        match kv.get(key, Some(GetOptions::new().with_count_only().with_revision(r))).await {
                            Ok(_) => Ok(false),
                            Err(e) if is_compacted(&e) => Ok(true),
                            Err(e) => Err(e),
                        }
                    }
                })
                .await?;
            if probe {
                return Err(Error::Compacted { requested: after, compacted: floor.max(after) });
            }
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let task = WatchTask {
            store: self.clone(),
            user_prefix: prefix.to_string(),
            full,
            last: after,
            tx,
            quick_reopens: 0,
            opened_at: Instant::now(),
        };
        tokio::spawn(task.run(stream));
        Ok(Watch::from_channel(prefix.to_string(), rx))
    }

    async fn compact_impl(&self, revision: u64) -> Result<()> {
        self.compacted.fetch_max(revision, Ordering::AcqRel);
        // etcd keeps the state at the compaction revision, so compacting at
        // `revision + 1` forgets exactly what the trait promises; etcd refuses a future
        // revision, so at the head it compacts at `revision` and the floor above
        // refuses the one remaining revision.
        let target = (revision + 1).min(self.current_revision().await?);
        if target == 0 {
            return Ok(());
        }
        let r = i64::try_from(target).unwrap_or(i64::MAX);
        let res = self
            .retry("compact at", &target.to_string(), |mut kv, _| async move {
                match kv.compact(r, None).await {
                    Ok(_) => Ok(()),
                    // Already compacted at or past it (by us or another client): done.
                    Err(e) if is_compacted(&e) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await;
        if res.is_ok() {
            tracing::info!(revision = target, "compacted etcd history");
        }
        res
    }
}

/// Forwards one etcd watch into a `Watch`'s channel, re-opening it from the last
/// delivered revision when the member serving it goes away.
struct WatchTask {
    store: EtcdStore,
    user_prefix: String,
    full: Vec<u8>,
    /// Revision of the last event sent; a resumed watch starts after it.
    last: u64,
    tx: mpsc::Sender<Result<Arc<Event>>>,
    /// Re-opens in a row that did not last (see `reopen`).
    quick_reopens: u32,
    opened_at: Instant,
}

/// A watch stream that ends this many times in a row, each time within
/// `STABLE_WATCH` of being opened, is given up on: etcd keeps refusing it.
const MAX_QUICK_REOPENS: u32 = 10;
const STABLE_WATCH: Duration = Duration::from_secs(10);

impl WatchTask {
    fn convert(&self, ev: &etcd_client::Event) -> Option<Event> {
        let kv = self.store.to_kv(ev.kv()?);
        let prev = ev.prev_kv().map(|p| self.store.to_kv(p));
        Some(match ev.event_type() {
            etcd_client::EventType::Put => Event { kind: EventType::Put, kv, prev },
            etcd_client::EventType::Delete => {
                // etcd's tombstone has no create_revision; the deleted value has it.
                let create_revision = prev.as_ref().map(|p| p.create_revision).unwrap_or(0);
                Event { kind: EventType::Delete, kv: KeyValue { create_revision, value: Bytes::new(), ..kv }, prev }
            }
        })
    }

    async fn run(mut self, mut stream: WatchStream) {
        // Every pass either forwards a response or re-opens the stream; re-opening is
        // itself bounded in time, and a watch that cannot be re-opened ends with an error.
        loop {
            let msg = tokio::select! {
                _ = self.tx.closed() => return,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        let compacted = rev(resp.compact_revision()).saturating_sub(1);
                        let _ = self.tx.send(Err(Error::Compacted { requested: self.last, compacted })).await;
                        return;
                    }
                    for ev in resp.events() {
                        let Some(ev) = self.convert(ev) else { continue };
                        // A resumed watch may repeat what was already delivered.
                        if ev.kv.mod_revision <= self.last {
                            continue;
                        }
                        self.last = ev.kv.mod_revision;
                        if self.tx.send(Ok(Arc::new(ev))).await.is_err() {
                            return;
                        }
                    }
                    if resp.canceled() {
                        tracing::debug!(prefix = %self.user_prefix, reason = resp.cancel_reason(), "etcd cancelled the watch; re-opening");
                        match self.reopen().await {
                            Some(s) => stream = s,
                            None => return,
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::debug!(prefix = %self.user_prefix, last = self.last, "etcd watch stream ended; re-opening");
                    match self.reopen().await {
                        Some(s) => stream = s,
                        None => return,
                    }
                }
            }
        }
    }

    /// A new watch from after the last delivered revision, or `None` after sending the
    /// error that ends this one.
    async fn reopen(&mut self) -> Option<WatchStream> {
        if self.opened_at.elapsed() < STABLE_WATCH {
            self.quick_reopens += 1;
            if self.quick_reopens > MAX_QUICK_REOPENS {
                let e = Error::Backend(format!(
                    "etcd at {}: watch {}: the stream ended {MAX_QUICK_REOPENS} times in a row",
                    self.store.endpoints, self.user_prefix
                ));
                tracing::warn!(prefix = %self.user_prefix, "giving up on an etcd watch that keeps ending");
                let _ = self.tx.send(Err(e)).await;
                return None;
            }
            // Not a tight loop against a member that keeps refusing.
            tokio::time::sleep(Duration::from_millis(100) * self.quick_reopens).await;
        } else {
            self.quick_reopens = 0;
        }
        self.opened_at = Instant::now();
        tokio::select! {
            _ = self.tx.closed() => None,
            r = self.store.open_watch(&self.user_prefix, &self.full, self.last + 1) => match r {
                Ok((s, _)) => Some(s),
                Err(e) => {
                    tracing::warn!(prefix = %self.user_prefix, error = %e, "cannot re-open etcd watch");
                    let _ = self.tx.send(Err(e)).await;
                    None
                }
            },
        }
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<KeyValue>> {
        Box::pin(self.get_impl(key))
    }

    fn list<'a>(&'a self, prefix: &'a str, start_after: Option<&'a str>, limit: usize) -> StoreFuture<'a, ListPage> {
        Box::pin(self.list_impl(prefix, start_after, limit))
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> StoreFuture<'a, KeyValue> {
        Box::pin(self.create_impl(key, value))
    }

    fn update<'a>(&'a self, key: &'a str, value: Bytes, expected_revision: Option<u64>) -> StoreFuture<'a, KeyValue> {
        Box::pin(self.update_impl(key, value, expected_revision))
    }

    fn delete<'a>(&'a self, key: &'a str, expected_revision: Option<u64>) -> StoreFuture<'a, KeyValue> {
        Box::pin(self.delete_impl(key, expected_revision))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after_revision: u64) -> StoreFuture<'a, Watch> {
        Box::pin(self.watch_impl(prefix, after_revision))
    }

    fn revision(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.current_revision())
    }

    fn compact(&self, revision: u64) -> StoreFuture<'_, ()> {
        Box::pin(self.compact_impl(revision))
    }
}
