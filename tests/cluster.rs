//! The node as a cluster users run: Services routed by kube-proxy, names resolved by CoreDNS,
//! Kratos in-cluster behind its Services (two replicas), NetworkPolicies enforced by
//! kube-router; the operator installed with the README's command and its URLs as written; and
//! the faults of that path (a Kratos rollout, cluster DNS gone, a Kratos pod killed).
//!
//! What a pod sees is read with our probe (`testenv/go/probe`): a pod that resolves a name,
//! GETs a URL or opens a TCP connection once and prints what happened.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart_support;
mod node_support;
mod support;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use chart_support::{describe, helm_command, kubectl_run, run};
use k8s_openapi::api::core::v1::Pod;
use kratos_operator::api::Identity;
use kratos_operator_testenv::{Environment, cluster};
use kube::{Api, api::ListParams};
use node_support::{Release, T, identity, node_env, readme_install, ready_count};
use support::{TestEnv, eventually, kratos_client, setup, wait_ready};

/// The tests of this file share one cluster: the ones that take Kratos or DNS away hold it
/// alone, the others together.
static CLUSTER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// What one probe pod printed, and whether its check succeeded.
#[derive(Debug)]
struct Probe {
    ok: bool,
    output: String,
}

/// Runs the probe once in a pod of `namespace` with `labels`: `args` is the check
/// (`resolve NAME`, `get URL`, `connect HOST:PORT`). Waits for the pod to end.
async fn probe(
    env: &Environment,
    namespace: &str,
    labels: &[(&str, &str)],
    args: &[&str],
) -> Probe {
    let node = env.state.node.as_ref().unwrap();
    let name = support::unique_name("probe");
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_string(),
                serde_json::Value::String((*v).to_string()),
            )
        })
        .collect();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "probe",
                "image": node.probe_image,
                "args": args,
                "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
            }],
        },
    });
    let kubeconfig = env.state.kubeconfig.clone();
    let out = kubectl_run(&kubeconfig, &["apply", "-f", "-"], Some(&pod.to_string()));
    assert!(out.status.success(), "{}", describe(&out));
    let phase = eventually(&format!("probe {args:?} to end"), T, || {
        let kubeconfig = kubeconfig.clone();
        let name = name.clone();
        async move {
            let out = kubectl_run(
                &kubeconfig,
                &[
                    "get",
                    "pod",
                    "-n",
                    namespace,
                    &name,
                    "-o",
                    "jsonpath={.status.phase}",
                ],
                None,
            );
            let phase = String::from_utf8_lossy(&out.stdout).to_string();
            (phase == "Succeeded" || phase == "Failed").then_some(phase)
        }
    })
    .await;
    let logs = kubectl_run(&kubeconfig, &["logs", "-n", namespace, &name], None);
    let _ = kubectl_run(
        &kubeconfig,
        &["delete", "pod", "-n", namespace, &name, "--wait=false"],
        None,
    );
    Probe {
        ok: phase == "Succeeded",
        output: String::from_utf8_lossy(&logs.stdout).trim().to_string(),
    }
}

