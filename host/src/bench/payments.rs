//! The payments benchmark: payments per second from creation to `COMPLETED` (the whole chain:
//! the authorization and hold, the ledger posting, the balance events, the completion, and the
//! audit trail of every event), at a number of concurrent clients, with what the database did
//! for each: commits (`pg_stat_database`) and statements (`pg_stat_statements`, when the
//! server preloads it), and the CPU time each takes, PostgreSQL's by database. `pgbench`'s
//! TPC-B on the same server in the same run is the baseline (see `ledger_part`). Requests are
//! made in process, as the gateway makes them after authentication.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use super::Summary;
use super::cpu::{self, BusyTime, DatabaseCpu};
use crate::bus::Backend;
use crate::platform::Platform;
use crate::runtime::bindings::{Caller, Request};
use crate::runtime::service::Service;
use crate::runtime::state::InvocationContext;

/// Accounts the payments run among: enough that clients rarely queue on one account's lock.
const ACCOUNTS: usize = 256;

/// How long completing may take before the run is declared stuck.
const TIMEOUT: Duration = Duration::from_secs(600);

/// The figures of one run.
pub struct PaymentRun {
    pub clients: usize,
    pub payments: usize,
    /// From the first request to the last payment completed and audited.
    pub elapsed: Duration,
    /// The API's answer time (`POST /payments`, 201).
    pub api: Summary,
    /// Creation to completion, as the payments' own timestamps say: p50 and p99, ms.
    pub completion_ms: (f64, f64),
    /// What the database did per payment.
    pub cost: DatabaseCost,
    /// The machine's busy CPU time per payment (the host's and PostgreSQL's), ms.
    pub cpu_ms: f64,
    /// The host's share of it (this process, with the bench's clients), ms.
    pub host_cpu_ms: f64,
    /// PostgreSQL's share of it by database, ms, the most first (empty when the server runs
    /// on another machine).
    pub by_database: Vec<(String, f64)>,
}

impl PaymentRun {
    pub fn per_second(&self) -> f64 {
        self.payments as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for PaymentRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>3} clients: {:.0} payments/s completed ({} in {:.2} s); API {}; created → completed p50 {:.1} ms, \
             p99 {:.1} ms; per payment {}, {:.2} ms CPU ({:.2} in the host)",
            self.clients,
            self.per_second(),
            self.payments,
            self.elapsed.as_secs_f64(),
            self.api,
            self.completion_ms.0,
            self.completion_ms.1,
            self.cost,
            self.cpu_ms,
            self.host_cpu_ms,
        )?;
        if !self.by_database.is_empty() {
            write!(f, "; PostgreSQL's by database: {}", cpu::by_database(&self.by_database))?;
        }
        Ok(())
    }
}

/// Commits and statements on the installation's databases over a run, per payment.
pub struct DatabaseCost {
    pub commits: f64,
    /// None when the server does not preload `pg_stat_statements`.
    pub statements: Option<f64>,
}

impl std::fmt::Display for DatabaseCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} commits", self.commits)?;
        match self.statements {
            Some(statements) => write!(f, ", {statements:.1} statements"),
            None => write!(f, " (statements: the server does not preload pg_stat_statements)"),
        }
    }
}

/// The database counters of an installation (its databases share a name prefix).
pub struct Counters {
    admin: PgConnection,
    server_url: String,
    prefix: String,
    statements: bool,
}

