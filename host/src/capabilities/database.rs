//! `database`: the component's own PostgreSQL database, inside the invocation's unit of work.
//!
//! Invariants kept here:
//! - a component reaches exactly one pool, the one of its own database, bound by the host when
//!   the invocation starts; nothing in the contract names a database, so nothing can ask for
//!   another (and PostgreSQL refuses the component's role anywhere else);
//! - every statement of one invocation runs in one transaction, begun on first use and ended
//!   by [`UnitOfWork::finish`]: committed only when the invocation succeeded; rolled back in
//!   every other case, including a trap, a missed deadline, or a unit dropped unfinished. A
//!   component that ends the transaction itself (its own `COMMIT`, also `AND CHAIN`) is
//!   stopped at once, and its answer says its work may or may not have been kept;
//! - no statement outlives the invocation's deadline: the transaction begins with a
//!   `statement_timeout` of the time left (its `BEGIN` and `SET LOCAL` go with the first
//!   statement, before the same Sync, and the statement runs only if they did: see
//!   `vendor/sqlx-postgres/PATCHES.md`), and a statement still running at the deadline traps
//!   the invocation, after which its backend is ended from the platform database (the
//!   component may change its own `statement_timeout`; the host does not depend on it). The
//!   commit is not cut at the deadline, but has a bound of its own (the policy's deadline
//!   again): its deferred triggers run under it and are cancelled past it on the server, and a
//!   commit that does not answer within it (and a grace) has its backend ended;
//! - what queries return is bounded per invocation (`limits.max_query_rows`,
//!   `limits.max_query_mb`): the rows stream in and the one that crosses a bound traps the
//!   invocation; no message from the server is buffered past 64 MiB (the driver refuses it),
//!   and no statement text past 256 KiB is sent;
//! - a connection whose state is not known (a statement cut off, an answer the driver could
//!   not read) is never returned to the pool: its backend is ended;
//! - a pooled connection is handed to a unit without a check only when its server answered on
//!   it within the last second; one that waited longer is checked first, and dropped if its
//!   backend is gone (`RECENTLY_READY` in `vendor/sqlx-postgres/PATCHES.md`). A backend ended
//!   within that second fails the unit's first statement, which began nothing that can commit;
//! - session state never outlives the unit: after its COMMIT or ROLLBACK the unit resets every
//!   setting, closes cursors, stops listening and releases session advisory locks, catching
//!   what the commit's own deferred triggers did too; a connection on which the component
//!   prepared statements of its own (SQL `PREPARE`) is closed, not reused;
//! - the platform's tables are written only by the host: the outbox and the inbox through the
//!   platform's functions, which demand the host key (see `postgres::provision`). The host's
//!   statements in the component's session are never cached and name `micropay_platform.`,
//!   which the component's own statements may not: so no statement the component prepared can
//!   stand in for the host's and receive the key; and they run with
//!   `log_parameter_max_length_on_error = 0`, so no error of theirs puts the key in the
//!   server's log. The driver never asks the session's catalog about types (see
//!   `vendor/sqlx-postgres/PATCHES.md`): a component's session can make its catalog lie.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use rust_decimal::Decimal;
use sqlx::Either;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgArguments, PgColumn, PgConnection, PgDatabaseError, PgQueryResult, PgRow, PgSeverity, PgTypeInfo, PgValueRef,
};
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

/// The longest statement a component may send.
const MAX_STATEMENT_BYTES: usize = 256 << 10;

/// The most events one unit of work may publish, and their data's total size.
const MAX_EVENTS_PER_UNIT: usize = 10_000;
const MAX_EVENT_BYTES_PER_UNIT: usize = 32 << 20;

/// Beyond the commit's own bound on the server, how long the host waits for its answer before
/// reporting the outcome unknown (and ending the backend).
const END_GRACE: Duration = Duration::from_secs(5);

/// How long resetting a session given up by a trap may take before its backend is ended.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

/// What the end of a unit runs after its COMMIT or ROLLBACK, in the same round trip: nothing
/// of the session outlives the unit; the row's second column ([`PREPARED_COLUMN`]) says
/// whether the component prepared statements of its own.
const RESET: &str = "RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(), \
    EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)";

/// The column of [`RESET`]'s row that says whether the component prepared statements.
const PREPARED_COLUMN: usize = 1;

