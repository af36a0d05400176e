//! Shared fixture of the integration tests: the real local environment (started once, or
//! reused), a kube Client, a namespace of the test's own, and the Kratos URLs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod logs;
pub mod proxy;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::Namespace;
use kratos_operator_testenv::{
    Environment,
    kratos::{KratosInstance, KratosOptions},
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

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
    /// An email address no other test uses: `<user>.<namespace>@example.com`.
    pub fn email(&self, user: &str) -> String {
        format!("{user}.{}@example.com", self.namespace)
    }

    /// Applies an Identity named `name` with `spec` into the test's namespace.
    pub async fn identity(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> kratos_operator::api::Identity {
        let identity = ("kratos-operator.dev/v1alpha1", "Identity");
        self.apply_named(identity, name, serde_json::json!({ "spec": spec }))
            .await
    }

    /// Applies a Secret named `name` holding `value` under `key` into the test's namespace.
    pub async fn secret(
        &self,
        name: &str,
        key: &str,
        value: &str,
    ) -> k8s_openapi::api::core::v1::Secret {
        let fields = serde_json::json!({ "stringData": { key: value } });
        self.apply_named(("v1", "Secret"), name, fields).await
    }

    /// Applies a Secret named `name` whose `data` holds each of `data`'s values under its key, as
    /// bytes (empty, binary, with newlines: what `stringData` cannot say).
    pub async fn secret_bytes(
        &self,
        name: &str,
        data: std::collections::BTreeMap<&str, Vec<u8>>,
    ) -> k8s_openapi::api::core::v1::Secret {
        use base64::Engine;
        let data: std::collections::BTreeMap<&str, String> = data
            .into_iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        let fields = serde_json::json!({ "data": data });
        self.apply_named(("v1", "Secret"), name, fields).await
    }

    /// Applies the object of `(apiVersion, kind)` named `name` with `fields` (all but those and
    /// the metadata) into the test's namespace.
    async fn apply_named<K: Namespaced>(
        &self,
        (api_version, kind): (&str, &str),
        name: &str,
        mut fields: serde_json::Value,
    ) -> K {
        fields["apiVersion"] = api_version.into();
        fields["kind"] = kind.into();
        fields["metadata"] = serde_json::json!({ "name": name });
        apply(self, fields).await
    }

    /// Deletes the test's namespace (best effort; the namespace controller finishes it).
    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

/// A client of the environment's admin user that shows `see` every request before sending it
/// (to record or count what a component asks the API server).
pub async fn client_seeing(
    t: &TestEnv,
    see: impl Fn(&axum::http::Request<kube::client::Body>) + Send + Sync + Clone + 'static,
) -> Client {
    let layer =
        tower::util::MapRequestLayer::new(move |req: axum::http::Request<kube::client::Body>| {
            see(&req);
            req
        });
    let kubeconfig = Kubeconfig::read_from(&t.env.state.kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    kube::client::ClientBuilder::try_from(config)
        .expect("client builder")
        .with_layer(&layer)
        .build()
}

/// Labels the test's namespace with each of `labels` = "true", as a cluster admin opts a
/// namespace into what the tenancy policy refuses by default (for example
/// `kratos-operator.dev/allow-recovery-by-id`). The operator reads Namespaces with a cache of a
/// few seconds; label before starting the operator, or wait for the outcome.
pub async fn opt_in(t: &TestEnv, labels: &[&str]) {
    use kube::api::{Patch, PatchParams};
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|l| ((*l).to_string(), serde_json::json!("true")))
        .collect();
    Api::<Namespace>::all(t.client.clone())
        .patch(
            &t.namespace,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "metadata": { "labels": labels } })),
        )
        .await
        .expect("label the test namespace");
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
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix =
        (u64::from(nanos) ^ (u64::from(std::process::id()) << 20) ^ u64::from(n)) % 0xff_ffff;
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

