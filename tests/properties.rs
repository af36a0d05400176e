//! Property tests (proptest) of the pure functions the controllers decide with, and of the
//! parsing of what Kratos answers: JSON comparison, the Identity plan (differences, create and
//! update bodies, address verification, take-back/adoption, sessions), the drift sweep's
//! `in_sync`, and the parsing of identities, sessions, error reasons, rate-limit headers, `Link`
//! headers, versions and durations, which must never panic whatever Kratos (or anything between
//! it and the operator) sends.
//!
//! Each property runs 512 cases by default (256 for the slower ones); `PROPTEST_CASES=100000
//! cargo test --test properties` runs a long campaign.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use jiff::Timestamp;
use kratos_operator::{
    api::{
        Identity as IdentityObject, OWNER_MARKER, UID_MARKER,
        identity::{AdoptionPolicy, IdentitySpec, IdentityState, PasswordPolicy},
    },
    controller::{
        identity::{
            desired::{
                self, Desired, PasswordInput, create_body, differences, plan_sessions, update_body,
                verify_address_ops,
            },
            plan::{Existing, Owner, resolve_existing},
            sweep,
        },
        json,
    },
    kratos::{
        self, Identity, IdentityState as KratosState, ServerVersion, Session, UpdateIdentityBody,
    },
    schema::CompiledSchema,
};
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{Map, Value, json};

const UID: &str = "0b7c3c52-7a40-4d8e-9a53-000000000001";
const OWNER: &str = "team-a/alice";

/// `default` cases, or `PROPTEST_CASES` when set (for long runs).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators

/// Finite JSON numbers of every kind serde_json keeps apart: i64, u64 and f64.
fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-100i64..100).prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(Value::from),
        Just(json!(0.0)),
        Just(json!(-0.0)),
    ]
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,6}",
        "[a-zA-Z0-9_./~-]{0,10}",
        any::<String>(),
        Just(OWNER_MARKER.to_string()),
        Just(UID_MARKER.to_string()),
    ]
}

/// Any JSON value, up to 4 levels deep.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        "[a-zA-Z0-9@._ -]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object (traits and metadata are objects in the CRD).
fn arb_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(arb_key(), arb_json(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// How Kratos hands a value back: Go decodes JSON numbers into float64, so integers come back as
/// floats (exactly while they fit 53 bits), and object keys in another order.
fn as_kratos_returns(v: &Value) -> Value {
    const EXACT: u64 = 1 << 53;
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= EXACT) {
                Value::from(i as f64)
            } else if let Some(u) = n.as_u64().filter(|u| *u <= EXACT) {
                Value::from(u as f64)
            } else {
                v.clone()
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(as_kratos_returns).collect()),
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o.iter().rev() {
                out.insert(k.clone(), as_kratos_returns(v));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// The same value as JSON text with every object's keys written in reverse order, parsed again.
fn reordered_text(v: &Value) -> Value {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(o) => {
                out.push('{');
                for (i, (k, v)) in o.iter().rev().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&serde_json::to_string(other).unwrap()),
        }
    }
    let mut text = String::new();
    write(v, &mut text);
    serde_json::from_str(&text).unwrap()
}

fn arb_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop_oneof!["github", "google", "[a-z:]{1,6}"],
            "[0-9a-z:]{1,6}",
        ),
        0..4,
    )
}

fn arb_password() -> impl Strategy<Value = Option<PasswordInput>> {
    prop::option::of(
        (
            "pw-[a-z0-9]{16}",
            any::<bool>(),
            "[a-f0-9]{4}/[0-9]{1,4}",
            prop_oneof![Just(PasswordPolicy::SetOnce), Just(PasswordPolicy::Sync)],
        )
            .prop_map(|(value, hashed, version, policy)| PasswordInput {
                value: SecretString::from(value),
                hashed,
                version,
                policy,
            }),
    )
}

