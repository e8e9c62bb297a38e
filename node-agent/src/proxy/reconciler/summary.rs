//! [`SyncSummary`]: what one sync did, counted as the writes go; [`ServiceProblem`]: what
//! it could not do, per Service, for whoever reports it to the Service's owner.

/// What one [`LbReconciler::sync`](super::LbReconciler::sync) did, for a log line or
/// metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Services planned (dirty or retried).
    pub services: usize,
    /// Frontends with at least one map write.
    pub frontends_written: usize,
    /// Frontends of planned Services that needed no write.
    pub frontends_unchanged: usize,
    pub frontends_deleted: usize,
    pub backends_deleted: usize,
    /// Inputs left out because they are invalid (logged as warnings).
    pub skipped: usize,
    /// Map writes that failed (logged as errors, retried on the next sync).
    pub errors: usize,
    /// Individual map operations (upserts and deletes).
    pub map_writes: usize,
}

impl SyncSummary {
    /// Whether the sync wrote anything or met a problem: worth a log line.
    pub fn changed(&self) -> bool {
        self.map_writes > 0 || self.errors > 0 || self.skipped > 0
    }
}

impl std::fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} services planned, {} frontends written, {} unchanged, {} deleted, {} backends deleted, \
             {} map writes, {} skipped, {} errors",
            self.services,
            self.frontends_written,
            self.frontends_unchanged,
            self.frontends_deleted,
            self.backends_deleted,
            self.map_writes,
            self.skipped,
            self.errors
        )
    }
}

/// A Service (or a part of it) a sync could not program: an invalid input, a frontend
/// held by another Service, or a failed map write (a full map). `message` is stable for
/// the same cause, so a reporter can tell a new problem from a repeated one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceProblem {
    pub service: crate::proxy::model::ObjectRef,
    pub message: String,
}
