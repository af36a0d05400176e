//! The plan, run against a pure model of Kratos and the cluster ([`World`]).

use super::*;
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::{
    api::{OIDC_MARKER, identity::IdentityState},
    kratos::IdentityState as KratosState,
};

use crate::controller::identity::fixtures::{UID, base_spec, spec};

const OWNER: Owner<'static> = Owner {
    uid: UID,
    name: "ns/a",
};

/// The fixture identity with credentials, as a GET returns it.
fn identity(v: Value) -> Identity {
    let mut i = crate::controller::identity::fixtures::identity(v);
    i.credentials.get_or_insert_default();
    i
}

/// The object with status.identityId `id-1`.
fn recorded(spec: &IdentitySpec) -> Observed<'_> {
    let mut o = observed(spec);
    o.recorded_id = Some("id-1".into());
    o
}

/// Kratos with one identity.
fn holding(identity: Identity) -> World {
    let mut w = World::new();
    w.identities = vec![identity];
    w
}

/// The steps of a reconcile that finds its recorded identity, then `rest`.
fn after_recorded(rest: &[&str]) -> Vec<String> {
    let mut all = steps(&[SCHEMA, "Namespace", "Recorded(\"id-1\")"]);
    all.extend(steps(rest));
    all
}

/// The steps of a reconcile that finds its identity by a lookup and updates it, then
/// `rest`.
fn after_lookup_update(rest: &[&str]) -> Vec<String> {
    let mut all = steps(&[
        SCHEMA,
        "Namespace",
        LOOKUP,
        "Full(\"id-1\")",
        "Update(id-1)",
    ]);
    all.extend(steps(rest));
    all
}

fn customer() -> Arc<CompiledSchema> {
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testenv/kratos/customer.schema.json"
    ))
    .unwrap();
    Arc::new(CompiledSchema::compile("customer", &raw).unwrap())
}

fn schema_ref(ready: bool) -> Arc<IdentitySchemaRef> {
    let status = if ready { "True" } else { "False" };
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef",
            "metadata": {"name": "customer", "namespace": "ns"},
            "spec": {"schemaId": "customer"},
            "status": {"conditions": [{
                "type": "Ready", "status": status, "reason": "SchemaNotFound",
                "message": "Kratos does not serve it", "lastTransitionTime": "2026-01-01T00:00:00Z"
            }]}
        }))
        .unwrap(),
    )
}

fn password_secret(value: &[u8]) -> Secret {
    let mut s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pw", "uid": "s1", "resourceVersion": "7"}
    }))
    .unwrap();
    s.data = Some(BTreeMap::from([(
        "password".into(),
        ByteString(value.to_vec()),
    )]));
    s
}

fn with_password(mut s: IdentitySpec, policy: &str) -> IdentitySpec {
    s.credentials = serde_json::from_value(json!({"password": {
        "secretRef": {"name": "pw", "key": "password"}, "policy": policy
    }}))
    .unwrap();
    s
}

fn session(id: &str, active: bool) -> Session {
    serde_json::from_value(json!({"id": id, "active": active})).unwrap()
}

/// Kratos and the cluster as a test sees them: what each [`Need`] finds and what each
/// [`Write`] answers. Pure: the plan runs against it as the reconcile runs against the real
/// ones.
struct World {
    schema_ref: Option<Arc<IdentitySchemaRef>>,
    schema: Option<Arc<CompiledSchema>>,
    policy: NamespacePolicy,
    /// Kratos' identities (with credentials, as a GET returns them).
    identities: Vec<Identity>,
    /// The id the marker index names for the object.
    marked: Option<String>,
    secret: Option<Secret>,
    create: Answer<String>,
    update: Option<Refusal>,
    unlink: Option<Refusal>,
    sessions: Vec<Session>,
}

impl World {
    fn new() -> Self {
        Self {
            schema_ref: Some(schema_ref(true)),
            schema: Some(customer()),
            policy: NamespacePolicy::unrestricted(),
            identities: Vec::new(),
            marked: None,
            secret: Some(password_secret(b"s3cret-pw\n")),
            create: Ok("new-id".into()),
            update: None,
            unlink: None,
            sessions: Vec::new(),
        }
    }

    fn get(&self, id: &str) -> Option<Identity> {
        self.identities.iter().find(|i| i.id == id).cloned()
    }
}