/// A spec as users write it (any traits and metadata, OIDC links, verified addresses, sessions).
fn arb_spec() -> impl Strategy<Value = IdentitySpec> {
    (
        arb_object(),
        any::<bool>(),
        prop::option::of(arb_object()),
        prop::option::of(prop_oneof![arb_object(), arb_json()]),
        arb_pairs(),
        prop::collection::vec("[a-zA-Z@.]{1,8}", 0..3),
        (any::<bool>(), prop::option::of(0i64..2_000_000_000)),
    )
        .prop_map(
            |(traits, inactive, public, admin, oidc, addresses, (revoke, before))| {
                let providers: Vec<Value> = oidc
                    .iter()
                    .map(|(p, s)| json!({ "provider": p, "subject": s }))
                    .collect();
                let mut spec = json!({
                    "schemaId": "customer",
                    "traits": traits,
                    "state": if inactive { "inactive" } else { "active" },
                    "credentials": { "oidc": { "providers": providers } },
                    "verifiedAddresses": addresses.iter().map(|a| json!({ "value": a, "via": "email" })).collect::<Vec<_>>(),
                    "sessions": { "revokeOnDeactivate": revoke },
                });
                if let Some(p) = public {
                    spec["metadataPublic"] = p;
                }
                if let Some(a) = admin {
                    spec["metadataAdmin"] = a;
                }
                if let Some(secs) = before {
                    spec["sessions"]["revokeBefore"] =
                        json!(Timestamp::from_second(secs).unwrap().to_string());
                }
                serde_json::from_value(spec).unwrap()
            },
        )
}

fn arb_desired() -> impl Strategy<Value = Desired> {
    (
        arb_spec(),
        prop_oneof!["customer", "employee"],
        arb_password(),
    )
        .prop_map(|(spec, schema, password)| desired::desired(&spec, schema, OWNER, UID, password))
}

fn kratos_state(s: IdentityState) -> &'static str {
    s.as_str()
}

/// The identity Kratos would hold for `d`, as Kratos returns it.
fn identity_from(d: &Desired, extra_oidc: &[String]) -> Identity {
    let mut oidc: Vec<String> = d.oidc.iter().map(|(p, s)| format!("{p}:{s}")).collect();
    oidc.extend(extra_oidc.iter().cloned());
    serde_json::from_value(json!({
        "id": "7f3c0000-0000-4000-8000-000000000001",
        "schema_id": d.schema_id,
        "schema_url": "",
        "state": kratos_state(d.state),
        "traits": as_kratos_returns(&d.traits),
        "metadata_public": d.metadata_public.as_ref().map(as_kratos_returns),
        "metadata_admin": as_kratos_returns(&d.metadata_admin),
        "credentials": { "oidc": { "type": "oidc", "identifiers": oidc } },
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }))
    .unwrap()
}

/// Any identity Kratos might hold (another schema, state, traits, metadata, OIDC links).
fn arb_identity() -> impl Strategy<Value = Identity> {
    (
        prop_oneof!["customer", "employee", ""],
        any::<bool>(),
        arb_object(),
        prop::option::of(arb_json()),
        prop::option::of(arb_json()),
        arb_pairs(),
    )
        .prop_map(|(schema, inactive, traits, public, admin, oidc)| {
            let ids: Vec<String> = oidc.iter().map(|(p, s)| format!("{p}:{s}")).collect();
            serde_json::from_value(json!({
                "id": "7f3c0000-0000-4000-8000-000000000002",
                "schema_id": schema,
                "state": if inactive { "inactive" } else { "active" },
                "traits": traits,
                "metadata_public": public,
                "metadata_admin": admin,
                "credentials": { "oidc": { "type": "oidc", "identifiers": ids } },
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
            }))
            .unwrap()
        })
}

