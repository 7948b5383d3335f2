//! PostgreSQL as part of the sandbox: one database per service, who owns what in it, and the
//! connections the host opens. A component speaks SQL to its own database, so the privileges
//! below are as much the sandbox as wasm is.
//!
//! Who owns what (each kept by the statements of [`Provisioner::provision`], which run at every
//! start, so an older installation is brought to them too):
//! - the **administrator** (the URL the host is given, or the embedded cluster's superuser)
//!   owns every database, creates the roles, and is used only here, to provision;
//! - a **service role** `micropay_{service}` can log in and nothing else (no superuser, no
//!   CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS), is a member of no role, may CONNECT to its
//!   own database only (no CREATE, so no schema, extension or publication; no TEMP), and owns
//!   its schema `{service}_schema` and what its migrations create there: nothing the host relies
//!   on. It may use the platform's two write functions, nothing else of the platform's schema;
//! - the **platform role** `micropay_platform` is the host's own, least-privileged: it owns the
//!   schema `micropay_platform` in every service database (outbox, inbox, dead letters, the
//!   host key, and the functions through which the host writes them), the embedded bus's
//!   database, and the installation's coordination tables; it is a member of every service
//!   role only so that it may end that role's backend at a missed deadline;
//! - in a service database PUBLIC may not create in schema `public`, read the server's other
//!   databases, roles, settings per role and sessions, signal backends, or create large
//!   objects (these ACLs are per database);
//! - every connection the host opens pins `search_path` (and the settings the host relies on)
//!   in its start-up packet, which takes precedence over `ALTER ROLE ... SET` (which PostgreSQL
//!   lets any role do to itself) and `ALTER DATABASE ... SET` (which no service role can do, not
//!   owning its database); the host's own statements qualify what they name besides.
//!
//! Role passwords derive from the installation's secret, generated once and kept in the
//! platform database, so every host sharing the server computes the same ones.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::budget::ServerCapacity;
use crate::capabilities::database::PlanAges;

/// Pool settings, by default the data design's: 10–20 connections, 30 min lifetime, 10 min idle.
/// The budget ([`super::budget`]) may give a pool fewer.
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

/// Statements a service connection keeps prepared (at most 256 KiB of text each).
const SERVICE_STATEMENT_CACHE: usize = 32;

/// A service role's temporary files, at most (`temp_file_limit`, which only a superuser sets).
const SERVICE_TEMP_FILES: &str = "1GB";

/// The platform's schema in a service database.
pub const PLATFORM_SCHEMA: &str = "micropay_platform";

/// The class of the advisory lock (on the server's maintenance database) under which the
/// hosts of one installation take turns provisioning.
const PROVISIONING_LOCK: i32 = 0x4d50_0004;

/// Where services' databases live, how they are named, and the installation's secret.
#[derive(Clone)]
pub struct Provisioner {
    /// The administrator, on the server's maintenance database.
    admin: PgConnectOptions,
    /// Prepended to every database and role name: lets several installations (or tests)
    /// share one server.
    prefix: String,
    /// The installation's secret: role passwords and host keys derive from it.
    secret: String,
    pool: PoolSettings,
}

impl Provisioner {
    /// Connects as the administrator and sets up the installation if it is new: the platform
    /// database, the secret (generated once) and the platform role.
    pub async fn open(admin: PgConnectOptions, prefix: String, pool: PoolSettings) -> anyhow::Result<Self> {
        // Never log the administrator's statements: they carry role passwords.
        let admin = pinned(admin, "pg_catalog").log_statements(tracing::log::LevelFilter::Off);
        let mut provisioner = Self { admin, prefix, secret: String::new(), pool };
        let mut lock = provisioner.provisioning_lock().await?;
        provisioner.secret = provisioner.installation_secret(&mut lock).await?;
        provisioner.provision_platform(&mut lock).await?;
        let prepared: i32 = sqlx::query_scalar("SELECT pg_catalog.current_setting('max_prepared_transactions')::int")
            .fetch_one(&mut lock)
            .await?;
        if prepared > 0 {
            tracing::warn!(
                max_prepared_transactions = prepared,
                "the server allows prepared transactions: a component's PREPARE TRANSACTION would outlive its \
                 unit (the host stops the unit, but not what was prepared); set max_prepared_transactions = 0"
            );
        }
        lock.close().await.ok();
        Ok(provisioner)
    }

