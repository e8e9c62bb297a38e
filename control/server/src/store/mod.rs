//! The object store: one trait, shaped like etcd (a single global revision, keys in
//! prefix ranges, watch from a revision, compaction), so that the embedded redb backend
//! and the etcd backend are interchangeable and pass the same `conformance` suite.
//!
//! The store knows keys, bytes and revisions only; it must not know about Kubernetes
//! objects, resourceVersions in JSON, selectors or HTTP. The API server maps
//! resourceVersion = revision on top.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub mod conformance;
pub mod etcd;
mod eventlog;
pub mod redb;
pub mod timed;

pub use self::etcd::{EtcdConfig, EtcdStore};
pub use self::eventlog::Watch;
pub use self::redb::RedbStore;
pub use self::timed::TimedStore;

/// A boxed future, so that `Store` stays usable as `dyn Store` (the server picks the
/// backend at start-up) without an extra crate for async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What every `Store` method returns: a boxed future of a store result.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T>>;

/// A backend's own error, shared: the group commit hands one failure to every writer
/// that waited on it, so errors must be `Clone`.
pub type SharedSource = std::sync::Arc<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error, Clone)]
pub enum Error {
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} is at revision {actual}, not the expected {expected}")]
    Conflict { key: String, expected: u64, actual: u64 },
    #[error("revision {requested} has been compacted (oldest available is after {compacted})")]
    Compacted { requested: u64, compacted: u64 },
    /// The backend refused or could not do something, and says why in words only.
    #[error("store backend failed: {0}")]
    Backend(String),
    /// A call into the backend failed; `source` is the backend's own error.
    #[error("store backend failed: {context}")]
    BackendCall {
        context: String,
        #[source]
        source: SharedSource,
    },
}

impl Error {
    /// A failed backend call, keeping the backend's error as the source.
    pub fn backend_call(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::BackendCall { context: context.into(), source: std::sync::Arc::new(source) }
    }
}

/// Errors are compared by what they say about the store; a backend's own error by its
/// message, since backends' error types cannot be compared.
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::NotFound { key: a }, Self::NotFound { key: b }) => a == b,
            (Self::AlreadyExists { key: a }, Self::AlreadyExists { key: b }) => a == b,
            (
                Self::Conflict { key: a, expected: ea, actual: aa },
                Self::Conflict { key: b, expected: eb, actual: ab },
            ) => a == b && ea == eb && aa == ab,
            (Self::Compacted { requested: ra, compacted: ca }, Self::Compacted { requested: rb, compacted: cb }) => {
                ra == rb && ca == cb
            }
            (Self::Backend(a), Self::Backend(b)) => a == b,
            (Self::BackendCall { context: ca, source: sa }, Self::BackendCall { context: cb, source: sb }) => {
                ca == cb && sa.to_string() == sb.to_string()
            }
            _ => false,
        }
    }
}

impl Eq for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One key with its value and the revisions that created and last modified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    pub create_revision: u64,
    pub mod_revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Put,
    Delete,
}

/// One change. For `Delete`, `kv.value` is empty and `kv.mod_revision` is the revision of
/// the deletion; `prev` carries the deleted value (as etcd's `prev_kv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventType,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

/// A page of a prefix range, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub kvs: Vec<KeyValue>,
    /// The store revision the page was read at.
    pub revision: u64,
    /// Whether keys remain after the last one returned.
    pub more: bool,
}

/// The store every control-plane component goes through (via the API server).
pub trait Store: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<KeyValue>>;

    /// Keys starting with `prefix`, in key order, strictly after `start_after`, at most
    /// `limit` (0 = unlimited).
    fn list<'a>(&'a self, prefix: &'a str, start_after: Option<&'a str>, limit: usize) -> StoreFuture<'a, ListPage>;

    /// Creates `key`; fails with `AlreadyExists` if it is present.
    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> StoreFuture<'a, KeyValue>;

    /// Replaces `key`; with `expected_revision`, only if its mod_revision still equals it.
    fn update<'a>(&'a self, key: &'a str, value: Bytes, expected_revision: Option<u64>) -> StoreFuture<'a, KeyValue>;

    /// Deletes `key`, returning the deleted value; with `expected_revision`, only if
    /// its mod_revision still equals it.
    fn delete<'a>(&'a self, key: &'a str, expected_revision: Option<u64>) -> StoreFuture<'a, KeyValue>;

    /// Changes under `prefix` with revision > `after_revision`, then live changes.
    /// Fails with `Compacted` when that history is gone.
    fn watch<'a>(&'a self, prefix: &'a str, after_revision: u64) -> StoreFuture<'a, Watch>;

    /// The revision of the last change.
    fn revision(&self) -> StoreFuture<'_, u64>;

    /// Forgets history up to and including `revision`; watches from before it then fail.
    fn compact(&self, revision: u64) -> StoreFuture<'_, ()>;
}
