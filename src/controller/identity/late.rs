//! Creates that commit later than `--create-settle-time`.
//!
//! [`super::pending`] waits for a create whose outcome is unknown (its process was killed with
//! the request in flight, or the request failed on the client's side) for the settle time, and
//! then trusts a lookup that finds nothing. Kratos under heavy load can still carry such a
//! create out after that: the identity then carries the owner marker of an object that was
//! deleted meanwhile (an orphan), or of an object that got a second identity (a duplicate).
//!
//! So every object that may have such a create is kept as a suspect for ten settle times after
//! its window opened, and while any suspect's window has passed, each drift sweep lists the
//! owner markers of all Kratos identities once and removes the identities that carry a
//! suspect's uid but are not the one its object uses: all of them when the object is gone.
//! The uid is the object's own, assigned by the API server: no identity of another object, of
//! another cluster, or created by hand carries it.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How many settle times a suspect is watched for.
pub const WATCHED_SETTLE_TIMES: u32 = 10;

/// The objects whose create may still commit late, by uid, with their namespace and when
/// their window opened. One for the process: each namespace's sweep judges only its own.
#[derive(Debug)]
pub struct LateCreates {
    settle: Duration,
    suspects: Mutex<HashMap<String, (String, Instant)>>,
}

impl LateCreates {
    /// No suspects yet; `settle` is `--create-settle-time`.
    pub fn new(settle: Duration) -> Self {
        Self {
            settle,
            suspects: Mutex::default(),
        }
    }

    /// A create for `uid` (of `namespace`) may be under way that this process will not see
    /// answered (opens or renews its window now).
    pub fn suspect(&self, uid: &str, namespace: &str) {
        if let Ok(mut suspects) = self.suspects.lock() {
            suspects.insert(uid.to_string(), (namespace.to_string(), Instant::now()));
        }
    }

    /// The suspects of `namespace` (`None`: of every namespace) whose settle window has passed
    /// and which are still watched at `now`; the ones watched long enough are dropped. A sweep
    /// asks for the namespaces its own cache holds: an object missing from it is gone only if
    /// the cache would hold it.
    pub fn due(&self, now: Instant, namespace: Option<&str>) -> Vec<String> {
        let watched = self.settle.saturating_mul(WATCHED_SETTLE_TIMES);
        let Ok(mut suspects) = self.suspects.lock() else {
            return Vec::new();
        };
        suspects.retain(|_, (_, since)| now.saturating_duration_since(*since) <= watched);
        suspects
            .iter()
            .filter(|(_, (ns, since))| {
                namespace.is_none_or(|n| n == ns)
                    && now.saturating_duration_since(*since) >= self.settle
            })
            .map(|(uid, _)| uid.clone())
            .collect()
    }
}

/// Whether a late create can still leave something behind for a suspect whose object is
/// `object` (`None`: gone) (pure). A gone object can (an orphan), and so can a live one that
/// uses an identity and has no login identifier, or a spec changed since its first generation
/// (a duplicate). A live object whose spec never changed and which has a login identifier
/// cannot get a second identity: Kratos refuses a late create with the same identifiers. One
/// that uses no identity yet is still being created: its own reconcile takes back what a late
/// create made, and it is looked at again at the next sweep.
pub fn at_risk(object: Option<&crate::api::Identity>) -> bool {
    object.is_none_or(|o| {
        let status = o.status.as_ref();
        status.and_then(|s| s.identity_id.as_ref()).is_some()
            && (o.metadata.generation != Some(1)
                || status.and_then(|s| s.identifier.as_ref()).is_none())
    })
}

/// What the cluster says of a suspect's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object<'a> {
    /// Gone: its deletion is over.
    Gone,
    /// There (perhaps being deleted), using the Kratos identity `Some(id)`, or none yet.
    Uses(Option<&'a str>),
}

/// Which of the identities carrying a suspect's marker (`marked`) are left over (pure): all of
/// them once its object is gone; those other than the one it uses when that one is among them;
/// none while it uses none (its own reconcile takes one back) or one without its marker (its
/// reconcile reports that).
pub fn left_over(marked: &[String], object: Object<'_>) -> Vec<String> {
    match object {
        Object::Gone => marked.to_vec(),
        Object::Uses(Some(used)) if marked.iter().any(|m| m == used) => marked
            .iter()
            .filter(|m| m.as_str() != used)
            .cloned()
            .collect(),
        Object::Uses(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspect_is_due_after_its_settle_time_and_dropped_after_ten() {
        let late = LateCreates::new(Duration::from_secs(2));
        late.suspect("u1", "a");
        let now = Instant::now();
        assert!(
            late.due(now, None).is_empty(),
            "still inside its settle window"
        );
        let later = now + Duration::from_secs(3);
        assert_eq!(late.due(later, None), vec!["u1".to_string()]);
        assert_eq!(late.due(later, Some("a")), vec!["u1".to_string()]);
        assert!(
            late.due(later, Some("b")).is_empty(),
            "another namespace's sweep does not judge it"
        );
        assert_eq!(
            late.due(now + Duration::from_secs(19), None),
            vec!["u1".to_string()]
        );
        assert!(late.due(now + Duration::from_secs(21), None).is_empty());
        assert!(late.due(now, None).is_empty(), "dropped for good");
    }

    #[test]
    fn a_live_object_with_identifiers_and_its_first_spec_is_not_at_risk() {
        let object = |generation: i64, identifier: Option<&str>| -> crate::api::Identity {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
                "metadata": { "name": "a", "namespace": "ns", "uid": "u1", "generation": generation },
                "spec": { "schemaId": "customer", "traits": {} },
                "status": { "identifier": identifier, "identityId": "k1" }
            }))
            .unwrap()
        };
        assert!(!at_risk(Some(&object(1, Some("a@example.com")))));
        let mut creating = object(1, None);
        creating.status = None;
        assert!(!at_risk(Some(&creating)), "still being created");
        assert!(
            at_risk(Some(&object(2, Some("a@example.com")))),
            "spec changed"
        );
        assert!(at_risk(Some(&object(1, None))), "no identifier");
        assert!(at_risk(None), "gone");
    }

    #[test]
    fn only_identities_the_object_does_not_use_are_left_over() {
        let marked = vec!["k1".to_string(), "k2".to_string()];
        assert_eq!(left_over(&marked, Object::Gone), marked);
        assert_eq!(
            left_over(&marked, Object::Uses(Some("k2"))),
            vec!["k1".to_string()]
        );
        assert!(left_over(&marked, Object::Uses(None)).is_empty());
        assert!(
            left_over(&marked, Object::Uses(Some("k9"))).is_empty(),
            "it uses one the marker does not name: nothing is sure"
        );
        assert!(left_over(&marked[..1], Object::Uses(Some("k1"))).is_empty());
    }
}
