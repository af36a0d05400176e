//! What the node tests share: the node of the shared environment, and a Helm release of the
//! chart installed the way the README tells users to, from the environment's registry.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::Output,
    time::{Duration, Instant},
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kratos_operator::api::Identity;
use kratos_operator_testenv::{Environment, cluster, env::default_dir, registry::Published};
use kube::{Api, ResourceExt, api::ListParams};

use crate::chart_support::{chart_dir, describe, helm_command, kubectl, repo, run};
use crate::support::TestEnv;

/// The README's install command for `chart` at `version` (see
/// [`cluster::install_from`]): `install kratos-operator <chart> --version <version> --namespace
/// kratos-operator --create-namespace --set kratos.adminUrl=… --set kratos.publicUrl=…
/// --plain-http`, the Kratos URLs exactly as the README writes them.
pub fn readme_install(chart: &str, version: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let args = cluster::readme_install_args(&readme).expect("the README's helm install command");
    cluster::install_from(&args, chart, version)
}

/// The README's install command without its verb, release name, namespace and
/// `--create-namespace`: what a test's own release in its own namespace keeps of it.
pub fn for_this_test(readme: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut words = readme.iter().skip(2);
    while let Some(word) = words.next() {
        match word.as_str() {
            "--namespace" | "-n" => {
                words.next();
            }
            "--create-namespace" => {}
            _ => kept.push(word.clone()),
        }
    }
    kept
}

pub const T: Duration = Duration::from_secs(180);

