//! Delivery: each subscriber's partitions shared among the hosts, and the events of a partition
//! handed to the subscriber in order, in batches, each batch one unit of work.
//!
//! Invariants kept here:
//! - a partition of a subscriber is delivered by at most one host at a time: the one holding
//!   its advisory lock in the platform database, on the host's coordination connection
//!   (released by PostgreSQL when that connection ends, so a dead host's partitions pass to
//!   the others). One connection per host holds every subscriber's partitions, and a task
//!   delivers a group of them, read together (all of them on a host serving alone): a batch
//!   gathers what arrived in all of them, so a subscriber costs one read, one unit of work and
//!   one acknowledgement per batch however its events spread;
//! - a batch is acknowledged only after each of its events was handled, found in the inbox
//!   already, or set aside in the dead letters: nothing is skipped silently;
//! - a failing event is retried in place, so the events after it (its key's later events among
//!   them, and those of the subscriber's other partitions on this host) wait for it: order per
//!   key holds.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::relay::age_seconds;
use super::{Envelope, PARTITIONS, SharedBackend, dead_letters, inbox, locks};
use crate::capabilities::database::{UnitLimits, UnitOfWork};
use crate::metrics::DeliveryOutcome;
use crate::policy::EventsSection;
use crate::runtime::invoke::Dispatcher;
use crate::runtime::service::Service;
use crate::runtime::state::InvocationContext;

/// How often a host renews its presence and rebalances partitions.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A host not seen for this long no longer counts when sharing partitions.
const PRESENCE_TIMEOUT_SECS: i64 = 5;

/// How long a batch may wait for its first statement (a pooled connection among them): a
/// delivery is background work, and waits its turn rather than fail.
const BATCH_START_WAIT: Duration = Duration::from_secs(30);

/// One subscribing service, as the bus sees it.
#[derive(Clone)]
pub struct Subscription {
    pub name: Arc<str>,
    /// The platform role's pool on its database (dead letters, inbox housekeeping).
    pub pool: PgPool,
}

/// Everything a delivery task needs.
#[derive(Clone)]
pub struct Deliverer {
    pub subscription: Subscription,
    pub backend: SharedBackend,
    pub dispatcher: Arc<Dispatcher>,
}

/// A subscriber's partitions held by this host, in groups, each delivered by one task that
/// reads its partitions together. Partitions taken later start a group of their own, so the
/// ones delivered already are never stopped for them (a NATS feed stopped strands what it had
/// pulled until JetStream offers it again); a host that serves alone from its start has one
/// group of every partition.
#[derive(Default)]
struct Held {
    groups: Vec<Group>,
}

/// Partitions delivered together by one task.
struct Group {
    partitions: BTreeSet<u16>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Held {
    /// How many partitions are held.
    fn len(&self) -> usize {
        self.groups.iter().map(|group| group.partitions.len()).sum()
    }

    fn holds(&self, partition: u16) -> bool {
        self.groups.iter().any(|group| group.partitions.contains(&partition))
    }

    /// Stops every group after its batch in hand; returns the partitions they held (their
    /// locks are still held).
    async fn stop(&mut self) -> BTreeSet<u16> {
        let groups = std::mem::take(&mut self.groups);
        for group in &groups {
            group.stop.send_replace(true);
        }
        let mut partitions = BTreeSet::new();
        for group in groups {
            group.task.await.ok();
            partitions.extend(group.partitions);
        }
        partitions
    }
}

/// The partitions of every subscriber this host delivers, kept on one connection to the
/// platform database.
pub struct Coordinator {
    /// The platform role on the platform database.
    pub options: PgConnectOptions,
    pub host_id: uuid::Uuid,
    /// The subscribers this host delivers to, as services are deployed and undeployed.
    pub deliverers: Arc<RwLock<Vec<Deliverer>>>,
    /// Signalled when the subscribers change.
    pub changed: Arc<Notify>,
}

/// A subscriber's partitions held by this host.
type Holding = (Deliverer, Held);

impl Coordinator {
    /// Takes this host's share of every subscriber's partitions and delivers them, rebalancing
    /// as hosts and subscribers come and go, until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut connection: Option<PgConnection> = None;
        let mut owned: HashMap<Arc<str>, Holding> = HashMap::new();
        while !*shutdown.borrow() {
            if let Err(err) = self.rebalance(&mut connection, &mut owned).await {
                tracing::warn!("sharing partitions failed; letting them go: {err:#}");
                for (_, held) in owned.values_mut() {
                    held.stop().await;
                }
                connection = None;
            }
            for (deliverer, held) in owned.values() {
                deliverer.dispatcher.metrics.set_partitions_owned(&deliverer.subscription.name, held.len());
            }
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = self.changed.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        // Their locks go with the connection.
        for (_, held) in owned.values_mut() {
            held.stop().await;
        }
        if let Some(mut connection) = connection {
            let leave = sqlx::query("DELETE FROM micropay_platform.delivery_hosts WHERE host_id = $1");
            leave.bind(self.host_id).execute(&mut connection).await.ok();
        }
    }