    /// The database of service `service`.
    pub fn database_name(&self, service: &str) -> String {
        format!("{}micropay_{service}_db", self.prefix)
    }

    /// The role of service `service`.
    pub fn role_name(&self, service: &str) -> String {
        format!("{}micropay_{service}", self.prefix)
    }

    /// The platform role: the host's own.
    pub fn platform_role(&self) -> String {
        self.role_name("platform")
    }

    /// A role's password. Derived, so every host sharing the server computes the same one and
    /// none is stored; never logged.
    fn password(&self, role: &str) -> String {
        hex::encode(Sha256::digest(format!("micropay-role:{}:{role}", self.secret)))
    }

    /// The key with which the host, and only the host, writes the platform's tables of a
    /// service database from inside the component's unit of work (see [`platform_objects`]).
    /// The database keeps only its SHA-256.
    pub fn host_key(&self, service: &str) -> Vec<u8> {
        Sha256::digest(format!("micropay-host-key:{}:{}", self.secret, self.database_name(service))).to_vec()
    }

    /// What the server allows, and what is open now.
    pub async fn capacity(&self) -> anyhow::Result<ServerCapacity> {
        let mut admin = self.admin.connect().await.context("connecting to PostgreSQL as its administrator")?;
        let capacity = ServerCapacity::read(&mut admin).await;
        admin.close().await.ok();
        capacity
    }

    /// Connection options of `service`'s own role on its own database, its schema first. Its
    /// statement cache is small: a component's statements are cached by their text, on the host
    /// and on the server. Their plans are PostgreSQL's choice (`plan_cache_mode = auto`: a
    /// generic plan once it costs no more than planning for the parameters), where the host's
    /// other connections plan every execution (see [`pinned`]): a component's statements run
    /// thousands of times a second on the money path, and planning each execution was a
    /// quarter of the server's work there. A generic plan made while a table was small is not
    /// kept past [`crate::capabilities::database::PLAN_LIFETIME`]: the units of work make the
    /// connection's statements afresh then.
    pub fn service_options(&self, service: &str) -> PgConnectOptions {
        let role = self.role_name(service);
        pinned(self.admin.clone(), &format!("{service}_schema"))
            .options([("log_parameter_max_length_on_error", "0"), ("plan_cache_mode", "auto")])
            .statement_cache_capacity(SERVICE_STATEMENT_CACHE)
            .log_statements(tracing::log::LevelFilter::Trace)
            .username(&role)
            .password(&self.password(&role))
            .database(&self.database_name(service))
    }

    /// Connection options of the platform role on `database` (a full database name).
    fn platform_options(&self, database: &str, search_path: &str) -> PgConnectOptions {
        let role = self.platform_role();
        pinned(self.admin.clone(), search_path)
            .log_statements(tracing::log::LevelFilter::Trace)
            .username(&role)
            .password(&self.password(&role))
            .database(database)
    }

    /// The platform role on the platform database: for coordinating the hosts.
    pub fn coordination_options(&self) -> PgConnectOptions {
        self.platform_options(&self.database_name("platform"), "pg_catalog")
    }

