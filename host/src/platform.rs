//! The platform: PostgreSQL (embedded or a server), one provisioned database per service, the
//! engine, the services with their active versions, and deploys. `micropay serve` and `micropay bench` both start one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::watch;
use wasmtime::component::Linker;

use crate::bus::{EventBus, PlatformOutbox};
use crate::capabilities::database::ServiceDatabase;
use crate::capabilities::messaging::Channels;
use crate::config::Config;
use crate::deploy::migrations::{Applied, NewMigration};
use crate::deploy::signing::TrustedKeys;
use crate::deploy::store::{StoredVersion, VersionStore};
use crate::deploy::{self, Deployer, Lifecycle};
use crate::metrics::Metrics;
use crate::policy::{self, Policy};
use crate::postgres::budget::Shares;
use crate::postgres::embedded::EmbeddedPostgres;
use crate::postgres::provision::Provisioner;
use crate::runtime::engine::{EngineOptions, Runtime};
use crate::runtime::invoke::Dispatcher;
use crate::runtime::registry::Compiler;
use crate::runtime::service::{Service, Version};
use crate::runtime::state::InvocationState;

/// A running platform.
pub struct Platform {
    pub dispatcher: Arc<Dispatcher>,
    /// The event bus: relays and deliveries.
    pub bus: Arc<EventBus>,
    /// Deploys, rollbacks, and the versions' store.
    pub deployer: Arc<Deployer>,
    /// Starts and stops services: at start, and deployed or undeployed while running.
    starter: Arc<ServiceStarter>,
    /// The scheduled requests' tasks, and the task that follows deploys.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    /// Owns the epoch ticker.
    _runtime: Runtime,
    /// Kept to stop the embedded cluster last, after every pool is gone.
    embedded: Option<EmbeddedPostgres>,
}

