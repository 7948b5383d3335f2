//! One database per service, as a capability: database `micropay_{service}_db`, owned by role
//! `micropay_{service}`, which can connect to that database only; its migrations applied; one
//! pool per service, connected as that role.
//!
//! Invariants kept here:
//! - CONNECT on a service database is revoked from PUBLIC, so no other service's role (none is
//!   a superuser, none can create roles or databases) can open it; nor can a service list the
//!   server's databases and roles from its own;
//! - the service's tables live in schema `{service}_schema`, owned by its role, first on the
//!   role's search_path; the role's time zone is UTC, so `TIMESTAMP` columns hold UTC;
//! - migrations are sqlx's: versioned, checksummed, refused if an applied file was edited.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

/// Pool settings, by default the data design's: 10–20 connections, 30 min lifetime, 10 min idle.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub min_connections: u32,
    pub max_connections: u32,
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            min_connections: 10,
            max_connections: 20,
            max_lifetime: Duration::from_secs(30 * 60),
            idle_timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// Where services' databases live and how they are named.
#[derive(Clone)]
pub struct Provisioner {
    admin: PgConnectOptions,
    /// Prepended to every database and role name: lets several installations (or tests)
    /// share one server.
    prefix: String,
    /// Secret the role passwords are derived from.
    secret: String,
    pool: PoolSettings,
}

impl Provisioner {
    /// Every connection plans its statements for their parameters each time
    /// (`plan_cache_mode = force_custom_plan`): a pooled connection lives for half an hour and
    /// its prepared statements with it, and a generic plan made while a table was still empty
    /// (a sequential scan) would otherwise outlive the table's growth until the next `ANALYZE`.
    pub fn new(admin: PgConnectOptions, prefix: String, secret: String, pool: PoolSettings) -> Self {
        let admin =
            admin.log_statements(tracing::log::LevelFilter::Trace).options([("plan_cache_mode", "force_custom_plan")]);
        Self { admin, prefix, secret, pool }
    }

    /// The database of service `service`.
    pub fn database_name(&self, service: &str) -> String {
        format!("{}micropay_{service}_db", self.prefix)
    }

    /// The role of service `service`.
    pub fn role_name(&self, service: &str) -> String {
        format!("{}micropay_{service}", self.prefix)
    }

    /// Connection options for `service`'s own role on its own database.
    pub fn service_options(&self, service: &str) -> PgConnectOptions {
        let role = self.role_name(service);
        self.admin.clone().username(&role).password(&self.role_password(&role)).database(&self.database_name(service))
    }

    /// The role's password: derived from the installation secret, so every host sharing a
    /// server computes the same one and none has to be stored.
    fn role_password(&self, role: &str) -> String {
        hex::encode(Sha256::digest(format!("micropay-role:{}:{role}", self.secret)))
    }

    /// Creates (if missing) the role, database and schema of `service`, applies the migrations
    /// in `migrations`, and returns the service's pool.
    pub async fn provision(&self, service: &str, migrations: &Path) -> anyhow::Result<PgPool> {
        let (role, database) = (self.role_name(service), self.database_name(service));
        let mut admin = self.admin.connect().await.context("connecting to PostgreSQL as its administrator")?;
        let password = self.role_password(&role);

        if !exists(&mut admin, "SELECT 1 FROM pg_roles WHERE rolname = $1", &role).await? {
            tolerate_existing(admin_exec(&mut admin, &format!("CREATE ROLE {} LOGIN", ident(&role))).await)?;
        }
        let role_ident = ident(&role);
        for statement in [
            format!(
                "ALTER ROLE {role_ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}",
                literal(&password)
            ),
            format!("ALTER ROLE {role_ident} SET search_path = {}", ident(&format!("{service}_schema"))),
            format!("ALTER ROLE {role_ident} SET timezone = 'UTC'"),
            format!("ALTER ROLE {role_ident} SET idle_in_transaction_session_timeout = '60s'"),
        ] {
            admin_exec(&mut admin, &statement).await?;
        }
        if !exists(&mut admin, "SELECT 1 FROM pg_database WHERE datname = $1", &database).await? {
            tolerate_existing(
                admin_exec(
                    &mut admin,
                    &format!("CREATE DATABASE {} OWNER {role_ident} ENCODING 'UTF8'", ident(&database)),
                )
                .await,
            )?;
        }
        admin_exec(&mut admin, &format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", ident(&database))).await?;
        admin.close().await.ok();

        let mut in_database = self
            .admin
            .clone()
            .database(&database)
            .connect()
            .await
            .with_context(|| format!("connecting to {database}"))?;
        for statement in [
            format!("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {role_ident}", ident(&format!("{service}_schema"))),
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_string(),
            // Nothing in a service's database lists the server's other databases or roles.
            "REVOKE SELECT ON pg_catalog.pg_database, pg_catalog.pg_roles, pg_catalog.pg_user, \
             pg_catalog.pg_stat_activity, pg_catalog.pg_stat_database FROM PUBLIC"
                .to_string(),
        ] {
            tolerate_existing(admin_exec(&mut in_database, &statement).await)?;
        }
        for statement in platform_tables(&role_ident) {
            tolerate_existing(admin_exec(&mut in_database, &statement).await)
                .with_context(|| format!("creating platform tables in {database}"))?;
        }
        in_database.close().await.ok();

        let pool = PgPoolOptions::new()
            .min_connections(self.pool.min_connections)
            .max_connections(self.pool.max_connections)
            .max_lifetime(self.pool.max_lifetime)
            .idle_timeout(self.pool.idle_timeout)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(self.service_options(service))
            .await
            .with_context(|| format!("connecting to {database} as {role}"))?;
        if migrations.is_dir() {
            let migrator = sqlx::migrate::Migrator::new(migrations)
                .await
                .with_context(|| format!("reading migrations in {}", migrations.display()))?;
            migrator.run(&pool).await.with_context(|| format!("migrating {database} from {}", migrations.display()))?;
        }
        Ok(pool)
    }
}

impl Provisioner {
    /// Administrator connection options on `service`'s database: the host's own access, for
    /// the platform tables (outbox relay, dead letters, delivery ownership).
    pub fn platform_options(&self, service: &str) -> PgConnectOptions {
        self.admin.clone().database(&self.database_name(service))
    }

