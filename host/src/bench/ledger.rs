//! The ledger benchmark: postings per second, each a two-entry transfer between two users'
//! accounts with its balance events written, at a number of concurrent clients; and
//! `pgbench`'s TPC-B on the same PostgreSQL server in the same run, as the baseline.
//!
//! A posting is everything a client's `POST /v1/transaction/transactions` sets off: the
//! transaction service's invocation, its calls to the account service (accounts, limits) and
//! the balance service (the hold), its commit with the `transaction.posted` event, and the
//! balance service's handling of that event (two balance events, the hold settled, its own
//! events), until the transaction is `SETTLED`. The run ends when every posting is settled.
//! Invocations are made in process, as the gateway makes them after authentication.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::cpu::BusyTime;
use crate::platform::Platform;
use crate::policy::Role;
use crate::runtime::bindings::{Caller, Request};
use crate::runtime::invoke::Dispatcher;
use crate::runtime::service::Service;
use crate::runtime::state::InvocationContext;

/// Accounts the transfers run among: enough that clients rarely queue on one account's lock.
const ACCOUNTS: usize = 256;

/// How long the settling may take before the run is declared stuck.
const TIMEOUT: Duration = Duration::from_secs(600);

/// The figures of one run.
pub struct LedgerRun {
    pub clients: usize,
    pub postings: usize,
    /// From the first posting to the last one settled.
    pub elapsed: Duration,
    /// From the first posting to the last one answered 201.
    pub accepting: Duration,
}

impl LedgerRun {
    pub fn per_second(&self) -> f64 {
        self.postings as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for LedgerRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>3} clients: {:.0} postings/s settled ({} in {:.2} s; all accepted after {:.2} s, {:.0}/s)",
            self.clients,
            self.per_second(),
            self.postings,
            self.elapsed.as_secs_f64(),
            self.accepting.as_secs_f64(),
            self.postings as f64 / self.accepting.as_secs_f64(),
        )
    }
}

/// The accounts of the run, funded, and the way to invoke the services.
pub struct Ledger {
    platform: Platform,
    transaction: Arc<Service>,
    user: Caller,
    accounts: Vec<String>,
}

impl Ledger {
    /// Opens [`ACCOUNTS`] business accounts for one user and funds each with a deposit.
    pub async fn open(platform: Platform) -> anyhow::Result<Self> {
        let transaction =
            platform.registry().get("transaction").context("the ledger bench needs the transaction service")?;
        let account = platform.registry().get("account").context("the ledger bench needs the account service")?;
        let user = Caller { user_id: uuid::Uuid::new_v4().to_string(), session_id: uuid::Uuid::new_v4().to_string() };
        let mut accounts = Vec::with_capacity(ACCOUNTS);
        for _ in 0..ACCOUNTS {
            let body = json!({"account_type": "BUSINESS", "currency": "USD"});
            let opened = call(&platform.dispatcher, &account, Some(user.clone()), "POST", "/accounts", &body).await?;
            accounts.push(opened["account_id"].as_str().context("an account id")?.to_string());
        }
        let ledger = Self { platform, transaction, user, accounts };
        for account in &ledger.accounts {
            let body = json!({"account_id": account, "amount": "1000000", "currency": "USD"});
            call(&ledger.platform.dispatcher, &ledger.transaction, None, "POST", "/deposits", &body).await?;
        }
        ledger.wait_until_settled(Instant::now()).await?;
        Ok(ledger)
    }

