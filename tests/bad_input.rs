//! The bad-input catalogue: every hostile or broken input gives a clear condition (or an
//! admission error), never a panic or a hot loop. After each condition appears, the number of
//! Kratos calls and reconciles stays flat. The observed conditions are printed as the table in
//! docs/reliability.md (`cargo test --test bad_input -- --nocapture`).

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kratos_operator::{
    api::{Identity, IdentitySchemaRef, RecoveryRequest},
    metrics::KindLabels,
};
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::{
    Operator, apply, condition, eventually, kratos_client,
    proxy::{Answer, Fault, KratosProxy},
    setup, start_operator_with, test_settings, unique_name, wait_ready,
};

const T: Duration = Duration::from_secs(60);

/// Settings in which nothing but a change retries: resyncs and schema rechecks are 5 minutes
/// away (the defaults), so any Kratos call within a few seconds of a condition is a retry loop.
fn quiet(namespaces: &[&str]) -> kratos_operator::controller::Settings {
    kratos_operator::controller::Settings {
        resync_interval: Duration::from_secs(300),
        schema_recheck_interval: Duration::from_secs(300),
        watch_namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        ..test_settings(namespaces[0])
    }
}

/// Kratos calls and reconciles of the operator so far.
fn activity(op: &Operator) -> (u64, u64) {
    let reconciles: u64 = ["Identity", "RecoveryRequest", "IdentitySchemaRef"]
        .iter()
        .map(|kind| {
            op.ctx
                .metrics
                .reconciles
                .get_or_create(&KindLabels { kind })
                .get()
        })
        .sum();
    (op.kratos.metrics().total_calls(), reconciles)
}

