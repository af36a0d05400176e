//! The kratos-operator binary: parse the command line, build the clients, start the HTTP server
//! and (when leading) the controllers.

use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use futures::FutureExt;
use kratos_operator::{
    api,
    config::{Cli, Command, ExportArgs, LogFormat, RunArgs},
    controller::{self, Context},
    export,
    kratos::KratosClient,
    leader, server,
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
    let ctx = Arc::new(Context::new(client.clone(), kratos, args.settings()));
    let (addr, _server) = server::serve(ctx.clone(), args.metrics_addr)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %addr, "kratos-operator starting; serving /metrics, /healthz, /readyz");

    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if !args.leader_elect {
        controller::run(ctx, ctrl_c.boxed()).await;
        return Ok(());
    }
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("kratos-operator-{}", std::process::id()));
    let lease = leader::LeaseSettings {
        namespace: pod_namespace(),
        identity,
        duration: args.lease_duration,
    };
    let mut rx = leader::elect(client, &lease)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(namespace = %lease.namespace, identity = %lease.identity, "waiting for leadership");
    tokio::select! {
        r = leader::wait_for_leadership(&mut rx) => r.map_err(|e| e.to_string())?,
        () = ctrl_c => return Ok(()),
    }
    tracing::info!(identity = %lease.identity, "became leader; starting controllers");
    let lost = leader::lost(rx.clone()).shared();
    let shutdown = futures::future::select(
        Box::pin(async {
            let _ = tokio::signal::ctrl_c().await;
        }),
        lost.clone(),
    )
    .map(|_| ())
    .boxed();
    controller::run(ctx, shutdown).await;
    if lost.now_or_never().is_some() {
        return Err("lost leadership; exiting so that this replica restarts as a follower".into());
    }
    Ok(())
}

async fn export_cmd(args: ExportArgs) -> Result<(), String> {
    let kratos = KratosClient::new(args.kratos.kratos_config())
        .map_err(|e| format!("invalid Kratos configuration: {e}"))?;
    let options = export::ExportOptions {
        namespace: args.namespace,
        include_managed: args.include_managed,
    };
    let yaml = export::export(&kratos, &options)
        .await
        .map_err(|e| e.to_string())?;
    print!("{yaml}");
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
