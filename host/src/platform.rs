//! The platform: PostgreSQL (embedded or a server), one provisioned database per service, the
//! engine and the registry of loaded components. `micropay serve` and `micropay bench` both
//! start one.

use std::str::FromStr;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use wasmtime::component::Linker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{self, Policy};
use crate::postgres::embedded::EmbeddedPostgres;
use crate::postgres::provision::Provisioner;
use crate::runtime::bindings::{Caller, Route};
use crate::runtime::engine::Runtime;
use crate::runtime::invoke::{self, Answer, Call, InvokeError};
use crate::runtime::registry::{self, Compiler, LoadedComponent, Registry};
use crate::runtime::state::InvocationState;

/// A running platform.
pub struct Platform {
    pub runtime: Runtime,
    pub registry: Registry,
    pub metrics: Metrics,
    /// Kept to stop the embedded cluster last, after every pool is gone.
    embedded: Option<EmbeddedPostgres>,
}

impl Platform {
    /// Starts PostgreSQL if embedded, provisions and migrates every policy's database, and
    /// loads every component.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let policies = policy::load_all(&config.policies)?;
        let (admin, embedded, default_secret) = match &config.database_url {
            Some(url) => {
                let options =
                    PgConnectOptions::from_str(url).context("MICROPAY_DATABASE_URL is not a PostgreSQL URL")?;
                (options, None, url.clone())
            }
            None => {
                let server = EmbeddedPostgres::start(&config.data_dir.join("postgres")).await?;
                (server.admin_options(), Some(server), "embedded".to_string())
            }
        };
        let provisioner = Provisioner::new(
            admin,
            config.database_prefix.clone(),
            config.role_secret.clone().unwrap_or(default_secret),
            config.pool_settings(),
        );

        let runtime = Runtime::new()?;
        let mut linker = Linker::<InvocationState>::new(&runtime.engine);
        crate::capabilities::add_to_linker(&mut linker)?;
        let compiler = Compiler::new(runtime.engine.clone(), config.cache_dir());
        let metrics = Metrics::default();

        let mut registry = Registry::default();
        for policy in policies {
            let component =
                load_component(config, &runtime, &linker, &compiler, &provisioner, &metrics, policy).await?;
            tracing::info!(component = %component.name, version = %&component.digest[..12], "component loaded");
            registry.insert(component);
        }
        Ok(Self { runtime, registry, metrics, embedded })
    }

    /// Invokes `call` on `component` as one unit of work.
    pub async fn invoke(
        &self,
        component: &LoadedComponent,
        call: Call,
        caller: Option<Caller>,
    ) -> Result<Answer, InvokeError> {
        invoke::invoke(&self.runtime.engine, &self.metrics, component, call, caller).await
    }

    /// Resolves a bearer token through the identity component. No identity component loaded
    /// means no token can be valid.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Caller>, InvokeError> {
        let Some(identity) = self.registry.identity() else { return Ok(None) };
        match self.invoke(&identity, Call::Authenticate(token.to_string()), None).await? {
            Answer::Caller(caller) => Ok(caller),
            _ => unreachable!("authenticate answers a caller"),
        }
    }

    /// Stops the embedded cluster (if any) after closing every pool.
    pub async fn shutdown(self) {
        for component in self.registry.all() {
            if let Some(pool) = &component.pool {
                pool.close().await;
            }
        }
        drop(self.registry);
        if let Some(embedded) = self.embedded {
            embedded.stop();
        }
    }
}

async fn load_component(
    config: &Config,
    runtime: &Runtime,
    linker: &Linker<InvocationState>,
    compiler: &Compiler,
    provisioner: &Provisioner,
    metrics: &Metrics,
    policy: Policy,
) -> anyhow::Result<LoadedComponent> {
    let name = policy.component.name.clone();
    let path = config.components_dir.join(&policy.component.file);
    let (component, digest) = compiler.load(&path).with_context(|| format!("loading component {name}"))?;
    let (service, identity) =
        registry::prepare(linker, &component).with_context(|| format!("loading component {name}"))?;
    let pool = match &policy.database {
        Some(database) => Some(
            provisioner
                .provision(&database.name, &config.migrations_dir.join(&database.name))
                .await
                .with_context(|| format!("provisioning the database of {name}"))?,
        ),
        None => None,
    };
    let mut loaded =
        LoadedComponent { name: name.as_str().into(), digest, policy, service, identity, pool, routes: Vec::new() };
    loaded.routes = match invoke::invoke(&runtime.engine, metrics, &loaded, Call::Routes, None).await {
        Ok(Answer::Routes(routes)) => routes,
        Ok(_) => Vec::<Route>::new(),
        Err(err) => anyhow::bail!("component {name} failed to list its routes: {err}"),
    };
    Ok(loaded)
}
