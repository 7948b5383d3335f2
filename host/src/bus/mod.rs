//! The event bus: what components publish reaches the components that subscribe, at least once
//! on the wire and once in effect.
//!
//! The path of an event, and the invariant each step keeps:
//! 1. `events.publish` writes it to the publisher's outbox in the publisher's unit of work
//!    (`capabilities::events`): it exists if and only if that work committed.
//! 2. [`relay`] moves committed outbox rows to the bus backend, oldest first, and marks them
//!    relayed only after the backend acknowledged them: a crash in between relays them again,
//!    and the backend drops the copy by event id.
//! 3. The backend keeps events in [`PARTITIONS`] partitions by key, each in publication order:
//!    [`embedded`] (tables in `micropay_bus_db`, the default) or [`nats`] (a JetStream stream,
//!    `MICROPAY_NATS_URL`). Both have one position per subscriber and partition.
//! 4. [`delivery`] gives each partition of a subscriber to one host at a time (a PostgreSQL
//!    advisory lock in the platform database), which reads the partitions it holds together
//!    and hands their events to the subscriber in each partition's order, in batches (one call of `handle-events` and one unit of work each), the event ids
//!    recorded in the subscriber's inbox in the same transaction; a redelivered event finds
//!    its id there and has no second effect. A failing batch is delivered again one event per
//!    unit of work; a failing event is retried with exponential backoff, then set aside in the
//!    dead letters ([`dead_letters`]), and its partition moves on.

pub mod dead_letters;
pub mod delivery;
pub mod embedded;
pub mod inbox;
pub mod nats;
pub mod relay;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::policy::Policy;
use crate::postgres::provision::Provisioner;
use crate::runtime::bindings::Event;
use crate::runtime::invoke::Dispatcher;
use crate::runtime::service::Service;
use delivery::{Coordinator, Deliverer, Subscription};

/// Partitions of the bus. Events of one key always land in the same partition, so their order
/// holds; partitions are what hosts share among themselves. Every host of an installation
/// must use the same number (it is not configurable for that reason).
pub const PARTITIONS: u16 = 8;

/// The most events relayed or delivered in one batch.
pub const BATCH: usize = crate::policy::MAX_BATCH;

/// How long the bus keeps an event, in days: a subscriber down for longer misses it. Inbox
/// records are kept a day longer, since an event can be redelivered only while the bus has it;
/// relayed outbox rows (kept for inspection) as long as the bus keeps their events.
pub const RETENTION_DAYS: u64 = 7;

/// How often old bus events, relayed outbox rows and inbox records are purged.
const HOUSEKEEPING: Duration = Duration::from_secs(3600);

/// An event on the bus: the CloudEvents envelope written by `events.publish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: uuid::Uuid,
    #[serde(rename = "type")]
    pub topic: String,
    pub source: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    /// The payload as the publisher wrote it: JSON text, validated but never parsed into a tree
    /// (which can take many times its size).
    pub data: Box<RawValue>,
    #[serde(default)]
    pub trace_id: String,
}

impl Envelope {
    /// The partition of the event's key: FNV-1a, identical on every host and every build.
    pub fn partition(&self) -> u16 {
        (crate::fnv1a(self.subject.as_bytes()) % u32::from(PARTITIONS)) as u16
    }

    /// The event as the subscriber sees it on delivery attempt `attempt`.
    pub fn to_event(&self, attempt: u32) -> Event {
        Event {
            id: self.id.to_string(),
            topic: self.topic.clone(),
            source: self.source.clone(),
            subject: self.subject.clone(),
            time: self.time.timestamp_micros(),
            data: self.data.get().to_string(),
            trace_id: self.trace_id.clone(),
            attempt,
        }
    }
}

/// A batch of events as the columns of an `UNNEST`, in order: how the outbox and the embedded
/// bus append them with one statement.
pub struct EnvelopeColumns<'a> {
    pub ids: Vec<uuid::Uuid>,
    pub topics: Vec<&'a str>,
    pub sources: Vec<&'a str>,
    pub subjects: Vec<&'a str>,
    pub data: Vec<sqlx::types::Json<&'a RawValue>>,
    pub traces: Vec<&'a str>,
    pub times: Vec<DateTime<Utc>>,
}

