//! `micropay bench`: what an invocation costs, what the gateway costs against a plain axum
//! route serving the same answer, how fast events flow over each bus backend, and how many
//! ledger postings settle per second next to `pgbench` on the same server, measured in one run
//! on this machine.
//!
//! The invocation and HTTP endpoint is the probe's `GET /ping`, which touches no database: the
//! figures are the platform's own overhead (instantiate + call + drop, routing, request ids,
//! metrics). The bus figures are in [`events`], the ledger's in [`ledger`], the deploys' in
//! [`deploys`], the payments' in [`payments`], the fraud check's in [`fraud`], the
//! notifications' (through a real SMTP server) in [`notifications`].

mod cpu;
mod deploys;
mod events;
mod fraud;
mod ledger;
mod notifications;
mod payments;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::get;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::config::Config;
use crate::gateway;
use crate::platform::Platform;
use crate::runtime::bindings::Request;
use crate::runtime::engine::EngineOptions;
use crate::runtime::state::InvocationContext;

/// The component and path measured.
const COMPONENT: &str = "probe";
const PATH: &str = "/v1/probe/ping";

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub config: Config,
    /// Invocations measured one after another.
    #[arg(long, default_value_t = 20_000)]
    pub invocations: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of HTTP load per server.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Events sent over each bus backend.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// The NATS server (with JetStream) of the NATS run.
    #[arg(long, env = "MICROPAY_TEST_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub bench_nats_url: String,
    /// Ledger postings at each number of clients.
    #[arg(long, default_value_t = 5_000)]
    pub postings: usize,
    /// The numbers of concurrent ledger clients (and pgbench connections).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
    pub ledger_clients: Vec<usize>,
    /// Payments at each number of clients (the payments part).
    #[arg(long, default_value_t = 5_000)]
    pub payments: usize,
    /// Notifications sent (the notifications part).
    #[arg(long, default_value_t = 2_000)]
    pub notifications: usize,
    /// Deploys measured one after another (the deploy part).
    #[arg(long, default_value_t = 20)]
    pub deploys: usize,
    /// Which parts to run (all by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
}

/// The parts of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Events per second over each bus backend.
    Events,
    /// Ledger postings per second against pgbench.
    Ledger,
    /// Payments completed per second against pgbench, with their database cost, and an idle
    /// host's commits.
    Payments,
    /// Invocation cost and gateway throughput.
    Invocations,
    /// Deploys: answer, first request on the new version, request p99 during a storm of them.
    Deploys,
    /// The fraud check: an assessment's latency with 20 rules, payments/s with and without it.
    Fraud,
    /// Notifications per second from an event to an SMTP server's acceptance, against a plain
    /// SMTP client; render time per template.
    Notifications,
}

impl BenchArgs {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    crate::telemetry::init_with(args.config.log_format, "warn");
    // No service is deployed beside the measured ones: every pool gets its whole share.
    args.config.spare_services = 0;
    anyhow::ensure!(
        args.config.database_url.is_some(),
        "the bench runs two platforms side by side: give it a server with --database-url (cargo xtask bench does)"
    );
    if args.runs(Part::Events) {
        events_part(&args).await?;
    }
    if args.runs(Part::Ledger) {
        ledger_part(&args).await?;
    }
    if args.runs(Part::Payments) {
        payments_part(&args).await?;
    }
    if args.runs(Part::Fraud) {
        fraud_part(&args).await?;
    }
    if args.runs(Part::Notifications) {
        notifications_part(&args).await?;
    }
    if args.runs(Part::Invocations) {
        invocations_part(&args).await?;
    }
    // Last: its platform keeps serving (and holding its connections) until the bench ends.
    if args.runs(Part::Deploys) {
        deploys_part(&args).await?;
    }
    Ok(())
}