    /// The platform role's pool on the platform database for ending backends cut off at a
    /// deadline (the platform role may end its service roles' backends from anywhere): apart
    /// from everything else, so it is free when a deadline needs it.
    pub async fn control_pool(&self, max: u32) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .min_connections(0)
            .max_connections(max)
            .idle_timeout(Duration::from_secs(60))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.coordination_options())
            .await
            .context("connecting to the platform database as the platform role")
    }

    /// The pool of `service`'s own role on its own database, for its components' units of
    /// work, at most `max` connections.
    pub async fn service_pool(&self, service: &str, max: u32) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .min_connections(self.pool.min_connections.min(max))
            .max_connections(max)
            .max_lifetime(self.pool.max_lifetime)
            .idle_timeout(self.pool.idle_timeout)
            // Callers bound each wait themselves (an invocation by its deadline).
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(self.service_options(service))
            .await
            .with_context(|| format!("connecting to {} as {}", self.database_name(service), self.role_name(service)))
    }

    /// The platform role's pool on `service`'s database: the host's own work there (outbox
    /// relay, dead letters, ending a backend at a missed deadline).
    pub async fn platform_pool(&self, service: &str, max: u32) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .min_connections(0)
            .max_connections(max)
            .idle_timeout(Duration::from_secs(60))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.platform_options(&self.database_name(service), "pg_catalog"))
            .await
            .with_context(|| format!("connecting to {} as the platform role", self.database_name(service)))
    }

    /// An administrator connection holding the provisioning lock: hosts starting at once take
    /// turns, since concurrent changes to one catalog row fail ("tuple concurrently updated").
    /// The lock goes with the connection.
    async fn provisioning_lock(&self) -> anyhow::Result<PgConnection> {
        let mut admin = self.admin.connect().await.context("connecting to PostgreSQL as its administrator")?;
        // One lock per installation: others on the same server provision other names.
        let installation = crate::fnv1a(self.prefix.as_bytes());
        sqlx::query("SELECT pg_catalog.pg_advisory_lock($1, $2)")
            .bind(PROVISIONING_LOCK)
            .bind(installation as i32)
            .execute(&mut admin)
            .await?;
        Ok(admin)
    }

    /// The installation's secret, generated with the platform database when it is new.
    async fn installation_secret(&self, admin: &mut PgConnection) -> anyhow::Result<String> {
        let database = self.database_name("platform");
        ensure_database(admin, &database).await?;
        let mut in_database = self.admin_in(&database).await?;
        for statement in [
            "REVOKE ALL ON SCHEMA public FROM PUBLIC",
            "CREATE TABLE IF NOT EXISTS public.installation (
                singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
                role_secret TEXT NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
            "REVOKE ALL ON public.installation FROM PUBLIC",
        ] {
            admin_exec(&mut in_database, statement).await?;
        }
        sqlx::query("INSERT INTO public.installation (role_secret) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(new_secret()?)
            .execute(&mut in_database)
            .await
            .context("keeping the installation's secret")?;
        let secret = sqlx::query_scalar("SELECT role_secret FROM public.installation")
            .fetch_one(&mut in_database)
            .await
            .context("reading the installation's secret")?;
        in_database.close().await.ok();
        Ok(secret)
    }

    /// The platform role, and its schema in the platform database: the hosts' presence and the
    /// platform's own outbox.
    async fn provision_platform(&self, admin: &mut PgConnection) -> anyhow::Result<()> {
        let (role, database) = (self.platform_role(), self.database_name("platform"));
        let role_ident = ident(&role);
        ensure_role(admin, &role, &self.password(&role)).await?;
        let grants = [
            format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", ident(&database)),
            format!("GRANT CONNECT ON DATABASE {} TO {role_ident}", ident(&database)),
        ];
        in_one_transaction(admin, &grants).await?;
        let mut in_database = self.admin_in(&database).await?;
        for statement in [
            format!("CREATE SCHEMA IF NOT EXISTS {PLATFORM_SCHEMA} AUTHORIZATION {role_ident}"),
            "CREATE TABLE IF NOT EXISTS micropay_platform.delivery_hosts (
                host_id UUID PRIMARY KEY,
                seen_at TIMESTAMPTZ NOT NULL
            )"
            .to_string(),
            owned_by("TABLE", "micropay_platform.delivery_hosts", &role_ident),
            OUTBOX_TABLE.to_string(),
            outbox_index(),
            owned_by("TABLE", "micropay_platform.outbox", &role_ident),
        ] {
            admin_exec(&mut in_database, &statement).await?;
        }
        in_database.close().await.ok();
        Ok(())
    }

    /// Creates (if missing) and brings to the invariants above the role, database and schemas
    /// of `service`, then applies the migrations in `migrations` as the service's own role.
    pub async fn provision(&self, service: &str, migrations: &Path) -> anyhow::Result<()> {
        let (role, database, platform) = (self.role_name(service), self.database_name(service), self.platform_role());
        let (role_ident, database_ident, platform_ident) = (ident(&role), ident(&database), ident(&platform));
        let mut admin = self.provisioning_lock().await?;
        ensure_role(&mut admin, &role, &self.password(&role)).await?;
        ensure_database(&mut admin, &database).await?;
        // One transaction: hosts already running never see a privilege revoked and not yet
        // granted again.
        let statements = [
            // Older installations let the service role own its database, and so set its
            // settings: take both back.
            format!("ALTER DATABASE {database_ident} OWNER TO CURRENT_USER"),
            format!("ALTER DATABASE {database_ident} RESET ALL"),
            format!("ALTER ROLE ALL IN DATABASE {database_ident} RESET ALL"),
            format!("ALTER ROLE {role_ident} IN DATABASE {database_ident} RESET ALL"),
            format!("ALTER ROLE {role_ident} RESET ALL"),
            format!("ALTER ROLE {role_ident} SET temp_file_limit = {}", literal(SERVICE_TEMP_FILES)),
            format!("REVOKE ALL ON DATABASE {database_ident} FROM PUBLIC, {role_ident}"),
            format!("GRANT CONNECT ON DATABASE {database_ident} TO {role_ident}, {platform_ident}"),
            format!("GRANT {role_ident} TO {platform_ident}"),
        ];
        in_one_transaction(&mut admin, &statements).await.with_context(|| format!("provisioning {database}"))?;

        let mut in_database = self.admin_in(&database).await?;
        let schema = ident(&format!("{service}_schema"));
        let mut statements = vec![
            format!("CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role_ident}"),
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_string(),
            // Nothing in a service's database lists the server's other databases, roles,
            // sessions or locks.
            "REVOKE SELECT ON pg_catalog.pg_database, pg_catalog.pg_roles, pg_catalog.pg_user, \
             pg_catalog.pg_auth_members, pg_catalog.pg_db_role_setting, pg_catalog.pg_stat_activity, \
             pg_catalog.pg_stat_database, pg_catalog.pg_stat_database_conflicts, pg_catalog.pg_locks FROM PUBLIC"
                .to_string(),
            revoke_functions_from_public(REVOKED_FUNCTIONS),
            grant_functions(&["pg_terminate_backend"], &platform_ident),
        ];
        statements.extend(platform_objects(&role_ident, &platform_ident));
        let host_key = hex::encode(Sha256::digest(self.host_key(service)));
        statements.extend([
            format!("DELETE FROM micropay_platform.host_key WHERE key_sha256 <> '\\x{host_key}'::bytea"),
            format!("INSERT INTO micropay_platform.host_key (key_sha256) VALUES ('\\x{host_key}'::bytea) ON CONFLICT DO NOTHING"),
        ]);
        in_one_transaction(&mut in_database, &statements).await.with_context(|| format!("provisioning {database}"))?;
        in_database.close().await.ok();

        if migrations.is_dir() {
            let mut migrator = sqlx::migrate::Migrator::new(migrations)
                .await
                .with_context(|| format!("reading migrations in {}", migrations.display()))?;
            // Hosts take turns under the provisioning lock already; the migrator's own lock is
            // an advisory lock in the service's database, which its component could hold.
            migrator.set_locking(false);
            // Migrations deployed with a version (see `deploy::migrations`) are not in the
            // host's directory.
            migrator.set_ignore_missing(true);
            let mut connection = self
                .service_options(service)
                .connect()
                .await
                .with_context(|| format!("connecting to {database} as {role}"))?;
            migrator
                .run(&mut connection)
                .await
                .with_context(|| format!("migrating {database} from {}", migrations.display()))?;
            connection.close().await.ok();
        }
        admin.close().await.ok();
        Ok(())
    }

    /// The migrations `service`'s database has applied: version and checksum.
    pub async fn applied_migrations(&self, service: &str) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
        let mut connection = self.service_options(service).connect().await?;
        let exists: bool = sqlx::query_scalar("SELECT pg_catalog.to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut connection)
            .await?;
        let applied = match exists {
            true => {
                sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version")
                    .fetch_all(&mut connection)
                    .await?
            }
            false => Vec::new(),
        };
        connection.close().await.ok();
        Ok(applied)
    }

    /// Applies `migrations` to `service`'s database as its own role, under the provisioning
    /// lock; those applied already (same version and checksum) are skipped.
    pub async fn migrate(&self, service: &str, migrations: Vec<sqlx::migrate::Migration>) -> anyhow::Result<()> {
        let admin = self.provisioning_lock().await?;
        let migrator = sqlx::migrate::Migrator {
            migrations: migrations.into(),
            ignore_missing: true,
            locking: false,
            ..sqlx::migrate::Migrator::DEFAULT
        };
        let mut connection = self.service_options(service).connect().await?;
        // Deployed SQL holds the provisioning lock while it runs: it may not run for long.
        sqlx::raw_sql("SET statement_timeout = '60s'; SET lock_timeout = '10s'").execute(&mut connection).await?;
        let migrated = migrator.run(&mut connection).await;
        connection.close().await.ok();
        admin.close().await.ok();
        Ok(migrated?)
    }

    /// Creates (if missing) the embedded event bus's database, `micropay_bus_db`, owned by the
    /// platform role and reachable by no service role; returns the platform role's pool on it,
    /// at most `max` connections.
    pub async fn provision_bus(&self, tables: &[String], max: u32) -> anyhow::Result<PgPool> {
        let database = self.database_name("bus");
        let platform_ident = ident(&self.platform_role());
        let mut admin = self.provisioning_lock().await?;
        ensure_database(&mut admin, &database).await?;
        let grants = [
            format!("ALTER DATABASE {} OWNER TO {platform_ident}", ident(&database)),
            format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", ident(&database)),
        ];
        in_one_transaction(&mut admin, &grants).await?;
        let mut in_database = self.admin_in(&database).await?;
        for statement in tables {
            admin_exec(&mut in_database, statement)
                .await
                .with_context(|| format!("creating the bus tables in {database}"))?;
        }
        // Tables an older installation created as the administrator pass to the platform role.
        for table in ["public.events", "public.positions"] {
            admin_exec(&mut in_database, &owned_by("TABLE", table, &platform_ident)).await?;
        }
        in_database.close().await.ok();
        admin.close().await.ok();
        // The bus's statements (its appends, feed reads and positions) run many times a
        // payment, and planning the feed's read took as long as running it: they are planned as
        // a service's are, by PostgreSQL's choice, and made afresh every `PLAN_LIFETIME`.
        let plans = Arc::new(PlanAges::default());
        PgPoolOptions::new()
            .min_connections(1)
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .before_acquire(move |connection, _| {
                let plans = plans.clone();
                Box::pin(async move {
                    if let Ok(pid) = i32::try_from(connection.backend_pid())
                        && plans.due(pid, tokio::time::Instant::now())
                    {
                        connection.clear_cached_statements().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(self.platform_options(&database, "pg_catalog").options([("plan_cache_mode", "auto")]))
            .await
            .with_context(|| format!("connecting to {database} as the platform role"))
    }

    /// The administrator on `database`.
    async fn admin_in(&self, database: &str) -> anyhow::Result<PgConnection> {
        self.admin.clone().database(database).connect().await.with_context(|| format!("connecting to {database}"))
    }
}

/// `options` with the settings every connection of the host pins at start-up: the search path,
/// and statements planned for their parameters each time (`plan_cache_mode`): a pooled
/// connection lives for half an hour and its prepared statements with it, and a generic plan
/// made while a table was still empty (a sequential scan) would otherwise outlive the table's
/// growth until the next `ANALYZE`. A service's own pool and the bus's plan as PostgreSQL
/// chooses, their statements made afresh now and then (see [`Provisioner::service_options`] and
/// [`Provisioner::provision_bus`]). And no idle
/// session times out: a pooled connection that answered within the last second is handed out
/// unchecked (`RECENTLY_READY` in `vendor/sqlx-postgres/PATCHES.md`), so a role's default
/// `idle_session_timeout` (which a component may set on its own role) would otherwise end
/// sessions waiting in the pool and fail the units given them. (sqlx sends the time zone, UTC,
/// itself.)
fn pinned(options: PgConnectOptions, search_path: &str) -> PgConnectOptions {
    options.options([
        ("search_path", search_path),
        ("plan_cache_mode", "force_custom_plan"),
        ("idle_in_transaction_session_timeout", "60s"),
        ("idle_session_timeout", "0"),
    ])
}

/// Functions of `pg_catalog` PUBLIC may not execute in a service database: signalling other
/// backends, reading other sessions' statements and locks, and large objects (storage outside
/// any table the service owns; the server-side file functions are the superuser's already).
const REVOKED_FUNCTIONS: &[&str] = &[
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_stat_get_backend_idset",
    "pg_stat_get_backend_pid",
    "pg_stat_get_backend_userid",
    "pg_stat_get_backend_dbid",
    "pg_stat_get_backend_client_addr",
    "pg_lock_status",
    "pg_blocking_pids",
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "lo_import",
    "lo_export",
];

/// Revokes EXECUTE on every overload of the `pg_catalog` functions `names` from PUBLIC.
fn revoke_functions_from_public(names: &[&str]) -> String {
    for_each_function(names, "REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC")
}

/// Grants EXECUTE on every overload of the `pg_catalog` functions `names` to `role`.
fn grant_functions(names: &[&str], role: &str) -> String {
    for_each_function(names, &format!("GRANT EXECUTE ON FUNCTION %s TO {}", role.replace('%', "%%")))
}

fn for_each_function(names: &[&str], template: &str) -> String {
    let names = names.iter().map(|name| literal(name)).collect::<Vec<_>>().join(", ");
    format!(
        "DO $$ DECLARE f regprocedure; BEGIN \
           FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p \
                    WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY (ARRAY[{names}]) LOOP \
             EXECUTE pg_catalog.format({}, f); \
           END LOOP; END $$",
        literal(template)
    )
}

/// The platform's objects in a service database, owned by the platform role:
/// - the event outbox, and the inbox of events handled, which the host writes inside the
///   component's own unit of work (so they commit with its work) through two functions that
///   run as the platform role and refuse a caller who does not present the host key: the
///   service role may call them, but only the host holds the key, so a component can neither
///   append an event of its own making nor record one as handled;
/// - the dead letters: events the service failed to handle, with the last error;
/// - the SHA-256 of the host key.
///
/// The service role may use the schema (to call the functions) and nothing else in it.
/// The outbox: events committed with the work that published them, for the relay to send.
/// Every service database has one, and so has the platform database (the platform's own
/// events: deploys, rollbacks).
const OUTBOX_TABLE: &str = "CREATE TABLE IF NOT EXISTS micropay_platform.outbox (
    sequence BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL UNIQUE,
    topic VARCHAR(200) NOT NULL,
    source VARCHAR(100) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    data JSONB NOT NULL,
    trace_id VARCHAR(100),
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    relayed_at TIMESTAMPTZ
)";

/// Creates index `name` (qualified) with `create` only when it is missing. Provisioning runs at
/// every host's start, while other hosts serve: `CREATE INDEX IF NOT EXISTS` locks the table
/// against writes before it finds the index there.
pub fn index_if_missing(name: &str, create: &str) -> String {
    format!("DO $$ BEGIN IF pg_catalog.to_regclass({}) IS NULL THEN {create}; END IF; END $$", literal(name))
}

fn outbox_index() -> String {
    index_if_missing(
        "micropay_platform.outbox_unrelayed",
        "CREATE INDEX outbox_unrelayed ON micropay_platform.outbox (sequence) WHERE relayed_at IS NULL",
    )
}

/// Makes `platform` (a quoted role name) the owner of `object` (`TABLE name`, `FUNCTION
/// name(args)`) when it is not already. Provisioning runs at every host's start, while other
/// hosts serve: `ALTER ... OWNER` takes the table's exclusive lock even when nothing changes,
/// and taken in one transaction after another table's, it deadlocks with a unit of work that
/// holds the second and waits for the first (an inbox record, then an outbox append).
fn owned_by(kind: &str, name: &str, platform: &str) -> String {
    let owner = match kind {
        "TABLE" => format!("SELECT relowner FROM pg_catalog.pg_class WHERE oid = {}::regclass", literal(name)),
        "FUNCTION" => format!("SELECT proowner FROM pg_catalog.pg_proc WHERE oid = {}::regprocedure", literal(name)),
        other => unreachable!("no owner check for {other}"),
    };
    let alter = format!("ALTER {kind} {name} OWNER TO {platform}");
    format!(
        "DO $$ BEGIN IF ({owner}) IS DISTINCT FROM {}::regrole THEN EXECUTE {}; END IF; END $$",
        literal(platform),
        literal(&alter)
    )
}

fn platform_objects(role: &str, platform: &str) -> Vec<String> {
    let mut statements = vec![
        format!("CREATE SCHEMA IF NOT EXISTS {PLATFORM_SCHEMA} AUTHORIZATION {platform}"),
        format!("ALTER SCHEMA {PLATFORM_SCHEMA} OWNER TO {platform}"),
        OUTBOX_TABLE.to_string(),
        outbox_index(),
        "CREATE TABLE IF NOT EXISTS micropay_platform.inbox (
            event_id UUID PRIMARY KEY,
            topic VARCHAR(200) NOT NULL,
            source VARCHAR(100) NOT NULL,
            handled_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )"
        .to_string(),
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
        "CREATE TABLE IF NOT EXISTS micropay_platform.host_key (key_sha256 BYTEA PRIMARY KEY)".to_string(),
        // Presence moved to the platform database; an older installation kept it here.
        "DROP TABLE IF EXISTS micropay_platform.delivery_hosts".to_string(),
        "CREATE OR REPLACE FUNCTION micropay_platform.require_host(host_key BYTEA) RETURNS void
            LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            IF NOT EXISTS (SELECT FROM micropay_platform.host_key k WHERE k.key_sha256 = sha256(host_key)) THEN
                RAISE EXCEPTION 'only the host writes the platform''s tables' USING ERRCODE = '42501';
            END IF;
        END $$"
            .to_string(),
        "CREATE OR REPLACE FUNCTION micropay_platform.append_outbox(
            host_key BYTEA, event_ids UUID[], topics TEXT[], sources TEXT[], subjects TEXT[], data JSONB[],
            trace_ids TEXT[]) RETURNS void
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM micropay_platform.require_host(host_key);
            INSERT INTO micropay_platform.outbox (event_id, topic, source, subject, data, trace_id)
            SELECT e.event_id, e.topic, e.source, e.subject, e.data, e.trace_id
            FROM unnest(event_ids, topics, sources, subjects, data, trace_ids) WITH ORDINALITY
                 AS e(event_id, topic, source, subject, data, trace_id, position)
            ORDER BY e.position;
        END $$"
            .to_string(),
        "CREATE OR REPLACE FUNCTION micropay_platform.record_inbox(
            host_key BYTEA, event_ids UUID[], topics TEXT[], sources TEXT[]) RETURNS SETOF UUID
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM micropay_platform.require_host(host_key);
            RETURN QUERY
                WITH recorded AS (
                    INSERT INTO micropay_platform.inbox (event_id, topic, source)
                    SELECT * FROM unnest(event_ids, topics, sources)
                    ON CONFLICT DO NOTHING RETURNING inbox.event_id
                )
                SELECT recorded.event_id FROM recorded;
        END $$"
            .to_string(),
    ];
    for (kind, name) in [
        ("TABLE", "micropay_platform.outbox"),
        ("TABLE", "micropay_platform.inbox"),
        ("TABLE", "micropay_platform.dead_letters"),
        ("TABLE", "micropay_platform.host_key"),
        ("FUNCTION", "micropay_platform.require_host(BYTEA)"),
        ("FUNCTION", "micropay_platform.append_outbox(BYTEA, UUID[], TEXT[], TEXT[], TEXT[], JSONB[], TEXT[])"),
        ("FUNCTION", "micropay_platform.record_inbox(BYTEA, UUID[], TEXT[], TEXT[])"),
    ] {
        statements.push(owned_by(kind, name, platform));
    }
    statements.extend([
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA {PLATFORM_SCHEMA} FROM PUBLIC, {role}"),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {PLATFORM_SCHEMA} FROM PUBLIC, {role}"),
        format!("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {PLATFORM_SCHEMA} FROM PUBLIC, {role}"),
        format!("REVOKE ALL ON SCHEMA {PLATFORM_SCHEMA} FROM PUBLIC, {role}"),
        format!("GRANT USAGE ON SCHEMA {PLATFORM_SCHEMA} TO {role}"),
        format!(
            "GRANT EXECUTE ON FUNCTION \
             micropay_platform.append_outbox(BYTEA, UUID[], TEXT[], TEXT[], TEXT[], JSONB[], TEXT[]), \
             micropay_platform.record_inbox(BYTEA, UUID[], TEXT[], TEXT[]) TO {role}"
        ),
    ]);
    statements
}

