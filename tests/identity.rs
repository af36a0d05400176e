//! The Identity controller against the real apiserver and the real Kratos: every numbered
//! behaviour of the Identity issue. Each test runs its own operator, watching only its namespace.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kratos_operator::{
    api::{Identity, IdentitySchemaRef, OWNER_MARKER, UID_MARKER},
    kratos::{CreateIdentityBody, Identity as KratosIdentity, KratosClient, UpdateIdentityBody},
};
use kratos_operator_testenv::kratos::KratosOptions;
use kube::{Api, ResourceExt, api::DeleteParams};
use serde_json::{Value, json};
use support::{
    TestEnv, apply, events_for, eventually, kratos_client, login, ready_message, setup,
    start_operator, wait_event, wait_for, wait_ready,
};

const T: Duration = Duration::from_secs(60);

fn verifier(t: &TestEnv) -> KratosClient {
    kratos_client(&t.kratos_admin_url, &t.kratos_public_url)
}

async fn schema_ref(t: &TestEnv, name: &str, schema_id: &str) {
    apply::<IdentitySchemaRef>(
        t,
        json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef",
            "metadata": { "name": name }, "spec": { "schemaId": schema_id }
        }),
    )
    .await;
}

/// The `status.credentials.password.secretVersion` the operator records for a password imported
/// from `secret`: `<uid>/<resourceVersion>` (src/controller/identity/observe.rs).
fn secret_version(secret: &Secret) -> String {
    format!(
        "{}/{}",
        secret.metadata.uid.as_deref().expect("uid"),
        secret
            .metadata
            .resource_version
            .as_deref()
            .expect("resourceVersion")
    )
}

/// Ready=True, reason Synced, for the object's current generation.
fn synced(obj: &Identity) -> bool {
    obj.status.as_ref().is_some_and(|s| {
        s.observed_generation == obj.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "Synced")
    })
}

async fn kratos_identity(t: &TestEnv, id: &str) -> Option<KratosIdentity> {
    match verifier(t).get_identity(id, &[]).await {
        Ok(i) => Some(i),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("get identity: {e}"),
    }
}

fn identity_id(obj: &Identity) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.identity_id.clone())
        .expect("status.identityId")
}

async fn ready(t: &TestEnv, name: &str) -> Identity {
    wait_ready::<Identity>(t, name, "True", Some("Synced"), T).await
}

async fn count_with_email(t: &TestEnv, address: &str) -> usize {
    verifier(t)
        .find_by_credentials_identifier(address)
        .await
        .expect("lookup")
        .len()
}

#[tokio::test]
async fn apply_creates_the_identity_with_everything_in_the_spec() {
    let t = setup("id-apply").await;
    let _op = start_operator(&t).await;
    schema_ref(&t, "customer", "customer").await;
    let alice = t.email("Alice");
    t.identity(
        "alice",
        json!({
            "schemaRef": { "name": "customer" },
            "traits": { "email": alice, "name": { "first": "Alice" }, "age": 30 },
            "metadataPublic": { "plan": "pro" },
            "metadataAdmin": { "crm": "42" },
            "verifiedAddresses": [ { "value": alice, "via": "email" } ]
        }),
    )
    .await;
    let obj = ready(&t, "alice").await;
    let status = obj.status.clone().unwrap();
    assert_eq!(status.observed_generation, obj.metadata.generation);
    assert_eq!(status.identifier.as_deref(), Some(alice.as_str()));
    assert_eq!(status.state.as_deref(), Some("active"));
    assert_eq!(status.schema_id.as_deref(), Some("customer"));
    let k = kratos_identity(&t, &identity_id(&obj))
        .await
        .expect("exists in Kratos");
    assert_eq!(
        k.traits,
        json!({ "email": alice, "name": { "first": "Alice" }, "age": 30 })
    );
    assert_eq!(k.schema_id, "customer");
    assert_eq!(k.state.as_str(), "active");
    assert_eq!(k.metadata_public, Some(json!({ "plan": "pro" })));
    let admin = k.metadata_admin.expect("metadata_admin");
    assert_eq!(admin["crm"], "42");
    assert_eq!(admin[OWNER_MARKER], format!("{}/alice", t.namespace));
    assert_eq!(admin[UID_MARKER], obj.uid().unwrap());
    let addr = k
        .verifiable_addresses
        .iter()
        .find(|a| a.value.eq_ignore_ascii_case(&alice))
        .expect("address");
    assert!(addr.verified, "{addr:?}");
    wait_event(&t, "alice", "Created").await;
    t.cleanup().await;
}

#[tokio::test]
async fn spec_changes_update_kratos_and_an_unchanged_spec_writes_nothing() {
    let t = setup("id-update").await;
    let op = start_operator(&t).await;
    let bob = t.email("bob");
    t.identity(
        "bob",
        json!({ "schemaId": "customer", "traits": { "email": bob, "age": 1 } }),
    )
    .await;
    let obj = ready(&t, "bob").await;
    let id = identity_id(&obj);

    // Several resyncs (2 s each) with nothing changed: one list per sweep, no writes and no
    // per-identity reads. The window is the sweeps themselves (waited for, not slept through).
    let writes = op.kratos.metrics().writes();
    let gets = op.kratos.metrics().calls("get_identity");
    let lists = op.kratos.metrics().calls("list_identities");
    eventually("two drift sweeps to list Kratos", T, || async {
        (op.kratos.metrics().calls("list_identities") >= lists + 2).then_some(())
    })
    .await;
    assert_eq!(
        op.kratos.metrics().writes(),
        writes,
        "an unchanged spec must not write to Kratos"
    );
    assert_eq!(
        op.kratos.metrics().calls("get_identity"),
        gets,
        "no per-identity reads"
    );

    t.identity(
        "bob",
        json!({
            "schemaId": "customer", "traits": { "email": bob, "age": 2, "tier": "pro" },
            "state": "inactive", "metadataPublic": { "x": 1 }, "metadataAdmin": { "y": [1, 2] }
        }),
    )
    .await;
    ready(&t, "bob").await;
    let k = kratos_identity(&t, &id).await.unwrap();
    assert_eq!(k.traits, json!({ "email": bob, "age": 2, "tier": "pro" }));
    assert_eq!(k.state.as_str(), "inactive");
    assert_eq!(k.metadata_public, Some(json!({ "x": 1 })));
    assert_eq!(k.metadata_admin.as_ref().unwrap()["y"], json!([1, 2]));

    // Schema change: the employee schema needs a username.
    t.identity("bob", json!({
        "schemaId": "employee", "traits": { "username": format!("bob-{}", t.namespace), "email": bob }
    }))
    .await;
    let obj = ready(&t, "bob").await;
    assert_eq!(identity_id(&obj), id, "an update keeps the identity");
    let k = kratos_identity(&t, &id).await.unwrap();
    assert_eq!(k.schema_id, "employee");
    assert_eq!(k.state.as_str(), "active");
    assert_eq!(k.metadata_public, None);
    wait_event(&t, "bob", "Updated").await;
    t.cleanup().await;
}

