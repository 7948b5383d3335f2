//! The embedded bus: PostgreSQL only, in the administrator's database `micropay_bus_db`, so
//! `micropay serve` needs nothing else. Every host sharing the server shares the bus.
//!
//! Invariants kept here:
//! - appends take one advisory lock, so events commit in the order of their sequence numbers
//!   and a reader that has seen sequence N will never later find a smaller one committed;
//! - an event id is stored once (`UNIQUE`): a relay that sends a batch again adds nothing;
//! - a subscriber's position in a partition only moves forward, past events it handled or
//!   that are not of its topics; a feed reads the partitions a host delivers to a subscriber
//!   together, each from its own position and in its own order, so one statement reads a batch
//!   and one acknowledges it;
//! - a read returns only events of the subscriber's topics, and moves past the others it
//!   looked at without returning them: the statement takes the ids of the next events of those
//!   topics in each partition, the data of the ones it keeps, and tells how far each partition
//!   was looked through (see [`Feed::read`]);
//! - an append wakes the feeds that may have something to read in it: its transaction sends a
//!   `NOTIFY` naming the partitions and topics it touched (delivered at its commit, so a woken
//!   feed finds the events) which each host's listener turns into a wake-up of the feeds of
//!   those partitions whose subscribers take one of those topics. An idle feed asks the
//!   database only every [`FALLBACK_POLL`], for a wake-up lost while a listener reconnected
//!   (which also wakes every feed), so an idle host, and a subscriber of rare topics on a busy
//!   one, costs the bus's database next to nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgRow};
use sqlx::{FromRow, PgPool, Row};
use tokio::sync::{broadcast, watch};

use super::{BATCH, Envelope, EnvelopeColumns, EnvelopeRow, PARTITIONS, RETENTION_DAYS, Subscribed, locks};
use crate::policy::EventsSection;
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
const PACE: Duration = Duration::from_millis(50);

/// The channel appends notify. The payload names the partitions an append touched, then its
/// topics (`0,3,;account.opened;payment.created`); only the partitions (`0,3`) when the topics
/// would take more than [`NAMED_TOPICS`] bytes. (A host that reads partitions only, split at
/// commas, takes the topics for one more item it cannot read, and skips it.)
const CHANNEL: &str = "micropay_bus";

/// The most bytes of topics a notification names: `NOTIFY` takes at most 8,000, and a
/// publisher may append events of many topics at once.
const NAMED_TOPICS: usize = 2000;

/// How many appends a feed may hear of while it reads before it loses count (and reads again).
const WAKE_BACKLOG: usize = 1024;

/// One append, as this host's feeds hear of it.
#[derive(Debug, PartialEq)]
struct Appended {
    /// The partitions it touched, one bit each.
    partitions: u32,
    /// Its topics; `None` when they are not known (too many to name, or notifications lost
    /// while a listener reconnected), which wakes every feed of the partitions.
    topics: Option<Vec<String>>,
}

impl Appended {
    /// Anything, anywhere: what a listener that may have missed appends tells the feeds.
    fn anything() -> Self {
        Self { partitions: u32::MAX, topics: None }
    }