/// The `connection` resource. It carries nothing: every handle of an invocation shares that
/// invocation's [`UnitOfWork`].
pub struct Connection;

/// A service's database as the host holds it.
pub struct ServiceDatabase {
    /// The service role's pool: the components' units of work.
    pub pool: sqlx::PgPool,
    /// The platform role's pool on the same database: the host's own work there.
    pub platform: sqlx::PgPool,
    /// The platform role's pool on the platform database, shared by every service: ending a
    /// backend cut off at a deadline (apart from the relay's and the bus's work, so it is free
    /// when needed).
    pub control: sqlx::PgPool,
    /// Presented to the platform's functions; the database keeps only its hash.
    pub host_key: Vec<u8>,
    /// When the statements of each of the pool's connections were last made afresh.
    pub plans: PlanAges,
}

/// How long a service connection (and the embedded bus's) keeps its prepared statements, and
/// with them their plans: a generic plan is made with the tables as they are then (a
/// sequential scan of a table still small), and PostgreSQL replaces it only when the table's
/// statistics change, which can be a minute or more behind a table's growth. Making them
/// afresh costs a parse and a few plans per statement and connection.
pub const PLAN_LIFETIME: Duration = Duration::from_secs(10);

/// When each connection of a pool (by its backend's pid) last made its statements afresh.
#[derive(Default)]
pub struct PlanAges(std::sync::Mutex<std::collections::HashMap<i32, Instant>>);

impl PlanAges {
    /// Whether the statements of the connection of backend `pid` are older than
    /// [`PLAN_LIFETIME`] and are to be made afresh now; counts them fresh from now if so, and
    /// from now for a connection not seen before (its statements are all new).
    pub fn due(&self, pid: i32, now: Instant) -> bool {
        let mut ages = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match ages.get(&pid) {
            Some(since) if now.duration_since(*since) < PLAN_LIFETIME => false,
            Some(_) => {
                ages.insert(pid, now);
                true
            }
            None => {
                // Backends of closed connections leave their entries: pruned as they age.
                if ages.len() >= 1024 {
                    ages.retain(|_, since| now.duration_since(*since) < PLAN_LIFETIME);
                }
                ages.insert(pid, now);
                false
            }
        }
    }
}

/// What one invocation's database work may take, from its policy.
#[derive(Debug, Clone, Copy)]
pub struct UnitLimits {
    /// Rows all its queries may return.
    pub rows: u64,
    /// Bytes all its queries may return.
    pub bytes: u64,
    /// How long its commit may run on the server.
    pub commit: Duration,
}