/// What Kratos does with a PUT (see the reference: traits and both metadata are replaced,
/// a missing state or schema is kept, OIDC providers are appended).
fn apply_put(identity: &Identity, body: &UpdateIdentityBody) -> Identity {
    let mut out = identity.clone();
    if !body.schema_id.is_empty() {
        out.schema_id = body.schema_id.clone();
    }
    out.traits = as_kratos_returns(&body.traits);
    if let Some(state) = body.state {
        out.state = state;
    }
    out.metadata_public = body.metadata_public.as_ref().map(as_kratos_returns);
    out.metadata_admin = body.metadata_admin.as_ref().map(as_kratos_returns);
    if let Some(oidc) = body.credentials.as_ref().and_then(|c| c.oidc.as_ref()) {
        let mut creds = out.credentials.clone().unwrap_or_default();
        let entry = creds.entry("oidc".to_string()).or_insert_with(|| {
            serde_json::from_value(json!({ "type": "oidc", "identifiers": [] })).unwrap()
        });
        for p in &oidc.config.providers {
            entry
                .identifiers
                .push(format!("{}:{}", p.provider, p.subject));
        }
        out.credentials = Some(creds);
    }
    out
}

fn arb_session() -> impl Strategy<Value = Session> {
    (
        "[a-f0-9]{8}",
        any::<bool>(),
        prop::option::of(0i64..2_000_000_000),
    )
        .prop_map(|(id, active, at)| {
            let mut v = json!({ "id": id, "active": active });
            if let Some(s) = at {
                v["authenticated_at"] = json!(Timestamp::from_second(s).unwrap().to_string());
            }
            serde_json::from_value(v).unwrap()
        })
}

// ---------------------------------------------------------------------------------------------
// controller::json

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn json_equal_is_reflexive(v in arb_json()) {
        prop_assert!(json::equal(&v, &v));
        prop_assert!(json::equal_opt(Some(&v), Some(&v)));
    }

    #[test]
    fn json_equal_is_symmetric(a in arb_json(), b in arb_json()) {
        prop_assert_eq!(json::equal(&a, &b), json::equal(&b, &a));
        let k = as_kratos_returns(&a);
        prop_assert_eq!(json::equal(&a, &k), json::equal(&k, &a));
        prop_assert_eq!(json::equal_opt(Some(&a), None), json::equal_opt(None, Some(&a)));
    }

    #[test]
    fn json_equal_ignores_key_order_and_integer_versus_float(v in arb_json()) {
        prop_assert!(json::equal(&v, &reordered_text(&v)), "key order: {}", v);
        prop_assert!(json::equal(&v, &as_kratos_returns(&v)), "1 vs 1.0: {}", v);
    }

    #[test]
    fn json_equal_compares_integers_and_floats_by_value(i in -(1i64 << 53)..(1i64 << 53), j in -(1i64 << 53)..(1i64 << 53)) {
        prop_assert!(json::equal(&json!(i), &json!(i as f64)));
        prop_assert_eq!(json::equal(&json!(i), &json!(j as f64)), i == j);
        prop_assert_eq!(json::equal(&json!(i), &json!(j)), i == j);
    }

    #[test]
    fn json_equal_sees_an_added_key_and_a_changed_string(v in arb_object(), key in "[a-z]{1,8}", s in "[a-z]{1,8}") {
        let mut more = v.clone();
        let fresh = format!("{key}-added");
        more.as_object_mut().unwrap().insert(fresh, json!(s.clone()));
        prop_assert!(!json::equal(&v, &more));
        let changed = format!("{s}x");
        prop_assert!(!json::equal(&json!(s.clone()), &json!(changed)));
    }
}

