//! The pure core of the RecoveryRequest controller: from the spec, the status, the target
//! Secret and the resolved identity, decide whether to issue a link or code, adopt one that was
//! issued before a crash, expire one, wait, or report why nothing can be issued. No client, no
//! clock, no I/O; every branch is unit-tested below.

use std::time::Duration;

use jiff::Timestamp;

use super::Blocked;
use crate::{
    api::{
        conditions,
        recovery_request::{
            RecoveryMethod, RecoveryPhase, RecoveryRequestSpec, RecoveryRequestStatus,
        },
    },
    kratos,
};

/// Field manager of the Secret's server-side applies.
pub const SECRET_FIELD_MANAGER: &str = "kratos-operator/recovery-secret";
/// Secret key of the recovery link (both methods; for `code` it is the flow's URL).
pub const KEY_LINK: &str = "recoveryLink";
/// Secret key of the recovery code (method `code`).
pub const KEY_CODE: &str = "recoveryCode";
/// Secret key of the expiry instant (RFC 3339).
pub const KEY_EXPIRES_AT: &str = "expiresAt";
/// Secret annotation: the `metadata.generation` of the request the data was issued for. It makes
/// issuing one-shot even when the status write after the Secret write is lost.
pub const ANNOTATION_GENERATION: &str = "kratos-operator.dev/issued-generation";
/// Secret annotation: when the data was issued (RFC 3339).
pub const ANNOTATION_ISSUED_AT: &str = "kratos-operator.dev/issued-at";
/// Secret annotation: when the data expires (RFC 3339).
pub const ANNOTATION_EXPIRES_AT: &str = "kratos-operator.dev/expires-at";
/// Secret annotation: the Kratos identity id the data was issued for.
pub const ANNOTATION_IDENTITY_ID: &str = "kratos-operator.dev/identity-id";
/// Secret annotation: `link` or `code`.
pub const ANNOTATION_METHOD: &str = "kratos-operator.dev/recovery-method";

/// Ready reason: a link or code is in the Secret.
pub const REASON_ISSUED: &str = "Issued";
/// Ready reason: it expired and the Secret's data was cleared.
pub const REASON_EXPIRED: &str = "Expired";
/// Ready reason: the referenced Identity has no Kratos identity yet.
pub const REASON_IDENTITY_NOT_READY: &str = "IdentityNotReady";
/// Ready reason: Kratos does not know the raw identity id.
pub const REASON_IDENTITY_NOT_FOUND: &str = "IdentityNotFound";
/// Ready reason: the recovery method is disabled in Kratos.
pub const REASON_METHOD_DISABLED: &str = "MethodDisabled";
/// Ready reason: the spec cannot be used (Kratos or the operator refused it).
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Ready reason: a Secret of that name exists and is not owned by the request.
pub const REASON_SECRET_CONFLICT: &str = "SecretConflict";
/// Ready reason: Kratos cannot be reached.
pub const REASON_KRATOS_UNAVAILABLE: &str = "KratosUnavailable";

/// Failure reasons that only a change to the spec can resolve: nothing is retried.
const TERMINAL_REASONS: [&str; 2] = [REASON_INVALID_SPEC, REASON_IDENTITY_NOT_FOUND];

/// What the operator knows of the target Secret (never its data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretState {
    /// Whether this request is its controlling owner.
    pub ours: bool,
    /// [`ANNOTATION_GENERATION`], when present and numeric.
    pub issued_generation: Option<i64>,
    /// [`ANNOTATION_ISSUED_AT`], when present and valid.
    pub issued_at: Option<Timestamp>,
    /// [`ANNOTATION_EXPIRES_AT`], when present and valid.
    pub expires_at: Option<Timestamp>,
    /// [`ANNOTATION_IDENTITY_ID`], when present.
    pub identity_id: Option<String>,
    /// Whether it holds a link or a code.
    pub has_data: bool,
}

