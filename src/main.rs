//! The kratos-operator binary: parse the command line, build the clients, start the HTTP server
//! and (when leading) the controllers.

use std::{
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
};

use clap::Parser;
use futures::FutureExt;
use kratos_operator::{
    api,
    config::{Cli, Command, ExportArgs, LogFormat, RunArgs},
    controller::{self, Context},
    export,
    kratos::KratosClient,
    leader, server, shutdown,
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true))
            .init(),
        LogFormat::Text => registry.with(fmt::layer()).init(),
    }
}

fn pod_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

async fn run(args: RunArgs) -> Result<(), String> {
    init_logging(args.log_format);
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
    let kratos = KratosClient::new(args.kratos_config())
        .map_err(|e| format!("invalid Kratos configuration: {e}"))?;
    let settings = args.settings();
    controller::check_label_selector(&client, &settings)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(selector) = &settings.label_selector {
        tracing::info!(%selector, "handling only the objects this label selector matches");
    }
    let ctx = Arc::new(Context::new(client.clone(), kratos, settings));
    let (addr, _server) = server::serve(ctx.clone(), args.metrics_addr)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %addr, "kratos-operator starting; serving /metrics, /healthz, /readyz");

    // The first SIGTERM (pod stop) or SIGINT starts the shutdown.
    let terminated = shutdown::terminated().boxed().shared();
    if !args.leader_elect {
        ctx.metrics.leading.set(1);
        stop_within(
            controller::run(ctx, terminated.clone().boxed()),
            terminated,
            args.shutdown_timeout,
        )
        .await;
        return Ok(());
    }
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("kratos-operator-{}", std::process::id()));
    let lease = leader::LeaseSettings {
        name: args.lease_name.clone(),
        namespace: pod_namespace(),
        identity,
        duration: args.lease_duration,
    };
    ctx.standby.store(true, Ordering::Relaxed);
    let mut election = leader::elect(client, &lease)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(namespace = %lease.namespace, identity = %lease.identity, "waiting for leadership");
    tokio::select! {
        r = leader::wait_for_leadership(&mut election.leading) => r.map_err(|e| e.to_string())?,
        () = terminated.clone() => {
            election.release().await;
            return Ok(());
        }
    }
    ctx.standby.store(false, Ordering::Relaxed);
    ctx.metrics.leading.set(1);
    let metrics = ctx.metrics.clone();
    tracing::info!(identity = %lease.identity, "became leader; starting controllers");
    let lost = leader::lost(election.leading.clone()).shared();
    let stop = futures::future::select(terminated.clone(), lost.clone())
        .map(|_| ())
        .shared();
    stop_within(
        controller::run(ctx, stop.clone().boxed()),
        stop,
        args.shutdown_timeout,
    )
    .await;
    metrics.leading.set(0);
    if lost.now_or_never().is_some() {
        election.release().await;
        return Err("lost leadership; exiting so that this replica restarts as a follower".into());
    }
    // Released only now: until the controllers stopped, this replica still wrote.
    if election.release().await {
        tracing::info!("stopped; the Lease is free for the next leader");
    } else {
        tracing::warn!(
            "stopped, but the Lease could not be released; the next leader waits for it to expire"
        );
    }
    Ok(())
}

/// Runs the controllers until they stop; once `stop` resolves they have `grace` to finish the
/// reconciles and Kratos calls in flight and to write the statuses they queued.
async fn stop_within(
    controllers: impl std::future::Future<Output = ()>,
    stop: impl std::future::Future<Output = ()>,
    grace: std::time::Duration,
) {
    if !shutdown::bounded(controllers, stop, grace).await {
        tracing::warn!(
            ?grace,
            "the controllers did not stop within the shutdown timeout; exiting anyway (the next leader reconciles what was left)"
        );
    }
}

async fn export_cmd(args: ExportArgs) -> Result<(), String> {
    let kratos = KratosClient::new(args.kratos.kratos_config())
        .map_err(|e| format!("invalid Kratos configuration: {e}"))?;
    let options = export::ExportOptions {
        namespace: args.namespace,
        include_managed: args.include_managed,
        names: args.name_from,
    };
    let export = export::collect(&kratos, &options)
        .await
        .map_err(|e| e.to_string())?;
    match args.output_dir {
        None => print!("{}", export.stream().map_err(|e| e.to_string())?),
        Some(dir) => {
            let files = export.files().map_err(|e| e.to_string())?;
            for (path, content) in &files {
                let path = dir.join(path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("creating {}: {e}", parent.display()))?;
                }
                std::fs::write(&path, content)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            eprintln!("wrote {} files into {}", files.len(), dir.display());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Crds) => api::crds_yaml()
            .map(|y| print!("{y}"))
            .map_err(|e| e.to_string()),
        Some(Command::Version) => {
            println!("kratos-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some(Command::Export(args)) => export_cmd(*args).await,
        Some(Command::Run(args)) => run(*args).await,
        None => run(cli.run).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
