//! Decoding `Identity` objects so that no single object can stop the operator.
//!
//! Traits and metadata are free JSON, and the API server stores them however deeply they nest;
//! its managedFields mirror that nesting a few levels deeper. serde_json refuses documents
//! nested deeper than 128 levels, so one such object used to make every list of Identities fail
//! to decode: the watch retried forever and no namespace was served. [`GuardedIdentity`] decodes
//! each object on its own, without managedFields (which the operator never reads), and turns a
//! spec it cannot read into a skeleton that keeps the metadata, the status and the deletion
//! policy, with [`IdentitySpec::undecodable`] saying why. The controller then reports
//! `InvalidSpec` for that object alone and touches nothing in Kratos for it, while every other
//! object goes on converging.
//!
//! Capturing an object as raw text first is what makes this work: serde_json skips over a raw
//! value without recursing, so the nesting of one object never counts against the list.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, core::NamespaceResourceScope};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use serde_json::value::RawValue;

use super::identity::{DeletionPolicy, Identity, IdentitySpec, IdentityStatus};

/// An [`Identity`] as read from the API server by the operator: decoding never fails because of
/// what a spec holds (see the module docs). Use `Api<GuardedIdentity>` wherever the operator
/// reads Identities, and `.0` for the object.
#[derive(Debug, Clone)]
pub struct GuardedIdentity(pub Identity);

impl Resource for GuardedIdentity {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Identity::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Identity::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Identity::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Identity::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl Serialize for GuardedIdentity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for GuardedIdentity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        decode(raw.get()).map(Self).map_err(D::Error::custom)
    }
}

/// The top level of an object, each part kept as raw text.
#[derive(Deserialize)]
struct Parts<'a> {
    #[serde(borrow)]
    metadata: BTreeMap<String, &'a RawValue>,
    #[serde(borrow, default)]
    spec: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<&'a RawValue>,
}

/// What a skeleton keeps of a spec it cannot read: what deleting the object needs.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SpecSkeleton {
    #[serde(default)]
    deletion_policy: Option<DeletionPolicy>,
}

/// The annotation in which client-side `kubectl apply` keeps the object it last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Decodes one Identity object (JSON text). Fails only when its metadata cannot be read; a spec
/// that cannot be read gives a skeleton (see [`IdentitySpec::undecodable`]).
pub fn decode(text: &str) -> Result<Identity, serde_json::Error> {
    let mut parts: Parts<'_> = serde_json::from_str(text)?;
    // The operator never reads managedFields; they mirror the spec's nesting and are most of an
    // object's bytes.
    parts.metadata.remove("managedFields");
    let mut metadata: ObjectMeta = serde_json::from_str(&serde_json::to_string(&parts.metadata)?)?;
    // Nor the copy of the whole object `kubectl apply` (client-side) keeps in an annotation: as
    // large again as the spec. The operator writes objects only by patch (finalizers) and by
    // apply to the status, so the annotation stays on the object.
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            metadata.annotations = None;
        }
    }
    // The status has no free JSON: the API server's schema bounds it. One it cannot read is
    // treated as absent (the operator writes a new one).
    let status = parts
        .status
        .and_then(|raw| serde_json::from_str::<IdentityStatus>(raw.get()).ok());
    let spec = match parts.spec {
        Some(raw) => serde_json::from_str::<IdentitySpec>(raw.get())
            .unwrap_or_else(|e| skeleton(raw.get(), &e.to_string())),
        None => skeleton("{}", "the object has no spec"),
    };
    Ok(Identity {
        metadata,
        spec,
        status,
    })
}

