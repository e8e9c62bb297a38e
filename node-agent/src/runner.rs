//! When each role of the agent syncs, in the manner of kube-proxy's bounded-frequency
//! runner: sources push changes into a channel as they happen; a role applies every
//! change at once (cheap bookkeeping), and syncs — writes the kernel state — soon after
//! a change, but never more often than `min_interval`, and at least every
//! `max_interval` even without one (which repairs state that someone else changed).
//!
//! A role syncs for the first time only after its first change, which a source sends
//! even when it is empty: a proxy that synced before its source's initial snapshot
//! would remove the frontends it adopted from the previous run.
//!
//! This module only decides *when*; what a sync does is the role's business.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// Why a role is asked to sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncReason {
    /// Changes arrived since the last sync.
    Changed,
    /// Nothing changed for `max_interval`: re-assert the desired state.
    Periodic,
}

/// A piece of desired state with one writer: it takes changes in and syncs them out.
pub trait Role {
    /// One change from the role's source.
    type Change;
    /// Records a change; must not touch the kernel.
    fn apply(&mut self, change: Self::Change);
    /// Makes the kernel state match everything applied so far. Returns whether work is
    /// left that failed and should be retried (after `min_interval`, like a change).
    fn sync(&mut self, reason: SyncReason) -> bool;
}

/// A role whose syncs are timed into the `skiff_datapath_sync_duration_seconds` metric
/// under its name.
pub struct Timed<R> {
    name: &'static str,
    role: R,
}

impl<R> Timed<R> {
    pub fn new(name: &'static str, role: R) -> Self {
        Self { name, role }
    }
}

impl<R: Role> Role for Timed<R> {
    type Change = R::Change;

    fn apply(&mut self, change: Self::Change) {
        self.role.apply(change);
    }

    fn sync(&mut self, reason: SyncReason) -> bool {
        let started = std::time::Instant::now();
        let again = self.role.sync(reason);
        crate::metrics::role_synced(self.name, started.elapsed());
        again
    }
}

/// How often a role may and must sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// At most one sync per this interval, however many changes arrive.
    pub min_interval: Duration,
    /// At least one sync per this interval once the first change came.
    pub max_interval: Duration,
    /// Stop after the first sync (`skiff-node run --once`).
    pub once: bool,
}

/// Runs `role` until its change channel closes (or after one sync with `once`). Calls
/// `first_synced` after the first sync, so that the agent can say it is ready.
pub async fn run<R: Role>(
    role: &mut R,
    schedule: Schedule,
    changes: &mut mpsc::UnboundedReceiver<R::Change>,
    first_synced: impl FnOnce(),
) {
    // Nothing is synced before the source's first change.
    let Some(first) = changes.recv().await else { return };
    role.apply(first);
    drain(role, changes);
    let mut dirty = role.sync(SyncReason::Changed);
    first_synced();
    if schedule.once {
        return;
    }
    let mut last_sync = Instant::now();
    loop {
        let deadline = if dirty { last_sync + schedule.min_interval } else { last_sync + schedule.max_interval };
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => {
                    role.apply(change);
                    drain(role, changes);
                    dirty = true;
                    continue;
                }
                None => return,
            },
            () = tokio::time::sleep_until(deadline) => {}
        }
        dirty = role.sync(if dirty { SyncReason::Changed } else { SyncReason::Periodic });
        last_sync = Instant::now();
    }
}

/// Runs a source that can only be asked, not waited on (a file, a directory): `poll`
/// every `period` on a task of its own, pushing what it returns to the role. Ends when
/// the role is gone, or with `once` after the first poll, so that a role whose source
/// has nothing to say does not wait for ever.
pub async fn poll_source<C>(
    period: Duration,
    once: bool,
    mut poll: impl FnMut() -> Option<C>,
    changes: mpsc::UnboundedSender<C>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(change) = poll()
            && changes.send(change).is_err()
        {
            return;
        }
        if once {
            return;
        }
    }
}