#[tokio::test]
async fn drift_in_kratos_is_reverted_and_a_deleted_identity_is_recreated() {
    let t = setup("id-drift").await;
    let _op = start_operator(&t).await;
    let carol = t.email("carol");
    t.identity("carol", json!({ "schemaId": "customer", "traits": { "email": carol }, "metadataPublic": { "a": 1 } })).await;
    let obj = ready(&t, "carol").await;
    let id = identity_id(&obj);
    let k = verifier(&t);
    let current = k.get_identity(&id, &[]).await.unwrap();
    let edit = UpdateIdentityBody {
        schema_id: current.schema_id.clone(),
        traits: json!({ "email": carol, "name": { "first": "Mallory" } }),
        state: None,
        metadata_public: Some(json!({ "a": 2 })),
        metadata_admin: current.metadata_admin.clone(),
        credentials: None,
        external_id: None,
    };
    k.update_identity(&id, &edit).await.unwrap();
    eventually("the edit in Kratos to be reverted", T, || async {
        let i = kratos_identity(&t, &id).await?;
        (i.traits == json!({ "email": carol }) && i.metadata_public == Some(json!({ "a": 1 })))
            .then_some(())
    })
    .await;

    k.delete_identity(&id).await.unwrap();
    let new_id = eventually("the identity to be re-created", T, || async {
        let obj: Identity = Api::namespaced(t.client.clone(), &t.namespace)
            .get("carol")
            .await
            .ok()?;
        let new = obj
            .status
            .and_then(|s| s.identity_id)
            .filter(|n| *n != id)?;
        kratos_identity(&t, &new).await.map(|_| new)
    })
    .await;
    assert_ne!(new_id, id);
    assert_eq!(count_with_email(&t, &carol).await, 1);
    t.cleanup().await;
}

#[tokio::test]
async fn deletion_policies_delete_or_release_and_404_counts_as_done() {
    let t = setup("id-delete").await;
    let _op = start_operator(&t).await;
    let api: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let (del, orphan, gone) = (t.email("del"), t.email("orphan"), t.email("gone"));
    t.identity(
        "del",
        json!({ "schemaId": "customer", "traits": { "email": del } }),
    )
    .await;
    t.identity("orphan", json!({ "schemaId": "customer", "traits": { "email": orphan }, "deletionPolicy": "Orphan", "metadataAdmin": { "keep": true } })).await;
    t.identity(
        "gone",
        json!({ "schemaId": "customer", "traits": { "email": gone } }),
    )
    .await;
    let del_id = identity_id(&ready(&t, "del").await);
    let orphan_id = identity_id(&ready(&t, "orphan").await);
    let gone_id = identity_id(&ready(&t, "gone").await);

    // Already deleted in Kratos before the object goes: the 404 counts as done.
    verifier(&t).delete_identity(&gone_id).await.unwrap();
    for name in ["del", "orphan", "gone"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["del", "orphan", "gone"] {
        eventually(&format!("{name} to be deleted"), T, || async {
            matches!(api.get_opt(name).await, Ok(None)).then_some(())
        })
        .await;
    }
    assert!(
        kratos_identity(&t, &del_id).await.is_none(),
        "policy Delete removes the Kratos identity"
    );
    let kept = kratos_identity(&t, &orphan_id)
        .await
        .expect("policy Orphan keeps the identity");
    let admin = kept.metadata_admin.unwrap_or(Value::Null);
    assert!(
        admin.get(OWNER_MARKER).is_none() && admin.get(UID_MARKER).is_none(),
        "marker removed: {admin}"
    );
    assert_eq!(admin["keep"], true);
    // Deleted objects leave no duplicate behind either.
    assert_eq!(count_with_email(&t, &gone).await, 0);
    t.cleanup().await;
}

#[tokio::test]
async fn password_from_a_secret_logs_in_and_waits_for_a_missing_secret() {
    let t = setup("id-password").await;
    let _op = start_operator(&t).await;
    let dave = t.email("dave");
    t.identity(
        "dave",
        json!({
            "schemaId": "customer", "traits": { "email": dave },
            "credentials": { "password": { "secretRef": { "name": "dave-pw", "key": "password" } } }
        }),
    )
    .await;
    let waiting = wait_ready::<Identity>(&t, "dave", "False", Some("SecretNotFound"), T).await;
    assert!(ready_message(&waiting).contains("dave-pw"));
    assert_eq!(
        count_with_email(&t, &dave).await,
        0,
        "never invent a password: nothing is created yet"
    );
    t.secret("dave-pw", "password", "first-Password-1").await;
    ready(&t, "dave").await;
    login(&t.kratos_public_url, &dave, "first-Password-1")
        .await
        .expect("login with the imported password");

    // SetOnce (the default): a changed Secret is not imported. A negative check: a bounded
    // observation window (several resyncs) in which the import must not happen.
    t.secret("dave-pw", "password", "second-Password-2").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    login(&t.kratos_public_url, &dave, "first-Password-1")
        .await
        .expect("SetOnce keeps the first password");
    assert!(
        login(&t.kratos_public_url, &dave, "second-Password-2")
            .await
            .is_err()
    );
    t.cleanup().await;
}

#[tokio::test]
async fn policy_sync_reimports_a_changed_secret() {
    let t = setup("id-sync").await;
    let _op = start_operator(&t).await;
    let erin = t.email("erin");
    t.secret("erin-pw", "pw", "first-Password-1").await;
    t.identity("erin", json!({
        "schemaId": "customer", "traits": { "email": erin },
        "credentials": { "password": { "secretRef": { "name": "erin-pw", "key": "pw" }, "policy": "Sync" } }
    }))
    .await;
    let before = ready(&t, "erin").await;
    login(&t.kratos_public_url, &erin, "first-Password-1")
        .await
        .expect("first password");
    let rotated = t.secret("erin-pw", "pw", "second-Password-2").await;
    eventually("the new password to work", T, || async {
        login(&t.kratos_public_url, &erin, "second-Password-2")
            .await
            .ok()
    })
    .await;
    assert!(
        login(&t.kratos_public_url, &erin, "first-Password-1")
            .await
            .is_err()
    );
    let version = |o: &Identity| {
        o.status
            .as_ref()
            .and_then(|s| s.credentials.as_ref())
            .and_then(|c| c.password.as_ref())
            .map(|p| p.secret_version.clone())
    };
    // The status is written in the background, after the import that made the login work:
    // wait for the version of the rotated Secret itself.
    let want = secret_version(&rotated);
    let after = wait_for::<Identity, _>(
        &t,
        "erin",
        &format!("status.credentials.password.secretVersion to be {want}"),
        T,
        |o| version(o).as_deref() == Some(want.as_str()),
    )
    .await;
    assert_ne!(version(&before), version(&after));
    t.cleanup().await;
}

fn ssha256(password: &str, salt: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(password.as_bytes());
    h.update(salt);
    let mut raw = h.finalize().to_vec();
    raw.extend_from_slice(salt);
    format!(
        "{{SSHA256}}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[tokio::test]
async fn hashed_passwords_import_in_bcrypt_and_ssha256() {
    let t = setup("id-hash").await;
    let _op = start_operator(&t).await;
    let (b, s) = (t.email("bcrypt"), t.email("ssha"));
    t.secret(
        "hashes",
        "bcrypt",
        &bcrypt::hash("legacy-Password-1", 4).unwrap(),
    )
    .await;
    apply::<Secret>(&t, json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "hashes" },
        "stringData": { "bcrypt": bcrypt::hash("legacy-Password-1", 4).unwrap(), "ssha": ssha256("legacy-Password-2", b"pepper12") } })).await;
    t.identity("b", json!({ "schemaId": "customer", "traits": { "email": b },
        "credentials": { "password": { "hashedSecretRef": { "name": "hashes", "key": "bcrypt" } } } })).await;
    t.identity("s", json!({ "schemaId": "customer", "traits": { "email": s },
        "credentials": { "password": { "hashedSecretRef": { "name": "hashes", "key": "ssha" } } } })).await;
    ready(&t, "b").await;
    ready(&t, "s").await;
    login(&t.kratos_public_url, &b, "legacy-Password-1")
        .await
        .expect("bcrypt hash import");
    login(&t.kratos_public_url, &s, "legacy-Password-2")
        .await
        .expect("SSHA256 hash import");

    // A hash in an unknown format is refused by Kratos with a clear condition.
    t.secret("bad-hash", "h", "not-a-hash").await;
    t.identity(
        "x",
        json!({ "schemaId": "customer", "traits": { "email": t.email("x") },
        "credentials": { "password": { "hashedSecretRef": { "name": "bad-hash", "key": "h" } } } }),
    )
    .await;
    let bad = wait_ready::<Identity>(&t, "x", "False", Some("InvalidSpec"), T).await;
    assert!(
        ready_message(&bad).contains("hash"),
        "{}",
        ready_message(&bad)
    );
    assert!(
        !ready_message(&bad).contains("not-a-hash"),
        "the hash must not be echoed"
    );
    t.cleanup().await;
}

