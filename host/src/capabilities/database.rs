//! `database`: the component's own PostgreSQL database, inside the invocation's unit of work.
//!
//! Invariants kept here:
//! - a component reaches exactly one pool, the one of its own database, bound by the host when
//!   the invocation starts; nothing in the contract names a database, so nothing can ask for
//!   another (and PostgreSQL refuses the component's role anywhere else);
//! - every statement of one invocation runs in one transaction, begun on first use and ended
//!   by [`UnitOfWork::finish`]: committed only when the invocation succeeded; rolled back in
//!   every other case, including a trap, a missed deadline, or a unit dropped unfinished;
//! - no statement outlives the invocation's deadline: the transaction begins with a
//!   `statement_timeout` of the time left, and a statement still running at the deadline traps
//!   the invocation, after which the platform role ends its backend (the component may change
//!   its own `statement_timeout`; the host does not depend on it);
//! - what queries return is bounded per invocation (`limits.max_query_rows`,
//!   `limits.max_query_mb`): the rows stream in, and the one that crosses a bound traps the
//!   invocation and ends its backend, so the host holds at most one row past the bound;
//! - session state never outlives the unit: the statement that ends it resets every setting,
//!   closes cursors, stops listening and releases session advisory locks, and a connection on
//!   which the component prepared statements of its own (SQL `PREPARE`) is closed, not reused;
//! - the platform's tables are written only by the host: the outbox and the inbox through the
//!   platform's functions, which demand the host key (see `postgres::provision`). The host's
//!   statements in the component's session are unnamed (never cached) and name
//!   `micropay_platform`, which the component's own statements may not: so no statement the
//!   component prepared can stand in for the host's and receive the key.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use rust_decimal::Decimal;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgColumn, PgConnection, PgQueryResult, PgRow, PgTypeInfo, PgValueRef};
use sqlx::{Arguments, Column, Executor, Postgres, Row, TypeInfo, ValueRef};
use tokio::time::Instant;
use wasmtime::component::Resource;

use crate::bus::{Envelope, EnvelopeColumns};
use crate::policy::Limits;
use crate::postgres::provision::PLATFORM_SCHEMA;
use crate::runtime::bindings::service::micropay::platform::database::{Host, HostConnection};
use crate::runtime::bindings::{DbError, RowSet, Value};
use crate::runtime::state::InvocationState;

/// SQLSTATE-like code for a call the host refused before it reached PostgreSQL.
const REFUSED: &str = "MP000";

/// The most events one unit of work may publish, and their data's total size.
const MAX_EVENTS_PER_UNIT: usize = 10_000;
const MAX_EVENT_BYTES_PER_UNIT: usize = 32 << 20;

/// How long ending a unit (the outbox rows, then the commit) may take before its outcome is
/// reported unknown. It is not bounded by the invocation's deadline: a commit under way finishes.
const END_TIMEOUT: Duration = Duration::from_secs(60);

/// Ends the unit's transaction and leaves nothing of the session behind. The reset runs inside
/// the transaction, before its COMMIT, so the commit is the last thing that can fail: an error
/// anywhere in this string means nothing was committed.
const RESET_AND_COMMIT: &str = "RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); \
    SELECT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql); COMMIT";
const ROLLBACK_AND_RESET: &str = "ROLLBACK; RESET ALL; CLOSE ALL; UNLISTEN *; \
    SELECT pg_catalog.pg_advisory_unlock_all(); \
    SELECT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)";

/// The `connection` resource. It carries nothing: every handle of an invocation shares that
/// invocation's [`UnitOfWork`].
pub struct Connection;

/// A service's database as the host holds it.
pub struct ServiceDatabase {
    /// The service role's pool: the components' units of work.
    pub pool: sqlx::PgPool,
    /// The platform role's pool on the same database: the host's own work there.
    pub platform: sqlx::PgPool,
    /// Presented to the platform's functions; the database keeps only its hash.
    pub host_key: Vec<u8>,
}

/// What an invocation's queries may return.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub rows: u64,
    pub bytes: u64,
}

impl From<&Limits> for QueryLimits {
    fn from(limits: &Limits) -> Self {
        Self { rows: limits.max_query_rows, bytes: u64::from(limits.max_query_mb) << 20 }
    }
}

/// A statement that ran into the invocation's deadline: the invocation is cut there.
#[derive(Debug, thiserror::Error)]
#[error("a database call was still running at the deadline")]
pub struct QueryDeadline;