/// Invocation cost with and without limits, and the gateway against a plain axum route.
async fn invocations_part(args: &BenchArgs) -> anyhow::Result<()> {
    // `/ping` touches no database: few connections kept open, so the parts after fit beside.
    let config = Config { pool_min: 1, ..args.config.clone() };
    let platform = Platform::start(&config).await?;
    let unlimited = Platform::start_with(&config, EngineOptions { limits: false, fuel: false }).await?;

    // Invocation cost, no HTTP: with deadlines and memory limits, and without, interleaved
    //    in rounds so that noise on this shared machine falls on both alike.
    let mut limited_samples = Vec::with_capacity(args.invocations);
    let mut unlimited_samples = Vec::with_capacity(args.invocations);
    invocations(&platform, 1_000, &mut Vec::new()).await?;
    invocations(&unlimited, 1_000, &mut Vec::new()).await?;
    const ROUNDS: usize = 10;
    for _ in 0..ROUNDS {
        invocations(&platform, args.invocations / ROUNDS, &mut limited_samples).await?;
        invocations(&unlimited, args.invocations / ROUNDS, &mut unlimited_samples).await?;
    }
    let limited = Summary::of(&mut limited_samples);
    let unlimited_summary = Summary::of(&mut unlimited_samples);
    println!("invocation, instantiate + call + drop ({} runs each):", limited_samples.len());
    println!("  with deadline and memory limit: {limited}");
    println!("  without:                        {unlimited_summary}");
    println!("  cost of the limits: {:+.1}% (mean)", (limited.mean / unlimited_summary.mean - 1.0) * 100.0);
    unlimited.shutdown().await;

    // HTTP: the gateway against a plain axum route with the same answer.
    let plain = axum::Router::new().route(PATH, get(|| async { axum::Json(serde_json::json!({ "pong": true })) }));
    let (router, _state) = gateway::router(platform, args.config.body_limit, args.config.admin_keys());
    let plain_address = spawn_server(plain).await?;
    let gateway_address = spawn_server(router).await?;
    let duration = Duration::from_secs(args.seconds);
    let plain_run = load(plain_address, args.connections, duration).await?;
    let gateway_run = load(gateway_address, args.connections, duration).await?;
    println!(
        "HTTP GET {PATH} ({} connections, {} s each, load generator in the same process):",
        args.connections, args.seconds
    );
    println!("  plain axum route: {plain_run}");
    println!("  gateway:          {gateway_run}");
    println!("  gateway / plain throughput: {:.2}", gateway_run.per_second() / plain_run.per_second());

    Ok(())
}

/// Deploys of the probe under load, on databases of their own.
async fn deploys_part(args: &BenchArgs) -> anyhow::Result<()> {
    let mut config = args.config.clone();
    config.database_prefix = format!("{}deploys_", config.database_prefix);
    config.pool_min = 1;
    let platform = Platform::start(&config).await?;
    let connections = args.connections.min(16);
    let run =
        deploys::run(platform, &config.components_dir, config.body_limit, args.deploys, connections, args.seconds)
            .await?;
    println!(
        "deploys of the probe, two builds alternating ({} deploys; {connections} connections on GET {PATH}, {} s each):",
        run.deploys, args.seconds
    );
    println!("{run}");
    Ok(())
}

/// The bus, on each backend, on databases (and a stream) of its own, each platform alone on the
/// server (so that the others' pools do not crowd its connections).
async fn events_part(args: &BenchArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for (backend, nats_url) in [("embedded", None), ("nats", Some(args.bench_nats_url.clone()))] {
        let mut config = args.config.clone();
        config.database_prefix = format!("{}{backend}_", config.database_prefix);
        config.nats_url = nats_url;
        let platform = Platform::start(&config).await?;
        let run = events::run(&platform, args.events).await?;
        platform.shutdown().await;
        runs.push((backend, run));
    }
    println!("events, probe publishes → audit record committed ({} events per backend):", args.events);
    for (backend, run) in &runs {
        println!("  {backend:<9} {run}");
    }
    println!("  nats / embedded throughput: {:.2}", runs[1].1.per_second() / runs[0].1.per_second());

    Ok(())
}