    /// A small administrator pool on `service`'s database, for the platform's own work.
    pub async fn platform_pool(&self, service: &str) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .min_connections(0)
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(self.platform_options(service))
            .await
            .with_context(|| format!("connecting to {} as the administrator", self.database_name(service)))
    }

    /// Creates (if missing) the embedded event bus's database, `micropay_bus_db`: owned by the
    /// administrator, reachable by no service role. Returns a pool on it.
    pub async fn provision_bus(&self, tables: &[&str]) -> anyhow::Result<PgPool> {
        let database = self.database_name("bus");
        let mut admin = self.admin.connect().await.context("connecting to PostgreSQL as its administrator")?;
        if !exists(&mut admin, "SELECT 1 FROM pg_database WHERE datname = $1", &database).await? {
            tolerate_existing(
                admin_exec(&mut admin, &format!("CREATE DATABASE {} ENCODING 'UTF8'", ident(&database))).await,
            )?;
        }
        admin_exec(&mut admin, &format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", ident(&database))).await?;
        admin.close().await.ok();
        let pool = PgPoolOptions::new()
            .min_connections(1)
            .max_connections(self.pool.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(self.admin.clone().database(&database))
            .await
            .with_context(|| format!("connecting to {database}"))?;
        for statement in tables {
            tolerate_existing(sqlx::raw_sql(statement).execute(&pool).await.map(|_| ()))
                .with_context(|| format!("creating the bus tables in {database}"))?;
        }
        Ok(pool)
    }
}

/// The platform's own tables in a service database, owned by the administrator:
/// - the event outbox, to which the service's role may only append (through `events.publish`);
/// - the inbox of events handled, to which the role may only append and whose ids it may read
///   (the host does both, in the delivery's unit of work);
/// - the dead letters: events the service failed to handle, with the last error;
/// - the hosts delivering to the service, for sharing its partitions among them.
fn platform_tables(role: &str) -> Vec<String> {
    vec![
        "CREATE SCHEMA IF NOT EXISTS micropay_platform".to_string(),
        "CREATE TABLE IF NOT EXISTS micropay_platform.outbox (
            sequence BIGSERIAL PRIMARY KEY,
            event_id UUID NOT NULL UNIQUE,
            topic VARCHAR(200) NOT NULL,
            source VARCHAR(100) NOT NULL,
            subject VARCHAR(255) NOT NULL,
            data JSONB NOT NULL,
            trace_id VARCHAR(100),
            occurred_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            relayed_at TIMESTAMPTZ
        )"
        .to_string(),
        "CREATE INDEX IF NOT EXISTS outbox_unrelayed ON micropay_platform.outbox (sequence) WHERE relayed_at IS NULL"
            .to_string(),
        format!("GRANT USAGE ON SCHEMA micropay_platform TO {role}"),
        format!("GRANT INSERT ON micropay_platform.outbox TO {role}"),
        format!("GRANT USAGE ON SEQUENCE micropay_platform.outbox_sequence_seq TO {role}"),
        "CREATE TABLE IF NOT EXISTS micropay_platform.inbox (
            event_id UUID PRIMARY KEY,
            topic VARCHAR(200) NOT NULL,
            source VARCHAR(100) NOT NULL,
            handled_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )"
        .to_string(),
        // Reading the ids back tells a batch which of its events are new.
        format!("GRANT INSERT, SELECT (event_id) ON micropay_platform.inbox TO {role}"),
        "CREATE TABLE IF NOT EXISTS micropay_platform.dead_letters (
            event_id UUID PRIMARY KEY,
            topic VARCHAR(200) NOT NULL,
            source VARCHAR(100) NOT NULL,
            subject VARCHAR(255) NOT NULL,
            data JSONB NOT NULL,
            trace_id VARCHAR(100),
            occurred_at TIMESTAMPTZ NOT NULL,
            attempts INT NOT NULL,
            last_error TEXT NOT NULL,
            failed_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )"
        .to_string(),
        "CREATE TABLE IF NOT EXISTS micropay_platform.delivery_hosts (
            host_id UUID PRIMARY KEY,
            seen_at TIMESTAMPTZ NOT NULL
        )"
        .to_string(),
    ]
}

async fn exists(conn: &mut PgConnection, sql: &'static str, name: &str) -> anyhow::Result<bool> {
    Ok(sqlx::query(sql).bind(name).fetch_optional(conn).await?.is_some())
}

async fn admin_exec(conn: &mut PgConnection, statement: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(statement).execute(conn).await.map(|_| ())
}

/// Another host may create the same object at the same moment: "already exists" is success.
fn tolerate_existing(result: Result<(), sqlx::Error>) -> anyhow::Result<()> {
    match result {
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04" | "42710" | "23505" | "42P06")) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