    fn of(events: &[Envelope]) -> Self {
        let mut topics: Vec<&str> = events.iter().map(|event| event.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        let named = topics.iter().map(|topic| topic.len() + 1).sum::<usize>() <= NAMED_TOPICS;
        Self {
            partitions: events.iter().fold(0, |bits, event| bits | 1 << event.partition()),
            topics: named.then(|| topics.into_iter().map(str::to_string).collect()),
        }
    }

    /// The `NOTIFY` payload. Topics hold neither `,` nor `;` (`policy::is_topic`).
    fn payload(&self) -> String {
        let partitions: Vec<String> =
            (0..PARTITIONS).filter(|&partition| self.partitions & 1 << partition != 0).map(|p| p.to_string()).collect();
        let mut payload = partitions.join(",");
        if let Some(topics) = &self.topics {
            payload.push_str(",;");
            payload.push_str(&topics.join(";"));
        }
        payload
    }

    /// A `NOTIFY` payload read back; a payload without topics (an older host's too) names none.
    fn parse(payload: &str) -> Self {
        let (partitions, topics) = match payload.split_once(",;") {
            Some((partitions, topics)) => (partitions, Some(topics.split(';').map(str::to_string).collect())),
            None => (payload, None),
        };
        Self {
            partitions: partitions
                .split(',')
                .filter_map(|partition| partition.parse::<u16>().ok())
                .filter(|&partition| partition < PARTITIONS)
                .fold(0, |bits, partition| bits | 1 << partition),
            topics,
        }
    }

    /// Whether it may have appended events for a feed of `partitions` whose subscriber takes
    /// `events`' topics.
    fn concerns(&self, partitions: u32, events: &EventsSection) -> bool {
        self.partitions & partitions != 0
            && self.topics.as_ref().is_none_or(|topics| topics.iter().any(|topic| events.subscribes_to(topic)))
    }
}

/// The bus on its database.
pub struct EmbeddedBus {
    pool: PgPool,
    /// Every append this host hears of, its own and (through the listener) every other host's:
    /// what wakes its feeds.
    appended: broadcast::Sender<Arc<Appended>>,
}

impl EmbeddedBus {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, appended: broadcast::channel(WAKE_BACKLOG).0 }
    }

    /// Appends `events` in one statement, its own transaction: one round trip (once the
    /// connection has it prepared). The lock comes first: `locked` is a CTE, evaluated at most
    /// once and, its calls being volatile, never folded into the join, which yields no row
    /// before it has read `locked`'s; the rows take their sequence numbers (the column's
    /// default, computed as the insert receives each row) only after that, and the implicit
    /// transaction holds the lock until its commit, which also sends the `NOTIFY`. The
    /// statement is sent whole with its Sync: an append still waiting for the lock when the
    /// host goes away commits all the same (a relay that sends the batch again adds nothing).
    pub async fn publish(&self, events: &[Envelope]) -> anyhow::Result<()> {
        let partitions: Vec<i16> = events.iter().map(|event| event.partition() as i16).collect();
        let appended = Arc::new(Appended::of(events));
        let columns = EnvelopeColumns::of(events);
        // WITH ORDINALITY keeps the batch's order in the sequence numbers.
        sqlx::query(
            "WITH locked AS (SELECT pg_catalog.pg_advisory_xact_lock($9, 0), pg_catalog.pg_notify($10, $11)) \
             INSERT INTO public.events (partition, event_id, topic, source, subject, data, trace_id, occurred_at) \
             SELECT batch.partition, batch.event_id, batch.topic, batch.source, batch.subject, batch.data, \
                    batch.trace_id, batch.occurred_at \
             FROM locked, \
                  UNNEST($1::smallint[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::text[], \
                         $8::timestamptz[]) WITH ORDINALITY \
                  AS batch(partition, event_id, topic, source, subject, data, trace_id, occurred_at, position) \
             ORDER BY batch.position \
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
        .bind(locks::APPEND)
        .bind(CHANNEL)
        .bind(appended.payload())
        .execute(&self.pool)
        .await?;
        // This host's feeds need not wait for the notification's round trip. (None listening
        // is no error.)
        let _ = self.appended.send(appended);
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
            let _ = self.appended.send(Arc::new(Appended::parse(notification.payload())));
        }
    }

    fn wake_all(&self) {
        let _ = self.appended.send(Arc::new(Appended::anything()));
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
            stop,
        })
    }
}

/// A row of a feed's read: an event it keeps, or how far it looked through a partition.
enum ReadRow {
    Event { partition: i16, sequence: i64, event: EnvelopeRow },
    Partition(Looked),
}

/// How far a read looked through one partition.
#[derive(Debug, Clone, Copy)]
struct Looked {
    partition: i16,
    /// The bus's last sequence number when the read ran (0 for an empty bus). Appends commit in
    /// sequence order, so no event of this partition up to it can appear later.
    last: i64,
    /// How many of the events after the feed's position are of its subscriber's topics, counted
    /// up to [`BATCH`].
    matched: i64,
}

