//! What a restarted (or newly elected) operator believes without asking Kratos.
//!
//! An Identity whose status says `Synced` for its current generation was in line with Kratos
//! when the operator last looked. A new process does not reconcile it when its watch first
//! lists it (a read of Kratos per object, twice with its sessions): the first drift sweep,
//! which runs as soon as the caches are synced, lists those identities 500 per request and
//! reconciles only the ones that differ. What a sweep cannot see in Kratos is checked against
//! the cluster instead: the password Secret's version (policy `Sync`) and the
//! IdentitySchemaRef's digest, so a Secret or a schema changed while the operator was down is
//! still noticed.
//!
//! Trust never leads to a write: the status is untrusted input (a tenant may write it), and
//! the sweep compares the Kratos identity, owner marker included, before anything is done.

use crate::{
    api::{
        FINALIZER, IdentitySchemaRef,
        conditions::is_ready,
        identity::{Identity, PasswordPolicy},
    },
    controller::finalizer,
};

/// Whether the object's status says it was synced for its current generation (pure): Ready,
/// current, with a Kratos id and its finalizer, not being deleted, its spec readable.
pub fn synced_as_recorded(obj: &Identity) -> bool {
    let Some(status) = obj.status.as_ref() else {
        return false;
    };
    obj.metadata.deletion_timestamp.is_none()
        && obj.spec.undecodable.is_none()
        && finalizer::has(obj, FINALIZER)
        && status.identity_id.is_some()
        && status.observed_generation.is_some()
        && status.observed_generation == obj.metadata.generation
        && is_ready(&status.conditions)
}

/// `<uid>/<resourceVersion>`: how a password import records the Secret it read.
pub fn secret_version(uid: &str, resource_version: &str) -> String {
    format!("{uid}/{resource_version}")
}

/// Whether the password Secret at `version` (see [`secret_version`]; `None`: it is gone) asks
/// for a reconcile of `obj` (pure). An object not synced as recorded always is. A synced one
/// only re-imports under policy `Sync`, and only a Secret other than the one it imported.
pub fn secret_matters(obj: &Identity, version: Option<&str>) -> bool {
    if !synced_as_recorded(obj) {
        return true;
    }
    let password = obj
        .spec
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref());
    let Some(password) = password else {
        return false;
    };
    if password.policy != Some(PasswordPolicy::Sync) {
        return false;
    }
    let imported = obj
        .status
        .as_ref()
        .and_then(|s| s.credentials.as_ref())
        .and_then(|c| c.password.as_ref())
        .map(|p| p.secret_version.as_str());
    version.is_none() || imported != version
}

/// Whether the IdentitySchemaRef `schema_ref` asks for a reconcile of `obj`, which names it
/// (pure): an object not synced as recorded always does; a synced one when the ref reports a
/// digest other than the one its traits were validated against.
pub fn schema_matters(obj: &Identity, schema_ref: &IdentitySchemaRef) -> bool {
    if !synced_as_recorded(obj) {
        return true;
    }
    let Some(digest) = schema_ref.status.as_ref().and_then(|s| s.digest.as_ref()) else {
        // Not resolved (yet): nothing to compare; its resolution is a change of its own.
        return false;
    };
    obj.status.as_ref().and_then(|s| s.schema_digest.as_ref()) != Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(ready: bool, observed: i64, extra: serde_json::Value) -> Identity {
        let mut v = json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": "a", "namespace": "ns", "uid": "u1", "generation": 2,
                          "finalizers": [FINALIZER] },
            "spec": { "schemaRef": { "name": "customer" }, "traits": {},
                      "credentials": { "password": { "secretRef": { "name": "pw", "key": "p" },
                                                     "policy": "Sync" } } },
            "status": { "identityId": "k1", "observedGeneration": observed,
                        "schemaDigest": "sha256:aa",
                        "credentials": { "password": { "secretVersion": "s1/7" } },
                        "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" },
                            "reason": "Synced", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" }] }
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).expect("identity")
    }

    fn schema_ref(digest: Option<&str>) -> IdentitySchemaRef {
        serde_json::from_value(json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef",
            "metadata": { "name": "customer", "namespace": "ns" },
            "spec": { "schemaId": "customer" },
            "status": { "digest": digest }
        }))
        .expect("schema ref")
    }

    #[test]
    fn only_a_ready_current_finalized_object_with_an_id_is_trusted() {
        assert!(synced_as_recorded(&object(true, 2, json!({}))));
        assert!(!synced_as_recorded(&object(false, 2, json!({}))));
        assert!(
            !synced_as_recorded(&object(true, 1, json!({}))),
            "spec changed since"
        );
        let cases = [
            json!({ "metadata": { "finalizers": [] } }),
            json!({ "metadata": { "deletionTimestamp": "2026-01-01T00:00:00Z" } }),
            json!({ "status": { "identityId": null } }),
            json!({ "status": null }),
        ];
        for extra in cases {
            assert!(
                !synced_as_recorded(&object(true, 2, extra.clone())),
                "{extra}"
            );
        }
    }

    #[test]
    fn a_trusted_object_is_reconciled_for_a_new_secret_only_under_policy_sync() {
        let o = object(true, 2, json!({}));
        assert!(!secret_matters(&o, Some("s1/7")), "the imported one");
        assert!(secret_matters(&o, Some("s1/8")), "changed");
        assert!(secret_matters(&o, Some("s2/1")), "re-created");
        assert!(secret_matters(&o, None), "deleted");
        let set_once = object(
            true,
            2,
            json!({ "spec": { "credentials": { "password": { "policy": "SetOnce" } } } }),
        );
        assert!(!secret_matters(&set_once, Some("s1/8")));
        assert!(
            secret_matters(&object(false, 2, json!({})), Some("s1/7")),
            "not synced: always"
        );
    }

    #[test]
    fn a_trusted_object_is_reconciled_when_its_schema_s_digest_differs() {
        let o = object(true, 2, json!({}));
        assert!(!schema_matters(&o, &schema_ref(Some("sha256:aa"))));
        assert!(schema_matters(&o, &schema_ref(Some("sha256:bb"))));
        assert!(!schema_matters(&o, &schema_ref(None)), "not resolved yet");
        let unrecorded = object(true, 2, json!({ "status": { "schemaDigest": null } }));
        assert!(
            schema_matters(&unrecorded, &schema_ref(Some("sha256:aa"))),
            "recorded by an older operator"
        );
        assert!(schema_matters(
            &object(false, 2, json!({})),
            &schema_ref(Some("sha256:aa"))
        ));
    }
}