impl From<&Limits> for UnitLimits {
    fn from(limits: &Limits) -> Self {
        Self { rows: limits.max_query_rows, bytes: u64::from(limits.max_query_mb) << 20, commit: limits.deadline() }
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

/// The component ended its unit's transaction itself (a `COMMIT` or `ROLLBACK` of its own):
/// the invocation is cut there, and what it did may or may not have been kept.
#[derive(Debug, thiserror::Error)]
#[error("the component ended its unit's transaction itself")]
pub struct EndedTransaction;

/// The connection's state is no longer known (the driver could not read an answer): the
/// invocation is cut there.
#[derive(Debug, thiserror::Error)]
#[error("the database connection failed: {0}")]
pub struct ConnectionLost(String);

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

/// How a statement of the session ended, as the session must know it: a server's error leaves
/// the connection between statements; any other (an answer the driver could not read, the
/// connection lost) leaves it in a state not known, to be ended.
fn statement_failed(session: &mut Session, err: sqlx::Error) -> StatementError {
    match err {
        sqlx::Error::Database(_) if !is_fatal(&err) => {
            session.busy = false;
            StatementError::Db(db_error(err))
        }
        // The driver refuses a message over its limit before buffering it (a row, say).
        sqlx::Error::Protocol(message) if message.contains("over the limit") => {
            StatementError::Trap(QueryLimit { limit: format!("{} MiB in one row", MAX_MESSAGE_MIB) }.into())
        }
        other => StatementError::Trap(ConnectionLost(other.to_string()).into()),
    }
}

/// The largest message the driver reads (see `vendor/sqlx-postgres/PATCHES.md`), in MiB.
const MAX_MESSAGE_MIB: usize = 64;

/// Why a unit of work's end failed, and whether its work may nonetheless have been committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// PostgreSQL refused (a deferred constraint, an aborted transaction, the commit's bound):
    /// nothing was written.
    #[error("the work was not committed: {0}")]
    NotCommitted(String),
    /// The connection failed while the commit was under way: it may or may not have happened.
    #[error("the commit's outcome is unknown: {0}")]
    Unknown(String),
}

/// One connection in use by a unit of work.
struct Session {
    connection: PoolConnection<Postgres>,
    /// Its backend, to end it from the platform database.
    pid: i32,
    /// A statement was sent and its answer not read to the end, or could not be read: the
    /// connection's state is not known, and only ending its backend frees it.
    busy: bool,
}

/// What becomes of a session once its unit has ended.
enum Afterwards {
    /// Back to the pool: reset and clean.
    Reuse,
    /// Closed: the component prepared statements of its own on it.
    Close,
    /// Its state not known: its backend ended, then closed.
    End,
}

/// The database side of one invocation (or of a batch of deliveries, invocation after
/// invocation).
pub struct UnitOfWork {
    database: Option<Arc<ServiceDatabase>>,
    session: Option<Session>,
    /// The current invocation's deadline.
    deadline: Instant,
    limits: UnitLimits,
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
    pub fn new(database: Option<Arc<ServiceDatabase>>, deadline: Instant, limits: UnitLimits) -> Self {
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

    /// An invocation begins in this unit: its deadline and its own limits.
    pub fn start_invocation(&mut self, deadline: Instant, limits: UnitLimits) {
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
        let size = event.data.get().len();
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
    /// unit that never touched the database costs nothing here.
    ///
    /// Not cut at the invocation's deadline: a commit under way finishes (within its own bound
    /// on the server), and one whose answer never came is reported of unknown outcome. A
    /// transaction a failed statement left aborted cannot be committed (PostgreSQL would answer
    /// the COMMIT by rolling back): the first statement of the end fails on it, and the unit
    /// reports its work not committed rather than answer as if it were kept.
    pub async fn finish(mut self, succeeded: bool) -> Result<bool, CommitError> {
        let commit = succeeded || self.commit_on_error;
        if self.session.is_none() && commit && !self.staged.is_empty() {
            // Events published by work that touched nothing else still need a transaction.
            self.deadline = Instant::now() + self.limits.commit;
            if let Err(error) = self.session().await {
                return Err(CommitError::NotCommitted(match error {
                    StatementError::Db(error) => error.message,
                    StatementError::Trap(trap) => trap.to_string(),
                }));
            }
        }
        let Some(mut session) = self.session.take() else { return Ok(false) };
        if session.busy {
            // Only a trap leaves a statement unread, and a trap never commits.
            session.end_backend(self.database.as_ref());
            return Err(CommitError::NotCommitted("a statement was cut off".into()));
        }
        let staged = std::mem::take(&mut self.staged);
        let (ended, afterwards) = if commit {
            let host_key = self.database.as_ref().map(|database| database.host_key.clone()).unwrap_or_default();
            commit_unit(&mut session.connection, &host_key, &staged, self.limits.commit).await
        } else {
            match roll_back(&mut session.connection).await {
                Ok(afterwards) => (Ok(()), afterwards),
                Err(error) => (Err(error), Afterwards::End),
            }
        };
        session.dispose(self.database.as_ref(), afterwards);
        ended.map(|()| commit && !staged.is_empty())
    }

    /// Runs `sql`, a call of one of the platform's functions (`micropay_platform.*`), in the
    /// unit's transaction, with the host key bound as its first parameter and `bind` binding
    /// the rest: how the bus records deliveries in the inbox, so that they commit if and only
    /// if the handlers' work does. Cut at the unit's deadline (the error is then a
    /// [`QueryDeadline`]).
    pub async fn call_platform(
        &mut self,
        sql: &str,
        bind: impl FnOnce(&mut PgArguments) -> Result<(), sqlx::error::BoxDynError>,
    ) -> Result<Vec<PgRow>, wasmtime::Error> {
        debug_assert!(sql.contains(PLATFORM_SCHEMA), "only the platform's functions take the host key");
        let host_key = self.database.as_ref().map(|database| database.host_key.clone()).unwrap_or_default();
        let deadline = self.deadline;
        let result = async {
            let session = self.session().await?;
            session.busy = true;
            let mut arguments = PgArguments::default();
            arguments.add(host_key).map_err(|err| refused(&err.to_string()))?;
            bind(&mut arguments).map_err(|err| refused(&err.to_string()))?;
            let query = sqlx::query_with(sql, arguments).persistent(false);
            let rows = tokio::time::timeout_at(deadline, fetch_all(&mut session.connection, query))
                .await
                .map_err(|_| StatementError::Trap(QueryDeadline.into()))?
                .map_err(|err| statement_failed(session, err))?;
            session.busy = false;
            Ok(rows)
        }
        .await;
        match result {
            Ok(rows) => Ok(rows),
            Err(StatementError::Db(error)) => Err(wasmtime::Error::msg(format!("{}: {}", error.code, error.message))),
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
            // The backend's pid, as the server gave it when the connection was made.
            let pid = i32::try_from(connection.backend_pid())
                .map_err(|_| refused("the session's backend did not say who it is"))?;
            if database.plans.due(pid, Instant::now()) {
                let cleared =
                    tokio::time::timeout_at(deadline, sqlx::Connection::clear_cached_statements(&mut *connection))
                        .await;
                closed_unless_done(&mut connection, cleared)?;
            }
            // The transaction begins with the unit's first statement, in its round trip.
            let left = deadline.saturating_duration_since(Instant::now()).as_millis().max(1);
            connection.begin_with_next_statement(u64::try_from(left).unwrap_or(u64::MAX));
            self.session = Some(Session { connection, pid, busy: false });
        }
        Ok(self.session.as_mut().expect("begun above"))
    }

    async fn run_query(&mut self, sql: &str, params: Vec<Value>) -> Result<RowSet, StatementError> {
        check_statement(sql)?;
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
                Ok(None) => break Ok(()),
                Err(err) => break Err(err),
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
        self.returned = (rows_returned, bytes_returned);
        let session = self.session.as_mut().expect("in use above");
        outcome.map_err(|err| statement_failed(session, err))?;
        session.busy = false;
        check_still_in_transaction(session)?;
        match unconvertible {
            Some(error) => Err(error.into()),
            None => Ok(RowSet { columns, rows }),
        }
    }

    async fn run_execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, StatementError> {
        check_statement(sql)?;
        let arguments = arguments(params)?;
        let deadline = self.deadline;
        let session = self.session().await?;
        session.busy = true;
        let done = tokio::time::timeout_at(deadline, execute(&mut session.connection, sql, arguments))
            .await
            .map_err(|_| StatementError::Trap(QueryDeadline.into()))?
            .map_err(|err| statement_failed(session, err))?;
        session.busy = false;
        check_still_in_transaction(session)?;
        Ok(done.rows_affected())
    }
}

/// What a statement sent on a connection not yet a session's came to (within the deadline, or
/// not): its result, or the connection closed rather than pooled, and the error.
fn closed_unless_done<T>(
    connection: &mut PoolConnection<Postgres>,
    outcome: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
) -> Result<T, StatementError> {
    match outcome {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(err)) => {
            connection.close_on_drop();
            Err(db_error(err).into())
        }
        Err(_) => {
            connection.close_on_drop();
            Err(StatementError::Trap(QueryDeadline.into()))
        }
    }
}

impl Session {
    /// Puts a session whose unit ended where it belongs: back to the pool, closed, or ended.
    fn dispose(mut self, database: Option<&Arc<ServiceDatabase>>, afterwards: Afterwards) {
        match afterwards {
            Afterwards::Reuse => {}
            Afterwards::Close => self.connection.close_on_drop(),
            Afterwards::End => self.end_backend(database),
        }
    }