impl FromRow<'_, PgRow> for ReadRow {
    fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        let partition = row.try_get("partition")?;
        let sequence = row.try_get("sequence")?;
        Ok(match row.try_get::<Option<i64>, _>("matched")? {
            Some(matched) => ReadRow::Partition(Looked { partition, last: sequence, matched }),
            None => ReadRow::Event { partition, sequence, event: EnvelopeRow::from_row(row)? },
        })
    }
}

impl Looked {
    /// How far the feed may move in this partition, from `after`, once it hands out `kept` (the
    /// partition's events the read kept, in order). Past the bus's last event when the
    /// read saw every event of the subscriber's topics there and kept them all: the events in
    /// between are others'. Otherwise (more of its topics than a batch, or the batch filled up
    /// with other partitions' earlier events) past the last kept, the rest to be read again.
    fn reached(&self, after: i64, kept: &[i64]) -> i64 {
        if self.matched < BATCH as i64 && kept.len() as i64 == self.matched {
            self.last.max(after)
        } else {
            kept.last().copied().unwrap_or(after)
        }
    }
}

/// Where a feed stands in one partition.
struct Position {
    /// The last acknowledged sequence number.
    acknowledged: i64,
    /// How far the events handed out went.
    delivered: i64,
}

/// One subscriber's positions in the partitions a host delivers to it, read together: one
/// statement reads a batch across them, one records how far the batch went in each.
pub struct Feed {
    pool: PgPool,
    /// Every append this host hears of.
    appended: broadcast::Sender<Arc<Appended>>,
    subscriber: String,
    positions: BTreeMap<i16, Position>,
    /// When the next read may start: [`PACE`] after a read that did not fill a batch.
    next_read: tokio::time::Instant,
    /// Ends a wait for events: the partitions are being handed over.
    stop: watch::Receiver<bool>,
}