/// The Kratos identity a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityResolution {
    /// Its Kratos id.
    Resolved(String),
    /// The referenced Identity is missing or has no Kratos identity yet (the message says which).
    NotReady(String),
    /// The namespace's policy does not allow this request (the message names the label).
    Forbidden(String),
}

/// Everything the plan looks at.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// `metadata.generation` of the request.
    pub generation: i64,
    /// Its name (the default Secret name).
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a RecoveryRequestSpec,
    /// Its status (default when absent).
    pub status: &'a RecoveryRequestStatus,
    /// The target Secret, when it exists.
    pub secret: Option<&'a SecretState>,
    /// The identity to recover.
    pub identity: &'a IdentityResolution,
    /// The current time.
    pub now: Timestamp,
}

/// The facts of an issued link or code (what the status reports; never the link or code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFacts {
    /// The request generation it was issued for.
    pub generation: i64,
    /// The Kratos identity id.
    pub identity_id: Option<String>,
    /// When it was issued.
    pub issued_at: Option<Timestamp>,
    /// When it expires.
    pub expires_at: Timestamp,
    /// The Secret that holds it.
    pub secret_name: String,
}

/// A link or code to ask Kratos for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The Kratos identity id.
    pub identity_id: String,
    /// Link or code.
    pub method: RecoveryMethod,
    /// How long it is valid (Kratos' default when `None`).
    pub expires_in: Option<Duration>,
    /// Where Kratos sends the user afterwards (link only).
    pub return_to: Option<String>,
    /// The Secret to write.
    pub secret_name: String,
    /// The request generation it is for.
    pub generation: i64,
}

/// What one reconcile does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Ask Kratos for a new link or code, write it into the Secret, then the status.
    Issue(Issue),
    /// The Secret already holds the link or code of this generation but the status does not say
    /// so (the status write was lost): report it, issue nothing.
    Adopt(IssuedFacts),
    /// It expired: clear the Secret's data and report phase Expired.
    Expire(IssuedFacts),
    /// It is valid: keep the status, look again when it expires.
    Wait(IssuedFacts),
    /// Nothing left to do for this generation (expired and cleared, or failed for good).
    Done,
    /// Nothing can be issued now.
    Blocked(Blocked),
}

/// The Secret name of a request: `spec.secretName`, or the request's name.
pub fn secret_name(spec: &RecoveryRequestSpec, name: &str) -> String {
    spec.secret_name.clone().unwrap_or_else(|| name.to_string())
}

/// Parses a Go duration made of hours, minutes, seconds and milliseconds (`1h30m`, `15m`,
/// `1500ms`), as the CRD's pattern admits. It must be positive.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("expiresIn {text:?} is not a duration such as 15m, 1h or 1h30m");
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        if digits == 0 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit_millis, unit_len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(invalid());
        };
        rest = &rest[unit_len..];
        let millis = value.checked_mul(unit_millis).ok_or_else(invalid)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(invalid)?;
    }
    // Go's time.Duration is an int64 of nanoseconds.
    if total > Duration::from_nanos(i64::MAX.unsigned_abs()) {
        return Err(format!("expiresIn {text:?} is too long"));
    }
    if total < Duration::from_secs(1) {
        return Err(format!("expiresIn {text:?} is shorter than 1s"));
    }
    Ok(total)
}

/// Whether the status reports, for this generation, a failure that only a spec change can
/// resolve.
fn failed_for_good(status: &RecoveryRequestStatus, generation: i64) -> bool {
    status.phase == Some(RecoveryPhase::Failed)
        && conditions::ready(&status.conditions).is_some_and(|c| {
            c.observed_generation == Some(generation)
                && TERMINAL_REASONS.contains(&c.reason.as_str())
        })
}

