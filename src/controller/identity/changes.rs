//! Which watched changes of an Identity reconcile it: what [`lifecycle_changed`] hashes, and
//! the first sight of an object unless its status is trusted ([`super::trust`]).

use std::collections::HashMap;

use kube::{ResourceExt, runtime::reflector::ObjectRef};

use super::trust::synced_as_recorded;
use crate::{
    api::{FINALIZER, identity::Identity},
    controller::finalizer,
};

/// What a change to an Identity must alter to be reconciled: generation (spec), deletion, uid (a
/// re-created object), and the loss of the finalizer by a synced object. Not the finalizer's
/// arrival: the reconcile that adds it goes on to apply (see [`finalizer`]), so the event of its
/// own finalizer patch must not reconcile the object a second time (before the status it wrote
/// is in the cache, that second pass would try to create the identity again). But a finalizer
/// removed by hand from an object with an identity is put back at once: without it, deleting
/// the object would leave its Kratos identity behind. Not the status either: the operator
/// writes it.
pub fn lifecycle_changed(obj: &Identity) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.metadata.uid.hash(&mut h);
    obj.metadata.generation.hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    finalizer_lost(obj).hash(&mut h);
    Some(h.finish())
}

/// Whether a live object that has a Kratos identity lacks its finalizer (someone removed it).
fn finalizer_lost(obj: &Identity) -> bool {
    obj.metadata.deletion_timestamp.is_none()
        && obj.status.as_ref().is_some_and(|s| s.identity_id.is_some())
        && !finalizer::has(obj, FINALIZER)
}

/// Which watched changes of Identities reconcile them: a change of what
/// [`lifecycle_changed`] hashes, or an object seen for the first time by this process unless
/// it is synced as recorded (and `trust` is on: only drift sweeps look at trusted objects
/// again).
#[derive(Debug)]
pub struct Changes {
    trust: bool,
    seen: HashMap<ObjectRef<Identity>, u64>,
}

impl Changes {
    /// Trusting synced statuses on first sight, or not.
    pub fn new(trust: bool) -> Self {
        Self {
            trust,
            seen: HashMap::new(),
        }
    }

    /// Whether this applied (or listed) object is reconciled.
    pub fn admit(&mut self, obj: &Identity) -> bool {
        let hash = lifecycle_changed(obj).unwrap_or_default();
        match self.seen.insert(ObjectRef::from_obj(obj), hash) {
            Some(before) => before != hash,
            None => !(self.trust && synced_as_recorded(obj)),
        }
    }

    /// Forgets a deleted object.
    pub fn forget(&mut self, obj: &Identity) {
        let key = ObjectRef::from_obj(obj);
        // A delete of an older object of the same name must not forget a newer one.
        if obj.uid().is_some() {
            self.seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(finalizers: &[&str], identity_id: Option<&str>) -> Identity {
        let mut value = json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": "a", "namespace": "ns", "uid": "u1", "generation": 1,
                          "finalizers": finalizers },
            "spec": { "schemaId": "customer", "traits": {} }
        });
        if let Some(id) = identity_id {
            value["status"] = json!({ "identityId": id, "observedGeneration": 1 });
        }
        serde_json::from_value(value).expect("identity")
    }

    #[test]
    fn the_operator_s_own_finalizer_and_status_writes_do_not_reconcile_again() {
        let new = lifecycle_changed(&object(&[], None));
        assert_eq!(new, lifecycle_changed(&object(&[FINALIZER], None)));
        assert_eq!(new, lifecycle_changed(&object(&[FINALIZER], Some("id-1"))));
    }

    #[test]
    fn a_finalizer_removed_from_a_synced_object_reconciles_it() {
        let synced = lifecycle_changed(&object(&[FINALIZER], Some("id-1")));
        assert_ne!(synced, lifecycle_changed(&object(&[], Some("id-1"))));
        assert_ne!(
            synced,
            lifecycle_changed(&object(&["someone.else/keep"], Some("id-1")))
        );
    }

    fn synced_object(extra: serde_json::Value) -> Identity {
        let mut v = json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": "a", "namespace": "ns", "uid": "u1", "generation": 2,
                          "finalizers": [FINALIZER] },
            "spec": { "schemaId": "customer", "traits": {} },
            "status": { "identityId": "k1", "observedGeneration": 2,
                        "conditions": [{ "type": "Ready", "status": "True",
                            "reason": "Synced", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" }] }
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).expect("identity")
    }

    #[test]
    fn first_sight_of_a_synced_object_is_trusted_and_later_changes_are_not() {
        let synced = synced_object(json!({}));
        let mut trusting = Changes::new(true);
        assert!(!trusting.admit(&synced), "first sight, synced");
        assert!(!trusting.admit(&synced), "relisted, unchanged");
        let edited = synced_object(json!({ "metadata": { "generation": 3 } }));
        assert!(trusting.admit(&edited), "a spec change");
        assert!(
            trusting.admit(&synced_object(
                json!({ "metadata": { "name": "b" }, "status": { "conditions": [] } })
            )),
            "first sight, not synced"
        );
        trusting.forget(&edited);
        assert!(!trusting.admit(&synced), "seen anew after its deletion");
        let mut wary = Changes::new(false);
        assert!(
            wary.admit(&synced),
            "without sweeps every object is looked at"
        );
        assert!(!wary.admit(&synced));
    }
}
