//! The machine's busy CPU time, from `/proc/stat`: what a run cost in processor time, whoever
//! spent it (the host, PostgreSQL, pgbench). Throughput on a shared machine moves with what
//! the machine's neighbours do; the busy time an operation costs moves much less, so the bench
//! reports both. Where PostgreSQL runs on this machine, [`DatabaseCpu`] also splits its share
//! by database, which says which service's work a payment's time goes to.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on Linux whatever the kernel's `HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Busy CPU time so far, all cores together: the machine's, and this process's (the host,
/// with the bench's clients).
#[derive(Debug, Clone, Copy)]
pub struct BusyTime {
    machine: u64,
    process: u64,
}

impl BusyTime {
    /// Reads it now: user, nice, system, irq and softirq ticks (not idle, I/O wait or the time
    /// stolen by the machine's hypervisor). Zero where `/proc/stat` cannot be read.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks = stat
            .lines()
            .find_map(|line| line.strip_prefix("cpu "))
            .map(|fields| {
                let fields: Vec<u64> = fields.split_whitespace().filter_map(|field| field.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal ...
                [0, 1, 2, 5, 6].iter().filter_map(|&index| fields.get(index)).sum()
            })
            .unwrap_or(0);
        Self { machine: ticks, process: process_ticks("self").unwrap_or(0) }
    }

    /// Milliseconds of the machine's busy CPU time since `earlier`, per one of `operations`.
    pub fn ms_per(self, earlier: BusyTime, operations: usize) -> f64 {
        ms(self.machine.saturating_sub(earlier.machine), operations)
    }

    /// Milliseconds of this process's CPU time since `earlier`, per one of `operations`.
    pub fn process_ms_per(self, earlier: BusyTime, operations: usize) -> f64 {
        ms(self.process.saturating_sub(earlier.process), operations)
    }
}

fn ms(ticks: u64, operations: usize) -> f64 {
    ticks as f64 / TICKS_PER_SECOND * 1000.0 / operations.max(1) as f64
}

/// A process's CPU time so far, user and system, in ticks of [`TICKS_PER_SECOND`]; `None` when
/// `/proc` does not have it (the process ended, or runs on another machine).
fn process_ticks(pid: &str) -> Option<u64> {
    process_stat(pid).map(|(_, ticks)| ticks)
}

/// A process's command name and CPU time so far, from `/proc/<pid>/stat`.
fn process_stat(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, fields) = stat.rsplit_once(')')?;
    let (_, command) = head.split_once('(')?;
    // utime and stime, the 14th and 15th fields, counted after the command's parenthesis.
    let ticks = fields.split_whitespace().skip(11).take(2).filter_map(|field| field.parse::<u64>().ok()).sum();
    Some((command.to_string(), ticks))
}

/// How often [`DatabaseCpu`] reads the backends' CPU time.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// PostgreSQL's CPU time over a run by database, for the databases whose names start with a
/// prefix (an installation's): each backend's time from `/proc/<pid>/stat`, the backends and
/// their databases from `pg_stat_activity`, read every [`SAMPLE_EVERY`] from the start to the
/// [`finish`](Self::finish), since backends come and go with the pools. A backend that ends
/// loses what it spent after its last reading; one that starts during the run counts from
/// zero. Empty when the server runs on another machine (no backend's `/proc` entry here is a
/// PostgreSQL process).
pub struct DatabaseCpu {
    stop: oneshot::Sender<()>,
    sampling: JoinHandle<anyhow::Result<BTreeMap<String, u64>>>,
}

/// One backend as [`DatabaseCpu`] last read it.
struct Backend {
    database: String,
    /// Its CPU time when the run started (zero for a backend started during the run).
    start: u64,
    last: u64,
}

impl DatabaseCpu {
    /// Reads every backend of the prefix's databases now, then keeps reading until finished.
    pub async fn start(server_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let mut server = PgConnection::connect(server_url).await.context("connecting to read the server's backends")?;
        let mut backends = HashMap::new();
        read_backends(&mut server, prefix, &mut backends, true).await?;
        let prefix = prefix.to_string();
        let (stop, mut stopped) = oneshot::channel();
        let sampling = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => read_backends(&mut server, &prefix, &mut backends, false).await?,
                    _ = &mut stopped => break,
                }
            }
            read_backends(&mut server, &prefix, &mut backends, false).await?;
            let mut by_database = BTreeMap::new();
            for backend in backends.into_values() {
                *by_database.entry(backend.database).or_insert(0) += backend.last.saturating_sub(backend.start);
            }
            Ok(by_database)
        });
        Ok(Self { stop, sampling })
    }

    /// Stops reading: milliseconds of CPU time per one of `operations`, by database (named
    /// without the prefix), the most first.
    pub async fn finish(self, operations: usize) -> anyhow::Result<Vec<(String, f64)>> {
        let _ = self.stop.send(());
        let by_database = self.sampling.await.context("the backends' sampler")??;
        let mut per_operation: Vec<(String, f64)> =
            by_database.into_iter().map(|(database, ticks)| (database, ms(ticks, operations))).collect();
        per_operation.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(per_operation)
    }
}

/// Reads the CPU time of the backends now connected to the prefix's databases.
async fn read_backends(
    server: &mut PgConnection,
    prefix: &str,
    backends: &mut HashMap<(i32, String), Backend>,
    at_start: bool,
) -> anyhow::Result<()> {
    // A backend is its pid and its start: a pid may be another backend's later.
    let connected: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT pid, backend_start::text, datname::text FROM pg_catalog.pg_stat_activity \
         WHERE starts_with(datname::text, $1)",
    )
    .bind(prefix)
    .fetch_all(server)
    .await?;
    for (pid, started, database) in connected {
        // A process of that pid here that is not PostgreSQL's is another machine's backend.
        let Some((command, ticks)) = process_stat(&pid.to_string()) else { continue };
        if command != "postgres" {
            continue;
        }
        backends.entry((pid, started)).and_modify(|backend| backend.last = ticks).or_insert_with(|| Backend {
            database: database.strip_prefix(prefix).unwrap_or(&database).to_string(),
            start: if at_start { ticks } else { 0 },
            last: ticks,
        });
    }
    Ok(())
}

/// `(database, ms)` pairs as a list, the most first, those under 0.01 ms left out.
pub fn by_database(per_database: &[(String, f64)]) -> String {
    let shown: Vec<String> = per_database
        .iter()
        .filter(|(_, ms)| *ms >= 0.01)
        .map(|(database, ms)| format!("{} {ms:.2}", short_name(database)))
        .collect();
    shown.join(", ")
}

/// A service database's name as the figures show it: `micropay_payment_db` as `payment`.
fn short_name(database: &str) -> &str {
    database.strip_prefix("micropay_").and_then(|name| name.strip_suffix("_db")).unwrap_or(database)
}