/// Decides what to do.
pub fn plan(o: &Observed<'_>) -> Plan {
    let generation = o.generation;
    let target = secret_name(o.spec, o.name);
    let ours = o.secret.filter(|s| s.ours);
    let status_issued = o.status.issued_generation == Some(generation);
    let secret_issued = ours.is_some_and(|s| s.issued_generation == Some(generation));

    if status_issued || secret_issued {
        let from_status = status_issued.then(|| IssuedFacts {
            generation,
            identity_id: o.status.identity_id.clone(),
            issued_at: o.status.issued_at.as_ref().map(|t| t.0),
            // Filled below when the status lacks it.
            expires_at: o
                .status
                .expires_at
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            secret_name: o
                .status
                .secret_name
                .clone()
                .unwrap_or_else(|| target.clone()),
        });
        let from_secret = ours.filter(|_| secret_issued).map(|s| IssuedFacts {
            generation,
            identity_id: s.identity_id.clone(),
            issued_at: s.issued_at,
            // A Secret of ours without a readable expiry is treated as expired: clear it.
            expires_at: s.expires_at.unwrap_or(Timestamp::UNIX_EPOCH),
            secret_name: target.clone(),
        });
        let facts = match (from_status, from_secret) {
            (Some(mut f), secret) => {
                if o.status.expires_at.is_none() {
                    f.expires_at = secret.map_or(Timestamp::UNIX_EPOCH, |s| s.expires_at);
                }
                f
            }
            (None, Some(f)) => f,
            // Unreachable: one of the two holds.
            (None, None) => return Plan::Done,
        };
        let expired = o.now >= facts.expires_at;
        if !status_issued {
            return if expired {
                Plan::Expire(facts)
            } else {
                Plan::Adopt(facts)
            };
        }
        if o.status.phase == Some(RecoveryPhase::Expired) {
            let data_left = o
                .secret
                .is_some_and(|s| s.ours && s.has_data && s.issued_generation == Some(generation));
            return if data_left {
                Plan::Expire(facts)
            } else {
                Plan::Done
            };
        }
        return if expired {
            Plan::Expire(facts)
        } else {
            Plan::Wait(facts)
        };
    }

    // Nothing was issued for this generation.
    if failed_for_good(o.status, generation) {
        return Plan::Done;
    }
    let expires_in = match o.spec.expires_in.as_deref().map(parse_duration).transpose() {
        Ok(d) => d,
        Err(message) => return Plan::Blocked(Blocked::failed(REASON_INVALID_SPEC, message)),
    };
    if o.spec.return_to.is_some() && o.spec.method != RecoveryMethod::Link {
        return Plan::Blocked(Blocked::failed(
            REASON_INVALID_SPEC,
            "spec.returnTo is only supported with method link",
        ));
    }
    if o.spec.identity_ref.is_some() == o.spec.identity_id.is_some() {
        return Plan::Blocked(Blocked::failed(
            REASON_INVALID_SPEC,
            "exactly one of spec.identityRef and spec.identityId must be set",
        ));
    }
    if o.secret.is_some_and(|s| !s.ours) {
        return Plan::Blocked(Blocked::pending(
            REASON_SECRET_CONFLICT,
            format!(
                "Secret {target} exists and is not owned by this RecoveryRequest; delete it or set spec.secretName"
            ),
        ));
    }
    match o.identity {
        IdentityResolution::NotReady(message) => {
            Plan::Blocked(Blocked::pending(REASON_IDENTITY_NOT_READY, message.clone()))
        }
        // Stalled, but looked at again after the resync interval: the cluster admin may label
        // the Namespace, which is not watched.
        IdentityResolution::Forbidden(message) => Plan::Blocked(Blocked::failed_retry(
            crate::tenancy::REASON_FORBIDDEN,
            message.clone(),
        )),
        IdentityResolution::Resolved(id) => Plan::Issue(Issue {
            identity_id: id.clone(),
            method: o.spec.method,
            expires_in,
            return_to: o.spec.return_to.clone(),
            secret_name: target,
            generation,
        }),
    }
}

