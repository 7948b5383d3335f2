//! The relay: committed outbox rows of one publisher's database go to the bus, oldest first.
//!
//! Invariants kept here:
//! - one relay per outbox at a time, whatever the number of hosts (a transaction-level advisory
//!   lock in the publisher's database; the other hosts skip their turn);
//! - rows are marked relayed in the same transaction that read them, after the backend
//!   acknowledged them: a crash anywhere before that commit leaves them unrelayed, to be sent
//!   again (the backend drops copies by event id), so nothing committed is ever lost;
//! - rows are sent in outbox order, so events of one key keep the order in which their
//!   publishing units of work took their outbox sequence numbers;
//! - an event leaves with the publisher's name as its source: the relay of a database stamps
//!   it, so a subscriber can trust it (only the host writes the outbox besides);
//! - the outbox stays quick to read however fast it turns over: marking rows relayed leaves
//!   their old versions behind in the index of unrelayed rows, which every read walks from its
//!   start, so the relay vacuums the outbox after every [`VACUUM_EVERY`] rows it relayed
//!   rather than wait for autovacuum (a minute or more behind: 12,000 payments' events made a
//!   read 6 ms).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Notify, watch};

use super::{BATCH, Envelope, EnvelopeRow, SharedBackend, locks};
use crate::runtime::invoke::Dispatcher;

/// How often an idle service relay looks at its outbox without being woken: rows written by
/// a host that died before relaying them. A host relays what its own units of work commit
/// when they wake it.
pub const IDLE_POLL: Duration = Duration::from_secs(1);

/// How soon a relay that found another host relaying the outbox tries again: that host may
/// have read the outbox before this host's rows committed.
const BUSY_RETRY: Duration = Duration::from_millis(10);

/// How many rows a relay marks relayed before it vacuums the outbox.
const VACUUM_EVERY: usize = 2_000;

/// One publisher's relay.
pub struct Relay {
    /// The publishing service.
    pub source: Arc<str>,
    /// The platform role's pool on its database.
    pub pool: PgPool,
    pub backend: SharedBackend,
    /// For its metrics.
    pub dispatcher: Arc<Dispatcher>,
    /// Signalled when a unit of work of this publisher committed events.
    pub wake: Arc<Notify>,
    /// How often it looks without being woken.
    pub idle_poll: Duration,
}

impl Relay {
    /// Relays until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut since_vacuum = 0;
        while !*shutdown.borrow() {
            let wake = self.wake.notified();
            let relayed = self.relay_once().await;
            if let Ok(Relayed::Rows(rows)) = relayed {
                since_vacuum += rows;
                if since_vacuum >= VACUUM_EVERY {
                    since_vacuum = 0;
                    self.vacuum().await;
                }
            }
            let pause = match relayed {
                Ok(Relayed::Rows(relayed)) if relayed == BATCH => continue,
                Ok(Relayed::Rows(_)) => self.idle_poll,
                Ok(Relayed::Busy) => BUSY_RETRY,
                Err(err) => {
                    tracing::warn!(source = %self.source, "relaying the outbox failed, retrying: {err:#}");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = wake => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Vacuums the outbox (see the invariants above). A failure is only logged: the outbox is
    /// slower to read until the next one, or autovacuum, succeeds.
    async fn vacuum(&self) {
        let vacuumed = sqlx::raw_sql("VACUUM (SKIP_LOCKED) micropay_platform.outbox").execute(&self.pool).await;
        if let Err(err) = vacuumed {
            tracing::warn!(source = %self.source, "vacuuming the outbox failed: {err}");
        }
    }

    /// Relays one batch.
    async fn relay_once(&self) -> anyhow::Result<Relayed> {
        let mut transaction = self.pool.begin().await.context("beginning the relay transaction")?;
        let turn: bool = sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_xact_lock($1, 0)")
            .bind(locks::RELAY)
            .fetch_one(&mut *transaction)
            .await?;
        if !turn {
            self.dispatcher.metrics.set_unrelayed_age(&self.source, 0.0);
            return Ok(Relayed::Busy);
        }
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT sequence, event_id, topic, source, subject, data, trace_id, occurred_at \
             FROM micropay_platform.outbox WHERE relayed_at IS NULL ORDER BY sequence LIMIT $1",
        )
        .bind(BATCH as i64)
        .fetch_all(&mut *transaction)
        .await
        .context("reading the outbox")?;
        let oldest = rows.first().map(|row| age_seconds(row.event.occurred_at)).unwrap_or(0.0);
        self.dispatcher.metrics.set_unrelayed_age(&self.source, oldest);
        if rows.is_empty() {
            return Ok(Relayed::Rows(0));
        }
        let sequences: Vec<i64> = rows.iter().map(|row| row.sequence).collect();
        // The source is the outbox's owner, whatever a row says.
        let events: Vec<Envelope> =
            rows.into_iter().map(|row| Envelope { source: self.source.to_string(), ..row.event.into() }).collect();
        self.backend
            .publish(&events)
            .await
            .with_context(|| format!("publishing to the {} bus", self.backend.name()))?;
        sqlx::query("UPDATE micropay_platform.outbox SET relayed_at = pg_catalog.now() WHERE sequence = ANY($1)")
            .bind(&sequences)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await.context("marking the outbox rows relayed")?;
        self.dispatcher.metrics.record_relayed(&self.source, events.len());
        Ok(Relayed::Rows(events.len()))
    }
}

/// What one turn of a relay did.
enum Relayed {
    /// Relayed this many rows.
    Rows(usize),
    /// Another host was relaying the outbox.
    Busy,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    sequence: i64,
    #[sqlx(flatten)]
    event: EnvelopeRow,
}

/// Seconds since `time` (never negative: clocks of hosts may differ slightly).
pub fn age_seconds(time: DateTime<Utc>) -> f64 {
    (Utc::now() - time).to_std().map(|age| age.as_secs_f64()).unwrap_or(0.0)
}