impl Feed {
    /// The next batch of the subscriber's events. A read that finds none waits for an append
    /// that may have some (its partitions, its subscriber's topics), or [`FALLBACK_POLL`], and
    /// reads again; empty when that found none either, or when the feed is stopped.
    pub async fn next_batch(&mut self, subscribed: &Subscribed<'_>) -> anyhow::Result<Vec<Envelope>> {
        // Hearing of appends from before the read on: one committed after it wakes the wait.
        let mut appended = self.appended.subscribe();
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(self.next_read) => {}
            _ = stop.changed() => return Ok(Vec::new()),
        }
        let mut batch = self.read(subscribed).await?;
        if batch.is_empty() && !*self.stop.borrow() {
            let partitions = self.positions.keys().fold(0u32, |bits, &partition| bits | 1 << partition);
            tokio::select! {
                _ = tokio::time::timeout(FALLBACK_POLL, concerning(&mut appended, partitions, subscribed)) => {}
                _ = stop.changed() => return Ok(Vec::new()),
            }
            batch = self.read(subscribed).await?;
        }
        if batch.len() < BATCH {
            self.next_read = tokio::time::Instant::now() + PACE;
        }
        Ok(batch)
    }

    /// The subscriber's next events after those handed out, in sequence order: in each
    /// partition the ones of its topics that follow its position (an index range each), at
    /// most [`BATCH`] in all. Moves the positions past them, and past the other subscribers'
    /// events it looked through.
    ///
    /// One statement: it takes the sequence numbers of up to a batch of the subscriber's
    /// events in each partition, keeps the first batch of them, and returns those events with
    /// their data and, for each partition, how many of its events matched, with the bus's last
    /// sequence number. Only kept events are fetched whole.
    async fn read(&mut self, subscribed: &Subscribed<'_>) -> anyhow::Result<Vec<Envelope>> {
        let policy = subscribed().ok_or_else(|| anyhow::anyhow!("{} is no longer served", self.subscriber))?;
        let topics = TopicFilter::of(&policy.events.subscribe);
        let (partitions, after): (Vec<i16>, Vec<i64>) =
            self.positions.iter().map(|(&partition, position)| (partition, position.delivered)).unzip();
        let rows: Vec<ReadRow> = sqlx::query_as(
            "WITH fed AS (SELECT fed.partition, fed.after FROM UNNEST($1::smallint[], $2::bigint[]) AS fed(partition, after)), \
             matched AS MATERIALIZED ( \
                 SELECT m.partition, m.sequence FROM fed CROSS JOIN LATERAL ( \
                     SELECT e.partition, e.sequence FROM public.events AS e \
                     WHERE e.partition = fed.partition AND e.sequence > fed.after \
                       AND ($4 OR e.topic = ANY($5::text[]) OR e.topic LIKE ANY($6::text[])) \
                     ORDER BY e.sequence LIMIT $3) AS m), \
             kept AS (SELECT matched.sequence FROM matched ORDER BY matched.sequence LIMIT $3) \
             SELECT e.partition, e.sequence, NULL::bigint AS matched, e.event_id, e.topic, e.source, e.subject, e.data, \
                    e.trace_id, e.occurred_at \
             FROM kept JOIN public.events AS e ON e.sequence = kept.sequence \
             UNION ALL \
             SELECT fed.partition, COALESCE((SELECT max(e.sequence) FROM public.events AS e), 0), \
                    COALESCE(counted.matched, 0), NULL, NULL, NULL, NULL, NULL, NULL, NULL \
             FROM fed LEFT JOIN (SELECT matched.partition, count(*) AS matched FROM matched GROUP BY matched.partition) \
                  AS counted ON counted.partition = fed.partition",
        )
        .bind(&partitions)
        .bind(&after)
        .bind(BATCH as i64)
        .bind(topics.every)
        .bind(&topics.exact)
        .bind(&topics.prefixes)
        .fetch_all(&self.pool)
        .await?;
        let mut events = Vec::new();
        let mut looked = Vec::new();
        for row in rows {
            match row {
                ReadRow::Event { partition, sequence, event } => events.push((partition, sequence, event)),
                ReadRow::Partition(partition) => looked.push(partition),
            }
        }
        events.sort_unstable_by_key(|&(_, sequence, _)| sequence);
        for partition in looked {
            let kept: Vec<i64> = events
                .iter()
                .filter(|(kept_partition, ..)| *kept_partition == partition.partition)
                .map(|&(_, sequence, _)| sequence)
                .collect();
            if let Some(position) = self.positions.get_mut(&partition.partition) {
                position.delivered = partition.reached(position.delivered, &kept);
            }
        }
        Ok(events.into_iter().map(|(_, _, event)| event.into()).collect())
    }

    /// Records how far the batches handed out went in each partition, with one statement (none
    /// when they went nowhere).
    pub async fn acknowledge(&mut self) -> anyhow::Result<()> {
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

/// Waits until `appended` tells of an append that may concern a feed of `partitions` (one bit
/// each): one of them, a topic its subscriber takes now. A feed that lost count of the appends
/// (more than [`WAKE_BACKLOG`] while it read) reads anyway.
async fn concerning(appended: &mut broadcast::Receiver<Arc<Appended>>, partitions: u32, subscribed: &Subscribed<'_>) {
    loop {
        match appended.recv().await {
            Ok(append) => match subscribed() {
                Some(policy) if !append.concerns(partitions, &policy.events) => continue,
                // No longer served: the read says so.
                _ => return,
            },
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            // The bus is gone: the fallback poll ends the wait.
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// A subscriber's topic patterns as a read's filter: `*` every topic, `user.*` a prefix (as
/// `LIKE 'user.%'`), anything else one topic.
#[derive(Debug, Default, PartialEq)]
struct TopicFilter {
    every: bool,
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl TopicFilter {
    fn of(patterns: &[String]) -> Self {
        let mut filter = TopicFilter::default();
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some("") => filter.every = true,
                // Topics are words of a-z, 0-9 and `_` between dots: `_` is the one `LIKE`
                // would read as a wildcard.
                Some(prefix) => filter.prefixes.push(format!("{}%", prefix.replace('_', "\\_"))),
                None => filter.exact.push(pattern.clone()),
            }
        }
        filter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn looked(last: i64, matched: i64) -> Looked {
        Looked { partition: 0, last, matched }
    }

    #[test]
    fn a_read_moves_past_others_events_only_when_it_kept_every_match() {
        // Nothing of the subscriber's: past the bus's last event.
        assert_eq!(looked(90, 0).reached(10, &[]), 90);
        // All matches kept: past the last event too.
        assert_eq!(looked(90, 2).reached(10, &[20, 40]), 90);
        // A match cut by the batch's limit (other partitions' earlier events): past the last kept.
        assert_eq!(looked(90, 3).reached(10, &[20, 40]), 40);
        assert_eq!(looked(90, 1).reached(10, &[]), 10);
        // A full batch of matches in the partition: more may follow unseen.
        let full: Vec<i64> = (1..=BATCH as i64).collect();
        assert_eq!(looked(10_000, BATCH as i64).reached(0, &full), BATCH as i64);
        // An empty partition never moves a position back.
        assert_eq!(looked(0, 0).reached(10, &[]), 10);
    }

    #[test]
    fn notifications_name_partitions_and_topics_within_bounds() {
        let appended =
            Appended { partitions: 0b1001, topics: Some(vec!["account.opened".into(), "user.verified".into()]) };
        assert_eq!(appended.payload(), "0,3,;account.opened;user.verified");
        assert_eq!(Appended::parse(&appended.payload()), appended);
        // What a host that reads partitions only takes of it: both partitions.
        let read_by_partitions: Vec<u16> = appended.payload().split(',').filter_map(|p| p.parse().ok()).collect();
        assert_eq!(read_by_partitions, [0, 3]);
        // An older host's payload, and partitions out of range.
        assert_eq!(Appended::parse("2,9,x"), Appended { partitions: 0b100, topics: None });
        let events = EventsSection { subscribe: vec!["user.verified".into()], ..Default::default() };
        assert!(appended.concerns(0b1000, &events));
        assert!(!appended.concerns(0b0110, &events));
        let others = EventsSection { subscribe: vec!["payment.*".into()], ..Default::default() };
        assert!(!appended.concerns(0b1001, &others));
        assert!(Appended::parse("0").concerns(1, &others));
    }

    fn event(topic: String) -> Envelope {
        Envelope {
            id: uuid::Uuid::new_v4(),
            topic,
            source: "probe".into(),
            subject: "key".into(),
            time: chrono::Utc::now(),
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            trace_id: String::new(),
        }
    }

    #[test]
    fn an_append_of_too_many_topics_to_name_wakes_by_partition() {
        let few: Vec<Envelope> = ["probe.a", "probe.b", "probe.a"].map(|topic| event(topic.into())).into();
        assert_eq!(Appended::of(&few).topics, Some(vec!["probe.a".into(), "probe.b".into()]));
        let long = format!("probe.{}", "x".repeat(190));
        let many: Vec<Envelope> = (0..100).map(|n| event(format!("{long}{n}"))).collect();
        let appended = Appended::of(&many);
        assert_eq!(appended.topics, None);
        assert!(appended.payload().len() < 100, "{}", appended.payload());
        assert_eq!(appended.partitions, 1 << many[0].partition());
    }

    #[test]
    fn topic_patterns_become_a_filter() {
        let patterns = ["*", "user.*", "fraud.rule_fired", "payment.some_thing.*"].map(String::from);
        assert_eq!(
            TopicFilter::of(&patterns),
            TopicFilter {
                every: true,
                exact: vec!["fraud.rule_fired".into()],
                prefixes: vec!["user.%".into(), "payment.some\\_thing.%".into()],
            }
        );
    }
}