/// A pod `name` of `namespace` with `labels`, serving HTTP on `port` (our probe's `serve`), and
/// its address once it is Ready.
async fn server_pod(
    env: &Environment,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    port: u16,
) -> String {
    let node = env.state.node.as_ref().unwrap();
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_string(),
                serde_json::Value::String((*v).to_string()),
            )
        })
        .collect();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "serve",
                "image": node.probe_image,
                "args": ["serve", port.to_string()],
                "ports": [{ "containerPort": port }],
                "readinessProbe": { "tcpSocket": { "port": port }, "periodSeconds": 1 },
            }],
        },
    });
    let kubeconfig = env.state.kubeconfig.clone();
    let out = kubectl_run(&kubeconfig, &["apply", "-f", "-"], Some(&pod.to_string()));
    assert!(out.status.success(), "{}", describe(&out));
    let out = kubectl_run(
        &kubeconfig,
        &[
            "wait",
            "-n",
            namespace,
            &format!("pod/{name}"),
            "--for=condition=Ready",
            "--timeout=120s",
        ],
        None,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = kubectl_run(
        &kubeconfig,
        &[
            "get",
            "pod",
            "-n",
            namespace,
            name,
            "-o",
            "jsonpath={.status.podIP}",
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until kube-router has programmed the firewall chain of `namespace/pod` in the host's
/// tables (its rules name the pod): from then on, what the pod may send and receive is the
/// policy's answer, not the open default of a pod the engine has not seen yet.
async fn firewalled(namespace: &str, pod: &str) {
    let marker = format!("POD name:{pod} namespace: {namespace}");
    eventually(
        &format!("kube-router's rules for {namespace}/{pod}"),
        T,
        || {
            let marker = marker.clone();
            async move {
                let out = std::process::Command::new("iptables-save")
                    .args(["-t", "filter"])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .contains(&marker)
                    .then_some(())
            }
        },
    )
    .await;
}

/// Runs the probe's `args` once inside the running pod `namespace/pod` (`kubectl exec`).
fn exec_probe(env: &Environment, namespace: &str, pod: &str, args: &[&str]) -> Probe {
    let mut command = vec!["exec", "-n", namespace, pod, "--", "/probe"];
    command.extend(args);
    let out = kubectl_run(&env.state.kubeconfig, &command, None);
    Probe {
        ok: out.status.success(),
        output: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}

fn kubectl(env: &Environment, args: &[&str]) -> String {
    let out = kubectl_run(&env.state.kubeconfig, args, None);
    assert!(out.status.success(), "kubectl {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn create_namespace(env: &Environment, name: &str, labels: &[(&str, &str)]) {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_string(),
                serde_json::Value::String((*v).to_string()),
            )
        })
        .collect();
    let ns = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels },
    });
    let out = kubectl_run(
        &env.state.kubeconfig,
        &["apply", "-f", "-"],
        Some(&ns.to_string()),
    );
    assert!(out.status.success(), "{}", describe(&out));
}

fn delete_namespace(env: &Environment, name: &str) {
    let _ = kubectl_run(
        &env.state.kubeconfig,
        &["delete", "namespace", name, "--wait=false"],
        None,
    );
}

/// Is `ip` in the Service range of the node (the upper half of its /24)?
fn in_service_range(env: &Environment, ip: &str) -> bool {
    let node = env.state.node.as_ref().unwrap();
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    ip.octets()[..3] == node.host_ip.octets()[..3] && ip.octets()[3] >= 128
}

/// A pod resolves the README's Kratos names to Service addresses and reaches both APIs through
/// them; the API server by its Service name; and nothing outside the cluster's domain (no
/// upstream resolver: no query leaves the machine).
#[tokio::test]
async fn a_pod_resolves_and_reaches_both_kratos_services_by_name() {
    let _shared = CLUSTER.read().await;
    let t = setup("cluster-dns").await;
    let env = node_env().await;
    let host = |url: &str| {
        url.trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap()
            .to_string()
    };
    for url in [cluster::KRATOS_ADMIN_URL, cluster::KRATOS_PUBLIC_URL] {
        let resolved = probe(
            &env,
            &t.namespace,
            &[],
            &["-within", "15", "resolve", &host(url)],
        )
        .await;
        assert!(resolved.ok, "{url}: {}", resolved.output);
        assert!(
            resolved.output.lines().all(|ip| in_service_range(&env, ip)),
            "{url} resolves to a Service address: {}",
            resolved.output
        );
        eprintln!("{} resolves to {}", host(url), resolved.output);
    }
    for url in [
        format!("{}/admin/health/ready", cluster::KRATOS_ADMIN_URL),
        format!("{}/health/ready", cluster::KRATOS_PUBLIC_URL),
    ] {
        let health = probe(&env, &t.namespace, &[], &["-within", "15", "get", &url]).await;
        assert!(
            health.ok && health.output.starts_with("status 200"),
            "{url}: {health:?}"
        );
        eprintln!("GET {url}: {}", health.output);
    }
    let api = probe(
        &env,
        &t.namespace,
        &[],
        &[
            "-within",
            "15",
            "resolve",
            "kubernetes.default.svc.cluster.local",
        ],
    )
    .await;
    let node = env.state.node.as_ref().unwrap();
    assert!(api.ok, "{api:?}");
    assert!(
        node.apiserver_url_from_pods.contains(&api.output),
        "{api:?} vs {}",
        node.apiserver_url_from_pods
    );
    let outside = probe(&env, &t.namespace, &[], &["resolve", "example.com."]).await;
    assert!(
        !outside.ok,
        "a name outside the cluster resolved: {outside:?}"
    );
    t.cleanup().await;
}

