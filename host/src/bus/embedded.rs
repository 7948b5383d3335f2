//! The embedded bus: PostgreSQL only, in the administrator's database `micropay_bus_db`, so
//! `micropay serve` needs nothing else. Every host sharing the server shares the bus.
//!
//! Invariants kept here:
//! - appends take one advisory lock, so events commit in the order of their sequence numbers
//!   and a reader that has seen sequence N will never later find a smaller one committed;
//! - an event id is stored once (`UNIQUE`): a relay that sends a batch again adds nothing;
//! - a subscriber's position in a partition only moves forward, past events it handled.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

use super::{BATCH, Envelope, EnvelopeColumns, EnvelopeRow, PARTITIONS, RETENTION_DAYS, locks};

/// The bus tables.
pub const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS public.events (
        sequence BIGSERIAL PRIMARY KEY,
        partition SMALLINT NOT NULL,
        event_id UUID NOT NULL UNIQUE,
        topic VARCHAR(200) NOT NULL,
        source VARCHAR(100) NOT NULL,
        subject VARCHAR(255) NOT NULL,
        data JSONB NOT NULL,
        trace_id VARCHAR(100) NOT NULL,
        occurred_at TIMESTAMPTZ NOT NULL,
        published_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )",
    "CREATE INDEX IF NOT EXISTS events_by_partition ON public.events (partition, sequence)",
    "CREATE TABLE IF NOT EXISTS public.positions (
        subscriber VARCHAR(100) NOT NULL,
        partition SMALLINT NOT NULL,
        sequence BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (subscriber, partition)
    )",
];

/// How long a feed waits for new events before answering an empty batch.
const WAIT: Duration = Duration::from_millis(100);

/// The bus on its database.
pub struct EmbeddedBus {
    pool: PgPool,
    /// One per partition: wakes this host's feeds of a partition when this host appended to
    /// it (other hosts' appends are polled). Per partition, so that an append wakes the feeds
    /// that may have something to read, not every subscriber's every partition.
    appended: Arc<[Notify]>,
}

impl EmbeddedBus {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, appended: (0..PARTITIONS).map(|_| Notify::new()).collect() }
    }

    pub async fn publish(&self, events: &[Envelope]) -> anyhow::Result<()> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock($1, 0)")
            .bind(locks::APPEND)
            .execute(&mut *transaction)
            .await?;
        let partitions: Vec<i16> = events.iter().map(|event| event.partition() as i16).collect();
        let columns = EnvelopeColumns::of(events);
        // WITH ORDINALITY keeps the batch's order in the sequence numbers.
        sqlx::query(
            "INSERT INTO public.events (partition, event_id, topic, source, subject, data, trace_id, occurred_at) \
             SELECT partition, event_id, topic, source, subject, data, trace_id, occurred_at \
             FROM UNNEST($1::smallint[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::text[], \
                         $8::timestamptz[]) WITH ORDINALITY \
                  AS batch(partition, event_id, topic, source, subject, data, trace_id, occurred_at, position) \
             ORDER BY position \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&partitions)
        .bind(&columns.ids)
        .bind(&columns.topics)
        .bind(&columns.sources)
        .bind(&columns.subjects)
        .bind(&columns.data)
        .bind(&columns.traces)
        .bind(&columns.times)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        let mut touched = partitions;
        touched.sort_unstable();
        touched.dedup();
        for partition in touched {
            self.appended[partition as usize].notify_waiters();
        }
        Ok(())
    }

    /// Deletes events past the retention.
    pub async fn purge(&self) -> anyhow::Result<()> {
        let purge = format!(
            "DELETE FROM public.events WHERE published_at < pg_catalog.now() - interval '{RETENTION_DAYS} days'"
        );
        sqlx::query(&purge).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn feed(&self, subscriber: &str, partition: u16) -> anyhow::Result<Feed> {
        sqlx::query("INSERT INTO public.positions (subscriber, partition) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(subscriber)
            .bind(partition as i16)
            .execute(&self.pool)
            .await?;
        let position: i64 =
            sqlx::query_scalar("SELECT sequence FROM public.positions WHERE subscriber = $1 AND partition = $2")
                .bind(subscriber)
                .bind(partition as i16)
                .fetch_one(&self.pool)
                .await?;
        Ok(Feed {
            pool: self.pool.clone(),
            appended: self.appended.clone(),
            subscriber: subscriber.to_string(),
            partition: partition as i16,
            position,
            delivered_up_to: position,
        })
    }
}

#[derive(sqlx::FromRow)]
struct BusRow {
    sequence: i64,
    #[sqlx(flatten)]
    event: EnvelopeRow,
}

/// One subscriber's position in one partition.
pub struct Feed {
    pool: PgPool,
    /// Every partition's wake-up, of which this feed waits on its own.
    appended: Arc<[Notify]>,
    subscriber: String,
    partition: i16,
    /// The last acknowledged sequence number.
    position: i64,
    /// The last sequence number handed out.
    delivered_up_to: i64,
}

impl Feed {
    pub async fn next_batch(&mut self) -> anyhow::Result<Vec<Envelope>> {
        let appended = self.appended[self.partition as usize].notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let mut batch = self.read().await?;
        if batch.is_empty() {
            let _ = tokio::time::timeout(WAIT, appended).await;
            batch = self.read().await?;
        }
        Ok(batch
            .into_iter()
            .map(|(sequence, envelope)| {
                self.delivered_up_to = sequence;
                envelope
            })
            .collect())
    }

    async fn read(&self) -> anyhow::Result<Vec<(i64, Envelope)>> {
        let rows: Vec<BusRow> = sqlx::query_as(
            "SELECT sequence, event_id, topic, source, subject, data, trace_id, occurred_at FROM public.events \
             WHERE partition = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        )
        .bind(self.partition)
        .bind(self.delivered_up_to)
        .bind(BATCH as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|row| (row.sequence, row.event.into())).collect())
    }

    pub async fn acknowledge(&mut self) -> anyhow::Result<()> {
        if self.delivered_up_to > self.position {
            sqlx::query(
                "UPDATE public.positions SET sequence = GREATEST(sequence, $3) WHERE subscriber = $1 AND partition = $2",
            )
            .bind(&self.subscriber)
            .bind(self.partition)
            .bind(self.delivered_up_to)
            .execute(&self.pool)
            .await?;
            self.position = self.delivered_up_to;
        }
        Ok(())
    }
}
