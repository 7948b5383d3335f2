//! The embedded bus: PostgreSQL only, in the administrator's database `micropay_bus_db`, so
//! `micropay serve` needs nothing else. Every host sharing the server shares the bus.
//!
//! Invariants kept here:
//! - appends take one advisory lock, so events commit in the order of their sequence numbers
//!   and a reader that has seen sequence N will never later find a smaller one committed;
//! - an event id is stored once (`UNIQUE`): a relay that sends a batch again adds nothing;
//! - a subscriber's position in a partition only moves forward, past events it handled; a feed
//!   reads the partitions a host delivers to a subscriber together, each from its own position
//!   and in its own order, so one statement reads a batch and one acknowledges it;
//! - an append wakes every host's feeds of the partitions it touched: its transaction sends a
//!   `NOTIFY` (delivered at its commit, so a woken feed finds the events) which each host's
//!   listener turns into a wake-up of its feeds. An idle feed asks the database only every
//!   [`FALLBACK_POLL`], for a wake-up lost while a listener reconnected (which also wakes every
//!   feed), so an idle host costs the bus's database next to nothing.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, watch};

use super::{BATCH, Envelope, EnvelopeColumns, EnvelopeRow, PARTITIONS, RETENTION_DAYS, locks};
use crate::postgres::provision::index_if_missing;

/// The statements that make the bus tables.
pub fn tables() -> Vec<String> {
    vec![
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
        )"
        .to_string(),
        index_if_missing(
            "public.events_by_partition",
            "CREATE INDEX events_by_partition ON public.events (partition, sequence)",
        ),
        "CREATE TABLE IF NOT EXISTS public.positions (
            subscriber VARCHAR(100) NOT NULL,
            partition SMALLINT NOT NULL,
            sequence BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (subscriber, partition)
        )"
        .to_string(),
    ]
}

/// How long a feed waits for a wake-up before it looks anyway.
const FALLBACK_POLL: Duration = Duration::from_secs(10);

/// How long after a read a feed reads again when that read did not fill a batch: the events
/// arriving meanwhile make the next batch, which shares one read, one unit of work and one
/// acknowledgement, instead of each setting off its own. An idle feed reads as soon as it is
/// woken; a busy one reads at most this often, unless its batches come full.
const PACE: Duration = Duration::from_millis(20);

/// How long a feed may leave its positions behind the batches it read that held nothing for
/// its subscriber (see `Feed::acknowledge`).
pub const IDLE_ACKNOWLEDGE: Duration = Duration::from_secs(1);

/// The channel appends notify, with the partitions they touched as the payload (`"0,3"`).
const CHANNEL: &str = "micropay_bus";

/// The bus on its database.
pub struct EmbeddedBus {
    pool: PgPool,
    /// One per partition: wakes this host's feeds of a partition when any host appended to
    /// it. Per partition, so that an append wakes the feeds that may have something to read,
    /// not every subscriber's every partition.
    appended: Arc<[Notify]>,
}

impl EmbeddedBus {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, appended: (0..PARTITIONS).map(|_| Notify::new()).collect() }
    }

    pub async fn publish(&self, events: &[Envelope]) -> anyhow::Result<()> {
        let partitions: Vec<i16> = events.iter().map(|event| event.partition() as i16).collect();
        let mut touched = partitions.clone();
        touched.sort_unstable();
        touched.dedup();
        let payload = touched.iter().map(i16::to_string).collect::<Vec<_>>().join(",");
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock($1, 0), pg_catalog.pg_notify($2, $3)")
            .bind(locks::APPEND)
            .bind(CHANNEL)
            .bind(&payload)
            .execute(&mut *transaction)
            .await?;
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
        // This host's feeds need not wait for the notification's round trip.
        for partition in touched {
            self.appended[partition as usize].notify_waiters();
        }
        Ok(())
    }

    /// Turns the appends' notifications (every host's) into wake-ups of this host's feeds,
    /// until `shutdown` turns true. A lost listening connection wakes every feed, then
    /// listens again.
    pub async fn listen(&self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            tokio::select! {
                Err(err) = self.relay_notifications() => {
                    tracing::warn!("listening for bus appends failed, retrying: {err:#}");
                    self.wake_all();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Listens and wakes feeds until the connection fails.
    async fn relay_notifications(&self) -> anyhow::Result<std::convert::Infallible> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        // Whatever was appended while nobody listened.
        self.wake_all();
        loop {
            // `None`: the connection was lost and made again, missing what was sent meanwhile.
            let Some(notification) = listener.try_recv().await? else {
                self.wake_all();
                continue;
            };
            for partition in notification.payload().split(',').filter_map(|p| p.parse::<usize>().ok()) {
                if let Some(appended) = self.appended.get(partition) {
                    appended.notify_waiters();
                }
            }
        }
    }

    fn wake_all(&self) {
        for appended in self.appended.iter() {
            appended.notify_waiters();
        }
    }

    /// Deletes events past the retention.
    pub async fn purge(&self) -> anyhow::Result<()> {
        let purge = format!(
            "DELETE FROM public.events WHERE published_at < pg_catalog.now() - interval '{RETENTION_DAYS} days'"
        );
        sqlx::query(&purge).execute(&self.pool).await?;
        Ok(())
    }

    /// How many events `subscriber` has not acknowledged yet, over every partition.
    pub async fn undelivered(&self, subscriber: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM public.events AS e \
             WHERE e.sequence > COALESCE((SELECT p.sequence FROM public.positions AS p \
                                          WHERE p.subscriber = $1 AND p.partition = e.partition), 0)",
        )
        .bind(subscriber)
        .fetch_one(&self.pool)
        .await?)
    }

    /// `subscriber`'s feed of `partitions` (never empty), from its positions in them.
    pub async fn feed(
        &self,
        subscriber: &str,
        partitions: &[u16],
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Feed> {
        let partitions: Vec<i16> = partitions.iter().map(|&partition| partition as i16).collect();
        sqlx::query(
            "INSERT INTO public.positions (subscriber, partition) SELECT $1, fed FROM UNNEST($2::smallint[]) AS fed \
             ON CONFLICT DO NOTHING",
        )
        .bind(subscriber)
        .bind(&partitions)
        .execute(&self.pool)
        .await?;
        let rows: Vec<(i16, i64)> = sqlx::query_as(
            "SELECT partition, sequence FROM public.positions WHERE subscriber = $1 AND partition = ANY($2)",
        )
        .bind(subscriber)
        .bind(&partitions)
        .fetch_all(&self.pool)
        .await?;
        Ok(Feed {
            pool: self.pool.clone(),
            appended: self.appended.clone(),
            subscriber: subscriber.to_string(),
            positions: rows
                .into_iter()
                .map(|(partition, sequence)| (partition, Position { acknowledged: sequence, delivered: sequence }))
                .collect(),
            next_read: tokio::time::Instant::now(),
            acknowledged_at: tokio::time::Instant::now(),
            stop,
        })
    }
}

