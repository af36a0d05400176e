//! kstatus-compatible conditions: `Ready` always, `Reconciling` while work is under way and
//! `Stalled` when the operator cannot make progress without a change to the spec or to
//! something it references. Argo CD and Flux read these.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Condition type: the object matches its desired state.
pub const READY: &str = "Ready";
/// Condition type: the operator is working towards the desired state.
pub const RECONCILING: &str = "Reconciling";
/// Condition type: the operator cannot progress until something changes.
pub const STALLED: &str = "Stalled";

/// The status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `"True"`.
    True,
    /// `"False"`.
    False,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
        }
    }
}

/// A condition to set, without the bookkeeping fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Condition type.
    pub type_: &'static str,
    /// Its status.
    pub status: Status,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message (never a secret).
    pub message: String,
}

impl Desired {
    /// Builds a desired condition.
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The conditions of an object that is not Ready: `Ready=False`, plus `Stalled=True` when only a
/// change can help, or `Reconciling=True` while the operator keeps trying.
pub fn not_ready(reason: &str, message: &str, stalled: bool) -> Vec<Desired> {
    let second = if stalled { STALLED } else { RECONCILING };
    vec![
        Desired::new(READY, Status::False, reason, message),
        Desired::new(second, Status::True, reason, message),
    ]
}

/// Merges `desired` into `existing`: conditions of the listed types are replaced (keeping
/// `lastTransitionTime` when the status did not change), the kstatus types not listed are removed,
/// and other condition types are kept as they are.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = Vec::new();
    for d in desired {
        let previous = existing.iter().find(|c| c.type_ == d.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == d.status.as_str() => p.last_transition_time.clone(),
            _ => Time(now),
        };
        out.push(Condition {
            type_: d.type_.to_string(),
            status: d.status.as_str().to_string(),
            reason: d.reason.clone(),
            message: d.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    for c in existing {
        let managed = [READY, RECONCILING, STALLED].contains(&c.type_.as_str());
        if !managed && !out.iter().any(|o| o.type_ == c.type_) {
            out.push(c.clone());
        }
    }
    out
}

/// A status that carries kstatus conditions: every kind's status, so that one comparison decides
/// for all of them whether a status is news ([`same_status`]).
pub trait WithConditions: Clone + PartialEq {
    /// Its conditions.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

/// Whether two statuses say the same thing, so that an unchanged status is not written again.
/// The comparison is the status type's derived equality, so a field added to a status is
/// compared without anyone remembering to; only what is not news is left out: the conditions'
/// order and their `lastTransitionTime`.
pub fn same_status<S: WithConditions>(a: &S, b: &S) -> bool {
    fn normalized<S: WithConditions>(status: &S) -> S {
        let mut status = status.clone();
        let conditions = status.conditions_mut();
        for c in conditions.iter_mut() {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
        status
    }
    normalized(a) == normalized(b)
}

/// The `Ready` condition of a list, if any.
pub fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

/// Whether the `Ready` condition is `True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    ready(conditions).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn keeps_transition_time_when_status_unchanged() {
        let first = merge(
            &[],
            &[Desired::new(READY, Status::False, "Pending", "a")],
            Some(1),
            ts(10),
        );
        let second = merge(
            &first,
            &[Desired::new(READY, Status::False, "Other", "b")],
            Some(2),
            ts(20),
        );
        assert_eq!(second[0].last_transition_time, Time(ts(10)));
        assert_eq!(second[0].reason, "Other");
        assert_eq!(second[0].observed_generation, Some(2));
        let third = merge(
            &second,
            &[Desired::new(READY, Status::True, "Synced", "c")],
            Some(2),
            ts(30),
        );
        assert_eq!(third[0].last_transition_time, Time(ts(30)));
    }

    #[test]
    fn drops_kstatus_conditions_not_desired_and_keeps_foreign_ones() {
        let existing = merge(
            &[],
            &[
                Desired::new(READY, Status::False, "Pending", ""),
                Desired::new(STALLED, Status::True, "InvalidSpec", ""),
                Desired::new("Custom", Status::True, "X", ""),
            ],
            Some(1),
            ts(1),
        );
        let next = merge(
            &existing,
            &[Desired::new(READY, Status::True, "Synced", "")],
            Some(1),
            ts(2),
        );
        let types: Vec<_> = next.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, vec![READY, "Custom"]);
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Example {
        conditions: Vec<Condition>,
        digest: Option<String>,
    }

    impl WithConditions for Example {
        fn conditions_mut(&mut self) -> &mut Vec<Condition> {
            &mut self.conditions
        }
    }

    #[test]
    fn same_status_ignores_transition_times_and_order_but_no_field() {
        let ready = |generation, at| {
            merge(
                &[],
                &[
                    Desired::new(READY, Status::True, "Synced", "m"),
                    Desired::new(RECONCILING, Status::False, "Synced", "m"),
                ],
                Some(generation),
                ts(at),
            )
        };
        let example = |conditions, digest: &str| Example {
            conditions,
            digest: Some(digest.into()),
        };
        let a = example(ready(1, 1), "d1");
        // Only the transition times differ: not news.
        assert!(same_status(&a, &example(ready(1, 2), "d1")));
        // The same conditions in another order: not news.
        let mut reversed = ready(1, 1);
        reversed.reverse();
        assert!(same_status(&a, &example(reversed, "d1")));
        // Another generation observed, or any other field: news.
        assert!(!same_status(&a, &example(ready(2, 1), "d1")));
        assert!(!same_status(&a, &example(ready(1, 1), "d2")));
        // A condition more or less: news.
        let mut fewer = ready(1, 1);
        fewer.pop();
        assert!(!same_status(&a, &example(fewer, "d1")));
        assert!(is_ready(&a.conditions));
    }
}
