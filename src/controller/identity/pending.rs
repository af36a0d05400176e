//! Creates whose outcome this process does not know, and how long they may still commit.
//!
//! A create can reach Kratos and commit after the operator stopped waiting for it: its process
//! was killed (or lost the leadership) with the request in flight, or the request failed or
//! timed out on the client's side while Kratos went on. Until such a create has committed or
//! no longer can, a lookup that finds no identity proves nothing: a deletion that trusted it
//! would let the object go and leave the late identity behind, a create that trusted it would
//! make a second identity where Kratos does not refuse one.
//!
//! This process cannot see its predecessors' creates, but it knows they were all sent before it
//! began to reconcile (it became leader after they stopped); and it knows when its own creates
//! failed. With `--create-settle-time` as the longest Kratos may still carry out a create after
//! that, [`PendingCreates::remaining`] says how long a "not found" for an object is not yet an
//! answer. The argument is in `docs/reliability.md`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// When this process began to reconcile, and when its own creates failed, by object uid.
#[derive(Debug)]
pub struct PendingCreates {
    settle: Duration,
    started: Mutex<Instant>,
    failed: Mutex<HashMap<String, Instant>>,
}

impl PendingCreates {
    /// Nothing failed yet; the predecessors' creates settle `settle` after now.
    pub fn new(settle: Duration) -> Self {
        Self {
            settle,
            started: Mutex::new(Instant::now()),
            failed: Mutex::default(),
        }
    }

    /// The controllers start (this process became leader): any create a predecessor sent was
    /// sent before now.
    pub fn begin(&self) {
        if let Ok(mut started) = self.started.lock() {
            *started = Instant::now();
        }
    }

    /// A create for `uid` failed without a refusal (timed out, cut, answered 5xx): Kratos may
    /// still carry it out.
    pub fn failed(&self, uid: &str) {
        if let Ok(mut failed) = self.failed.lock() {
            failed.insert(uid.to_string(), Instant::now());
        }
    }

    /// Forgets `uid` (its object is gone).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut failed) = self.failed.lock() {
            failed.remove(uid);
        }
    }

    /// The instant after which no create for `uid` whose outcome this process does not know can
    /// still commit.
    pub fn horizon(&self, uid: &str) -> Instant {
        let started = self.started.lock().map_or_else(|_| Instant::now(), |s| *s);
        let failed = self
            .failed
            .lock()
            .ok()
            .and_then(|f| f.get(uid).copied())
            .unwrap_or(started);
        started.max(failed) + self.settle
    }

    /// How long after `now` such a create for `uid` may still commit; `None` once none can.
    /// A failure is kept after that (until its object is gone): the marker index must still be
    /// newer than its horizon ([`super::markers`]).
    pub fn remaining(&self, uid: &str, now: Instant) -> Option<Duration> {
        self.horizon(uid)
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_and_a_failure_each_open_a_window_of_the_settle_time() {
        let pending = PendingCreates::new(Duration::from_secs(30));
        let now = Instant::now();
        let left = pending.remaining("u1", now).unwrap();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(29));
        assert_eq!(pending.remaining("u1", now + Duration::from_secs(31)), None);
        // A failure later than the start opens a later window, for that object only.
        let later = now + Duration::from_secs(40);
        pending.failed("u1");
        let failed_at = *pending.failed.lock().unwrap().get("u1").unwrap();
        assert_eq!(pending.horizon("u1"), failed_at + Duration::from_secs(30));
        assert!(pending.horizon("u2") <= pending.horizon("u1"));
        assert_eq!(
            pending.remaining("u1", later),
            None,
            "past its own window too"
        );
        assert_eq!(
            pending.horizon("u1"),
            failed_at + Duration::from_secs(30),
            "a settled failure still dates the horizon (the marker index must be newer)"
        );
    }

    #[test]
    fn a_new_leadership_starts_a_new_window() {
        let pending = PendingCreates::new(Duration::from_secs(5));
        let first = pending.horizon("u1");
        std::thread::sleep(Duration::from_millis(5));
        pending.begin();
        assert!(pending.horizon("u1") > first);
        pending.failed("u2");
        pending.forget("u2");
        assert_eq!(pending.horizon("u2"), pending.horizon("u1"));
    }

    #[test]
    fn no_settle_time_means_no_window() {
        let pending = PendingCreates::new(Duration::ZERO);
        assert_eq!(pending.remaining("u1", Instant::now()), None);
    }
}