/// The node of the shared environment, started if needed.
pub async fn node_env() -> Environment {
    tokio::task::spawn_blocking(|| Environment::ensure_node(&default_dir()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the node does not start: {e}"))
}

pub struct Release<'a> {
    pub t: &'a TestEnv,
    pub env: Environment,
    pub name: String,
    pub published: Published,
}

impl<'a> Release<'a> {
    pub fn new(t: &'a TestEnv, env: Environment) -> Self {
        // The release `cargo xtask test` published to the environment's registry.
        let published = Published::read(&env.dir)
            .unwrap()
            .expect("no release in the environment's registry; `cargo xtask test` (or `cargo xtask testenv up --node`) publishes one");
        // Cluster-scoped parts (ClusterRoles, admission policies) are named after the release:
        // one release name per namespace.
        Self {
            t,
            env,
            name: t.namespace.clone(),
            published,
        }
    }

    pub fn helm(&self, args: &[&str]) -> Output {
        let mut cmd = helm_command();
        cmd.env("KUBECONFIG", &self.env.state.kubeconfig)
            .args(["--namespace", &self.t.namespace])
            .args(args);
        run(cmd, None)
    }

    /// `helm upgrade --install --wait` of the test command's release with the testenv values,
    /// this namespace only, and `sets`.
    pub fn install(&self, sets: &[&str]) -> Duration {
        self.install_release(&self.published.chart(), &self.published.version, sets)
    }

    /// [`Release::install`] of the chart `chart` (`oci://…`) at `version`: the README's install
    /// command ([`readme_install`]) as `upgrade --install` of this test's release in its
    /// namespace, with the testenv values, watching this namespace only, waiting.
    pub fn install_release(&self, chart: &str, version: &str, sets: &[&str]) -> Duration {
        let values = chart_dir().join("ci").join("testenv-values.yaml");
        let mut args = vec!["upgrade".to_string(), "--install".into(), self.name.clone()];
        args.extend(for_this_test(&readme_install(chart, version)));
        args.extend([
            "--wait".into(),
            "--timeout".into(),
            "180s".into(),
            "-f".into(),
            values.display().to_string(),
            "--set".into(),
            format!("watchNamespaces={{{}}}", self.t.namespace),
        ]);
        for s in sets {
            args.push("--set".into());
            args.push((*s).to_string());
        }
        let started = Instant::now();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.helm(&refs);
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "helm {sets:?} failed after {took:?}: {}\n{}",
            describe(&out),
            self.pods_report()
        );
        took
    }

    /// Deletes every Identity while the operator runs (nothing left with a finalizer), then
    /// uninstalls the release.
    pub fn remove(&self, timeout: &str) {
        let out = self.kubectl(&[
            "delete",
            "identities",
            "--all",
            "--wait=true",
            &format!("--timeout={timeout}"),
        ]);
        assert!(out.status.success(), "{}", describe(&out));
        let out = self.helm(&["uninstall", &self.name, "--wait"]);
        assert!(out.status.success(), "{}", describe(&out));
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(kubectl());
        cmd.env("KUBECONFIG", &self.env.state.kubeconfig)
            .args(["--namespace", &self.t.namespace])
            .args(args);
        run(cmd, None)
    }

    /// Pods, events and the operator's logs, for failure messages.
    pub fn pods_report(&self) -> String {
        let pods = self.kubectl(&["get", "pods", "-o", "wide"]);
        let events = self.kubectl(&["get", "events", "--sort-by=.lastTimestamp"]);
        let logs = self.kubectl(&[
            "logs",
            "-l",
            "app.kubernetes.io/name=kratos-operator",
            "--tail=30",
            "--all-containers",
        ]);
        format!(
            "{}\n{}\n{}",
            String::from_utf8_lossy(&pods.stdout),
            String::from_utf8_lossy(&events.stdout),
            String::from_utf8_lossy(&logs.stdout)
        )
    }

    /// Follows a pod's log into a file (for failure messages) until the pod ends.
    pub fn follow_logs(&self, pod: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("{}-{pod}.log", self.t.namespace));
        let file = std::fs::File::create(&path).unwrap();
        let mut child = std::process::Command::new(kubectl())
            .env("KUBECONFIG", &self.env.state.kubeconfig)
            .args(["--namespace", &self.t.namespace, "logs", "-f", pod])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        // kubectl ends with the pod; reap it then.
        std::thread::spawn(move || child.wait());
        path
    }

    /// Asks the API to evict `pod`, as `kubectl drain` does (a policy/v1 Eviction).
    pub fn evict(&self, pod: &str) -> Output {
        let body = serde_json::json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": { "name": pod, "namespace": self.t.namespace },
        });
        let mut cmd = std::process::Command::new(kubectl());
        cmd.env("KUBECONFIG", &self.env.state.kubeconfig).args([
            "create",
            "--raw",
            &format!(
                "/api/v1/namespaces/{}/pods/{pod}/eviction",
                self.t.namespace
            ),
            "-f",
            "-",
        ]);
        run(cmd, Some(&body.to_string()))
    }

    pub fn deployment(&self) -> String {
        format!("{}-kratos-operator", self.name)
    }

    /// The release's pods, terminating ones included.
    pub async fn all_operator_pods(&self) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.t.client.clone(), &self.t.namespace)
            .list(&ListParams::default().labels("app.kubernetes.io/name=kratos-operator"))
            .await
            .unwrap()
            .items
    }

    pub async fn operator_pods(&self) -> Vec<Pod> {
        let mut pods = self.all_operator_pods().await;
        pods.retain(|p| p.metadata.deletion_timestamp.is_none());
        pods
    }

    pub async fn ready_pods(&self) -> Vec<String> {
        self.operator_pods()
            .await
            .into_iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|p| p.name_any())
            .collect()
    }

    pub async fn lease_holder(&self) -> Option<String> {
        Api::<Lease>::namespaced(self.t.client.clone(), &self.t.namespace)
            .get_opt(kratos_operator::leader::LEASE_NAME)
            .await
            .ok()??
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    }
}

/// How many Identities of `api` are Ready=True (`None` when the list fails).
pub async fn ready_count(api: &Api<Identity>) -> Option<usize> {
    let all = api.list(&ListParams::default()).await.ok()?;
    Some(
        all.items
            .iter()
            .filter(|i| {
                i.status.as_ref().is_some_and(|s| {
                    kratos_operator::api::conditions::ready(&s.conditions)
                        .is_some_and(|c| c.status == "True")
                })
            })
            .count(),
    )
}

pub fn identity(name: &str, email: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
        "metadata": { "name": name },
        "spec": { "schemaId": "customer", "traits": { "email": email } }
    })
}