/// Classifies Kratos' refusal to issue. `None` when the error is not a refusal of this request
/// (Kratos unavailable, rate limits, unexpected answers): the caller retries with backoff.
pub fn refusal(
    method: RecoveryMethod,
    identity_ref: Option<&str>,
    identity_id: &str,
    error: &kratos::Error,
) -> Option<Blocked> {
    let method = method.as_str();
    match error {
        kratos::Error::NotFound { message } if message.contains("disabled") => {
            Some(Blocked::failed_retry(
                REASON_METHOD_DISABLED,
                format!(
                    "the {method} recovery method is disabled in Kratos ({message}); enable selfservice.methods.{method}.enabled in the Kratos configuration"
                ),
            ))
        }
        kratos::Error::NotFound { message } => {
            Some(unknown_identity(identity_ref, identity_id, message))
        }
        kratos::Error::Invalid { reason, .. } if reason.contains("identity id does not exist") => {
            Some(unknown_identity(identity_ref, identity_id, reason))
        }
        kratos::Error::Invalid { reason, .. } => Some(Blocked::failed(
            REASON_INVALID_SPEC,
            format!("Kratos refused to issue a recovery {method}: {reason}"),
        )),
        _ => None,
    }
}

fn unknown_identity(identity_ref: Option<&str>, identity_id: &str, reason: &str) -> Blocked {
    match identity_ref {
        // The Identity controller re-creates a Kratos identity that vanished; wait for it.
        Some(name) => Blocked::pending(
            REASON_IDENTITY_NOT_READY,
            format!("Kratos does not know identity {identity_id} of Identity {name}: {reason}"),
        ),
        None => Blocked::failed(
            REASON_IDENTITY_NOT_FOUND,
            format!("Kratos does not know identity {identity_id}: {reason}"),
        ),
    }
}

