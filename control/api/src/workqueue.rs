//! A work queue of keys for reconcilers, with the semantics controllers rely on: a key
//! queued many times is processed once; a key is never processed by two workers at
//! once (if it changes while being processed it is queued again afterwards); failed
//! keys come back after an exponential backoff; keys may be scheduled for later.
//!
//! It must not know what keys mean.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

struct State<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    shut_down: bool,
}

pub struct WorkQueue<T> {
    state: Arc<Mutex<State<T>>>,
    notify: Arc<Notify>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), notify: self.notify.clone() }
    }
}

impl<T> std::fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue").finish_non_exhaustive()
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                shut_down: false,
            })),
            notify: Arc::new(Notify::new()),
        }
    }

    pub fn add(&self, key: T) {
        let mut s = self.state.lock().unwrap();
        if s.shut_down || !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Requeues a key that failed, after 5 ms doubling per consecutive failure (≤ 60 s).
    pub fn add_rate_limited(&self, key: T) {
        let n = {
            let mut s = self.state.lock().unwrap();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = Duration::from_millis(5u64.saturating_mul(1u64 << (n - 1).min(14))).min(Duration::from_secs(60));
        self.add_after(key, delay);
    }

    /// Clears a key's failure count after it succeeded.
    pub fn forget(&self, key: &T) {
        self.state.lock().unwrap().failures.remove(key);
    }

    /// The next key to process; `None` after `shut_down`. Call `done` when finished.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().unwrap();
                if let Some(k) = s.queue.pop_front() {
                    s.dirty.remove(&k);
                    s.processing.insert(k.clone());
                    // Others may be waiting for the remaining keys.
                    if !s.queue.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some(k);
                }
                if s.shut_down {
                    return None;
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, key: &T) {
        let mut s = self.state.lock().unwrap();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().unwrap().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shut_down(&self) {
        self.state.lock().unwrap().shut_down = true;
        self.notify.notify_waiters();
    }
}

/// What a reconciler wants next for the key it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Converged; wait for the next change.
    Done,
    /// Look again after this long (e.g. a time-based condition).
    RequeueAfter(Duration),
}

/// Runs `workers` tasks that take keys from `queue` and reconcile them: errors are
/// logged and the key retried with backoff. Returns when the queue is shut down.
pub async fn run_workers<T, F, Fut, E>(name: &'static str, queue: WorkQueue<T>, workers: usize, reconcile: F)
where
    T: Clone + Eq + Hash + Send + Sync + Display + 'static,
    F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let q = queue.clone();
        let f = reconcile.clone();
        set.spawn(async move {
            while let Some(key) = q.get().await {
                match f(key.clone()).await {
                    Ok(Action::Done) => q.forget(&key),
                    Ok(Action::RequeueAfter(d)) => {
                        q.forget(&key);
                        q.add_after(key.clone(), d);
                    }
                    Err(e) => {
                        tracing::warn!(controller = name, key = %key, error = %e, "reconcile failed; will retry");
                        q.add_rate_limited(key.clone());
                    }
                }
                q.done(&key);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicates_collapse_and_busy_keys_wait() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.get().await.unwrap();
        assert_eq!(k, "a");
        q.add("a"); // changed while processing: comes back after done
        assert_eq!(q.get().await.unwrap(), "b");
        assert!(q.is_empty());
        q.done(&"a");
        assert_eq!(q.get().await.unwrap(), "a");
    }

    #[tokio::test]
    async fn shut_down_wakes_workers() {
        let q: WorkQueue<u32> = WorkQueue::new();
        let q2 = q.clone();
        let h = tokio::spawn(async move { q2.get().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.shut_down();
        assert_eq!(h.await.unwrap(), None);
    }
}