/// Queries returned more than the invocation may hold: the invocation is cut there.
#[derive(Debug, thiserror::Error)]
#[error("queries returned more than the limit of {limit}")]
pub struct QueryLimit {
    pub limit: String,
}

/// Why a statement did not complete: an error the component sees, or a trap.
enum StatementError {
    Db(DbError),
    Trap(wasmtime::Error),
}

impl From<DbError> for StatementError {
    fn from(error: DbError) -> Self {
        StatementError::Db(error)
    }
}

/// Why a unit of work's end failed, and whether its work may nonetheless have been committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// PostgreSQL refused (a deferred constraint, an aborted transaction): nothing was written.
    #[error("the work was not committed: {0}")]
    NotCommitted(String),
    /// The connection failed while the commit was under way: it may or may not have happened.
    #[error("the commit's outcome is unknown: {0}")]
    Unknown(String),
}

/// One connection in use by a unit of work.
struct Session {
    connection: PoolConnection<Postgres>,
    /// Its backend, to end it from the platform role's connection.
    pid: i32,
    /// A statement was sent and its answer not read to the end: the connection is mid-result,
    /// and only ending its backend frees it.
    busy: bool,
}

/// The database side of one invocation (or of a batch of deliveries, invocation after
/// invocation).
pub struct UnitOfWork {
    database: Option<Arc<ServiceDatabase>>,
    session: Option<Session>,
    /// The current invocation's deadline.
    deadline: Instant,
    limits: QueryLimits,
    /// Rows and bytes returned to the current invocation.
    returned: (u64, u64),
    commit_on_error: bool,
    /// Events published in the unit, written to the outbox when it commits.
    staged: Vec<Envelope>,
    staged_bytes: usize,
}

impl UnitOfWork {
    /// A unit of work on `database`, or one with no database for a component granted none.
    /// Until [`UnitOfWork::start_invocation`], its deadline is `deadline`.
    pub fn new(database: Option<Arc<ServiceDatabase>>, deadline: Instant, limits: QueryLimits) -> Self {
        Self {
            database,
            session: None,
            deadline,
            limits,
            returned: (0, 0),
            commit_on_error: false,
            staged: Vec::new(),
            staged_bytes: 0,
        }
    }

    /// An invocation begins in this unit: its deadline and its own query limits.
    pub fn start_invocation(&mut self, deadline: Instant, limits: QueryLimits) {
        self.deadline = deadline;
        self.limits = limits;
        self.returned = (0, 0);
    }

    /// Whether the unit has a database.
    pub fn has_database(&self) -> bool {
        self.database.is_some()
    }

    /// Keeps `event` for the outbox, to be written if and only if the unit commits. Refuses
    /// (with the reason) once the unit holds too many.
    pub fn stage(&mut self, event: Envelope) -> Result<(), String> {
        if self.database.is_none() {
            return Err("this component is granted no database, so no outbox".into());
        }
        let size = event.data.to_string().len();
        if self.staged.len() >= MAX_EVENTS_PER_UNIT || self.staged_bytes + size > MAX_EVENT_BYTES_PER_UNIT {
            return Err(format!(
                "one unit of work publishes at most {MAX_EVENTS_PER_UNIT} events of {} MiB in all",
                MAX_EVENT_BYTES_PER_UNIT >> 20
            ));
        }
        self.staged_bytes += size;
        self.staged.push(event);
        Ok(())
    }