/// OIDC links of the spec are imported; an identity with links is not drift to a sweep (lists
/// carry no credentials); a link removed from the spec is unlinked in Kratos, and a link the
/// user added (self-service) is kept.
#[tokio::test]
async fn oidc_links_are_imported_unlinked_when_removed_and_others_kept() {
    let t = setup("id-oidc").await;
    let op = start_operator(&t).await;
    let (github, google) = (format!("gh-{}", t.namespace), format!("go-{}", t.namespace));
    let spec = |providers: Value| {
        json!({ "schemaId": "customer", "traits": { "email": t.email("frank") },
            "credentials": { "oidc": { "providers": providers } } })
    };
    t.identity(
        "frank",
        spec(json!([
            { "provider": "github", "subject": github },
            { "provider": "google", "subject": google }
        ])),
    )
    .await;
    let obj = ready(&t, "frank").await;
    let id = identity_id(&obj);
    let links = |k: &KratosIdentity| -> Vec<String> {
        let mut l = k
            .credentials
            .as_ref()
            .and_then(|c| c.get("oidc"))
            .map(|c| c.identifiers.clone())
            .unwrap_or_default();
        l.sort();
        l
    };
    let k = kratos_identity(&t, &id).await.unwrap();
    assert_eq!(
        links(&k),
        vec![format!("github:{github}"), format!("google:{google}")]
    );
    assert_eq!(
        obj.status.unwrap().credentials.unwrap().oidc,
        vec!["github".to_string(), "google".to_string()]
    );

    // The user links another provider themselves (as self-service sign-in would).
    let own = format!("self:{}", t.namespace);
    let mut body = UpdateIdentityBody {
        schema_id: k.schema_id.clone(),
        traits: k.traits.clone(),
        state: None,
        metadata_public: k.metadata_public.clone(),
        metadata_admin: k.metadata_admin.clone(),
        credentials: None,
        external_id: None,
    };
    body.credentials = Some(kratos_operator::kratos::IdentityCredentialsImport {
        password: None,
        oidc: Some(kratos_operator::kratos::OidcImport {
            config: kratos_operator::kratos::OidcImportConfig {
                providers: vec![kratos_operator::kratos::OidcProviderImport::new(
                    "self",
                    t.namespace.clone(),
                )],
            },
        }),
    });
    verifier(&t).update_identity(&id, &body).await.unwrap();

    // Two sweeps find nothing to do: no read of the identity itself.
    let gets = op.kratos.metrics().calls("get_identity");
    let sweeps = op.ctx.metrics.drift_sweeps.get();
    eventually("two drift sweeps", T, || async {
        (op.ctx.metrics.drift_sweeps.get() >= sweeps + 2).then_some(())
    })
    .await;
    assert_eq!(
        op.kratos.metrics().calls("get_identity"),
        gets,
        "an identity with OIDC links is not drift"
    );

    t.identity(
        "frank",
        spec(json!([{ "provider": "github", "subject": github }])),
    )
    .await;
    eventually(
        "google to be unlinked, the user's own link kept",
        T,
        || async {
            let k = kratos_identity(&t, &id).await?;
            let mut want = vec![format!("github:{github}"), own.clone()];
            want.sort();
            (links(&k) == want).then_some(())
        },
    )
    .await;
    let obj = ready(&t, "frank").await;
    assert_eq!(
        obj.status.unwrap().credentials.unwrap().oidc,
        vec!["github".to_string()]
    );
    t.cleanup().await;
}

#[tokio::test]
async fn existing_identities_conflict_or_are_adopted() {
    let t = setup("id-adopt").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-adoption"]).await;
    let _op = start_operator(&t).await;
    let gina = t.email("gina");
    let pre = verifier(&t)
        .create_identity(&CreateIdentityBody::new(
            "customer",
            json!({ "email": gina }),
        ))
        .await
        .unwrap();
    t.identity(
        "gina",
        json!({ "schemaId": "customer", "traits": { "email": gina } }),
    )
    .await;
    let conflict = wait_ready::<Identity>(&t, "gina", "False", Some("Conflict"), T).await;
    assert!(
        ready_message(&conflict).contains("IfUnowned"),
        "{}",
        ready_message(&conflict)
    );
    t.identity(
        "gina",
        json!({ "schemaId": "customer", "traits": { "email": gina }, "adoption": "IfUnowned" }),
    )
    .await;
    let obj = ready(&t, "gina").await;
    assert_eq!(identity_id(&obj), pre.id, "adopted, not duplicated");
    assert_eq!(count_with_email(&t, &gina).await, 1);
    let k = kratos_identity(&t, &pre.id).await.unwrap();
    assert_eq!(k.metadata_admin.unwrap()[UID_MARKER], obj.uid().unwrap());
    wait_event(&t, "gina", "Adopted").await;

    // The same email in a second object: Conflict, and the first stays untouched.
    t.identity("gina2", json!({ "schemaId": "customer", "traits": { "email": gina }, "adoption": "IfUnowned", "metadataPublic": { "evil": true } })).await;
    let second = wait_ready::<Identity>(&t, "gina2", "False", Some("Conflict"), T).await;
    // Said without naming the owner or the identity: a message is no oracle of other objects.
    let message = ready_message(&second);
    assert!(
        message.contains("another Identity object manages it"),
        "{message}"
    );
    assert!(
        !message.contains(&format!("{}/gina", t.namespace)) && !message.contains(&pre.id),
        "{message}"
    );
    assert_eq!(
        kratos_identity(&t, &pre.id).await.unwrap().metadata_public,
        None
    );
    t.cleanup().await;
}