/// How long until `at`, rounded up, plus a small margin so that the next look is after it.
pub fn until(at: Timestamp, now: Timestamp) -> Duration {
    let millis = at
        .as_millisecond()
        .saturating_sub(now.as_millisecond())
        .max(0);
    Duration::from_millis(u64::try_from(millis).unwrap_or(0)) + Duration::from_millis(250)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::{
        conditions::{Desired, Status},
        identity::LocalObjectRef,
    };

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn spec() -> RecoveryRequestSpec {
        RecoveryRequestSpec {
            identity_ref: Some(LocalObjectRef {
                name: "alice".into(),
            }),
            identity_id: None,
            method: RecoveryMethod::Link,
            expires_in: Some("1h".into()),
            return_to: None,
            secret_name: None,
        }
    }

    fn resolved() -> IdentityResolution {
        IdentityResolution::Resolved("id-1".into())
    }

    fn observed<'a>(
        spec: &'a RecoveryRequestSpec,
        status: &'a RecoveryRequestStatus,
        secret: Option<&'a SecretState>,
        identity: &'a IdentityResolution,
        now: i64,
    ) -> Observed<'a> {
        Observed {
            generation: 2,
            name: "req",
            spec,
            status,
            secret,
            identity,
            now: ts(now),
        }
    }

    fn issued_status(generation: i64, expires: i64, phase: RecoveryPhase) -> RecoveryRequestStatus {
        RecoveryRequestStatus {
            phase: Some(phase),
            identity_id: Some("id-1".into()),
            issued_at: Some(Time(ts(100))),
            expires_at: Some(Time(ts(expires))),
            secret_name: Some("req".into()),
            issued_generation: Some(generation),
            observed_generation: Some(generation),
            ..RecoveryRequestStatus::default()
        }
    }

    fn our_secret(generation: i64, expires: Option<i64>, has_data: bool) -> SecretState {
        SecretState {
            ours: true,
            issued_generation: Some(generation),
            issued_at: Some(ts(100)),
            expires_at: expires.map(ts),
            identity_id: Some("id-1".into()),
            has_data,
        }
    }

    fn facts(expires: i64) -> IssuedFacts {
        IssuedFacts {
            generation: 2,
            identity_id: Some("id-1".into()),
            issued_at: Some(ts(100)),
            expires_at: ts(expires),
            secret_name: "req".into(),
        }
    }

    #[test]
    fn issues_when_nothing_was_issued_for_this_generation() {
        let (spec, status, id) = (spec(), RecoveryRequestStatus::default(), resolved());
        let plan = plan(&observed(&spec, &status, None, &id, 100));
        assert_eq!(
            plan,
            Plan::Issue(Issue {
                identity_id: "id-1".into(),
                method: RecoveryMethod::Link,
                expires_in: Some(Duration::from_secs(3600)),
                return_to: None,
                secret_name: "req".into(),
                generation: 2,
            })
        );
    }

    #[test]
    fn a_spec_change_issues_again_and_reuses_our_secret() {
        let mut spec = spec();
        spec.method = RecoveryMethod::Code;
        spec.secret_name = Some("custom".into());
        spec.expires_in = None;
        let status = issued_status(1, 500, RecoveryPhase::Issued);
        let secret = our_secret(1, Some(500), true);
        let id = resolved();
        match plan(&observed(&spec, &status, Some(&secret), &id, 200)) {
            Plan::Issue(i) => {
                assert_eq!(i.method, RecoveryMethod::Code);
                assert_eq!(i.secret_name, "custom");
                assert_eq!(i.expires_in, None);
                assert_eq!(i.generation, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn never_issues_twice_for_one_generation() {
        let (spec, id) = (spec(), resolved());
        let status = issued_status(2, 500, RecoveryPhase::Issued);
        let secret = our_secret(2, Some(500), true);
        assert_eq!(
            plan(&observed(&spec, &status, Some(&secret), &id, 200)),
            Plan::Wait(facts(500))
        );
        // Even when the Secret was deleted, or the identity is gone.
        let gone = IdentityResolution::NotReady("gone".into());
        assert_eq!(
            plan(&observed(&spec, &status, None, &gone, 200)),
            Plan::Wait(facts(500))
        );
    }

    #[test]
    fn adopts_a_secret_written_before_a_lost_status_write() {
        let (spec, id) = (spec(), resolved());
        let status = issued_status(1, 50, RecoveryPhase::Issued);
        let secret = our_secret(2, Some(500), true);
        assert_eq!(
            plan(&observed(&spec, &status, Some(&secret), &id, 200)),
            Plan::Adopt(facts(500))
        );
        // ... and expires it right away when it already expired.
        assert_eq!(
            plan(&observed(&spec, &status, Some(&secret), &id, 600)),
            Plan::Expire(facts(500))
        );
        // Without a readable expiry it is cleared rather than kept forever.
        let no_expiry = our_secret(2, None, true);
        assert!(matches!(
            plan(&observed(&spec, &status, Some(&no_expiry), &id, 200)),
            Plan::Expire(_)
        ));
    }

    #[test]
    fn a_foreign_secret_is_neither_adopted_nor_overwritten() {
        let (spec, status, id) = (spec(), RecoveryRequestStatus::default(), resolved());
        let foreign = SecretState {
            ours: false,
            ..our_secret(2, Some(500), true)
        };
        match plan(&observed(&spec, &status, Some(&foreign), &id, 200)) {
            Plan::Blocked(b) => {
                assert_eq!(b.reason, REASON_SECRET_CONFLICT);
                assert_eq!(b.phase, RecoveryPhase::Pending);
                assert!(!b.stalled);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn expires_after_expires_at_and_then_is_done() {
        let (spec, id) = (spec(), resolved());
        let status = issued_status(2, 500, RecoveryPhase::Issued);
        let secret = our_secret(2, Some(500), true);
        assert_eq!(
            plan(&observed(&spec, &status, Some(&secret), &id, 499)),
            Plan::Wait(facts(500))
        );
        assert_eq!(
            plan(&observed(&spec, &status, Some(&secret), &id, 500)),
            Plan::Expire(facts(500))
        );
        let expired = issued_status(2, 500, RecoveryPhase::Expired);
        // Data still there (clear lost, or written back): clear again.
        assert_eq!(
            plan(&observed(&spec, &expired, Some(&secret), &id, 600)),
            Plan::Expire(facts(500))
        );
        let cleared = our_secret(2, Some(500), false);
        assert_eq!(
            plan(&observed(&spec, &expired, Some(&cleared), &id, 600)),
            Plan::Done
        );
        assert_eq!(plan(&observed(&spec, &expired, None, &id, 600)), Plan::Done);
    }

    #[test]
    fn status_without_expiry_takes_the_secrets() {
        let (spec, id) = (spec(), resolved());
        let mut status = issued_status(2, 500, RecoveryPhase::Issued);
        status.expires_at = None;
        let secret = our_secret(2, Some(700), true);
        assert_eq!(
            plan(&observed(&spec, &status, Some(&secret), &id, 600)),
            Plan::Wait(facts(700))
        );
        assert!(matches!(
            plan(&observed(&spec, &status, None, &id, 600)),
            Plan::Expire(_)
        ));
    }

    #[test]
    fn a_forbidden_request_is_stalled_and_looked_at_again() {
        let mut spec = spec();
        spec.identity_ref = None;
        spec.identity_id = Some("id-of-someone".into());
        let status = RecoveryRequestStatus::default();
        let id = IdentityResolution::Forbidden("label the Namespace".into());
        match plan(&observed(&spec, &status, None, &id, 100)) {
            Plan::Blocked(b) => {
                assert_eq!(b.reason, crate::tenancy::REASON_FORBIDDEN);
                assert_eq!(b.message, "label the Namespace");
                assert_eq!(b.phase, RecoveryPhase::Failed);
                assert!(b.stalled && b.retry, "a label may allow it later");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn waits_for_the_identity() {
        let (spec, status) = (spec(), RecoveryRequestStatus::default());
        let id = IdentityResolution::NotReady("Identity alice does not exist".into());
        match plan(&observed(&spec, &status, None, &id, 100)) {
            Plan::Blocked(b) => {
                assert_eq!(b.reason, REASON_IDENTITY_NOT_READY);
                assert_eq!(b.message, "Identity alice does not exist");
                assert_eq!(b.phase, RecoveryPhase::Pending);
                assert!(!b.stalled && b.retry);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn invalid_specs_fail_without_retry() {
        let (status, id) = (RecoveryRequestStatus::default(), resolved());
        let mut bad_duration = spec();
        bad_duration.expires_in = Some("10x".into());
        let mut return_to_with_code = spec();
        return_to_with_code.method = RecoveryMethod::Code;
        return_to_with_code.return_to = Some("http://x".into());
        let mut both = spec();
        both.identity_id = Some("x".into());
        for s in [&bad_duration, &return_to_with_code, &both] {
            match plan(&observed(s, &status, None, &id, 100)) {
                Plan::Blocked(b) => {
                    assert_eq!(b.reason, REASON_INVALID_SPEC);
                    assert_eq!(b.phase, RecoveryPhase::Failed);
                    assert!(b.stalled && !b.retry);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn terminal_failures_are_not_retried_but_method_disabled_is() {
        let (spec, id) = (spec(), resolved());
        let failed = |reason: &str, generation: i64| RecoveryRequestStatus {
            phase: Some(RecoveryPhase::Failed),
            observed_generation: Some(generation),
            conditions: conditions::merge(
                &[],
                &[Desired::new(
                    conditions::READY,
                    Status::False,
                    reason.to_string(),
                    "m",
                )],
                Some(generation),
                ts(1),
            ),
            ..RecoveryRequestStatus::default()
        };
        for reason in [REASON_INVALID_SPEC, REASON_IDENTITY_NOT_FOUND] {
            let status = failed(reason, 2);
            assert_eq!(
                plan(&observed(&spec, &status, None, &id, 100)),
                Plan::Done,
                "{reason}"
            );
            // A new generation is tried again.
            let status = failed(reason, 1);
            assert!(
                matches!(
                    plan(&observed(&spec, &status, None, &id, 100)),
                    Plan::Issue(_)
                ),
                "{reason}"
            );
        }
        let status = failed(REASON_METHOD_DISABLED, 2);
        assert!(matches!(
            plan(&observed(&spec, &status, None, &id, 100)),
            Plan::Issue(_)
        ));
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m1s1ms"), Ok(Duration::from_millis(61_001)));
        for bad in [
            "",
            "h",
            "1",
            "1d",
            "1.5h",
            "-1h",
            "1h ",
            "999ms",
            "0s",
            "99999999999999999999h",
            "3000000h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kratos_refusals_are_classified() {
        let disabled = kratos::Error::NotFound {
            message: "This endpoint was disabled by system administrator. Please check your url or contact the system administrator to enable it.".into(),
        };
        let b = refusal(RecoveryMethod::Code, None, "x", &disabled).unwrap();
        assert_eq!(b.reason, REASON_METHOD_DISABLED);
        assert!(
            b.message.contains("selfservice.methods.code.enabled"),
            "{}",
            b.message
        );
        assert_eq!(b.phase, RecoveryPhase::Failed);
        assert!(b.retry);
        let b = refusal(RecoveryMethod::Link, None, "x", &disabled).unwrap();
        assert!(
            b.message.contains("selfservice.methods.link.enabled"),
            "{}",
            b.message
        );

        let unknown_link = kratos::Error::Invalid {
            reason: "The requested identity id does not exist.".into(),
            pointer: None,
        };
        let b = refusal(RecoveryMethod::Link, None, "x", &unknown_link).unwrap();
        assert_eq!(
            (b.reason, b.phase, b.retry),
            (REASON_IDENTITY_NOT_FOUND, RecoveryPhase::Failed, false)
        );
        assert!(
            b.message
                .contains("The requested identity id does not exist.")
        );
        let unknown_code = kratos::Error::NotFound {
            message: "could not find identity".into(),
        };
        let b = refusal(RecoveryMethod::Code, None, "x", &unknown_code).unwrap();
        assert_eq!(b.reason, REASON_IDENTITY_NOT_FOUND);
        // Through an Identity, the Identity controller will put it back: wait.
        let b = refusal(RecoveryMethod::Code, Some("alice"), "x", &unknown_code).unwrap();
        assert_eq!(
            (b.reason, b.phase, b.retry),
            (REASON_IDENTITY_NOT_READY, RecoveryPhase::Pending, true)
        );

        let return_to = kratos::Error::Invalid {
            reason: "Requested return_to URL \"https://evil.example.com/x\" is not allowed.".into(),
            pointer: None,
        };
        let b = refusal(RecoveryMethod::Link, None, "x", &return_to).unwrap();
        assert_eq!(
            (b.reason, b.stalled, b.retry),
            (REASON_INVALID_SPEC, true, false)
        );
        assert!(b.message.contains("is not allowed"));

        assert!(
            refusal(
                RecoveryMethod::Link,
                None,
                "x",
                &kratos::Error::Unavailable {
                    message: "down".into()
                }
            )
            .is_none()
        );
        assert!(
            refusal(
                RecoveryMethod::Link,
                None,
                "x",
                &kratos::Error::RateLimited { retry_after: None }
            )
            .is_none()
        );
    }

    #[test]
    fn requeue_lands_after_expiry() {
        assert_eq!(until(ts(10), ts(7)), Duration::from_millis(3250));
        assert_eq!(until(ts(10), ts(12)), Duration::from_millis(250));
        assert_eq!(secret_name(&spec(), "req"), "req");
    }
}