#[derive(sqlx::FromRow)]
struct BusRow {
    partition: i16,
    sequence: i64,
    #[sqlx(flatten)]
    event: EnvelopeRow,
}

/// Where a feed stands in one partition.
struct Position {
    /// The last acknowledged sequence number.
    acknowledged: i64,
    /// The last sequence number handed out.
    delivered: i64,
}

/// One subscriber's positions in the partitions a host delivers to it, read together: one
/// statement reads a batch across them, one records how far the batch went in each.
pub struct Feed {
    pool: PgPool,
    /// Every partition's wake-up, of which this feed waits on its own.
    appended: Arc<[Notify]>,
    subscriber: String,
    positions: BTreeMap<i16, Position>,
    /// When the next read may start: [`PACE`] after a read that did not fill a batch.
    next_read: tokio::time::Instant,
    /// When the positions were last written.
    acknowledged_at: tokio::time::Instant,
    /// Ends a wait for events: the partitions are being handed over.
    stop: watch::Receiver<bool>,
}

impl Feed {
    pub async fn next_batch(&mut self) -> anyhow::Result<Vec<Envelope>> {
        let notifies = self.appended.clone();
        let mut appended: Vec<Pin<Box<Notified>>> =
            self.positions.keys().map(|&partition| Box::pin(notifies[partition as usize].notified())).collect();
        for wake in &mut appended {
            wake.as_mut().enable();
        }
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(self.next_read) => {}
            _ = stop.changed() => return Ok(Vec::new()),
        }
        let mut batch = self.read().await?;
        if batch.is_empty() && !appended.is_empty() && !*self.stop.borrow() {
            tokio::select! {
                _ = tokio::time::timeout(FALLBACK_POLL, futures_util::future::select_all(appended)) => {}
                _ = stop.changed() => return Ok(Vec::new()),
            }
            batch = self.read().await?;
        }
        if batch.len() < BATCH {
            self.next_read = tokio::time::Instant::now() + PACE;
        }
        Ok(batch
            .into_iter()
            .map(|row| {
                if let Some(position) = self.positions.get_mut(&row.partition) {
                    position.delivered = row.sequence;
                }
                row.event.into()
            })
            .collect())
    }

    /// The next events after those handed out, in sequence order: in each partition the ones
    /// that follow its position (an index range each), at most [`BATCH`] in all.
    async fn read(&self) -> anyhow::Result<Vec<BusRow>> {
        let (partitions, after): (Vec<i16>, Vec<i64>) =
            self.positions.iter().map(|(&partition, position)| (partition, position.delivered)).unzip();
        Ok(sqlx::query_as(
            "SELECT e.partition, e.sequence, e.event_id, e.topic, e.source, e.subject, e.data, e.trace_id, \
                    e.occurred_at \
             FROM UNNEST($1::smallint[], $2::bigint[]) AS fed(partition, after) \
             CROSS JOIN LATERAL (SELECT * FROM public.events AS e \
                                 WHERE e.partition = fed.partition AND e.sequence > fed.after \
                                 ORDER BY e.sequence LIMIT $3) AS e \
             ORDER BY e.sequence LIMIT $3",
        )
        .bind(&partitions)
        .bind(&after)
        .bind(BATCH as i64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves the positions of the partitions the last batches went through, with one
    /// statement; after a batch that held nothing for the subscriber (`handled` false), only
    /// once [`IDLE_ACKNOWLEDGE`] has passed since the positions were last written.
    pub async fn acknowledge(&mut self, handled: bool) -> anyhow::Result<()> {
        if !handled && self.acknowledged_at.elapsed() < IDLE_ACKNOWLEDGE {
            return Ok(());
        }
        self.acknowledged_at = tokio::time::Instant::now();
        let (partitions, sequences): (Vec<i16>, Vec<i64>) = self
            .positions
            .iter()
            .filter(|(_, position)| position.delivered > position.acknowledged)
            .map(|(&partition, position)| (partition, position.delivered))
            .unzip();
        if partitions.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE public.positions AS p SET sequence = GREATEST(p.sequence, moved.sequence) \
             FROM UNNEST($2::smallint[], $3::bigint[]) AS moved(partition, sequence) \
             WHERE p.subscriber = $1 AND p.partition = moved.partition",
        )
        .bind(&self.subscriber)
        .bind(&partitions)
        .bind(&sequences)
        .execute(&self.pool)
        .await?;
        for position in self.positions.values_mut() {
            position.acknowledged = position.delivered;
        }
        Ok(())
    }
}
