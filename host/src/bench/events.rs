//! The bus benchmark: events per second from publication to a committed audit record, and the
//! delivery lag, on one backend.
//!
//! The probe publishes `bench.event` in units of work of [`PER_INVOCATION`] events from
//! [`PUBLISHERS`] concurrent tasks; the audit service (subscribed to everything) is the only
//! subscriber of that topic. The run ends when the audit trail holds every event; the lag of
//! each is its audit record's `recorded_at` minus its publication time.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::platform::Platform;
use crate::runtime::bindings::Request;
use crate::runtime::state::InvocationContext;

/// Events published per unit of work.
const PER_INVOCATION: usize = 100;

/// Concurrent publishing tasks.
const PUBLISHERS: usize = 4;

/// How long the run may take before it is declared stuck.
const TIMEOUT: Duration = Duration::from_secs(300);

/// The figures of one run.
pub struct EventRun {
    pub events: usize,
    /// From the first publication to the last audit record committed.
    pub elapsed: Duration,
    /// Publication alone (all units of work committed).
    pub publishing: Duration,
    pub lag_p50: Duration,
    pub lag_p99: Duration,
}

impl EventRun {
    pub fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for EventRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} events/s end to end ({} events in {:.2} s; published in {:.2} s), lag p50 {:.0} ms, p99 {:.0} ms",
            self.per_second(),
            self.events,
            self.elapsed.as_secs_f64(),
            self.publishing.as_secs_f64(),
            self.lag_p50.as_secs_f64() * 1e3,
            self.lag_p99.as_secs_f64() * 1e3,
        )
    }
}

/// Publishes `events` (rounded up to whole units of work) and waits for their audit records.
pub async fn run(platform: &Platform, events: usize) -> anyhow::Result<EventRun> {
    let probe = platform.registry().get("probe").context("the bus bench needs the probe (tests/policies)")?;
    let audit = platform
        .bus
        .subscriptions()
        .iter()
        .find(|subscription| &*subscription.name == "audit")
        .context("the bus bench needs the audit service (policies/)")?
        .pool
        .clone();
    let invocations = events.div_ceil(PER_INVOCATION);
    let events = invocations * PER_INVOCATION;
    let since: chrono::NaiveDateTime =
        sqlx::query_scalar("SELECT clock_timestamp()::timestamp").fetch_one(&audit).await?;

    let started = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for publisher in 0..PUBLISHERS {
        let (dispatcher, probe) = (platform.dispatcher.clone(), probe.clone());
        let share = invocations / PUBLISHERS + usize::from(publisher < invocations % PUBLISHERS);
        publishers.spawn(async move {
            for _ in 0..share {
                let request = Request {
                    method: "POST".into(),
                    path: "/publish-many".into(),
                    query: format!("topic=bench.event&count={PER_INVOCATION}"),
                    headers: Vec::new(),
                    body: Vec::new(),
                };
                let response = dispatcher.handle(&probe, request, InvocationContext::new(None, "bench")).await?;
                anyhow::ensure!(response.status == 201, "the probe did not publish");
            }
            anyhow::Ok(())
        });
    }
    while let Some(published) = publishers.join_next().await {
        published??;
    }
    let publishing = started.elapsed();

    let count_recorded =
        "SELECT count(*) FROM audit_schema.audit_logs WHERE event_type = 'bench.event' AND occurred_at >= $1";
    loop {
        let recorded: i64 = sqlx::query_scalar(count_recorded).bind(since).fetch_one(&audit).await?;
        if recorded as usize >= events {
            break;
        }
        anyhow::ensure!(started.elapsed() < TIMEOUT, "only {recorded} of {events} events reached the audit trail");
        // Counting is not free: look rarely enough not to slow what is measured.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let (p50, p99): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) \
         FROM (SELECT EXTRACT(EPOCH FROM recorded_at - occurred_at)::float8 AS lag FROM audit_schema.audit_logs \
               WHERE event_type = 'bench.event' AND occurred_at >= $1) AS lags",
    )
    .bind(since)
    .fetch_one(&audit)
    .await?;
    Ok(EventRun {
        events,
        elapsed,
        publishing,
        lag_p50: Duration::from_secs_f64(p50.max(0.0)),
        lag_p99: Duration::from_secs_f64(p99.max(0.0)),
    })
}
