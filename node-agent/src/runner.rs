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
    /// Makes the kernel state match everything applied so far.
    fn sync(&mut self, reason: SyncReason);
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
    role.sync(SyncReason::Changed);
    first_synced();
    if schedule.once {
        return;
    }
    let mut last_sync = Instant::now();
    let mut dirty = false;
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
        role.sync(if dirty { SyncReason::Changed } else { SyncReason::Periodic });
        last_sync = Instant::now();
        dirty = false;
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
        fn sync(&mut self, reason: SyncReason) {
            let ms = self.start.map_or(0, |s| s.elapsed().as_millis() as u64);
            self.syncs.push((ms, reason, self.applied.len()));
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