    /// Ends the backend of a session whose state is not known (its statement stops on the
    /// server) and closes the connection, from a task of its own: the caller goes on at once.
    /// Tried until it is done, from the platform database, whose pool nothing else holds.
    fn end_backend(mut self, database: Option<&Arc<ServiceDatabase>>) {
        self.connection.close_on_drop();
        let Some(database) = database.cloned() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            for attempt in 1..=5 {
                let ended = sqlx::query("SELECT pg_catalog.pg_terminate_backend($1, 5000)")
                    .bind(self.pid)
                    .execute(&database.control)
                    .await;
                match ended {
                    Ok(_) => break,
                    Err(err) => tracing::warn!(pid = self.pid, attempt, "ending a backend failed: {err}"),
                }
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            drop(self);
        });
    }
}

impl Drop for UnitOfWork {
    /// A unit dropped unfinished (a trap, a deadline, a caller gone) rolls back: a session
    /// whose state is not known has its backend ended; otherwise it is rolled back and reset
    /// in a task of its own, returned to the pool only if that went well, and ended if it did
    /// not answer in time.
    fn drop(&mut self) {
        let Some(mut session) = self.session.take() else { return };
        if session.busy {
            session.end_backend(self.database.as_ref());
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            session.connection.close_on_drop();
            return;
        };
        let database = self.database.clone();
        runtime.spawn(async move {
            let afterwards = match tokio::time::timeout(RESET_TIMEOUT, roll_back(&mut session.connection)).await {
                Ok(Ok(afterwards)) => afterwards,
                _ => Afterwards::End,
            };
            session.dispose(database.as_ref(), afterwards);
        });
    }
}

/// A component's statement, before it is sent: not too long, and not naming what is in the
/// platform's schema the way the host's statements do (`micropay_platform.`), so none can
/// coincide with a host statement and, in the connection's statement cache, stand in for it.
/// (Other ways of naming the schema reach PostgreSQL, where the functions demand the key and
/// the tables are the platform role's.)
fn check_statement(sql: &str) -> Result<(), DbError> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(refused(&format!("a statement may be at most {} KiB", MAX_STATEMENT_BYTES >> 10)));
    }
    if sql.to_ascii_lowercase().contains(&format!("{PLATFORM_SCHEMA}.")) {
        return Err(refused("micropay_platform belongs to the host: a component's statement may not name it"));
    }
    Ok(())
}

