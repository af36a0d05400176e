//! The chart as users run it: pods on the environment's node (containerd, runc, a kubelet and
//! kube-scheduler), installed, upgraded, failed over, evicted, restarted under load and
//! uninstalled with Helm. Installed the way users install a release: `helm install
//! oci://$REGISTRY/…/kratos-operator --version <dev version>` from the environment's registry,
//! where `cargo xtask test` publishes the work tree with `cargo xtask release` before the tests;
//! the node pulls the image by the digest the chart pins.
//!
//! Each test installs a release of its own in namespace mode (`watchNamespaces` = its own
//! namespace), so its admission policies and its operator touch nothing of the other tests that
//! share the environment.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart_support;
mod node_support;
mod support;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use chart_support::{chart_dir, describe, kubectl, run};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kratos_operator::api::Identity;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
};
use node_support::{Release, T, identity, node_env, ready_count};
use support::{TestEnv, eventually, kratos_client, setup, wait_ready};

/// Install with the defaults, Identities Ready through the pod; upgrades with one replica and
/// with two; a deleted (SIGTERM'd) leader hands over at once; the PodDisruptionBudget holds;
/// uninstall leaves the managed objects and a reinstall finishes what was left.
#[tokio::test]
async fn the_chart_runs_as_pods_through_install_upgrade_failover_eviction_and_uninstall() {
    let t = setup("node-chart").await;
    let env = node_env().await;
    let r = Release::new(&t, env);

    // Install with the defaults (one replica, leader election on) plus the node's values.
    let took = r.install(&[]);
    eprintln!("helm install --wait: {took:?}");
    // The node pulled the image from the registry, by the digest the released chart pins.
    let pods = r.operator_pods().await;
    let pod = pods.first().expect("an operator pod");
    let wanted = r.published.image_by_digest();
    let spec_image = pod.spec.as_ref().unwrap().containers[0].image.clone();
    assert_eq!(spec_image.as_deref(), Some(wanted.as_str()));
    let image_id = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .image_id
        .clone();
    assert!(
        image_id.ends_with(&r.published.image_digest),
        "the container runs {image_id}, not {wanted}"
    );
    let pulled = r.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={},reason=Pulled", pod.name_any()),
        "-o",
        "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
    ]);
    let pulled = String::from_utf8_lossy(&pulled.stdout).to_string();
    eprintln!("Pulled events of {}:\n{pulled}", pod.name_any());
    assert!(
        pulled.contains(&wanted),
        "no Pulled event for {wanted} on {}: {pulled:?}",
        pod.name_any()
    );
    // Identities of this namespace's own (Kratos is shared with the other tests and the demo).
    for name in ["alice", "bob"] {
        let email = format!("{name}.{}@example.com", t.namespace);
        support::apply::<Identity>(&t, identity(name, &email)).await;
    }
    for name in ["alice", "bob"] {
        wait_ready::<Identity>(&t, name, "True", Some("Synced"), T).await;
    }
    let alice: Identity = Api::namespaced(t.client.clone(), &t.namespace)
        .get("alice")
        .await
        .unwrap();
    let alice_id = alice.status.unwrap().identity_id.unwrap();

    // Upgrades wait for the new pod and complete: one replica, then two.
    let took = r.install(&["podAnnotations.rollout=one"]);
    eprintln!("helm upgrade --wait, 1 replica: {took:?}");
    let took = r.install(&["replicas=2", "podAnnotations.rollout=two"]);
    eprintln!("helm upgrade --wait, 2 replicas: {took:?}");
    // Both replicas of the new revision become Ready, the follower too. Helm 3's --wait returns
    // once the new ReplicaSet is ready, while the old pod may still be Ready and terminating, so
    // wait for the rollout to be over (the old pod gone) rather than look once.
    let deployments: Api<Deployment> = Api::namespaced(t.client.clone(), &t.namespace);
    eventually("both replicas Ready, the follower too", T, || async {
        let status = deployments.get(&r.deployment()).await.ok()?.status?;
        (status.replicas == Some(2)
            && status.updated_replicas == Some(2)
            && status.ready_replicas == Some(2))
        .then_some(())
    })
    .await;

    // The leader's pod is deleted: SIGTERM, a prompt exit, the Lease released, the follower
    // leads long before the Lease (15 s) would expire.
    let leader = eventually("a leader", T, || r.lease_holder()).await;
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
    let leader_log = r.follow_logs(&leader);
    let started = Instant::now();
    pods.delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    let successor = eventually("another pod to lead", T, || async {
        r.lease_holder().await.filter(|h| *h != leader)
    })
    .await;
    let handover = started.elapsed();
    support::wait_gone(&pods, &leader, T).await;
    let stopped = started.elapsed();
    eprintln!(
        "leader pod deleted: successor {successor} leads after {handover:?}, pod gone after {stopped:?}"
    );
    assert!(
        handover < Duration::from_secs(10),
        "handover took {handover:?}"
    );
    assert!(
        stopped < Duration::from_secs(15),
        "the pod took {stopped:?} to stop; its log:\n{}",
        std::fs::read_to_string(&leader_log).unwrap_or_default()
    );
    let log = r.kubectl(&["logs", &successor, "--tail=200"]);
    assert!(
        String::from_utf8_lossy(&log.stdout).contains("became leader"),
        "{}",
        describe(&log)
    );

    // Evictions honour the PodDisruptionBudget (maxUnavailable 1): with two Ready pods one may
    // go; the second is refused while the first's replacement is not Ready.
    // The budget's status must describe these two pods (no pod of the handover terminating).
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(t.client.clone(), &t.namespace);
    eventually(
        "two Ready pods, nothing terminating, and a budget that allows one disruption",
        T,
        || async {
            let all = r.all_operator_pods().await;
            let status = pdbs.get(&r.deployment()).await.ok()?.status?;
            (all.len() == 2
                && r.ready_pods().await.len() == 2
                && status.current_healthy == 2
                && status.expected_pods == 2
                && status.disruptions_allowed == 1)
                .then_some(())
        },
    )
    .await;
    let ready = r.ready_pods().await;
    let before = r.pods_report();
    let out = r.evict(&ready[0]);
    assert!(
        out.status.success(),
        "the first eviction is allowed: {}",
        describe(&out)
    );
    // While the budget is spent (the replacement is not Ready yet), the other pod stays.
    let spent = pdbs
        .get(&r.deployment())
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.disruptions_allowed == 0);
    assert!(spent, "the first eviction spends the budget");
    let refused = r.evict(&ready[1]);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("TooManyRequests"),
        "the second eviction must be refused with 429: {}\nbefore:\n{before}\nafter:\n{}",
        describe(&refused),
        r.pods_report()
    );
    eventually("two Ready pods again", T, || async {
        (r.ready_pods().await.len() == 2).then_some(())
    })
    .await;

    // Uninstall with managed objects left: Helm removes the operator, not the CRDs and not the
    // Identities; their Kratos identities stay. A deleted Identity then waits on its finalizer
    // until an operator runs again, and a reinstall finishes the deletion.
    let out = r.helm(&["uninstall", &r.name, "--wait", "--timeout", "120s"]);
    assert!(out.status.success(), "{}", describe(&out));
    // The garbage collector removes the pods after the Deployment; a terminating pod may still
    // run its controllers until the kubelet stops it, so wait until no pod is left at all.
    eventually("the operator's pods to be gone", T, || async {
        r.all_operator_pods().await.is_empty().then_some(())
    })
    .await;
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let left = identities.list(&ListParams::default()).await.unwrap();
    assert!(left.items.len() >= 2, "the Identities stay");
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    assert!(
        k.get_identity(&alice_id, &[]).await.is_ok(),
        "alice stays in Kratos"
    );
    identities
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    // Nothing runs that could remove the finalizer: the object waits (an observation window).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = identities.get("alice").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(k.get_identity(&alice_id, &[]).await.is_ok());
    r.install(&[]);
    support::wait_gone(&identities, "alice", T).await;
    eventually("alice to be gone from Kratos", T, || async {
        k.get_identity(&alice_id, &[]).await.is_err().then_some(())
    })
    .await;

    // Leave nothing with a finalizer behind, then remove the release.
    r.remove("120s");
    t.cleanup().await;
}