    /// `postings` transfers of 1.00 between random pairs of accounts from `clients` concurrent
    /// clients, until every one is settled.
    pub async fn run(&self, clients: usize, postings: usize) -> anyhow::Result<LedgerRun> {
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..clients {
            let (dispatcher, transaction, user) =
                (self.platform.dispatcher.clone(), self.transaction.clone(), self.user.clone());
            let (accounts, next) = (self.accounts.clone(), next.clone());
            tasks.spawn(async move {
                let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ client as u64;
                while next.fetch_add(1, Ordering::Relaxed) < postings as u64 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let from = (state % accounts.len() as u64) as usize;
                    let to = (from + 1 + (state >> 20) as usize % (accounts.len() - 1)) % accounts.len();
                    let body = json!({"entries": [
                        {"account_id": accounts[from], "entry_type": "DEBIT", "amount": "1.00", "currency": "USD"},
                        {"account_id": accounts[to], "entry_type": "CREDIT", "amount": "1.00", "currency": "USD"},
                    ]});
                    call(&dispatcher, &transaction, Some(user.clone()), "POST", "/transactions", &body).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(client) = tasks.join_next().await {
            client??;
        }
        let accepting = started.elapsed();
        self.wait_until_settled(started).await?;
        Ok(LedgerRun { clients, postings, elapsed: started.elapsed(), accepting })
    }

    async fn wait_until_settled(&self, started: Instant) -> anyhow::Result<()> {
        let subscriptions = self.platform.bus.subscriptions();
        let pool = &subscriptions
            .iter()
            .find(|subscription| &*subscription.name == "transaction")
            .context("the transaction service subscribes to balance events")?
            .pool;
        loop {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM transaction_schema.transactions WHERE status = 'PENDING'")
                    .fetch_one(pool)
                    .await?;
            if pending == 0 {
                return Ok(());
            }
            anyhow::ensure!(started.elapsed() < TIMEOUT, "{pending} postings still pending");
            // Counting is not free: look rarely enough not to slow what is measured.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(self) {
        self.platform.shutdown().await;
    }
}

/// Invokes `method path` on a service as `user` (or as the platform administrator) and
/// returns the JSON answer of a 2xx.
pub(super) async fn call(
    dispatcher: &Arc<Dispatcher>,
    service: &Arc<Service>,
    user: Option<Caller>,
    method: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let context = match user {
        Some(user) => InvocationContext::new(Some(user), "bench"),
        None => InvocationContext::administrator(Role::Platform, None, "bench"),
    };
    call_in(dispatcher, service, context, method, path, body).await
}

/// [`call`] in `context` (another administrator's, a service's call).
pub(super) async fn call_in(
    dispatcher: &Arc<Dispatcher>,
    service: &Arc<Service>,
    context: InvocationContext,
    method: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let request = Request {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    };
    let response = dispatcher.handle(service, request, context).await?;
    if !(200..300).contains(&response.status) {
        anyhow::bail!("{method} {path}: {} {}", response.status, String::from_utf8_lossy(&response.body));
    }
    Ok(serde_json::from_slice(&response.body)?)
}

/// What a `pgbench` run did.
pub struct Pgbench {
    /// Transactions per second.
    pub tps: f64,
    /// The machine's busy CPU time per transaction (pgbench's and the server's), ms.
    pub cpu_ms: f64,
}

impl std::fmt::Display for Pgbench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} tps, {:.2} ms CPU per transaction", self.tps, self.cpu_ms)
    }
}

/// `pgbench`'s TPC-B-like transaction on its own scratch database of `server_url`'s server:
/// transactions per second at `clients` connections for `seconds`, and the CPU time each took.
pub fn pgbench(server_url: &str, database: &str, clients: usize, seconds: u64) -> anyhow::Result<Pgbench> {
    let base = server_url.rsplit_once('/').map_or(server_url, |(base, _)| base);
    let url = format!("{base}/{database}");
    let busy = BusyTime::now();
    let output = std::process::Command::new("pgbench")
        .args(["--no-vacuum", "--client", &clients.to_string(), "--jobs", "2", "--time", &seconds.to_string()])
        .arg(&url)
        .output()
        .context("running pgbench (Debian's postgresql-client)")?;
    let busy_after = BusyTime::now();
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "pgbench failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr));
    let tps: f64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {stdout}"))?;
    let transactions = (tps * seconds as f64).round() as usize;
    Ok(Pgbench { tps, cpu_ms: busy_after.ms_per(busy, transactions) })
}

/// Creates the scratch database and loads pgbench's tables (scale 1: 100,000 accounts).
pub fn pgbench_init(server_url: &str, database: &str) -> anyhow::Result<()> {
    let base = server_url.rsplit_once('/').map_or(server_url, |(base, _)| base);
    let admin = std::process::Command::new("psql")
        .arg(server_url)
        .args(["-qc", &format!("DROP DATABASE IF EXISTS {database}"), "-c", &format!("CREATE DATABASE {database}")])
        .output()
        .context("running psql")?;
    anyhow::ensure!(admin.status.success(), "creating {database}: {}", String::from_utf8_lossy(&admin.stderr));
    let init = std::process::Command::new("pgbench")
        .args(["--initialize", "--quiet", "--scale", "1"])
        .arg(format!("{base}/{database}"))
        .output()
        .context("running pgbench --initialize")?;
    anyhow::ensure!(init.status.success(), "pgbench --initialize: {}", String::from_utf8_lossy(&init.stderr));
    Ok(())
}

/// Drops the scratch database.
pub fn pgbench_drop(server_url: &str, database: &str) -> anyhow::Result<()> {
    let dropped = std::process::Command::new("psql")
        .arg(server_url)
        .args(["-qc", &format!("DROP DATABASE IF EXISTS {database}")])
        .output()
        .context("running psql")?;
    anyhow::ensure!(dropped.status.success(), "dropping {database}: {}", String::from_utf8_lossy(&dropped.stderr));
    Ok(())
}
