//! Shared fixture of the integration tests: the real local environment (started once, or
//! reused), a kube Client, a namespace of the test's own, and the Kratos URLs.
#![allow(dead_code)]

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use kratos_operator_testenv::Environment;

/// What a test gets.
pub struct TestEnv {
    /// The shared environment.
    pub env: &'static Environment,
    /// Admin client of the apiserver.
    pub client: Client,
    /// A fresh namespace for this test.
    pub namespace: String,
    /// Kratos admin API base URL.
    pub kratos_admin_url: String,
    /// Kratos public API base URL.
    pub kratos_public_url: String,
}

/// Starts (or attaches to) the environment and creates a namespace named after the test.
/// Panics with the command that builds the environment when its binaries are missing.
pub async fn setup(test: &str) -> TestEnv {
    let env = tokio::task::spawn_blocking(kratos_operator_testenv::shared)
        .await
        .expect("fixture thread")
        .unwrap_or_else(|e| panic!("the test environment is not available: {e}"));
    let client = client(env).await;
    let namespace = unique_name(test);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": namespace, "labels": { "kratos-operator.dev/test": "true" } }
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create test namespace");
    TestEnv {
        env,
        client,
        namespace,
        kratos_admin_url: env.state.kratos_admin_url.clone(),
        kratos_public_url: env.state.kratos_public_url.clone(),
    }
}

impl TestEnv {
    /// Deletes the test's namespace (best effort; the namespace controller finishes it).
    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

/// An admin client of the environment's apiserver.
pub async fn client(env: &Environment) -> Client {
    let kubeconfig = Kubeconfig::read_from(&env.state.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A DNS-1123 name unique to this process and call: `<prefix>-<suffix>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = (u64::from(nanos) ^ (u64::from(std::process::id()) << 20) ^ u64::from(n)) % 0xff_ffff;
    let prefix: String = prefix
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("{}-{suffix:06x}{n}", prefix.trim_matches('-'))
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