impl Platform {
    /// Starts PostgreSQL if embedded, provisions and migrates every service's database, and
    /// loads every service's active version.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        Self::start_with(config, EngineOptions::default()).await
    }

    /// [`Platform::start`] with engine options of the caller's (the bench turns limits off to
    /// measure what they cost). Fuel metering is turned on when any policy asks for it.
    ///
    /// The services are those the version store holds an active version of; the component
    /// files and policies the host is given are stored first when the store does not hold
    /// them yet (the first versions of a new installation, or files changed since).
    pub async fn start_with(config: &Config, mut options: EngineOptions) -> anyhow::Result<Self> {
        let files = policy::load_all(&config.policies)?;
        let trusted = TrustedKeys::load(config.trusted_keys.as_deref(), config.trusted_keys_file.as_deref())?;
        let (admin, embedded) = match &config.database_url {
            Some(url) => {
                let options =
                    PgConnectOptions::from_str(url).context("MICROPAY_DATABASE_URL is not a PostgreSQL URL")?;
                (options, None)
            }
            None => {
                let server = EmbeddedPostgres::start(&config.data_dir.join("postgres")).await?;
                (server.admin_options(), Some(server))
            }
        };
        let provisioner = Provisioner::open(admin, config.database_prefix.clone(), config.pool_settings()).await?;
        // Two connections: one listens for deploys; the other reads and writes versions, and
        // relays the platform's events (both rare and short).
        let store = VersionStore::open(provisioner.control_pool(2).await?).await?;
        let stored_policies = store.active().await?.iter().map(stored_policy).collect::<anyhow::Result<Vec<_>>>()?;
        // A host running plugins meters fuel from the start, so that plugins deployed later run on it.
        options.fuel |= files
            .iter()
            .chain(&stored_policies)
            .any(|policy| policy.limits.fuel.is_some() || !policy.plugins.host.is_empty());

        let runtime = Runtime::new(options)?;
        let mut linker = Linker::<InvocationState>::new(&runtime.engine);
        crate::capabilities::add_to_linker(&mut linker)?;
        let compiler = Compiler::new(runtime.engine.clone(), config.cache_dir());
        // One connection of its own for the message outbox, so that a busy outbox never slows
        // a deploy on the version store's.
        let channels = Channels::open(&config.channel_settings(), provisioner.control_pool(1).await?).await?;
        let dispatcher = Dispatcher::new(&runtime, Metrics::default(), config.dev_log_secrets, channels);
        let deployer = Arc::new(Deployer::new(dispatcher.clone(), linker, compiler, store, trusted));
        deployer.store_files(&config.components_dir, &files).await?;

        let mut active = Vec::new();
        for stored in deployer.store.active().await? {
            let policy = stored_policy(&stored)?;
            for (_, other) in &active {
                policy::check_compatible(other, &policy)?;
            }
            active.push((stored, policy));
        }
        let databases = active.iter().filter(|(_, policy)| policy.database.is_some()).count() as u32;
        let budget = match config.db_connections {
            Some(budget) => budget,
            None => provisioner.capacity().await?.default_budget(),
        };
        // Shared as if there were a few more services: room for those deployed while it runs.
        let room = databases + config.spare_services;
        let shares = Shares::of(budget, room, config.nats_url.is_none(), config.pool_max)?;
        tracing::info!(
            budget,
            per_service = shares.per_service,
            at_most = shares.total(room),
            spare_services = config.spare_services,
            "database connections shared"
        );
        let platform_outbox =
            PlatformOutbox { pool: deployer.store.pool().clone(), wake: deployer.outbox_written.clone() };
        let bus = Arc::new(
            EventBus::start(&config.bus_settings(), &provisioner, &dispatcher, platform_outbox, shares.plumbing.bus)
                .await?,
        );
        // Hears the other hosts' ended sessions.
        let sessions_pool = provisioner.control_pool(1).await?;
        let starter = Arc::new(ServiceStarter {
            control: provisioner.control_pool(1).await?,
            provisioner,
            databases_left: AtomicU32::new(room),
            shares,
            migrations_dir: config.migrations_dir.clone(),
            dispatcher: dispatcher.clone(),
            bus: bus.clone(),
            schedules: Mutex::default(),
        });
        deployer.serve_with(starter.clone());

        for (stored, _) in active {
            let name = stored.component.clone();
            let version = deployer.load(&stored).await.with_context(|| format!("loading component {name}"))?;
            tracing::info!(
                component = %name,
                version = version.number,
                digest = %version.short_digest(),
                from_cache = version.from_cache,
                "component loaded"
            );
            starter.start_service(version).await?;
        }
        let mut tasks = Vec::new();
        let (shutdown, stopping) = watch::channel(false);
        if config.watch {
            let (policies, components) = (config.policies.clone(), config.components_dir.clone());
            tasks.push(tokio::spawn(deploy::watch::run(deployer.clone(), policies, components, stopping.clone())));
        }
        let (sessions, telling, stopped) = (dispatcher.clone(), deployer.store.pool().clone(), stopping.clone());
        tasks.push(tokio::spawn(async move { sessions.sessions.listen(sessions_pool, telling, stopped).await }));
        tasks.push(tokio::spawn(deployer.clone().judge_canaries(stopping.clone())));
        tasks.push(tokio::spawn(deployer.clone().listen(stopping)));
        Ok(Self { dispatcher, bus, deployer, starter, tasks, shutdown, _runtime: runtime, embedded })
    }

    /// The services.
    pub fn registry(&self) -> &crate::runtime::registry::Registry {
        &self.dispatcher.registry
    }

    /// The host's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.dispatcher.metrics
    }

    /// Stops the bus, then the embedded cluster (if any) after closing every pool.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let schedules = std::mem::take(&mut *self.starter.schedules.lock().unwrap());
        for task in self.tasks.iter().chain(schedules.values().flat_map(|(_, tasks)| tasks)) {
            task.abort();
        }
        self.bus.stop().await;
        for service in self.dispatcher.registry.all() {
            if let Some(database) = &service.database {
                database.pool.close().await;
                database.platform.close().await;
            }
        }
        drop(self.starter);
        drop(self.deployer);
        drop(self.dispatcher);
        if let Some(embedded) = self.embedded {
            embedded.stop();
        }
    }
}

/// The policy of a stored version.
fn stored_policy(stored: &StoredVersion) -> anyhow::Result<Policy> {
    let source = format!("{}/v{} in the version store", stored.component, stored.version);
    Policy::parse(&stored.policy, std::path::Path::new(&source))
}

/// Brings services to life on this host, and ends them: their databases provisioned and
/// migrated, their pools within the connection budget, their place on the bus, their
/// schedules.
struct ServiceStarter {
    provisioner: Provisioner,
    shares: Shares,
    /// Service databases the budget still has room for.
    databases_left: AtomicU32,
    /// The pool that ends backends cut off at a deadline, shared by every service.
    control: sqlx::PgPool,
    migrations_dir: PathBuf,
    dispatcher: Arc<Dispatcher>,
    bus: Arc<EventBus>,
    /// Each service's scheduled requests: the jobs, and their tasks.
    schedules: Mutex<HashMap<Arc<str>, Schedules>>,
}

