//! The platform: PostgreSQL (embedded or a server), one provisioned database per service, the
//! engine and the loaded components. `micropay serve` and `micropay bench` both start one.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use wasmtime::component::Linker;

use crate::bus::EventBus;
use crate::capabilities::database::ServiceDatabase;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{self, Policy};
use crate::postgres::budget::Shares;
use crate::postgres::embedded::EmbeddedPostgres;
use crate::postgres::provision::Provisioner;
use crate::runtime::bindings::Caller;
use crate::runtime::engine::{EngineOptions, Runtime};
use crate::runtime::invoke::{Answer, Call, Dispatcher, InvokeError};
use crate::runtime::registry::{self, Compiler, LoadedComponent};
use crate::runtime::state::{InvocationContext, InvocationState};

/// A running platform.
pub struct Platform {
    pub dispatcher: Arc<Dispatcher>,
    /// The event bus: relays and deliveries.
    pub bus: EventBus,
    /// The scheduled requests' tasks.
    scheduled: Vec<tokio::task::JoinHandle<()>>,
    /// Owns the epoch ticker.
    _runtime: Runtime,
    /// Kept to stop the embedded cluster last, after every pool is gone.
    embedded: Option<EmbeddedPostgres>,
}

impl Platform {
    /// Starts PostgreSQL if embedded, provisions and migrates every policy's database, and
    /// loads every component.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        Self::start_with(config, EngineOptions::default()).await
    }

    /// [`Platform::start`] with engine options of the caller's (the bench turns limits off to
    /// measure what they cost). Fuel metering is turned on when any policy asks for it.
    pub async fn start_with(config: &Config, mut options: EngineOptions) -> anyhow::Result<Self> {
        let policies = policy::load_all(&config.policies)?;
        options.fuel |= policies.iter().any(|policy| policy.limits.fuel.is_some());
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
        let databases = policies.iter().filter(|policy| policy.database.is_some()).count() as u32;
        let budget = match config.db_connections {
            Some(budget) => budget,
            None => provisioner.capacity().await?.default_budget(),
        };
        let shares = Shares::of(budget, databases, config.nats_url.is_none(), config.pool_max)?;
        tracing::info!(
            budget,
            per_service = shares.per_service,
            at_most = shares.total(databases),
            "database connections shared"
        );

        let runtime = Runtime::new(options)?;
        let mut linker = Linker::<InvocationState>::new(&runtime.engine);
        crate::capabilities::add_to_linker(&mut linker)?;
        let compiler = Compiler::new(runtime.engine.clone(), config.cache_dir());
        let dispatcher = Dispatcher::new(&runtime, Metrics::default(), config.dev_log_secrets);
        let control = provisioner.control_pool(1).await?;

        for policy in policies {
            let databases = Databases { provisioner: &provisioner, shares: &shares, control: &control };
            let component = load_component(config, &dispatcher, &linker, &compiler, &databases, policy).await?;
            tracing::info!(
                component = %component.name,
                version = %component.version(),
                from_cache = component.from_cache,
                "component loaded"
            );
            dispatcher.registry.insert(component);
        }
        let bus = EventBus::start(&config.bus_settings(), &provisioner, &dispatcher, shares.plumbing.bus).await?;
        let scheduled = crate::schedule::start(&dispatcher);
        Ok(Self { dispatcher, bus, scheduled, _runtime: runtime, embedded })
    }

    /// The loaded components.
    pub fn registry(&self) -> &crate::runtime::registry::Registry {
        &self.dispatcher.registry
    }

    /// The host's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.dispatcher.metrics
    }

    /// Invokes `call` on `component` as one unit of work.
    pub async fn invoke(
        &self,
        component: &Arc<LoadedComponent>,
        call: Call,
        context: InvocationContext,
    ) -> Result<Answer, InvokeError> {
        self.dispatcher.invoke(component, call, context).await
    }

    /// Resolves a bearer token through the identity component. No identity component loaded
    /// means no token can be valid.
    pub async fn authenticate(&self, token: &str, request_id: &str) -> Result<Option<Caller>, InvokeError> {
        let Some(identity) = self.dispatcher.registry.identity() else { return Ok(None) };
        let context = InvocationContext::new(None, request_id);
        match self.invoke(&identity, Call::Authenticate(token.to_string()), context).await? {
            Answer::Caller(caller) => Ok(caller),
            _ => unreachable!("authenticate answers a caller"),
        }
    }

    /// Stops the bus, then the embedded cluster (if any) after closing every pool.
    pub async fn shutdown(self) {
        for task in &self.scheduled {
            task.abort();
        }
        self.bus.stop().await;
        for component in self.dispatcher.registry.all() {
            if let Some(database) = &component.database {
                database.pool.close().await;
                database.platform.close().await;
            }
        }
        drop(self.dispatcher);
        if let Some(embedded) = self.embedded {
            embedded.stop();
        }
    }
}

/// Where components' databases come from: provisioning, the shares of the connection budget,
/// and the pool that ends backends cut off at a deadline.
struct Databases<'a> {
    provisioner: &'a Provisioner,
    shares: &'a Shares,
    control: &'a sqlx::PgPool,
}

async fn load_component(
    config: &Config,
    dispatcher: &Arc<Dispatcher>,
    linker: &Linker<InvocationState>,
    compiler: &Compiler,
    databases: &Databases<'_>,
    policy: Policy,
) -> anyhow::Result<Arc<LoadedComponent>> {
    let name = policy.component.name.clone();
    let path = config.components_dir.join(&policy.component.file);
    let compiled = compiler.load(&path).with_context(|| format!("loading component {name}"))?;
    registry::check_imports(&dispatcher.engine, &policy, &compiled.component)
        .with_context(|| format!("refusing component {name}"))?;
    let prepared =
        registry::prepare(linker, &policy, &compiled.component).with_context(|| format!("loading component {name}"))?;
    let database = match &policy.database {
        Some(database) => {
            let service = database.name.as_str();
            let Databases { provisioner, shares, control } = databases;
            provisioner
                .provision(service, &config.migrations_dir.join(service))
                .await
                .with_context(|| format!("provisioning the database of {name}"))?;
            Some(Arc::new(ServiceDatabase {
                pool: provisioner.service_pool(service, shares.per_service).await?,
                platform: provisioner.platform_pool(service, shares.plumbing.per_database).await?,
                control: (*control).clone(),
                host_key: provisioner.host_key(service),
            }))
        }
        None => None,
    };
    let slots = tokio::sync::Semaphore::new(policy.limits.max_instances as usize);
    let mut loaded = LoadedComponent {
        name: name.as_str().into(),
        digest: compiled.digest,
        from_cache: compiled.from_cache,
        policy,
        service: prepared.service,
        identity: prepared.identity,
        subscriber: prepared.subscriber,
        database,
        routes: Vec::new(),
        slots,
        outbox_written: Arc::default(),
    };
    // Ask the component for its routes (an invocation needs it shared), then take it back to
    // record them: nothing else holds it yet.
    let shared = Arc::new(loaded);
    let routes = match dispatcher.invoke(&shared, Call::Routes, InvocationContext::new(None, "load")).await {
        Ok(Answer::Routes(routes)) => routes,
        Ok(_) => Vec::new(),
        Err(err) => anyhow::bail!("component {name} failed to list its routes: {err}"),
    };
    loaded = Arc::into_inner(shared).expect("no invocation keeps the component");
    loaded.routes = routes;
    Ok(Arc::new(loaded))
}