    async fn rebalance(
        &self,
        connection: &mut Option<PgConnection>,
        owned: &mut HashMap<Arc<str>, Holding>,
    ) -> anyhow::Result<()> {
        if connection.is_none() {
            *connection = Some(self.options.connect().await.context("connecting for partition locks")?);
        }
        let connection = connection.as_mut().expect("connected above");
        let hosts: i64 = sqlx::query_scalar(
            "WITH seen AS (INSERT INTO micropay_platform.delivery_hosts (host_id, seen_at) \
                           VALUES ($1, pg_catalog.now()) \
                           ON CONFLICT (host_id) DO UPDATE SET seen_at = pg_catalog.now()), \
                  gone AS (DELETE FROM micropay_platform.delivery_hosts \
                           WHERE seen_at < pg_catalog.now() - pg_catalog.make_interval(secs => $2 * 10)) \
             SELECT 1 + pg_catalog.count(*) FROM micropay_platform.delivery_hosts \
             WHERE host_id <> $1 AND seen_at > pg_catalog.now() - pg_catalog.make_interval(secs => $2)",
        )
        .bind(self.host_id)
        .bind(PRESENCE_TIMEOUT_SECS as f64)
        .fetch_one(&mut *connection)
        .await?;
        let share = (PARTITIONS as usize).div_ceil(hosts.max(1) as usize);
        let current: Vec<Deliverer> = self.deliverers.read().unwrap().clone();
        for deliverer in &current {
            owned.entry(deliverer.subscription.name.clone()).or_insert_with(|| (deliverer.clone(), Held::default()));
        }
        // A subscriber no longer served lets go of every partition (its positions stay).
        let gone: Vec<Arc<str>> =
            owned.keys().filter(|name| !current.iter().any(|d| d.subscription.name == **name)).cloned().collect();
        for (name, (deliverer, held)) in owned.iter_mut() {
            let share = if gone.contains(name) { 0 } else { share };
            deliverer.rebalance(connection, share, held).await?;
        }
        for name in gone {
            owned.remove(&name);
        }
        Ok(())
    }
}

impl Deliverer {
    /// Keeps `share` of the subscriber's partitions: lets go of the ones over it, takes free
    /// ones up to it, and delivers those taken now as a new group.
    async fn rebalance(&self, connection: &mut PgConnection, share: usize, held: &mut Held) -> anyhow::Result<()> {
        // A group that ended (its feed failed) lets its partitions go, to be taken afresh.
        let (ended, running): (Vec<Group>, Vec<Group>) =
            std::mem::take(&mut held.groups).into_iter().partition(|group| group.task.is_finished());
        held.groups = running;
        for partition in ended.into_iter().flat_map(|group| group.partitions) {
            self.unlock(connection, partition).await?;
        }
        if held.len() > share {
            // Over the share (another host joined): every group stops, the partitions kept
            // are delivered again as one group.
            let mut partitions = held.stop().await;
            while partitions.len() > share {
                let partition = partitions.pop_last().expect("more than the share");
                self.unlock(connection, partition).await?;
                tracing::info!(subscriber = %self.subscription.name, partition, "partition handed over");
            }
            self.start_group(held, partitions);
        }
        let mut taken = BTreeSet::new();
        for partition in 0..PARTITIONS {
            if held.len() + taken.len() >= share {
                break;
            }
            if held.holds(partition) {
                continue;
            }
            let locked: bool = sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_lock($1, $2)")
                .bind(locks::PARTITION)
                .bind(self.lock_key(partition))
                .fetch_one(&mut *connection)
                .await?;
            if locked {
                taken.insert(partition);
            }
        }
        self.start_group(held, taken);
        Ok(())
    }

