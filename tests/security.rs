//! No secret leaks: a full run (cleartext passwords and a bcrypt hash read from Secrets, a
//! password rotation under policy Sync, a hash Kratos refuses, a recovery link and a recovery
//! code, a bearer token for the Kratos admin API read from a file) while everything the operator
//! emits is captured: its logs at TRACE (every crate, `log` records included), every Event in
//! the namespace, the status of every object, and what its HTTP server answers on /metrics,
//! /readyz and /healthz. None of the passwords, hashes, links, link tokens, codes or the token
//! may appear in any of them, in clear or base64.
//!
//! This binary installs a global tracing subscriber, so it holds this one test only.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Secret;
use kratos_operator::{
    api::{Identity, IdentitySchemaRef, RecoveryRequest},
    controller::{self, Context},
    kratos::{ClientConfig, KratosClient},
    server,
};
use kratos_operator_testenv::kratos::ALLOWED_RETURN_URL;
use kube::Api;
use serde_json::{Value, json};
use support::{
    TestEnv, apply, eventually, login, proxy::KratosProxy, setup, test_settings, wait_ready,
};

const T: Duration = Duration::from_secs(60);

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

async fn secret_data(t: &TestEnv, name: &str) -> BTreeMap<String, String> {
    let s: Secret = Api::namespaced(t.client.clone(), &t.namespace)
        .get(name)
        .await
        .unwrap();
    s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

/// Occurrences of `digits` as a whole number, not counting the fraction of a timestamp
/// (`.123456Z`), which is where a 6-digit number turns up by chance in TRACE logs.
fn number_occurrences(haystack: &str, digits: &str) -> Vec<String> {
    haystack
        .match_indices(digits)
        .filter(|(i, _)| {
            let before = haystack[..*i].chars().next_back();
            let after = haystack[i + digits.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
                && !after.is_some_and(|c| c.is_ascii_digit())
        })
        .map(|(i, _)| {
            let chars: String = haystack[..i].chars().rev().take(80).collect();
            let before: String = chars.chars().rev().collect();
            let after: String = haystack[i..].chars().take(80).collect();
            format!("{before}{after}")
        })
        .collect()
}

async fn get(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_password_hash_link_code_or_token_appears_in_logs_events_status_or_metrics() {
    // Installs the global subscriber: every span and event at TRACE, from every crate.
    let logs = support::logs::capture();
    let t = setup("security").await;
    support::install_crds(&t.client).await;

    // The bearer token, from a file, as the chart mounts it.
    let token = format!("ory_pat_{}", random_hex(24));
    let token_dir = std::env::temp_dir().join(format!("token-{}", t.namespace));
    std::fs::create_dir_all(&token_dir).unwrap();
    let token_file = token_dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    // A pass-through proxy in front of the Kratos admin API that records the Authorization
    // headers it sees: proof that the token was really sent (the real Kratos ignores it).
    let admin = KratosProxy::forwarding(&t.kratos_admin_url).await;
    let mut config = ClientConfig::new(admin.url.parse().unwrap());
    config.public_url = Some(t.kratos_public_url.parse().unwrap());
    config.token_file = Some(token_file.clone());
    config.request_timeout = Duration::from_secs(10);
    let kratos = KratosClient::new(config).unwrap();
    let ctx = Arc::new(Context::new(
        t.client.clone(),
        kratos.clone(),
        test_settings(&t.namespace),
    ));
    let operator = tokio::spawn(controller::run(
        ctx.clone(),
        futures::future::pending().boxed(),
    ));
    let (addr, _server) = server::serve(ctx.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    // Passwords and hashes.
    let alice_pw = format!("alice-Pw-{}", random_hex(10));
    let alice_pw2 = format!("alice-Pw2-{}", random_hex(10));
    let bob_pw = format!("bob-Pw-{}", random_hex(10));
    let bob_hash = bcrypt::hash(&bob_pw, 4).unwrap();
    let carol_pw = format!("carol-Pw-{}", random_hex(10));
    let refused_hash = format!("$unknown$v=1${}", random_hex(16));
    apply::<IdentitySchemaRef>(&t, json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef", "metadata": { "name": "customer" }, "spec": { "schemaId": "customer" } })).await;
    t.secret("alice-pw", "password", &alice_pw).await;
    t.secret("bob-hash", "hash", &bob_hash).await;
    t.secret("carol-pw", "password", &carol_pw).await;
    t.secret("mallory-hash", "hash", &refused_hash).await;
    t.identity("alice", json!({ "schemaRef": { "name": "customer" }, "traits": { "email": t.email("alice") },
        "credentials": { "password": { "secretRef": { "name": "alice-pw", "key": "password" }, "policy": "Sync" } } })).await;
    t.identity("bob", json!({ "schemaId": "customer", "traits": { "email": t.email("bob") },
        "credentials": { "password": { "hashedSecretRef": { "name": "bob-hash", "key": "hash" } } } })).await;
    t.identity("carol", json!({ "schemaId": "customer", "traits": { "email": t.email("carol") },
        "credentials": { "password": { "secretRef": { "name": "carol-pw", "key": "password" } } } })).await;
    t.identity("mallory", json!({ "schemaId": "customer", "traits": { "email": t.email("mallory") },
        "credentials": { "password": { "hashedSecretRef": { "name": "mallory-hash", "key": "hash" } } } })).await;
    for name in ["alice", "bob", "carol"] {
        wait_ready::<Identity>(&t, name, "True", Some("Synced"), T).await;
    }
    wait_ready::<Identity>(&t, "mallory", "False", Some("InvalidSpec"), T).await;
    let public = &t.kratos_public_url;
    login(public, &t.email("alice"), &alice_pw)
        .await
        .expect("alice's password was imported");
    login(public, &t.email("bob"), &bob_pw)
        .await
        .expect("bob's hash was imported");
    login(public, &t.email("carol"), &carol_pw)
        .await
        .expect("carol's password was imported");
    // Rotation under policy Sync: the new password is imported, the old one stops working.
    t.secret("alice-pw", "password", &alice_pw2).await;
    eventually("alice's rotated password to work", T, || async {
        login(public, &t.email("alice"), &alice_pw2)
            .await
            .ok()
            .map(drop)
    })
    .await;

    // A recovery link and a recovery code.
    let rr = |name: &str, spec: Value| json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest", "metadata": { "name": name }, "spec": spec });
    apply::<RecoveryRequest>(&t, rr("alice-link", json!({ "identityRef": { "name": "alice" }, "method": "link", "returnTo": ALLOWED_RETURN_URL }))).await;
    apply::<RecoveryRequest>(
        &t,
        rr(
            "alice-code",
            json!({ "identityRef": { "name": "alice" }, "method": "code" }),
        ),
    )
    .await;
    wait_ready::<RecoveryRequest>(&t, "alice-link", "True", Some("Issued"), T).await;
    wait_ready::<RecoveryRequest>(&t, "alice-code", "True", Some("Issued"), T).await;
    let link = secret_data(&t, "alice-link").await["recoveryLink"].clone();
    let code_data = secret_data(&t, "alice-code").await;
    let (code_link, code) = (
        code_data["recoveryLink"].clone(),
        code_data["recoveryCode"].clone(),
    );
    let link_token = url::Url::parse(&link)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.to_string())
        .expect("token in the link");
    assert!(
        link_token.len() >= 16 && code.len() >= 6,
        "real secrets to look for"
    );

    // The HTTP server, and a few resyncs and drift sweeps with everything in place.
    let base = format!("http://{addr}");
    eventually("/readyz to answer ok", T, || async {
        (get(&format!("{base}/readyz")).await == "ok").then_some(())
    })
    .await;
    // More to scan: a bounded window of resyncs (the leak checks below are negative checks).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = get(&format!("{base}/metrics")).await;
    let readyz = get(&format!("{base}/readyz")).await;
    let healthz = get(&format!("{base}/healthz")).await;
    assert!(
        metrics.contains("kratos_client_calls_total"),
        "metrics are captured: {metrics}"
    );
    assert!(
        kratos.metrics().calls("create_recovery_code") == 1,
        "the flow ran"
    );

    // Everything the operator wrote or emitted.
    let mut places: Vec<(&str, String)> = Vec::new();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(t.client.clone(), &t.namespace);
    // Events are published in the background: wait until those of the run are there.
    let events = eventually("at least 8 Events to be captured", T, || async {
        let items = events.list(&Default::default()).await.ok()?.items;
        (items.len() >= 8).then_some(items)
    })
    .await;
    places.push((
        "events.k8s.io Events",
        serde_json::to_string(&events).unwrap(),
    ));
    let core_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(t.client.clone(), &t.namespace);
    places.push((
        "core Events",
        serde_json::to_string(&core_events.list(&Default::default()).await.unwrap().items).unwrap(),
    ));
    let statuses = |items: Vec<Value>| {
        items.into_iter().map(|o| json!({ "name": o["metadata"]["name"], "status": o["status"], "annotations": o["metadata"]["annotations"] })).collect::<Vec<_>>()
    };
    let ids: Vec<Value> = Api::<Identity>::namespaced(t.client.clone(), &t.namespace)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    let rrs: Vec<Value> = Api::<RecoveryRequest>::namespaced(t.client.clone(), &t.namespace)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    let srs: Vec<Value> = Api::<IdentitySchemaRef>::namespaced(t.client.clone(), &t.namespace)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    assert_eq!((ids.len(), rrs.len(), srs.len()), (4, 2, 1));
    places.push((
        "Identity status",
        serde_json::to_string(&statuses(ids)).unwrap(),
    ));
    places.push((
        "RecoveryRequest status",
        serde_json::to_string(&statuses(rrs)).unwrap(),
    ));
    places.push((
        "IdentitySchemaRef status",
        serde_json::to_string(&statuses(srs)).unwrap(),
    ));
    places.push(("/metrics", metrics));
    places.push(("/readyz and /healthz", format!("{readyz}\n{healthz}")));
    places.push((
        "Kratos client Debug",
        format!("{kratos:?} {:?}", ctx.settings),
    ));
    let log = logs.text();
    assert!(
        log.contains("kratos call finished"),
        "the operator's logs are captured"
    );
    assert!(log.contains("TRACE"), "TRACE records are captured");
    assert!(
        log.contains("issued a recovery"),
        "the recovery controller's logs are captured"
    );
    places.push(("logs", log.clone()));

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut needles: Vec<(String, String)> = vec![
        ("alice's password".into(), alice_pw.clone()),
        ("alice's rotated password".into(), alice_pw2.clone()),
        ("bob's password".into(), bob_pw.clone()),
        ("bob's bcrypt hash".into(), bob_hash.clone()),
        (
            "bob's bcrypt salt and digest".into(),
            bob_hash[7..].to_string(),
        ),
        ("carol's password".into(), carol_pw.clone()),
        ("the refused hash".into(), refused_hash.clone()),
        ("the recovery link".into(), link.clone()),
        ("the recovery link's token".into(), link_token.clone()),
        ("the recovery code's flow link".into(), code_link.clone()),
        ("the bearer token".into(), token.clone()),
    ];
    for (what, value) in needles.clone() {
        needles.push((format!("{what} (base64)"), b64(&value)));
    }
    let scan = |place: &str, text: &str| {
        let mut found = Vec::new();
        for (what, value) in &needles {
            if text.contains(value.as_str()) {
                found.push(format!("{what} in {place}"));
            }
        }
        for hit in number_occurrences(text, &code) {
            found.push(format!("the recovery code in {place}: …{hit}…"));
        }
        found
    };
    // The scan finds what it looks for (a planted copy of two of them).
    let planted = format!("{log} password={carol_pw} code: {code}\n");
    assert_eq!(scan("planted", &planted).len(), 2, "the scan works");
    // The token was really sent to Kratos, on every admin call.
    let sent: Vec<String> = admin
        .seen()
        .into_iter()
        .filter_map(|s| s.request.authorization)
        .collect();
    assert!(
        !sent.is_empty() && sent.iter().all(|h| *h == format!("Bearer {token}")),
        "{} admin requests carried the token",
        sent.len()
    );
    let found: Vec<String> = places
        .iter()
        .flat_map(|(place, text)| scan(place, text))
        .collect();
    let sizes: Vec<String> = places
        .iter()
        .map(|(p, t)| format!("{p}: {} bytes", t.len()))
        .collect();
    println!(
        "FIGURES security: {} admin requests carried the token; scanned {} for {} secret values and the 6-digit code: {} findings",
        sent.len(),
        sizes.join(", "),
        needles.len(),
        found.len()
    );
    assert!(found.is_empty(), "secrets leaked: {found:#?}");

    // Clean up through the operator (its finalizer deletes the Kratos identities).
    let identities = Api::<Identity>::namespaced(t.client.clone(), &t.namespace);
    identities
        .delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
    support::wait_all_gone(&identities, T).await;
    operator.abort();
    let _ = std::fs::remove_dir_all(token_dir);
    t.cleanup().await;
}

/// The operator watches Secrets (to re-import a changed password) as metadata only: the
/// collection requests it sends for Secrets ask for `PartialObjectMetadata`, so Secret data
/// (passwords, TLS keys, anything else in the namespace) never reaches it through the watch. Only
/// the one referenced Secret is read in full, when an import is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_watched_as_metadata_only() {
    let t = setup("security-watch").await;
    support::install_crds(&t.client).await;
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let recorded = seen.clone();
    let client = support::client_seeing(&t, move |req| {
        let accept = req
            .headers()
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        recorded.lock().unwrap().push((
            req.method().to_string(),
            req.uri()
                .path_and_query()
                .map_or(String::new(), |p| p.to_string()),
            accept,
        ));
    })
    .await;
    let ctx = Arc::new(Context::new(
        client,
        support::kratos_client(&t.kratos_admin_url, &t.kratos_public_url),
        test_settings(&t.namespace),
    ));
    let operator = tokio::spawn(controller::run(ctx, futures::future::pending().boxed()));
    let email = t.email("watch");
    t.secret("pw", "password", &format!("first-{}", random_hex(8)))
        .await;
    t.secret("unrelated", "tls.key", "-----BEGIN PRIVATE KEY-----")
        .await;
    t.identity("w", json!({ "schemaId": "customer", "traits": { "email": email },
        "credentials": { "password": { "secretRef": { "name": "pw", "key": "password" }, "policy": "Sync" } } })).await;
    let first = wait_ready::<Identity>(&t, "w", "True", Some("Synced"), T).await;
    let version = |o: &Identity| {
        o.status
            .as_ref()
            .and_then(|s| s.credentials.as_ref())
            .and_then(|c| c.password.as_ref())
            .map(|p| p.secret_version.clone())
    };
    let v1 = version(&first);
    // A changed Secret reaches the operator through the watch and is imported again.
    let second = format!("second-{}", random_hex(8));
    t.secret("pw", "password", &second).await;
    eventually("the changed password to be imported", T, || async {
        let o: Identity = Api::namespaced(t.client.clone(), &t.namespace)
            .get("w")
            .await
            .ok()?;
        (version(&o) != v1).then_some(())
    })
    .await;
    login(&t.kratos_public_url, &email, &second)
        .await
        .expect("re-imported");

    let collection = format!("/api/v1/namespaces/{}/secrets", t.namespace);
    let requests = seen.lock().unwrap().clone();
    let lists: Vec<&(String, String, String)> = requests
        .iter()
        .filter(|(_, path, _)| path == &collection || path.starts_with(&format!("{collection}?")))
        .collect();
    let reads: Vec<&(String, String, String)> = requests
        .iter()
        .filter(|(m, path, _)| m == "GET" && path.starts_with(&format!("{collection}/")))
        .collect();
    println!(
        "FIGURES security-watch: {} list/watch requests on Secrets, {} reads of one Secret (imports)",
        lists.len(),
        reads.len()
    );
    assert!(
        !lists.is_empty(),
        "the operator watches Secrets: {requests:?}"
    );
    let full: Vec<_> = lists
        .iter()
        .filter(|(_, _, accept)| !accept.contains("as=PartialObjectMetadata"))
        .collect();
    assert!(
        full.is_empty(),
        "Secrets listed or watched with their data: {full:?}"
    );
    assert!(
        reads
            .iter()
            .all(|(_, path, _)| path.starts_with(&format!("{collection}/pw"))),
        "only the referenced Secret is read: {reads:?}"
    );

    let identities = Api::<Identity>::namespaced(t.client.clone(), &t.namespace);
    identities.delete("w", &Default::default()).await.unwrap();
    eventually("w to be deleted", T, || async {
        identities.get_opt("w").await.ok()?.is_none().then_some(())
    })
    .await;
    operator.abort();
    t.cleanup().await;
}
