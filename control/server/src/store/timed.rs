//! A store that times every call of the store it wraps into the `etcd_request_duration_seconds`
//! metric (`crate::metrics`), whichever backend that is. It changes nothing else.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{KeyValue, ListPage, Store, StoreFuture, Watch};

/// `inner`, timed.
pub struct TimedStore {
    inner: Arc<dyn Store>,
}

impl TimedStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner }
    }
}

fn timed<'a, T: 'a>(operation: &'static str, key: &'a str, call: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
    Box::pin(async move {
        let started = Instant::now();
        let result = call.await;
        crate::metrics::store_call(operation, key, started.elapsed());
        result
    })
}

impl Store for TimedStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<KeyValue>> {
        timed("get", key, self.inner.get(key))
    }

    fn list<'a>(&'a self, prefix: &'a str, start_after: Option<&'a str>, limit: usize) -> StoreFuture<'a, ListPage> {
        timed("list", prefix, self.inner.list(prefix, start_after, limit))
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> StoreFuture<'a, KeyValue> {
        timed("create", key, self.inner.create(key, value))
    }

    fn update<'a>(&'a self, key: &'a str, value: Bytes, expected_revision: Option<u64>) -> StoreFuture<'a, KeyValue> {
        timed("update", key, self.inner.update(key, value, expected_revision))
    }

    fn delete<'a>(&'a self, key: &'a str, expected_revision: Option<u64>) -> StoreFuture<'a, KeyValue> {
        timed("delete", key, self.inner.delete(key, expected_revision))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after_revision: u64) -> StoreFuture<'a, Watch> {
        timed("watch", prefix, self.inner.watch(prefix, after_revision))
    }

    fn revision(&self) -> StoreFuture<'_, u64> {
        timed("revision", "", self.inner.revision())
    }

    fn compact(&self, revision: u64) -> StoreFuture<'_, ()> {
        timed("compact", "", self.inner.compact(revision))
    }
}