/// The operator's Kratos calls so far by operation, for the message when the totals move.
fn calls_by_operation(op: &Operator) -> BTreeMap<&'static str, u64> {
    let metrics = op.kratos.metrics();
    kratos_operator::kratos::metrics::OPERATIONS
        .iter()
        .map(|o| (*o, metrics.calls(o)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Asserts that the operator makes no Kratos call and runs no reconcile for `secs` seconds.
async fn assert_flat(op: &Operator, secs: u64, what: &str) {
    let (before, ops_before) = (activity(op), calls_by_operation(op));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (after, ops_after) = (activity(op), calls_by_operation(op));
    assert_eq!(
        after, before,
        "{what}: (Kratos calls, reconciles) went from {before:?} to {after:?} in {secs} s without any change; Kratos calls by operation before {ops_before:?}, after {ops_after:?}"
    );
}

/// One catalogue row, printed for docs/reliability.md.
fn row(input: &str, observed: &str) {
    println!("CATALOGUE | {input} | {observed} |");
}

fn describe(ready: &Value, obj_conditions: &[&Value]) -> String {
    let extra: Vec<String> = obj_conditions
        .iter()
        .filter(|c| !c.is_null())
        .map(|c| {
            format!(
                "{}={}",
                c["type"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or("")
            )
        })
        .collect();
    format!(
        "`Ready=False` `{}` ({}): {}",
        ready["reason"].as_str().unwrap_or(""),
        extra.join(", "),
        ready["message"].as_str().unwrap_or("").replace('\n', " ")
    )
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_input_gets_a_clear_condition_and_no_retry_loop() {
    let t = setup("bad-input").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let other = setup("bad-input-other").await;
    let op = start_operator_with(
        &t,
        &t.kratos_admin_url,
        &t.kratos_public_url,
        quiet(&[&t.namespace, &other.namespace]),
    )
    .await;
    apply::<IdentitySchemaRef>(&t, json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef", "metadata": { "name": "customer" }, "spec": { "schemaId": "customer" } })).await;
    // A schema ref of the same kind, but in the other (also watched) namespace.
    apply::<IdentitySchemaRef>(&other, json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef", "metadata": { "name": "customer-b" }, "spec": { "schemaId": "customer" } })).await;
    wait_ready::<IdentitySchemaRef>(&t, "customer", "True", Some("Resolved"), T).await;
    wait_ready::<IdentitySchemaRef>(&other, "customer-b", "True", Some("Resolved"), T).await;

    // The first of two objects with one email, and an identity to delete before it is recovered.
    t.identity(
        "dup-a",
        json!({ "schemaId": "customer", "traits": { "email": t.email("dup") } }),
    )
    .await;
    t.identity(
        "gone",
        json!({ "schemaId": "customer", "traits": { "email": t.email("gone") } }),
    )
    .await;
    let first = wait_ready::<Identity>(&t, "dup-a", "True", Some("Synced"), T).await;
    let gone = wait_ready::<Identity>(&t, "gone", "True", Some("Synced"), T).await;
    let gone_id = gone.status.unwrap().identity_id.unwrap();
    let first_id = first.status.as_ref().unwrap().identity_id.clone().unwrap();
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    let first_before = k.get_identity(&first_id, &[]).await.unwrap();
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    identities
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted Identity to be gone", T, || async {
        identities
            .get_opt("gone")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // Secrets for the password cases.
    t.secret_bytes(
        "pw",
        BTreeMap::from([("password", b"correct horse".to_vec())]),
    )
    .await;
    t.secret_bytes("empty", BTreeMap::from([("password", Vec::new())]))
        .await;
    t.secret_bytes("newline", BTreeMap::from([("password", b"\n".to_vec())]))
        .await;
    t.secret_bytes(
        "binary",
        BTreeMap::from([("password", vec![0xff, 0xfe, 0x41, 0x00])]),
    )
    .await;
    t.secret_bytes(
        "hash",
        BTreeMap::from([("hash", b"$unknown$v=1$c2FsdA$aGFzaA".to_vec())]),
    )
    .await;

    // (name, input description, spec, Ready reason, Stalled, message fragment)
    let password = |name: &str, key: &str| json!({ "password": { "secretRef": { "name": name, "key": key } } });
    let cases: Vec<(&str, String, Value, &str, bool, String)> = vec![
        (
            "bad-traits",
            "traits that break the schema (schemaRef; `email: not-an-email`, `age: -1`, an unknown key)".into(),
            json!({ "schemaRef": { "name": "customer" }, "traits": { "email": "not-an-email", "age": -1, "nickname": "x" } }),
            "InvalidSpec",
            true,
            "/traits/email".into(),
        ),
        (
            "bad-traits-id",
            "traits that break the schema (schemaId; `email: 42`)".into(),
            json!({ "schemaId": "customer", "traits": { "email": 42 } }),
            "InvalidSpec",
            true,
            "/traits/email".into(),
        ),
        (
            "unknown-schema",
            "an unknown `schemaId: no-such-schema`".into(),
            json!({ "schemaId": "no-such-schema", "traits": { "email": t.email("unknown-schema") } }),
            "InvalidSpec",
            true,
            "no-such-schema".into(),
        ),
        (
            "missing-secret",
            "password `secretRef` to a Secret that does not exist".into(),
            json!({ "schemaId": "customer", "traits": { "email": t.email("missing-secret") }, "credentials": password("nope", "password") }),
            "SecretNotFound",
            false,
            "does not exist".into(),
        ),
        (
            "wrong-key",
            "password `secretRef` to a key the Secret does not have".into(),
            json!({ "schemaId": "customer", "traits": { "email": t.email("wrong-key") }, "credentials": password("pw", "pass") }),
            "SecretNotFound",
            false,
            "has no key".into(),
        ),
        (
            "empty-password",
            "password Secret value empty".into(),
            json!({ "schemaId": "customer", "traits": { "email": t.email("empty-password") }, "credentials": password("empty", "password") }),
            "InvalidSecret",
            false,
            "is empty".into(),
        ),
        (
            "newline-password",
            "password Secret value a lone newline".into(),
            json!({ "schemaId": "customer", "traits": { "email": t.email("newline-password") }, "credentials": password("newline", "password") }),
            "InvalidSecret",
            false,
            "is empty".into(),
        ),
        (
            "binary-password",
            "password Secret value not UTF-8 (`ff fe 41 00`)".into(),
            json!({ "schemaId": "customer", "traits": { "email": t.email("binary-password") }, "credentials": password("binary", "password") }),
            "InvalidSecret",
            false,
            "not UTF-8".into(),
        ),
        (
            "unknown-hash",
            "`hashedSecretRef` to a hash in an unknown format (`$unknown$...`)".into(),
            json!({ "schemaId": "customer", "traits": { "email": t.email("unknown-hash") },
                    "credentials": { "password": { "hashedSecretRef": { "name": "hash", "key": "hash" } } } }),
            "InvalidSpec",
            true,
            "known hash format".into(),
        ),
        (
            "dup-b",
            "the same email as another Identity (`dup-a`, already Synced)".into(),
            json!({ "schemaId": "customer", "traits": { "email": t.email("dup") } }),
            "Conflict",
            false,
            "another Identity object manages it".into(),
        ),
        (
            "cross-ns",
            format!("`schemaRef: {{name: customer-b}}`, which exists only in namespace `{}`", other.namespace),
            json!({ "schemaRef": { "name": "customer-b" }, "traits": { "email": t.email("cross-ns") } }),
            "SchemaNotReady",
            false,
            format!("does not exist in namespace {}", t.namespace),
        ),
    ];
    for (name, _, spec, ..) in &cases {
        t.identity(name, spec.clone()).await;
    }
    // RecoveryRequests for the deleted Identity: by name, and by its (deleted) Kratos id.
    let rr = |name: &str, spec: Value| json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest", "metadata": { "name": name }, "spec": spec });
    apply::<RecoveryRequest>(
        &t,
        rr("rr-by-ref", json!({ "identityRef": { "name": "gone" } })),
    )
    .await;
    apply::<RecoveryRequest>(
        &t,
        rr(
            "rr-by-id",
            json!({ "identityId": gone_id, "method": "code" }),
        ),
    )
    .await;

    for (name, input, _, reason, stalled, fragment) in &cases {
        let obj = wait_ready::<Identity>(&t, name, "False", Some(reason), T).await;
        let ready = condition(&obj, "Ready");
        let stalled_c = condition(&obj, "Stalled");
        let reconciling = condition(&obj, "Reconciling");
        let message = ready["message"].as_str().unwrap_or("");
        assert!(message.contains(fragment.as_str()), "{name}: {message}");
        assert_eq!(
            stalled_c["status"] == "True",
            *stalled,
            "{name}: Stalled {stalled_c} (Reconciling {reconciling})"
        );
        assert!(
            obj.status.as_ref().unwrap().identity_id.is_none(),
            "{name}: no Kratos identity"
        );
        let event = support::wait_event(&t, name, reason).await;
        assert_eq!(
            event.type_.as_deref(),
            Some("Warning"),
            "{name}: a Warning Event with reason {reason}"
        );
        row(input, &describe(&ready, &[&stalled_c, &reconciling]));
    }
    for (name, input, reason, fragment) in [
        (
            "rr-by-ref",
            "RecoveryRequest `identityRef` to a deleted Identity",
            "IdentityNotReady",
            "does not exist",
        ),
        (
            "rr-by-id",
            "RecoveryRequest `identityId` of a deleted Kratos identity (method code)",
            "IdentityNotFound",
            "could not find identity",
        ),
    ] {
        let obj = wait_ready::<RecoveryRequest>(&t, name, "False", Some(reason), T).await;
        let ready = condition(&obj, "Ready");
        let message = ready["message"].as_str().unwrap_or("");
        assert!(message.contains(fragment), "{name}: {message}");
        let phase = serde_json::to_value(&obj).unwrap()["status"]["phase"].clone();
        row(
            input,
            &format!(
                "{} (phase {phase})",
                describe(
                    &ready,
                    &[&condition(&obj, "Stalled"), &condition(&obj, "Reconciling")]
                )
            ),
        );
    }
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), &t.namespace);
    assert!(secrets.get_opt("rr-by-ref").await.unwrap().is_none());
    assert!(secrets.get_opt("rr-by-id").await.unwrap().is_none());

    // No retry loop: nothing happens until something changes.
    assert_flat(&op, 5, "after every bad input got its condition").await;

    // The first owner of the email is untouched.
    let first_after = k.get_identity(&first_id, &[]).await.unwrap();
    assert_eq!(
        first_after.updated_at, first_before.updated_at,
        "dup-a's identity was not written"
    );
    assert_eq!(first_after.traits, first_before.traits);
    let first_now = identities.get("dup-a").await.unwrap();
    assert_eq!(condition(&first_now, "Ready")["reason"], "Synced");
    assert_eq!(
        first_now.status.unwrap().identity_id.as_deref(),
        Some(first_id.as_str())
    );

    // And the operator still works (nothing panicked): fixing an input heals it.
    t.identity("missing-secret-fixed", json!({ "schemaId": "customer", "traits": { "email": t.email("fixed") }, "credentials": password("pw", "password") })).await;
    wait_ready::<Identity>(&t, "missing-secret-fixed", "True", Some("Synced"), T).await;
    t.identity("bad-traits",
        json!({ "schemaRef": { "name": "customer" }, "traits": { "email": t.email("bad-traits") } }),
    )
    .await;
    wait_ready::<Identity>(&t, "bad-traits", "True", Some("Synced"), T).await;

    identities
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    support::wait_all_gone(&identities, T).await;
    t.cleanup().await;
    other.cleanup().await;
}

// ---------------------------------------------------------------------------------------------

fn big(name: &str, email: &str, len: usize) -> Value {
    json!({
        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity", "metadata": { "name": name },
        "spec": { "schemaId": "customer", "traits": { "email": email, "name": { "first": "x".repeat(len) } } }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traits_near_the_object_size_limit_are_reported() {
    let t = setup("bad-size").await;
    support::install_crds(&t.client).await;
    let api: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let ssa = PatchParams::apply("kratos-operator-tests").force();
    let email = format!("{}@example.com", unique_name("big"));
    // The largest trait the API server stores for this object (etcd's request limit, about
    // 1.5 MiB, minus the rest of the object), found before any operator watches it.
    let (mut lo, mut hi) = (1_000_000usize, 1_700_000usize);
    while hi - lo > 64 {
        let mid = (lo + hi) / 2;
        match api
            .patch("probe", &ssa, &Patch::Apply(&big("probe", &email, mid)))
            .await
        {
            Ok(_) => {
                lo = mid;
                api.delete("probe", &DeleteParams::default()).await.unwrap();
                eventually("the probe to be gone", T, || async {
                    api.get_opt("probe").await.unwrap().is_none().then_some(())
                })
                .await;
            }
            Err(_) => hi = mid,
        }
    }
    let limit = lo;
    let refused = |len: usize| {
        let api = api.clone();
        let email = email.clone();
        let ssa = ssa.clone();
        async move {
            api.patch("too-big", &ssa, &Patch::Apply(&big("too-big", &email, len)))
                .await
                .expect_err("refused")
                .to_string()
        }
    };
    let over = refused(limit + 4096).await;
    assert!(over.contains("request is too large"), "{over}");
    row(
        &format!(
            "`traits.name.first` of {} bytes (just over etcd's limit)",
            limit + 4096
        ),
        &format!(
            "admission error: `{}`",
            over.split(" (Status").next().unwrap_or(&over)
        ),
    );
    let way_over = refused(3_200_000).await;
    assert!(way_over.contains("Request entity too large"), "{way_over}");
    row(
        "`traits.name.first` of 3200000 bytes (over the API server's 3 MiB body limit)",
        &format!(
            "admission error: `{}`",
            way_over.split(" (Status").next().unwrap_or(&way_over)
        ),
    );

    let op = start_operator_with(
        &t,
        &t.kratos_admin_url,
        &t.kratos_public_url,
        quiet(&[&t.namespace]),
    )
    .await;
    // Just under the operator's limit on free JSON: Kratos takes it.
    api.patch(
        "large",
        &ssa,
        &Patch::Apply(&big(
            "large",
            &format!("{}@example.com", unique_name("large")),
            15_000,
        )),
    )
    .await
    .unwrap();
    wait_ready::<Identity>(&t, "large", "True", Some("Synced"), T).await;
    row(
        "`traits.name.first` of 15000 bytes",
        "`Ready=True` `Synced` (Kratos stores it)",
    );
    // Storable, but over the operator's limit (16 KiB of JSON per free-form field): refused
    // before anything reaches Kratos, for good.
    let huge_email = format!("{}@example.com", unique_name("huge"));
    api.patch(
        "huge",
        &ssa,
        &Patch::Apply(&big("huge", &huge_email, 1_000_000)),
    )
    .await
    .unwrap();
    let huge = wait_ready::<Identity>(&t, "huge", "False", Some("InvalidSpec"), T).await;
    let huge_ready = condition(&huge, "Ready");
    let huge_message = huge_ready["message"].as_str().unwrap_or_default();
    assert!(
        huge_message.contains("spec.traits") && huge_message.contains("16384"),
        "{huge_message}"
    );
    assert_eq!(condition(&huge, "Stalled")["status"], "True");
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    assert!(
        k.find_by_credentials_identifier(&huge_email)
            .await
            .unwrap()
            .is_empty(),
        "nothing was sent to Kratos"
    );
    row(
        "`traits.name.first` of 1000000 bytes",
        &describe(&huge_ready, &[&condition(&huge, "Stalled")]),
    );
    // Storable, but not once the operator adds its status: said in a Warning Event, and retried
    // with growing backoff only.
    api.patch(
        "edge",
        &ssa,
        &Patch::Apply(&big("edge", &email, limit - 300)),
    )
    .await
    .unwrap();
    let note = eventually(
        "a Warning Event saying the status cannot be written",
        T,
        || async {
            support::events_for(&t, "edge")
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("StatusNotWritten"))
                .and_then(|e| e.note)
        },
    )
    .await;
    assert!(note.contains("request is too large"), "{note}");
    row(
        &format!(
            "`traits.name.first` of {} bytes (fits, but not with the status)",
            limit - 300
        ),
        &format!("no status can be stored; Warning Event `StatusNotWritten`: {note}"),
    );
    let before = activity(&op);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = activity(&op);
    let (calls, reconciles) = (after.0 - before.0, after.1 - before.1);
    println!("size edge: {calls} Kratos calls and {reconciles} reconciles in 8 s of retries");
    assert!(
        reconciles <= 4 && calls <= 20,
        "backoff, not a loop: {calls} calls, {reconciles} reconciles in 8 s"
    );
    let edge = api.get("edge").await.unwrap();
    assert!(edge.status.is_none());
    // At the limit even the deletion (it adds deletionTimestamp) is refused while the finalizer
    // is on: shrinking the spec lets the status in, and then the deletion.
    let refused_delete = api
        .delete("edge", &DeleteParams::default())
        .await
        .expect_err("too large to mark deleted")
        .to_string();
    row(
        &format!("`kubectl delete` of the {}-byte object", limit - 300),
        &format!(
            "refused by the API server: `{}`; shrinking the spec first lets the operator create the identity and write its status, then the deletion goes through",
            refused_delete
                .split(" (Status")
                .next()
                .unwrap_or(&refused_delete)
        ),
    );
    api.patch("edge", &ssa, &Patch::Apply(&big("edge", &email, 10)))
        .await
        .unwrap();
    wait_ready::<Identity>(&t, "edge", "True", Some("Synced"), T).await;
    // Deleting it still deletes its Kratos identity.
    api.delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    support::wait_all_gone(&api, T).await;
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    assert!(
        k.find_by_credentials_identifier(&email)
            .await
            .unwrap()
            .is_empty()
    );
    drop(op);
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------

/// A proxy in front of the real Kratos that answers identity reads and recovery links with
/// garbage while `broken`.
async fn garbage_stub(upstream: &str, broken: Arc<AtomicBool>) -> KratosProxy {
    let counter = AtomicU32::new(0);
    KratosProxy::start(upstream, move |request| {
        let path = &request.path;
        let one_identity = request.method == axum::http::Method::GET
            && path.starts_with("/admin/identities/")
            && path.matches('/').count() == 3;
        let recovery_link =
            request.method == axum::http::Method::POST && path == "/admin/recovery/link";
        if (one_identity || recovery_link) && broken.load(Ordering::SeqCst) {
            const GARBAGE: [&str; 5] = [
                "not json at all <html>",
                r#"{"id": 42}"#,
                "",
                "[1,2,3]",
                r#"{"id":"x","traits":"#,
            ];
            let body = GARBAGE[counter.fetch_add(1, Ordering::SeqCst) as usize % GARBAGE.len()];
            Fault::Answer(Answer::json(200, body))
        } else {
            Fault::Forward
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_kratos_responses_give_a_condition_not_a_panic() {
    let t = setup("bad-kratos").await;
    // Its recovery request goes by raw id (see below).
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let broken = Arc::new(AtomicBool::new(false));
    let stub = garbage_stub(&t.kratos_admin_url, broken.clone()).await;
    let op = start_operator_with(&t, &stub.url, &t.kratos_public_url, quiet(&[&t.namespace])).await;
    let email = format!("{}@example.com", unique_name("garbage"));
    t.identity(
        "g",
        json!({ "schemaId": "customer", "traits": { "email": email } }),
    )
    .await;
    let g = wait_ready::<Identity>(&t, "g", "True", Some("Synced"), T).await;
    let g_id = g.status.and_then(|s| s.identity_id).unwrap();
    broken.store(true, Ordering::SeqCst);
    // A spec change makes the operator read the identity: Kratos' answer is garbage.
    t.identity(
        "g",
        json!({ "schemaId": "customer", "traits": { "email": email, "tier": "pro" } }),
    )
    .await;
    let obj = eventually("a condition about the malformed answer", T, || async {
        let obj: Identity = Api::namespaced(t.client.clone(), &t.namespace)
            .get("g")
            .await
            .ok()?;
        let ready = condition(&obj, "Ready");
        (ready["status"] == "False"
            && obj.status.as_ref()?.observed_generation == obj.metadata.generation)
            .then_some(obj)
    })
    .await;
    let ready = condition(&obj, "Ready");
    let message = ready["message"].as_str().unwrap_or("");
    assert_eq!(ready["reason"], "KratosUnavailable", "{ready}");
    assert!(
        message.contains("unexpected response from Kratos"),
        "{message}"
    );
    row(
        "Kratos answers `GET /admin/identities/{id}` with 200 and garbage (`not json at all <html>`, `{\"id\": 42}`, empty, `[1,2,3]`, truncated JSON)",
        &describe(
            &ready,
            &[&condition(&obj, "Stalled"), &condition(&obj, "Reconciling")],
        ),
    );
    // A recovery link whose answer is garbage: reported, and the answer (it could hold a link)
    // is withheld from the condition. By raw id: a request by reference would first read the
    // identity (its owner marker), and that answer is garbage too.
    apply::<RecoveryRequest>(
        &t,
        json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
        "metadata": { "name": "r" }, "spec": { "identityId": g_id } }),
    )
    .await;
    let rr = wait_ready::<RecoveryRequest>(&t, "r", "False", Some("KratosUnavailable"), T).await;
    let rr_ready = condition(&rr, "Ready");
    let rr_message = rr_ready["message"].as_str().unwrap_or("");
    assert!(
        rr_message.contains("unexpected response from Kratos") && rr_message.contains("withheld"),
        "{rr_message}"
    );
    row(
        "Kratos answers `POST /admin/recovery/link` with 200 and garbage",
        &describe(
            &rr_ready,
            &[&condition(&rr, "Stalled"), &condition(&rr, "Reconciling")],
        ),
    );
    // Retried with backoff, not in a loop.
    let before = activity(&op);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = activity(&op);
    println!(
        "garbage: {} Kratos calls, {} reconciles in 8 s",
        after.0 - before.0,
        after.1 - before.1
    );
    for name in kratos_operator::kratos::OPERATIONS {
        let n = op.kratos.metrics().calls(name);
        if n > 0 {
            println!(
                "  {name}: {n} calls, {} requests",
                op.kratos.metrics().requests(name)
            );
        }
    }
    assert!(after.0 - before.0 <= 12, "backoff: {before:?} -> {after:?}");
    // Kratos answers properly again: it converges.
    broken.store(false, Ordering::SeqCst);
    let healed =
        wait_ready::<Identity>(&t, "g", "True", Some("Synced"), Duration::from_secs(120)).await;
    let id = healed.status.unwrap().identity_id.unwrap();
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    assert_eq!(
        k.get_identity(&id, &[]).await.unwrap().traits["tier"],
        "pro"
    );
    Api::<Identity>::namespaced(t.client.clone(), &t.namespace)
        .delete("g", &DeleteParams::default())
        .await
        .unwrap();
    eventually("g to be deleted", T, || async {
        Api::<Identity>::namespaced(t.client.clone(), &t.namespace)
            .get_opt("g")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admission_rejects_invalid_specs_with_a_message() {
    let t = setup("bad-cel").await;
    support::install_crds(&t.client).await;
    let resource = kube::api::ApiResource::erase::<Identity>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.namespace, &resource);
    let create = |spec: Value| {
        let api = api.clone();
        async move {
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
                "metadata": { "name": unique_name("cel") }, "spec": spec
            }))
            .unwrap();
            api.create(&PostParams::default(), &obj)
                .await
                .map_err(|e| e.to_string())
        }
    };
    eventually(
        "a valid Identity to be accepted",
        Duration::from_secs(20),
        || async {
            create(json!({ "schemaId": "customer", "traits": { "email": "cel@example.com" } }))
                .await
                .ok()
        },
    )
    .await;
    let traits = json!({ "email": "cel@example.com" });
    let pw = |p: Value| json!({ "schemaId": "customer", "traits": traits, "credentials": { "password": p } });
    let secret_ref = json!({ "name": "s", "key": "k" });
    for (input, spec, why) in [
        (
            "both `schemaRef` and `schemaId`",
            json!({ "schemaRef": { "name": "customer" }, "schemaId": "customer", "traits": traits }),
            "exactly one of spec.schemaRef and spec.schemaId must be set",
        ),
        (
            "neither `schemaRef` nor `schemaId`",
            json!({ "traits": traits }),
            "exactly one of spec.schemaRef and spec.schemaId must be set",
        ),
        (
            "`schemaId: \"\"`",
            json!({ "schemaId": "", "traits": traits }),
            "schemaId must not be empty",
        ),
        (
            "`secretRef` and `hashedSecretRef` together",
            pw(json!({ "secretRef": secret_ref, "hashedSecretRef": secret_ref })),
            "exactly one of secretRef and hashedSecretRef must be set",
        ),
        (
            "password with neither `secretRef` nor `hashedSecretRef`",
            pw(json!({ "policy": "Sync" })),
            "exactly one of secretRef and hashedSecretRef must be set",
        ),
        (
            "`state: disabled`",
            json!({ "schemaId": "customer", "traits": traits, "state": "disabled" }),
            "Unsupported value: \"disabled\"",
        ),
        (
            "`policy: Sometimes`",
            pw(json!({ "secretRef": secret_ref, "policy": "Sometimes" })),
            "Unsupported value: \"Sometimes\"",
        ),
        (
            "`adoption: Always`",
            json!({ "schemaId": "customer", "traits": traits, "adoption": "Always" }),
            "Unsupported value: \"Always\"",
        ),
        (
            "`deletionPolicy: Keep`",
            json!({ "schemaId": "customer", "traits": traits, "deletionPolicy": "Keep" }),
            "Unsupported value: \"Keep\"",
        ),
        (
            "`verifiedAddresses[0].via: pigeon`",
            json!({ "schemaId": "customer", "traits": traits, "verifiedAddresses": [{ "value": "a@b.c", "via": "pigeon" }] }),
            "Unsupported value: \"pigeon\"",
        ),
        (
            "`traits: \"a string\"`",
            json!({ "schemaId": "customer", "traits": "a string" }),
            "spec.traits: Invalid value: \"string\"",
        ),
        (
            "no `traits`",
            json!({ "schemaId": "customer" }),
            "spec.traits: Required value",
        ),
        (
            "`secretRef.name: \"\"`",
            pw(json!({ "secretRef": { "name": "", "key": "k" } })),
            "spec.credentials.password.secretRef.name",
        ),
    ] {
        match create(spec.clone()).await {
            Ok(_) => panic!("accepted {input}: {spec}"),
            Err(e) => {
                assert!(e.contains(why), "{input}: {e}");
                let text = e
                    .split(": Invalid (Status")
                    .next()
                    .unwrap_or(&e)
                    .replace("ApiError: ", "");
                row(
                    input,
                    &format!(
                        "admission error: `{}`",
                        text.chars().take(300).collect::<String>()
                    ),
                );
            }
        }
    }
    t.cleanup().await;
}