impl<'a> EnvelopeColumns<'a> {
    pub fn of(events: &'a [Envelope]) -> Self {
        Self {
            ids: events.iter().map(|event| event.id).collect(),
            topics: events.iter().map(|event| event.topic.as_str()).collect(),
            sources: events.iter().map(|event| event.source.as_str()).collect(),
            subjects: events.iter().map(|event| event.subject.as_str()).collect(),
            data: events.iter().map(|event| sqlx::types::Json(&*event.data)).collect(),
            traces: events.iter().map(|event| event.trace_id.as_str()).collect(),
            times: events.iter().map(|event| event.time).collect(),
        }
    }
}

/// An event as stored in a table (outbox, embedded bus, dead letters): the columns
/// `event_id, topic, source, subject, data, trace_id, occurred_at`.
#[derive(sqlx::FromRow)]
pub struct EnvelopeRow {
    event_id: uuid::Uuid,
    topic: String,
    source: String,
    subject: String,
    data: sqlx::types::Json<Box<RawValue>>,
    trace_id: Option<String>,
    pub(crate) occurred_at: DateTime<Utc>,
}

impl From<EnvelopeRow> for Envelope {
    fn from(row: EnvelopeRow) -> Self {
        Envelope {
            id: row.event_id,
            topic: row.topic,
            source: row.source,
            subject: row.subject,
            time: row.occurred_at,
            data: row.data.0,
            trace_id: row.trace_id.unwrap_or_default(),
        }
    }
}

/// Where relayed events are kept until every subscriber has them.
pub enum Backend {
    Embedded(embedded::EmbeddedBus),
    Nats(Box<nats::JetStreamBus>),
}

impl Backend {
    /// Appends `events` (in order). Returns once the backend holds them durably; an event it
    /// holds already (same id) is not added twice.
    pub async fn publish(&self, events: &[Envelope]) -> anyhow::Result<()> {
        match self {
            Backend::Embedded(bus) => bus.publish(events).await,
            Backend::Nats(bus) => bus.publish(events).await,
        }
    }

    /// The events of `partitions` (never empty) for `subscriber`, from its last acknowledged
    /// position in each. A feed waiting for events returns as soon as `stop` turns true. (A
    /// NATS feed's wait is short: it does not watch `stop`.)
    pub async fn feed(
        &self,
        subscriber: &str,
        partitions: &[u16],
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Feed> {
        Ok(match self {
            Backend::Embedded(bus) => Feed::Embedded(bus.feed(subscriber, partitions, stop).await?),
            Backend::Nats(bus) => Feed::Nats(Box::new(bus.feed(subscriber, partitions).await?)),
        })
    }

    /// The backend's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Nats(_) => "nats",
        }
    }
}

/// Purges, every [`HOUSEKEEPING`], what is past the bus's retention: the embedded bus's old
/// events (JetStream ages them out itself), relayed outbox rows, and inbox records no
/// redelivery can match any more.
async fn housekeeping(
    backend: SharedBackend,
    outboxes: Outboxes,
    subscriptions: Arc<RwLock<Vec<Subscription>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HOUSEKEEPING) => {}
            _ = shutdown.changed() => return,
        }
        if let Backend::Embedded(bus) = &*backend
            && let Err(err) = bus.purge().await
        {
            tracing::warn!("purging old bus events failed: {err:#}");
        }
        let purge_outbox = format!(
            "DELETE FROM micropay_platform.outbox WHERE relayed_at < pg_catalog.now() - interval '{RETENTION_DAYS} days'"
        );
        let outboxes = outboxes.read().unwrap().clone();
        for (source, pool) in &outboxes {
            if let Err(err) = sqlx::query(&purge_outbox).execute(pool).await {
                tracing::warn!(%source, "purging relayed outbox rows failed: {err}");
            }
        }
        let purge_inbox = format!(
            "DELETE FROM micropay_platform.inbox WHERE handled_at < pg_catalog.now() - interval '{} days'",
            RETENTION_DAYS + 1
        );
        let subscriptions = subscriptions.read().unwrap().clone();
        for subscription in &subscriptions {
            if let Err(err) = sqlx::query(&purge_inbox).execute(&subscription.pool).await {
                tracing::warn!(subscriber = %subscription.name, "purging the inbox failed: {err}");
            }
        }
    }
}

