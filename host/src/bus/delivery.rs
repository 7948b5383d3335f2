//! Delivery: each subscriber's partitions shared among the hosts, and the events of a partition
//! handed to the subscriber in order, in batches, each batch one unit of work.
//!
//! Invariants kept here:
//! - a partition of a subscriber is delivered by at most one host at a time: the one holding
//!   its advisory lock in the platform database, on the host's coordination connection
//!   (released by PostgreSQL when that connection ends, so a dead host's partitions pass to
//!   the others). One connection per host holds every subscriber's partitions;
//! - a batch is acknowledged only after each of its events was handled, found in the inbox
//!   already, or set aside in the dead letters: nothing is skipped silently;
//! - a failing event is retried in place, so the events after it in its partition (its key's
//!   later events among them) wait for it: order per key holds.

use std::collections::{BTreeMap, HashMap};
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

struct Owned {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
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
type Holding = (Deliverer, BTreeMap<u16, Owned>);

impl Coordinator {
    /// Takes this host's share of every subscriber's partitions and delivers them, rebalancing
    /// as hosts and subscribers come and go, until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut connection: Option<PgConnection> = None;
        let mut owned: HashMap<Arc<str>, Holding> = HashMap::new();
        while !*shutdown.borrow() {
            if let Err(err) = self.rebalance(&mut connection, &mut owned).await {
                tracing::warn!("sharing partitions failed; letting them go: {err:#}");
                for (_, partitions) in owned.values_mut() {
                    release_all(partitions).await;
                }
                connection = None;
            }
            for (deliverer, partitions) in owned.values() {
                deliverer.dispatcher.metrics.set_partitions_owned(&deliverer.subscription.name, partitions.len());
            }
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = self.changed.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        for (_, partitions) in owned.values_mut() {
            release_all(partitions).await;
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
            owned.entry(deliverer.subscription.name.clone()).or_insert_with(|| (deliverer.clone(), BTreeMap::new()));
        }
        // A subscriber no longer served lets go of every partition (its positions stay).
        let gone: Vec<Arc<str>> =
            owned.keys().filter(|name| !current.iter().any(|d| d.subscription.name == **name)).cloned().collect();
        for (name, (deliverer, partitions)) in owned.iter_mut() {
            let share = if gone.contains(name) { 0 } else { share };
            deliverer.rebalance(connection, share, partitions).await?;
        }
        for name in gone {
            owned.remove(&name);
        }
        Ok(())
    }
}

impl Deliverer {
    /// Keeps `share` of the subscriber's partitions: lets go of the ones over it, takes free
    /// ones up to it.
    async fn rebalance(
        &self,
        connection: &mut PgConnection,
        share: usize,
        owned: &mut BTreeMap<u16, Owned>,
    ) -> anyhow::Result<()> {
        // A partition whose task ended (its feed failed) is let go, to be taken again afresh.
        let ended: Vec<u16> = owned.iter().filter(|(_, own)| own.task.is_finished()).map(|(p, _)| *p).collect();
        for partition in ended {
            owned.remove(&partition);
            self.unlock(connection, partition).await?;
        }
        while owned.len() > share {
            let (partition, own) = owned.pop_last().expect("more than the share");
            own.stop.send_replace(true);
            own.task.await.ok();
            self.unlock(connection, partition).await?;
            tracing::info!(subscriber = %self.subscription.name, partition, "partition handed over");
        }
        for partition in 0..PARTITIONS {
            if owned.len() >= share {
                break;
            }
            if owned.contains_key(&partition) {
                continue;
            }
            let taken: bool = sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_lock($1, $2)")
                .bind(locks::PARTITION)
                .bind(self.lock_key(partition))
                .fetch_one(&mut *connection)
                .await?;
            if taken {
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(self.clone().deliver_partition(partition, stopped));
                owned.insert(partition, Owned { stop, task });
            }
        }
        Ok(())
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

    /// Delivers one partition until told to stop (after the batch in hand) or its feed fails.
    async fn deliver_partition(self, partition: u16, stop: watch::Receiver<bool>) {
        let name = self.subscription.name.clone();
        let mut feed = match self.backend.feed(&name, partition, stop.clone()).await {
            Ok(feed) => feed,
            Err(err) => {
                tracing::warn!(subscriber = %name, partition, "opening the partition failed: {err:#}");
                return;
            }
        };
        while !*stop.borrow() {
            let result = async {
                let batch = feed.next_batch().await?;
                let oldest = batch.first().map(|event| age_seconds(event.time)).unwrap_or(0.0);
                self.dispatcher.metrics.set_undelivered_age(&name, partition, oldest);
                self.deliver_batch(&batch).await?;
                feed.acknowledge().await
            };
            if let Err(err) = result.await {
                tracing::warn!(subscriber = %name, partition, "delivery stopped: {err:#}");
                return;
            }
        }
    }

    /// Delivers a batch, in order, in chunks of at most the policy's `events.batch`. First a
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

/// Stops every partition task after its batch in hand. (Their locks go with the connection.)
async fn release_all(owned: &mut BTreeMap<u16, Owned>) {
    for own in owned.values() {
        own.stop.send_replace(true);
    }
    for (_, own) in std::mem::take(owned) {
        own.task.await.ok();
    }
}