    /// Starts delivering `partitions` (when there are any) as a group of `held`.
    fn start_group(&self, held: &mut Held, partitions: BTreeSet<u16>) {
        if partitions.is_empty() {
            return;
        }
        let (stop, stopped) = watch::channel(false);
        let list: Vec<u16> = partitions.iter().copied().collect();
        let task = tokio::spawn(self.clone().deliver_partitions(list, stopped));
        held.groups.push(Group { partitions, stop, task });
    }

    /// The second key of a partition's advisory lock: the subscriber (hashed) and the partition.
    fn lock_key(&self, partition: u16) -> i32 {
        let subscriber = crate::fnv1a(self.subscription.name.as_bytes()) & 0x00ff_ffff;
        ((subscriber << 8) | u32::from(partition)) as i32
    }

    async fn unlock(&self, connection: &mut PgConnection, partition: u16) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_catalog.pg_advisory_unlock($1, $2)")
            .bind(locks::PARTITION)
            .bind(self.lock_key(partition))
            .execute(connection)
            .await?;
        Ok(())
    }

    /// Delivers `partitions` until told to stop (after the batch in hand) or the feed fails.
    async fn deliver_partitions(self, partitions: Vec<u16>, stop: watch::Receiver<bool>) {
        let name = self.subscription.name.clone();
        let mut feed = match self.backend.feed(&name, &partitions, stop.clone()).await {
            Ok(feed) => feed,
            Err(err) => {
                tracing::warn!(subscriber = %name, ?partitions, "opening the partitions failed: {err:#}");
                return;
            }
        };
        let subscribed = || self.dispatcher.registry.get(&name).map(|service| service.active().policy.clone());
        while !*stop.borrow() {
            let result = async {
                let batch = feed.next_batch(&subscribed).await?;
                for &partition in &partitions {
                    let oldest = batch.iter().find(|event| event.partition() == partition);
                    let age = oldest.map(|event| age_seconds(event.time)).unwrap_or(0.0);
                    self.dispatcher.metrics.set_undelivered_age(&name, partition, age);
                }
                self.deliver_batch(&batch).await?;
                feed.acknowledge().await
            };
            if let Err(err) = result.await {
                tracing::warn!(subscriber = %name, ?partitions, "delivery stopped: {err:#}");
                return;
            }
        }
    }

    /// Delivers a batch, in order, in chunks of at most the policy's `events.batch`: those of
    /// its events the subscriber takes (a feed may return others: NATS's do). First a
    /// whole chunk in one unit of work (the commit is what an event costs most); if any
    /// handler fails, that unit is rolled back whole, so none of its effects happened, and the
    /// chunk is delivered again one event per unit of work, with retries.
    async fn deliver_batch(&self, batch: &[Envelope]) -> anyhow::Result<()> {
        let name = &self.subscription.name;
        let service = self.dispatcher.registry.get(name).with_context(|| format!("{name} is no longer served"))?;
        let policy = service.active().policy.clone();
        let events: Vec<&Envelope> = batch.iter().filter(|event| policy.events.subscribes_to(&event.topic)).collect();
        for chunk in events.chunks(policy.events.batch) {
            if chunk.len() > 1 {
                match deliver_together(&self.dispatcher, &service, chunk, 1).await {
                    Ok(outcomes) => {
                        for (event, outcome) in chunk.iter().zip(outcomes) {
                            self.dispatcher.metrics.record_delivery(name, outcome, age_seconds(event.time));
                        }
                        continue;
                    }
                    Err(error) => {
                        self.dispatcher.metrics.record_batch_rollback(name);
                        tracing::debug!(subscriber = %name, "batch rolled back, delivering one by one: {error}")
                    }
                }
            }
            for event in chunk {
                self.deliver(&service, &policy.events, event).await?;
            }
        }
        Ok(())
    }