#[tokio::test]
async fn an_identity_carrying_the_objects_uid_is_taken_back_without_a_duplicate() {
    let t = setup("id-takeback").await;
    let hank = t.email("hank");
    // The object exists but no operator runs: as if it crashed between create and status write.
    // (The operator installs the CRDs when it starts; here the object comes first, and on a
    // fresh environment no other test may have installed them yet.)
    support::install_crds(&t.client).await;
    let obj = t
        .identity(
            "hank",
            json!({ "schemaId": "customer", "traits": { "email": hank } }),
        )
        .await;
    let mut body = CreateIdentityBody::new("customer", json!({ "email": hank }));
    body.metadata_admin = Some(
        json!({ OWNER_MARKER: format!("{}/hank", t.namespace), UID_MARKER: obj.uid().unwrap() }),
    );
    let pre = verifier(&t).create_identity(&body).await.unwrap();
    let _op = start_operator(&t).await;
    let obj = ready(&t, "hank").await;
    assert_eq!(identity_id(&obj), pre.id);
    assert_eq!(count_with_email(&t, &hank).await, 1);
    // The Event of the take-back, then: no Warning before it.
    wait_event(&t, "hank", "Recovered").await;
    let events = events_for(&t, "hank").await;
    assert!(
        !events.iter().any(|e| e.type_.as_deref() == Some("Warning")),
        "taken back silently: {events:?}"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn invalid_traits_stall_without_calling_kratos_until_fixed() {
    let t = setup("id-invalid").await;
    let op = start_operator(&t).await;
    schema_ref(&t, "customer", "customer").await;
    wait_ready::<IdentitySchemaRef>(&t, "customer", "True", Some("Resolved"), T).await;
    t.identity("ivy", json!({ "schemaRef": { "name": "customer" }, "traits": { "email": "not-an-email", "age": -1 } })).await;
    let bad = wait_ready::<Identity>(&t, "ivy", "False", Some("InvalidSpec"), T).await;
    let message = ready_message(&bad);
    assert!(
        message.contains("/traits/email") && message.contains("/traits/age"),
        "{message}"
    );
    let stalled = bad
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .expect("Stalled");
    assert_eq!(stalled.status, "True");
    // Validation happens before any Kratos identity call, and nothing retries in a loop.
    let identity_calls = || {
        [
            "get_identity",
            "create_identity",
            "update_identity",
            "list_identities",
            "find_by_credentials_identifier",
        ]
        .iter()
        .map(|op_name| op.kratos.metrics().calls(op_name))
        .sum::<u64>()
    };
    let before = identity_calls();
    // A negative check: a bounded observation window (several resyncs) without any call.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        identity_calls(),
        before,
        "no Kratos calls while the spec is unchanged"
    );
    assert_eq!(before, 0, "client-side validation must come first");
    t.identity("ivy", json!({ "schemaRef": { "name": "customer" }, "traits": { "email": t.email("ivy"), "age": 1 } })).await;
    ready(&t, "ivy").await;
    t.cleanup().await;
}

#[tokio::test]
async fn kratos_down_reports_unavailable_and_converges_without_duplicates() {
    let t = setup("id-down").await;
    let (mut kratos, dir) = support::private_kratos(&t, KratosOptions::default()).await;
    let _op = support::start_operator_with(
        &t,
        &kratos.admin_url(),
        &kratos.public_url(),
        support::test_settings(&t.namespace),
    )
    .await;
    let jack = t.email("jack");
    t.identity(
        "jack",
        json!({ "schemaId": "customer", "traits": { "email": jack } }),
    )
    .await;
    ready(&t, "jack").await;
    kratos.stop();
    t.identity(
        "jack",
        json!({ "schemaId": "customer", "traits": { "email": jack, "tier": "pro" } }),
    )
    .await;
    t.identity(
        "kate",
        json!({ "schemaId": "customer", "traits": { "email": t.email("kate") } }),
    )
    .await;
    wait_ready::<Identity>(&t, "kate", "False", Some("KratosUnavailable"), T).await;
    wait_ready::<Identity>(&t, "jack", "False", Some("KratosUnavailable"), T).await;
    let kratos = tokio::task::spawn_blocking(move || {
        kratos.restart().expect("restart Kratos");
        kratos
    })
    .await
    .unwrap();
    let jack_obj =
        wait_ready::<Identity>(&t, "jack", "True", Some("Synced"), Duration::from_secs(90)).await;
    wait_ready::<Identity>(&t, "kate", "True", Some("Synced"), Duration::from_secs(90)).await;
    let k = kratos_client(&kratos.admin_url(), &kratos.public_url());
    let found = k.find_by_credentials_identifier(&jack).await.unwrap();
    assert_eq!(found.len(), 1, "no duplicate");
    assert_eq!(found[0].id, identity_id(&jack_obj));
    assert_eq!(found[0].traits["tier"], "pro");
    assert_eq!(
        k.find_by_credentials_identifier(&t.email("kate"))
            .await
            .unwrap()
            .len(),
        1
    );
    support::drop_kratos(kratos, dir, false).await;
    t.cleanup().await;
}

/// Flux (with `wait: true`), kpt and `kubectl wait` read objects with kstatus, to which an object
/// without status is Current: a new Identity must have a status that says InProgress before
/// Kratos has answered, in the default mode (batched creates) and in the per-object mode.
#[tokio::test]
async fn a_new_identity_is_in_progress_for_kstatus_before_kratos_answers() {
    for per_object in [false, true] {
        let t = setup("id-kstatus").await;
        let silent = support::silent_server().await;
        let mut config = kratos_operator::kratos::ClientConfig::new(silent.parse().unwrap());
        config.public_url = Some(silent.parse().unwrap());
        config.request_timeout = Duration::from_secs(600);
        let kratos = KratosClient::new(config).unwrap();
        let settings = support::mode_settings(&t.namespace, per_object);
        let _op = support::start_operator_with_client(&t, kratos, settings).await;
        let names: Vec<String> = (0..10).map(|i| format!("new-{i}")).collect();
        for name in &names {
            t.identity(
                name,
                json!({ "schemaId": "customer", "traits": { "email": t.email(name) } }),
            )
            .await;
        }
        for name in &names {
            wait_for::<Identity, _>(
                &t,
                name,
                &format!(
                    "InProgress for kstatus, reason Progressing (per-object mode: {per_object})"
                ),
                T,
                |o| {
                    support::kstatus(&serde_json::to_value(o).expect("json")) == "InProgress"
                        && o.status
                            .as_ref()
                            .and_then(|s| kratos_operator::api::conditions::ready(&s.conditions))
                            .is_some_and(|c| c.reason == "Progressing")
                },
            )
            .await;
        }
        t.cleanup().await;
    }
}

/// `verifiedAddresses` added to the spec of an existing identity are verified in Kratos (the
/// PATCH path), and an address un-verified in Kratos is drift that the default mode reverts.
#[tokio::test]
async fn verified_addresses_are_set_on_existing_identities_and_kept_verified() {
    use kratos_operator::kratos::JsonPatchOp;
    let t = setup("id-verified").await;
    let _op = start_operator(&t).await;
    let vera = t.email("vera");
    let spec = |verified: bool| {
        let mut s = json!({ "schemaId": "customer", "traits": { "email": vera } });
        if verified {
            s["verifiedAddresses"] = json!([{ "value": vera, "via": "email" }]);
        }
        s
    };
    t.identity("vera", spec(false)).await;
    let id = identity_id(&ready(&t, "vera").await);
    async fn verified(t: &TestEnv, id: &str) -> Option<bool> {
        let k = kratos_identity(t, id).await?;
        Some(k.verifiable_addresses.first()?.verified)
    }
    assert_eq!(verified(&t, &id).await, Some(false), "not verified yet");
    t.identity("vera", spec(true)).await;
    eventually("the address to be verified", T, || async {
        (verified(&t, &id).await == Some(true)).then_some(())
    })
    .await;

    verifier(&t)
        .patch_identity(
            &id,
            &[
                JsonPatchOp::replace("/verifiable_addresses/0/verified", json!(false)),
                JsonPatchOp::replace("/verifiable_addresses/0/status", json!("pending")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        verified(&t, &id).await,
        Some(false),
        "un-verified in Kratos"
    );
    eventually("a sweep to verify it again", T, || async {
        (verified(&t, &id).await == Some(true)).then_some(())
    })
    .await;
    t.cleanup().await;
}

/// A finalizer removed by hand (a `kubectl patch`, a tool that strips metadata) is put back:
/// without it, deleting the object would leave its Kratos identity behind.
#[tokio::test]
async fn a_finalizer_removed_by_hand_is_put_back_and_deletion_still_reaches_kratos() {
    use kube::api::{Patch, PatchParams};
    let t = setup("id-finalizer").await;
    let _op = start_operator(&t).await;
    let api: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    t.identity(
        "fin",
        json!({ "schemaId": "customer", "traits": { "email": t.email("fin") } }),
    )
    .await;
    let id = identity_id(&ready(&t, "fin").await);
    api.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
    eventually("the finalizer to be back", T, || async {
        let obj = api.get("fin").await.ok()?;
        obj.finalizers()
            .iter()
            .any(|f| f == kratos_operator::api::FINALIZER)
            .then_some(())
    })
    .await;
    api.delete("fin", &DeleteParams::default()).await.unwrap();
    support::wait_gone(&api, "fin", T).await;
    assert!(
        kratos_identity(&t, &id).await.is_none(),
        "the deletion reached Kratos"
    );
    t.cleanup().await;
}

/// Sessions are counted and revoked as the spec says, also for logins after the object was
/// synced: in the default mode (drift sweeps list the active sessions) and in the per-object
/// mode (each object is resynced).
#[tokio::test]
async fn sessions_are_counted_and_revoked() {
    for per_object in [false, true] {
        sessions_scenario(per_object).await;
    }
}

async fn sessions_scenario(per_object: bool) {
    let t = setup("id-sessions").await;
    let settings = support::mode_settings(&t.namespace, per_object);
    let _op =
        support::start_operator_with(&t, &t.kratos_admin_url, &t.kratos_public_url, settings).await;
    let mode = if per_object { "per-object" } else { "default" };
    let liz = t.email("liz");
    t.secret("liz-pw", "pw", "session-Password-1").await;
    let spec = |extra: Value| {
        let mut s = json!({ "schemaId": "customer", "traits": { "email": liz },
            "credentials": { "password": { "secretRef": { "name": "liz-pw", "key": "pw" } } } });
        if let (Value::Object(m), Value::Object(e)) = (&mut s, extra) {
            m.extend(e);
        }
        s
    };
    t.identity("liz", spec(json!({}))).await;
    let obj = ready(&t, "liz").await;
    let id = identity_id(&obj);
    login(&t.kratos_public_url, &liz, "session-Password-1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cutoff = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    login(&t.kratos_public_url, &liz, "session-Password-1")
        .await
        .unwrap();
    let api: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let active_sessions = |n: i32| {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move { (api.get("liz").await.ok()?.status?.active_sessions == Some(n)).then_some(()) }
        }
    };
    eventually(
        &format!("status.activeSessions to show 2 ({mode})"),
        T,
        active_sessions(2),
    )
    .await;

    t.identity(
        "liz",
        spec(json!({ "sessions": { "revokeBefore": cutoff.to_string() } })),
    )
    .await;
    eventually("only the older session to be disabled", T, || async {
        let sessions = verifier(&t)
            .list_identity_sessions(&id, Some(true))
            .await
            .ok()?;
        (sessions.len() == 1 && sessions[0].authenticated_at.is_some_and(|a| a > cutoff))
            .then_some(())
    })
    .await;
    eventually(
        &format!("status.activeSessions to show 1 ({mode})"),
        T,
        active_sessions(1),
    )
    .await;

    // A cutoff in the future revokes every session authenticated before it, including logins
    // after the object was synced.
    let future = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    t.identity(
        "liz",
        spec(json!({ "sessions": { "revokeBefore": future.to_string() } })),
    )
    .await;
    wait_for::<Identity, _>(&t, "liz", "Synced with no active session", T, |o| {
        synced(o) && o.status.as_ref().and_then(|s| s.active_sessions) == Some(0)
    })
    .await;
    login(&t.kratos_public_url, &liz, "session-Password-1")
        .await
        .unwrap();
    eventually(
        &format!("the later login to be revoked ({mode})"),
        T,
        || async {
            verifier(&t)
                .list_identity_sessions(&id, Some(true))
                .await
                .ok()?
                .is_empty()
                .then_some(())
        },
    )
    .await;

    t.identity(
        "liz",
        spec(json!({ "state": "inactive", "sessions": { "revokeOnDeactivate": true } })),
    )
    .await;
    eventually("every session to be revoked", T, || async {
        verifier(&t)
            .list_identity_sessions(&id, Some(true))
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;
    // The status follows in the background: wait for the count itself, for this generation.
    wait_for::<Identity, _>(
        &t,
        "liz",
        "Ready=True Synced with status.activeSessions 0",
        T,
        |o| synced(o) && o.status.as_ref().and_then(|s| s.active_sessions) == Some(0),
    )
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn events_cover_the_lifecycle_and_never_contain_a_password() {
    let t = setup("id-events").await;
    let _op = start_operator(&t).await;
    let mike = t.email("mike");
    t.secret("mike-pw", "pw", "Event-Secret-Password-9").await;
    let spec = json!({ "schemaId": "customer", "traits": { "email": mike },
        "credentials": { "password": { "secretRef": { "name": "mike-pw", "key": "pw" }, "policy": "Sync" } } });
    t.identity("mike", spec.clone()).await;
    ready(&t, "mike").await;
    t.identity("mike", json!({ "schemaId": "customer", "traits": { "email": mike, "tier": "free" },
        "credentials": { "password": { "secretRef": { "name": "mike-pw", "key": "pw" }, "policy": "Sync" } } })).await;
    eventually("an Updated event", T, || async {
        events_for(&t, "mike")
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("Updated"))
            .then_some(())
    })
    .await;
    t.identity(
        "nope",
        json!({ "schemaId": "customer", "traits": { "email": t.email("nope") },
        "credentials": { "password": { "secretRef": { "name": "missing", "key": "pw" } } } }),
    )
    .await;
    wait_ready::<Identity>(&t, "nope", "False", Some("SecretNotFound"), T).await;
    Api::<Identity>::namespaced(t.client.clone(), &t.namespace)
        .delete("mike", &DeleteParams::default())
        .await
        .unwrap();
    eventually("a Deleted event", T, || async {
        events_for(&t, "mike")
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("Deleted"))
            .then_some(())
    })
    .await;
    // Events are published in the background (the status of "nope" says SecretNotFound before
    // its Event exists): wait for each of the others too, then read them all.
    wait_event(&t, "mike", "Created").await;
    let warning = wait_event(&t, "nope", "SecretNotFound").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let mut all = events_for(&t, "mike").await;
    all.extend(events_for(&t, "nope").await);
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("Event-Secret-Password-9"));
    t.cleanup().await;
}

#[tokio::test]
async fn schema_refs_resolve_report_roles_and_gate_identities() {
    let t = setup("id-schemaref").await;
    let _op = start_operator(&t).await;
    // An Identity whose schemaRef does not exist yet waits.
    t.identity("nina", json!({ "schemaRef": { "name": "staff" }, "traits": { "username": format!("nina-{}", t.namespace), "email": t.email("nina") } })).await;
    let waiting = wait_ready::<Identity>(&t, "nina", "False", Some("SchemaNotReady"), T).await;
    assert!(ready_message(&waiting).contains("staff"));
    schema_ref(&t, "staff", "employee").await;
    let sr = wait_ready::<IdentitySchemaRef>(&t, "staff", "True", Some("Resolved"), T).await;
    let status = sr.status.unwrap();
    assert_eq!(status.identifier_traits, vec!["username"]);
    assert_eq!(status.recovery_traits, vec!["email"]);
    assert!(status.digest.unwrap().starts_with("sha256:"));
    let nina = ready(&t, "nina").await;
    assert_eq!(
        nina.status.unwrap().identifier,
        Some(format!("nina-{}", t.namespace))
    );

    schema_ref(&t, "ghost", "no-such-schema").await;
    wait_ready::<IdentitySchemaRef>(&t, "ghost", "False", Some("SchemaNotFound"), T).await;
    t.cleanup().await;
}

/// Lets the schemas `ids` of a private Kratos accept a `nickname` trait, and restarts it so that
/// it serves them.
async fn allow_nickname(
    kratos: kratos_operator_testenv::kratos::KratosInstance,
    ids: &[&str],
) -> kratos_operator_testenv::kratos::KratosInstance {
    for id in ids {
        let path = kratos.schema_path(id);
        let mut schema: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        schema["properties"]["traits"]["properties"]["nickname"] = json!({ "type": "string" });
        std::fs::write(&path, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
    }
    tokio::task::spawn_blocking(move || {
        let mut kratos = kratos;
        kratos.restart().expect("restart Kratos");
        kratos
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_schema_change_in_kratos_reconciles_the_identities_that_use_it() {
    use kratos_operator_testenv::kratos::schemas;
    let t = setup("id-schemachange").await;
    let (kratos, dir) = support::private_kratos(&t, KratosOptions::default()).await;
    let _op = support::start_operator_with(
        &t,
        &kratos.admin_url(),
        &kratos.public_url(),
        support::test_settings(&t.namespace),
    )
    .await;
    schema_ref(&t, "customer", schemas::CUSTOMER).await;
    let before = wait_ready::<IdentitySchemaRef>(&t, "customer", "True", Some("Resolved"), T).await;
    // `nickname` is not allowed by the schemas yet. `ida` names its schema by id only: no
    // IdentitySchemaRef refreshes that one, the Identity controller must.
    t.identity("otto", json!({ "schemaRef": { "name": "customer" }, "traits": { "email": t.email("otto"), "nickname": "O" } })).await;
    t.identity("ida", json!({ "schemaId": schemas::EMPLOYEE, "traits": { "username": "ida", "email": t.email("ida"), "nickname": "I" } })).await;
    wait_ready::<Identity>(&t, "otto", "False", Some("InvalidSpec"), T).await;
    wait_ready::<Identity>(&t, "ida", "False", Some("InvalidSpec"), T).await;

    let kratos = allow_nickname(kratos, &[schemas::CUSTOMER, schemas::EMPLOYEE]).await;
    let after = eventually("the digest to change", Duration::from_secs(60), || async {
        let sr: IdentitySchemaRef = Api::namespaced(t.client.clone(), &t.namespace)
            .get("customer")
            .await
            .ok()?;
        let d = sr.status.as_ref()?.digest.clone()?;
        (Some(&d) != before.status.as_ref().unwrap().digest.as_ref()).then_some(sr)
    })
    .await;
    wait_event(&t, "customer", "SchemaChanged").await;
    let otto = ready(&t, "otto").await;
    let ida = ready(&t, "ida").await;
    assert!(after.status.unwrap().digest.is_some());
    let k = kratos_client(&kratos.admin_url(), &kratos.public_url());
    assert_eq!(
        k.get_identity(&identity_id(&ida), &[])
            .await
            .unwrap()
            .traits["nickname"],
        "I"
    );
    assert_eq!(
        k.get_identity(&identity_id(&otto), &[])
            .await
            .unwrap()
            .traits["nickname"],
        "O"
    );
    support::drop_kratos(kratos, dir, false).await;
    t.cleanup().await;
}

#[tokio::test]
async fn per_object_mode_resyncs_each_identity_and_reverts_drift() {
    let t = setup("id-perobject").await;
    let op = support::start_operator_with(
        &t,
        &t.kratos_admin_url,
        &t.kratos_public_url,
        support::per_object_settings(&t.namespace),
    )
    .await;
    let pat = t.email("pat");
    t.identity(
        "pat",
        json!({ "schemaId": "customer", "traits": { "email": pat } }),
    )
    .await;
    let obj = ready(&t, "pat").await;
    assert_eq!(op.kratos.metrics().calls("batch_patch_identities"), 0);
    assert_eq!(op.kratos.metrics().calls("create_identity"), 1);
    let id = identity_id(&obj);
    let gets = op.kratos.metrics().calls("get_identity");
    eventually("two resyncs to read the identity", T, || async {
        (op.kratos.metrics().calls("get_identity") >= gets + 2).then_some(())
    })
    .await;
    let k = verifier(&t);
    let current = k.get_identity(&id, &[]).await.unwrap();
    let mut edit = UpdateIdentityBody {
        schema_id: current.schema_id.clone(),
        traits: json!({ "email": pat, "tier": "enterprise" }),
        state: None,
        metadata_public: None,
        metadata_admin: current.metadata_admin.clone(),
        credentials: None,
        external_id: None,
    };
    edit.state = Some(kratos_operator::kratos::IdentityState::Inactive);
    k.update_identity(&id, &edit).await.unwrap();
    eventually("the edit to be reverted", T, || async {
        let i = kratos_identity(&t, &id).await?;
        (i.traits == json!({ "email": pat }) && i.state.as_str() == "active").then_some(())
    })
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn one_batch_with_valid_invalid_and_conflicting_items_gives_each_object_its_own_condition() {
    let t = setup("id-batch").await;
    let mut settings = support::test_settings(&t.namespace);
    settings.batch_window = Duration::from_millis(1500);
    settings.max_concurrent_reconciles = 32;
    let op =
        support::start_operator_with(&t, &t.kratos_admin_url, &t.kratos_public_url, settings).await;
    let taken = t.email("taken");
    verifier(&t)
        .create_identity(&CreateIdentityBody::new(
            "customer",
            json!({ "email": taken }),
        ))
        .await
        .unwrap();
    t.secret("bad-hash", "h", "not-a-hash").await;
    for i in 0..4 {
        t.identity(
            &format!("ok{i}"),
            json!({ "schemaId": "customer", "traits": { "email": t.email(&format!("ok{i}")) } }),
        )
        .await;
    }
    // schemaId only: no client-side validation, so Kratos' own answer must reach the object.
    t.identity(
        "invalid",
        json!({ "schemaId": "employee", "traits": { "username": "X!", "email": t.email("inv") } }),
    )
    .await;
    t.identity(
        "conflict",
        json!({ "schemaId": "customer", "traits": { "email": taken } }),
    )
    .await;
    t.identity(
        "hash",
        json!({ "schemaId": "customer", "traits": { "email": t.email("hash") },
        "credentials": { "password": { "hashedSecretRef": { "name": "bad-hash", "key": "h" } } } }),
    )
    .await;
    for i in 0..4 {
        ready(&t, &format!("ok{i}")).await;
    }
    let invalid = wait_ready::<Identity>(&t, "invalid", "False", Some("InvalidSpec"), T).await;
    assert!(
        ready_message(&invalid).contains("/traits/username"),
        "{}",
        ready_message(&invalid)
    );
    let conflict = wait_ready::<Identity>(&t, "conflict", "False", Some("Conflict"), T).await;
    assert!(
        ready_message(&conflict).contains("IfUnowned"),
        "{}",
        ready_message(&conflict)
    );
    let hash = wait_ready::<Identity>(&t, "hash", "False", Some("InvalidSpec"), T).await;
    assert!(
        ready_message(&hash).contains("hash"),
        "{}",
        ready_message(&hash)
    );
    assert!(
        op.kratos.metrics().calls("batch_patch_identities") >= 1,
        "creates went through batches"
    );
    for i in 0..4 {
        assert_eq!(count_with_email(&t, &t.email(&format!("ok{i}"))).await, 1);
    }
    assert_eq!(count_with_email(&t, &taken).await, 1);
    t.cleanup().await;
}

/// An object deleted right after its create: its finalizer's cleanup deletes the identity, and
/// the read-back a new object gets a settle time after its first reconcile (in case a deletion
/// raced its finalizer) has nothing left to do: it neither claims that the finalizer never ran
/// nor calls Kratos once the object is gone. The create is slowed by a second, so that the
/// read-back comes well after the finalizer (which waits a settle time from the create's start).
#[tokio::test]
async fn an_identity_deleted_right_after_its_create_is_cleaned_up_once() {
    let logs = support::logs::capture();
    let t = setup("id-delete-new").await;
    let slow_create = support::proxy::KratosProxy::start(&t.kratos_admin_url, |request| {
        if request.path == "/admin/identities" && request.method != axum::http::Method::GET {
            support::proxy::Fault::Delay(Duration::from_secs(1))
        } else {
            support::proxy::Fault::Forward
        }
    })
    .await;
    let settings = kratos_operator::controller::Settings {
        // No sweep or resync within the test: every Kratos call belongs to the deletion.
        resync_interval: Duration::from_secs(300),
        schema_recheck_interval: Duration::from_secs(300),
        ..support::test_settings(&t.namespace)
    };
    let settle = settings.create_settle_time;
    let op =
        support::start_operator_with(&t, &slow_create.url, &t.kratos_public_url, settings).await;
    let api: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let email = t.email("new");
    t.identity(
        "new",
        json!({ "schemaId": "customer", "traits": { "email": email } }),
    )
    .await;
    let id = identity_id(&ready(&t, "new").await);
    api.delete("new", &DeleteParams::default()).await.unwrap();
    eventually("the object to be deleted", T, || async {
        matches!(api.get_opt("new").await, Ok(None)).then_some(())
    })
    .await;
    assert!(
        kratos_identity(&t, &id).await.is_none(),
        "deleted in Kratos"
    );
    let calls = op.kratos.metrics().total_calls();
    // The read-back comes a settle time after the reconcile that made the identity, which was
    // before the deletion began.
    tokio::time::sleep(settle + Duration::from_secs(1)).await;
    assert_eq!(
        op.kratos.metrics().total_calls(),
        calls,
        "no Kratos call for an object whose cleanup is done"
    );
    let object_ref = format!("Identity.v1alpha1.kratos-operator.dev/new.{}", t.namespace);
    let claims: Vec<String> = logs
        .text()
        .lines()
        .filter(|l| l.contains(&object_ref) && l.contains("finalizer never ran"))
        .map(str::to_string)
        .collect();
    assert!(
        claims.is_empty(),
        "the finalizer's cleanup ran; nothing may say it did not: {claims:#?}"
    );
    assert_eq!(count_with_email(&t, &email).await, 0);
    t.cleanup().await;
}

/// Kratos calls `op` made, by operation (for a failure's message).
fn calls_of(op: &support::Operator) -> Vec<(&'static str, u64)> {
    let m = op.kratos.metrics();
    [
        "list_identities",
        "list_sessions",
        "get_identity",
        "list_identity_sessions",
        "update_identity",
        "patch_identity",
        "get_schema",
        "list_schemas",
    ]
    .into_iter()
    .map(|name| (name, m.calls(name)))
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// Waits until `op` has finished a drift sweep.
async fn first_sweep(op: &support::Operator) {
    eventually("the first drift sweep", T, || async {
        (op.ctx.metrics.drift_sweeps.get() >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_restarted_operator_trusts_synced_statuses_and_notices_what_changed_while_it_was_down() {
    use kratos_operator_testenv::kratos::schemas;
    const PLAIN: usize = 30;
    let t = setup("id-restart").await;
    let (kratos, dir) = support::private_kratos(&t, KratosOptions::default()).await;
    let settings = || support::test_settings(&t.namespace);
    let op =
        support::start_operator_with(&t, &kratos.admin_url(), &kratos.public_url(), settings())
            .await;
    schema_ref(&t, "customer", schemas::CUSTOMER).await;
    wait_ready::<IdentitySchemaRef>(&t, "customer", "True", Some("Resolved"), T).await;
    let customer = |user: &str| json!({ "schemaRef": { "name": "customer" }, "traits": { "email": t.email(user) } });
    for i in 0..PLAIN {
        t.identity(&format!("plain-{i}"), customer(&format!("plain-{i}")))
            .await;
    }
    t.secret("pw-secret", "pw", "first-Passw0rd-x1").await;
    let mut pw = customer("pw");
    pw["credentials"] = json!({ "password": { "secretRef": { "name": "pw-secret", "key": "pw" }, "policy": "Sync" } });
    t.identity("pw", pw).await;
    t.identity("drift", customer("drift")).await;
    for i in 0..PLAIN {
        ready(&t, &format!("plain-{i}")).await;
    }
    let drift = identity_id(&ready(&t, "drift").await);
    ready(&t, "pw").await;
    // One active session, so that the restart has sessions to count.
    login(&kratos.public_url(), &t.email("pw"), "first-Passw0rd-x1")
        .await
        .expect("login with the first password");
    let api: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    eventually("pw's session counted", T, || async {
        (api.get("pw").await.ok()?.status?.active_sessions == Some(1)).then_some(())
    })
    .await;
    op.stop();

    // While no operator runs: the password Secret changes, and an identity is changed in Kratos.
    t.secret("pw-secret", "pw", "second-Passw0rd-x2").await;
    let k = kratos_client(&kratos.admin_url(), &kratos.public_url());
    k.patch_identity(
        &drift,
        &[kratos_operator::kratos::JsonPatchOp::replace(
            "/traits/email",
            json!(t.email("someone-else")),
        )],
    )
    .await
    .unwrap();

    let op =
        support::start_operator_with(&t, &kratos.admin_url(), &kratos.public_url(), settings())
            .await;
    first_sweep(&op).await;
    eventually("the new password imported", T, || async {
        login(&kratos.public_url(), &t.email("pw"), "second-Passw0rd-x2")
            .await
            .ok()
    })
    .await;
    eventually("the drift reverted", T, || async {
        (k.get_identity(&drift, &[]).await.ok()?.traits["email"] == json!(t.email("drift")))
            .then_some(())
    })
    .await;
    // Quiet: no reconcile is left to run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = PLAIN + 2;
    // Until the first sweep's work is done: the schema (1), the sweep's lists (1 + 1), the two
    // objects it found (a read each, sessions, a write each), and the Secret watch's own look.
    let calls = op.kratos.metrics().total_calls();
    let budget = n.div_ceil(500) as u64 + 1 + 10;
    assert!(
        calls <= budget,
        "{calls} Kratos calls after the restart, more than {budget}: {:?}",
        calls_of(&op)
    );
    // `pw` may be reconciled twice: by the Secret's watch and by the first sweep's look at the
    // Secrets, when the second comes before the status of the first is in the cache (then the
    // password is imported again). Nothing else is read or written one by one.
    let reads = op.kratos.metrics().calls("get_identity");
    assert!(
        reads <= 3,
        "{reads} identities read one by one: {:?}",
        calls_of(&op)
    );
    let writes = op.kratos.metrics().writes();
    assert!(
        (2..=3).contains(&writes),
        "{writes} writes; the password and the drift, nothing else: {:?}",
        calls_of(&op)
    );
    op.stop();

    // A schema changed while no operator runs: every Identity that uses it is looked at again
    // (its status then records the new digest).
    let kratos = allow_nickname(kratos, &[schemas::CUSTOMER]).await;
    let before = api
        .get("plain-0")
        .await
        .unwrap()
        .status
        .unwrap()
        .schema_digest;
    assert!(before.is_some(), "the digest is recorded");
    let _op =
        support::start_operator_with(&t, &kratos.admin_url(), &kratos.public_url(), settings())
            .await;
    let refs: Api<IdentitySchemaRef> = Api::namespaced(t.client.clone(), &t.namespace);
    let after = eventually("the new digest", T, || async {
        let d = refs.get("customer").await.ok()?.status?.digest;
        (d != before).then_some(d)
    })
    .await;
    eventually(
        "every Identity validated against the new schema",
        T,
        || async {
            let all = api.list(&Default::default()).await.ok()?;
            all.items
                .iter()
                .all(|o| o.status.as_ref().is_some_and(|s| s.schema_digest == after) && synced(o))
                .then_some(())
        },
    )
    .await;
    // Deletions reach trusted objects too: the Secret of a policy-Sync password, and the
    // IdentitySchemaRef.
    Api::<Secret>::namespaced(t.client.clone(), &t.namespace)
        .delete("pw-secret", &DeleteParams::default())
        .await
        .unwrap();
    wait_ready::<Identity>(&t, "pw", "False", Some("SecretNotFound"), T).await;
    Api::<IdentitySchemaRef>::namespaced(t.client.clone(), &t.namespace)
        .delete("customer", &DeleteParams::default())
        .await
        .unwrap();
    wait_ready::<Identity>(&t, "plain-0", "False", Some("SchemaNotReady"), T).await;
    support::drop_kratos(kratos, dir, false).await;
    t.cleanup().await;
}

#[tokio::test]
async fn an_idle_sweep_reads_one_page_of_sessions_however_many_others_hold() {
    use kratos_operator::kratos::IdentityCredentialsImport;
    const UNMANAGED: usize = 12;
    const PAGE: u32 = 5;
    let t = setup("id-sessioncost").await;
    let (kratos, dir) = support::private_kratos(&t, KratosOptions::default()).await;
    let client = {
        let mut config =
            kratos_operator::kratos::ClientConfig::new(kratos.admin_url().parse().unwrap());
        config.public_url = Some(kratos.public_url().parse().unwrap());
        config.request_timeout = Duration::from_secs(10);
        config.page_size = PAGE;
        kratos_operator::kratos::KratosClient::new(config).unwrap()
    };
    let settings = kratos_operator::controller::Settings {
        session_lookback: Duration::from_millis(500),
        ..support::test_settings(&t.namespace)
    };
    let password = "Sessions-Passw0rd-x9";
    // Identities no object manages, two sessions each: more sessions than a page holds.
    let k = kratos_client(&kratos.admin_url(), &kratos.public_url());
    for i in 0..UNMANAGED {
        let email = t.email(&format!("self-{i}"));
        let mut body = CreateIdentityBody::new("customer", json!({ "email": email }));
        body.credentials = Some(IdentityCredentialsImport::password(
            password.to_string().into(),
        ));
        k.create_identity(&body).await.unwrap();
        for _ in 0..2 {
            login(&kratos.public_url(), &email, password).await.unwrap();
        }
    }
    // Older than the newest session (busy's, below) by more than twice the lookback.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.secret("pw", "pw", password).await;
    let with_password = |user: &str| {
        json!({ "schemaId": "customer", "traits": { "email": t.email(user) },
                "credentials": { "password": { "secretRef": { "name": "pw", "key": "pw" } } } })
    };
    let op = support::start_operator_with_client(&t, client, settings).await;
    for user in ["quiet", "busy", "later"] {
        t.identity(user, with_password(user)).await;
    }
    for user in ["quiet", "busy", "later"] {
        ready(&t, user).await;
    }
    login(&kratos.public_url(), &t.email("busy"), password)
        .await
        .unwrap();
    let api: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let sessions_of = |name: &'static str, n: i32| {
        let api = api.clone();
        async move {
            eventually(
                &format!("{name} to show {n} active sessions"),
                T,
                || async {
                    (api.get(name).await.ok()?.status?.active_sessions == Some(n)).then_some(())
                },
            )
            .await;
        }
    };
    sessions_of("busy", 1).await;
    // Past the lookback of the newest session: what an idle sweep sees.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = op.kratos.metrics();
    let sweeps = op.ctx.metrics.drift_sweeps.get();
    eventually("a sweep to begin afresh", T, || async {
        (op.ctx.metrics.drift_sweeps.get() > sweeps).then_some(())
    })
    .await;
    let (from, before) = (op.ctx.metrics.drift_sweeps.get(), m.total_calls());
    let session_pages = m.calls("list_sessions");
    eventually("three more sweeps", T, || async {
        (op.ctx.metrics.drift_sweeps.get() >= from + 3).then_some(())
    })
    .await;
    let (to, after) = (op.ctx.metrics.drift_sweeps.get(), m.total_calls());
    let per_sweep = (after - before) as f64 / (to - from) as f64;
    let total_sessions = 2 * UNMANAGED + 1;
    println!(
        "FIGURE idle sweep: {per_sweep:.1} Kratos requests ({} sweeps, {total_sessions} active sessions, {} a page, 3 managed, 1 with a session)",
        to - from,
        PAGE
    );
    // One identity list, one page of sessions, busy's own sessions.
    assert!(
        per_sweep <= 3.0,
        "{per_sweep} requests per idle sweep: {:?}",
        calls_of(&op)
    );
    assert_eq!(
        m.calls("list_sessions") - session_pages,
        to - from,
        "one page of the session list per sweep, not {}",
        (total_sessions as u32).div_ceil(PAGE)
    );
    // A first login of a managed identity is seen on the first page; a session that ends, by
    // the identity's own list.
    login(&kratos.public_url(), &t.email("later"), password)
        .await
        .unwrap();
    sessions_of("later", 1).await;
    let session = k
        .list_identity_sessions(&identity_id(&ready(&t, "busy").await), Some(true))
        .await
        .unwrap();
    assert_eq!(session.len(), 1);
    k.disable_session(&session[0].id).await.unwrap();
    sessions_of("busy", 0).await;
    assert_eq!(
        api.get("quiet")
            .await
            .unwrap()
            .status
            .unwrap()
            .active_sessions,
        Some(0)
    );
    support::drop_kratos(kratos, dir, false).await;
    t.cleanup().await;
}
