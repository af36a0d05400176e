//! Status and Events of a RecoveryRequest. The status is written by server-side apply only when
//! it changes; Events are published when something happened or the Ready reason changes. Neither
//! ever carries the link or the code.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::warn;

use super::{
    Blocked,
    plan::{IssuedFacts, REASON_EXPIRED, REASON_ISSUED, REASON_KRATOS_UNAVAILABLE},
};
use crate::controller::report::update_status;
use crate::{
    Error, Result,
    api::{
        conditions::{self, Desired, Status},
        recovery_request::{RecoveryPhase, RecoveryRequest, RecoveryRequestStatus},
    },
    controller::Context,
};

/// Publishes an Event about `obj` (failures to publish are logged, never fatal).
pub fn event(
    ctx: &Context,
    obj: &RecoveryRequest,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    crate::controller::report::event(ctx, obj, warning, reason, action, note);
}

/// Status times are whole seconds (that is how the API server stores them).
fn second(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

fn what(obj: &RecoveryRequest) -> &'static str {
    match obj.spec.method {
        crate::api::recovery_request::RecoveryMethod::Link => "recovery link",
        crate::api::recovery_request::RecoveryMethod::Code => "recovery code",
    }
}

/// The status while a link or code is (or was) in the Secret.
pub fn issued_status(
    obj: &RecoveryRequest,
    facts: &IssuedFacts,
    expired: bool,
    now: Timestamp,
) -> RecoveryRequestStatus {
    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let expires = second(facts.expires_at);
    let (phase, reason, message) = if expired {
        (
            RecoveryPhase::Expired,
            REASON_EXPIRED,
            format!(
                "the {} expired at {}; the data of Secret {} was cleared",
                what(obj),
                expires.0,
                facts.secret_name
            ),
        )
    } else {
        (
            RecoveryPhase::Issued,
            REASON_ISSUED,
            format!(
                "a {} is in Secret {}, valid until {}",
                what(obj),
                facts.secret_name,
                expires.0
            ),
        )
    };
    RecoveryRequestStatus {
        phase: Some(phase),
        identity: obj.spec.identity_display(),
        identity_id: facts.identity_id.clone(),
        issued_at: facts.issued_at.map(second),
        expires_at: Some(expires),
        secret_name: Some(facts.secret_name.clone()),
        issued_generation: Some(facts.generation),
        observed_generation: generation,
        conditions: conditions::merge(
            &prev.conditions,
            &[Desired::new(
                conditions::READY,
                Status::True,
                reason,
                message,
            )],
            generation,
            now,
        ),
    }
}

/// The status when nothing can be issued now; the facts of an earlier issue are kept.
pub fn blocked_status(obj: &RecoveryRequest, b: &Blocked, now: Timestamp) -> RecoveryRequestStatus {
    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let desired = conditions::not_ready(b.reason, &b.message, b.stalled);
    RecoveryRequestStatus {
        phase: Some(b.phase),
        identity: obj.spec.identity_display(),
        observed_generation: generation,
        conditions: conditions::merge(&prev.conditions, &desired, generation, now),
        ..prev
    }
}

fn previous_ready_reason(obj: &RecoveryRequest) -> Option<String> {
    obj.status
        .as_ref()
        .and_then(|s| conditions::ready(&s.conditions))
        .map(|c| c.reason.clone())
}

/// Reports a freshly issued link or code.
pub async fn issued(ctx: &Context, obj: &RecoveryRequest, facts: &IssuedFacts) -> Result<()> {
    update_status(
        ctx,
        obj,
        &issued_status(obj, facts, false, Timestamp::now()),
    )
    .await?;
    let id = facts.identity_id.as_deref().unwrap_or("?");
    let note = format!(
        "Issued a {} for Kratos identity {id} into Secret {}, valid until {}",
        what(obj),
        facts.secret_name,
        second(facts.expires_at).0
    );
    event(ctx, obj, false, "Issued", "Issue", note);
    Ok(())
}

/// Reports a link or code found in the Secret after a lost status write (nothing was issued).
pub async fn adopted(ctx: &Context, obj: &RecoveryRequest, facts: &IssuedFacts) -> Result<()> {
    update_status(
        ctx,
        obj,
        &issued_status(obj, facts, false, Timestamp::now()),
    )
    .await?;
    let note = format!(
        "Secret {} already holds the {} issued for generation {}; not issuing another",
        facts.secret_name,
        what(obj),
        facts.generation
    );
    event(ctx, obj, false, "Adopted", "Issue", note);
    Ok(())
}

/// Keeps the status of a valid link or code up to date (no Event).
pub async fn waiting(ctx: &Context, obj: &RecoveryRequest, facts: &IssuedFacts) -> Result<()> {
    update_status(
        ctx,
        obj,
        &issued_status(obj, facts, false, Timestamp::now()),
    )
    .await?;
    Ok(())
}

