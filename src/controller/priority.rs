//! Which API server writes go first while many identities are being created.
//!
//! Every write to the API server takes a share of the same CPU. During a bulk create (at least
//! [`BULK`] new objects between their finalizer and their Kratos create), the writes that make
//! progress are the finalizer patches: each one releases an object to the next create batch.
//! Statuses and Events only report. So while a bulk create runs, one status writer goes on
//! (objects still become Ready one by one) and the others wait, and Events wait until the bulk
//! create is over and at most [`STATUS_BACKLOG`] statuses are left to write. Nothing is dropped
//! or skipped; reports come later, the work sooner. Measured with `cargo xtask bench` (see
//! docs/benchmarks.md): at 10,000 new objects the Kratos identities exist markedly sooner and
//! all objects are Ready sooner too, because the finalizer patches no longer queue behind
//! reports on a saturated API server.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// New objects being created at once from which a create counts as bulk (a fraction of one
/// Kratos batch).
pub const BULK: usize = 100;
/// Statuses waiting to be written above which Events wait.
pub const STATUS_BACKLOG: usize = 100;
/// How often a waiting writer looks again.
const POLL: Duration = Duration::from_millis(50);

/// The count of creates in flight and of Identity statuses waiting, shared by the detached
/// creates, the status writers and the Event publishers.
#[derive(Debug, Default)]
pub struct Priority {
    creating: AtomicUsize,
    statuses: AtomicUsize,
}

/// Whether status writer number `writer` (0-based) may write now (pure).
pub fn status_writer_may_run(writer: usize, creating: usize) -> bool {
    writer == 0 || creating < BULK
}

/// Whether Events may be published now (pure).
pub fn events_may_run(creating: usize, statuses: usize) -> bool {
    creating < BULK && statuses <= STATUS_BACKLOG
}

impl Priority {
    /// A new object's create started.
    pub fn create_started(&self) {
        self.creating.fetch_add(1, Ordering::Relaxed);
    }

    /// A new object's create ended (whatever the outcome).
    pub fn create_ended(&self) {
        // Never below zero, even if a caller ends more than it started.
        let _ = self
            .creating
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// New objects being created now.
    pub fn creating(&self) -> usize {
        self.creating.load(Ordering::Relaxed)
    }

    /// Waits until status writer `writer` may write.
    pub async fn status_turn(&self, writer: usize) {
        while !status_writer_may_run(writer, self.creating()) {
            tokio::time::sleep(POLL).await;
        }
    }

    /// Records how many statuses wait to be written (the status queue says so on each change).
    pub fn set_statuses_queued(&self, n: usize) {
        self.statuses.store(n, Ordering::Relaxed);
    }

    /// Statuses waiting to be written.
    pub fn statuses_queued(&self) -> usize {
        self.statuses.load(Ordering::Relaxed)
    }

    /// Waits until Events may be published.
    pub async fn event_turn(&self) {
        while !events_may_run(self.creating(), self.statuses_queued()) {
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_status_writer_keeps_going_during_a_bulk_create() {
        assert!(status_writer_may_run(0, BULK * 10));
        assert!(!status_writer_may_run(1, BULK));
        assert!(status_writer_may_run(1, BULK - 1));
        assert!(status_writer_may_run(7, 0));
    }

    #[test]
    fn events_wait_for_creates_and_statuses() {
        assert!(events_may_run(0, 0));
        assert!(events_may_run(BULK - 1, STATUS_BACKLOG));
        assert!(!events_may_run(BULK, 0));
        assert!(!events_may_run(0, STATUS_BACKLOG + 1));
    }

    #[test]
    fn the_create_count_follows_starts_and_ends() {
        let p = Priority::default();
        p.create_started();
        p.create_started();
        p.create_ended();
        assert_eq!(p.creating(), 1);
        p.create_ended();
        p.create_ended();
        assert_eq!(p.creating(), 0, "never below zero");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_writer_goes_on_when_the_bulk_create_ends() {
        let p = std::sync::Arc::new(Priority::default());
        for _ in 0..BULK {
            p.create_started();
        }
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.status_turn(3).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        p.create_ended();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(waiting.is_finished());
    }
}