/// The README's install command, as written but for where the chart comes from (the
/// environment's registry instead of ghcr.io): release `kratos-operator` in namespace
/// `kratos-operator`, Kratos at the README's Service URLs. It watches this test's namespace only
/// (`--set watchNamespaces`, added: other tests share the cluster), and an Identity turns Ready
/// with its account in Kratos.
#[tokio::test]
async fn the_readme_install_command_runs_the_operator_against_kratos_in_cluster() {
    let _shared = CLUSTER.read().await;
    let t = setup("cluster-readme").await;
    let env = node_env().await;
    let r = Release::new(&t, env);
    let mut args = readme_install(&r.published.chart(), &r.published.version);
    assert_eq!(
        args[..2],
        ["install".to_string(), "kratos-operator".to_string()]
    );
    args.extend([
        "--wait".into(),
        "--timeout".into(),
        "180s".into(),
        "--set".into(),
        format!("watchNamespaces={{{}}}", t.namespace),
    ]);
    eprintln!("helm {}", args.join(" "));
    let mut cmd = helm_command();
    cmd.env("KUBECONFIG", &r.env.state.kubeconfig).args(&args);
    let out = run(cmd, None);
    assert!(out.status.success(), "helm install: {}", describe(&out));

    let email = t.email("readme");
    support::apply::<Identity>(&t, identity("readme", &email)).await;
    let ready = wait_ready::<Identity>(&t, "readme", "True", Some("Synced"), T).await;
    let id = ready.status.as_ref().unwrap().identity_id.clone().unwrap();
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    let found = k.find_by_credentials_identifier(&email).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, id);

    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    identities
        .delete("readme", &Default::default())
        .await
        .unwrap();
    support::wait_gone(&identities, "readme", T).await;
    let mut cmd = helm_command();
    cmd.env("KUBECONFIG", &r.env.state.kubeconfig).args([
        "uninstall",
        "kratos-operator",
        "--namespace",
        "kratos-operator",
        "--wait",
    ]);
    let out = run(cmd, None);
    assert!(out.status.success(), "{}", describe(&out));
    delete_namespace(&r.env, "kratos-operator");
    t.cleanup().await;
}