    /// Ends the unit: commits when `succeeded` (or when the component asked to keep its writes
    /// despite an error answer), rolls back otherwise. Returns whether it committed events. A
    /// unit that never touched the database costs nothing here. Not bounded by the
    /// invocation's deadline: a commit under way finishes, or its outcome is reported unknown.
    ///
    /// A transaction a failed statement left aborted cannot be committed (PostgreSQL would
    /// answer the COMMIT by rolling back): the first statement of the end fails on it, and the
    /// unit reports its work not committed rather than answer as if it were kept.
    pub async fn finish(mut self, succeeded: bool) -> Result<bool, CommitError> {
        let commit = succeeded || self.commit_on_error;
        if self.session.is_none() && commit && !self.staged.is_empty() {
            // Events published by work that touched nothing else still need a transaction.
            self.deadline = Instant::now() + END_TIMEOUT;
            if let Err(error) = self.session().await {
                return Err(CommitError::NotCommitted(match error {
                    StatementError::Db(error) => error.message,
                    StatementError::Trap(trap) => trap.to_string(),
                }));
            }
        }
        let Some(mut session) = self.session.take() else { return Ok(false) };
        let staged = std::mem::take(&mut self.staged);
        if session.busy {
            // Only a trap leaves a statement unread, and a trap never commits.
            self.end_backend(session);
            return Err(CommitError::NotCommitted("a statement was cut off".into()));
        }
        let host_key = self.database.as_ref().map(|database| database.host_key.clone()).unwrap_or_default();
        let ended = tokio::time::timeout(END_TIMEOUT, async {
            if commit && !staged.is_empty() {
                append_outbox(&mut session.connection, &host_key, &staged).await.map_err(end_error)?;
            }
            let end = if commit { RESET_AND_COMMIT } else { ROLLBACK_AND_RESET };
            ended_clean(&simple_query(&mut session.connection, end).await.map_err(end_error)?)
        })
        .await
        .unwrap_or_else(|_| Err(CommitError::Unknown("no answer in time".into())));
        let clean = match &ended {
            Ok(clean) => *clean,
            // Refused: nothing was committed, and the transaction is still open (aborted).
            Err(CommitError::NotCommitted(_)) => {
                let rolled_back =
                    tokio::time::timeout(END_TIMEOUT, simple_query(&mut session.connection, ROLLBACK_AND_RESET));
                matches!(rolled_back.await, Ok(Ok(rows)) if ended_clean(&rows).unwrap_or(false))
            }
            Err(CommitError::Unknown(_)) => false,
        };
        if !clean {
            // Its state unknown, or the component prepared statements on it: closed, which also
            // rolls back anything still open.
            session.connection.close_on_drop();
        }
        ended.map(|_| commit && !staged.is_empty())
    }

