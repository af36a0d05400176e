//! Identity status writes, off the reconcile's path. A reconcile hands the new status of its
//! object to the writer and returns; a bounded number of writers apply the statuses by
//! server-side apply. Per object the newest status wins and one write is in flight at a time.
//!
//! Why: at 10,000 new identities every object needs a finalizer patch before its Kratos create
//! and a status write after it. Written inside the reconcile, each status held a reconcile slot,
//! so the finalizer patches of the next objects (and with them the next create batch) waited
//! for the status writes of the previous ones. Now creates stream at the pace of the finalizer
//! patches and the status writes use the API server's remaining capacity.
//!
//! A failed write is retried with the controllers' backoff (1 s to 5 min) unless a newer status
//! replaced it; the first failure of a status is also said in a Warning Event
//! (`StatusNotWritten`), since the status cannot say it. A write to a deleted object is dropped.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use kube::{
    ResourceExt,
    core::{ObjectMeta, PartialObjectMeta, PartialObjectMetaExt},
    runtime::reflector::ObjectRef,
};
use tokio::sync::Notify;
use tracing::debug;

use crate::api::identity::{Identity, IdentityStatus};
use crate::controller::{Context, backoff, priority::Priority, report};

/// Status writes in flight at once (fewer while many identities are being created, see
/// [`crate::controller::priority`]).
pub const WRITERS: usize = 32;

/// One status waiting to be written.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The object's name, namespace, uid and resourceVersion as the reconcile saw it (where to
    /// write, and the Event's subject): not the whole object, which thousands of queued
    /// statuses would otherwise keep alive beside the cache's newer copies.
    pub obj: PartialObjectMeta<Identity>,
    /// The status to apply.
    pub status: IdentityStatus,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// The queue of status writes (pure bookkeeping, no I/O): FIFO over objects, newest status per
/// object, one write in flight per object, and the resourceVersion of each object's last write
/// until the cache has caught up with it.
#[derive(Debug, Default)]
pub struct Queue {
    pending: HashMap<ObjectRef<Identity>, Pending>,
    order: VecDeque<ObjectRef<Identity>>,
    in_flight: HashSet<ObjectRef<Identity>>,
    written: HashMap<ObjectRef<Identity>, String>,
}

impl Queue {
    /// Queues `p`; a status already waiting for the same object is replaced (it keeps its place).
    pub fn push(&mut self, key: ObjectRef<Identity>, p: Pending) {
        if self.pending.insert(key.clone(), p).is_none() {
            self.order.push_back(key);
        }
    }

    /// Queues a retry of `p` unless a newer status for the object is waiting.
    pub fn retry(&mut self, key: ObjectRef<Identity>, p: Pending) {
        if !self.pending.contains_key(&key) {
            self.push(key, p);
        }
    }

    /// The next status to write: the oldest queued object without a write in flight.
    pub fn pop(&mut self) -> Option<(ObjectRef<Identity>, Pending)> {
        let i = self
            .order
            .iter()
            .position(|k| !self.in_flight.contains(k))?;
        let key = self.order.remove(i)?;
        let p = self.pending.remove(&key)?;
        self.in_flight.insert(key.clone());
        Some((key, p))
    }

    /// Marks the write of `key` finished; `written` is the resourceVersion it produced.
    pub fn done(&mut self, key: &ObjectRef<Identity>, written: Option<String>) {
        self.in_flight.remove(key);
        if let Some(rv) = written {
            self.written.insert(key.clone(), rv);
        }
    }

