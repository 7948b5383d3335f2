//! `micropay`: the MicroPay host.

use clap::{Parser, Subcommand};
use micropay::admin::client::{HostAddress, error_message};
use micropay::admin::fraud_rules;
use micropay::admin::keys::KeyFile;
use micropay::config::Config;
use micropay::deploy::cli;
use micropay::policy::Role;
use micropay::{bench, gateway, platform::Platform, telemetry};
use reqwest::Method;

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
    /// Inspect and replay events that subscribers failed to handle (asks a running host).
    #[command(subcommand)]
    Events(EventsCommand),
    /// Check and archive the audit trail (asks a running host).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Reconcile the ledger across the transaction, balance and account services (asks a
    /// running host).
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// The fraud service's rules: list, promote, demote, deactivate, backtest (asks a running
    /// host, with a risk key).
    #[command(subcommand, name = "fraud-rules")]
    FraudRules(fraud_rules::FraudRulesCommand),
    /// The messages the host kept because no server is configured for their channel (emails
    /// without `--smtp-url`, ...): asks a running host, with an ops or platform key.
    #[command(subcommand)]
    Notifications(NotificationsCommand),
    /// Deploy a new version of a service, checked, then swapped in on every host (asks a
    /// running host).
    Deploy(cli::DeployArgs),
    /// List every service with its active version, who deployed it and when, and its counts.
    Components(HostAddress),
    /// List every stored version of a service; `*` marks the active one, `~` one on trial.
    Versions {
        name: String,
        #[command(flatten)]
        host: HostAddress,
    },
    /// Activate an earlier stored version of a service: by default end the trial of a canary,
    /// or else the version before the active one.
    Rollback {
        name: String,
        /// The version to activate.
        #[arg(long)]
        to: Option<i64>,
        #[command(flatten)]
        host: HostAddress,
    },
    /// Stop serving a service on every host; its versions and its data are kept, and
    /// deploying it again serves it again (a platform key).
    Undeploy {
        name: String,
        #[command(flatten)]
        host: HostAddress,
    },
    /// Make a service's version on trial (`deploy --canary`) its active version.
    Promote {
        name: String,
        #[command(flatten)]
        host: HostAddress,
    },
    /// Make an Ed25519 signing key for components; prints the line that trusts it.
    Keygen {
        /// Where to write the secret key.
        #[arg(long, default_value = "micropay-signing.key")]
        out: std::path::PathBuf,
        /// The roles whose deploys the key may sign.
        #[arg(long = "role", value_enum, required = true)]
        roles: Vec<Role>,
    },
    /// Sign a component file with a key from `micropay keygen`: writes FILE.sig.
    Sign {
        file: std::path::PathBuf,
        #[arg(long, default_value = "micropay-signing.key")]
        key: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// List every subscriber's dead letters, oldest failure first.
    DeadLetters(HostAddress),
    /// Deliver a dead letter again (after a fix); it leaves the dead letters once handled.
    Replay {
        /// The event's id.
        event_id: String,
        #[command(flatten)]
        host: HostAddress,
    },
}

#[derive(Subcommand)]
enum NotificationsCommand {
    /// The messages kept in the outbox, newest first.
    Outbox {
        /// Only those to this recipient.
        #[arg(long)]
        to: Option<String>,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[command(flatten)]
        host: HostAddress,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk every hash chain of the audit trail; exits 1 naming the first broken record.
    Verify(HostAddress),
    /// Create the coming months' partitions and archive the months older than a year.
    Archive(HostAddress),
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Check that every transaction is balanced, every entry has its balance event, the
    /// balance events replay to the snapshots, each currency sums to zero, no posting stays
    /// PENDING for 5 minutes and none is in the dead letters; prints what differs and exits 1
    /// when anything does. Takes an ops or platform key (it reads the dead letters).
    Check {
        /// The cut-off: `now` for a quiet ledger, or an RFC 3339 time. By default a minute
        /// ago, so that every posting made before it has committed or never will.
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        host: HostAddress,
    },
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
            Command::Events(command) => events(command).await,
            Command::Audit(command) => audit(command).await,
            Command::Ledger(LedgerCommand::Check { as_of, host }) => ledger_check(&host, as_of.as_deref()).await,
            Command::FraudRules(command) => fraud_rules::run(command).await,
            Command::Notifications(command) => notifications(command).await,
            Command::Deploy(args) => cli::deploy(args).await,
            Command::Components(host) => cli::components(&host).await,
            Command::Versions { name, host } => cli::versions(&host, &name).await,
            Command::Rollback { name, to, host } => cli::rollback(&host, &name, to).await,
            Command::Promote { name, host } => cli::promote(&host, &name).await,
            Command::Undeploy { name, host } => cli::undeploy(&host, &name).await,
            Command::Keygen { out, roles } => cli::keygen(&out, &roles),
            Command::Sign { file, key } => cli::sign(&file, &key),
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

async fn events(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::DeadLetters(host) => {
            let (status, body) = host.request(Method::GET, "/admin/events/dead-letters").await?;
            anyhow::ensure!(status == 200, "{}", error_message(status, &body));
            let letters = body["dead_letters"].as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters");
            }
            for letter in &letters {
                println!(
                    "{}  {}  {} from {} (key {})  {} attempts, failed {}: {}",
                    letter["event_id"].as_str().unwrap_or_default(),
                    letter["subscriber"].as_str().unwrap_or_default(),
                    letter["topic"].as_str().unwrap_or_default(),
                    letter["source"].as_str().unwrap_or_default(),
                    letter["subject"].as_str().unwrap_or_default(),
                    letter["attempts"],
                    letter["failed_at"].as_str().unwrap_or_default(),
                    letter["last_error"].as_str().unwrap_or_default(),
                );
            }
            Ok(())
        }
        EventsCommand::Replay { event_id, host } => {
            let path = format!("/admin/events/dead-letters/{event_id}/replay");
            let (status, body) = host.request(Method::POST, &path).await?;
            for replay in body["replays"].as_array().into_iter().flatten() {
                let error = replay["error"].as_str().map(|error| format!(": {error}")).unwrap_or_default();
                println!(
                    "{}: {}{error}",
                    replay["subscriber"].as_str().unwrap_or_default(),
                    replay["outcome"].as_str().unwrap_or_default()
                );
            }
            anyhow::ensure!(status == 200, "{}", error_message(status, &body));
            Ok(())
        }
    }
}

