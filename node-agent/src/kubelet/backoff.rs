//! Restart back-off per container, as upstream's kubelet does it: the first restart is
//! immediate, then each one waits twice as long as the last (10 s, 20 s, … 5 min) after
//! the container's exit. A container that ran for 10 minutes starts over at 10 s. A
//! container that could not be started (image missing, bad config) waits the same way
//! after the failure.

use std::collections::HashMap;
use std::time::Duration;

use super::observed::UnixNanos;

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);
/// A container that ran this long resets its back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default)]
struct Entry {
    /// The wait before the next restart; `None` before the first restart.
    delay: Option<Duration>,
    /// When the last attempt to start the container failed (not an exit).
    start_failed_at: Option<UnixNanos>,
}

/// The back-off of one pod's containers, keyed by container name.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    entries: HashMap<String, Entry>,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Backoff {
    /// How long container `name`, which exited at `finished_at` (or failed to start,
    /// whichever was later), must still wait at `now`; `None` when it may restart.
    pub fn remaining(&self, name: &str, finished_at: UnixNanos, now: UnixNanos) -> Option<Duration> {
        let entry = self.entries.get(name)?;
        let delay = entry.delay?;
        let since = entry.start_failed_at.map_or(finished_at, |f| f.max(finished_at));
        let until = since.saturating_add(nanos(delay));
        (now < until).then(|| Duration::from_nanos(u64::try_from(until - now).unwrap_or(0)))
    }

    /// The current delay of `name` (for the CrashLoopBackOff message).
    pub fn delay(&self, name: &str) -> Duration {
        self.entries.get(name).and_then(|e| e.delay).unwrap_or(INITIAL)
    }

    /// Records a restart of `name` whose last instance ran for `ran_for`.
    pub fn restarted(&mut self, name: &str, ran_for: Duration) {
        let entry = self.entries.entry(name.to_owned()).or_default();
        entry.start_failed_at = None;
        entry.delay = match entry.delay {
            _ if ran_for >= RESET_AFTER => Some(INITIAL),
            None => Some(INITIAL),
            Some(d) => Some((d * 2).min(MAX)),
        };
    }

    /// Records that starting `name` failed at `now`.
    pub fn start_failed(&mut self, name: &str, now: UnixNanos) {
        let entry = self.entries.entry(name.to_owned()).or_default();
        entry.start_failed_at = Some(now);
        entry.delay = Some(entry.delay.map_or(INITIAL, |d| (d * 2).min(MAX)));
    }

    /// Forgets a container that started fine.
    pub fn started(&mut self, name: &str) {
        if let Some(e) = self.entries.get_mut(name) {
            e.start_failed_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn first_restart_is_immediate_then_doubles_up_to_five_minutes() {
        let mut b = Backoff::default();
        assert_eq!(b.remaining("c", 100 * S, 100 * S), None);
        b.restarted("c", Duration::from_secs(1));
        assert_eq!(b.remaining("c", 200 * S, 205 * S), Some(Duration::from_secs(5)));
        assert_eq!(b.remaining("c", 200 * S, 210 * S), None);
        b.restarted("c", Duration::from_secs(1));
        assert_eq!(b.delay("c"), Duration::from_secs(20));
        for _ in 0..10 {
            b.restarted("c", Duration::from_secs(1));
        }
        assert_eq!(b.delay("c"), MAX);
        b.restarted("c", RESET_AFTER);
        assert_eq!(b.delay("c"), INITIAL);
    }

    #[test]
    fn a_failed_start_waits_from_the_failure() {
        let mut b = Backoff::default();
        b.start_failed("c", 50 * S);
        assert_eq!(b.remaining("c", 0, 55 * S), Some(Duration::from_secs(5)));
        assert_eq!(b.remaining("c", 0, 60 * S), None);
        b.start_failed("c", 60 * S);
        assert_eq!(b.remaining("c", 0, 70 * S), Some(Duration::from_secs(10)));
    }
}