/// Runs the plan to its outcome against `w`; returns the steps taken and the outcome.
fn run(mut o: Observed<'_>, w: &World) -> (Vec<String>, Outcome) {
    let mut steps = Vec::new();
    for _ in 0..MAX_TEST_STEPS {
        match plan(&o) {
            Plan::Observe(need) => {
                steps.push(format!("{need:?}"));
                match need {
                    Need::SchemaRef(_) => o.schema_ref = Some(w.schema_ref.clone()),
                    Need::Schema { .. } => o.schema = Some(w.schema.clone()),
                    Need::Namespace => o.policy = Some(w.policy.clone()),
                    Need::Recorded(id) => o.recorded = Some(w.get(&id)),
                    Need::Candidates(ids) => {
                        // A lookup is a list: no credentials.
                        o.candidates = Some(
                            w.identities
                                .iter()
                                .filter(|i| {
                                    let email = i.traits["email"].as_str().unwrap_or("");
                                    ids.contains(&email.to_lowercase())
                                })
                                .map(|i| Identity {
                                    credentials: None,
                                    ..i.clone()
                                })
                                .collect(),
                        );
                    }
                    Need::Marked => o.marked = Some(w.marked.as_deref().and_then(|id| w.get(id))),
                    Need::Secret(_) => o.secret = Some(w.secret.clone()),
                    Need::Full(id) => o.full = w.get(&id),
                    Need::ReadBack(id) => o.read_back = w.get(&id),
                    Need::Sessions(_) => o.sessions = Some(w.sessions.clone()),
                }
            }
            Plan::Write(write) => {
                steps.push(match &write {
                    Write::Create { .. } => "Create".to_string(),
                    Write::Unlink { links, .. } => format!("Unlink{links:?}"),
                    Write::Update { id, .. } => format!("Update({id})"),
                    Write::Verify { ops, .. } => format!("Verify({})", ops.len() / 3),
                    Write::Revoke { all, disable, .. } => {
                        format!("Revoke(all={all}, disable={disable:?})")
                    }
                });
                match write {
                    Write::Create { .. } => o.created = Some(w.create.clone()),
                    Write::Unlink { .. } => {
                        o.unlinked = Some(w.unlink.clone().map_or(Ok(()), Err));
                    }
                    Write::Update { id, body } => {
                        o.updated = Some(match &w.update {
                            Some(refusal) => Err(refusal.clone()),
                            None => {
                                let mut updated = w.get(&id).unwrap();
                                updated.traits = body.traits.clone();
                                updated.schema_id = body.schema_id.clone();
                                updated.metadata_public = body.metadata_public.clone();
                                updated.metadata_admin = body.metadata_admin.clone();
                                if let Some(state) = body.state {
                                    updated.state = state;
                                }
                                Ok(updated)
                            }
                        });
                    }
                    Write::Verify { id, .. } => {
                        let mut verified = w.get(&id).unwrap();
                        for a in &mut verified.verifiable_addresses {
                            a.verified = true;
                        }
                        o.verified = Some(verified);
                    }
                    Write::Revoke { .. } => o.revoked = true,
                }
            }
            Plan::Done(outcome) => return (steps, outcome),
        }
    }
    panic!("the plan did not settle: {steps:?}");
}

const MAX_TEST_STEPS: usize = 20;

fn observed(spec: &IdentitySpec) -> Observed<'_> {
    Observed::new(
        spec,
        OWNER,
        "ns",
        None,
        "2026-06-01T00:00:00Z".parse().unwrap(),
    )
}

fn synced(outcome: &Outcome) -> &Synced {
    match outcome {
        Outcome::Synced(s) => s,
        Outcome::Blocked(b) => panic!("blocked: {b:?}"),
    }
}

fn blocked(outcome: &Outcome) -> &Blocked {
    match outcome {
        Outcome::Blocked(b) => b,
        Outcome::Synced(s) => panic!("synced: {s:?}"),
    }
}

