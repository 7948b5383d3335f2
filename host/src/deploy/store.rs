//! The version store, in the platform database: every version of every component (its bytes,
//! content-addressed; its policy; who deployed it, when, why, signed by whom) and which
//! version of each is active.
//!
//! Invariants kept here:
//! - a component that has versions and is served has exactly one active version: the pointer
//!   in `active_versions` changes in the same transaction that adds the version it points to,
//!   so a host killed during a deploy leaves the old version active or the new one, never
//!   none;
//! - a version, once stored, never changes: a rollback moves the pointer back, a redeploy of
//!   the same bytes and policy is a new number;
//! - deploys of one component are serialised (the pointer's row lock), so version numbers
//!   follow one another;
//! - every change of a pointer notifies [`CHANNEL`] in its transaction, with the component's
//!   name: every host listening hears of it once it has committed;
//! - every change of a pointer, and every refusal, is a `platform.component_*` event in the
//!   platform database's outbox, written in the same transaction as the change: the relay
//!   takes it to the bus, and the audit trail records it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// The channel on which the platform database announces a change of active version.
pub const CHANNEL: &str = "micropay_versions";

/// Serialises creating the store's tables when hosts start at once.
const SCHEMA_LOCK: i64 = 0x4d50_0005;

/// What happened to a component, as the platform's event says: its topic, and its data.
pub struct PlatformEvent {
    /// `platform.component_deployed`, `..._rolled_back`, `..._refused`, ...
    pub topic: &'static str,
    pub component: String,
    pub data: serde_json::Value,
}

/// Why a new service was not stored.
pub enum NewServiceRefusal {
    /// Its policy does not fit beside an active service's (the reason).
    Incompatible(String),
    /// Another deploy made it a served service first.
    Served,
}

/// A stored version, without its bytes.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StoredVersion {
    pub component: String,
    pub version: i64,
    /// SHA-256 of the component's bytes.
    pub digest: String,
    /// The policy's text.
    pub policy: String,
    /// The Ed25519 signature over the digest (base64), if the deploy was signed.
    pub signature: Option<String>,
    /// The id of the key that signed it.
    pub signed_by: Option<String>,
    /// The admin key id of the deployer (`files` for a version read from the host's files).
    pub deployed_by: String,
    /// The deployer's role.
    pub deployer_role: Option<String>,
    pub deployed_at: DateTime<Utc>,
    pub note: Option<String>,
    /// Whether it is the component's active version.
    pub active: bool,
    /// Whether it is the component's version on trial.
    pub canary: bool,
}

/// How a version on trial is judged: the share of callers it serves, how much higher its
/// error rate may be than the active version's, and after how many of its invocations.
#[derive(Debug, Clone, Copy, Serialize, sqlx::FromRow)]
pub struct CanaryPlan {
    #[sqlx(rename = "canary_percent")]
    pub percent: i32,
    #[sqlx(rename = "canary_margin")]
    pub margin: f64,
    #[sqlx(rename = "canary_min_requests")]
    pub min_requests: i64,
}

/// A component's version on trial.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredCanary {
    #[sqlx(flatten)]
    pub version: StoredVersion,
    #[sqlx(flatten)]
    pub plan: CanaryPlan,
}

/// What a deploy adds.
pub struct NewVersion<'a> {
    pub component: &'a str,
    pub bytes: &'a [u8],
    pub digest: &'a str,
    pub policy: &'a str,
    pub signature: Option<&'a str>,
    pub signed_by: Option<&'a str>,
    pub deployed_by: &'a str,
    pub deployer_role: Option<&'a str>,
    pub note: Option<&'a str>,
}

const COLUMNS: &str = "v.component, v.version, v.digest, v.policy, v.signature, v.signed_by, v.deployed_by, \
     v.deployer_role, v.deployed_at, v.note, (a.version IS NOT DISTINCT FROM v.version) AS active, \
     (a.canary_version IS NOT DISTINCT FROM v.version) AS canary";

/// The store, through the platform role's pool on the platform database.
#[derive(Clone)]
pub struct VersionStore {
    pool: PgPool,
}

