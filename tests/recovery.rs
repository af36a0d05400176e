//! RecoveryRequest against the real API server and the real Kratos (issue 5): the link or code
//! lands in an owned Secret and works against Kratos' public API, is issued exactly once per
//! generation, expires, is garbage-collected with its request, waits for its Identity, reports
//! Kratos' refusals, and appears nowhere else (Events, status, logs, metrics).

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kratos_operator::{
    api::{Identity, RecoveryRequest},
    kratos::{CreateIdentityBody, KratosClient},
};
use kratos_operator_testenv::kratos::{ALLOWED_RETURN_URL, KratosOptions};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use support::{
    TestEnv, apply, events_for, eventually, setup, start_operator, start_operator_with,
    test_settings, unique_name, wait_ready,
};

const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

fn admin(t: &TestEnv) -> KratosClient {
    support::kratos_client(&t.kratos_admin_url, &t.kratos_public_url)
}

/// A Kratos identity created directly through the admin API; returns its id.
async fn kratos_identity(kratos: &KratosClient, prefix: &str) -> String {
    let email = format!("{}@example.com", unique_name(prefix));
    kratos
        .create_identity(&CreateIdentityBody::new(
            "customer",
            json!({ "email": email }),
        ))
        .await
        .expect("create Kratos identity")
        .id
}

async fn request(t: &TestEnv, name: &str, spec: Value) -> RecoveryRequest {
    apply::<RecoveryRequest>(
        t,
        json!({
            "apiVersion": "kratos-operator.dev/v1alpha1",
            "kind": "RecoveryRequest",
            "metadata": { "name": name },
            "spec": spec,
        }),
    )
    .await
}

fn requests(t: &TestEnv) -> Api<RecoveryRequest> {
    Api::namespaced(t.client.clone(), &t.namespace)
}

fn secrets(t: &TestEnv) -> Api<Secret> {
    Api::namespaced(t.client.clone(), &t.namespace)
}