/// The condition of `type_` in an object's `status.conditions`; `Null` when it has none.
pub fn condition(obj: &impl serde::Serialize, type_: &str) -> serde_json::Value {
    let v = serde_json::to_value(obj).expect("object as JSON");
    v["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Applies the operator's CRDs (server-side apply) and waits until they are Established.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::{
        api::{Patch, PatchParams},
        runtime::{conditions, wait::await_condition},
    };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in kratos_operator::api::crds() {
        let name = crd.metadata.name.clone().expect("crd name");
        crds.patch(
            &name,
            &PatchParams::apply("kratos-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established in time")
        .expect("watch CRD");
    }
}

/// An operator running inside the test process, watching only the test's namespace.
pub struct Operator {
    /// The Kratos client it uses; its metrics count every call the operator made.
    pub kratos: kratos_operator::kratos::KratosClient,
    /// Its context (metrics, caches).
    pub ctx: std::sync::Arc<kratos_operator::controller::Context>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    /// Stops the operator (as a crash would: no cleanup).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fast-moving settings for tests: 2 s resync, 1 s schema recheck, this namespace only.
pub fn test_settings(namespace: &str) -> kratos_operator::controller::Settings {
    kratos_operator::controller::Settings {
        resync_interval: Duration::from_secs(2),
        schema_recheck_interval: Duration::from_secs(1),
        max_concurrent_reconciles: 8,
        watch_namespaces: vec![namespace.to_string()],
        instance: Some(format!("test-{namespace}")),
        // The operator starts with each test: a short window for earlier creates to settle
        // keeps deletions and identifier-less creates right after the start quick. The
        // default (30s) is what the fault tests, whose operators run as processes, use.
        create_settle_time: Duration::from_secs(2),
        ..kratos_operator::controller::Settings::default()
    }
}

/// [`test_settings`] with create batching and drift sweeps off: the per-object mode.
pub fn per_object_settings(namespace: &str) -> kratos_operator::controller::Settings {
    kratos_operator::controller::Settings {
        batch_creates: false,
        drift_sweeps: false,
        ..test_settings(namespace)
    }
}

/// [`per_object_settings`] when `per_object`, else [`test_settings`] (the default mode).
pub fn mode_settings(namespace: &str, per_object: bool) -> kratos_operator::controller::Settings {
    if per_object {
        per_object_settings(namespace)
    } else {
        test_settings(namespace)
    }
}

/// A Kratos client for `admin`/`public` URLs with test defaults (short timeouts, few retries).
pub fn kratos_client(admin: &str, public: &str) -> kratos_operator::kratos::KratosClient {
    let mut config = kratos_operator::kratos::ClientConfig::new(admin.parse().expect("admin url"));
    config.public_url = Some(public.parse().expect("public url"));
    config.request_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(2);
    kratos_operator::kratos::KratosClient::new(config).expect("kratos client")
}

/// A private Kratos started with `options` (and its own database, which survives restarts) in
/// `kratos-<namespace>` under the temporary directory, started on a blocking thread. Returns it
/// and its directory, for [`drop_kratos`].
pub async fn private_kratos(t: &TestEnv, options: KratosOptions) -> (KratosInstance, PathBuf) {
    let dir = std::env::temp_dir().join(format!("kratos-{}", t.namespace));
    let instance = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || KratosInstance::start(&dir, &options).expect("start a private Kratos")
    })
    .await
    .expect("fixture thread");
    (instance, dir)
}