impl VersionStore {
    /// Opens the store, creating its tables if the installation is new.
    pub async fn open(pool: PgPool) -> anyhow::Result<Self> {
        let mut transaction = pool.begin().await?;
        sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock($1)").bind(SCHEMA_LOCK).execute(&mut *transaction).await?;
        for statement in [
            "CREATE TABLE IF NOT EXISTS micropay_platform.artifacts (
                digest TEXT PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{64}$'),
                bytes BYTEA NOT NULL,
                stored_at TIMESTAMPTZ NOT NULL DEFAULT pg_catalog.now()
            )",
            "CREATE TABLE IF NOT EXISTS micropay_platform.component_versions (
                component TEXT NOT NULL,
                version BIGINT NOT NULL CHECK (version > 0),
                digest TEXT NOT NULL REFERENCES micropay_platform.artifacts (digest),
                policy TEXT NOT NULL,
                signature TEXT,
                signed_by TEXT,
                deployed_by TEXT NOT NULL,
                deployer_role TEXT,
                deployed_at TIMESTAMPTZ NOT NULL DEFAULT pg_catalog.now(),
                note TEXT,
                PRIMARY KEY (component, version)
            )",
            "CREATE TABLE IF NOT EXISTS micropay_platform.active_versions (
                component TEXT PRIMARY KEY,
                version BIGINT NOT NULL,
                activated_by TEXT NOT NULL,
                activated_at TIMESTAMPTZ NOT NULL DEFAULT pg_catalog.now(),
                FOREIGN KEY (component, version) REFERENCES micropay_platform.component_versions
            )",
            // A version on trial beside the active one, and how it is judged.
            "ALTER TABLE micropay_platform.active_versions
                ADD COLUMN IF NOT EXISTS canary_version BIGINT,
                ADD COLUMN IF NOT EXISTS canary_percent INT CHECK (canary_percent BETWEEN 1 AND 99),
                ADD COLUMN IF NOT EXISTS canary_margin DOUBLE PRECISION,
                ADD COLUMN IF NOT EXISTS canary_min_requests BIGINT",
        ] {
            sqlx::query(statement).execute(&mut *transaction).await?;
        }
        transaction.commit().await?;
        Ok(Self { pool })
    }

    /// Every component's active version.
    pub async fn active(&self) -> anyhow::Result<Vec<StoredVersion>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM micropay_platform.active_versions a \
             JOIN micropay_platform.component_versions v USING (component, version) ORDER BY v.component"
        );
        Ok(sqlx::query_as(&sql).fetch_all(&self.pool).await?)
    }

    /// The active version of `component`, if it is served.
    pub async fn active_of(&self, component: &str) -> anyhow::Result<Option<StoredVersion>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM micropay_platform.active_versions a \
             JOIN micropay_platform.component_versions v USING (component, version) WHERE v.component = $1"
        );
        Ok(sqlx::query_as(&sql).bind(component).fetch_optional(&self.pool).await?)
    }

    /// The version of `component` on trial, if any.
    pub async fn canary_of(&self, component: &str) -> anyhow::Result<Option<StoredCanary>> {
        let sql = format!(
            "SELECT {COLUMNS}, a.canary_percent, a.canary_margin, a.canary_min_requests \
             FROM micropay_platform.active_versions a \
             JOIN micropay_platform.component_versions v ON v.component = a.component AND v.version = a.canary_version \
             WHERE a.component = $1"
        );
        Ok(sqlx::query_as(&sql).bind(component).fetch_optional(&self.pool).await?)
    }

    /// Every version of `component`, newest first.
    pub async fn versions(&self, component: &str) -> anyhow::Result<Vec<StoredVersion>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM micropay_platform.component_versions v \
             LEFT JOIN micropay_platform.active_versions a USING (component) \
             WHERE v.component = $1 ORDER BY v.version DESC"
        );
        Ok(sqlx::query_as(&sql).bind(component).fetch_all(&self.pool).await?)
    }

    /// One version of `component`.
    pub async fn version(&self, component: &str, version: i64) -> anyhow::Result<Option<StoredVersion>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM micropay_platform.component_versions v \
             LEFT JOIN micropay_platform.active_versions a USING (component) \
             WHERE v.component = $1 AND v.version = $2"
        );
        Ok(sqlx::query_as(&sql).bind(component).bind(version).fetch_optional(&self.pool).await?)
    }

    /// Whether some version of `component` has these bytes and this policy.
    pub async fn holds(&self, component: &str, digest: &str, policy: &str) -> anyhow::Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM micropay_platform.component_versions \
             WHERE component = $1 AND digest = $2 AND policy = $3 LIMIT 1",
        )
        .bind(component)
        .bind(digest)
        .bind(policy)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// The bytes of the component with `digest`.
    pub async fn bytes(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let bytes = sqlx::query_scalar("SELECT bytes FROM micropay_platform.artifacts WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        bytes.ok_or_else(|| anyhow::anyhow!("the version store holds no component with digest {digest}"))
    }

    /// Stores `new` as the next version of its component and makes it the active one, in one
    /// transaction, unless `expected` (the version the deployer checked against) is no longer
    /// the active one: then nothing is stored and the active version is returned as the error.
    /// `event` makes the platform's event of the new version, stored with it.
    pub async fn deploy(
        &self,
        new: &NewVersion<'_>,
        expected: Option<i64>,
        canary: Option<CanaryPlan>,
        event: impl FnOnce(i64) -> PlatformEvent,
    ) -> anyhow::Result<Result<i64, Option<i64>>> {
        let mut transaction = self.pool.begin().await?;
        // Deploys of one component take turns on its pointer (created first if need be).
        let active = lock_pointer(&mut transaction, new.component).await?;
        if active != expected {
            return Ok(Err(active));
        }
        let version = insert_version(&mut transaction, new).await?;
        match canary {
            None => point(&mut transaction, new.component, version, new.deployed_by).await?,
            Some(plan) => {
                sqlx::query(
                    "UPDATE micropay_platform.active_versions SET canary_version = $2, canary_percent = $3, \
                         canary_margin = $4, canary_min_requests = $5 WHERE component = $1",
                )
                .bind(new.component)
                .bind(version)
                .bind(plan.percent)
                .bind(plan.margin)
                .bind(plan.min_requests)
                .execute(&mut *transaction)
                .await?;
                notify(&mut transaction, new.component).await?;
                // (The pointer exists: `expected` named an active version, checked above.)
            }
        }
        append_event(&mut transaction, &event(version)).await?;
        transaction.commit().await?;
        Ok(Ok(version))
    }

    /// Stores `new`, the first version of a service no host serves, and makes it active, if
    /// `fits` accepts the policy of every other active service; deploys of new services take
    /// turns on an installation-wide lock, so that two of them cannot both take one database
    /// (or both be the identity provider). The error says why nothing was stored.
    pub async fn deploy_new(
        &self,
        new: &NewVersion<'_>,
        fits: impl Fn(&str) -> Result<(), String>,
        event: impl FnOnce(i64) -> PlatformEvent,
    ) -> anyhow::Result<Result<i64, NewServiceRefusal>> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK + 2)
            .execute(&mut *transaction)
            .await?;
        let others: Vec<String> = sqlx::query_scalar(
            "SELECT v.policy FROM micropay_platform.active_versions a \
             JOIN micropay_platform.component_versions v USING (component, version) WHERE a.component <> $1",
        )
        .bind(new.component)
        .fetch_all(&mut *transaction)
        .await?;
        if let Some(reason) = others.iter().find_map(|policy| fits(policy).err()) {
            return Ok(Err(NewServiceRefusal::Incompatible(reason)));
        }
        if lock_pointer(&mut transaction, new.component).await?.is_some() {
            return Ok(Err(NewServiceRefusal::Served));
        }
        let version = insert_version(&mut transaction, new).await?;
        point(&mut transaction, new.component, version, new.deployed_by).await?;
        append_event(&mut transaction, &event(version)).await?;
        transaction.commit().await?;
        Ok(Ok(version))
    }

    /// Makes stored `version` of `component` the active one (a rollback), by `who`, unless
    /// `expected` (the version the rollback was checked against) is no longer the active one:
    /// then nothing changes and the active version is returned as the error.
    pub async fn activate(
        &self,
        component: &str,
        expected: i64,
        version: i64,
        who: &str,
        event: &PlatformEvent,
    ) -> anyhow::Result<Result<(), Option<i64>>> {
        let mut transaction = self.pool.begin().await?;
        let active = lock_pointer(&mut transaction, component).await?;
        if active != Some(expected) {
            return Ok(Err(active));
        }
        point(&mut transaction, component, version, who).await?;
        append_event(&mut transaction, event).await?;
        transaction.commit().await?;
        Ok(Ok(()))
    }

    /// Makes the version on trial the active one; answers it, or none when no trial runs.
    pub async fn promote(
        &self,
        component: &str,
        canary: i64,
        who: &str,
        event: impl FnOnce(i64) -> PlatformEvent,
    ) -> anyhow::Result<Option<i64>> {
        let mut transaction = self.pool.begin().await?;
        lock_pointer(&mut transaction, component).await?;
        let promoted: Option<i64> = sqlx::query_scalar(
            "UPDATE micropay_platform.active_versions SET version = canary_version, activated_by = $2, \
                 activated_at = pg_catalog.now(), canary_version = NULL, canary_percent = NULL, \
                 canary_margin = NULL, canary_min_requests = NULL \
             WHERE component = $1 AND canary_version = $3 RETURNING version",
        )
        .bind(component)
        .bind(who)
        .bind(canary)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(version) = promoted {
            notify(&mut transaction, component).await?;
            append_event(&mut transaction, &event(version)).await?;
        }
        transaction.commit().await?;
        Ok(promoted)
    }

    /// Ends the trial of `version` of `component`, the active version staying; false when that
    /// trial was over already (another host, or the operator, ended it).
    pub async fn end_canary(&self, component: &str, version: i64, event: &PlatformEvent) -> anyhow::Result<bool> {
        let mut transaction = self.pool.begin().await?;
        let ended = sqlx::query(
            "UPDATE micropay_platform.active_versions SET canary_version = NULL, canary_percent = NULL, \
                 canary_margin = NULL, canary_min_requests = NULL \
             WHERE component = $1 AND canary_version = $2",
        )
        .bind(component)
        .bind(version)
        .execute(&mut *transaction)
        .await?
        .rows_affected()
            > 0;
        if ended {
            notify(&mut transaction, component).await?;
            append_event(&mut transaction, event).await?;
        }
        transaction.commit().await?;
        Ok(ended)
    }

    /// Records `event` (a refusal: nothing else changed).
    pub async fn record(&self, event: &PlatformEvent) -> anyhow::Result<()> {
        let mut connection = self.pool.acquire().await?;
        append_event(&mut connection, event).await
    }

    /// The platform role's pool on the platform database (the relay of its outbox shares it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stops serving `component`: no version is active any more (they all stay stored).
    pub async fn deactivate(&self, component: &str, event: &PlatformEvent) -> anyhow::Result<bool> {
        let mut transaction = self.pool.begin().await?;
        lock_pointer(&mut transaction, component).await?;
        let removed = sqlx::query("DELETE FROM micropay_platform.active_versions WHERE component = $1")
            .bind(component)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        notify(&mut transaction, component).await?;
        if removed > 0 {
            append_event(&mut transaction, event).await?;
        }
        transaction.commit().await?;
        Ok(removed > 0)
    }

    /// A connection listening on [`CHANNEL`], taken from the pool for as long as it listens.
    pub async fn listen(&self) -> anyhow::Result<sqlx::postgres::PgListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}

