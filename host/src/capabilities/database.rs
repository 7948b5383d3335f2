//! `database`: the component's own PostgreSQL database, inside the invocation's unit of work.
//!
//! Invariants kept here:
//! - a component reaches exactly one pool, the one of its own database, bound by the host when
//!   the invocation starts; nothing in the contract names a database, so nothing can ask for
//!   another (and PostgreSQL refuses the component's role anywhere else);
//! - every statement of one invocation runs in one transaction, begun on first use and ended
//!   by [`UnitOfWork::finish`]: committed only when the invocation succeeded; dropped (and so
//!   rolled back) in every other case, including a trap or a missed deadline.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::{PgArguments, PgColumn, PgRow, PgTypeInfo, PgValueRef};
use sqlx::{Arguments, Column, Postgres, Row, Transaction, TypeInfo, ValueRef};
use wasmtime::component::Resource;

use crate::runtime::bindings::service::micropay::platform::database::{Host, HostConnection};
use crate::runtime::bindings::{DbError, Event, RowSet, Value};
use crate::runtime::state::InvocationState;

/// SQLSTATE-like code for a call the host refused before it reached PostgreSQL.
const REFUSED: &str = "MP000";

/// The `connection` resource. It carries nothing: every handle of an invocation shares that
/// invocation's [`UnitOfWork`].
pub struct Connection;

/// The database side of one invocation.
#[derive(Default)]
pub struct UnitOfWork {
    pool: Option<sqlx::PgPool>,
    transaction: Option<Transaction<'static, Postgres>>,
    commit_on_error: bool,
    /// Whether the unit wrote events to the outbox.
    pub(crate) published: bool,
}

impl UnitOfWork {
    /// A unit of work on `pool`, or one with no database for a component granted none.
    pub fn new(pool: Option<sqlx::PgPool>) -> Self {
        Self { pool, transaction: None, commit_on_error: false, published: false }
    }

    /// Ends the unit of work: commits when `succeeded` (or when the component asked to keep
    /// its writes despite an error answer), rolls back otherwise. A unit that never touched
    /// the database costs nothing here.
    pub async fn finish(mut self, succeeded: bool) -> Result<(), sqlx::Error> {
        let Some(transaction) = self.transaction.take() else { return Ok(()) };
        if succeeded || self.commit_on_error { transaction.commit().await } else { transaction.rollback().await }
    }

    /// Records a delivered event in the inbox, first thing in the unit of work, so the record
    /// commits if and only if the handler's work does. Returns false when the event is there
    /// already: it was handled, and must not take effect again. (A concurrent delivery of the
    /// same event waits here on the unique key until the first one commits or rolls back.)
    pub async fn record_in_inbox(&mut self, event: &Event) -> Result<bool, DbError> {
        let id = uuid::Uuid::parse_str(&event.id).map_err(|_| refused("the event id is not a UUID"))?;
        let transaction = self.transaction().await?;
        let done = sqlx::query(
            "INSERT INTO micropay_platform.inbox (event_id, topic, source) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&event.topic)
        .bind(&event.source)
        .execute(&mut **transaction)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a batch of delivered events in the inbox with one statement; returns the ids
    /// recorded now (the others were there already: handled before). See
    /// [`UnitOfWork::record_in_inbox`].
    pub async fn record_all_in_inbox(
        &mut self,
        events: &[(uuid::Uuid, &str, &str)],
    ) -> Result<std::collections::HashSet<uuid::Uuid>, DbError> {
        let ids: Vec<uuid::Uuid> = events.iter().map(|(id, _, _)| *id).collect();
        let topics: Vec<&str> = events.iter().map(|(_, topic, _)| *topic).collect();
        let sources: Vec<&str> = events.iter().map(|(_, _, source)| *source).collect();
        let transaction = self.transaction().await?;
        let recorded: Vec<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO micropay_platform.inbox (event_id, topic, source) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .bind(&ids)
        .bind(&topics)
        .bind(&sources)
        .fetch_all(&mut **transaction)
        .await
        .map_err(db_error)?;
        Ok(recorded.into_iter().collect())
    }

    /// Commits the unit (a batch of deliveries); returns whether it wrote events.
    pub async fn commit(self) -> Result<bool, sqlx::Error> {
        let published = self.published;
        self.finish(true).await?;
        Ok(published)
    }

    async fn transaction(&mut self) -> Result<&mut Transaction<'static, Postgres>, DbError> {
        if self.transaction.is_none() {
            let pool = self.pool.as_ref().ok_or_else(|| refused("this component is granted no database"))?;
            self.transaction = Some(pool.begin().await.map_err(db_error)?);
        }
        Ok(self.transaction.as_mut().expect("begun above"))
    }
}

impl Host for InvocationState {
    async fn open(&mut self) -> wasmtime::Result<Result<Resource<Connection>, DbError>> {
        if self.unit.pool.is_none() {
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
        Ok(self.run_query(&sql, params).await)
    }

    async fn execute(
        &mut self,
        _: Resource<Connection>,
        sql: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, DbError>> {
        Ok(self.run_execute(&sql, params).await)
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

impl InvocationState {
    async fn run_query(&mut self, sql: &str, params: Vec<Value>) -> Result<RowSet, DbError> {
        let arguments = arguments(params)?;
        let transaction = self.unit.transaction().await?;
        let rows = sqlx::query_with(sql, arguments).fetch_all(&mut **transaction).await.map_err(db_error)?;
        row_set(&rows)
    }

    pub(crate) async fn run_execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, DbError> {
        let arguments = arguments(params)?;
        let transaction = self.unit.transaction().await?;
        let done = sqlx::query_with(sql, arguments).execute(&mut **transaction).await.map_err(db_error)?;
        Ok(done.rows_affected())
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

fn row_set(rows: &[PgRow]) -> Result<RowSet, DbError> {
    let columns =
        rows.first().map(|row| row.columns().iter().map(|c| c.name().to_string()).collect()).unwrap_or_default();
    let rows = rows
        .iter()
        .map(|row| row.columns().iter().map(|column| value(row, column)).collect::<Result<Vec<_>, _>>())
        .collect::<Result<_, _>>()?;
    Ok(RowSet { columns, rows })
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