/// `kubectl rollout restart` while 1,000 Identities are being created: every one ends Ready
/// with exactly one Kratos identity.
#[tokio::test]
async fn a_rollout_restart_during_a_bulk_create_loses_and_duplicates_nothing() {
    const N: usize = 1000;
    let t = setup("node-restart").await;
    let env = node_env().await;
    let r = Release::new(&t, env);
    r.install(&["replicas=2"]);
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let emails: Vec<String> = (0..N)
        .map(|i| format!("bulk-{i}.{}@example.com", t.namespace))
        .collect();
    // A third is applied, the Deployment restarted, and the rest applied while it rolls.
    let apply_range = |range: std::ops::Range<usize>| {
        let t = &t;
        let emails = &emails;
        futures::StreamExt::buffer_unordered(
            futures::stream::iter(range.map(move |i| async move {
                support::apply::<Identity>(t, identity(&format!("bulk-{i}"), &emails[i])).await;
            })),
            16,
        )
        .collect::<Vec<()>>()
    };
    use futures::StreamExt as _;
    apply_range(0..N / 3).await;
    let out = r.kubectl(&["rollout", "restart", "deployment", &r.deployment()]);
    assert!(out.status.success(), "{}", describe(&out));
    apply_range(N / 3..N).await;
    let out = r.kubectl(&[
        "rollout",
        "status",
        "deployment",
        &r.deployment(),
        "--timeout=180s",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    eventually(
        "every Identity to be Ready",
        Duration::from_secs(600),
        || async { (ready_count(&identities).await? == N).then_some(()) },
    )
    .await;
    // Exactly one Kratos identity per email, and the ids in status are distinct.
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    for email in emails.iter().step_by(37) {
        let found = k.find_by_credentials_identifier(email).await.unwrap();
        assert_eq!(found.len(), 1, "{email}: {found:?}");
    }
    let all = identities.list(&ListParams::default()).await.unwrap();
    let ids: HashSet<String> = all
        .items
        .iter()
        .filter_map(|i| i.status.as_ref()?.identity_id.clone())
        .collect();
    assert_eq!(ids.len(), N, "one distinct Kratos identity per object");
    let owned = futures::TryStreamExt::try_collect::<Vec<_>>(k.list_identities(Default::default()))
        .await
        .unwrap()
        .into_iter()
        .filter(|i| {
            i.metadata_admin
                .as_ref()
                .and_then(|m| m.get(kratos_operator::api::UID_MARKER))
                .is_some()
                && i.traits["email"]
                    .as_str()
                    .is_some_and(|e| e.ends_with(&format!(".{}@example.com", t.namespace)))
        })
        .count();
    assert_eq!(owned, N, "no duplicate was created in Kratos");

    r.remove("300s");
    t.cleanup().await;
}

/// The README's CRD upgrade procedure: a server-side apply of the chart's `crds/` that takes the
/// fields over from whoever applied them before (Helm's first install, or here the tests), and
/// lands a changed CRD. The change is an annotation, put back afterwards.
#[tokio::test]
async fn crds_are_upgraded_by_the_documented_server_side_apply() {
    let t = setup("node-crds").await;
    support::install_crds(&t.client).await;
    let dir = chart_dir().join("crds");
    let apply = |yaml: String| {
        let mut cmd = std::process::Command::new(kubectl());
        cmd.env("KUBECONFIG", &t.env.state.kubeconfig).args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=kratos-operator-crds",
            "-f",
            "-",
        ]);
        run(cmd, Some(&yaml))
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let original: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    // "A newer release": the same CRDs with one more annotation.
    let newer: Vec<String> = original
        .iter()
        .map(|y| {
            y.replacen(
                "metadata:\n",
                "metadata:\n  annotations:\n    kratos-operator.dev/upgrade-proof: \"1\"\n",
                1,
            )
        })
        .collect();
    assert!(newer.iter().zip(&original).all(|(n, o)| n != o));
    let out = apply(newer.join("\n---\n"));
    assert!(out.status.success(), "{}", describe(&out));
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(t.client.clone());
    let identities = crds.get("identities.kratos-operator.dev").await.unwrap();
    assert_eq!(
        identities
            .annotations()
            .get("kratos-operator.dev/upgrade-proof")
            .map(String::as_str),
        Some("1")
    );
    let established = identities
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);
    // And back: the annotation goes with the field manager's next apply.
    let out = apply(original.join("\n---\n"));
    assert!(out.status.success(), "{}", describe(&out));
    let back = crds.get("identities.kratos-operator.dev").await.unwrap();
    assert!(
        !back
            .annotations()
            .contains_key("kratos-operator.dev/upgrade-proof")
    );
    t.cleanup().await;
}