/// The operator's pods as the policy sees them: their labels (the chart's selector labels).
fn operator_labels(release: &str) -> [(&'static str, String); 2] {
    [
        ("app.kubernetes.io/name", "kratos-operator".to_string()),
        ("app.kubernetes.io/instance", release.to_string()),
    ]
}

/// With `networkPolicy.enabled=true` and the chart's documented peers (Kratos' namespace and
/// pods, the API server's endpoints, a monitoring namespace for the metrics port), kube-router
/// enforces the chart's policy: the operator converges; a pod in the monitoring namespace
/// reaches the metrics port and a pod in another namespace does not; a pod the policy selects
/// reaches Kratos, DNS and the API server, and not a pod that is not Kratos, on Kratos' port or
/// another.
#[tokio::test]
async fn the_chart_network_policy_is_enforced() {
    let _shared = CLUSTER.read().await;
    let t = setup("cluster-netpol").await;
    let env = node_env().await;
    let node = env.state.node.clone().unwrap();
    let monitoring = format!("{}-mon", t.namespace);
    let other = format!("{}-other", t.namespace);
    create_namespace(&env, &monitoring, &[("team", "monitoring")]);
    create_namespace(&env, &other, &[]);
    let apiserver_cidr = format!("networkPolicy.apiServer.cidrs[0]={}/32", node.host_ip);
    let r = Release::new(&t, env);
    r.install(&[
        "networkPolicy.enabled=true",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
        "networkPolicy.kratos.peers[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=kratos",
        "networkPolicy.kratos.peers[0].podSelector.matchLabels.app\\.kubernetes\\.io/name=kratos",
        &apiserver_cidr,
    ]);
    let env = &r.env;

    // The operator converges through the policy: API server, DNS, Kratos.
    let email = t.email("netpol");
    support::apply::<Identity>(&t, identity("netpol", &email)).await;
    wait_ready::<Identity>(&t, "netpol", "True", Some("Synced"), T).await;

    let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
    let (operator, operator_ip) = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/name=kratos-operator,app.kubernetes.io/instance={}",
            r.name
        )))
        .await
        .unwrap()
        .items
        .into_iter()
        .find_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
        .expect("an operator pod with an address");
    firewalled(&t.namespace, &operator).await;
    let metrics = format!("{operator_ip}:8080");
    // An allowed source is retried until kube-router has added the new pod to the policy's
    // address set; a source no rule names is refused from its first packet.
    let allowed = probe(
        env,
        &monitoring,
        &[],
        &["-within", "30", "connect", &metrics],
    )
    .await;
    let denied = probe(env, &other, &[], &["connect", &metrics]).await;
    eprintln!("metrics port from the monitoring namespace: {allowed:?}; from another: {denied:?}");
    assert!(
        allowed.ok,
        "metricsFrom allows the monitoring namespace: {allowed:?}"
    );
    assert!(
        !denied.ok,
        "another namespace reached the metrics port: {denied:?}"
    );

    // A pod the policy selects (the operator's labels) in the release's namespace.
    let labels = operator_labels(&r.name);
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let not_kratos = server_pod(env, &other, "not-kratos", &[("app", "not-kratos")], 4434).await;
    server_pod(env, &t.namespace, "selected", &labels, 8080).await;
    firewalled(&t.namespace, "selected").await;
    let kratos_admin = format!("{}/admin/health/ready", cluster::KRATOS_ADMIN_URL);
    let not_kratos_on_kratos_port = format!("{not_kratos}:4434");
    let checks = [
        (
            "Kratos' admin Service",
            vec!["get", kratos_admin.as_str()],
            true,
        ),
        (
            "the API server's Service",
            vec!["connect", "kubernetes.default.svc.cluster.local:443"],
            true,
        ),
        (
            "a pod that is not Kratos, on Kratos' port",
            vec!["connect", not_kratos_on_kratos_port.as_str()],
            false,
        ),
    ];
    for (what, check, want) in checks {
        let seen = exec_probe(env, &t.namespace, "selected", &check);
        eprintln!("selected pod to {what}: {seen:?}");
        assert_eq!(seen.ok, want, "{what}: {seen:?}");
    }
    // The same pod, not selected by the policy, reaches it: the policy is what stops it.
    let unselected = probe(
        env,
        &t.namespace,
        &[],
        &["-within", "30", "connect", &not_kratos_on_kratos_port],
    )
    .await;
    assert!(
        unselected.ok,
        "without the policy the pod is reachable: {unselected:?}"
    );

    r.remove("120s");
    delete_namespace(env, &monitoring);
    delete_namespace(env, &other);
    t.cleanup().await;
}