/// Locks `component`'s pointer row for the transaction (taking turns with other deploys of
/// it) and returns the version it points to. A component never deployed has no row: the lock
/// is then an advisory one on its name.
async fn lock_pointer(transaction: &mut sqlx::PgConnection, component: &str) -> anyhow::Result<Option<i64>> {
    sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))")
        .bind((SCHEMA_LOCK + 1) as i32)
        .bind(component)
        .execute(&mut *transaction)
        .await?;
    let active = sqlx::query_scalar("SELECT version FROM micropay_platform.active_versions WHERE component = $1")
        .bind(component)
        .fetch_optional(&mut *transaction)
        .await?;
    Ok(active)
}

/// Points `component` at `version`, ending any trial.
async fn point(transaction: &mut sqlx::PgConnection, component: &str, version: i64, who: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO micropay_platform.active_versions (component, version, activated_by) VALUES ($1, $2, $3) \
         ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, \
             activated_by = EXCLUDED.activated_by, activated_at = pg_catalog.now(), canary_version = NULL, \
             canary_percent = NULL, canary_margin = NULL, canary_min_requests = NULL",
    )
    .bind(component)
    .bind(version)
    .bind(who)
    .execute(&mut *transaction)
    .await?;
    notify(transaction, component).await
}

async fn notify(transaction: &mut sqlx::PgConnection, component: &str) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_catalog.pg_notify($1, $2)").bind(CHANNEL).bind(component).execute(&mut *transaction).await?;
    Ok(())
}