impl Counters {
    pub async fn connect(server_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let mut admin = PgConnection::connect(server_url).await.context("connecting to read the server's counters")?;
        let preloaded: bool = sqlx::query_scalar(
            "SELECT pg_catalog.current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'",
        )
        .fetch_one(&mut admin)
        .await?;
        if preloaded {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&mut admin).await?;
        }
        Ok(Self { admin, server_url: server_url.to_string(), prefix: prefix.to_string(), statements: preloaded })
    }

    /// Starts reading PostgreSQL's CPU time on the installation's databases.
    pub async fn database_cpu(&self) -> anyhow::Result<DatabaseCpu> {
        DatabaseCpu::start(&self.server_url, &self.prefix).await
    }

    /// Commits and statements so far on the installation's databases. The server publishes
    /// its counters about once a second: callers let it settle first.
    pub async fn read(&mut self) -> anyhow::Result<(i64, Option<i64>)> {
        sqlx::query("SELECT pg_catalog.pg_stat_clear_snapshot()").execute(&mut self.admin).await?;
        let commits: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(xact_commit), 0)::bigint FROM pg_catalog.pg_stat_database \
             WHERE datname LIKE $1 || '%'",
        )
        .bind(&self.prefix)
        .fetch_one(&mut self.admin)
        .await?;
        let statements = if self.statements {
            Some(
                sqlx::query_scalar(
                    "SELECT COALESCE(sum(s.calls), 0)::bigint FROM public.pg_stat_statements AS s \
                     JOIN pg_catalog.pg_database AS d ON d.oid = s.dbid WHERE d.datname LIKE $1 || '%'",
                )
                .bind(&self.prefix)
                .fetch_one(&mut self.admin)
                .await?,
            )
        } else {
            None
        };
        Ok((commits, statements))
    }

    /// Waits for the server to publish what happened until now, then reads.
    pub async fn settled(&mut self) -> anyhow::Result<(i64, Option<i64>)> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.read().await
    }

    /// Commits per second on the installation's databases over `window`, idle.
    pub async fn idle_commits_per_second(&mut self, window: Duration) -> anyhow::Result<f64> {
        let (before, _) = self.settled().await?;
        tokio::time::sleep(window).await;
        let (after, _) = self.settled().await?;
        Ok((after - before) as f64 / window.as_secs_f64())
    }
}

/// The accounts of the run, funded, and the way to invoke the payment service.
pub struct Payments {
    platform: Platform,
    payment: Arc<Service>,
    user: Caller,
    accounts: Vec<String>,
}

impl Payments {
    /// Opens [`ACCOUNTS`] business accounts for one user and funds each with a deposit.
    pub async fn open(platform: Platform) -> anyhow::Result<Self> {
        let payment = platform.registry().get("payment").context("the payments bench needs the payment service")?;
        let account = platform.registry().get("account").context("the payments bench needs the account service")?;
        let transaction =
            platform.registry().get("transaction").context("the payments bench needs the transaction service")?;
        let user = Caller { user_id: uuid::Uuid::new_v4().to_string(), session_id: uuid::Uuid::new_v4().to_string() };
        let mut accounts = Vec::with_capacity(ACCOUNTS);
        for _ in 0..ACCOUNTS {
            let body = json!({"account_type": "BUSINESS", "currency": "USD"});
            let opened =
                super::ledger::call(&platform.dispatcher, &account, Some(user.clone()), "POST", "/accounts", &body)
                    .await?;
            accounts.push(opened["account_id"].as_str().context("an account id")?.to_string());
        }
        for account in &accounts {
            let body = json!({"account_id": account, "amount": "1000000", "currency": "USD"});
            super::ledger::call(&platform.dispatcher, &transaction, None, "POST", "/deposits", &body).await?;
        }
        let payments = Self { platform, payment, user, accounts };
        payments.wait_until_quiet(Instant::now()).await?;
        Ok(payments)
    }

