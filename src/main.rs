//! The kratos-operator binary: parse the command line, build the clients, run the controllers.

use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use futures::FutureExt;
use kratos_operator::{
    api,
    config::{Cli, Command, LogFormat, RunArgs},
    controller::{self, Context},
    kratos::KratosClient,
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(true)).init(),
        LogFormat::Text => registry.with(fmt::layer()).init(),
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    init_logging(args.log_format);
    let client = kube::Client::try_default().await.map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
    let kratos = KratosClient::new(args.kratos_config()).map_err(|e| format!("invalid Kratos configuration: {e}"))?;
    let ctx = Arc::new(Context::new(client, kratos, args.settings()));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    }
    .boxed();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "kratos-operator starting");
    controller::run(ctx, shutdown).await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Crds) => api::crds_yaml().map(|y| print!("{y}")).map_err(|e| e.to_string()),
        Some(Command::Version) => {
            println!("kratos-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
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