    /// Records a batch of delivered events in the inbox, first thing in the unit of work, so
    /// each record commits if and only if the handlers' work does; returns the ids recorded
    /// now (the others were there already: handled before, and must not take effect again).
    /// A concurrent delivery of the same event waits on the inbox's unique key until the first
    /// one commits or rolls back.
    pub async fn record_in_inbox(
        &mut self,
        events: &[(uuid::Uuid, &str, &str)],
    ) -> Result<HashSet<uuid::Uuid>, wasmtime::Error> {
        let ids: Vec<uuid::Uuid> = events.iter().map(|(id, _, _)| *id).collect();
        let topics: Vec<&str> = events.iter().map(|(_, topic, _)| *topic).collect();
        let sources: Vec<&str> = events.iter().map(|(_, _, source)| *source).collect();
        let host_key = self.database.as_ref().map(|database| database.host_key.clone()).unwrap_or_default();
        let deadline = self.deadline;
        let result = async {
            let session = self.session().await?;
            session.busy = true;
            let query = sqlx::query("SELECT * FROM micropay_platform.record_inbox($1, $2, $3, $4)")
                .persistent(false)
                .bind(&host_key)
                .bind(&ids)
                .bind(&topics)
                .bind(&sources);
            let recorded = tokio::time::timeout_at(deadline, fetch_all(&mut session.connection, query))
                .await
                .map_err(|_| StatementError::Trap(QueryDeadline.into()))?;
            session.busy = false;
            let recorded = recorded.map_err(db_error)?;
            Ok(recorded
                .iter()
                .map(|row| row.try_get::<uuid::Uuid, _>(0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_error)?)
        }
        .await;
        match result {
            Ok(recorded) => Ok(recorded.into_iter().collect()),
            Err(StatementError::Db(error)) => {
                Err(wasmtime::Error::msg(format!("recording in the inbox failed: {}: {}", error.code, error.message)))
            }
            Err(StatementError::Trap(trap)) => Err(trap),
        }
    }

    /// The unit's session: a pooled connection of the component's role, its transaction begun
    /// with a statement timeout of the time left. Waiting for a connection counts against the
    /// deadline.
    async fn session(&mut self) -> Result<&mut Session, StatementError> {
        if self.session.is_none() {
            let database = self.database.as_ref().ok_or_else(|| refused("this component is granted no database"))?;
            let deadline = self.deadline;
            let late = || StatementError::Trap(QueryDeadline.into());
            let mut connection = tokio::time::timeout_at(deadline, database.pool.acquire())
                .await
                .map_err(|_| late())?
                .map_err(db_error)?;
            let left = deadline.saturating_duration_since(Instant::now()).as_millis().max(1);
            let begin = format!("BEGIN; SET LOCAL statement_timeout = {left}; SELECT pg_catalog.pg_backend_pid()");
            let begun = tokio::time::timeout_at(deadline, simple_query(&mut connection, &begin)).await;
            let pid = match begun {
                Ok(Ok(rows)) => {
                    rows.first().map(|row| row.try_get::<i32, _>(0)).transpose().map_err(db_error)?.unwrap_or(0)
                }
                Ok(Err(err)) => {
                    connection.close_on_drop();
                    return Err(db_error(err).into());
                }
                Err(_) => {
                    connection.close_on_drop();
                    return Err(late());
                }
            };
            self.session = Some(Session { connection, pid, busy: false });
        }
        Ok(self.session.as_mut().expect("begun above"))
    }

    async fn run_query(&mut self, sql: &str, params: Vec<Value>) -> Result<RowSet, StatementError> {
        refuse_platform_names(sql)?;
        let arguments = arguments(params)?;
        let (deadline, limits, (mut rows_returned, mut bytes_returned)) = (self.deadline, self.limits, self.returned);
        let session = self.session().await?;
        session.busy = true;
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        // A row the contract cannot carry is the component's error; the rest of the result is
        // still read (within the bounds), so the connection is left between statements.
        let mut unconvertible = None;
        let mut stream = fetch_rows(&mut session.connection, sql, arguments);
        let outcome = loop {
            let next = tokio::time::timeout_at(deadline, stream.try_next())
                .await
                .map_err(|_| StatementError::Trap(QueryDeadline.into()))?;
            let row = match next {
                Ok(Some(row)) => row,
                Ok(None) => break unconvertible.map_or(Ok(()), Err),
                Err(err) => break Err(db_error(err)),
            };
            rows_returned += 1;
            bytes_returned += raw_size(&row);
            if rows_returned > limits.rows {
                let limit = format!("{} rows", limits.rows);
                return Err(StatementError::Trap(QueryLimit { limit }.into()));
            }
            if bytes_returned > limits.bytes {
                let limit = format!("{} MiB", limits.bytes >> 20);
                return Err(StatementError::Trap(QueryLimit { limit }.into()));
            }
            if unconvertible.is_some() {
                continue;
            }
            if columns.is_empty() {
                columns = row.columns().iter().map(|c| c.name().to_string()).collect();
            }
            match row.columns().iter().map(|column| value(&row, column)).collect::<Result<Vec<_>, _>>() {
                Ok(values) => rows.push(values),
                Err(error) => unconvertible = Some(error),
            }
        };
        drop(stream);
        session.busy = false;
        self.returned = (rows_returned, bytes_returned);
        outcome?;
        Ok(RowSet { columns, rows })
    }

    async fn run_execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, StatementError> {
        refuse_platform_names(sql)?;
        let arguments = arguments(params)?;
        let deadline = self.deadline;
        let session = self.session().await?;
        session.busy = true;
        let done = tokio::time::timeout_at(deadline, execute(&mut session.connection, sql, arguments))
            .await
            .map_err(|_| StatementError::Trap(QueryDeadline.into()))?;
        session.busy = false;
        Ok(done.map_err(db_error)?.rows_affected())
    }

    /// Ends the backend of a session cut off mid-statement (its statement stops on the server)
    /// and closes the connection, from a task of its own: the caller goes on at once.
    fn end_backend(&self, mut session: Session) {
        session.connection.close_on_drop();
        let Some(database) = self.database.clone() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let ended = sqlx::query("SELECT pg_catalog.pg_terminate_backend($1)")
                .bind(session.pid)
                .execute(&database.platform)
                .await;
            if let Err(err) = ended {
                tracing::warn!(pid = session.pid, "ending a backend cut off at the deadline failed: {err}");
            }
            drop(session);
        });
    }
}

impl Drop for UnitOfWork {
    /// A unit dropped unfinished (a trap, a deadline, a caller gone) rolls back: a statement
    /// still running has its backend ended; otherwise the session is rolled back and reset in
    /// a task of its own, and returned to the pool only if that went well.
    fn drop(&mut self) {
        let Some(mut session) = self.session.take() else { return };
        if session.busy {
            self.end_backend(session);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            session.connection.close_on_drop();
            return;
        };
        runtime.spawn(async move {
            let reset = simple_query(&mut session.connection, ROLLBACK_AND_RESET).await;
            let clean =
                matches!(reset, Ok(rows) if rows.last().and_then(|row| row.try_get::<bool, _>(0).ok()) == Some(false));
            if !clean {
                session.connection.close_on_drop();
            }
        });
    }
}

