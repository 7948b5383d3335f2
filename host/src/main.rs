//! `micropay`: the MicroPay host.

use clap::{Parser, Subcommand};
use micropay::admin::keys::KeyFile;
use micropay::config::Config;
use micropay::policy::Role;
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
    /// Manage admin API keys.
    #[command(subcommand, name = "admin-key")]
    AdminKey(AdminKeyCommand),
}

#[derive(Subcommand)]
enum AdminKeyCommand {
    /// Create a key with a role; it is printed once and only its hash is stored.
    Create {
        #[arg(long, value_enum)]
        role: Role,
        /// The keys file.
        #[arg(long, env = "MICROPAY_ADMIN_KEYS", default_value = "data/admin-keys.toml")]
        admin_keys: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => serve(config).await,
            Command::Bench(args) => bench::run(args).await,
            Command::AdminKey(AdminKeyCommand::Create { role, admin_keys }) => {
                let key = KeyFile::create(&admin_keys, role)?;
                println!("{key}");
                eprintln!(
                    "a {role:?} key; keep it now: it is not shown again ({} holds only its hash)",
                    admin_keys.display()
                );
                Ok(())
            }
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
    let (router, state) = gateway::router(platform, config.body_limit, config.admin_keys());
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