/// After a component's statement, the unit's transaction must still be open (in progress or
/// failed) and still the one the unit began: a component that ended it cannot go on, and what
/// it did may have been kept. (`COMMIT AND CHAIN` commits and leaves a new transaction open:
/// its COMMIT is what tells. `ROLLBACK AND CHAIN`, which keeps nothing, is not told from
/// `ROLLBACK TO SAVEPOINT`; the unit goes on, as if it had written nothing before it.)
fn check_still_in_transaction(session: &Session) -> Result<(), StatementError> {
    let connection = &session.connection;
    if connection.in_transaction_block() && !connection.last_statement_committed() {
        return Ok(());
    }
    Err(StatementError::Trap(EndedTransaction.into()))
}

/// Commits a unit: its events to the outbox, then the COMMIT, under the commit's own bound on
/// the server, then the session's reset, the last two in one round trip. The answer is what
/// PostgreSQL did: committed; refused (nothing written); or not known (the connection failed
/// or no answer came in time), whose session is ended.
async fn commit_unit(
    connection: &mut PgConnection,
    host_key: &[u8],
    staged: &[Envelope],
    bound: Duration,
) -> (Result<(), CommitError>, Afterwards) {
    let bound_ms = bound.as_millis().max(1);
    let waited = bound + END_GRACE;
    if !staged.is_empty() {
        // The host key is a parameter of the next statement: an error of it must not put its
        // parameters in the server's log, whatever the component set. (This fails, as it
        // should, on a transaction a failed statement aborted.)
        let quiet = format!(
            "SELECT pg_catalog.set_config('log_parameter_max_length_on_error', '0', true), \
                 pg_catalog.set_config('statement_timeout', '{bound_ms}', true)"
        );
        let appended = tokio::time::timeout(waited, async {
            simple_query(connection, &quiet).await?;
            append_outbox(connection, host_key, staged).await
        })
        .await;
        match appended {
            Ok(Ok(())) => {}
            // Refused before any COMMIT was sent: nothing was written.
            Ok(Err(err)) if matches!(err, sqlx::Error::Database(_)) && !is_fatal(&err) => {
                return refused_commit(connection, err.to_string()).await;
            }
            Ok(Err(err)) => return (Err(CommitError::NotCommitted(err.to_string())), Afterwards::End),
            Err(_) => return (Err(CommitError::NotCommitted("the outbox did not answer".into())), Afterwards::End),
        }
    }
    // PostgreSQL runs deferred triggers at COMMIT with no statement timeout: they are fired
    // first, by `SET CONSTRAINTS ALL IMMEDIATE`, under the commit's bound (set above when the
    // outbox was written), so that the COMMIT itself has nothing of the component's left to
    // run. (A trigger that defers more again runs at the COMMIT unbounded on the server; the
    // host's own wait then ends its backend.)
    // The COMMIT's position among the statements of `end`, which the results are counted by.
    let (bounded, commit_position) = match staged.is_empty() {
        true => (format!("SET LOCAL statement_timeout = {bound_ms}; "), 3),
        false => (String::new(), 2),
    };
    let end = format!("{bounded}SET CONSTRAINTS ALL IMMEDIATE; COMMIT; {RESET}");
    let mut committed = false;
    let mut prepared_by_component = None;
    let outcome = tokio::time::timeout(waited, async {
        let mut results = fetch_many(connection, &end);
        let mut completed = 0;
        while let Some(result) = results.try_next().await? {
            match result {
                Either::Left(_) => {
                    completed += 1;
                    committed |= completed == commit_position;
                }
                Either::Right(row) => prepared_by_component = row.try_get::<bool, _>(PREPARED_COLUMN).ok(),
            }
        }
        Ok::<(), sqlx::Error>(())
    })
    .await;
    match outcome {
        Ok(Ok(())) if prepared_by_component == Some(false) => (Ok(()), Afterwards::Reuse),
        Ok(Ok(())) => (Ok(()), Afterwards::Close),
        // The commit went through; only the reset after it failed.
        Ok(Err(_)) if committed => (Ok(()), Afterwards::End),
        Ok(Err(err)) if matches!(err, sqlx::Error::Database(_)) && !is_fatal(&err) => {
            refused_commit(connection, err.to_string()).await
        }
        Ok(Err(err)) => (Err(CommitError::Unknown(err.to_string())), Afterwards::End),
        Err(_) if committed => (Ok(()), Afterwards::End),
        Err(_) => (Err(CommitError::Unknown("no answer in time".into())), Afterwards::End),
    }
}