/// Writes the unit's events to the outbox, in the order published, with one call.
async fn append_outbox(connection: &mut PgConnection, host_key: &[u8], events: &[Envelope]) -> Result<(), sqlx::Error> {
    let columns = EnvelopeColumns::of(events);
    let query = sqlx::query("SELECT micropay_platform.append_outbox($1, $2, $3, $4, $5, $6, $7)")
        .persistent(false)
        .bind(host_key)
        .bind(&columns.ids)
        .bind(&columns.topics)
        .bind(&columns.sources)
        .bind(&columns.subjects)
        .bind(&columns.data)
        .bind(&columns.traces);
    fetch_all(connection, query).await.map(drop)
}

// sqlx's calls with their lifetimes spelled out, so that the futures holding them are `Send`
// whatever lifetimes their callers have.

fn fetch_rows<'c>(
    connection: &'c mut PgConnection,
    sql: &'c str,
    arguments: PgArguments,
) -> BoxStream<'c, Result<PgRow, sqlx::Error>> {
    connection.fetch(sqlx::query_with(sql, arguments))
}

fn fetch_all<'c>(
    connection: &'c mut PgConnection,
    query: sqlx::query::Query<'c, Postgres, PgArguments>,
) -> BoxFuture<'c, Result<Vec<PgRow>, sqlx::Error>> {
    connection.fetch_all(query)
}

fn execute<'c>(
    connection: &'c mut PgConnection,
    sql: &'c str,
    arguments: PgArguments,
) -> BoxFuture<'c, Result<PgQueryResult, sqlx::Error>> {
    connection.execute(sqlx::query_with(sql, arguments))
}

/// A simple-protocol query: several statements in one round trip, no parameters.
fn simple_query<'c>(connection: &'c mut PgConnection, sql: &'c str) -> BoxFuture<'c, Result<Vec<PgRow>, sqlx::Error>> {
    connection.fetch_all(sqlx::raw_sql(sql))
}

/// Whether the end of a unit left its session fit to reuse: the last row of the end's
/// statements says whether the component prepared statements of its own on it.
fn ended_clean(rows: &[PgRow]) -> Result<bool, CommitError> {
    let prepared_by_component = rows.last().map(|row| row.try_get::<bool, _>(0)).transpose().map_err(end_error)?;
    Ok(prepared_by_component == Some(false))
}

/// An error ending a unit: PostgreSQL's refusal means nothing was committed; anything else
/// (the connection lost) leaves the outcome unknown.
fn end_error(err: sqlx::Error) -> CommitError {
    match err {
        sqlx::Error::Database(db) => CommitError::NotCommitted(db.message().to_string()),
        other => CommitError::Unknown(other.to_string()),
    }
}

/// A component's statement may not name what is in the platform's schema the way the host's
/// statements do (`micropay_platform.`), so none can coincide with a host statement, and in the
/// connection's statement cache stand in for it. (Any other way of naming it is PostgreSQL's to
/// refuse: the schema is the platform role's.)
fn refuse_platform_names(sql: &str) -> Result<(), DbError> {
    if sql.to_ascii_lowercase().contains(&format!("{PLATFORM_SCHEMA}.")) {
        return Err(refused("micropay_platform belongs to the host: a component's statement may not name it"));
    }
    Ok(())
}

impl Host for InvocationState {
    async fn open(&mut self) -> wasmtime::Result<Result<Resource<Connection>, DbError>> {
        if !self.unit.has_database() {
            return Ok(Err(refused("this component is granted no database")));
        }
        Ok(Ok(self.table.push(Connection)?))
    }
}

