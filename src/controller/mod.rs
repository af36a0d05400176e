//! The controllers. Each is split into observe (reads), plan (pure decisions), act (writes to
//! Kratos and Kubernetes) and report (status and Events).

pub mod identity;
pub mod json;
pub mod schema_ref;

mod backoff;

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture};
use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};

pub use backoff::Backoff;

use crate::{kratos::KratosClient, schema::SchemaCache};

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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(300),
            schema_recheck_interval: Duration::from_secs(60),
            max_concurrent_reconciles: 8,
            watch_namespaces: Vec::new(),
            instance: None,
        }
    }
}

/// What every reconcile gets.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Kratos admin client.
    pub kratos: KratosClient,
    /// Events recorder.
    pub recorder: Recorder,
    /// Compiled identity schemas.
    pub schemas: SchemaCache,
    /// Tunables.
    pub settings: Settings,
    /// Per-object error backoff.
    pub backoff: Backoff,
}

impl Context {
    /// Builds the context.
    pub fn new(client: Client, kratos: KratosClient, settings: Settings) -> Self {
        let reporter = Reporter { controller: "kratos-operator".into(), instance: settings.instance.clone() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            kratos,
            schemas: SchemaCache::default(),
            settings,
            backoff: Backoff::default(),
        }
    }
}

/// Runs every controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: BoxFuture<'static, ()>) {
    let shutdown = shutdown.shared();
    let scopes: Vec<Option<String>> = if ctx.settings.watch_namespaces.is_empty() {
        vec![None]
    } else {
        ctx.settings.watch_namespaces.iter().cloned().map(Some).collect()
    };
    let mut tasks = Vec::new();
    for scope in &scopes {
        tasks.push(identity::controller(ctx.clone(), scope.as_deref(), shutdown.clone()).boxed());
        tasks.push(schema_ref::controller(ctx.clone(), scope.as_deref(), shutdown.clone()).boxed());
    }
    futures::future::join_all(tasks).await;
}
