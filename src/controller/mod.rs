//! The controllers. Each is split into observe (reads), plan (pure decisions), act (writes to
//! Kratos and Kubernetes) and report (status and Events).

pub mod events;
pub mod finalizer;
pub mod identity;
pub mod json;
pub mod priority;
pub mod recovery;
pub mod report;
pub mod schema_ref;

pub mod backoff;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use kube::{
    Client,
    runtime::{
        events::{Recorder, Reporter},
        reflector::Store,
        watcher,
    },
};

pub use backoff::Backoff;

use crate::{
    api::{Identity, IdentitySchemaRef},
    kratos::KratosClient,
    metrics::Metrics,
    schema::SchemaCache,
};

/// Tunables of the controllers (filled from the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a healthy Identity is checked against Kratos (drift detection).
    pub resync_interval: Duration,
    /// How often an IdentitySchemaRef re-fetches its schema.
    pub schema_recheck_interval: Duration,
    /// Reconciles running at once per controller.
    pub max_concurrent_reconciles: u16,
    /// Namespaces to watch; empty means all.
    pub watch_namespaces: Vec<String>,
    /// Event reporter instance (the pod name).
    pub instance: Option<String>,
    /// Coalesce creates into batch requests.
    pub batch_creates: bool,
    /// Detect drift with periodic list sweeps instead of one Kratos read per object per resync.
    pub drift_sweeps: bool,
    /// How long the first create of a batch waits for company.
    pub batch_window: Duration,
    /// The longest Kratos may still carry out a create the operator stopped waiting for
    /// (`--create-settle-time`).
    pub create_settle_time: Duration,
    /// Enforce the namespaces' tenancy opt-ins ([`crate::tenancy`]); `false` allows adoption,
    /// recovery by id and any identifier everywhere (single-team clusters).
    pub tenancy_enforce: bool,
    /// Handle only the objects of our kinds whose labels match this selector (sharding); `None`:
    /// all of them.
    pub label_selector: Option<String>,
    /// How much later than its `issued_at` a new session may become visible in Kratos' list
    /// (login hooks run in between), and how far Kratos' clocks may disagree: a drift sweep
    /// reads the sessions list back this far (twice) beyond the newest session it saw before.
    pub session_lookback: Duration,
}

impl Settings {
    /// The watch of each controller's own kind: every object, or the shard's share.
    pub fn watch_config(&self) -> watcher::Config {
        let config = watcher::Config::default().any_semantic();
        match &self.label_selector {
            Some(selector) => config.labels(selector),
            None => config,
        }
    }
}

