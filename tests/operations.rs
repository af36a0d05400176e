//! Running it like a cluster add-on: /metrics, /healthz and /readyz; namespace scoping; leader
//! election between two operator processes; `export` of identities already in Kratos.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::coordination::v1::Lease;
use kratos_operator::{
    api::{Identity, UID_MARKER},
    controller::Context,
    export::{ExportOptions, export},
    kratos::{CreateIdentityBody, IdentityCredentialsImport, IdentityState},
    server,
};
use kratos_operator_testenv::kratos::KratosOptions;
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::ApiResource,
};
use serde_json::json;
use support::{
    apply, eventually, kratos_client, setup, start_operator, start_operator_with, test_settings,
    wait_ready,
};

const T: Duration = Duration::from_secs(60);

fn identity_manifest(name: &str, email: &str) -> serde_json::Value {
    json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity", "metadata": { "name": name },
        "spec": { "schemaId": "customer", "traits": { "email": email } } })
}

async fn get(url: &str) -> (u16, String, String) {
    let resp = reqwest::get(url).await.expect("GET");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let t = setup("ops-metrics").await;
    let op = start_operator(&t).await;
    let (addr, _server) = server::serve(op.ctx.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{addr}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    eventually("/readyz to answer 200", T, || async {
        (get(&format!("{base}/readyz")).await.0 == 200).then_some(())
    })
    .await;
    apply::<Identity>(
        &t,
        identity_manifest("m1", &format!("m1.{}@example.com", t.namespace)),
    )
    .await;
    wait_ready::<Identity>(&t, "m1", "True", Some("Synced"), T).await;
    // The status is written in the background and may be seen here before the reconcile that
    // made it has ended (its duration is recorded then) and before the operator's own cache
    // holds it (identities_managed counts the Ready objects there): wait for the series.
    const SERIES: [&str; 5] = [
        "kratos_operator_reconciles_total{kind=\"Identity\"}",
        "kratos_operator_reconcile_duration_seconds_count{kind=\"Identity\"}",
        "kratos_operator_reconcile_outcomes_total{kind=\"Identity\",reason=\"Synced\"}",
        "kratos_operator_reconciles_in_flight{kind=\"Identity\"}",
        "kratos_operator_identities_managed 1",
    ];
    let (ctype, text) = eventually(
        &format!("/metrics to show every one of {SERIES:?}"),
        T,
        || async {
            let (status, ctype, text) = get(&format!("{base}/metrics")).await;
            (status == 200 && SERIES.iter().all(|s| text.contains(s))).then_some((ctype, text))
        },
    )
    .await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(
        text.contains("operation=\"batch_patch_identities\""),
        "Kratos calls per operation:\n{text}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn readyz_fails_with_a_reason_when_kratos_does_not_answer() {
    let t = setup("ops-notready").await;
    support::install_crds(&t.client).await;
    let dead = "http://127.0.0.1:9";
    let ctx = std::sync::Arc::new(Context::new(
        t.client.clone(),
        kratos_client(dead, dead),
        test_settings(&t.namespace),
    ));
    let (addr, _server) = server::serve(ctx, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (status, _, body) = get(&format!("http://{addr}/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("Kratos does not answer"), "{body}");
    t.cleanup().await;
}

#[tokio::test]
async fn only_watched_namespaces_are_touched() {
    let watched = setup("ops-watched").await;
    let other = setup("ops-other").await;
    let _op = start_operator(&watched).await;
    apply::<Identity>(
        &watched,
        identity_manifest("in", &format!("in.{}@example.com", watched.namespace)),
    )
    .await;
    let outside_email = format!("out.{}@example.com", other.namespace);
    apply::<Identity>(&other, identity_manifest("out", &outside_email)).await;
    wait_ready::<Identity>(&watched, "in", "True", Some("Synced"), T).await;
    // A negative check: a bounded observation window in which the other namespace stays alone.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out: Identity = Api::namespaced(other.client.clone(), &other.namespace)
        .get("out")
        .await
        .unwrap();
    assert!(
        out.status.is_none(),
        "an unwatched namespace gets no status: {:?}",
        out.status
    );
    assert!(
        out.finalizers().is_empty(),
        "an unwatched namespace gets no finalizer"
    );
    let k = kratos_client(&other.kratos_admin_url, &other.kratos_public_url);
    assert!(
        k.find_by_credentials_identifier(&outside_email)
            .await
            .unwrap()
            .is_empty()
    );
    watched.cleanup().await;
    other.cleanup().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    name: String,
    metrics: String,
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica(t: &support::TestEnv, name: &str) -> Replica {
    replica_with_lease(t, name, "4s")
}

fn replica_with_lease(t: &support::TestEnv, name: &str, lease: &str) -> Replica {
    replica_with(t, name, lease, &[])
}

/// The log file of replica `name` of the test `t`.
fn replica_log(t: &support::TestEnv, name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}.log", t.namespace))
}

/// An operator process with leader election, its Lease lasting `lease`, and `extra` variables.
fn replica_with(t: &support::TestEnv, name: &str, lease: &str, extra: &[(&str, &str)]) -> Replica {
    let port = free_port();
    let log = std::fs::File::create(replica_log(t, name)).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kratos-operator"));
    command.envs(extra.iter().copied());
    let child = command
        .env("KUBECONFIG", &t.env.state.kubeconfig)
        .env("KRATOS_ADMIN_URL", &t.kratos_admin_url)
        .env("KRATOS_PUBLIC_URL", &t.kratos_public_url)
        .env("LEADER_ELECT", "true")
        .env("LEASE_DURATION", lease)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", &t.namespace)
        .env("WATCH_NAMESPACE", &t.namespace)
        .env("RESYNC_INTERVAL", "2s")
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info,kube_lease_manager=debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the operator binary");
    Replica {
        name: name.into(),
        metrics: format!("http://127.0.0.1:{port}/metrics"),
        child,
    }
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get("kratos-operator-leader")
        .await
        .ok()?
        .spec?
        .holder_identity
}

/// The status of a replica's /readyz.
async fn readyz(r: &Replica) -> u16 {
    let url = r.metrics.replace("/metrics", "/readyz");
    get(&url).await.0
}

async fn kratos_calls(metrics_url: &str) -> u64 {
    counter(metrics_url, "kratos_client_calls_total").await as u64
}

#[tokio::test]
async fn only_the_leader_writes_and_a_killed_leader_hands_over() {
    let t = setup("ops-leader").await;
    support::install_crds(&t.client).await;
    let mut replicas = vec![replica(&t, "replica-a"), replica(&t, "replica-b")];
    let leases: Api<Lease> = Api::namespaced(t.client.clone(), &t.namespace);
    let holder = eventually("a leader to be elected", T, || async {
        leases
            .get("kratos-operator-leader")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
    apply::<Identity>(
        &t,
        identity_manifest("l1", &format!("l1.{}@example.com", t.namespace)),
    )
    .await;
    wait_ready::<Identity>(&t, "l1", "True", Some("Synced"), T).await;
    let leader_idx = replicas.iter().position(|r| r.name == holder).unwrap();
    let follower_idx = 1 - leader_idx;
    assert!(
        kratos_calls(&replicas[leader_idx].metrics).await > 0,
        "the leader talks to Kratos"
    );
    assert_eq!(
        kratos_calls(&replicas[follower_idx].metrics).await,
        0,
        "the follower never calls Kratos"
    );
    // kratos_operator_leading says which replica runs the controllers (the NoLeader alert).
    const LEADING: &str = "kratos_operator_leading";
    assert_eq!(counter(&replicas[leader_idx].metrics, LEADING).await, 1.0);
    assert_eq!(counter(&replicas[follower_idx].metrics, LEADING).await, 0.0);

    let killed = replicas.remove(leader_idx);
    drop(killed); // SIGKILL: no release of the lease
    let started = std::time::Instant::now();
    apply::<Identity>(
        &t,
        identity_manifest("l2", &format!("l2.{}@example.com", t.namespace)),
    )
    .await;
    wait_ready::<Identity>(&t, "l2", "True", Some("Synced"), Duration::from_secs(40)).await;
    // The Lease record may trail the new leader's first reconciles by a renewal.
    let survivor = replicas[0].name.clone();
    let new_holder = eventually("the Lease to name the surviving replica", T, || async {
        let holder = leases
            .get("kratos-operator-leader")
            .await
            .ok()?
            .spec?
            .holder_identity?;
        (holder == survivor).then_some(holder)
    })
    .await;
    assert_eq!(new_holder, replicas[0].name);
    assert!(
        started.elapsed() < Duration::from_secs(4 + 20),
        "handover took {:?}",
        started.elapsed()
    );
    t.cleanup().await;
}

/// The sum of a counter (all its label sets) on a replica's /metrics; 0 when unreachable.
async fn counter(metrics_url: &str, name: &str) -> f64 {
    let Ok(resp) = reqwest::get(metrics_url).await else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until a replica has finished `n` more drift sweeps than it had when called.
async fn sweeps(r: &Replica, n: f64) {
    const SWEEPS: &str = "kratos_operator_drift_sweeps_total";
    let start = counter(&r.metrics, SWEEPS).await;
    eventually(&format!("{n} sweeps of {}", r.name), T, || async {
        (counter(&r.metrics, SWEEPS).await >= start + n).then_some(())
    })
    .await;
}

/// The traits of a Kratos identity.
async fn kratos_traits(t: &support::TestEnv, id: &str) -> serde_json::Value {
    let body: serde_json::Value =
        reqwest::get(format!("{}/admin/identities/{id}", t.kratos_admin_url))
            .await
            .expect("GET identity")
            .json()
            .await
            .expect("identity json");
    body["traits"].clone()
}

fn identity_id(obj: &Identity) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.identity_id.clone())
        .expect("status.identityId")
}

/// Sharding as Flux does it: two operator Deployments (one process each here, with leader
/// election and a Lease of their own), each given a label selector, own disjoint shares of the
/// objects. Each object is handled by exactly one of them: its Events name that shard's
/// instance, the other shard leaves it alone even when the owner is down, and an object
/// matching neither is not touched. A reference may cross shards.
#[tokio::test]
async fn label_selectors_shard_the_objects_between_operators() {
    const KEY: &str = "sharding.kratos-operator.dev/key";
    let t = setup("ops-shards").await;
    support::install_crds(&t.client).await;
    let shard = |name: &str, selector: &str, lease: &str| {
        replica_with(
            &t,
            name,
            "4s",
            &[("LABEL_SELECTOR", selector), ("LEASE_NAME", lease)],
        )
    };
    let a = shard("shard-a", &format!("{KEY}=a"), "kratos-operator-shard-a");
    let mut b = Some(shard(
        "shard-b",
        &format!("{KEY}=b"),
        "kratos-operator-shard-b",
    ));
    let leases: Api<Lease> = Api::namespaced(t.client.clone(), &t.namespace);
    for (lease, holder) in [
        ("kratos-operator-shard-a", "shard-a"),
        ("kratos-operator-shard-b", "shard-b"),
    ] {
        eventually(&format!("{holder} to hold {lease}"), T, || async {
            let spec = leases.get(lease).await.ok()?.spec?;
            (spec.holder_identity.as_deref() == Some(holder)).then_some(())
        })
        .await;
    }
    assert!(
        leases
            .get_opt(kratos_operator::leader::LEASE_NAME)
            .await
            .unwrap()
            .is_none(),
        "a shard took the default Lease"
    );

    let email = |name: &str| format!("{name}.{}@example.com", t.namespace);
    let labelled = |name: &str, shard: Option<&str>, spec: serde_json::Value| {
        let mut manifest = json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
            "metadata": { "name": name }, "spec": spec });
        if let Some(shard) = shard {
            manifest["metadata"]["labels"] = json!({ KEY: shard });
        }
        manifest
    };
    // The schema reference of b-ref lives in shard a.
    apply::<kratos_operator::api::IdentitySchemaRef>(
        &t,
        json!({ "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "IdentitySchemaRef",
            "metadata": { "name": "customer", "labels": { KEY: "a" } }, "spec": { "schemaId": "customer" } }),
    )
    .await;
    let owners = [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")];
    for (name, shard) in owners {
        apply::<Identity>(
            &t,
            labelled(
                name,
                Some(shard),
                json!({ "schemaId": "customer", "traits": { "email": email(name) } }),
            ),
        )
        .await;
    }
    apply::<Identity>(
        &t,
        labelled(
            "b-ref",
            Some("b"),
            json!({ "schemaRef": { "name": "customer" }, "traits": { "email": email("b-ref") } }),
        ),
    )
    .await;
    apply::<Identity>(
        &t,
        labelled(
            "nobody",
            None,
            json!({ "schemaId": "customer", "traits": { "email": email("nobody") } }),
        ),
    )
    .await;
    for name in ["a1", "a2", "b1", "b2", "b-ref"] {
        wait_ready::<Identity>(&t, name, "True", Some("Synced"), T).await;
    }
    wait_ready::<kratos_operator::api::IdentitySchemaRef>(&t, "customer", "True", None, T).await;

    // Each object's Events come from its own shard only.
    for (name, shard) in owners
        .into_iter()
        .chain([("b-ref", "b"), ("customer", "a")])
    {
        let want = format!("shard-{shard}");
        let events = eventually(&format!("Events about {name}"), T, || async {
            let events = support::events_for(&t, name).await;
            (!events.is_empty()).then_some(events)
        })
        .await;
        for event in events {
            assert_eq!(
                event.reporting_instance.as_deref(),
                Some(want.as_str()),
                "{name} ({shard}) has an Event from another instance: {:?} {:?}",
                event.reason,
                event.note
            );
        }
    }

    // Neither shard touches an object outside its selector, even across sweeps.
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    sweeps(&a, 2.0).await;
    sweeps(b.as_ref().unwrap(), 2.0).await;
    let nobody = identities.get("nobody").await.unwrap();
    assert!(
        nobody.status.is_none(),
        "an unselected object got a status: {:?}",
        nobody.status
    );
    assert!(
        nobody.finalizers().is_empty(),
        "an unselected object got a finalizer"
    );

    // With shard b down, a spec change of one of its objects waits for it: shard a, sweeping
    // Kratos all along, leaves it alone.
    let b1 = identities.get("b1").await.unwrap();
    let b1_id = identity_id(&b1);
    drop(b.take());
    apply::<Identity>(
        &t,
        labelled(
            "b1",
            Some("b"),
            json!({ "schemaId": "customer", "traits": { "email": email("b1-changed") } }),
        ),
    )
    .await;
    sweeps(&a, 2.0).await;
    assert_eq!(
        kratos_traits(&t, &b1_id).await["email"],
        json!(email("b1")),
        "shard a changed an object of shard b"
    );
    let _b = shard("shard-b-2", &format!("{KEY}=b"), "kratos-operator-shard-b");
    eventually("shard b's successor to apply the change", T, || async {
        (kratos_traits(&t, &b1_id).await["email"] == json!(email("b1-changed"))).then_some(())
    })
    .await;

    // Relabelled, an object moves to the other shard with its identity: no duplicate.
    let b2_id = identity_id(&identities.get("b2").await.unwrap());
    apply::<Identity>(
        &t,
        labelled(
            "b2",
            Some("a"),
            json!({ "schemaId": "customer", "traits": { "email": email("b2-moved") } }),
        ),
    )
    .await;
    eventually("shard a to apply the moved object's change", T, || async {
        (kratos_traits(&t, &b2_id).await["email"] == json!(email("b2-moved"))).then_some(())
    })
    .await;
    let moved = identities.get("b2").await.unwrap();
    assert_eq!(
        identity_id(&moved),
        b2_id,
        "the moved object changed identity"
    );
    let kratos = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    for address in [email("b2"), email("b2-moved")] {
        let found = kratos
            .find_by_credentials_identifier(&address)
            .await
            .expect("lookup by identifier");
        let want = usize::from(address == email("b2-moved"));
        let ids: Vec<&str> = found.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids.len(), want, "identities with {address}: {ids:?}");
    }
    t.cleanup().await;
}

/// A label selector the API server refuses stops the operator at start, saying why.
#[tokio::test]
async fn an_invalid_label_selector_stops_the_operator_with_a_clear_error() {
    let t = setup("ops-bad-selector").await;
    support::install_crds(&t.client).await;
    let mut r = replica_with(&t, "bad", "4s", &[("LABEL_SELECTOR", "shard in (a")]);
    let status = eventually("the operator to exit", T, || {
        let exited = r.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(!status.success(), "it exited with {status}");
    let log = std::fs::read_to_string(replica_log(&t, "bad")).unwrap();
    assert!(
        log.contains("is not a valid label selector") && log.contains("shard in (a"),
        "the log does not say what is wrong: {log}"
    );
    t.cleanup().await;
}

/// A pod stop as the kubelet does it: SIGTERM to the operator (PID 1 in the image). The leader
/// stops its controllers, releases the Lease and exits 0 in seconds; the follower, Ready all
/// along, takes over at once although the Lease would stay valid for 30 s.
#[tokio::test]
async fn a_sigtermed_leader_exits_in_seconds_and_its_follower_takes_over_at_once() {
    let t = setup("ops-term").await;
    support::install_crds(&t.client).await;
    let leases: Api<Lease> = Api::namespaced(t.client.clone(), &t.namespace);
    let mut leader = replica_with_lease(&t, "replica-a", "30s");
    eventually("replica-a to lead", T, || async {
        (lease_holder(&leases).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let follower = replica_with_lease(&t, "replica-b", "30s");
    eventually("the leader and the follower to be ready", T, || async {
        (readyz(&leader).await == 200 && readyz(&follower).await == 200).then_some(())
    })
    .await;
    apply::<Identity>(
        &t,
        identity_manifest("t1", &format!("t1.{}@example.com", t.namespace)),
    )
    .await;
    wait_ready::<Identity>(&t, "t1", "True", Some("Synced"), T).await;

    let sent = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &leader.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = eventually("the leader to exit", T, || {
        let exited = leader.child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let stopped_in = sent.elapsed();
    assert!(exit.success(), "a SIGTERM'd leader exits 0, got {exit}");
    assert!(
        stopped_in < Duration::from_secs(10),
        "the leader took {stopped_in:?} to stop"
    );
    eventually("replica-b to lead", T, || async {
        (lease_holder(&leases).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let handover = sent.elapsed();
    assert!(
        handover < Duration::from_secs(15),
        "handover took {handover:?}: the follower waited for the 30 s Lease to expire"
    );
    apply::<Identity>(
        &t,
        identity_manifest("t2", &format!("t2.{}@example.com", t.namespace)),
    )
    .await;
    wait_ready::<Identity>(&t, "t2", "True", Some("Synced"), T).await;
    let log = std::fs::read_to_string(
        std::env::temp_dir().join(format!("{}-replica-a.log", t.namespace)),
    )
    .unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(
        log.contains("the Lease is free for the next leader"),
        "{log}"
    );
    drop(follower);
    t.cleanup().await;
}

#[tokio::test]
async fn export_moves_existing_identities_under_management_without_changing_them() {
    let t = setup("ops-export").await;
    // Exported manifests adopt: the cluster admin's opt-in, as the export's header says.
    support::opt_in(&t, &["kratos-operator.dev/allow-adoption"]).await;
    let (kratos, dir) = support::private_kratos(&t, KratosOptions::default()).await;
    let k = kratos_client(&kratos.admin_url(), &kratos.public_url());
    let mut a = CreateIdentityBody::new(
        "customer",
        json!({ "email": "ann@example.com", "name": { "first": "Ann" } }),
    );
    a.metadata_public = Some(json!({ "plan": "pro" }));
    a.metadata_admin = Some(json!({ "crm": "7" }));
    let mut b = CreateIdentityBody::new(
        "employee",
        json!({ "username": "ben", "email": "ben@example.com" }),
    );
    b.state = Some(IdentityState::Inactive);
    let mut c = CreateIdentityBody::new("customer", json!({ "email": "cid@example.com" }));
    c.credentials = Some(IdentityCredentialsImport::oidc([("github", "99")]));
    for body in [&a, &b, &c] {
        k.create_identity(body).await.unwrap();
    }
    let before: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(k.list_identities(Default::default()))
            .await
            .unwrap();

    let yaml = export(
        &k,
        &ExportOptions {
            namespace: t.namespace.clone(),
            include_managed: false,
            names: kratos_operator::export::NameFrom::default(),
        },
    )
    .await
    .unwrap();
    let docs: Vec<serde_json::Value> = yaml_serde::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    assert_eq!(
        docs.iter().filter(|d| d["kind"] == "Identity").count(),
        3,
        "{yaml}"
    );
    assert_eq!(
        docs.iter()
            .filter(|d| d["kind"] == "IdentitySchemaRef")
            .count(),
        2,
        "{yaml}"
    );
    for doc in docs.iter().filter(|d| d["kind"] == "Identity") {
        let name = doc["metadata"]["name"].as_str().unwrap();
        assert!(
            ["ann", "ben", "cid", "example"]
                .iter()
                .all(|p| !name.contains(p)),
            "no personal data in object names: {name}"
        );
    }

    // The command writes a directory a GitOps tool applies as is; the namespace is required.
    let out_dir = dir.join("export");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kratos-operator"))
            .arg("export")
            .args(args)
            .env("KRATOS_ADMIN_URL", kratos.admin_url())
            .env("KRATOS_PUBLIC_URL", kratos.public_url())
            .output()
            .unwrap()
    };
    let missing = run(&[]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("--namespace"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let wrote = run(&[
        "-n",
        &t.namespace,
        "--output-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    let kustomization: serde_json::Value =
        yaml_serde::from_str(&std::fs::read_to_string(out_dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let resources = kustomization["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 5, "{kustomization}");
    for r in resources {
        let file: serde_json::Value = yaml_serde::from_str(
            &std::fs::read_to_string(out_dir.join(r.as_str().unwrap())).unwrap(),
        )
        .unwrap();
        assert!(
            docs.contains(&file),
            "{r} holds one of the exported objects: {file}"
        );
    }

    let _op = start_operator_with(
        &t,
        &kratos.admin_url(),
        &kratos.public_url(),
        test_settings(&t.namespace),
    )
    .await;
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        let plural = if kind == "Identity" {
            "identities"
        } else {
            "identityschemarefs"
        };
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kratos-operator.dev", "v1alpha1", kind),
            plural,
        );
        let api: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &t.namespace, &ar);
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        api.patch(
            &obj.name_any(),
            &PatchParams::apply("kratos-operator-tests"),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
    }
    for doc in docs.iter().filter(|d| d["kind"] == "Identity") {
        wait_ready::<Identity>(
            &t,
            doc["metadata"]["name"].as_str().unwrap(),
            "True",
            Some("Synced"),
            T,
        )
        .await;
    }
    let after: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(k.list_identities(Default::default()))
            .await
            .unwrap();
    assert_eq!(after.len(), before.len(), "no duplicate");
    for old in &before {
        let new = after
            .iter()
            .find(|n| n.id == old.id)
            .expect("same identity");
        assert_eq!(new.traits, old.traits);
        assert_eq!(new.state, old.state);
        assert_eq!(new.schema_id, old.schema_id);
        assert_eq!(new.metadata_public, old.metadata_public);
        let admin = new.metadata_admin.clone().unwrap();
        assert!(admin.get(UID_MARKER).is_some(), "now managed");
        if let Some(crm) = old.metadata_admin.as_ref().and_then(|m| m.get("crm")) {
            assert_eq!(&admin["crm"], crm);
        }
    }
    // A second export leaves out what is now managed.
    let again = export(
        &k,
        &ExportOptions {
            namespace: t.namespace.clone(),
            include_managed: false,
            names: kratos_operator::export::NameFrom::default(),
        },
    )
    .await
    .unwrap();
    assert!(!again.contains("kind: Identity\n"), "{again}");
    support::drop_kratos(kratos, dir, false).await;
    t.cleanup().await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_reconcile_spans() {
    let t = setup("ops-logs").await;
    support::install_crds(&t.client).await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kratos-operator"))
        .env("KUBECONFIG", &t.env.state.kubeconfig)
        .env("KRATOS_ADMIN_URL", &t.kratos_admin_url)
        .env("KRATOS_PUBLIC_URL", &t.kratos_public_url)
        .env("WATCH_NAMESPACE", &t.namespace)
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info,kratos_operator=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the operator binary");
    apply::<Identity>(
        &t,
        identity_manifest("j1", &format!("j1.{}@example.com", t.namespace)),
    )
    .await;
    wait_ready::<Identity>(&t, "j1", "True", Some("Synced"), T).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            == "kratos-operator starting; serving /metrics, /healthz, /readyz"),
        "{text}"
    );
    let in_reconcile = lines.iter().find(|l| {
        l["span"]["object.ref"].as_str().is_some_and(|r| {
            r.starts_with("Identity.") && r.contains(&format!("/j1.{}", t.namespace))
        })
    });
    assert!(
        in_reconcile.is_some(),
        "a log line inside the reconcile span of Identity j1:\n{text}"
    );
    t.cleanup().await;
}