/// Stops a [`private_kratos`] (on a blocking thread) and removes its directory, unless `keep`
/// (then it says where the directory is).
pub async fn drop_kratos(instance: KratosInstance, dir: PathBuf, keep: bool) {
    tokio::task::spawn_blocking(move || drop(instance))
        .await
        .expect("fixture thread");
    if keep {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Installs the CRDs and starts an operator for the test's namespace against the shared Kratos.
pub async fn start_operator(t: &TestEnv) -> Operator {
    start_operator_with(
        t,
        &t.kratos_admin_url,
        &t.kratos_public_url,
        test_settings(&t.namespace),
    )
    .await
}

/// Like [`start_operator`] with another Kratos and settings.
pub async fn start_operator_with(
    t: &TestEnv,
    admin: &str,
    public: &str,
    settings: kratos_operator::controller::Settings,
) -> Operator {
    start_operator_with_client(t, kratos_client(admin, public), settings).await
}

/// Like [`start_operator`] with a Kratos client of the test's making and settings.
pub async fn start_operator_with_client(
    t: &TestEnv,
    kratos: kratos_operator::kratos::KratosClient,
    settings: kratos_operator::controller::Settings,
) -> Operator {
    use futures::FutureExt;
    install_crds(&t.client).await;
    let ctx = std::sync::Arc::new(kratos_operator::controller::Context::new(
        t.client.clone(),
        kratos.clone(),
        settings,
    ));
    let task = tokio::spawn(kratos_operator::controller::run(
        ctx.clone(),
        futures::future::pending().boxed(),
    ));
    Operator { kratos, ctx, task }
}

/// A namespaced kind the helpers read and write (every kind of the operator, and Secrets).
pub trait Namespaced:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
{
}

/// Applies a manifest (YAML or JSON text) by server-side apply into the test namespace.
pub async fn apply<K: Namespaced>(t: &TestEnv, manifest: serde_json::Value) -> K {
    apply_as(&t.client, &t.namespace, "kratos-operator-tests", manifest).await
}

/// Applies a manifest by server-side apply into `ns` with `client`'s rights (an impersonated
/// tenant, a ServiceAccount), as `field_manager`.
pub async fn apply_as<K: Namespaced>(
    client: &Client,
    ns: &str,
    field_manager: &str,
    manifest: serde_json::Value,
) -> K {
    use kube::api::{Patch, PatchParams};
    let obj: K = serde_json::from_value(manifest).expect("manifest");
    let name = obj.meta().name.clone().expect("name");
    Api::<K>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name} in {ns}: {e}"))
}

/// A client of the environment's apiserver acting as `user` with `groups` (impersonation), and
/// so with their rights only.
pub async fn client_as(env: &Environment, user: &str, groups: Vec<String>) -> Client {
    let kubeconfig = Kubeconfig::read_from(&env.state.kubeconfig).expect("read kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups);
    Client::try_from(config).expect("client")
}

/// A tenant: the Role `tenant` with `rules` in the test namespace, bound to the user `user`;
/// returns a client acting as that user (group `system:authenticated` only). RBAC takes a
/// moment to apply: wait for a request it allows before relying on it.
pub async fn bind_tenant(t: &TestEnv, user: &str, rules: serde_json::Value) -> Client {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let role: Role = serde_json::from_value(
        serde_json::json!({ "metadata": { "name": "tenant" }, "rules": rules }),
    )
    .expect("role");
    Api::<Role>::namespaced(t.client.clone(), &t.namespace)
        .create(&PostParams::default(), &role)
        .await
        .expect("create the tenant Role");
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "tenant" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }]
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(t.client.clone(), &t.namespace)
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the tenant Role");
    client_as(t.env, user, vec!["system:authenticated".into()]).await
}