/// Ledger postings at each number of clients, then pgbench at the same numbers of connections
/// with the platform stopped (the server's connections are too few for both at once).
async fn ledger_part(args: &BenchArgs) -> anyhow::Result<()> {
    let mut config = args.config.clone();
    config.database_prefix = format!("{}ledger_", config.database_prefix);
    // Seven services' pools and the bus's on a server of 100 connections (PostgreSQL's
    // default): few kept idle, and a maximum the five busy ones (account, transaction,
    // balance, audit, the bus) can all reach at once.
    config.pool_min = 1;
    config.pool_max = config.pool_max.min(12);
    let server_url = config.database_url.clone().expect("checked at the start");
    let ledger = ledger::Ledger::open(Platform::start(&config).await?).await?;
    let mut runs = Vec::new();
    for &clients in &args.ledger_clients {
        runs.push(ledger.run(clients, args.postings).await?);
    }
    ledger.shutdown().await;

    let baselines = pgbench_baselines(&server_url, &config.database_prefix, &args.ledger_clients)?;
    println!("ledger, two-entry transfers with their balance events, against pgbench TPC-B (10 s each):");
    for (run, baseline) in runs.iter().zip(baselines) {
        let baseline = baseline?;
        println!("  {run}; pgbench {baseline}; ledger / pgbench: {:.2}", run.per_second() / baseline.tps);
    }
    Ok(())
}

/// The connections the payments part's platform may open (`--db-connections` overrides).
const PAYMENTS_BUDGET: u32 = 80;

/// Payments at each number of clients, on databases of their own, with the database's work
/// per payment; an idle host's commits per second; then pgbench at the same numbers of
/// connections with the platform stopped.
async fn payments_part(args: &BenchArgs) -> anyhow::Result<()> {
    let mut config = args.config.clone();
    config.database_prefix = format!("{}payments_", config.database_prefix);
    config.pool_min = 1;
    config.pool_max = config.pool_max.min(12);
    config.nats_url = None;
    // Alone on the server while it runs (pgbench comes after): most of its connections, not
    // the default half kept for a second host.
    config.db_connections = Some(config.db_connections.unwrap_or(PAYMENTS_BUDGET));
    let server_url = config.database_url.clone().expect("checked at the start");
    let mut counters = payments::Counters::connect(&server_url, &config.database_prefix).await?;
    let bench = payments::Payments::open(Platform::start(&config).await?).await?;
    let mut runs = Vec::new();
    for &clients in &args.ledger_clients {
        runs.push(bench.run(clients, args.payments, &mut counters).await?);
    }
    // Idle: once what the runs set off has settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = counters.idle_commits_per_second(Duration::from_secs(20)).await?;
    bench.shutdown().await;

    let baselines = pgbench_baselines(&server_url, &config.database_prefix, &args.ledger_clients)?;
    println!(
        "payments, created → COMPLETED with ledger, balances and audit ({} connections), against pgbench TPC-B \
         (10 s each):",
        config.db_connections.unwrap_or_default()
    );
    for (run, baseline) in runs.iter().zip(baselines) {
        let baseline = baseline?;
        println!(
            "  {run}; pgbench {baseline}; payments / pgbench: {:.2} (by CPU time: {:.2})",
            run.per_second() / baseline.tps,
            baseline.cpu_ms / run.cpu_ms
        );
    }
    println!("  an idle host: {idle:.1} commits/s on its databases (20 s, 5 s after the last run)");
    Ok(())
}

