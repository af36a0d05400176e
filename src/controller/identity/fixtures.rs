//! Objects the Identity controller's unit tests share: a spec, a Kratos identity that carries
//! the marker of the object `ns/a` (uid [`UID`]).

use serde_json::{Value, json};

use crate::{
    api::{OWNER_MARKER, UID_MARKER, identity::IdentitySpec},
    kratos::Identity,
};

/// The uid of the object the fixtures belong to.
pub const UID: &str = "uid-1";

/// A spec from JSON.
pub fn spec(v: Value) -> IdentitySpec {
    serde_json::from_value(v).expect("a spec")
}

/// A spec with schema `customer` and traits `{email: a@example.com, age: 3}`.
pub fn base_spec() -> IdentitySpec {
    spec(json!({"schemaId": "customer", "traits": {"email": "a@example.com", "age": 3}}))
}

/// A Kratos identity `id-1` matching [`base_spec`] and marked as `ns/a`'s, with the fields of
/// `v` over it. Without credentials, as a list returns it.
pub fn identity(v: Value) -> Identity {
    let mut base = json!({
        "id": "id-1", "schema_id": "customer", "schema_url": "", "state": "active",
        "traits": {"email": "a@example.com", "age": 3.0},
        "metadata_public": null,
        "metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: UID},
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
    });
    if let (Value::Object(b), Value::Object(o)) = (&mut base, v) {
        b.extend(o);
    }
    serde_json::from_value(base).expect("an identity")
}
