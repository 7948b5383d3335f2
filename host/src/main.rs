//! `micropay`: the MicroPay host.

use clap::{Parser, Subcommand};
use micropay::config::Config;
use micropay::{bench, gateway, platform::Platform, telemetry};

#[derive(Parser)]
#[command(name = "micropay", version, about = "MicroPay: a payment platform of sandboxed service components")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start PostgreSQL (embedded unless MICROPAY_DATABASE_URL is set), migrate, load the
    /// components named in the policies, and serve the HTTP API.
    Serve(Config),
    /// Measure invocation cost and gateway throughput against a plain axum route.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => serve(config).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("micropay: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init(config.log_format);
    let platform = Platform::start(&config).await?;
    let (router, state) = gateway::router(platform, config.body_limit);
    gateway::serve(router, config.listen, shutdown_signal()).await?;
    tracing::info!("shutting down");
    if let Some(state) = std::sync::Arc::into_inner(state) {
        state.platform.shutdown().await;
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