/// The fraud check's cost: an assessment with 20 rules, and payments per second with the
/// fraud service and without one, at the first number of clients.
async fn fraud_part(args: &BenchArgs) -> anyhow::Result<()> {
    let mut config = args.config.clone();
    config.pool_min = 1;
    config.pool_max = config.pool_max.min(12);
    config.nats_url = None;
    config.db_connections = Some(config.db_connections.unwrap_or(PAYMENTS_BUDGET));
    let clients = args.ledger_clients.first().copied().unwrap_or(16);
    let run = fraud::run(&config, clients, args.payments).await?;
    println!("the fraud check ({} payments at {clients} clients each way):", args.payments);
    println!("{run}");
    Ok(())
}

/// Notifications through a real SMTP server, and each template's render time.
async fn notifications_part(args: &BenchArgs) -> anyhow::Result<()> {
    let config = Config { pool_min: 1, nats_url: None, ..args.config.clone() };
    let run = notifications::run(&config, args.notifications).await?;
    println!("notifications, user.code_issued on the bus → email accepted by aiosmtpd (a sink):");
    println!("{run}");
    Ok(())
}

/// `pgbench` TPC-B for 10 s at each number of `clients`, on a scratch database.
fn pgbench_baselines(
    server_url: &str,
    prefix: &str,
    clients: &[usize],
) -> anyhow::Result<Vec<anyhow::Result<ledger::Pgbench>>> {
    let scratch = format!("{prefix}pgbench");
    ledger::pgbench_init(server_url, &scratch)?;
    let baselines = clients.iter().map(|&clients| ledger::pgbench(server_url, &scratch, clients, 10)).collect();
    ledger::pgbench_drop(server_url, &scratch)?;
    Ok(baselines)
}

/// Invokes the probe's `/ping` `count` times, one after another, recording each duration.
async fn invocations(platform: &Platform, count: usize, samples: &mut Vec<Duration>) -> anyhow::Result<()> {
    let probe = platform
        .registry()
        .get(COMPONENT)
        .ok_or_else(|| anyhow::anyhow!("the bench needs the {COMPONENT} component (policies in tests/policies)"))?;
    for _ in 0..count {
        let request = Request {
            method: "GET".into(),
            path: "/ping".into(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let one = Instant::now();
        let response = platform.dispatcher.handle(&probe, request, InvocationContext::new(None, "bench")).await?;
        anyhow::ensure!(response.status == 200, "the probe did not answer 200");
        samples.push(one.elapsed());
    }
    Ok(())
}

/// Mean, median and 99th percentile of a set of durations, in microseconds.
pub(crate) struct Summary {
    mean: f64,
    p50: f64,
    p99: f64,
}

impl Summary {
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort();
        let total: Duration = samples.iter().sum();
        Self {
            mean: micros(total / samples.len().max(1) as u32),
            p50: micros(percentile(samples, 0.50)),
            p99: micros(percentile(samples, 0.99)),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs", self.mean, self.p50, self.p99)
    }
}

async fn spawn_server(router: axum::Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.ok();
    });
    Ok(address)
}

pub(crate) struct LoadRun {
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl LoadRun {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for LoadRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} requests/s, p50 {:.0} µs, p99 {:.0} µs", self.per_second(), micros(self.p50), micros(self.p99))
    }
}

/// `connections` keep-alive connections sending `GET PATH` back to back for `duration`.
async fn load(address: SocketAddr, connections: usize, duration: Duration) -> anyhow::Result<LoadRun> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let workers: Vec<_> =
        (0..connections).map(|_| tokio::spawn(async move { connection_worker(address, deadline).await })).collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(LoadRun {
        requests: latencies.len(),
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

async fn connection_worker(address: SocketAddr, deadline: Instant) -> anyhow::Result<Vec<Duration>> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut latencies = Vec::new();
    let uri = format!("http://{address}{PATH}");
    while Instant::now() < deadline {
        let request = hyper::Request::get(&uri).header("host", "bench").body(Empty::<Bytes>::new())?;
        let one = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        anyhow::ensure!(status == 200, "{uri} answered {status}");
        latencies.push(one.elapsed());
    }
    Ok(latencies)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