async fn notifications(command: NotificationsCommand) -> anyhow::Result<()> {
    let NotificationsCommand::Outbox { to, limit, host } = command;
    let mut query = vec![("limit", limit.to_string())];
    query.extend(to.map(|to| ("to", to)));
    let url = reqwest::Url::parse_with_params("http://host/admin/messages/outbox", &query)?;
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let (status, body) = host.request(Method::GET, &path).await?;
    anyhow::ensure!(status == 200, "{}", error_message(status, &body));
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    if messages.is_empty() {
        println!("the outbox is empty");
    }
    for message in &messages {
        println!(
            "{}  {} to {} from {}  {}",
            message["kept_at"].as_str().unwrap_or_default(),
            message["channel"].as_str().unwrap_or_default(),
            message["recipient"].as_str().unwrap_or_default(),
            message["sender"].as_str().unwrap_or_default(),
            message["subject"].as_str().unwrap_or_default(),
        );
        println!("{}\n", message["text_body"].as_str().unwrap_or_default());
    }
    Ok(())
}

async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(host) => {
            let (status, body) = host.request(Method::POST, "/v1/audit/verify").await?;
            anyhow::ensure!(status == 200, "{}", error_message(status, &body));
            let checked = &body["rows_checked"];
            if body["intact"] == true {
                println!("audit trail intact: {checked} records checked");
                return Ok(());
            }
            let broken = &body["first_broken"];
            anyhow::bail!(
                "audit trail broken at log {} (event {}, chain {} position {}): {} ({checked} records checked)",
                broken["log_id"].as_str().unwrap_or("unknown"),
                broken["event_id"].as_str().unwrap_or("unknown"),
                broken["chain"],
                broken["chain_position"],
                broken["reason"].as_str().unwrap_or_default(),
            )
        }
        AuditCommand::Archive(host) => {
            let (status, body) = host.request(Method::POST, "/v1/audit/maintenance").await?;
            anyhow::ensure!(status == 200, "{}", error_message(status, &body));
            println!("partitions created: {}", body["created"]);
            println!("partitions archived: {}", body["archived"]);
            Ok(())
        }
    }
}

async fn ledger_check(host: &HostAddress, as_of: Option<&str>) -> anyhow::Result<()> {
    let path = match as_of {
        // An RFC 3339 offset's `+` would read as a space in a query string.
        Some(as_of) => format!("/v1/transaction/ledger/check?as_of={}", as_of.replace('+', "%2B")),
        None => "/v1/transaction/ledger/check".to_string(),
    };
    let (status, report) = host.request(Method::POST, &path).await?;
    anyhow::ensure!(status == 200, "{}", error_message(status, &report));
    // A posting whose `transaction.posted` a subscriber set aside never reaches the balances (or
    // the audit trail): only the host can read the dead letters, the services cannot.
    let (status, letters) = host.request(Method::GET, "/admin/events/dead-letters").await?;
    anyhow::ensure!(
        status == 200,
        "the ledger check reads the dead letters too, which this key may not: {}",
        error_message(status, &letters)
    );
    println!(
        "ledger as of {}: {} transactions, {} accounts checked, {} postings in flight",
        report["as_of"].as_str().unwrap_or_default(),
        report["transactions_checked"],
        report["accounts_checked"],
        report["in_flight"],
    );
    for currency in report["currencies"].as_array().into_iter().flatten() {
        println!(
            "  {} sums to {}",
            currency["currency"].as_str().unwrap_or("?"),
            currency["sum"].as_str().unwrap_or("?")
        );
    }
    let mut problems: Vec<(String, String)> = report["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|problem| {
            let text = |field: &str| problem[field].as_str().unwrap_or_default().to_string();
            (text("kind"), text("detail"))
        })
        .collect();
    let dead_lettered = letters["dead_letters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|letter| letter["topic"] == "transaction.posted");
    problems.extend(dead_lettered.map(|letter| {
        let text = |field: &str| letter[field].as_str().unwrap_or_default();
        let detail = format!(
            "transaction {}: its transaction.posted event {} is in the dead letters of {} after {} attempts (last error: {}); \
             replay it with `micropay events replay {}` once mended",
            text("subject"),
            text("event_id"),
            text("subscriber"),
            letter["attempts"],
            text("last_error"),
            text("event_id"),
        );
        ("posting_dead_lettered".to_string(), detail)
    }));
    for (kind, detail) in &problems {
        println!("  {kind}: {detail}");
    }
    anyhow::ensure!(
        report["ok"] == true && problems.is_empty(),
        "the ledger does not reconcile: {} problems",
        problems.len()
    );
    println!("ledger reconciles");
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
