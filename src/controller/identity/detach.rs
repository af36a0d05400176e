//! New identities are created off the reconcile's path when creates are batched.
//!
//! A reconcile of a new object adds the finalizer, hands the rest of its work (validation, the
//! create in the next batch, the status) to a task of its own and returns. A batch can then
//! hold up to 1000 creates (Kratos' limit) whatever the reconcile concurrency, while the
//! reconciles go on adding finalizers to the next objects. At most [`MAX_DETACHED`] such tasks
//! run at once: past that a reconcile waits for a slot, which holds back the finalizer patches.
//!
//! One write in flight per identity still holds: while an object's task runs, its reconciles
//! (a spec change, a deletion) do nothing but mark it; when the task ends, a marked object is
//! reconciled again at once. A task that ends with a retry (Kratos unavailable, a Secret still
//! missing) triggers the next reconcile after the same delay the controller would use.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::{
    channel::mpsc::UnboundedSender,
    future::{BoxFuture, Shared},
};
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::{Context, Finalized, Next};
use crate::{
    api::identity::Identity,
    controller::{backoff, priority::Priority},
    kratos::BATCH_PATCH_MAX_ITEMS,
};

/// Detached creates running at once at most: the batch in flight, the next one filling up and
/// half a batch more.
pub const MAX_DETACHED: usize = 2 * BATCH_PATCH_MAX_ITEMS + BATCH_PATCH_MAX_ITEMS / 2;

/// The objects whose detached task runs, and whether a reconcile arrived meanwhile.
#[derive(Debug)]
pub struct Detached {
    running: Mutex<HashMap<String, bool>>,
    slots: Arc<Semaphore>,
    priority: Arc<Priority>,
}

impl Detached {
    /// No task yet; `priority` counts the running ones.
    pub fn new(priority: Arc<Priority>) -> Self {
        Self {
            running: Mutex::default(),
            slots: Arc::new(Semaphore::new(MAX_DETACHED)),
            priority,
        }
    }

    /// If `uid`'s task runs, marks it for another reconcile when it ends and returns true.
    pub fn defer(&self, uid: &str) -> bool {
        self.running
            .lock()
            .map(|mut m| match m.get_mut(uid) {
                Some(marked) => {
                    *marked = true;
                    true
                }
                None => false,
            })
            .unwrap_or(false)
    }

    fn start(&self, uid: &str) {
        if let Ok(mut m) = self.running.lock()
            && m.insert(uid.to_string(), false).is_none()
        {
            self.priority.create_started();
        }
    }

    /// Resolves once no detached task runs (at shutdown, after the controllers stopped: then
    /// no new task starts).
    pub async fn idle(&self) {
        if let Ok(all) = u32::try_from(MAX_DETACHED) {
            let _ = self.slots.acquire_many(all).await;
        }
    }

    /// Ends `uid`'s task; returns whether a reconcile arrived meanwhile.
    fn finish(&self, uid: &str) -> bool {
        let marked = self.running.lock().ok().and_then(|mut m| m.remove(uid));
        if marked.is_some() {
            self.priority.create_ended();
        }
        marked.unwrap_or(false)
    }
}

/// Whether this reconcile of `obj` should hand its work to a task (pure): creates are batched
/// and the object has no Kratos identity this process knows of.
pub fn wanted(obj: &Identity, ctx: &Context) -> bool {
    ctx.state.creates.is_some()
        && obj.metadata.deletion_timestamp.is_none()
        && obj
            .status
            .as_ref()
            .and_then(|s| s.identity_id.as_ref())
            .is_none()
        && obj
            .uid()
            .is_some_and(|uid| ctx.state.known_ids.get(&uid).is_none())
}

/// What a controller gives its detached tasks: where to ask for the next reconcile, and when to
/// stop.
#[derive(Clone)]
pub struct Handoff {
    /// Triggers a reconcile of an object.
    pub retrigger: UnboundedSender<ObjectRef<Identity>>,
    /// Resolves when the controller stops: a running task finishes its Kratos calls and status
    /// but asks for no further reconcile.
    pub shutdown: Shared<BoxFuture<'static, ()>>,
    /// Resolves when the controller's future is dropped (an aborted task): running tasks stop
    /// at once.
    pub abort: Shared<BoxFuture<'static, ()>>,
}

impl Handoff {
    /// Runs the rest of `obj`'s reconcile in a task of its own; waits only for a free slot.
    pub async fn spawn(&self, obj: Arc<Identity>, ctx: Arc<Context>, finalized: Finalized) {
        let Some(uid) = obj.uid() else { return };
        let Ok(permit) = ctx.state.detached.slots.clone().acquire_owned().await else {
            return;
        };
        ctx.state.detached.start(&uid);
        let handoff = self.clone();
        // The task logs in the reconcile's span (object.ref, object.reason).
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let _permit = permit;
                let object = ObjectRef::from_obj(&*obj);
                let key = backoff::key(&*obj);
                let work = super::apply(obj.clone(), ctx.clone(), finalized);
                let next = tokio::select! {
                    biased;
                    () = handoff.abort.clone() => {
                        ctx.state.detached.finish(&uid);
                        return;
                    }
                    result = work => match result {
                        Ok(Next::AwaitChange) => {
                            ctx.backoff.reset(&key);
                            None
                        }
                        Ok(Next::After(delay)) => {
                            ctx.backoff.reset(&key);
                            Some(delay)
                        }
                        Err(e) => {
                            ctx.metrics.failure("Identity", &e);
                            Some(backoff::delay_after_failure(&*obj, &e, &ctx))
                        }
                    }
                };
                let marked = ctx.state.detached.finish(&uid);
                match (marked, next) {
                    _ if handoff.shutdown.peek().is_some() => {}
                    (true, _) => {
                        let _ = handoff.retrigger.unbounded_send(object);
                    }
                    (false, Some(delay)) => {
                        tokio::select! {
                            () = handoff.shutdown => {}
                            () = tokio::time::sleep(delay) => {
                                let _ = handoff.retrigger.unbounded_send(object);
                            }
                        }
                    }
                    (false, None) => {}
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_during_the_task_is_remembered_once() {
        let priority = Arc::new(Priority::default());
        let d = Detached::new(priority.clone());
        assert!(!d.defer("u1"), "no task: reconcile normally");
        d.start("u1");
        assert!(!d.finish("u1"), "nothing arrived meanwhile");
        d.start("u1");
        assert!(d.defer("u1"));
        assert!(d.defer("u1"));
        assert_eq!(priority.creating(), 1);
        assert!(d.finish("u1"), "reconcile again");
        assert!(!d.defer("u1"));
        assert_eq!(priority.creating(), 0);
    }
}