/// `N` Identities applied 16 at a time, `during` run once a third are in; then every one Ready,
/// exactly one Kratos identity each, and no extra Kratos identity with this test's marker.
async fn bulk_create_through<F, Fut>(t: &TestEnv, n: usize, during: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt as _;
    let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
    let emails: Vec<String> = (0..n)
        .map(|i| format!("bulk-{i}.{}@example.com", t.namespace))
        .collect();
    let apply_range = |range: std::ops::Range<usize>| {
        let emails = &emails;
        futures::stream::iter(range.map(move |i| async move {
            support::apply::<Identity>(t, identity(&format!("bulk-{i}"), &emails[i])).await;
        }))
        .buffer_unordered(16)
        .collect::<Vec<()>>()
    };
    apply_range(0..n / 3).await;
    during().await;
    apply_range(n / 3..n).await;
    let started = Instant::now();
    eventually(
        "every Identity to be Ready",
        Duration::from_secs(600),
        || async { (ready_count(&identities).await? == n).then_some(()) },
    )
    .await;
    eprintln!("all {n} Ready {:?} after the last apply", started.elapsed());
    let k = kratos_client(&t.kratos_admin_url, &t.kratos_public_url);
    let all = identities.list(&ListParams::default()).await.unwrap();
    let ids: HashSet<String> = all
        .items
        .iter()
        .filter_map(|i| i.status.as_ref()?.identity_id.clone())
        .collect();
    assert_eq!(ids.len(), n, "one distinct Kratos identity per object");
    let owned = futures::TryStreamExt::try_collect::<Vec<_>>(k.list_identities(Default::default()))
        .await
        .unwrap()
        .into_iter()
        .filter(|i| {
            i.traits["email"]
                .as_str()
                .is_some_and(|e| e.ends_with(&format!(".{}@example.com", t.namespace)))
        })
        .count();
    assert_eq!(owned, n, "nothing lost, nothing duplicated in Kratos");
}

/// `kubectl rollout restart deploy/kratos -n kratos` while 1,000 Identities are created through
/// the Service: endpoints change under the operator's connections, and nothing is lost or
/// duplicated.
#[tokio::test]
async fn a_kratos_rollout_during_a_bulk_create_loses_and_duplicates_nothing() {
    let _alone = CLUSTER.write().await;
    let t = setup("cluster-kratos-rollout").await;
    let env = node_env().await;
    let r = Release::new(&t, env);
    r.install(&[]);
    let env = r.env.clone();
    bulk_create_through(&t, 1000, || async {
        kubectl(
            &env,
            &[
                "rollout",
                "restart",
                "deployment/kratos",
                "-n",
                cluster::KRATOS_NAMESPACE,
            ],
        );
    })
    .await;
    kubectl(
        &env,
        &[
            "rollout",
            "status",
            "deployment/kratos",
            "-n",
            cluster::KRATOS_NAMESPACE,
            "--timeout=180s",
        ],
    );
    r.remove("300s");
    t.cleanup().await;
}