// ---------------------------------------------------------------------------------------------
// controller::identity::desired and plan

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn an_identity_built_from_the_spec_has_no_difference(d in arb_desired()) {
        let version = d.password.as_ref().map(|p| p.version.clone());
        let k = identity_from(&d, &[]);
        prop_assert_eq!(differences(&d, &k, version.as_deref()), vec![]);
        // Extra OIDC links in Kratos are not a difference (Kratos only appends them).
        let k = identity_from(&d, &["other:1".to_string()]);
        prop_assert_eq!(differences(&d, &k, version.as_deref()), vec![]);
    }

    #[test]
    fn applying_the_update_body_leaves_no_difference(d in arb_desired(), k in arb_identity(), last in prop::option::of("[a-f0-9]{4}/[0-9]{1,4}")) {
        let body = update_body(&d, &k, last.as_deref());
        let after = apply_put(&k, &body);
        let imported = body.credentials.as_ref().and_then(|c| c.password.as_ref()).is_some();
        let last_after = if imported { d.password.as_ref().map(|p| p.version.clone()) } else { last.clone() };
        prop_assert_eq!(differences(&d, &after, last_after.as_deref()), vec![]);
        // Full traits and both metadata go into every PUT (PUT replaces them).
        prop_assert!(json::equal(&body.traits, &d.traits));
        prop_assert_eq!(body.metadata_admin.as_ref(), Some(&d.metadata_admin));
        prop_assert_eq!(body.schema_id, d.schema_id.clone());
        // Credentials only when an import is due.
        let due = desired::password_due(&d, last.as_deref());
        prop_assert_eq!(imported, due && d.password.is_some());
    }

    #[test]
    fn the_created_identity_has_no_difference_and_the_password_stays_secret(d in arb_desired()) {
        let body = create_body(&d);
        let created = Identity {
            state: body.state.unwrap_or(KratosState::Active),
            ..identity_from(&d, &[])
        };
        let version = d.password.as_ref().map(|p| p.version.clone());
        prop_assert_eq!(differences(&d, &created, version.as_deref()), vec![]);
        prop_assert_eq!(body.metadata_admin.as_ref().and_then(|m| m.get(UID_MARKER)), Some(&json!(UID)));
        prop_assert_eq!(body.metadata_admin.as_ref().and_then(|m| m.get(OWNER_MARKER)), Some(&json!(OWNER)));
        if let Some(p) = &d.password {
            let debug = format!("{body:?}");
            prop_assert!(!debug.contains(secrecy::ExposeSecret::expose_secret(&p.value)));
            let creds = body.credentials.as_ref().and_then(|c| c.password.as_ref()).unwrap();
            prop_assert_eq!(creds.config.hashed_password.is_some(), p.hashed);
            prop_assert_eq!(creds.config.password.is_some(), !p.hashed);
        }
    }

    #[test]
    fn differences_and_bodies_never_panic_on_any_json(
        spec in arb_spec(), traits in arb_json(), public in arb_json(), admin in arb_json(),
        k in arb_identity(), password in arb_password(), last in prop::option::of("[ -~]{0,8}"),
    ) {
        let mut spec = spec;
        spec.traits = traits;
        spec.metadata_public = Some(public);
        spec.metadata_admin = Some(admin);
        let d = desired::desired(&spec, "customer".into(), OWNER, UID, password);
        let diffs = differences(&d, &k, last.as_deref());
        let body = update_body(&d, &k, last.as_deref());
        let _ = create_body(&d);
        let _ = serde_json::to_vec(&body).unwrap();
        let _ = verify_address_ops(&d, &k, Timestamp::UNIX_EPOCH);
        // No difference means nothing to write; a difference is never invented for a match.
        if diffs.is_empty() {
            let again = apply_put(&k, &body);
            prop_assert_eq!(differences(&d, &again, last.as_deref()), vec![]);
        }
        // The user's own metadata_admin can never remove or forge the marker.
        prop_assert_eq!(d.metadata_admin.get(UID_MARKER), Some(&json!(UID)));
    }

    #[test]
    fn verify_ops_target_exactly_the_unverified_wanted_addresses(
        wanted in prop::collection::vec("[a-cA-C]{1,2}@x", 0..4),
        present in prop::collection::vec(("[a-c]{1,2}@x", any::<bool>(), prop_oneof!["email", "sms"]), 0..5),
    ) {
        let spec: IdentitySpec = serde_json::from_value(json!({
            "schemaId": "customer", "traits": {},
            "verifiedAddresses": wanted.iter().map(|a| json!({ "value": a, "via": "email" })).collect::<Vec<_>>(),
        })).unwrap();
        let d = desired::desired(&spec, "customer".into(), OWNER, UID, None);
        let addresses: Vec<Value> = present.iter().map(|(v, verified, via)| json!({
            "value": v, "verified": verified, "via": via, "status": if *verified { "completed" } else { "pending" }
        })).collect();
        let mut k: Identity = serde_json::from_value(json!({
            "id": "i", "schema_id": "customer", "traits": {}, "verifiable_addresses": addresses,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        })).unwrap();
        let ops = verify_address_ops(&d, &k, Timestamp::UNIX_EPOCH);
        let due: Vec<usize> = present.iter().enumerate().filter(|(_, (v, verified, via))| {
            !verified && via == "email" && wanted.iter().any(|w| w.eq_ignore_ascii_case(v))
        }).map(|(i, _)| i).collect();
        prop_assert_eq!(ops.len(), 3 * due.len());
        for op in &ops {
            let index: usize = op.path.split('/').nth(2).unwrap().parse().unwrap();
            prop_assert!(due.contains(&index), "{} not due", op.path);
        }
        // Once applied, nothing is left to do.
        for i in due {
            k.verifiable_addresses[i].verified = true;
        }
        prop_assert!(verify_address_ops(&d, &k, Timestamp::UNIX_EPOCH).is_empty());
    }

    #[test]
    fn take_back_adoption_and_conflict_follow_the_markers(
        owners in prop::collection::vec(0u8..6, 0..5), if_unowned in any::<bool>(),
    ) {
        // 0: ours, 1: unowned, 2: another object, 3: owner name without uid, 4: other uid only,
        // 5: this object's namespace/name with an old uid (the object was recreated: ours).
        let candidates: Vec<Identity> = owners.iter().enumerate().map(|(i, o)| {
            let admin = match o {
                0 => json!({ OWNER_MARKER: OWNER, UID_MARKER: UID }),
                1 => json!({ "crm": 1 }),
                2 => json!({ OWNER_MARKER: "b/bob", UID_MARKER: "other" }),
                3 => json!({ OWNER_MARKER: "b/bob" }),
                4 => json!({ UID_MARKER: "other" }),
                _ => json!({ OWNER_MARKER: OWNER, UID_MARKER: "old-uid" }),
            };
            serde_json::from_value(json!({
                "id": format!("id-{i}"), "schema_id": "customer", "traits": {}, "metadata_admin": admin,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            })).unwrap()
        }).collect();
        let adoption = if if_unowned { AdoptionPolicy::IfUnowned } else { AdoptionPolicy::Never };
        let me = Owner { uid: UID, name: OWNER };
        let result = resolve_existing(&candidates, me, adoption);
        let ours = owners.iter().position(|o| *o == 0 || *o == 5);
        match (&result, ours) {
            (Existing::TakeBack(id), Some(i)) => prop_assert_eq!(id, &format!("id-{i}")),
            (Existing::None, None) => prop_assert!(candidates.is_empty()),
            (Existing::Adopt(id), None) => {
                prop_assert!(if_unowned && owners == vec![1]);
                prop_assert_eq!(id, "id-0");
            }
            (Existing::Conflict(m), None) => {
                prop_assert!(!candidates.is_empty());
                prop_assert!(!(if_unowned && owners == vec![1]), "{}", m);
                // Never an oracle: no other object's name, no Kratos id.
                prop_assert!(!m.contains("b/bob") && !m.contains("id-"), "{}", m);
            }
            (other, _) => prop_assert!(false, "{:?} for owners {:?}", other, owners),
        }
    }

    #[test]
    fn sessions_plan_accounts_for_every_active_session(
        sessions in prop::collection::vec(arb_session(), 0..8),
        inactive in any::<bool>(), revoke in any::<bool>(), cutoff in prop::option::of(0i64..2_000_000_000),
    ) {
        let mut spec = json!({ "schemaId": "customer", "traits": {}, "state": if inactive { "inactive" } else { "active" },
            "sessions": { "revokeOnDeactivate": revoke } });
        if let Some(c) = cutoff {
            spec["sessions"]["revokeBefore"] = json!(Timestamp::from_second(c).unwrap().to_string());
        }
        let spec: IdentitySpec = serde_json::from_value(spec).unwrap();
        let d = desired::desired(&spec, "customer".into(), OWNER, UID, None);
        let p = plan_sessions(&d, &sessions);
        if inactive && revoke {
            prop_assert_eq!(p.revoke_all, !sessions.is_empty());
            prop_assert!(p.disable.is_empty());
            prop_assert_eq!(p.active_after, 0);
        } else {
            prop_assert!(!p.revoke_all);
            let active = sessions.iter().filter(|s| s.active).count();
            prop_assert_eq!(p.disable.len() + usize::try_from(p.active_after).unwrap(), active);
            for id in &p.disable {
                let s = sessions.iter().find(|s| &s.id == id && s.active).unwrap();
                let cutoff = Timestamp::from_second(cutoff.unwrap()).unwrap();
                prop_assert!(s.authenticated_at.unwrap() < cutoff);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// controller::identity::sweep::in_sync

fn object(spec: &IdentitySpec, with_status: bool) -> IdentityObject {
    let mut v = json!({
        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
        "metadata": { "name": "alice", "namespace": "team-a", "uid": UID, "generation": 1 },
        "spec": spec,
    });
    if with_status {
        v["status"] =
            json!({ "observedGeneration": 1, "schemaId": "customer", "identityId": "k1" });
    }
    serde_json::from_value(v).unwrap()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn in_sync_accepts_what_the_operator_wrote_and_sees_drift(spec in arb_spec(), key in "[a-z]{1,6}") {
        let obj = object(&spec, true);
        let d = desired::desired(&spec, "customer".into(), OWNER, UID, None);
        let k = identity_from(&d, &[]);
        prop_assert!(sweep::in_sync(&obj, &k));
        let mut drifted = k.clone();
        if let Value::Object(t) = &mut drifted.traits {
            t.insert(format!("{key}-drift"), json!(true));
        }
        prop_assert!(!sweep::in_sync(&obj, &drifted));
        let mut other_owner = k.clone();
        other_owner.metadata_admin = Some(json!({ OWNER_MARKER: OWNER, UID_MARKER: "someone-else" }));
        prop_assert!(!sweep::in_sync(&obj, &other_owner));
        // Without a status (never synced) nothing is in sync.
        prop_assert!(!sweep::in_sync(&object(&spec, false), &k));
    }

    #[test]
    fn in_sync_never_panics(spec in arb_spec(), traits in arb_json(), k in arb_identity()) {
        let mut spec = spec;
        spec.traits = traits;
        let _ = sweep::in_sync(&object(&spec, true), &k);
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing what Kratos answers

const VALID_IDENTITY: &str = r#"{"id":"7f3c0000-0000-4000-8000-000000000001","schema_id":"customer","schema_url":"http://127.0.0.1:4433/schemas/Y3VzdG9tZXI","state":"active","state_changed_at":"2026-01-01T00:00:00Z","traits":{"email":"a@example.com","name":{"first":"A"}},"verifiable_addresses":[{"id":"00000000-0000-4000-8000-000000000002","value":"a@example.com","verified":false,"via":"email","status":"pending","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}],"recovery_addresses":[{"id":"00000000-0000-4000-8000-000000000003","value":"a@example.com","via":"email","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}],"metadata_public":null,"metadata_admin":{"kratos-operator.dev/uid":"u"},"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","organization_id":null,"credentials":{"password":{"type":"password","identifiers":["a@example.com"],"version":0,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}}}"#;

const FIELDS: [&str; 14] = [
    "id",
    "schema_id",
    "schema_url",
    "state",
    "state_changed_at",
    "traits",
    "verifiable_addresses",
    "recovery_addresses",
    "metadata_public",
    "metadata_admin",
    "created_at",
    "updated_at",
    "organization_id",
    "credentials",
];

/// A valid identity with one field replaced by any JSON (or removed).
fn arb_identity_body() -> impl Strategy<Value = Vec<u8>> {
    (0..FIELDS.len(), prop::option::of(arb_json())).prop_map(|(i, replacement)| {
        let mut v: Value = serde_json::from_str(VALID_IDENTITY).unwrap();
        let o = v.as_object_mut().unwrap();
        match replacement {
            Some(r) => {
                o.insert(FIELDS[i].to_string(), r);
            }
            None => {
                o.remove(FIELDS[i]);
            }
        }
        serde_json::to_vec(&v).unwrap()
    })
}

/// A valid identity's text, truncated and with bytes overwritten.
fn arb_damaged_body() -> impl Strategy<Value = Vec<u8>> {
    (
        0..VALID_IDENTITY.len(),
        prop::collection::vec((0..VALID_IDENTITY.len(), any::<u8>()), 0..4),
    )
        .prop_map(|(cut, flips)| {
            let mut bytes = VALID_IDENTITY.as_bytes().to_vec();
            for (at, b) in flips {
                bytes[at] = b;
            }
            bytes.truncate(cut.max(1));
            bytes
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn identity_parsing_never_panics(
        raw in prop::collection::vec(any::<u8>(), 0..256), field in arb_identity_body(), damaged in arb_damaged_body(), any_json in arb_json(),
    ) {
        for body in [&raw, &field, &damaged] {
            let _ = serde_json::from_slice::<Identity>(body);
            let _ = serde_json::from_slice::<Vec<Identity>>(body);
            let _ = serde_json::from_slice::<Session>(body);
            let _ = serde_json::from_slice::<kratos::RecoveryLink>(body);
            let _ = serde_json::from_slice::<kratos::RecoveryCode>(body);
        }
        let _ = serde_json::from_value::<Identity>(any_json.clone());
        let _ = serde_json::from_value::<Session>(any_json);
        // Whatever parsed can be compared with any spec without panicking.
        if let Ok(k) = serde_json::from_slice::<Identity>(&field) {
            let spec: IdentitySpec = serde_json::from_value(json!({ "schemaId": "customer", "traits": {} })).unwrap();
            let d = desired::desired(&spec, "customer".into(), OWNER, UID, None);
            let _ = differences(&d, &k, None);
            let _ = update_body(&d, &k, None);
            let _ = verify_address_ops(&d, &k, Timestamp::UNIX_EPOCH);
            let _ = k.has_password();
        }
    }

    #[test]
    fn instance_pointers_are_parsed_or_refused_without_panic(
        reason in prop_oneof![any::<String>(), "(I\\[#|\\]|S\\[#|/traits|[a-zé/ ]|\n){0,24}"],
        pointer in "(/[a-z0-9_]{1,6}){1,3}",
    ) {
        if let Some(p) = kratos::parse_instance_pointer(&reason)
            && !p.is_empty()
        {
            let needle = format!("I[#{p}]");
            prop_assert!(reason.contains(&needle), "{p:?} from {reason:?}");
        }
        let kratos_reason = format!("I[#] S[#] validation failed\n  I[#{pointer}] S[#/properties/traits] expected string, but got number");
        prop_assert_eq!(kratos::parse_instance_pointer(&kratos_reason), Some(pointer));
    }

    #[test]
    fn rate_limit_headers_never_panic_and_never_go_negative(
        value in prop_oneof![
            any::<String>(),
            "[0-9]{1,25}",
            "[0-9]{1,3}\\.[0-9]{1,3}",
            "[0-9]\\.?[0-9]*e[0-9]{1,3}",
            "-?(inf|NaN|infinity)",
            Just("Wed, 21 Oct 2015 07:28:00 GMT".to_string()),
            Just("Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
        ],
        header in prop_oneof![Just("x-ratelimit-reset"), Just("retry-after")],
    ) {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
            headers.insert(header, v);
        }
        // Parsed, capped, and handed to the shared cool-down as the client does after a 429.
        if let Some(wait) = kratos::retry_after_from_headers(&headers) {
            prop_assert!(wait <= kratos::error::MAX_SERVER_WAIT, "{value:?} gave {wait:?}");
            kratos::RateLimiter::new(None, 1).cool_down(wait);
        }
    }

    #[test]
    fn link_headers_versions_and_durations_never_panic(
        link in prop_oneof![any::<String>(), "<[ -~]{0,40}>; rel=\"(next|first|prev)\"(, <[ -~]{0,20}>; rel=\"next\")?"],
        version in prop_oneof![any::<String>(), "v?[0-9]{1,20}(\\.[0-9]{1,20}){0,3}(-[a-z0-9.]{0,6})?"],
        duration in prop_oneof![any::<String>(), "([0-9]{1,20}(h|m|s|ms)){0,4}"],
    ) {
        let url = url::Url::parse("http://127.0.0.1:4434/admin/identities?page_size=500").unwrap();
        let _ = kratos::next_page_token(Some(&link), &url);
        let _ = kratos::link_target(&link, "next");
        let _ = ServerVersion::parse(&version);
        let _ = kratos_operator::controller::recovery::plan::parse_duration(&duration);
    }

    #[test]
    fn durations_parse_to_their_value(h in 0u64..1000, m in 0u64..1000, s in 0u64..100_000, ms in 0u64..100_000) {
        let text = format!("{h}h{m}m{s}s{ms}ms");
        let expected = std::time::Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
        match kratos_operator::controller::recovery::plan::parse_duration(&text) {
            Ok(d) => prop_assert_eq!(d, expected),
            Err(e) => prop_assert!(expected < std::time::Duration::from_secs(1), "{text}: {e}"),
        }
    }
}

#[test]
fn the_valid_identity_parses() {
    let k: Identity = serde_json::from_str(VALID_IDENTITY).unwrap();
    assert_eq!(k.traits["email"].as_str(), Some("a@example.com"));
    assert_eq!(k.verifiable_addresses.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Client-side schema validation

fn customer_schema() -> CompiledSchema {
    CompiledSchema::compile(
        "customer",
        include_bytes!("../testenv/kratos/customer.schema.json"),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn schema_validation_never_panics_and_names_pointers(traits in arb_json()) {
        let schema = customer_schema();
        if let Err(errors) = schema.validate_traits(&traits) {
            prop_assert!(!errors.is_empty());
            let pointers: BTreeSet<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
            for p in pointers {
                prop_assert!(p.is_empty() || p.starts_with("/traits"), "{p}");
            }
        }
        let ids = schema.identifier_values(&traits);
        for id in &ids {
            prop_assert_eq!(id, &id.trim().to_lowercase());
        }
        let _ = schema.display_identifier(&traits);
    }

    #[test]
    fn arbitrary_schemas_compile_or_are_refused_without_panic(doc in arb_json(), traits in arb_json()) {
        let raw = serde_json::to_vec(&json!({ "type": "object", "properties": { "traits": doc } })).unwrap();
        if let Ok(schema) = CompiledSchema::compile("x", &raw) {
            let _ = schema.validate_traits(&traits);
            let _ = schema.identifier_values(&traits);
        }
        let _ = CompiledSchema::compile("x", &serde_json::to_vec(&doc).unwrap());
    }
}
