//! Expectations: the guard against acting twice on a cache that has not yet shown a
//! controller's own writes (upstream's `ControllerExpectations`). A controller records
//! each write it makes for an owner (a pod created, a slice updated, a pod deleted) and
//! does not act on that owner again until its cache shows every one of them, either
//! from watch events (`observe`) or by looking (`satisfied_in`). A write the cache
//! never shows (a create that failed after the server stored it, a lost event) is
//! forgotten after a time-to-live, with a warning, so no owner is wedged forever.
//!
//! It must not read caches or talk to the API server itself: callers say what they see.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a write should leave in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The object, at this resourceVersion or later (0: any).
    Present { min_rv: u64 },
    /// No object, or one being deleted.
    Gone,
}

/// What the cache shows of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not in the cache.
    Absent,
    /// In the cache at this resourceVersion (`None`: not a number, which counts as new
    /// enough rather than blocking forever).
    Present(Option<u64>),
    /// In the cache with a deletionTimestamp.
    Terminating,
    /// A watch event said it was deleted (so it was also seen created).
    Deleted,
}

impl Expect {
    /// Whether `seen` shows this write.
    pub fn met_by(self, seen: Seen) -> bool {
        match (self, seen) {
            (Expect::Present { min_rv }, Seen::Present(rv)) => rv.is_none_or(|rv| rv >= min_rv),
            (Expect::Present { .. }, Seen::Absent) => false,
            (Expect::Present { .. }, Seen::Terminating | Seen::Deleted) => true,
            (Expect::Gone, Seen::Present(_)) => false,
            (Expect::Gone, Seen::Absent | Seen::Terminating | Seen::Deleted) => true,
        }
    }
}

#[derive(Debug)]
struct Pending {
    expect: Expect,
    since: Instant,
}

/// Per owner (`K`), the writes not yet seen, by object id (a name or a uid, as the
/// controller chooses; one id has one pending write, the latest).
#[derive(Debug)]
pub struct Expectations<K> {
    pending: Mutex<HashMap<K, HashMap<String, Pending>>>,
    ttl: Duration,
}

impl<K: Eq + Hash + Clone + Display> Expectations<K> {
    /// Writes not seen within `ttl` are dropped.
    pub fn new(ttl: Duration) -> Self {
        Self { pending: Mutex::new(HashMap::new()), ttl }
    }

    /// Records a write for `owner`.
    pub fn expect(&self, owner: &K, id: &str, expect: Expect) {
        self.expect_unless(owner, id, expect, || false);
    }

    /// Records a write unless `already_seen` (called under the lock `observe` takes, so
    /// an event racing ahead of the write's response cannot slip in between).
    pub fn expect_unless(&self, owner: &K, id: &str, expect: Expect, already_seen: impl FnOnce() -> bool) {
        let mut m = self.pending.lock().unwrap();
        if !already_seen() {
            m.entry(owner.clone()).or_default().insert(id.to_string(), Pending { expect, since: Instant::now() });
        }
    }

    /// A write that failed will never be seen.
    pub fn cancel(&self, owner: &K, id: &str) {
        let mut m = self.pending.lock().unwrap();
        if let Some(p) = m.get_mut(owner) {
            p.remove(id);
            if p.is_empty() {
                m.remove(owner);
            }
        }
    }

    /// A watch event about object `id`.
    pub fn observe(&self, owner: &K, id: &str, seen: Seen) {
        let mut m = self.pending.lock().unwrap();
        if let Some(p) = m.get_mut(owner) {
            if p.get(id).is_some_and(|e| e.expect.met_by(seen)) {
                p.remove(id);
            }
            if p.is_empty() {
                m.remove(owner);
            }
        }
    }

    /// Whether every write for `owner` has been observed (or has expired).
    pub fn satisfied(&self, owner: &K) -> bool {
        self.satisfied_in(owner, |_, _| None)
    }

    /// `satisfied`, first asking `seen` what the cache shows of each pending object
    /// (`None`: do not look, wait for its event).
    pub fn satisfied_in(&self, owner: &K, seen: impl Fn(&str, Expect) -> Option<Seen>) -> bool {
        let mut m = self.pending.lock().unwrap();
        let Some(p) = m.get_mut(owner) else { return true };
        p.retain(|id, e| {
            if e.since.elapsed() > self.ttl {
                tracing::warn!(owner = %owner, object = %id, "cache never showed our write; trusting it anyway");
                return false;
            }
            !seen(id, e.expect).is_some_and(|s| e.expect.met_by(s))
        });
        let done = p.is_empty();
        if done {
            m.remove(owner);
        }
        done
    }

    /// Drops everything pending for `owner` (it was deleted).
    pub fn forget(&self, owner: &K) {
        self.pending.lock().unwrap().remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Expectations<String> {
        Expectations::new(Duration::from_secs(60))
    }

    #[test]
    fn what_meets_what() {
        let present = Expect::Present { min_rv: 5 };
        assert!(present.met_by(Seen::Present(Some(5))));
        assert!(present.met_by(Seen::Present(Some(6))));
        assert!(!present.met_by(Seen::Present(Some(4))));
        assert!(present.met_by(Seen::Present(None)));
        assert!(!present.met_by(Seen::Absent));
        assert!(present.met_by(Seen::Terminating));
        assert!(present.met_by(Seen::Deleted));
        assert!(!Expect::Gone.met_by(Seen::Present(None)));
        assert!(Expect::Gone.met_by(Seen::Absent));
        assert!(Expect::Gone.met_by(Seen::Terminating));
        assert!(Expect::Gone.met_by(Seen::Deleted));
    }

    #[test]
    fn events_satisfy() {
        let e = exp();
        let k = "rs".to_string();
        e.expect_unless(&k, "u1", Expect::Present { min_rv: 0 }, || false);
        assert!(!e.satisfied(&k));
        e.observe(&k, "u1", Seen::Present(None));
        assert!(e.satisfied(&k));
        // Already in the cache when the create returned: nothing to wait for.
        e.expect_unless(&k, "u2", Expect::Present { min_rv: 0 }, || true);
        assert!(e.satisfied(&k));
        e.expect(&k, "u1", Expect::Gone);
        assert!(!e.satisfied(&k));
        e.observe(&k, "u1", Seen::Present(None));
        assert!(!e.satisfied(&k), "still running: the delete is not yet seen");
        e.observe(&k, "u1", Seen::Terminating);
        assert!(e.satisfied(&k));
        e.expect(&k, "u3", Expect::Gone);
        e.cancel(&k, "u3");
        assert!(e.satisfied(&k));
    }

    #[test]
    fn looking_satisfies() {
        let e = exp();
        let k = "svc".to_string();
        e.expect(&k, "a", Expect::Present { min_rv: 7 });
        e.expect(&k, "b", Expect::Gone);
        assert!(!e.satisfied_in(&k, |_, _| Some(Seen::Absent)), "a not created yet");
        assert!(!e.satisfied_in(&k, |id, _| Some(if id == "a" { Seen::Present(Some(6)) } else { Seen::Absent })));
        assert!(e.satisfied_in(&k, |id, _| Some(if id == "a" { Seen::Present(Some(7)) } else { Seen::Absent })));
        e.expect(&k, "a", Expect::Present { min_rv: 1 });
        e.forget(&k);
        assert!(e.satisfied(&k));
    }

    #[test]
    fn unseen_writes_expire() {
        let e: Expectations<String> = Expectations::new(Duration::ZERO);
        let k = "o".to_string();
        e.expect(&k, "x", Expect::Gone);
        std::thread::sleep(Duration::from_millis(2));
        assert!(e.satisfied(&k));
    }
}
