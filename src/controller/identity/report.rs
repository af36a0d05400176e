//! Status and Events of an Identity. The status is written by server-side apply only when it
//! changes; Events are published when something happened or the Ready reason changes.

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::Arc;

use super::Context;
use super::{
    Blocked,
    outcome::{Change, Outcome, Synced},
    plan::{Cleanup, REASON_CREATE_PENDING},
};
use crate::{
    Error,
    api::{
        conditions::{self, Desired, Status},
        identity::{CredentialsStatus, Identity, IdentityStatus, PasswordStatus},
    },
};

/// Publishes an Event about `obj` (failures to publish are logged, never fatal).
pub fn event(
    ctx: &Context,
    obj: &Identity,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    crate::controller::report::event(ctx, obj, warning, reason, action, note);
}

/// The status for a Synced outcome.
pub fn synced_status(obj: &Identity, s: &Synced, now: Timestamp) -> IdentityStatus {
    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let wrote = s.change != Change::Unchanged;
    let password = match (
        &s.password_imported,
        prev.credentials.as_ref().and_then(|c| c.password.clone()),
    ) {
        (Some(v), _) => Some(PasswordStatus {
            secret_version: v.clone(),
            set_at: Some(Time(now)),
        }),
        (None, prev_pw) => prev_pw.filter(|_| {
            obj.spec
                .credentials
                .as_ref()
                .and_then(|c| c.password.as_ref())
                .is_some()
        }),
    };
    let credentials = CredentialsStatus {
        password,
        oidc: s.oidc.clone(),
    };
    IdentityStatus {
        identity_id: Some(s.identity_id.clone()),
        observed_generation: generation,
        conditions: conditions::merge(
            &prev.conditions,
            &[Desired::new(
                conditions::READY,
                Status::True,
                "Synced",
                format!("Kratos identity {} matches the spec", s.identity_id),
            )],
            generation,
            now,
        ),
        identifier: s.identifier.clone(),
        state: Some(s.state.clone()),
        schema_id: Some(s.schema_id.clone()),
        schema_digest: s.schema_digest.clone(),
        credentials: (credentials != CredentialsStatus::default()).then_some(credentials),
        active_sessions: Some(s.active_sessions),
        last_synced_at: if wrote || prev.last_synced_at.is_none() {
            Some(Time(now))
        } else {
            prev.last_synced_at
        },
    }
}

/// The first status of an object the operator starts working on: `Reconciling=True` (and
/// `Ready=False`), so that kstatus readers (Flux, `kubectl wait`) see it in progress before
/// Kratos has answered.
pub fn progressing_status(obj: &Identity, now: Timestamp) -> IdentityStatus {
    let generation = obj.metadata.generation;
    let message = "the operator is bringing the Kratos identity in line with the spec";
    IdentityStatus {
        observed_generation: generation,
        conditions: conditions::merge(
            &[],
            &conditions::not_ready("Progressing", message, false),
            generation,
            now,
        ),
        ..IdentityStatus::default()
    }
}

/// First statuses written at once (the finalizer patches and the status writers share the API
/// server with them).
pub const FIRST_STATUS_WRITERS: usize = 4;

/// Whether the watch's copy of `obj` calls for a first status: a live object without any.
pub fn wants_first_status(obj: &Identity) -> bool {
    obj.status.is_none() && obj.metadata.deletion_timestamp.is_none()
}

/// Writes a first status for each object sent on `objects` that still has none in the cache,
/// [`FIRST_STATUS_WRITERS`] at a time, until the sender is dropped (the controller stopped).
/// It runs beside the controller, not in a reconcile: an object waiting for a reconcile slot
/// (all of them held by calls to a Kratos that does not answer) gets its status too.
pub async fn first_statuses(
    ctx: Arc<Context>,
    store: Store<Identity>,
    objects: impl Stream<Item = ObjectRef<Identity>>,
) {
    objects
        .for_each_concurrent(FIRST_STATUS_WRITERS, |object| {
            let (ctx, store) = (ctx.clone(), store.clone());
            async move {
                if let Some(obj) = store.get(&object).filter(|o| wants_first_status(o)) {
                    let status = progressing_status(&obj, Timestamp::now());
                    ctx.state.statuses.write_first(&ctx, &obj, status).await;
                }
            }
        })
        .await;
}

/// The status for a Blocked outcome (or Kratos being unavailable): previous facts are kept.
pub fn blocked_status(obj: &Identity, b: &Blocked, now: Timestamp) -> IdentityStatus {
    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let desired = conditions::not_ready(b.reason, &b.message, b.stalled);
    IdentityStatus {
        observed_generation: generation,
        conditions: conditions::merge(&prev.conditions, &desired, generation, now),
        ..prev
    }
}