/// One Kratos pod's process killed with SIGKILL (through containerd) in the middle of a batch of
/// creates: the requests it held fail mid-flight, and no Kratos identity is created twice.
#[tokio::test]
async fn a_kratos_pod_killed_mid_batch_duplicates_nothing() {
    let _alone = CLUSTER.write().await;
    let t = setup("cluster-kratos-kill").await;
    let env = node_env().await;
    let r = Release::new(&t, env);
    r.install(&[]);
    let env = r.env.clone();
    bulk_create_through(&t, 300, || async {
        let ids = kubectl(
            &env,
            &[
                "get",
                "pods",
                "-n",
                cluster::KRATOS_NAMESPACE,
                "-l",
                "app.kubernetes.io/name=kratos",
                "-o",
                "jsonpath={.items[*].status.containerStatuses[0].containerID}",
            ],
        );
        let id = ids
            .split_whitespace()
            .next()
            .and_then(|c| c.strip_prefix("containerd://"))
            .expect("a running Kratos container")
            .to_string();
        let socket = env.state.node.as_ref().unwrap().containerd_socket.clone();
        let out = std::process::Command::new("ctr")
            .args([
                "--address",
                &socket.display().to_string(),
                "-n",
                "k8s.io",
                "tasks",
                "kill",
                "-s",
                "SIGKILL",
                &id,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr tasks kill: {}", describe(&out));
        eprintln!("SIGKILL to Kratos container {id}");
    })
    .await;
    r.remove("300s");
    t.cleanup().await;
}

/// CoreDNS scaled to 0 for 60 s, and the operator's pod replaced meanwhile (a running pod keeps
/// its pooled connections to Kratos and needs no name until they close; a new one has none):
/// the new Identity reports `KratosUnavailable` with a message that names the failed name
/// resolution and the host, `/readyz` says why, and everything converges once DNS is back.
#[tokio::test]
async fn without_cluster_dns_objects_say_name_resolution_failed_and_recover() {
    let _alone = CLUSTER.write().await;
    let t = setup("cluster-dns-down").await;
    let env = node_env().await;
    let r = Release::new(&t, env);
    r.install(&[]);
    let env = r.env.clone();
    support::apply::<Identity>(&t, identity("before", &t.email("before"))).await;
    wait_ready::<Identity>(&t, "before", "True", Some("Synced"), T).await;

    kubectl(
        &env,
        &[
            "scale",
            "deployment/coredns",
            "-n",
            "kube-system",
            "--replicas=0",
        ],
    );
    kubectl(
        &env,
        &[
            "wait",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=kube-dns",
            "--for=delete",
            "--timeout=60s",
        ],
    );
    let down = Instant::now();
    let outcome = async {
        kubectl(
            &env,
            &[
                "delete",
                "pods",
                "-n",
                &t.namespace,
                "-l",
                "app.kubernetes.io/name=kratos-operator",
                "--wait=true",
            ],
        );
        support::apply::<Identity>(&t, identity("during", &t.email("during"))).await;
        let identities: Api<Identity> = Api::namespaced(t.client.clone(), &t.namespace);
        let message = eventually("KratosUnavailable on the new Identity", T, || async {
            let obj = identities.get("during").await.ok()?;
            let ready = kratos_operator::api::conditions::ready(&obj.status.as_ref()?.conditions)?;
            (ready.reason == "KratosUnavailable").then(|| ready.message.clone())
        })
        .await;
        let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
        let ip = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=kratos-operator"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .find_map(|p| p.status?.pod_ip)
            .expect("the new operator pod");
        let readyz = probe(
            &env,
            &t.namespace,
            &[],
            &["-within", "10", "get", &format!("http://{ip}:8080/readyz")],
        )
        .await;
        (message, readyz)
    }
    .await;
    // DNS comes back whatever the checks found, after 60 s.
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(down.elapsed())).await;
    kubectl(
        &env,
        &[
            "scale",
            "deployment/coredns",
            "-n",
            "kube-system",
            "--replicas=1",
        ],
    );
    kubectl(
        &env,
        &[
            "rollout",
            "status",
            "deployment/coredns",
            "-n",
            "kube-system",
            "--timeout=120s",
        ],
    );
    let back = Instant::now();

    let (message, readyz) = outcome;
    eprintln!("during the DNS outage, the Identity: {message}");
    eprintln!("during the DNS outage, /readyz: {readyz:?}");
    let names_dns = |text: &str| {
        let lower = text.to_lowercase();
        lower.contains("dns") || lower.contains("resolve") || lower.contains("lookup")
    };
    assert!(
        names_dns(&message),
        "the message names the name resolution: {message}"
    );
    assert!(
        message.contains(".kratos.svc.cluster.local"),
        "the message names the host: {message}"
    );
    assert!(!readyz.output.starts_with("status 200"), "{readyz:?}");
    assert!(
        readyz.output.contains("Kratos") && names_dns(&readyz.output),
        "/readyz says why: {readyz:?}"
    );

    wait_ready::<Identity>(&t, "during", "True", Some("Synced"), T).await;
    eprintln!("Ready {:?} after DNS came back", back.elapsed());
    r.remove("120s");
    t.cleanup().await;
}