/// The topics a feed's subscriber takes: its active version's policy, asked afresh at every read
/// and wake-up, since a deploy may change them; `None` once it is no longer served.
pub type Subscribed<'a> = dyn Fn() -> Option<Arc<Policy>> + Send + Sync + 'a;

/// One subscriber's events of the partitions a host delivers to it, each partition's in order.
pub enum Feed {
    Embedded(embedded::Feed),
    Nats(Box<nats::Feed>),
}

impl Feed {
    /// The next events after the last batch (at most [`BATCH`]); empty when none arrived
    /// within a short wait, so the caller can look up from time to time. The embedded bus
    /// returns only events of the subscriber's topics; NATS returns every event, its
    /// subscriber's and others' alike.
    pub async fn next_batch(&mut self, subscribed: &Subscribed<'_>) -> anyhow::Result<Vec<Envelope>> {
        match self {
            Feed::Embedded(feed) => feed.next_batch(subscribed).await,
            Feed::Nats(feed) => feed.next_batch().await,
        }
    }

    /// Records that the last batch was handled: it will not be delivered again.
    pub async fn acknowledge(&mut self) -> anyhow::Result<()> {
        match self {
            Feed::Embedded(feed) => feed.acknowledge().await,
            Feed::Nats(feed) => feed.acknowledge().await,
        }
    }
}

/// Every outbox this host knows, by publisher: the platform role's pool on its database
/// (housekeeping purges what was relayed long ago).
type Outboxes = Arc<RwLock<Vec<(Arc<str>, sqlx::PgPool)>>>;

/// The platform's own outbox, in the platform database: deploys and rollbacks.
pub struct PlatformOutbox {
    /// The platform role's pool on the platform database.
    pub pool: sqlx::PgPool,
    /// Signalled when events were written to it.
    pub wake: Arc<tokio::sync::Notify>,
}

/// How often the platform outbox's relay looks without being woken: deploys are rare, and the
/// host that makes one wakes its relay.
const PLATFORM_IDLE_POLL: Duration = Duration::from_secs(1);

/// Shared by the relay and delivery tasks.
pub type SharedBackend = Arc<Backend>;

/// How the bus of a host is set up.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// NATS JetStream's URL; none for the embedded bus.
    pub nats_url: Option<String>,
    /// The installation's name prefix (databases, roles, streams).
    pub prefix: String,
    /// Whether this host relays outboxes (every host may; one at a time per outbox does).
    pub relay: bool,
}