impl HostConnection for InvocationState {
    async fn query(
        &mut self,
        _: Resource<Connection>,
        sql: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<RowSet, DbError>> {
        match self.unit.run_query(&sql, params).await {
            Ok(rows) => Ok(Ok(rows)),
            Err(StatementError::Db(error)) => Ok(Err(error)),
            Err(StatementError::Trap(trap)) => Err(trap),
        }
    }

    async fn execute(
        &mut self,
        _: Resource<Connection>,
        sql: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, DbError>> {
        match self.unit.run_execute(&sql, params).await {
            Ok(count) => Ok(Ok(count)),
            Err(StatementError::Db(error)) => Ok(Err(error)),
            Err(StatementError::Trap(trap)) => Err(trap),
        }
    }

    async fn commit_on_error(&mut self, _: Resource<Connection>) -> wasmtime::Result<()> {
        self.unit.commit_on_error = true;
        Ok(())
    }

    async fn drop(&mut self, handle: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

/// SQL `NULL` with no declared type (OID 0), so PostgreSQL infers it from the statement
/// exactly as it would for a literal `NULL`.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

fn arguments(params: Vec<Value>) -> Result<PgArguments, DbError> {
    let mut arguments = PgArguments::default();
    for (index, value) in params.into_iter().enumerate() {
        let position = index + 1;
        let bad = |what: &str| refused(&format!("parameter ${position} is not a valid {what}"));
        let added = match value {
            Value::Null => arguments.add(UntypedNull),
            Value::Boolean(b) => arguments.add(b),
            Value::Integer(i) => arguments.add(i),
            Value::Decimal(text) => arguments.add(Decimal::from_str(&text).map_err(|_| bad("decimal"))?),
            Value::Text(text) => arguments.add(text),
            Value::Uuid(text) => arguments.add(uuid::Uuid::parse_str(&text).map_err(|_| bad("uuid"))?),
            Value::Timestamp(micros) => {
                arguments.add(DateTime::from_timestamp_micros(micros).ok_or_else(|| bad("timestamp"))?.naive_utc())
            }
            Value::Json(text) => arguments.add(
                serde_json::from_str::<serde_json::Value>(&text)
                    .map(sqlx::types::Json)
                    .map_err(|_| bad("JSON document"))?,
            ),
            Value::Bytes(bytes) => arguments.add(bytes),
        };
        added.map_err(|err| refused(&format!("parameter ${position}: {err}")))?;
    }
    Ok(arguments)
}

/// The bytes of a row as PostgreSQL sent it.
fn raw_size(row: &PgRow) -> u64 {
    (0..row.len())
        .map(|index| row.try_get_raw(index).ok().and_then(|raw| raw.as_bytes().ok()).map_or(0, <[u8]>::len) as u64)
        .sum()
}

fn value(row: &PgRow, column: &PgColumn) -> Result<Value, DbError> {
    let index = column.ordinal();
    let raw: PgValueRef<'_> = row.try_get_raw(index).map_err(db_error)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let decode_error = |err: sqlx::Error| db_error(err);
    let value = match column.type_info().name() {
        "BOOL" => Value::Boolean(row.try_get(index).map_err(decode_error)?),
        "INT2" => Value::Integer(row.try_get::<i16, _>(index).map_err(decode_error)?.into()),
        "INT4" => Value::Integer(row.try_get::<i32, _>(index).map_err(decode_error)?.into()),
        "INT8" => Value::Integer(row.try_get(index).map_err(decode_error)?),
        "NUMERIC" => Value::Decimal(row.try_get::<Decimal, _>(index).map_err(decode_error)?.to_string()),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => Value::Text(row.try_get(index).map_err(decode_error)?),
        "UUID" => Value::Uuid(row.try_get::<uuid::Uuid, _>(index).map_err(decode_error)?.to_string()),
        "TIMESTAMP" => {
            Value::Timestamp(row.try_get::<NaiveDateTime, _>(index).map_err(decode_error)?.and_utc().timestamp_micros())
        }
        "TIMESTAMPTZ" => {
            Value::Timestamp(row.try_get::<DateTime<Utc>, _>(index).map_err(decode_error)?.timestamp_micros())
        }
        "DATE" => Value::Text(row.try_get::<NaiveDate, _>(index).map_err(decode_error)?.to_string()),
        "JSON" | "JSONB" => Value::Json(
            row.try_get::<sqlx::types::Json<serde_json::Value>, _>(index).map_err(decode_error)?.0.to_string(),
        ),
        "BYTEA" => Value::Bytes(row.try_get(index).map_err(decode_error)?),
        other => {
            return Err(refused(&format!(
                "column {:?} has type {other}, which the contract does not carry; cast it in SQL",
                column.name()
            )));
        }
    };
    Ok(value)
}

fn refused(message: &str) -> DbError {
    DbError { code: REFUSED.to_string(), message: message.to_string(), constraint: None }
}

/// Translates a sqlx error into the contract's error, keeping PostgreSQL's SQLSTATE.
fn db_error(err: sqlx::Error) -> DbError {
    match &err {
        sqlx::Error::Database(db) => DbError {
            code: db.code().map(|c| c.into_owned()).unwrap_or_else(|| "XX000".into()),
            message: db.message().to_string(),
            constraint: db.constraint().map(str::to_string),
        },
        sqlx::Error::PoolTimedOut => DbError {
            code: "53300".into(),
            message: "no database connection became free in time".into(),
            constraint: None,
        },
        _ => DbError { code: "58000".into(), message: err.to_string(), constraint: None },
    }
}