/// Hands `status` to the status writer ([`super::status`]) unless it equals the
/// cached one and the cache is current. Returns whether a write was queued.
pub fn write_status(ctx: &Context, obj: &Arc<Identity>, status: IdentityStatus) -> bool {
    let unchanged = crate::controller::report::unchanged(&**obj, &status);
    ctx.state.statuses.submit(obj, status, unchanged)
}

fn previous_ready_reason(obj: &Identity) -> Option<String> {
    obj.status
        .as_ref()
        .and_then(|s| conditions::ready(&s.conditions))
        .map(|c| c.reason.clone())
}

/// Reports an outcome: its status, Events and metrics.
pub fn outcome(obj: &Arc<Identity>, ctx: &Context, outcome: &Outcome) {
    let now = Timestamp::now();
    match outcome {
        Outcome::Synced(s) => {
            tracing::debug!(identity = %s.identity_id, change = ?s.change, "Identity synced");
            ctx.metrics.outcome("Identity", "Synced");
            write_status(ctx, obj, synced_status(obj, s, now));
            let id = &s.identity_id;
            match &s.change {
                Change::Created => ctx.metrics.change("created"),
                Change::Adopted => ctx.metrics.change("adopted"),
                Change::Updated(_) => ctx.metrics.change("updated"),
                Change::TookBack | Change::Unchanged => {}
            }
            match &s.change {
                Change::Created => event(
                    ctx,
                    obj,
                    false,
                    "Created",
                    "Create",
                    format!("Created Kratos identity {id}"),
                ),
                Change::Adopted => event(
                    ctx,
                    obj,
                    false,
                    "Adopted",
                    "Adopt",
                    format!("Adopted existing Kratos identity {id}"),
                ),
                Change::TookBack => {
                    event(
                        ctx,
                        obj,
                        false,
                        "Recovered",
                        "Create",
                        format!("Found Kratos identity {id} created earlier by this object"),
                    );
                }
                Change::Updated(diffs) => {
                    let fields: Vec<&str> = diffs.iter().map(|d| d.as_str()).collect();
                    event(
                        ctx,
                        obj,
                        false,
                        "Updated",
                        "Update",
                        format!("Updated Kratos identity {id}: {}", fields.join(", ")),
                    );
                }
                Change::Unchanged => {}
            }
        }
        Outcome::Blocked(b) => {
            tracing::debug!(reason = b.reason, "Identity blocked");
            ctx.metrics.outcome("Identity", b.reason);
            let changed_reason = previous_ready_reason(obj).as_deref() != Some(b.reason);
            write_status(ctx, obj, blocked_status(obj, b, now));
            if changed_reason {
                event(
                    ctx,
                    obj,
                    b.warning,
                    b.reason,
                    "Reconcile",
                    b.message.clone(),
                );
            }
        }
    }
}

/// Reports the finalizer's cleanup in Events (and the deletion in the metrics).
pub fn cleaned(ctx: &Context, obj: &Identity, cleanup: &Cleanup) {
    if cleanup.not_owned() {
        tracing::info!(
            namespace = obj.metadata.namespace.as_deref().unwrap_or_default(),
            name = obj.metadata.name.as_deref().unwrap_or_default(),
            "the Kratos identity in status is not owned by this object; it is left alone"
        );
        event(
            ctx,
            obj,
            true,
            "NotOwned",
            "Delete",
            "The Kratos identity recorded in status is not owned by this object; it was neither deleted nor released".to_string(),
        );
    }
    match cleanup {
        Cleanup::Delete { id, .. } => {
            ctx.metrics.change("deleted");
            event(
                ctx,
                obj,
                false,
                "Deleted",
                "Delete",
                format!("Deleted Kratos identity {id}"),
            );
        }
        Cleanup::Release { id, .. } => event(
            ctx,
            obj,
            false,
            "Orphaned",
            "Orphan",
            format!("Released Kratos identity {id}; it stays in Kratos"),
        ),
        Cleanup::Wait(_) => event(
            ctx,
            obj,
            false,
            REASON_CREATE_PENDING,
            "Delete",
            "An earlier create of this object's Kratos identity may still reach Kratos; the \
             deletion finishes once it has settled (see --create-settle-time)"
                .to_string(),
        ),
        Cleanup::Nothing { .. } | Cleanup::Observe(_) => {}
    }
}

/// Reports that Kratos (or a transient dependency) failed; the caller returns the error so the
/// reconcile is retried with backoff.
pub fn unavailable(obj: &Arc<Identity>, ctx: &Context, error: &Error) {
    let b = Blocked::new(
        "KratosUnavailable",
        format!("cannot reach Kratos, retrying with backoff: {error}"),
    );
    let changed_reason = previous_ready_reason(obj).as_deref() != Some(b.reason);
    write_status(ctx, obj, blocked_status(obj, &b, Timestamp::now()));
    if changed_reason {
        event(ctx, obj, true, b.reason, "Reconcile", b.message);
    }
}