/// Waits until the request reports `phase` for its current generation.
async fn wait_phase(t: &TestEnv, name: &str, phase: &str, timeout: Duration) -> RecoveryRequest {
    let api = requests(t);
    let mut last = String::new();
    let found = tokio::time::timeout(timeout, async {
        loop {
            if let Ok(obj) = api.get(name).await {
                let v = serde_json::to_value(&obj).expect("json");
                last = v["status"].to_string();
                if v["status"]["phase"] == phase
                    && v["status"]["observedGeneration"] == v["metadata"]["generation"]
                {
                    return obj;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!("timed out waiting for {name} phase {phase}; last status: {last}")
    })
}

fn status(obj: &RecoveryRequest) -> Value {
    serde_json::to_value(obj.status.as_ref().expect("status")).expect("json")
}

fn ready_condition(obj: &RecoveryRequest) -> Value {
    status(obj)["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The Secret's data as text.
fn data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf-8")))
        .collect()
}

async fn secret_data(t: &TestEnv, name: &str) -> BTreeMap<String, String> {
    data(&secrets(t).get(name).await.expect("get Secret"))
}

fn query_param(url: &str, key: &str) -> String {
    let url = url::Url::parse(url).expect("url");
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("{key} in {url}"))
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Follows a recovery link without following Kratos' redirect: the status and the Location.
async fn follow(link: &str) -> (u16, String, Vec<String>) {
    let resp = no_redirects()
        .get(link)
        .send()
        .await
        .expect("GET recovery link");
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .map(str::to_string)
        .collect();
    (resp.status().as_u16(), location, cookies)
}

fn ts(value: &Value) -> Timestamp {
    value
        .as_str()
        .expect("timestamp")
        .parse()
        .expect("RFC 3339")
}

#[tokio::test]
async fn link_is_delivered_into_an_owned_secret_and_works() {
    let t = setup("recovery-link").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let _operator = start_operator(&t).await;
    let id = kratos_identity(&admin(&t), "link").await;
    let created = request(
        &t,
        "alice-link",
        json!({ "identityId": id, "method": "link", "expiresIn": "15m" }),
    )
    .await;

    let obj =
        wait_ready::<RecoveryRequest>(&t, "alice-link", "True", Some("Issued"), ISSUE_TIMEOUT)
            .await;
    let s = status(&obj);
    assert_eq!(s["phase"], "Issued");
    assert_eq!(
        s["secretName"], "alice-link",
        "the Secret defaults to the request's name"
    );
    assert_eq!(s["identityId"], id.as_str());
    assert_eq!(s["issuedGeneration"], s["observedGeneration"]);

    let secret = secrets(&t).get("alice-link").await.expect("Secret");
    let owner = secret
        .owner_references()
        .iter()
        .find(|r| r.uid == created.uid().expect("uid"))
        .expect("ownerReference to the request");
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("RecoveryRequest", Some(true))
    );
    assert_eq!(
        secret
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("kratos-operator")
    );
    let d = data(&secret);
    assert_eq!(
        d.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["expiresAt", "recoveryLink"]
    );
    let link = &d["recoveryLink"];
    assert!(
        link.starts_with(&format!(
            "{}/self-service/recovery?flow=",
            t.kratos_public_url
        )),
        "{link}"
    );
    let kratos_expiry: Timestamp = d["expiresAt"].parse().expect("expiresAt");
    assert_eq!(ts(&s["expiresAt"]).as_second(), kratos_expiry.as_second());

    // A forged token is refused: Kratos starts a new recovery flow showing an error ...
    let forged = format!(
        "{}&token=forged{}",
        link.split("&token=").next().expect("link"),
        "0".repeat(26)
    );
    let (code, location, _) = follow(&forged).await;
    assert!(matches!(code, 302 | 303), "{code}");
    assert!(location.contains("/recovery?flow="), "{location}");
    // ... while the real link signs the user in and opens the settings flow.
    let (code, location, _) = follow(link).await;
    assert!(matches!(code, 302 | 303), "{code} {location}");
    assert!(
        location.starts_with("http://127.0.0.1:4455/settings?flow="),
        "{location}"
    );
    assert!(!location.contains("/error"), "{location}");
    t.cleanup().await;
}

#[tokio::test]
async fn code_is_delivered_and_accepted_by_the_public_recovery_flow() {
    let t = setup("recovery-code").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let _operator = start_operator(&t).await;
    let id = kratos_identity(&admin(&t), "code").await;
    request(&t, "bob-code", json!({ "identityId": id, "method": "code", "expiresIn": "10m", "secretName": "bob-code-secret" })).await;

    let obj =
        wait_ready::<RecoveryRequest>(&t, "bob-code", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    assert_eq!(status(&obj)["secretName"], "bob-code-secret");
    let d = secret_data(&t, "bob-code-secret").await;
    assert_eq!(
        d.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["expiresAt", "recoveryCode", "recoveryLink"]
    );
    let code = &d["recoveryCode"];
    assert!(
        code.len() == 6 && code.chars().all(|c| c.is_ascii_digit()),
        "a 6-digit code"
    );
    let flow = query_param(&d["recoveryLink"], "flow");
    assert!(
        d["recoveryLink"].starts_with("http://127.0.0.1:4455/recovery?flow="),
        "{}",
        d["recoveryLink"]
    );

    let http = reqwest::Client::new();
    let submit = |code: String| {
        let http = http.clone();
        let url = format!("{}/self-service/recovery?flow={flow}", t.kratos_public_url);
        async move {
            let resp = http
                .post(url)
                .header("Accept", "application/json")
                .json(&json!({ "method": "code", "code": code }))
                .send()
                .await
                .expect("submit code");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    // A wrong code is refused: the flow comes back with Kratos' "invalid code" message.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status_wrong, body) = submit(wrong.to_string()).await;
    assert_eq!(status_wrong, 200, "{body}");
    assert_eq!(body["ui"]["messages"][0]["id"], 4060006, "{body}");
    // The delivered code completes recovery: Kratos sends the browser to the settings flow.
    let (status_right, body) = submit(code.clone()).await;
    assert_eq!(status_right, 422, "{body}");
    assert_eq!(
        body["error"]["id"], "browser_location_change_required",
        "{body}"
    );
    let to = body["redirect_browser_to"]
        .as_str()
        .expect("redirect_browser_to");
    assert!(
        to.starts_with("http://127.0.0.1:4455/settings?flow="),
        "{to}"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn expires_in_and_return_to_are_passed_to_kratos() {
    let t = setup("recovery-returnto").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let _operator = start_operator(&t).await;
    let id = kratos_identity(&admin(&t), "returnto").await;
    let before = Timestamp::now();
    request(
        &t,
        "r",
        json!({ "identityId": id, "expiresIn": "1h30m", "returnTo": ALLOWED_RETURN_URL }),
    )
    .await;
    let obj = wait_ready::<RecoveryRequest>(&t, "r", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    let after = Timestamp::now();
    let s = status(&obj);
    assert_eq!(s["phase"], "Issued");
    let want = SignedDuration::from_mins(90);
    let expires = ts(&s["expiresAt"]);
    assert!(
        expires >= before + want - SignedDuration::from_secs(2),
        "{expires} vs {before}"
    );
    assert!(
        expires <= after + want + SignedDuration::from_secs(2),
        "{expires} vs {after}"
    );
    let d = secret_data(&t, "r").await;
    let kratos_expiry: Timestamp = d["expiresAt"].parse().expect("expiresAt");
    assert_eq!(expires.as_second(), kratos_expiry.as_second());

    // Following the link yields a settings flow that carries the return URL.
    let (_, location, cookies) = follow(&d["recoveryLink"]).await;
    assert!(
        location.starts_with("http://127.0.0.1:4455/settings?flow="),
        "{location}"
    );
    let settings_flow = query_param(&location, "flow");
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/self-service/settings/flows?id={settings_flow}",
            t.kratos_public_url
        ))
        .header("Accept", "application/json")
        .header("Cookie", cookies.join("; "))
        .send()
        .await
        .expect("settings flow");
    let flow: Value = resp.json().await.expect("json");
    assert_eq!(flow["return_to"], ALLOWED_RETURN_URL, "{flow}");
    t.cleanup().await;
}

#[tokio::test]
async fn a_return_to_kratos_rejects_is_invalid_spec_and_not_retried() {
    let t = setup("recovery-badreturn").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let operator = start_operator(&t).await;
    let id = kratos_identity(&admin(&t), "badreturn").await;
    request(
        &t,
        "r",
        json!({ "identityId": id, "returnTo": "https://evil.example.com/x" }),
    )
    .await;
    let obj =
        wait_ready::<RecoveryRequest>(&t, "r", "False", Some("InvalidSpec"), ISSUE_TIMEOUT).await;
    let ready = ready_condition(&obj);
    let message = ready["message"].as_str().expect("message");
    assert!(
        message.contains("Requested return_to URL \"https://evil.example.com/x\" is not allowed."),
        "{message}"
    );
    assert_eq!(status(&obj)["phase"], "Failed");
    let stalled = status(&obj)["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Stalled"))
        .cloned();
    assert_eq!(stalled.map(|c| c["status"].clone()), Some(json!("True")));
    assert!(
        secrets(&t).get_opt("r").await.expect("get").is_none(),
        "no Secret for a refused request"
    );
    let calls = operator.kratos.metrics().calls("create_recovery_link");
    // A negative check: a bounded observation window (several resyncs) without a retry.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        operator.kratos.metrics().calls("create_recovery_link"),
        calls,
        "stalled: not retried"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn one_shot_across_resyncs_and_an_operator_restart() {
    let t = setup("recovery-oneshot").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let operator = start_operator(&t).await;
    let id = kratos_identity(&admin(&t), "oneshot").await;
    request(&t, "r", json!({ "identityId": id, "expiresIn": "1h" })).await;
    let first = wait_ready::<RecoveryRequest>(&t, "r", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    let link = secret_data(&t, "r").await["recoveryLink"].clone();
    assert_eq!(operator.kratos.metrics().calls("create_recovery_link"), 1);

    // Several resyncs (2 s in tests) mint nothing: a negative check over a bounded window.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(operator.kratos.metrics().calls("create_recovery_link"), 1);
    assert!(operator.kratos.metrics().total_calls() >= 1);
    assert_eq!(secret_data(&t, "r").await["recoveryLink"], link);

    // Neither does a restart (again a bounded observation window).
    operator.stop();
    let operator = start_operator(&t).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        operator.kratos.metrics().calls("create_recovery_link"),
        0,
        "a restart must not mint again"
    );
    assert_eq!(operator.kratos.metrics().calls("create_recovery_code"), 0);
    assert_eq!(secret_data(&t, "r").await["recoveryLink"], link);
    let now = requests(&t).get("r").await.expect("get");
    assert_eq!(
        status(&now)["issuedGeneration"],
        status(&first)["issuedGeneration"]
    );
    assert_eq!(status(&now)["expiresAt"], status(&first)["expiresAt"]);
    // Events are published in the background: the one Issued Event must be there before it is
    // counted (and no second one appeared in the windows above).
    support::wait_event(&t, "r", "Issued").await;
    let issued_events = events_for(&t, "r")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Issued"))
        .count();
    assert_eq!(issued_events, 1);
    t.cleanup().await;
}

#[tokio::test]
async fn a_spec_change_issues_a_new_one_and_replaces_the_data() {
    let t = setup("recovery-respec").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let operator = start_operator(&t).await;
    let id = kratos_identity(&admin(&t), "respec").await;
    let v1 = request(&t, "r", json!({ "identityId": id, "expiresIn": "1h" })).await;
    wait_ready::<RecoveryRequest>(&t, "r", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    let first = secret_data(&t, "r").await;

    let v2 = request(&t, "r", json!({ "identityId": id, "expiresIn": "2h" })).await;
    assert!(v2.metadata.generation > v1.metadata.generation);
    let obj = wait_ready::<RecoveryRequest>(&t, "r", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    assert_eq!(
        status(&obj)["issuedGeneration"],
        json!(v2.metadata.generation)
    );
    let second = secret_data(&t, "r").await;
    assert_ne!(second["recoveryLink"], first["recoveryLink"]);
    let (e1, e2): (Timestamp, Timestamp) = (
        first["expiresAt"].parse().expect("t"),
        second["expiresAt"].parse().expect("t"),
    );
    assert!(
        e2.duration_since(e1) >= SignedDuration::from_mins(59),
        "{e1} -> {e2}"
    );
    assert_eq!(operator.kratos.metrics().calls("create_recovery_link"), 2);

    // Switching to a code replaces the data again, now with a code.
    let v3 = request(
        &t,
        "r",
        json!({ "identityId": id, "method": "code", "expiresIn": "2h" }),
    )
    .await;
    let obj = wait_ready::<RecoveryRequest>(&t, "r", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    assert_eq!(
        status(&obj)["issuedGeneration"],
        json!(v3.metadata.generation)
    );
    let third = secret_data(&t, "r").await;
    assert_eq!(
        third.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["expiresAt", "recoveryCode", "recoveryLink"]
    );
    assert_ne!(third["recoveryLink"], second["recoveryLink"]);
    assert_eq!(operator.kratos.metrics().calls("create_recovery_code"), 1);
    assert_eq!(operator.kratos.metrics().calls("create_recovery_link"), 2);

    // Moving to another Secret issues into it and deletes the old one.
    let v4 = request(
        &t,
        "r",
        json!({ "identityId": id, "method": "code", "expiresIn": "2h", "secretName": "r-moved" }),
    )
    .await;
    let obj = wait_ready::<RecoveryRequest>(&t, "r", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    assert_eq!(
        status(&obj)["issuedGeneration"],
        json!(v4.metadata.generation)
    );
    assert_eq!(status(&obj)["secretName"], "r-moved");
    let fourth = secret_data(&t, "r-moved").await;
    assert_ne!(fourth["recoveryCode"], third["recoveryCode"]);
    eventually(
        "the previous Secret to be deleted",
        Duration::from_secs(20),
        || async { matches!(secrets(&t).get_opt("r").await, Ok(None)).then_some(()) },
    )
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn a_secret_written_before_a_lost_status_write_is_adopted_not_reissued() {
    let t = setup("recovery-crash").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let id = kratos_identity(&admin(&t), "crash").await;
    support::install_crds(&t.client).await;
    // The request exists, the operator wrote the Secret for generation 1, then crashed before the
    // status write.
    let obj = eventually(
        "the RecoveryRequest CRD to serve",
        Duration::from_secs(20),
        || async {
            requests(&t)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
                        "metadata": { "name": "r" }, "spec": { "identityId": id, "expiresIn": "1h" }
                    }))
                    .expect("request"),
                )
                .await
                .ok()
        },
    )
    .await;
    let expires = Timestamp::now() + SignedDuration::from_mins(50);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "r",
            "labels": { "app.kubernetes.io/managed-by": "kratos-operator" },
            "annotations": {
                "kratos-operator.dev/issued-generation": obj.metadata.generation.expect("generation").to_string(),
                "kratos-operator.dev/expires-at": expires.to_string(),
                "kratos-operator.dev/identity-id": id,
            },
            "ownerReferences": [{
                "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest", "name": "r",
                "uid": obj.uid().expect("uid"), "controller": true, "blockOwnerDeletion": true
            }]
        },
        "stringData": { "recoveryLink": "http://sentinel.invalid/link", "expiresAt": expires.to_string() }
    }))
    .expect("secret");
    secrets(&t)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");

    let operator = start_operator(&t).await;
    let obj = wait_ready::<RecoveryRequest>(&t, "r", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    let s = status(&obj);
    assert_eq!(s["issuedGeneration"], json!(obj.metadata.generation));
    assert_eq!(ts(&s["expiresAt"]).as_second(), expires.as_second());
    // A negative check: a bounded observation window (resyncs) in which nothing is issued.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        operator.kratos.metrics().calls("create_recovery_link"),
        0,
        "adopted, not issued again"
    );
    assert_eq!(
        secret_data(&t, "r").await["recoveryLink"],
        "http://sentinel.invalid/link"
    );
    support::wait_event(&t, "r", "Adopted").await;
    t.cleanup().await;
}

#[tokio::test]
async fn after_expires_at_the_secret_is_cleared_and_the_phase_is_expired() {
    let t = setup("recovery-expire").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let _operator = start_operator(&t).await;
    let id = kratos_identity(&admin(&t), "expire").await;
    request(
        &t,
        "r",
        json!({ "identityId": id, "method": "code", "expiresIn": "3s" }),
    )
    .await;
    wait_phase(&t, "r", "Issued", ISSUE_TIMEOUT).await;
    assert!(secret_data(&t, "r").await.contains_key("recoveryCode"));
    let obj = wait_phase(&t, "r", "Expired", Duration::from_secs(30)).await;
    assert!(ts(&status(&obj)["expiresAt"]) <= Timestamp::now());
    assert_eq!(ready_condition(&obj)["reason"], "Expired");
    let secret = secrets(&t).get("r").await.expect("the Secret stays, empty");
    assert!(
        data(&secret).is_empty(),
        "data left: {:?}",
        data(&secret).keys().collect::<Vec<_>>()
    );
    support::wait_event(&t, "r", "Expired").await;
    t.cleanup().await;
}

#[tokio::test]
async fn deleting_the_request_deletes_the_secret() {
    let t = setup("recovery-gc").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let _operator = start_operator(&t).await;
    let id = kratos_identity(&admin(&t), "gc").await;
    request(
        &t,
        "r",
        json!({ "identityId": id, "secretName": "r-secret" }),
    )
    .await;
    wait_phase(&t, "r", "Issued", ISSUE_TIMEOUT).await;
    assert!(
        secrets(&t)
            .get_opt("r-secret")
            .await
            .expect("get")
            .is_some()
    );
    requests(&t)
        .delete("r", &DeleteParams::default())
        .await
        .expect("delete request");
    eventually(
        "the garbage collector to delete the Secret",
        Duration::from_secs(60),
        || async { matches!(secrets(&t).get_opt("r-secret").await, Ok(None)).then_some(()) },
    )
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn waits_for_the_identity_and_issues_once_it_is_ready() {
    let t = setup("recovery-identity").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    // A resync far beyond the test's timeouts: only the Identity's change (seen by the Identity
    // controller's watch and passed on) can wake the waiting request.
    let operator = start_operator_with(
        &t,
        &t.kratos_admin_url,
        &t.kratos_public_url,
        kratos_operator::controller::Settings {
            resync_interval: Duration::from_secs(600),
            ..test_settings(&t.namespace)
        },
    )
    .await;
    let name = unique_name("carol");
    request(
        &t,
        "r",
        json!({ "identityRef": { "name": name }, "expiresIn": "1h" }),
    )
    .await;
    let obj =
        wait_ready::<RecoveryRequest>(&t, "r", "False", Some("IdentityNotReady"), ISSUE_TIMEOUT)
            .await;
    assert_eq!(status(&obj)["phase"], "Pending");
    assert_eq!(status(&obj)["identity"], name.as_str());
    assert!(
        ready_condition(&obj)["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not exist"))
    );
    assert!(secrets(&t).get_opt("r").await.expect("get").is_none());
    assert_eq!(operator.kratos.metrics().calls("create_recovery_link"), 0);
    // Let the request's own status write and its echo pass: from here on nothing but the
    // Identity can trigger it.
    tokio::time::sleep(Duration::from_secs(3)).await;

    apply::<Identity>(
        &t,
        json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": name },
            "spec": { "schemaId": "customer", "traits": { "email": format!("{name}@example.com") } }
        }),
    )
    .await;
    let identity = wait_ready::<Identity>(&t, &name, "True", None, ISSUE_TIMEOUT).await;
    let kratos_id = identity
        .status
        .and_then(|s| s.identity_id)
        .expect("identityId");
    let obj = wait_ready::<RecoveryRequest>(&t, "r", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    assert_eq!(status(&obj)["identityId"], kratos_id.as_str());
    assert!(secret_data(&t, "r").await.contains_key("recoveryLink"));
    assert_eq!(operator.kratos.metrics().calls("create_recovery_link"), 1);
    t.cleanup().await;
}

#[tokio::test]
async fn an_unknown_identity_id_fails_with_kratos_reason() {
    let t = setup("recovery-unknown").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let operator = start_operator(&t).await;
    let unknown = "00000000-0000-4000-8000-00000000beef";
    request(
        &t,
        "link",
        json!({ "identityId": unknown, "method": "link" }),
    )
    .await;
    request(
        &t,
        "code",
        json!({ "identityId": unknown, "method": "code" }),
    )
    .await;
    for (name, reason) in [
        ("link", "The requested identity id does not exist."),
        ("code", "could not find identity"),
    ] {
        let obj = wait_phase(&t, name, "Failed", ISSUE_TIMEOUT).await;
        let ready = ready_condition(&obj);
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("IdentityNotFound")),
            "{ready}"
        );
        assert!(
            ready["message"]
                .as_str()
                .is_some_and(|m| m.contains(reason) && m.contains(unknown)),
            "{ready}"
        );
        eventually("a Warning Event", Duration::from_secs(30), || async {
            events_for(&t, name)
                .await
                .iter()
                .any(|e| e.type_.as_deref() == Some("Warning"))
                .then_some(())
        })
        .await;
    }
    // Failed for good: not retried on resync (a negative check over a bounded window).
    let calls = operator.kratos.metrics().total_calls();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(operator.kratos.metrics().total_calls(), calls);
    t.cleanup().await;
}

#[tokio::test]
async fn a_disabled_method_fails_naming_the_setting_to_enable() {
    let t = setup("recovery-disabled").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    // A Kratos with the link method disabled.
    let (instance, dir) = support::private_kratos(
        &t,
        KratosOptions {
            link_method: false,
            ..KratosOptions::default()
        },
    )
    .await;
    let kratos = support::kratos_client(&instance.admin_url(), &instance.public_url());
    let id = kratos_identity(&kratos, "disabled").await;
    let _operator = start_operator_with(
        &t,
        &instance.admin_url(),
        &instance.public_url(),
        support::test_settings(&t.namespace),
    )
    .await;
    request(&t, "r", json!({ "identityId": id, "method": "link" })).await;
    let obj = wait_phase(&t, "r", "Failed", ISSUE_TIMEOUT).await;
    let ready = ready_condition(&obj);
    assert_eq!(ready["reason"], "MethodDisabled", "{ready}");
    let message = ready["message"].as_str().expect("message");
    assert!(
        message.contains("selfservice.methods.link.enabled"),
        "{message}"
    );
    assert!(
        message.contains("disabled by system administrator"),
        "{message}"
    );
    // The code method of the same Kratos still works.
    request(&t, "c", json!({ "identityId": id, "method": "code" })).await;
    wait_phase(&t, "c", "Issued", ISSUE_TIMEOUT).await;
    support::drop_kratos(instance, dir, false).await;
    t.cleanup().await;
}

/// Whether `haystack` contains `digits` as a whole number (not inside a longer digit run).
fn contains_number(haystack: &str, digits: &str) -> bool {
    haystack.match_indices(digits).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + digits.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

#[tokio::test]
async fn the_link_and_the_code_appear_in_no_event_status_log_or_metric() {
    // Everything the operator logs, at TRACE, from every thread, from here on.
    let logs = support::logs::capture();
    let t = setup("recovery-leak").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    let operator = start_operator(&t).await;
    let id = kratos_identity(&admin(&t), "leak").await;
    request(&t, "link", json!({ "identityId": id, "method": "link", "expiresIn": "4s", "returnTo": ALLOWED_RETURN_URL })).await;
    request(
        &t,
        "code",
        json!({ "identityId": id, "method": "code", "expiresIn": "4s" }),
    )
    .await;
    wait_phase(&t, "link", "Issued", ISSUE_TIMEOUT).await;
    wait_phase(&t, "code", "Issued", ISSUE_TIMEOUT).await;
    let link = secret_data(&t, "link").await;
    let code = secret_data(&t, "code").await;
    // Through expiry, resyncs and a spec change (which issues again and replaces the data).
    wait_phase(&t, "link", "Expired", Duration::from_secs(30)).await;
    wait_phase(&t, "code", "Expired", Duration::from_secs(30)).await;
    request(
        &t,
        "code",
        json!({ "identityId": id, "method": "code", "expiresIn": "1h" }),
    )
    .await;
    let reissued =
        wait_ready::<RecoveryRequest>(&t, "code", "True", Some("Issued"), ISSUE_TIMEOUT).await;
    assert_eq!(
        status(&reissued)["issuedGeneration"],
        json!(reissued.metadata.generation)
    );
    let code2 = secret_data(&t, "code").await;
    // A few more resyncs to scan (the leak checks below are negative: a bounded window).
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Events are published in the background: the one checked for below must have arrived.
    support::wait_event(&t, "link", "Issued").await;

    let token = query_param(&link["recoveryLink"], "token");
    let secrets_to_find: Vec<(&str, &str)> = vec![
        ("link", link["recoveryLink"].as_str()),
        ("link token", token.as_str()),
        ("code flow link", code["recoveryLink"].as_str()),
        ("second code flow link", code2["recoveryLink"].as_str()),
    ];
    let codes = [
        code["recoveryCode"].as_str(),
        code2["recoveryCode"].as_str(),
    ];
    assert!(token.len() >= 16, "a real token");

    let mut places: Vec<(&str, String)> = Vec::new();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(t.client.clone(), &t.namespace);
    let events = events
        .list(&Default::default())
        .await
        .expect("events")
        .items;
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("Issued")),
        "events are captured"
    );
    places.push((
        "events.k8s.io Events",
        serde_json::to_string(&events).expect("json"),
    ));
    let core_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(t.client.clone(), &t.namespace);
    places.push((
        "core Events",
        serde_json::to_string(
            &core_events
                .list(&Default::default())
                .await
                .expect("events")
                .items,
        )
        .expect("json"),
    ));
    let objects = requests(&t)
        .list(&Default::default())
        .await
        .expect("requests")
        .items;
    places.push((
        "RecoveryRequests",
        serde_json::to_string(&objects).expect("json"),
    ));
    let mut registry = prometheus_client::registry::Registry::default();
    operator.kratos.metrics().register(&mut registry);
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &registry).expect("encode metrics");
    assert!(
        metrics.contains("create_recovery_code"),
        "metrics are captured"
    );
    places.push(("metrics", metrics));
    let log = logs.text();
    assert!(
        log.contains("issued a recovery link into its Secret"),
        "logs are captured"
    );
    assert!(
        log.contains("kratos call finished") || log.contains("kratos_call"),
        "client logs are captured"
    );
    places.push(("logs", log));

    for (place, text) in &places {
        for (what, value) in &secrets_to_find {
            assert!(!text.contains(value), "the {what} appears in {place}");
        }
        for code in codes {
            assert!(
                !contains_number(text, code),
                "a recovery code appears in {place}"
            );
        }
    }
    t.cleanup().await;
}

