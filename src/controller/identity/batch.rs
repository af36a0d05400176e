//! Create coalescing: creates from concurrent reconciles are gathered into batch
//! `PATCH /admin/identities` requests (at most 1000 items, at most 200 with cleartext
//! passwords), one batch in flight at a time (Ory Network allows one create request in flight
//! per project). While a batch is in flight the next one fills up, so batches grow with load.
//! Each item's result goes back to the reconcile that asked for it.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::kratos::{
    self, BATCH_PATCH_MAX_CLEARTEXT_PASSWORDS, BATCH_PATCH_MAX_ITEMS, BatchPatchItem,
    CreateIdentityBody, KratosClient,
};

struct Request {
    body: CreateIdentityBody,
    reply: oneshot::Sender<Result<String, kratos::Error>>,
}

/// Hands creates to the batching task.
#[derive(Debug, Clone)]
pub struct CreateBatcher {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").finish_non_exhaustive()
    }
}

/// How the pending requests are cut into one batch: the longest prefix that respects both limits.
pub fn batch_len(cleartext: &[bool]) -> usize {
    let mut passwords = 0;
    for (i, has) in cleartext.iter().enumerate() {
        if i == BATCH_PATCH_MAX_ITEMS {
            return i;
        }
        if *has {
            if passwords == BATCH_PATCH_MAX_CLEARTEXT_PASSWORDS {
                return i;
            }
            passwords += 1;
        }
    }
    cleartext.len()
}

impl CreateBatcher {
    /// Starts the batching task; `window` is how long the first request of a batch waits for
    /// company.
    pub fn spawn(kratos: KratosClient, window: Duration) -> Self {
        let (tx, rx) = mpsc::channel(4 * BATCH_PATCH_MAX_ITEMS);
        tokio::spawn(run(kratos, rx, window));
        Self { tx }
    }

    /// Creates one identity through the next batch; returns its id, or this item's own error.
    pub async fn create(&self, body: CreateIdentityBody) -> Result<String, kratos::Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { body, reply })
            .await
            .map_err(|_| kratos::Error::Unavailable {
                message: "the create batcher stopped".into(),
            })?;
        rx.await.map_err(|_| kratos::Error::Unavailable {
            message: "the create batch was abandoned".into(),
        })?
    }
}

async fn run(kratos: KratosClient, mut rx: mpsc::Receiver<Request>, window: Duration) {
    let mut pending: Vec<Request> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => pending.push(r),
                None => return,
            }
            let deadline = tokio::time::Instant::now() + window;
            while pending.len() < BATCH_PATCH_MAX_ITEMS {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => pending.push(r),
                    _ => break,
                }
            }
        }
        // Take whatever else is queued without waiting.
        while pending.len() < 4 * BATCH_PATCH_MAX_ITEMS {
            match rx.try_recv() {
                Ok(r) => pending.push(r),
                Err(_) => break,
            }
        }
        let flags: Vec<bool> = pending
            .iter()
            .map(|r| r.body.has_cleartext_password())
            .collect();
        let n = batch_len(&flags).max(1);
        let batch: Vec<Request> = pending.drain(..n).collect();
        let items: Vec<BatchPatchItem> = batch
            .iter()
            .map(|r| BatchPatchItem::create(r.body.clone(), None))
            .collect();
        debug!(
            items = items.len(),
            queued = pending.len(),
            "sending create batch"
        );
        let mut fallback: Vec<Request> = Vec::new();
        match kratos.batch_patch_identities(&items).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for req in batch {
                    match results.next() {
                        Some(r) if r.is_success() => match r.identity_id {
                            Some(id) => {
                                let _ = req.reply.send(Ok(id));
                            }
                            None => fallback.push(req),
                        },
                        // Kratos v1.3.1 reports per-item errors without detail and rolls back
                        // the other items of a batch with a conflict: each failed item is sent
                        // again on its own, which gives its precise error (or creates it).
                        _ => fallback.push(req),
                    }
                }
            }
            Err(e) if e.is_transient() => {
                // The batch may or may not have been applied; every item retries, and a retry that
                // conflicts finds its identity by the owner marker.
                let message = e.to_string();
                for req in batch {
                    let _ = req.reply.send(Err(kratos::Error::Unavailable {
                        message: message.clone(),
                    }));
                }
            }
            // One bad item (an unknown hash format, say) fails the whole batch with 400.
            Err(_) => fallback = batch,
        }
        if !fallback.is_empty() {
            debug!(
                items = fallback.len(),
                "creating failed batch items one by one"
            );
        }
        for req in fallback {
            let outcome = kratos.create_identity(&req.body).await.map(|i| i.id);
            let _ = req.reply.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_limits() {
        assert_eq!(batch_len(&[]), 0);
        assert_eq!(batch_len(&vec![false; 1500]), 1000);
        assert_eq!(batch_len(&vec![true; 300]), 200);
        let mut mixed = vec![true; 200];
        mixed.extend(vec![false; 50]);
        mixed.push(true);
        mixed.push(false);
        assert_eq!(batch_len(&mixed), 250, "stops before the 201st password");
        assert_eq!(batch_len(&[false, true, false]), 3);
    }
}
