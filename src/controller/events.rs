//! Events are published in the background, as client-go's event broadcaster does: a reconcile
//! hands its Event to a bounded queue and goes on, a few publishers write them to the API
//! server, and when the queue is full the new Event is dropped and counted
//! (`kratos_operator_events_dropped_total`). Events are a best-effort record in Kubernetes; the
//! status is the authoritative one. At 10,000 new identities this keeps one Event write per
//! object out of the reconciles' way and gives finalizer and status writes the larger share of the
//! API server.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::priority::Priority;
use crate::metrics::Metrics;

/// Events waiting to be published at most (about 1 KiB each).
pub const QUEUE: usize = 16 * 1024;
/// Events being published at once.
pub const PUBLISHERS: usize = 4;

/// Hands Events to the background publishers.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<(Event, ObjectReference)>,
    metrics: Arc<Metrics>,
}

impl EventSink {
    /// Starts the publishers; they end when every sink is dropped and the queue is drained.
    /// They give way to creates and to the statuses still queued (see [`super::priority`]).
    pub fn spawn(recorder: Recorder, metrics: Arc<Metrics>, priority: Arc<Priority>) -> Self {
        let (tx, rx) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let queued = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        tokio::spawn(
            queued.for_each_concurrent(PUBLISHERS, move |(event, reference)| {
                let (recorder, priority) = (recorder.clone(), priority.clone());
                async move {
                    priority.event_turn().await;
                    if let Err(e) = recorder.publish(&event, &reference).await {
                        warn!(error = %e, reason = %event.reason, "could not publish event");
                    }
                }
            }),
        );
        Self { tx, metrics }
    }

    /// Queues `event` about `reference`; never waits. A full queue drops it (counted).
    pub fn publish(&self, event: Event, reference: ObjectReference) {
        if let Err(e) = self.tx.try_send((event, reference)) {
            self.metrics.events_dropped.inc();
            let (event, _) = e.into_inner();
            debug!(reason = %event.reason, "event queue full or closed; event dropped");
        }
    }
}