/// Publishes the work tree with `cargo xtask release --chart <chart>` to `registry` (a path of
/// the test's own in the environment's registry) as `version`; returns the image by digest.
fn publish(registry: &str, version: &str, chart: &std::path::Path) -> String {
    let out = chart_support::xtask_release(registry, version, Some(chart));
    assert!(
        out.status.success(),
        "release {version}: {}",
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("image    "))
        .unwrap_or_else(|| panic!("no image in {stdout}"))
        .trim()
        .to_string()
}

/// Release B of the upgrade test: the repository's chart with one more CRD field
/// (`Identity.spec.upgradeNote`) and a changed Deployment (a pod annotation by default).
fn chart_b(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files = chart_support::read_tree(&chart_dir());
    for (name, content) in &mut files {
        if name == "crds/identities.yaml" {
            let mut crd: serde_json::Value = yaml_serde::from_str(content).unwrap();
            for version in crd["spec"]["versions"].as_array_mut().unwrap() {
                version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["upgradeNote"] = serde_json::json!({
                    "type": "string",
                    "description": "A field release B adds (the upgrade test)."
                });
            }
            *content = yaml_serde::to_string(&crd).unwrap();
        } else if name == "values.yaml" {
            assert!(
                content.contains("\npodAnnotations: {}\n"),
                "values.yaml changed"
            );
            *content = content.replace(
                "\npodAnnotations: {}\n",
                "\npodAnnotations:\n  kratos-operator.dev/release: b\n",
            );
        }
    }
    let chart = dir.join("kratos-operator");
    let _ = std::fs::remove_dir_all(&chart);
    chart_support::write_tree(&chart, &files);
    chart
}