/// Reports an expired link or code whose Secret data was cleared.
pub async fn expired(ctx: &Context, obj: &RecoveryRequest, facts: &IssuedFacts) -> Result<()> {
    let was_expired = obj.status.as_ref().and_then(|s| s.phase) == Some(RecoveryPhase::Expired);
    update_status(ctx, obj, &issued_status(obj, facts, true, Timestamp::now())).await?;
    if !was_expired {
        let note = format!(
            "The {} expired at {}; cleared the data of Secret {}",
            what(obj),
            second(facts.expires_at).0,
            facts.secret_name
        );
        event(ctx, obj, false, "Expired", "Expire", note);
    }
    Ok(())
}

/// Reports why nothing can be issued (a Warning Event when the reason changes).
pub async fn blocked(ctx: &Context, obj: &RecoveryRequest, b: &Blocked) -> Result<()> {
    let changed_reason = previous_ready_reason(obj).as_deref() != Some(b.reason);
    update_status(ctx, obj, &blocked_status(obj, b, Timestamp::now())).await?;
    if changed_reason {
        event(ctx, obj, true, b.reason, "Issue", b.message.clone());
    }
    Ok(())
}

/// Reports that Kratos (or the API server) failed transiently; the caller returns the error so
/// the reconcile is retried with backoff.
pub async fn unavailable(ctx: &Context, obj: &RecoveryRequest, error: &Error) {
    let b = Blocked::pending(
        REASON_KRATOS_UNAVAILABLE,
        format!("cannot reach Kratos, retrying with backoff: {error}"),
    );
    // A link issued for this generation stays issued: only a pending request reports this.
    let issued_now =
        obj.status.as_ref().and_then(|s| s.issued_generation) == obj.metadata.generation;
    // Reported already for this generation: rewriting only the message (errors differ from try
    // to try) would start another reconcile at once, as this controller sees its own status
    // writes, and so bypass the error backoff.
    let reported = obj
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation == obj.metadata.generation)
        && previous_ready_reason(obj).as_deref() == Some(REASON_KRATOS_UNAVAILABLE);
    if issued_now || reported {
        return;
    }
    if let Err(e) = blocked(ctx, obj, &b).await {
        warn!(error = %e, "could not write status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(status: serde_json::Value) -> RecoveryRequest {
        serde_json::from_value(json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
            "metadata": { "name": "r", "namespace": "ns", "uid": "u-1", "generation": 3 },
            "spec": { "identityRef": {"name": "alice"}, "method": "link" },
            "status": status
        }))
        .unwrap()
    }

    fn facts() -> IssuedFacts {
        IssuedFacts {
            generation: 3,
            identity_id: Some("id-1".into()),
            issued_at: Some("2026-01-01T00:00:00.5Z".parse().unwrap()),
            expires_at: "2026-01-01T01:00:00.987654321Z".parse().unwrap(),
            secret_name: "r".into(),
        }
    }

    #[test]
    fn issued_then_expired_status() {
        let now: Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        let obj = request(json!({}));
        let s = issued_status(&obj, &facts(), false, now);
        assert_eq!(s.phase, Some(RecoveryPhase::Issued));
        assert_eq!(s.issued_generation, Some(3));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.identity.as_deref(), Some("alice"));
        assert_eq!(
            s.expires_at,
            Some(Time("2026-01-01T01:00:00Z".parse().unwrap()))
        );
        assert!(conditions::is_ready(&s.conditions));
        // Round trip through the API server's precision: unchanged, so nothing is written again.
        let back: RecoveryRequestStatus =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert!(conditions::same_status(
            &back,
            &issued_status(
                &request(serde_json::to_value(&back).unwrap()),
                &facts(),
                false,
                now
            )
        ));

        let obj = request(serde_json::to_value(&s).unwrap());
        let e = issued_status(&obj, &facts(), true, now);
        assert_eq!(e.phase, Some(RecoveryPhase::Expired));
        assert_eq!(
            conditions::ready(&e.conditions).map(|c| c.reason.as_str()),
            Some(REASON_EXPIRED)
        );
        assert!(!conditions::same_status(&s, &e));
    }

    #[test]
    fn blocked_status_keeps_earlier_facts() {
        let now: Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        let earlier = issued_status(&request(json!({})), &facts(), false, now);
        let mut obj = request(serde_json::to_value(&earlier).unwrap());
        obj.metadata.generation = Some(4);
        let b = Blocked::failed("InvalidSpec", "nope");
        let s = blocked_status(&obj, &b, now);
        assert_eq!(s.phase, Some(RecoveryPhase::Failed));
        assert_eq!(s.issued_generation, Some(3));
        assert_eq!(s.observed_generation, Some(4));
        let stalled = s
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::STALLED)
            .unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "InvalidSpec")
        );
        let p = blocked_status(&obj, &Blocked::pending("IdentityNotReady", "wait"), now);
        assert_eq!(p.phase, Some(RecoveryPhase::Pending));
        assert!(
            p.conditions
                .iter()
                .any(|c| c.type_ == conditions::RECONCILING)
        );
        assert!(!p.conditions.iter().any(|c| c.type_ == conditions::STALLED));
    }
}