#[tokio::test]
async fn cel_rejects_invalid_specs() {
    let t = setup("recovery-cel").await;
    support::opt_in(&t, &["kratos-operator.dev/allow-recovery-by-id"]).await;
    support::install_crds(&t.client).await;
    // Untyped, so that specs the Rust types cannot even express reach the API server.
    let resource = kube::api::ApiResource::erase::<RecoveryRequest>(&());
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(t.client.clone(), &t.namespace, &resource);
    let create = |spec: Value| {
        let api = api.clone();
        async move {
            let obj: kube::api::DynamicObject = serde_json::from_value(json!({
                "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
                "metadata": { "name": unique_name("cel") }, "spec": spec
            }))
            .expect("request");
            api.create(&PostParams::default(), &obj)
                .await
                .map_err(|e| e.to_string())
        }
    };
    // The CRD may take a moment to be served.
    eventually(
        "a valid request to be accepted",
        Duration::from_secs(20),
        || async {
            create(json!({ "identityId": "x", "expiresIn": "1h30m" }))
                .await
                .ok()
        },
    )
    .await;
    let defaulted = create(json!({ "identityId": "x" }))
        .await
        .expect("a minimal request");
    assert_eq!(
        defaulted.data["spec"]["method"], "link",
        "method defaults to link"
    );
    for (spec, why) in [
        (
            json!({ "identityId": "x", "identityRef": { "name": "a" } }),
            "exactly one of",
        ),
        (json!({}), "exactly one of"),
        (
            json!({ "identityId": "x", "method": "sms" }),
            "Unsupported value",
        ),
        (
            json!({ "identityId": "x", "method": "code", "returnTo": ALLOWED_RETURN_URL }),
            "only supported with method link",
        ),
        (json!({ "identityId": "x", "expiresIn": "1d" }), "expiresIn"),
        (
            json!({ "identityId": "x", "expiresIn": "0s" }),
            "at least 1s",
        ),
        (
            json!({ "identityId": "x", "expiresIn": "500ms" }),
            "at least 1s",
        ),
        (
            json!({ "identityId": "x", "returnTo": "/relative" }),
            "absolute http(s) URL",
        ),
        (
            json!({ "identityId": "x", "secretName": "Not_A_Name" }),
            "secretName",
        ),
    ] {
        let result = create(spec.clone()).await;
        match result {
            Ok(_) => panic!("accepted {spec}"),
            Err(e) => assert!(e.contains(why), "{spec}: {e}"),
        }
    }
    t.cleanup().await;
}

#[test]
fn printer_columns_are_identity_method_phase_expires_age() {
    use kube::CustomResourceExt;
    let crd = RecoveryRequest::crd();
    assert_eq!(crd.spec.names.short_names, Some(vec!["krr".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["kratos".to_string()]));
    let columns: Vec<(String, String, i32)> = crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.json_path, c.priority.unwrap_or(0)))
        .collect();
    let default_view: Vec<&str> = columns
        .iter()
        .filter(|c| c.2 == 0)
        .map(|c| c.0.as_str())
        .collect();
    assert_eq!(
        default_view,
        vec!["Identity", "Method", "Phase", "Expires", "Age"]
    );
    let path = |name: &str| {
        columns
            .iter()
            .find(|c| c.0 == name)
            .map(|c| c.1.clone())
            .unwrap_or_default()
    };
    assert_eq!(path("Identity"), ".status.identity");
    assert_eq!(path("Method"), ".spec.method");
    assert_eq!(path("Phase"), ".status.phase");
    assert_eq!(path("Expires"), ".status.expiresAt");
}