/// What Kratos holds for this test's identities: id to `updated_at` (every write moves it).
async fn kratos_snapshot(t: &TestEnv) -> std::collections::BTreeMap<String, String> {
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    futures::TryStreamExt::try_collect::<Vec<_>>(k.list_identities(Default::default()))
        .await
        .unwrap()
        .into_iter()
        .filter(|i| {
            i.traits["email"]
                .as_str()
                .is_some_and(|e| e.ends_with(&format!(".{}@example.com", t.namespace)))
        })
        .map(|i| (i.id.clone(), format!("{:?}", i.updated_at)))
        .collect()
}

/// A metric's value summed over its series on one pod (the host reaches pods on the bridge).
async fn pod_metric(pod: &Pod, name: &str) -> Option<f64> {
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    let text = reqwest::get(format!("http://{ip}:8080/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// An upgrade between two published releases, and the rollback, live on the node: release A
/// (the work tree) and release B (one more CRD field, a changed Deployment) are published with
/// `cargo xtask release`; A is installed with two replicas and 1,000 Identities Ready; B is
/// installed from OCI after the documented CRD step. Neither the upgrade nor the rollback to A
/// writes to Kratos or takes an Identity out of Ready, and B's CRD is served.
#[tokio::test]
async fn an_upgrade_and_a_rollback_between_two_releases_write_nothing_and_keep_every_identity_ready()
 {
    const N: usize = 1000;
    let t = setup("node-upgrade").await;
    let env = node_env().await;
    let r = Release::new(&t, env);
    let cargo = env!("CARGO_PKG_VERSION");
    let registry = format!("{}/{}", r.env.state.registry, t.namespace);
    let chart = format!("oci://{registry}/charts/kratos-operator");
    let (a, b) = (format!("{cargo}-dev.a"), format!("{cargo}-dev.b"));
    let scratch = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("upgrade")
        .join(&t.namespace);
    std::fs::create_dir_all(&scratch).unwrap();
    let image_a = publish(&registry, &a, &chart_dir());
    let image_b = publish(&registry, &b, &chart_b(&scratch));
    eprintln!("release A {a}: {image_a}\nrelease B {b}: {image_b}");

    r.install_release(&chart, &a, &["replicas=2"]);
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    use futures::StreamExt as _;
    futures::stream::iter((0..N).map(|i| {
        let t = &t;
        async move {
            let email = format!("up-{i}.{}@example.com", t.namespace);
            support::apply::<Identity>(t, identity(&format!("up-{i}"), &email)).await;
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;
    let all_ready = || async { (ready_count(&identities).await? == N).then_some(()) };
    eventually(
        "every Identity Ready on A",
        Duration::from_secs(900),
        all_ready,
    )
    .await;
    let before = kratos_snapshot(&t).await;
    assert_eq!(before.len(), N);

    // Every change of an Identity's Ready condition while the releases change.
    let left_ready = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watch = {
        let left_ready = left_ready.clone();
        let identities = identities.clone();
        tokio::spawn(async move {
            let stream = kube::runtime::watcher(identities, Default::default());
            let mut stream = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(stream));
            while let Some(Ok(i)) = stream.next().await {
                let ready = i
                    .status
                    .as_ref()
                    .and_then(|s| kratos_operator::api::conditions::ready(&s.conditions).cloned());
                if ready.as_ref().is_none_or(|c| c.status != "True") {
                    left_ready.lock().unwrap().push(format!(
                        "{}: {:?}",
                        i.name_any(),
                        ready.map(|c| (c.status, c.reason))
                    ));
                }
            }
        })
    };

    // One step of the releases: the new leader has checked every object (it trusts their
    // Synced statuses until its first drift sweep, which has ended, with nothing in flight or
    // queued) and changed nothing in Kratos; Kratos' identities are as before; every Identity
    // is still Ready.
    let settle = |step: &'static str| {
        let r = &r;
        let t = &t;
        let before = &before;
        let left_ready = left_ready.clone();
        async move {
            let started = Instant::now();
            eventually(
                &format!("{step}: the leader's first drift sweep checked every Identity"),
                Duration::from_secs(600),
                || async {
                    let holder = r.lease_holder().await?;
                    let pods = r.operator_pods().await;
                    let leader = pods.iter().find(|p| holder.starts_with(&p.name_any()))?;
                    let sweeps = pod_metric(leader, "kratos_operator_drift_sweeps_total").await?;
                    let in_flight =
                        pod_metric(leader, "kratos_operator_reconciles_in_flight").await?;
                    let queued = pod_metric(leader, "kratos_operator_status_writes_queued").await?;
                    (sweeps >= 1.0 && in_flight == 0.0 && queued == 0.0).then_some(())
                },
            )
            .await;
            let mut changes = 0.0;
            for pod in r.operator_pods().await {
                changes += pod_metric(&pod, "kratos_operator_identity_changes_total")
                    .await
                    .unwrap_or(0.0);
            }
            let after = kratos_snapshot(t).await;
            let rewritten = before
                .iter()
                .filter(|(id, at)| after.get(*id) != Some(at))
                .count();
            let left = left_ready.lock().unwrap().clone();
            eprintln!(
                "{step}: leader settled {:?} after the rollout; Kratos changes by the new pods {changes}; identities rewritten in Kratos {rewritten}/{N}; Identities that left Ready {}",
                started.elapsed(),
                left.len()
            );
            assert_eq!(changes, 0.0, "{step}: the operator changed Kratos");
            assert_eq!(after.len(), N, "{step}");
            assert_eq!(rewritten, 0, "{step}: Kratos identities were written");
            assert!(left.is_empty(), "{step}: Identities left Ready: {left:?}");
        }
    };

    // The documented CRD step, with the CRDs of release B as published, then the upgrade.
    let pulled = scratch.join("pulled");
    let _ = std::fs::remove_dir_all(&pulled);
    let out = r.helm(&[
        "pull",
        &chart,
        "--version",
        &b,
        "--plain-http",
        "--untar",
        "--untardir",
        &pulled.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let crds = pulled.join("kratos-operator").join("crds");
    let out = r.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=kratos-operator-crds",
        "-f",
        &crds.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = r.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let took = r.install_release(&chart, &b, &["replicas=2"]);
    eprintln!("helm upgrade A -> B --wait (2 replicas): {took:?}");
    let pods = r.operator_pods().await;
    assert!(!pods.is_empty());
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].image.as_deref(), Some(image_b.as_str()));
        assert_eq!(
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kratos-operator.dev/release"))
                .map(String::as_str),
            Some("b")
        );
    }
    let crd = r.kubectl(&["get", "crd", "identities.kratos-operator.dev", "-o", "json"]);
    let crd: serde_json::Value = serde_json::from_slice(&crd.stdout).unwrap();
    assert_eq!(
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["upgradeNote"]["type"],
        "string",
        "B's CRD is served"
    );
    settle("upgrade A -> B").await;

    // Rollback to A (Helm leaves CRDs as they are: B's field stays, unused by A).
    let started = Instant::now();
    let out = r.helm(&["rollback", &r.name, "1", "--wait", "--timeout", "180s"]);
    assert!(out.status.success(), "{}", describe(&out));
    eprintln!("helm rollback B -> A --wait: {:?}", started.elapsed());
    let deployments: Api<Deployment> = Api::namespaced(t.client.clone(), &t.namespace);
    eventually("A's two replicas rolled out", T, || async {
        let status = deployments.get(&r.deployment()).await.ok()?.status?;
        let pods = r.operator_pods().await;
        (status.replicas == Some(2)
            && status.updated_replicas == Some(2)
            && status.ready_replicas == Some(2)
            && pods.len() == 2
            && pods.iter().all(|p| {
                p.spec.as_ref().and_then(|s| s.containers[0].image.clone()) == Some(image_a.clone())
            }))
        .then_some(())
    })
    .await;
    eprintln!(
        "rollback: both replicas of A Available after {:?}",
        started.elapsed()
    );
    settle("rollback B -> A").await;
    watch.abort();
    r.remove("300s");
}