/// The bus of a running host: its backend, the subscribers, and the relay and delivery tasks.
/// Services join it as they start ([`EventBus::attach`]), at the host's start or deployed
/// later, and subscribers leave it when undeployed ([`EventBus::detach`]).
pub struct EventBus {
    pub backend: SharedBackend,
    subscriptions: Arc<RwLock<Vec<Subscription>>>,
    deliverers: Arc<RwLock<Vec<Deliverer>>>,
    outboxes: Outboxes,
    /// Wakes the coordinator when the subscribers change.
    subscribers_changed: Arc<tokio::sync::Notify>,
    /// Whether this host relays outboxes.
    relays: bool,
    dispatcher: Arc<Dispatcher>,
    stopping: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl EventBus {
    /// Connects the backend and starts the platform outbox's relay, the delivery coordinator
    /// and the housekeeping; services join with [`EventBus::attach`]. The embedded bus's pool
    /// has at most `bus_connections`.
    pub async fn start(
        settings: &BusSettings,
        provisioner: &Provisioner,
        dispatcher: &Arc<Dispatcher>,
        platform: PlatformOutbox,
        bus_connections: u32,
    ) -> anyhow::Result<Self> {
        let backend = Arc::new(match &settings.nats_url {
            Some(url) => Backend::Nats(Box::new(nats::JetStreamBus::connect(url, &settings.prefix).await?)),
            None => Backend::Embedded(embedded::EmbeddedBus::new(
                provisioner.provision_bus(&embedded::tables(), bus_connections).await?,
            )),
        });
        let (shutdown, stopping) = watch::channel(false);
        let bus = Self {
            backend: backend.clone(),
            subscriptions: Arc::default(),
            deliverers: Arc::default(),
            outboxes: Arc::default(),
            subscribers_changed: Arc::default(),
            relays: settings.relay,
            dispatcher: dispatcher.clone(),
            stopping: stopping.clone(),
            shutdown,
            tasks: Mutex::default(),
        };
        bus.relay("platform".into(), platform.pool, platform.wake, PLATFORM_IDLE_POLL);
        let coordinator = Coordinator {
            options: provisioner.coordination_options(),
            host_id: uuid::Uuid::new_v4(),
            deliverers: bus.deliverers.clone(),
            changed: bus.subscribers_changed.clone(),
        };
        let housekeeping =
            housekeeping(backend.clone(), bus.outboxes.clone(), bus.subscriptions.clone(), stopping.clone());
        let mut tasks = bus.tasks.lock().unwrap();
        if let Backend::Embedded(_) = &*backend {
            let (backend, stopping) = (backend.clone(), stopping.clone());
            tasks.push(tokio::spawn(async move {
                if let Backend::Embedded(embedded) = &*backend {
                    embedded.listen(stopping).await
                }
            }));
        }
        tasks.extend([tokio::spawn(coordinator.run(stopping)), tokio::spawn(housekeeping)]);
        drop(tasks);
        tracing::info!(backend = backend.name(), "event bus started");
        Ok(bus)
    }

    /// Starts relaying `service`'s outbox if it publishes, and delivering to it if it
    /// subscribes, as its active version's policy says: at its start, and again after each
    /// swap (a first topic takes effect then; what runs already is kept).
    pub fn attach(&self, service: &Arc<Service>) {
        let Some(database) = &service.database else { return };
        let policy = service.active().policy.clone();
        let pool = database.platform.clone();
        if !policy.events.publish.is_empty() {
            self.relay(service.name.clone(), pool.clone(), service.outbox_written.clone(), relay::IDLE_POLL);
        }
        let delivered = self.deliverers.read().unwrap().iter().any(|d| d.subscription.name == service.name);
        if !policy.events.subscribe.is_empty() && !delivered {
            let subscription = Subscription { name: service.name.clone(), pool };
            let deliverer = Deliverer {
                subscription: subscription.clone(),
                backend: self.backend.clone(),
                dispatcher: self.dispatcher.clone(),
            };
            self.subscriptions.write().unwrap().push(subscription);
            self.deliverers.write().unwrap().push(deliverer);
            self.subscribers_changed.notify_one();
        }
    }

    /// Stops delivering to `name` (undeployed): its partitions are let go, its positions and
    /// dead letters stay. Its outbox keeps being relayed: what it committed still goes out.
    pub fn detach(&self, name: &str) {
        self.deliverers.write().unwrap().retain(|deliverer| &*deliverer.subscription.name != name);
        self.subscriptions.write().unwrap().retain(|subscription| &*subscription.name != name);
        self.subscribers_changed.notify_one();
    }

    /// The subscribers now.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.subscriptions.read().unwrap().clone()
    }

    /// Starts the relay of one outbox (if this host relays), and keeps it in housekeeping. An
    /// outbox relayed already (a service deployed again after an undeploy) keeps its relay.
    fn relay(&self, source: Arc<str>, pool: sqlx::PgPool, wake: Arc<tokio::sync::Notify>, idle_poll: Duration) {
        let mut outboxes = self.outboxes.write().unwrap();
        if outboxes.iter().any(|(known, _)| *known == source) {
            return;
        }
        outboxes.push((source.clone(), pool.clone()));
        drop(outboxes);
        if !self.relays {
            return;
        }
        let relay = relay::Relay {
            source,
            pool,
            backend: self.backend.clone(),
            dispatcher: self.dispatcher.clone(),
            wake,
            idle_poll,
        };
        self.tasks.lock().unwrap().push(tokio::spawn(relay.run(self.stopping.clone())));
    }

    /// Stops relaying and delivering after the batches in hand.
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for task in tasks {
            task.await.ok();
        }
    }
}

/// Advisory lock classes (the first key of `pg_advisory_lock(int, int)`) the bus takes.
pub(crate) mod locks {
    /// One relay per outbox at a time (in the publisher's database).
    pub const RELAY: i32 = 0x4d50_0001;
    /// Appends to the embedded bus, one at a time, so positions commit in order.
    pub const APPEND: i32 = 0x4d50_0002;
    /// A subscriber's partition, held by the host delivering it (in the platform database).
    pub const PARTITION: i32 = 0x4d50_0003;
}