fn steps(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

const SCHEMA: &str = "Schema { id: \"customer\", recheck: true }";
const LOOKUP: &str = "Candidates([\"a@example.com\"])";

#[test]
fn a_new_object_is_looked_up_then_created_per_object() {
    let s = base_spec();
    let (trace, outcome) = run(observed(&s), &World::new());
    assert_eq!(trace, steps(&[SCHEMA, "Namespace", LOOKUP, "Create"]));
    let synced = synced(&outcome);
    assert_eq!(synced.identity_id, "new-id");
    assert_eq!(synced.change, Change::Created);
    assert_eq!(synced.identifier.as_deref(), Some("a@example.com"));
    assert_eq!(synced.active_sessions, 0);
}

#[test]
fn with_batched_creates_the_lookup_waits_for_a_conflict() {
    let s = base_spec();
    let mut o = observed(&s);
    o.batched = true;
    let (trace, outcome) = run(o.clone(), &World::new());
    assert_eq!(trace, steps(&[SCHEMA, "Namespace", "Create"]));
    assert_eq!(synced(&outcome).change, Change::Created);

    // The create conflicts: the identity this object created before is found and used.
    let mut w = World::new();
    w.create = Err(Refusal::Conflict("exists".into()));
    w.identities = vec![identity(json!({}))];
    let (trace, outcome) = run(o.clone(), &w);
    assert_eq!(
        trace,
        steps(&[
            SCHEMA,
            "Namespace",
            "Create",
            LOOKUP,
            "Full(\"id-1\")",
            "Sessions(\"id-1\")"
        ])
    );
    assert_eq!(synced(&outcome).change, Change::TookBack);

    // Nobody's to take: the conflict is reported with Kratos' reason.
    w.identities.clear();
    let (_, outcome) = run(o, &w);
    let b = blocked(&outcome);
    assert_eq!(b.reason, "Conflict");
    assert!(!b.stalled && b.message.contains("exists"));
}

#[test]
fn a_recorded_identity_is_used_only_when_its_marker_says_it_is_ours() {
    let s = base_spec();
    let o = recorded(&s);
    let mut w = holding(identity(json!({})));
    let (trace, outcome) = run(o.clone(), &w);
    assert_eq!(trace, after_recorded(&["Sessions(\"id-1\")"]));
    assert_eq!(synced(&outcome).change, Change::Unchanged);

    // Another object's identity (a status a tenant wrote): nothing is written, and the
    // message names no other object.
    w.identities = vec![identity(
        json!({"metadata_admin": {OWNER_MARKER: "other-team/b", UID_MARKER: "u9"}}),
    )];
    let (trace, outcome) = run(o.clone(), &w);
    assert!(
        trace
            .iter()
            .all(|s| !s.starts_with("Update") && !s.starts_with("Create"))
    );
    let b = blocked(&outcome);
    assert_eq!(b.reason, "Conflict");
    assert!(b.message.contains("status.identityId") && !b.message.contains("other-team"));

    // An unowned one is not ours either, even with adoption allowed.
    w.identities = vec![identity(json!({"metadata_admin": null}))];
    let mut adopting = base_spec();
    adopting.adoption = Some(AdoptionPolicy::IfUnowned);
    let o2 = recorded(&adopting);
    assert_eq!(blocked(&run(o2, &w).1).reason, "Conflict");
}

#[test]
fn a_recorded_identity_that_is_gone_is_created_again() {
    let s = base_spec();
    let mut o = observed(&s);
    o.recorded_id = Some("gone".into());
    let (trace, outcome) = run(o, &World::new());
    assert_eq!(
        trace,
        steps(&[SCHEMA, "Namespace", "Recorded(\"gone\")", LOOKUP, "Create"])
    );
    assert_eq!(synced(&outcome).identity_id, "new-id");
}

#[test]
fn an_earlier_object_of_the_same_name_is_taken_back_and_its_marker_rewritten() {
    let s = base_spec();
    let w = holding(identity(
        json!({"metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: "old-uid"}}),
    ));
    let (trace, outcome) = run(observed(&s), &w);
    assert_eq!(trace, after_lookup_update(&["Sessions(\"id-1\")"]));
    assert_eq!(synced(&outcome).change, Change::TookBack);
}

#[test]
fn adoption_is_refused_unless_asked_and_read_back_after_the_marker_is_written() {
    let w = holding(identity(json!({"metadata_admin": null})));
    let s = base_spec();
    let b = blocked(&run(observed(&s), &w).1).clone();
    assert_eq!(b.reason, "Conflict");
    assert!(b.message.contains("IfUnowned"));

    let mut adopting = base_spec();
    adopting.adoption = Some(AdoptionPolicy::IfUnowned);
    // The world's read back shows the identity as it was (no marker): another adopter won.
    let (trace, outcome) = run(observed(&adopting), &w);
    assert_eq!(trace, after_lookup_update(&["ReadBack(\"id-1\")"]));
    assert_eq!(blocked(&outcome).message, OWNED_ELSEWHERE);

    // Read back with our marker: adopted.
    let mut o = observed(&adopting);
    o.read_back = Some(identity(json!({})));
    let outcome = run(o, &w).1;
    assert_eq!(synced(&outcome).change, Change::Adopted);
}

#[test]
fn an_identity_another_object_owns_is_a_conflict_without_its_name() {
    let w = holding(identity(
        json!({"metadata_admin": {OWNER_MARKER: "team-b/bob", UID_MARKER: "u2"}}),
    ));
    let mut adopting = base_spec();
    adopting.adoption = Some(AdoptionPolicy::IfUnowned);
    let (trace, outcome) = run(observed(&adopting), &w);
    assert!(
        !trace
            .iter()
            .any(|s| s.starts_with("Update") || s.starts_with("Create"))
    );
    let b = blocked(&outcome);
    assert_eq!(b.message, OWNED_ELSEWHERE);
    assert!(!b.message.contains("team-b"));
}

#[test]
fn an_object_without_identifiers_is_found_by_its_marker() {
    let s = spec(json!({"schemaId": "customer", "traits": {"email": "a@example.com"}}));
    let mut w = World::new();
    w.schema = None; // no compiled schema: no identifiers known
    let (trace, outcome) = run(observed(&s), &w);
    assert_eq!(trace, steps(&[SCHEMA, "Namespace", "Marked", "Create"]));
    assert_eq!(synced(&outcome).change, Change::Created);

    w.identities = vec![identity(json!({"traits": {"email": "a@example.com"}}))];
    w.marked = Some("id-1".into());
    let (trace, outcome) = run(observed(&s), &w);
    assert_eq!(
        trace,
        steps(&[SCHEMA, "Namespace", "Marked", "Sessions(\"id-1\")"])
    );
    assert_eq!(synced(&outcome).change, Change::TookBack);

    // The index names an identity whose marker is another's: created anew.
    w.identities = vec![identity(
        json!({"metadata_admin": {OWNER_MARKER: "x/y", UID_MARKER: "u2"}}),
    )];
    let (trace, _) = run(observed(&s), &w);
    assert_eq!(trace.last().map(String::as_str), Some("Create"));
}

#[test]
fn a_difference_is_updated_and_named() {
    let mut s = base_spec();
    s.traits = json!({"email": "a@example.com", "age": 4});
    let o = recorded(&s);
    let mut w = holding(identity(json!({})));
    let (trace, outcome) = run(o.clone(), &w);
    assert_eq!(
        trace,
        after_recorded(&["Update(id-1)", "Sessions(\"id-1\")"])
    );
    assert_eq!(
        synced(&outcome).change,
        Change::Updated(vec![Difference::Traits])
    );

    w.update = Some(Refusal::Conflict("email taken".into()));
    let b = blocked(&run(o.clone(), &w).1).clone();
    assert_eq!(b.reason, "Conflict");
    assert!(b.message.contains("email taken") && !b.stalled);

    w.update = Some(Refusal::Invalid {
        reason: "bad".into(),
        pointer: Some("#/traits/age".into()),
    });
    let b = blocked(&run(o.clone(), &w).1).clone();
    assert_eq!((b.reason, b.stalled), ("InvalidSpec", true));
    assert_eq!(b.recheck, Some(Recheck::Schema));
    assert!(b.message.contains("#/traits/age"));

    w.update = Some(Refusal::Invalid {
        reason: "unknown hash".into(),
        pointer: None,
    });
    let b = blocked(&run(o, &w).1).clone();
    assert_eq!((b.reason, b.recheck), ("InvalidSpec", None));
}

#[test]
fn a_refused_create_is_invalid_spec() {
    let s = base_spec();
    let mut w = World::new();
    w.create = Err(Refusal::Invalid {
        reason: "no".into(),
        pointer: Some("#/traits/email".into()),
    });
    let b = blocked(&run(observed(&s), &w).1).clone();
    assert_eq!((b.reason, b.stalled), ("InvalidSpec", true));
    assert!(
        b.message
            .starts_with("Kratos rejected the identity at #/traits/email")
    );
    // Per object, a conflict on create (an address another identity verified) is reported.
    w.create = Err(Refusal::Conflict("address".into()));
    let (trace, outcome) = run(observed(&s), &w);
    assert_eq!(
        trace.iter().filter(|s| s.starts_with("Candidates")).count(),
        1
    );
    assert_eq!(blocked(&outcome).reason, "Conflict");
}

#[test]
fn the_spec_is_refused_before_anything_is_read_from_kratos() {
    let w = World::new();
    let mut s = base_spec();
    s.undecodable = Some("spec.traits: invalid type".into());
    let (trace, outcome) = run(observed(&s), &w);
    assert!(trace.is_empty());
    assert_eq!(blocked(&outcome).reason, "InvalidSpec");

    let mut s = base_spec();
    s.traits = json!({"email": "x".repeat(MAX_FREE_JSON_BYTES)});
    let (trace, outcome) = run(observed(&s), &w);
    assert!(trace.is_empty());
    assert!(blocked(&outcome).stalled);

    let s = spec(json!({"traits": {}}));
    let b = blocked(&run(observed(&s), &w).1).clone();
    assert!(b.stalled && b.message.contains("exactly one of spec.schemaRef"));
}

#[test]
fn traits_the_schema_refuses_are_rechecked_only_for_a_schema_id() {
    let w = World::new();
    let mut s = base_spec();
    s.traits = json!({"email": "a@example.com", "age": -1});
    let (trace, outcome) = run(observed(&s), &w);
    assert_eq!(trace, steps(&[SCHEMA]));
    let b = blocked(&outcome).clone();
    assert_eq!(
        (b.reason, b.recheck),
        ("InvalidSpec", Some(Recheck::Schema))
    );
    assert!(b.message.contains("traits do not match schema customer"));

    let mut by_ref = s.clone();
    by_ref.schema_id = None;
    by_ref.schema_ref = serde_json::from_value(json!({"name": "customer"})).unwrap();
    let (trace, outcome) = run(observed(&by_ref), &w);
    assert_eq!(
        trace,
        steps(&[
            "SchemaRef(\"customer\")",
            "Schema { id: \"customer\", recheck: false }"
        ])
    );
    assert_eq!(blocked(&outcome).recheck, None);
}

#[test]
fn a_schema_ref_must_exist_and_be_ready() {
    let mut s = base_spec();
    s.schema_id = None;
    s.schema_ref = serde_json::from_value(json!({"name": "customer"})).unwrap();
    let mut w = World::new();
    w.schema_ref = None;
    let b = blocked(&run(observed(&s), &w).1).clone();
    assert_eq!((b.reason, b.stalled), ("SchemaNotReady", false));
    assert!(b.message.contains("does not exist in namespace ns"));
    w.schema_ref = Some(schema_ref(false));
    let b = blocked(&run(observed(&s), &w).1).clone();
    assert!(b.message.contains("is not Ready: Kratos does not serve it"));
    w.schema_ref = Some(schema_ref(true));
    assert_eq!(synced(&run(observed(&s), &w).1).change, Change::Created);
}

#[test]
fn the_namespace_policy_is_checked_before_kratos_is_asked() {
    let mut w = World::new();
    w.policy = NamespacePolicy::from_metadata(
        &BTreeMap::new(),
        &BTreeMap::from([(
            crate::tenancy::ANNOTATION_IDENTIFIER_PATTERNS.to_string(),
            "*@team-b.example.com".to_string(),
        )]),
    );
    let s = base_spec();
    let (trace, outcome) = run(observed(&s), &w);
    assert_eq!(trace, steps(&[SCHEMA, "Namespace"]));
    let b = blocked(&outcome);
    assert_eq!(b.reason, REASON_FORBIDDEN);
    assert_eq!(b.recheck, Some(Recheck::Namespace));
    // Without the schema the identifiers are unknown: refused for now, not let through.
    w.schema = None;
    let b = blocked(&run(observed(&s), &w).1).clone();
    assert_eq!((b.reason, b.stalled), (REASON_FORBIDDEN, false));
}

#[test]
fn the_password_is_read_to_create_and_under_sync_only() {
    let s = with_password(base_spec(), "SetOnce");
    let mut w = World::new();
    let (trace, outcome) = run(observed(&s), &w);
    assert!(trace.contains(&"Secret(\"pw\")".to_string()));
    assert_eq!(synced(&outcome).password_imported.as_deref(), Some("s1/7"));

    // An existing identity under SetOnce: the Secret is not even read.
    w.identities = vec![identity(json!({}))];
    let o = recorded(&s);
    let (trace, _) = run(o, &w);
    assert!(!trace.iter().any(|s| s.starts_with("Secret")));

    // Under Sync, a new Secret version is imported; the same one is not.
    let s = with_password(base_spec(), "Sync");
    let mut o = recorded(&s);
    let (trace, outcome) = run(o.clone(), &w);
    assert!(trace.contains(&"Update(id-1)".to_string()));
    assert_eq!(
        synced(&outcome).change,
        Change::Updated(vec![Difference::Password])
    );
    assert_eq!(synced(&outcome).password_imported.as_deref(), Some("s1/7"));
    o.last_password = Some("s1/7");
    let (trace, outcome) = run(o, &w);
    assert!(!trace.iter().any(|s| s.starts_with("Update")));
    assert_eq!(synced(&outcome).password_imported, None);
}

#[test]
fn a_password_secret_that_cannot_be_used_says_why() {
    let s = with_password(base_spec(), "SetOnce");
    let mut w = World::new();
    let cases: Vec<(Option<Secret>, &str, &str)> = vec![
        (None, "SecretNotFound", "does not exist in namespace ns"),
        (
            Some(password_secret(b"\xff\xfe")),
            "InvalidSecret",
            "not UTF-8",
        ),
        (Some(password_secret(b"\n")), "InvalidSecret", "is empty"),
    ];
    for (secret, reason, text) in cases {
        w.secret = secret;
        let b = blocked(&run(observed(&s), &w).1).clone();
        assert_eq!((b.reason, b.stalled), (reason, false), "{text}");
        assert!(b.message.contains(text), "{}", b.message);
    }
    let mut other_key = password_secret(b"x");
    other_key.data = Some(BTreeMap::new());
    w.secret = Some(other_key);
    assert!(
        blocked(&run(observed(&s), &w).1)
            .message
            .contains("has no key")
    );

    let mut both = s.clone();
    both.credentials = serde_json::from_value(json!({"password": {
        "secretRef": {"name": "pw", "key": "password"},
        "hashedSecretRef": {"name": "pw", "key": "hash"}
    }}))
    .unwrap();
    let b = blocked(&run(observed(&both), &w).1).clone();
    assert_eq!((b.reason, b.stalled), ("InvalidSpec", true));
}

#[test]
fn a_trailing_newline_is_not_part_of_the_password_and_no_plan_shows_it() {
    let s = with_password(base_spec(), "SetOnce");
    let mut o = observed(&s);
    o.schema = Some(Some(customer()));
    o.policy = Some(NamespacePolicy::unrestricted());
    o.candidates = Some(Vec::new());
    o.secret = Some(Some(password_secret(b"s3cret-pw\r\n")));
    let Plan::Write(Write::Create { body, .. }) = plan(&o) else {
        panic!("expected a create");
    };
    let password = body
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref())
        .expect("a password import");
    assert_eq!(
        password
            .config
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_string()),
        Some("s3cret-pw".to_string())
    );
    let shown = format!("{:?}", plan(&o));
    assert!(!shown.contains("s3cret-pw"), "{shown}");
}

#[test]
fn oidc_links_that_left_the_spec_are_unlinked_before_the_update() {
    let s = base_spec();
    let o = recorded(&s);
    let mut w = World::new();
    let linked: BTreeMap<String, crate::kratos::Credentials> = serde_json::from_value(json!({
        "oidc": {"type": "oidc", "identifiers": ["github:42"]}
    }))
    .unwrap();
    let mut i = identity(json!({
        "metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: UID, OIDC_MARKER: ["github:42"]}
    }));
    i.credentials = Some(linked);
    w.identities = vec![i];
    let (trace, outcome) = run(o.clone(), &w);
    assert_eq!(
        trace,
        after_recorded(&[
            "Unlink[\"github:42\"]",
            "Update(id-1)",
            "Sessions(\"id-1\")"
        ])
    );
    assert!(
        matches!(&synced(&outcome).change, Change::Updated(d) if d.contains(&Difference::OidcRemoved))
    );

    w.unlink = Some(Refusal::Invalid {
        reason: "last credential".into(),
        pointer: None,
    });
    let b = blocked(&run(o, &w).1).clone();
    assert_eq!((b.reason, b.stalled), ("InvalidSpec", true));
    assert!(b.message.contains("last credential"));
}

#[test]
fn verified_addresses_are_patched_once() {
    let mut s = base_spec();
    s.verified_addresses =
        serde_json::from_value(json!([{"value": "a@example.com", "via": "email"}])).unwrap();
    let o = recorded(&s);
    let w = holding(identity(json!({"verifiable_addresses": [
        {"value": "a@example.com", "via": "email", "verified": false, "status": "pending"}
    ]})));
    let (trace, outcome) = run(o, &w);
    assert_eq!(trace, after_recorded(&["Verify(1)", "Sessions(\"id-1\")"]));
    assert_eq!(synced(&outcome).change, Change::Unchanged);
}

#[test]
fn sessions_are_revoked_as_the_spec_says_and_counted() {
    let mut s = base_spec();
    s.state = Some(IdentityState::Inactive);
    s.sessions = serde_json::from_value(json!({"revokeOnDeactivate": true})).unwrap();
    let o = recorded(&s);
    let mut w = World::new();
    let mut i = identity(json!({}));
    i.state = KratosState::Inactive;
    w.identities = vec![i];
    w.sessions = vec![session("s1", true), session("s2", true)];
    let (trace, outcome) = run(o.clone(), &w);
    assert_eq!(
        trace[trace.len() - 2..],
        steps(&["Sessions(\"id-1\")", "Revoke(all=true, disable=[])"])[..]
    );
    assert_eq!(synced(&outcome).active_sessions, 0);

    // Active and no revocation asked: nothing revoked, both counted.
    let s = base_spec();
    let o = recorded(&s);
    w.identities = vec![identity(json!({}))];
    let (trace, outcome) = run(o, &w);
    assert!(!trace.iter().any(|s| s.starts_with("Revoke")));
    assert_eq!(synced(&outcome).active_sessions, 2);
}

#[test]
fn cleanup_deletes_or_releases_only_what_the_marker_proves_is_ours() {
    let s = base_spec();
    let ours =
        identity(json!({"metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: UID, "crm": 1}}));
    let theirs =
        identity(json!({"id": "id-9", "metadata_admin": {OWNER_MARKER: "x/y", UID_MARKER: "u9"}}));
    let mut o = recorded(&s);
    assert_eq!(cleanup(&o), Cleanup::Observe(Need::Recorded("id-1".into())));
    o.recorded = Some(Some(ours.clone()));
    assert_eq!(
        cleanup(&o),
        Cleanup::Delete {
            id: "id-1".into(),
            not_owned: false
        }
    );
    let mut orphan = base_spec();
    orphan.deletion_policy = Some(DeletionPolicy::Orphan);
    let mut o2 = recorded(&orphan);
    o2.recorded = Some(Some(ours.clone()));
    assert_eq!(
        cleanup(&o2),
        Cleanup::Release {
            id: "id-1".into(),
            metadata_admin: json!({"crm": 1}),
            not_owned: false
        }
    );

    // Status names another's identity: it is left alone, and ours is looked for by the
    // identifiers.
    o.recorded = Some(Some(theirs.clone()));
    assert!(matches!(cleanup(&o), Cleanup::Observe(Need::Schema { .. })));
    o.schema = Some(Some(customer()));
    assert_eq!(
        cleanup(&o),
        Cleanup::Observe(Need::Candidates(vec!["a@example.com".into()]))
    );
    o.candidates = Some(vec![theirs.clone()]);
    assert_eq!(cleanup(&o), Cleanup::Nothing { not_owned: true });
    o.candidates = Some(vec![theirs, ours]);
    assert_eq!(
        cleanup(&o),
        Cleanup::Delete {
            id: "id-1".into(),
            not_owned: true
        }
    );

    // No identifiers: the marker index, and the marker itself decides.
    let mut o = observed(&s);
    o.schema = Some(None);
    assert_eq!(cleanup(&o), Cleanup::Observe(Need::Marked));
    o.marked = Some(Some(identity(json!({"metadata_admin": null}))));
    assert_eq!(cleanup(&o), Cleanup::Nothing { not_owned: false });
}

/// The window after a start or a failed create: an earlier create may still commit.
const SETTLING: std::time::Duration = std::time::Duration::from_secs(12);

#[test]
fn while_a_create_may_commit_no_identity_is_no_answer_without_identifiers() {
    let s = spec(json!({"schemaId": "customer", "traits": {"email": "a@example.com"}}));
    let mut w = World::new();
    w.schema = None; // no identifiers
    let mut o = observed(&s);
    o.settling = Some(SETTLING);
    let (trace, outcome) = run(o.clone(), &w);
    assert_eq!(trace, steps(&[SCHEMA, "Namespace"]), "no create, no index");
    let b = blocked(&outcome);
    assert_eq!(b.reason, REASON_CREATE_PENDING);
    assert_eq!(b.retry_after, Some(SETTLING));
    assert!(!b.stalled && !b.warning);
    assert!(
        b.message.contains("2026-06-01T00:00:13Z"),
        "names when the window ends: {}",
        b.message
    );

    // What is found by the recorded id is used at once.
    w.identities = vec![identity(json!({}))];
    let mut r = recorded(&s);
    r.settling = Some(SETTLING);
    let (_, outcome) = run(r, &w);
    assert_eq!(synced(&outcome).identity_id, "id-1");

    // Once the window has passed, the marker index answers.
    o.settling = None;
    let (trace, _) = run(
        o,
        &World {
            schema: None,
            ..World::new()
        },
    );
    assert_eq!(trace, steps(&[SCHEMA, "Namespace", "Marked", "Create"]));
}

#[test]
fn with_unchanged_identifiers_a_create_may_go_while_an_earlier_one_may_commit() {
    // Kratos refuses a second identity with the same identifiers: the conflict finds the first.
    let s = base_spec();
    let mut o = observed(&s);
    o.batched = true;
    o.settling = Some(SETTLING);
    let (trace, outcome) = run(o.clone(), &World::new());
    assert_eq!(trace, steps(&[SCHEMA, "Namespace", "Create"]));
    assert_eq!(synced(&outcome).change, Change::Created);
}

#[test]
fn changed_identifiers_are_not_enough_to_find_an_earlier_create() {
    // An earlier create may have carried other identifiers: the lookup by the new ones cannot
    // see it, the marker index can, once no create can still commit.
    let s = base_spec();
    let mut o = observed(&s);
    o.batched = true;
    o.first_generation = false;
    o.settling = Some(SETTLING);
    let (trace, outcome) = run(o.clone(), &World::new());
    assert_eq!(trace, steps(&[SCHEMA, "Namespace", LOOKUP]));
    assert_eq!(blocked(&outcome).reason, REASON_CREATE_PENDING);

    o.settling = None;
    let (trace, outcome) = run(o.clone(), &World::new());
    assert_eq!(
        trace,
        steps(&[SCHEMA, "Namespace", LOOKUP, "Marked", "Create"])
    );
    assert_eq!(synced(&outcome).change, Change::Created);

    // The earlier create committed under the old email: taken back by its marker, no second.
    let mut w = holding(identity(json!({"traits": {"email": "old@example.com"}})));
    w.marked = Some("id-1".into());
    let (trace, outcome) = run(o, &w);
    assert_eq!(
        trace,
        steps(&[
            SCHEMA,
            "Namespace",
            LOOKUP,
            "Marked",
            "Update(id-1)",
            "Sessions(\"id-1\")"
        ])
    );
    assert_eq!(synced(&outcome).change, Change::TookBack);
}

#[test]
fn a_deletion_keeps_its_finalizer_while_an_earlier_create_may_commit() {
    let s = base_spec();
    let ours = identity(json!({}));

    // Nothing found yet: wait, and look again.
    let mut o = observed(&s);
    o.schema = Some(Some(customer()));
    o.candidates = Some(vec![]);
    o.settling = Some(SETTLING);
    assert_eq!(cleanup(&o), Cleanup::Wait(SETTLING));
    assert_eq!(finalizer_wait(&o), Some(SETTLING));

    // Found: deleted at once, and still the finalizer waits (a second create may commit).
    o.candidates = Some(vec![ours.clone()]);
    assert_eq!(
        cleanup(&o),
        Cleanup::Delete {
            id: "id-1".into(),
            not_owned: false
        }
    );
    assert_eq!(finalizer_wait(&o), Some(SETTLING));

    // After the window: unchanged identifiers are a proof.
    o.candidates = Some(vec![]);
    o.settling = None;
    assert_eq!(cleanup(&o), Cleanup::Nothing { not_owned: false });
    assert_eq!(finalizer_wait(&o), None);

    // Changed identifiers are not: the marker index decides.
    o.first_generation = false;
    assert_eq!(cleanup(&o), Cleanup::Observe(Need::Marked));
    o.marked = Some(Some(identity(
        json!({"traits": {"email": "old@example.com"}}),
    )));
    assert_eq!(
        cleanup(&o),
        Cleanup::Delete {
            id: "id-1".into(),
            not_owned: false
        }
    );
    o.marked = Some(None);
    assert_eq!(cleanup(&o), Cleanup::Nothing { not_owned: false });

    // Without identifiers, inside the window: no index is read, the finalizer waits.
    let mut o = observed(&s);
    o.schema = Some(None);
    o.settling = Some(SETTLING);
    assert_eq!(cleanup(&o), Cleanup::Wait(SETTLING));
}

#[test]
fn every_plan_settles_within_the_reconcile_s_step_limit() {
    // The longest path: adopt with an OIDC link to drop, a password to sync, an address to
    // verify and sessions to revoke.
    let mut s = with_password(base_spec(), "Sync");
    s.adoption = Some(AdoptionPolicy::IfUnowned);
    s.verified_addresses =
        serde_json::from_value(json!([{"value": "a@example.com", "via": "email"}])).unwrap();
    s.sessions = serde_json::from_value(json!({"revokeBefore": "2026-05-01T00:00:00Z"})).unwrap();
    let mut o = observed(&s);
    o.recorded_id = Some("gone".into());
    o.read_back = Some(identity(json!({})));
    let mut w = holding(identity(
        json!({"metadata_admin": null, "verifiable_addresses": [
            {"value": "a@example.com", "via": "email", "verified": false, "status": "pending"}
        ]}),
    ));
    w.sessions = vec![
        serde_json::from_value(
            json!({"id": "old", "active": true, "authenticated_at": "2026-01-01T00:00:00Z"}),
        )
        .unwrap(),
    ];
    let (trace, outcome) = run(o, &w);
    assert!(trace.len() < super::super::MAX_STEPS, "{trace:?}");
    assert_eq!(
        trace.last().map(String::as_str),
        Some("Revoke(all=false, disable=[\"old\"])")
    );
    assert_eq!(synced(&outcome).change, Change::Adopted);
}

#[test]
fn the_namespace_policy_refuses_adoption_and_foreign_identifiers() {
    use std::collections::BTreeMap;
    let closed = NamespacePolicy::from_metadata(&BTreeMap::new(), &BTreeMap::new());
    let mut adopting = base_spec();
    adopting.adoption = Some(AdoptionPolicy::IfUnowned);
    let ids = vec!["a@example.com".to_string()];
    let refused = tenancy_refusal(&adopting, &closed, true, &ids).unwrap();
    assert_eq!(refused.reason, REASON_FORBIDDEN);
    assert!(refused.stalled && refused.message.contains("allow-adoption"));
    assert_eq!(tenancy_refusal(&base_spec(), &closed, true, &ids), None);
    assert_eq!(
        tenancy_refusal(&adopting, &NamespacePolicy::unrestricted(), true, &ids),
        None
    );
    let narrow = NamespacePolicy::from_metadata(
        &BTreeMap::new(),
        &BTreeMap::from([(
            ANNOTATION_IDENTIFIER_PATTERNS.to_string(),
            "*@team-a.example.com".to_string(),
        )]),
    );
    let refused = tenancy_refusal(&base_spec(), &narrow, true, &ids).unwrap();
    assert!(refused.stalled && refused.message.contains("a@example.com"));
    let unknown = tenancy_refusal(&base_spec(), &narrow, false, &[]).unwrap();
    assert!(!unknown.stalled, "retried until the schema can be read");
    let ok = vec!["Bob@Team-A.example.com".to_string()];
    assert_eq!(tenancy_refusal(&base_spec(), &narrow, true, &ok), None);
}

#[test]
fn free_json_is_bounded_in_depth_and_size() {
    fn deep(levels: usize) -> Value {
        (0..levels).fold(json!("leaf"), |v, i| {
            if i % 2 == 0 {
                json!({ "k": v })
            } else {
                json!([v])
            }
        })
    }
    assert_eq!(nesting(&json!("x")), 0);
    assert_eq!(nesting(&json!({})), 1);
    assert_eq!(nesting(&json!({"a": [1, {"b": []}]})), 4);
    assert_eq!(nesting(&deep(500)), 500);
    let mut s = base_spec();
    assert!(check_limits(&s).is_ok());
    s.traits = json!({ "email": "a@example.com", "x": deep(MAX_NESTING - 1) });
    assert!(check_limits(&s).is_ok(), "exactly at the limit");
    s.traits = json!({ "email": "a@example.com", "x": deep(MAX_NESTING) });
    let refusal = check_limits(&s).unwrap_err();
    assert!(
        refusal.contains("spec.traits") && refusal.contains("32"),
        "{refusal}"
    );
    s.traits = json!({ "email": "a@example.com" });
    s.metadata_admin = Some(json!({ "blob": "x".repeat(MAX_FREE_JSON_BYTES) }));
    let refusal = check_limits(&s).unwrap_err();
    assert!(refusal.contains("spec.metadataAdmin"), "{refusal}");
}

#[test]
fn ownership_is_read_from_the_marker() {
    assert_eq!(ownership(&identity(json!({})), OWNER), Ownership::Ours);
    assert_eq!(
        ownership(&identity(json!({"metadata_admin": null})), OWNER),
        Ownership::Unowned
    );
    assert_eq!(
        ownership(&identity(json!({"metadata_admin": {"crm": 1}})), OWNER),
        Ownership::Unowned
    );
    assert_eq!(
        ownership(
            &identity(json!({"metadata_admin": {OWNER_MARKER: "x/y", UID_MARKER: "other"}})),
            OWNER
        ),
        Ownership::Other
    );
    // The same namespace/name with an old uid: the object was recreated; it is ours again.
    let recreated =
        identity(json!({"metadata_admin": {OWNER_MARKER: "ns/a", UID_MARKER: "old-uid"}}));
    assert_eq!(ownership(&recreated, OWNER), Ownership::Recreated);
    assert!(ownership(&recreated, OWNER).is_ours());
    // A uid alone, or an owner alone, of someone else is not ours.
    assert_eq!(
        ownership(
            &identity(json!({"metadata_admin": {UID_MARKER: "u2"}})),
            OWNER
        ),
        Ownership::Other
    );
    assert_eq!(
        ownership(
            &identity(json!({"metadata_admin": {OWNER_MARKER: "ns/b"}})),
            OWNER
        ),
        Ownership::Other
    );
    // The uid decides over a stale name (a marker the object wrote under its old name is
    // impossible, but the uid is the stronger proof).
    assert!(
        ownership(
            &identity(json!({"metadata_admin": {OWNER_MARKER: "x/y", UID_MARKER: UID}})),
            OWNER
        )
        .is_ours()
    );
    assert!(!Ownership::Unowned.is_ours() && !Ownership::Other.is_ours());
}

#[test]
fn existing_identities_are_taken_back_adopted_or_conflict() {
    let ours = identity(json!({"id": "ours"}));
    let unowned = identity(json!({"id": "free", "metadata_admin": null}));
    let other = identity(
        json!({"id": "theirs", "metadata_admin": {OWNER_MARKER: "x/y", UID_MARKER: "u2"}}),
    );
    assert_eq!(
        resolve_existing(&[], OWNER, AdoptionPolicy::Never),
        Existing::None
    );
    assert_eq!(
        resolve_existing(&[unowned.clone(), ours], OWNER, AdoptionPolicy::Never),
        Existing::TakeBack("ours".into())
    );
    assert_eq!(
        resolve_existing(
            std::slice::from_ref(&unowned),
            OWNER,
            AdoptionPolicy::IfUnowned
        ),
        Existing::Adopt("free".into())
    );
    assert!(
        matches!(resolve_existing(std::slice::from_ref(&unowned), OWNER, AdoptionPolicy::Never), Existing::Conflict(m) if m.contains("IfUnowned") && !m.contains("free"))
    );
    assert!(
        matches!(resolve_existing(&[other], OWNER, AdoptionPolicy::IfUnowned), Existing::Conflict(m) if !m.contains("x/y") && !m.contains("theirs"))
    );
    assert!(matches!(
        resolve_existing(&[unowned.clone(), unowned], OWNER, AdoptionPolicy::IfUnowned),
        Existing::Conflict(m) if m.contains("refusing")
    ));
}