/// Checks `--label-selector` with the API server, which parses it, before anything watches with
/// it: a selector it refuses would otherwise only show as a watch retried forever. One list of
/// at most one Identity, in the first watched namespace (or all). Only the API server's refusal
/// is an error; when it cannot be asked, the watches will say so.
pub async fn check_label_selector(client: &Client, settings: &Settings) -> crate::Result<()> {
    let Some(selector) = &settings.label_selector else {
        return Ok(());
    };
    let api: kube::Api<Identity> = match settings.watch_namespaces.first() {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    let params = kube::api::ListParams::default().labels(selector).limit(1);
    match api.list_metadata(&params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 400 => Err(crate::Error::Config(format!(
            "--label-selector {selector:?} is not a valid label selector: {}",
            status.message
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check --label-selector now");
            Ok(())
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(300),
            schema_recheck_interval: Duration::from_secs(60),
            max_concurrent_reconciles: 128,
            watch_namespaces: Vec::new(),
            instance: None,
            batch_creates: true,
            drift_sweeps: true,
            batch_window: Duration::from_millis(25),
            create_settle_time: Duration::from_secs(30),
            tenancy_enforce: true,
            label_selector: None,
            session_lookback: Duration::from_secs(30),
        }
    }
}

/// What every reconcile gets.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Kratos admin client.
    pub kratos: KratosClient,
    /// Events, published in the background.
    pub events: events::EventSink,
    /// Compiled identity schemas.
    pub schemas: SchemaCache,
    /// Tunables.
    pub settings: Settings,
    /// Per-object error backoff.
    pub backoff: Backoff,
    /// Reconcile metrics.
    pub metrics: Arc<Metrics>,
    /// The controllers' caches, for readiness and the managed-identities gauge.
    pub caches: Caches,
    /// Which API server writes go first while many identities are being created.
    pub priority: Arc<priority::Priority>,
    /// What each namespace may do (the cluster admin's opt-ins).
    pub tenancy: crate::tenancy::Policies,
    /// Whether this replica waits for leadership: it runs no controllers, so it is ready without
    /// their caches (it can take over).
    pub standby: std::sync::atomic::AtomicBool,
}

async fn is_ready<E>(f: impl std::future::Future<Output = Result<(), E>>) -> bool {
    tokio::time::timeout(Duration::from_millis(1), f)
        .await
        .is_ok_and(|r| r.is_ok())
}

/// The reflector stores of the running controllers.
#[derive(Default)]
pub struct Caches {
    identities: Mutex<Vec<Store<Identity>>>,
    schema_refs: Mutex<Vec<Store<IdentitySchemaRef>>>,
}

impl Caches {
    /// Registers an Identity store.
    pub fn add_identities(&self, store: Store<Identity>) {
        if let Ok(mut v) = self.identities.lock() {
            v.push(store);
        }
    }

    /// Registers an IdentitySchemaRef store.
    pub fn add_schema_refs(&self, store: Store<IdentitySchemaRef>) {
        if let Ok(mut v) = self.schema_refs.lock() {
            v.push(store);
        }
    }

    /// Whether every controller has started and completed its initial list.
    pub async fn synced(&self) -> bool {
        let identities: Vec<_> = self
            .identities
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let refs: Vec<_> = self
            .schema_refs
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        if identities.is_empty() || refs.is_empty() {
            return false;
        }
        for s in &identities {
            if !is_ready(s.wait_until_ready()).await {
                return false;
            }
        }
        for s in &refs {
            if !is_ready(s.wait_until_ready()).await {
                return false;
            }
        }
        true
    }

    /// The IdentitySchemaRef `namespace/name` from the controllers' caches.
    pub fn schema_ref(&self, namespace: &str, name: &str) -> Option<Arc<IdentitySchemaRef>> {
        let stores: Vec<_> = self
            .schema_refs
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let key = kube::runtime::reflector::ObjectRef::new(name).within(namespace);
        stores.iter().find_map(|s| s.get(&key))
    }

    /// Identity objects whose Ready condition is True.
    pub fn identities_ready(&self) -> i64 {
        let stores: Vec<_> = self
            .identities
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let n = stores
            .iter()
            .flat_map(Store::state)
            .filter(|i| {
                i.status
                    .as_ref()
                    .is_some_and(|s| crate::api::conditions::is_ready(&s.conditions))
            })
            .count();
        i64::try_from(n).unwrap_or(i64::MAX)
    }
}

impl Context {
    /// Builds the context.
    pub fn new(client: Client, kratos: KratosClient, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: "kratos-operator".into(),
            instance: settings.instance.clone(),
        };
        let metrics = Arc::new(Metrics::default());
        let priority = Arc::new(priority::Priority::default());
        let tenancy = crate::tenancy::Policies::new(settings.tenancy_enforce);
        Self {
            events: events::EventSink::spawn(
                Recorder::new(client.clone(), reporter),
                metrics.clone(),
                priority.clone(),
            ),
            client,
            kratos,
            schemas: SchemaCache::default(),
            settings,
            backoff: Backoff::default(),
            metrics,
            caches: Caches::default(),
            priority,
            tenancy,
            standby: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Runs every controller until `shutdown` resolves, then lets the reconciles in flight (and the
/// Kratos calls they make) finish and writes the statuses they queued. The caller bounds how
/// long that may take.
pub async fn run(ctx: Arc<Context>, shutdown: BoxFuture<'static, ()>) {
    // One for all scopes: creates, markers and ids are per process.
    let identity = Arc::new(identity::State::new(&ctx));
    let shutdown = shutdown.shared();
    let scopes: Vec<Option<String>> = if ctx.settings.watch_namespaces.is_empty() {
        vec![None]
    } else {
        ctx.settings
            .watch_namespaces
            .iter()
            .cloned()
            .map(Some)
            .collect()
    };
    let mut controllers = Vec::new();
    for scope in &scopes {
        let (touched, identities) = futures::channel::mpsc::unbounded();
        controllers.push(
            identity::controller(
                identity::Context::new(ctx.clone(), identity.clone()),
                scope.as_deref(),
                shutdown.clone(),
                touched,
            )
            .boxed(),
        );
        controllers
            .push(schema_ref::controller(ctx.clone(), scope.as_deref(), shutdown.clone()).boxed());
        controllers.push(
            recovery::controller(ctx.clone(), scope.as_deref(), shutdown.clone(), identities)
                .boxed(),
        );
    }
    let drained = {
        let identity = identity.clone();
        async move {
            futures::future::join_all(controllers).await;
            tracing::info!("controllers stopped");
            identity.detached.idle().await;
            let queued = identity.statuses.queued();
            if queued > 0 {
                tracing::info!(queued, "writing the queued statuses");
            }
            identity.statuses.idle().await;
        }
    };
    identity.statuses.run(ctx, drained).await;
}