/// Applies whatever else is queued already, so that one sync covers a burst.
fn drain<R: Role>(role: &mut R, changes: &mut mpsc::UnboundedReceiver<R::Change>) {
    while let Ok(change) = changes.try_recv() {
        role.apply(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what happened, with the (paused) time since the test started.
    #[derive(Default)]
    struct Recorder {
        start: Option<Instant>,
        applied: Vec<u32>,
        syncs: Vec<(u64, SyncReason, usize)>,
    }

    impl Role for Recorder {
        type Change = u32;
        fn apply(&mut self, change: u32) {
            self.applied.push(change);
        }
        fn sync(&mut self, reason: SyncReason) -> bool {
            let ms = self.start.map_or(0, |s| s.elapsed().as_millis() as u64);
            self.syncs.push((ms, reason, self.applied.len()));
            // Change 99 stands for one that fails until it is retried once.
            self.applied.last() == Some(&99) && self.syncs.iter().filter(|s| s.2 == self.applied.len()).count() == 1
        }
    }

    const SCHEDULE: Schedule =
        Schedule { min_interval: Duration::from_millis(100), max_interval: Duration::from_secs(10), once: false };

    /// Runs the recorder with `script`: (delay before sending, change), then closes the channel
    /// after `end_ms`.
    async fn play(schedule: Schedule, script: &[(u64, u32)], end_ms: u64) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut role = Recorder { start: Some(Instant::now()), ..Default::default() };
        let script = script.to_vec();
        let sender = tokio::spawn(async move {
            let start = Instant::now();
            for (at, change) in script {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                let _ = tx.send(change);
            }
            tokio::time::sleep_until(start + Duration::from_millis(end_ms)).await;
        });
        let mut ready = false;
        run(&mut role, schedule, &mut rx, || ready = true).await;
        sender.await.unwrap();
        assert!(ready || role.syncs.is_empty(), "first_synced was not called after the first sync");
        role
    }

    #[tokio::test(start_paused = true)]
    async fn no_sync_before_the_first_change_then_at_once() {
        let r = play(SCHEDULE, &[(500, 1)], 600).await;
        assert_eq!(r.syncs, [(500, SyncReason::Changed, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_sync_after_min_interval() {
        let r = play(SCHEDULE, &[(0, 1), (10, 2), (20, 3), (30, 4), (250, 5)], 400).await;
        assert_eq!(
            r.syncs,
            [(0, SyncReason::Changed, 1), (100, SyncReason::Changed, 4), (250, SyncReason::Changed, 5)],
            "changes 2-4 wait for min_interval after the first sync and share one sync; 5 comes later and is synced at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_changes_it_syncs_every_max_interval() {
        let r = play(SCHEDULE, &[(0, 1)], 25_000).await;
        assert_eq!(
            r.syncs,
            [(0, SyncReason::Changed, 1), (10_000, SyncReason::Periodic, 1), (20_000, SyncReason::Periodic, 1)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_sync_is_retried_after_min_interval() {
        let r = play(SCHEDULE, &[(0, 1), (1000, 99)], 1500).await;
        assert_eq!(
            r.syncs,
            [(0, SyncReason::Changed, 1), (1000, SyncReason::Changed, 2), (1100, SyncReason::Changed, 2)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_polled_source_pushes_what_it_finds() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut polls = 0;
        let poller = tokio::spawn(poll_source(
            Duration::from_millis(200),
            false,
            move || {
                polls += 1;
                (polls % 2 == 1).then_some(polls)
            },
            tx,
        ));
        assert_eq!(rx.recv().await, Some(1), "the first poll is at once");
        assert_eq!(rx.recv().await, Some(3), "polls that find nothing push nothing");
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), poller).await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_polled_source_with_once_stops_after_one_poll() {
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        poll_source(Duration::from_millis(200), true, || None, tx).await;
        assert_eq!(rx.recv().await, None, "the channel closes, so the role ends without a sync");
    }

    #[tokio::test(start_paused = true)]
    async fn once_stops_after_the_first_sync() {
        let r = play(Schedule { once: true, ..SCHEDULE }, &[(0, 1), (50, 2)], 100).await;
        assert_eq!(r.syncs, [(0, SyncReason::Changed, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_source_ends_the_role() {
        let r = play(SCHEDULE, &[], 0).await;
        assert!(r.syncs.is_empty());
    }
}