/// PostgreSQL refused the commit (or what precedes it): nothing was written; the session is
/// rolled back and reset for the next unit.
async fn refused_commit(connection: &mut PgConnection, reason: String) -> (Result<(), CommitError>, Afterwards) {
    let afterwards = match tokio::time::timeout(RESET_TIMEOUT, roll_back(connection)).await {
        Ok(Ok(afterwards)) => afterwards,
        _ => Afterwards::End,
    };
    (Err(CommitError::NotCommitted(reason)), afterwards)
}

/// Rolls the session's transaction back (if any) and resets the session.
async fn roll_back(connection: &mut PgConnection) -> Result<Afterwards, CommitError> {
    let rows = simple_query(connection, &format!("ROLLBACK; {RESET}"))
        .await
        .map_err(|err| CommitError::NotCommitted(format!("rolling back: {err}")))?;
    let prepared_by_component =
        rows.last().map(|row| row.try_get::<bool, _>(PREPARED_COLUMN)).transpose().ok().flatten();
    Ok(if prepared_by_component == Some(false) { Afterwards::Reuse } else { Afterwards::Close })
}

/// Whether a server's error ended the session (FATAL, PANIC): what was under way is not known.
fn is_fatal(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.try_downcast_ref::<PgDatabaseError>())
        .is_some_and(|db| matches!(db.severity(), PgSeverity::Fatal | PgSeverity::Panic))
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

/// A simple-protocol query whose statements' results are told apart, in order.
fn fetch_many<'c>(
    connection: &'c mut PgConnection,
    sql: &'c str,
) -> BoxStream<'c, Result<Either<PgQueryResult, PgRow>, sqlx::Error>> {
    connection.fetch_many(sqlx::raw_sql(sql))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_makes_its_statements_afresh_once_per_plan_lifetime() {
        let ages = PlanAges::default();
        let start = Instant::now();
        let second = Duration::from_secs(1);
        assert!(!ages.due(7, start), "a connection's first statements are new");
        assert!(!ages.due(7, start + PLAN_LIFETIME - second));
        assert!(ages.due(7, start + PLAN_LIFETIME));
        assert!(!ages.due(7, start + PLAN_LIFETIME + second), "counted afresh from then");
        assert!(ages.due(7, start + 2 * PLAN_LIFETIME));
        assert!(!ages.due(8, start + 2 * PLAN_LIFETIME), "another backend has its own age");
    }
}