fn skeleton(raw: &str, error: &str) -> IdentitySpec {
    let kept: SpecSkeleton = serde_json::from_str(raw).unwrap_or_default();
    let why = if error.contains("recursion limit") {
        format!(
            "the spec nests too deeply to be read (traits and metadata may nest at most {} levels)",
            super::identity::MAX_NESTING
        )
    } else {
        let short: String = error.chars().take(200).collect();
        format!("the spec cannot be read: {short}")
    };
    IdentitySpec {
        deletion_policy: kept.deletion_policy,
        undecodable: Some(why),
        ..IdentitySpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> String {
        let mut s = String::from("\"leaf\"");
        for _ in 0..levels {
            s = format!("{{\"k\":{s}}}");
        }
        s
    }

    fn object(name: &str, traits: &str, managed: &str) -> String {
        format!(
            r#"{{"apiVersion":"kratos-operator.dev/v1alpha1","kind":"Identity",
            "metadata":{{"name":"{name}","namespace":"ns","uid":"u-{name}","resourceVersion":"7",
              "finalizers":["kratos-operator.dev/cleanup"],
              "managedFields":[{{"manager":"kubectl","operation":"Apply","fieldsV1":{managed}}}]}},
            "spec":{{"schemaId":"customer","deletionPolicy":"Orphan","traits":{traits}}},
            "status":{{"identityId":"k-{name}","observedGeneration":1}}}}"#
        )
    }

    #[test]
    fn the_last_applied_copy_is_dropped_and_other_annotations_kept() {
        let with = |annotations: &str| {
            format!(
                r#"{{"metadata":{{"name":"a","annotations":{annotations}}},"spec":{{"schemaId":"customer","traits":{{}}}}}}"#
            )
        };
        let copy = r#""{\"kind\":\"Identity\",\"spec\":{\"traits\":{}}}""#;
        let both = decode(&with(&format!(r#"{{"{LAST_APPLIED}":{copy},"team":"a"}}"#))).unwrap();
        assert_eq!(
            both.metadata.annotations,
            Some(BTreeMap::from([("team".to_string(), "a".to_string())]))
        );
        let only = decode(&with(&format!(r#"{{"{LAST_APPLIED}":{copy}}}"#))).unwrap();
        assert_eq!(only.metadata.annotations, None);
    }

    #[test]
    fn a_list_with_one_deep_object_decodes_every_object() {
        let deep = nested(400);
        let good = object("good", r#"{"email":"a@example.com"}"#, "{}");
        let bad = object(
            "bad",
            &format!(r#"{{"x":{deep}}}"#),
            &format!(r#"{{"f:spec":{deep}}}"#),
        );
        let list = format!(r#"{{"metadata":{{}},"items":[{good},{bad}]}}"#);
        // What kube's typed list does today with the plain type: the whole list fails.
        assert!(serde_json::from_str::<kube::core::ObjectList<Identity>>(&list).is_err());
        let decoded: kube::core::ObjectList<GuardedIdentity> = serde_json::from_str(&list).unwrap();
        let (good, bad) = (&decoded.items[0].0, &decoded.items[1].0);
        assert_eq!(good.spec.undecodable, None);
        assert_eq!(good.spec.traits, json!({"email": "a@example.com"}));
        assert!(
            good.metadata.managed_fields.is_none(),
            "managedFields are dropped"
        );
        let why = bad.spec.undecodable.as_deref().unwrap();
        assert!(why.contains("nests too deeply"), "{why}");
        assert_eq!(bad.metadata.name.as_deref(), Some("bad"));
        assert_eq!(bad.metadata.uid.as_deref(), Some("u-bad"));
        assert_eq!(bad.metadata.finalizers.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            bad.spec.deletion_policy,
            Some(DeletionPolicy::Orphan),
            "kept for the finalizer"
        );
        assert_eq!(
            bad.status.as_ref().and_then(|s| s.identity_id.as_deref()),
            Some("k-bad")
        );
    }

    #[test]
    fn watch_events_and_values_decode_too() {
        let ev = format!(
            r#"{{"type":"MODIFIED","object":{}}}"#,
            object("bad", &format!(r#"{{"x":{}}}"#, nested(200)), "{}")
        );
        let decoded: kube::core::WatchEvent<GuardedIdentity> = serde_json::from_str(&ev).unwrap();
        let kube::core::WatchEvent::Modified(g) = decoded else {
            panic!("not a modification")
        };
        assert!(g.0.spec.undecodable.is_some());
        // From a serde_json::Value (as tests and kube's own conversions do).
        let v: serde_json::Value =
            serde_json::from_str(&object("v", r#"{"email":"a@example.com"}"#, "{}")).unwrap();
        let g: GuardedIdentity = serde_json::from_value(v).unwrap();
        assert_eq!(g.0.metadata.name.as_deref(), Some("v"));
        assert!(g.0.spec.undecodable.is_none());
        // A spec of the wrong shape is a skeleton too, with serde's reason.
        let wrong = object("w", r#""not an object""#, "{}")
            .replace(r#""schemaId":"customer""#, r#""schemaId":{"no":"string"}"#);
        let g: GuardedIdentity = serde_json::from_str(&wrong).unwrap();
        assert!(
            g.0.spec
                .undecodable
                .as_deref()
                .is_some_and(|w| w.contains("cannot be read")),
            "{:?}",
            g.0.spec.undecodable
        );
    }
}