/// Runs `statements` in one transaction.
async fn in_one_transaction(conn: &mut PgConnection, statements: &[String]) -> anyhow::Result<()> {
    admin_exec(conn, "BEGIN").await?;
    for statement in statements {
        if let Err(err) = admin_exec(conn, statement).await {
            admin_exec(conn, "ROLLBACK").await.ok();
            return Err(anyhow::Error::from(err).context(format!("running {}", statement.lines().next().unwrap_or(""))));
        }
    }
    admin_exec(conn, "COMMIT").await?;
    Ok(())
}

/// Creates `role` if missing and (re)sets what it may do: log in with `password`, nothing more.
async fn ensure_role(admin: &mut PgConnection, role: &str, password: &str) -> anyhow::Result<()> {
    if !exists(admin, "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", role).await? {
        tolerate_existing(admin_exec(admin, &format!("CREATE ROLE {} LOGIN", ident(role))).await)?;
    }
    let statement = format!(
        "ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD {}",
        ident(role),
        literal(password)
    );
    admin_exec(admin, &statement).await.with_context(|| format!("setting up role {role}"))
}

/// Creates `database` (owned by the administrator) if missing.
async fn ensure_database(admin: &mut PgConnection, database: &str) -> anyhow::Result<()> {
    if !exists(admin, "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", database).await? {
        let create = format!("CREATE DATABASE {} ENCODING 'UTF8'", ident(database));
        tolerate_existing(admin_exec(admin, &create).await).with_context(|| format!("creating {database}"))?;
    }
    Ok(())
}

/// A new installation secret: 32 random bytes, hex.
fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("system random generator: {err}"))?;
    Ok(hex::encode(bytes))
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
            if matches!(db.code().as_deref(), Some("42P04" | "42710" | "23505" | "42P06" | "42P07")) =>
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