/// Waits until the object's `Ready` condition has `status` and returns the object.
pub async fn wait_ready<K: Namespaced>(
    t: &TestEnv,
    name: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> K {
    let api: Api<K> = Api::namespaced(t.client.clone(), &t.namespace);
    let what = format!("{name} Ready={status} reason={reason:?}");
    let mut last = String::new();
    let result = tokio::time::timeout(timeout, async {
        loop {
            if let Ok(obj) = api.get(name).await {
                let v = serde_json::to_value(&obj).expect("json");
                let ready = v["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .cloned();
                last = format!("{}", v["status"]);
                if let Some(r) = ready
                    && r["status"] == status
                    && reason.is_none_or(|want| r["reason"] == want)
                    && v["status"]["observedGeneration"] == v["metadata"]["generation"]
                {
                    return obj;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("timed out waiting for {what}; last status: {last}"))
}

/// Polls the object `name` every 200 ms until `pred` holds and returns it, as `kubectl wait
/// --for=jsonpath=...` does; panics after `timeout` naming `what` and the last status seen.
///
/// The operator writes Identity statuses and all Events in the background, after the Kratos
/// calls they report: a test that waited for something else (a login, a change in Kratos) must
/// wait for the status field it asserts on with this, not read it once.
pub async fn wait_for<K: Namespaced, F>(
    t: &TestEnv,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: F,
) -> K
where
    F: Fn(&K) -> bool,
{
    let api: Api<K> = Api::namespaced(t.client.clone(), &t.namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match api.get(name).await {
            Ok(obj) if pred(&obj) => return obj,
            Ok(obj) => serde_json::to_value(&obj).expect("json")["status"].to_string(),
            Err(e) => format!("(get failed: {e})"),
        };
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {name}: {what}; last status: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The message of an Identity's `Ready` condition (empty when it has none).
pub fn ready_message(obj: &kratos_operator::api::Identity) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// What a successful [`login_for`] returns of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionPart {
    /// The session token (`session_token`), to act as the user.
    Token,
    /// The session's id (`session.id`), to find it through the admin API.
    Id,
}

/// Logs in through Kratos' public API (native login flow) and returns the session token, or why
/// not: a refused login, or any other answer (a 5xx included: the environment's PostgreSQL
/// serves concurrent tests without the "database is locked" answers sqlite gave, so nothing is
/// retried).
pub async fn login(public: &str, identifier: &str, password: &str) -> Result<String, String> {
    login_for(public, identifier, password, SessionPart::Token).await
}

/// [`login`] returning `part` of the session. An error names the status and Kratos' answer.
pub async fn login_for(
    public: &str,
    identifier: &str,
    password: &str,
    part: SessionPart,
) -> Result<String, String> {
    let http = reqwest::Client::new();
    let transport = |e: reqwest::Error| format!("Kratos unreachable: {e}");
    let resp = http
        .get(format!("{public}/self-service/login/api"))
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let flow: serde_json::Value = resp.json().await.map_err(transport)?;
    let id = flow["id"]
        .as_str()
        .ok_or_else(|| format!("{status} to the login flow, with no flow id: {flow}"))?
        .to_string();
    let resp = http
        .post(format!("{public}/self-service/login?flow={id}"))
        .header("accept", "application/json")
        .json(&serde_json::json!({ "method": "password", "identifier": identifier, "password": password }))
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(transport)?;
    if status.is_success() {
        let value = match part {
            SessionPart::Token => &body["session_token"],
            SessionPart::Id => &body["session"]["id"],
        };
        value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no session {part:?} in {status}: {body}"))
    } else {
        Err(format!("login failed with {status}: {body}"))
    }
}

/// All events.k8s.io Events in the test namespace about the object named `name`.
pub async fn events_for(t: &TestEnv, name: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
    let api: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(t.client.clone(), &t.namespace);
    api.list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Waits for an Event about `name` with `reason` (Events are published in the background, so
/// they may arrive a moment after the status).
pub async fn wait_event(
    t: &TestEnv,
    name: &str,
    reason: &str,
) -> k8s_openapi::api::events::v1::Event {
    eventually(
        &format!("a {reason} Event about {name}"),
        Duration::from_secs(30),
        || async {
            events_for(t, name)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        },
    )
    .await
}

/// Waits until `name` is gone from `api` (deleted, finalizers done).
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    eventually(&format!("{name} to be gone"), timeout, || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// Waits until `api` lists no object.
pub async fn wait_all_gone<K>(api: &Api<K>, timeout: Duration)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    eventually("every object to be gone", timeout, || async {
        api.list(&Default::default())
            .await
            .ok()
            .filter(|l| l.items.is_empty())
            .map(drop)
    })
    .await;
}

/// The status kstatus gives a custom resource by its generic rules, as Flux's health checks,
/// kpt and `kubectl wait` users see it: `InProgress` while it is being deleted, while
/// `status.observedGeneration` (when present) differs from `metadata.generation`, or with
/// `Reconciling=True`; `Failed` with `Stalled=True`; `Current` otherwise, which includes an
/// object without any status.
pub fn kstatus(obj: &serde_json::Value) -> &'static str {
    if !obj["metadata"]["deletionTimestamp"].is_null() {
        return "InProgress";
    }
    if let Some(observed) = obj["status"]["observedGeneration"].as_i64()
        && Some(observed) != obj["metadata"]["generation"].as_i64()
    {
        return "InProgress";
    }
    let conditions = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is_true = |t: &str| {
        conditions
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    if is_true("Reconciling") {
        "InProgress"
    } else if is_true("Stalled") {
        "Failed"
    } else {
        "Current"
    }
}

/// A TCP server on loopback that accepts connections and never answers: a Kratos that hangs.
/// Returns its URL; it lives as long as the test's runtime.
pub async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a silent server");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}