impl ServiceStarter {
    async fn start_service(&self, version: Arc<Version>) -> anyhow::Result<Arc<Service>> {
        let name = version.name.clone();
        let database = match &version.policy.database {
            Some(database) => {
                let taken =
                    self.databases_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1));
                anyhow::ensure!(
                    taken.is_ok(),
                    "the host's connection budget has no room for another service's pool; restart it to share \
                     the budget anew"
                );
                match self.open_database(&database.name).await {
                    Ok(database) => Some(Arc::new(database)),
                    Err(err) => {
                        self.databases_left.fetch_add(1, Ordering::SeqCst);
                        return Err(err.context(format!("provisioning the database of {name}")));
                    }
                }
            }
            None => None,
        };
        let service = Arc::new(Service::new(database, version));
        self.dispatcher.registry.insert(service.clone());
        self.refresh(&service);
        Ok(service)
    }

    /// Provisions and migrates the database of `service` (a database name) and opens its
    /// pools.
    async fn open_database(&self, service: &str) -> anyhow::Result<ServiceDatabase> {
        self.provisioner.provision(service, &self.migrations_dir.join(service)).await?;
        Ok(ServiceDatabase {
            pool: self.provisioner.service_pool(service, self.shares.per_service).await?,
            platform: self.provisioner.platform_pool(service, self.shares.plumbing.per_database).await?,
            control: self.control.clone(),
            host_key: self.provisioner.host_key(service),
            plans: Default::default(),
        })
    }
}

/// A service's scheduled jobs, and the tasks making them.
type Schedules = (Vec<crate::policy::ScheduledRequest>, Vec<tokio::task::JoinHandle<()>>);

/// Runs the future `work` makes on a blocking thread of its own, and answers its outcome.
/// Provisioning's futures are not ones the compiler can prove `Send` for every lifetime they
/// borrow, and a deploy runs on a task; provisioning is rare, and the thread waits only on the
/// database.
fn provisioning<T, F>(work: impl FnOnce() -> F + Send + 'static) -> BoxFuture<'static, anyhow::Result<T>>
where
    T: Send + 'static,
    F: Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Handle::current();
    Box::pin(async move {
        let done = tokio::task::spawn_blocking(move || runtime.block_on(work()));
        done.await.context("provisioning stopped")?
    })
}

impl Lifecycle for ServiceStarter {
    fn start(self: Arc<Self>, version: Arc<Version>) -> BoxFuture<'static, anyhow::Result<()>> {
        provisioning(move || async move { self.start_service(version).await.map(|_| ()) })
    }

    fn applied_migrations(self: Arc<Self>, database: String) -> BoxFuture<'static, anyhow::Result<Applied>> {
        provisioning(move || async move { self.provisioner.applied_migrations(&database).await })
    }

    fn migrate(
        self: Arc<Self>,
        database: String,
        migrations: Vec<NewMigration>,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        let migrations = migrations.iter().map(NewMigration::to_sqlx).collect();
        provisioning(move || async move { self.provisioner.migrate(&database, migrations).await })
    }

    fn refresh(&self, service: &Arc<Service>) {
        self.bus.attach(service);
        let jobs = service.active().policy.schedule.clone();
        let mut schedules = self.schedules.lock().unwrap();
        if schedules.get(&service.name).is_some_and(|running| running.0 == jobs) {
            return;
        }
        let tasks = crate::schedule::start(&self.dispatcher, service);
        if let Some((_, previous)) = schedules.insert(service.name.clone(), (jobs, tasks)) {
            previous.iter().for_each(tokio::task::JoinHandle::abort);
        }
    }

    fn stop(&self, name: &str) {
        let Some(service) = self.dispatcher.registry.remove(name) else { return };
        self.bus.detach(name);
        if let Some((_, tasks)) = self.schedules.lock().unwrap().remove(name) {
            tasks.iter().for_each(tokio::task::JoinHandle::abort);
        }
        if let Some(database) = service.database.clone() {
            self.databases_left.fetch_add(1, Ordering::SeqCst);
            // In-flight invocations keep their connections until they end. The platform pool
            // stays: the relay still sends what the service committed.
            tokio::spawn(async move { database.pool.close().await });
        }
    }
}