    /// Delivers one event (a batch of one): handled, found handled already, or dead-lettered
    /// after its last attempt. An error means none of these could be recorded; the event stays
    /// unacknowledged.
    async fn deliver(&self, service: &Arc<Service>, events: &EventsSection, event: &Envelope) -> anyhow::Result<()> {
        let name = &self.subscription.name;
        let mut last_error = String::new();
        for attempt in 1..=events.max_attempts {
            let started = Instant::now();
            match deliver_together(&self.dispatcher, service, &[event], attempt).await {
                Ok(outcomes) => {
                    for outcome in outcomes {
                        self.dispatcher.metrics.record_delivery(name, outcome, age_seconds(event.time));
                    }
                    return Ok(());
                }
                Err(error) => {
                    tracing::info!(subscriber = %name, event_id = %event.id, attempt, elapsed = ?started.elapsed(), "delivery failed: {error}");
                    last_error = error;
                }
            }
            self.dispatcher.metrics.record_delivery(name, DeliveryOutcome::Failed, 0.0);
            if attempt < events.max_attempts {
                tokio::time::sleep(events.retry_delay(attempt)).await;
            }
        }
        tracing::warn!(
            subscriber = %name, event_id = %event.id, topic = %event.topic, attempts = events.max_attempts,
            "event set aside in the dead letters: {last_error}"
        );
        dead_letters::record(&self.subscription.pool, event, events.max_attempts, &last_error).await?;
        self.dispatcher.metrics.record_delivery(name, DeliveryOutcome::DeadLettered, 0.0);
        Ok(())
    }
}

/// Delivers `events` to `service` in one unit of work, as delivery attempt `attempt`: every
/// event recorded in the inbox first, then those not handled before handed to the handler in
/// one call, and one commit. Either the handler succeeded and the commit went through, or
/// nothing of it happened (the error says why).
pub async fn deliver_together(
    dispatcher: &Arc<Dispatcher>,
    service: &Arc<Service>,
    events: &[&Envelope],
    attempt: u32,
) -> Result<Vec<DeliveryOutcome>, String> {
    let limits = UnitLimits::from(&service.active().policy.limits);
    let mut unit = UnitOfWork::new(service.database.clone(), tokio::time::Instant::now() + BATCH_START_WAIT, limits);
    let mut fresh = inbox::record(&mut unit, events).await?;
    let mut outcomes = Vec::with_capacity(events.len());
    let mut handed = Vec::with_capacity(events.len());
    for event in events {
        // Recorded now, and not handed out earlier in this batch (a copy in the batch).
        if fresh.remove(&event.id) {
            outcomes.push(DeliveryOutcome::Handled);
            handed.push(event.to_event(attempt));
        } else {
            outcomes.push(DeliveryOutcome::AlreadyHandled);
        }
    }
    if !handed.is_empty() {
        let context = InvocationContext::new(None, &handed[0].trace_id);
        let (handled, continued) =
            dispatcher.handle_events(service, handed, context, unit).await.map_err(|err| err.to_string())?;
        unit = continued;
        if let Err(error) = handled {
            unit.finish(false).await.ok();
            return Err(error);
        }
    }
    if unit.finish(true).await.map_err(|err| err.to_string())? {
        service.committed_events();
    }
    Ok(outcomes)
}
