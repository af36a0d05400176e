//! The HTTP server on `--metrics-addr`: `/metrics` (OpenMetrics text), `/healthz` (the process
//! runs) and `/readyz` (the CRDs are installed, Kratos answers and, on the replica that runs the
//! controllers, the caches are synced: a follower waiting for the Lease is ready, or a rollout
//! would wait for it forever).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{Error, Result, controller::Context};

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct Shared {
    ctx: Arc<Context>,
    registry: Registry,
    crd_names: Vec<String>,
}

/// Builds the router (also used by tests without a socket).
pub fn router(ctx: Arc<Context>) -> Router {
    let mut registry = Registry::default();
    ctx.metrics.register(&mut registry);
    ctx.kratos.metrics().register(&mut registry);
    let crd_names = crate::api::crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let shared = Arc::new(Shared {
        ctx,
        registry,
        crd_names,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    s.ctx
        .metrics
        .identities_managed
        .set(s.ctx.caches.identities_ready());
    s.ctx
        .metrics
        .status_writes_queued
        .set(i64::try_from(s.ctx.priority.statuses_queued()).unwrap_or(i64::MAX));
    s.ctx.metrics.sample_memory();
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

/// Why the operator is not ready, or `None` when it is.
pub async fn not_ready_reason(ctx: &Context, crd_names: &[String]) -> Option<String> {
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    for name in crd_names {
        match crds.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Some(format!("CRD {name} is not installed")),
            Err(e) => return Some(format!("cannot read CRD {name}: {e}")),
        }
    }
    if let Err(e) = ctx.kratos.answers().await {
        return Some(format!("Kratos does not answer: {e}"));
    }
    if let Err(e) = ctx.kratos.server_version().await {
        return Some(format!("Kratos does not answer: {e}"));
    }
    // A follower builds no caches; it is ready when it could take over.
    if !ctx.standby.load(std::sync::atomic::Ordering::Relaxed) && !ctx.caches.synced().await {
        return Some("caches are not synced yet".into());
    }
    None
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    match not_ready_reason(&s.ctx, &s.crd_names).await {
        None => (StatusCode::OK, "ok".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Binds `addr` and serves until the process ends. Returns the bound address (port 0 picks one).
pub async fn serve(
    ctx: Arc<Context>,
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
    let app = router(ctx);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}