/// Appends `event` to the platform database's outbox, as the platform's.
async fn append_event(connection: &mut sqlx::PgConnection, event: &PlatformEvent) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO micropay_platform.outbox (event_id, topic, source, subject, data) \
         VALUES ($1, $2, 'platform', $3, $4)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(event.topic)
    .bind(&event.component)
    .bind(&event.data)
    .execute(connection)
    .await?;
    Ok(())
}

/// Stores `new`'s bytes (once per digest) and `new` as the next version of its component;
/// answers its number.
async fn insert_version(transaction: &mut sqlx::PgConnection, new: &NewVersion<'_>) -> anyhow::Result<i64> {
    sqlx::query(
        "INSERT INTO micropay_platform.artifacts (digest, bytes) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
    )
    .bind(new.digest)
    .bind(new.bytes)
    .execute(&mut *transaction)
    .await?;
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO micropay_platform.component_versions \
                 (component, version, digest, policy, signature, signed_by, deployed_by, deployer_role, note) \
             SELECT $1, COALESCE(pg_catalog.max(version), 0) + 1, $2, $3, $4, $5, $6, $7, $8 \
             FROM micropay_platform.component_versions WHERE component = $1 \
             RETURNING version",
    )
    .bind(new.component)
    .bind(new.digest)
    .bind(new.policy)
    .bind(new.signature)
    .bind(new.signed_by)
    .bind(new.deployed_by)
    .bind(new.deployer_role)
    .bind(new.note)
    .fetch_one(&mut *transaction)
    .await?;
    Ok(version)
}