    /// `payments` payments of 1.00 between random pairs of accounts from `clients` concurrent
    /// clients, until every one is completed and the audit trail has every event.
    pub async fn run(&self, clients: usize, payments: usize, counters: &mut Counters) -> anyhow::Result<PaymentRun> {
        let (commits_before, statements_before) = counters.settled().await?;
        let pool = self.pool("payment")?;
        let run_start: chrono::NaiveDateTime = sqlx::query_scalar("SELECT LOCALTIMESTAMP").fetch_one(&pool).await?;
        // Connected before the clock starts; its first reading is the run's start.
        let databases = counters.database_cpu().await?;
        let started = Instant::now();
        let busy = BusyTime::now();
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..clients {
            let (dispatcher, payment, user) =
                (self.platform.dispatcher.clone(), self.payment.clone(), self.user.clone());
            let (accounts, next) = (self.accounts.clone(), next.clone());
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ client as u64;
                while next.fetch_add(1, Ordering::Relaxed) < payments as u64 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let from = (state % accounts.len() as u64) as usize;
                    let to = (from + 1 + (state >> 20) as usize % (accounts.len() - 1)) % accounts.len();
                    let body = json!({
                        "payer_account_id": accounts[from], "payee_account_id": accounts[to],
                        "amount": "1.00", "currency": "USD",
                    });
                    let request = Request {
                        method: "POST".into(),
                        path: "/payments".into(),
                        query: String::new(),
                        headers: vec![
                            ("content-type".into(), "application/json".into()),
                            ("idempotency-key".into(), uuid::Uuid::new_v4().to_string()),
                        ],
                        body: body.to_string().into_bytes(),
                    };
                    let context = InvocationContext::new(Some(user.clone()), "bench");
                    let one = Instant::now();
                    let response = dispatcher.handle(&payment, request, context).await?;
                    anyhow::ensure!(
                        response.status == 201,
                        "POST /payments: {} {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    );
                    latencies.push(one.elapsed());
                }
                anyhow::Ok(latencies)
            });
        }
        let mut latencies = Vec::with_capacity(payments);
        while let Some(client) = tasks.join_next().await {
            latencies.extend(client??);
        }
        self.wait_until_quiet(started).await?;
        let elapsed = started.elapsed();
        let busy_after = BusyTime::now();
        let by_database = databases.finish(payments).await?;
        let (cpu_ms, host_cpu_ms) = (busy_after.ms_per(busy, payments), busy_after.process_ms_per(busy, payments));
        let (p50, p99): (f64, f64) = sqlx::query_as(
            "SELECT (percentile_cont(0.5) WITHIN GROUP (ORDER BY d))::float8, \
                    (percentile_cont(0.99) WITHIN GROUP (ORDER BY d))::float8 \
             FROM (SELECT EXTRACT(EPOCH FROM completed_at - created_at) * 1000 AS d \
                   FROM payment_schema.payments WHERE created_at >= $1) AS done",
        )
        .bind(run_start)
        .fetch_one(&pool)
        .await?;
        let (commits_after, statements_after) = counters.settled().await?;
        let per_payment = |before: i64, after: i64| (after - before) as f64 / payments as f64;
        Ok(PaymentRun {
            clients,
            payments,
            elapsed,
            api: Summary::of(&mut latencies),
            completion_ms: (p50, p99),
            cost: DatabaseCost {
                commits: per_payment(commits_before, commits_after),
                statements: statements_before.zip(statements_after).map(|(before, after)| per_payment(before, after)),
            },
            cpu_ms,
            host_cpu_ms,
            by_database,
        })
    }

    /// The platform role's pool on a service's database.
    fn pool(&self, service: &str) -> anyhow::Result<sqlx::PgPool> {
        let service = self.platform.registry().get(service).with_context(|| format!("no {service} service"))?;
        Ok(service.database.as_ref().context("a database")?.platform.clone())
    }

    /// Waits until no payment is processing, no posting pending, and the audit service has
    /// recorded every event on the bus (the bench runs on the embedded bus).
    async fn wait_until_quiet(&self, started: Instant) -> anyhow::Result<()> {
        let payment = self.pool("payment")?;
        let transaction = self.pool("transaction")?;
        loop {
            let processing: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM payment_schema.payments WHERE status IN ('INITIATED', 'PROCESSING')",
            )
            .fetch_one(&payment)
            .await?;
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM transaction_schema.transactions WHERE status = 'PENDING'")
                    .fetch_one(&transaction)
                    .await?;
            let unaudited = match (&*self.platform.bus.backend, processing + pending) {
                (Backend::Embedded(bus), 0) => bus.undelivered("audit").await?,
                _ => 1,
            };
            if processing + pending + unaudited == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < TIMEOUT,
                "{processing} payments processing, {pending} postings pending, {unaudited} events not audited"
            );
            // Counting is not free: look rarely enough not to slow what is measured.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(self) {
        self.platform.shutdown().await;
    }
}