    /// Whether the cached object (at `resource_version`) may be stale for status purposes: a
    /// status of it is waiting or being written, or the last one written is not in the cache
    /// yet. A reconcile then writes its status even when it equals the cached one.
    pub fn cache_may_be_stale(
        &mut self,
        key: &ObjectRef<Identity>,
        resource_version: Option<&str>,
    ) -> bool {
        if self.pending.contains_key(key) || self.in_flight.contains(key) {
            return true;
        }
        match self.written.get(key) {
            Some(rv) if Some(rv.as_str()) == resource_version => {
                self.written.remove(key);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Claims the write of an object's first status: true (and the write is in flight) when
    /// the writer knows of no status of the object, so the cached object, which has none, is
    /// current. A status queued later waits until [`Queue::done`], so the first never
    /// overwrites a later one.
    pub fn claim_first(
        &mut self,
        key: &ObjectRef<Identity>,
        resource_version: Option<&str>,
    ) -> bool {
        if self.cache_may_be_stale(key, resource_version) {
            return false;
        }
        self.in_flight.insert(key.clone())
    }

    /// Forgets an object (it was deleted).
    pub fn forget(&mut self, key: &ObjectRef<Identity>) {
        self.written.remove(key);
    }

    /// Statuses waiting (not counting those being written).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether nothing waits and nothing is being written.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }
}

/// What a queued status keeps of its object.
fn reference(obj: &Identity) -> PartialObjectMeta<Identity> {
    ObjectMeta {
        name: obj.metadata.name.clone(),
        namespace: obj.metadata.namespace.clone(),
        uid: obj.metadata.uid.clone(),
        resource_version: obj.metadata.resource_version.clone(),
        ..ObjectMeta::default()
    }
    .into_request_partial()
}

/// Hands statuses to the writers.
#[derive(Debug, Clone)]
pub struct StatusWriter {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    /// Notified whenever a write finishes (for [`StatusWriter::idle`]).
    settled: Arc<Notify>,
    priority: Arc<Priority>,
}

impl StatusWriter {
    /// An empty queue; `priority` paces the writers.
    pub fn new(priority: Arc<Priority>) -> Self {
        Self {
            queue: Arc::default(),
            wake: Arc::default(),
            settled: Arc::default(),
            priority,
        }
    }

    /// Queues `status` for `obj` unless it equals the cached status and the cache is current.
    /// Returns whether a write was queued.
    pub fn submit(&self, obj: &Arc<Identity>, status: IdentityStatus, unchanged: bool) -> bool {
        let key = ObjectRef::from_obj(&**obj);
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        if unchanged && !q.cache_may_be_stale(&key, obj.resource_version().as_deref()) {
            return false;
        }
        q.push(
            key,
            Pending {
                obj: reference(obj),
                status,
                attempts: 0,
            },
        );
        self.priority.set_statuses_queued(q.len());
        drop(q);
        self.wake.notify_one();
        true
    }

    /// Writes the first status of an object that has none, at once and outside the queue
    /// (which bulk creates slow down): until an object has a status, kstatus (Flux, `kubectl
    /// wait`) counts it as Current. Skipped when a status of the object is queued, being
    /// written, or written but not in the cache yet; written only if the object is still at
    /// the resourceVersion seen (so it never replaces a status written meanwhile). A failure is
    /// only logged: the reconcile's own status follows through the queue. The caller picks
    /// objects without status ([`super::report::first_statuses`]).
    pub async fn write_first(&self, ctx: &Context, obj: &Arc<Identity>, status: IdentityStatus) {
        let key = ObjectRef::from_obj(&**obj);
        let claimed = self
            .queue
            .lock()
            .is_ok_and(|mut q| q.claim_first(&key, obj.resource_version().as_deref()));
        if !claimed {
            return;
        }
        let written = match report::apply_status_if_unchanged(ctx, &reference(obj), &status).await {
            Ok(rv) => rv,
            Err(kube::Error::Api(ref e)) if e.code == 409 => {
                debug!(object = %key, "object changed; first status not needed");
                None
            }
            Err(e) => {
                debug!(object = %key, error = %e, "first status not written");
                None
            }
        };
        self.done(&key, written);
        // A status queued meanwhile waited for this write.
        self.wake.notify_one();
    }

    /// Forgets a deleted object.
    pub fn forget(&self, obj: &Identity) {
        if let Ok(mut q) = self.queue.lock() {
            q.forget(&ObjectRef::from_obj(obj));
            self.priority.set_statuses_queued(q.len());
        }
    }

    /// Statuses waiting to be written.
    pub fn queued(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    fn pop(&self) -> Option<(ObjectRef<Identity>, Pending)> {
        let mut q = self.queue.lock().ok()?;
        let next = q.pop();
        self.priority.set_statuses_queued(q.len());
        next
    }

    fn done(&self, key: &ObjectRef<Identity>, written: Option<String>) {
        if let Ok(mut q) = self.queue.lock() {
            q.done(key, written);
        }
        self.settled.notify_waiters();
    }

    /// Resolves once no status waits and none is being written (at shutdown, after the
    /// controllers stopped: then nothing queues new ones). A failed write waiting for its retry
    /// is not waited for; the next leader's reconcile writes that status again.
    pub async fn idle(&self) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.queue.lock().map(|q| q.is_idle()).unwrap_or(true) {
                return;
            }
            settled.await;
        }
    }

    fn retry(&self, key: ObjectRef<Identity>, p: Pending) {
        if let Ok(mut q) = self.queue.lock() {
            q.retry(key, p);
            self.priority.set_statuses_queued(q.len());
        }
        self.wake.notify_one();
    }

    /// Runs [`WRITERS`] writers until `stop`; statuses still queued then are dropped (the next
    /// leader's reconciles compute them again). [`crate::controller::run`] stops them once the controllers
    /// stopped and the queue is [idle](Self::idle).
    pub async fn run(&self, ctx: Arc<Context>, stop: impl std::future::Future<Output = ()>) {
        let writers =
            futures::future::join_all((0..WRITERS).map(|i| writer(i, self.clone(), ctx.clone())));
        futures::future::select(Box::pin(writers), Box::pin(stop)).await;
    }
}

async fn writer(number: usize, w: StatusWriter, ctx: Arc<Context>) {
    loop {
        w.priority.status_turn(number).await;
        let notified = w.wake.notified();
        let Some((key, mut p)) = w.pop() else {
            notified.await;
            continue;
        };
        let result = report::apply_status_returning_version(&ctx, &p.obj, &p.status).await;
        match result {
            Ok(rv) => w.done(&key, rv),
            Err(kube::Error::Api(ref status)) if status.is_not_found() => {
                debug!(object = %key, "object gone; status dropped");
                w.done(&key, None);
            }
            Err(e) => {
                w.done(&key, None);
                if p.attempts == 0 {
                    report::status_not_written(&ctx, &p.obj, &e);
                }
                p.attempts += 1;
                let delay = backoff::delay(p.attempts, crate::kratos::retry::random_unit(), None);
                debug!(object = %key, attempts = p.attempts, ?delay, "status write failed; retrying");
                let w = w.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    w.retry(key, p);
                });
            }
        }
        // Another writer may be waiting for the object this one just finished.
        w.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Arc<Identity> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
                "metadata": { "name": name, "namespace": "ns", "resourceVersion": "1" },
                "spec": { "schemaId": "customer", "traits": {} }
            }))
            .unwrap(),
        )
    }

    fn pending(name: &str, generation: i64) -> (ObjectRef<Identity>, Pending) {
        let o = obj(name);
        (
            ObjectRef::from_obj(&*o),
            Pending {
                obj: reference(&o),
                status: IdentityStatus {
                    observed_generation: Some(generation),
                    ..Default::default()
                },
                attempts: 0,
            },
        )
    }

    /// Queues the status of generation `generation` for object `name`; returns its key.
    fn push(q: &mut Queue, name: &str, generation: i64) -> ObjectRef<Identity> {
        let (key, p) = pending(name, generation);
        q.push(key.clone(), p);
        key
    }

    #[test]
    fn newest_status_wins_and_keeps_its_place() {
        let mut q = Queue::default();
        let a = push(&mut q, "a", 1);
        let b = push(&mut q, "b", 1);
        push(&mut q, "a", 2);
        assert_eq!(q.len(), 2);
        let (k, p) = q.pop().unwrap();
        assert_eq!(k, a);
        assert_eq!(p.status.observed_generation, Some(2));
        assert_eq!(q.pop().unwrap().0, b);
        assert!(q.pop().is_none());
    }

    #[test]
    fn one_write_in_flight_per_object() {
        let mut q = Queue::default();
        let a = push(&mut q, "a", 1);
        assert_eq!(q.pop().unwrap().0, a);
        push(&mut q, "a", 2);
        let b = push(&mut q, "b", 1);
        assert_eq!(q.pop().unwrap().0, b, "a is being written: b goes first");
        assert!(q.pop().is_none(), "a waits for its write in flight");
        q.done(&a, Some("7".into()));
        let (k, p) = q.pop().unwrap();
        assert_eq!((k, p.status.observed_generation), (a, Some(2)));
    }

    #[test]
    fn a_retry_never_replaces_a_newer_status() {
        let mut q = Queue::default();
        let (a, a1) = pending("a", 1);
        let (_, a2) = pending("a", 2);
        q.push(a.clone(), a2);
        q.retry(a.clone(), a1);
        assert_eq!(q.pop().unwrap().1.status.observed_generation, Some(2));
        let (_, a1) = pending("a", 1);
        q.done(&a, None);
        q.retry(a.clone(), a1);
        assert_eq!(q.pop().unwrap().1.status.observed_generation, Some(1));
    }

    #[test]
    fn the_cache_is_stale_until_it_shows_the_last_write() {
        let mut q = Queue::default();
        let (a, a1) = pending("a", 1);
        assert!(!q.cache_may_be_stale(&a, Some("1")));
        q.push(a.clone(), a1);
        assert!(q.cache_may_be_stale(&a, Some("1")), "waiting");
        q.pop();
        assert!(q.cache_may_be_stale(&a, Some("1")), "in flight");
        q.done(&a, Some("5".into()));
        assert!(
            q.cache_may_be_stale(&a, Some("1")),
            "written at 5, cache at 1"
        );
        assert!(!q.cache_may_be_stale(&a, Some("5")), "the cache caught up");
        assert!(!q.cache_may_be_stale(&a, Some("1")), "and is forgotten");
    }

    #[test]
    fn a_first_status_is_written_only_when_nothing_else_is_known_and_holds_back_later_ones() {
        let mut q = Queue::default();
        let (a, pa) = pending("a", 1);
        assert!(q.claim_first(&a, Some("1")), "nothing known");
        assert!(!q.claim_first(&a, Some("1")), "already being written");
        q.push(a.clone(), pa.clone());
        assert!(q.pop().is_none(), "a later status waits for the first");
        q.done(&a, Some("2".into()));
        assert_eq!(q.pop().map(|(k, _)| k), Some(a.clone()), "then goes");
        q.done(&a, Some("3".into()));
        assert!(
            !q.claim_first(&a, Some("2")),
            "a later write is not in the cache yet"
        );
        let (b, pb) = pending("b", 1);
        q.push(b.clone(), pb);
        assert!(!q.claim_first(&b, Some("1")), "a status is queued");
    }
}
