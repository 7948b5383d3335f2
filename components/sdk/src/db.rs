//! The component's own database, through the host's `database` capability.
//!
//! Every statement runs inside the invocation's unit of work; the host commits or rolls back.

use std::rc::Rc;

use crate::service::micropay::platform::database;
pub use crate::service::micropay::platform::types::{DbError, Value};

/// SQLSTATE of a unique-constraint violation.
pub const UNIQUE_VIOLATION: &str = "23505";

impl DbError {
    /// Whether this is a unique violation (of `constraint`, when given).
    pub fn is_unique_violation(&self, constraint: Option<&str>) -> bool {
        self.code == UNIQUE_VIOLATION && constraint.is_none_or(|name| self.constraint.as_deref() == Some(name))
    }
}

/// A handle to the component's own database.
pub struct Db {
    connection: database::Connection,
}

impl Db {
    /// Opens the handle; fails when the component's policy grants no database.
    pub fn open() -> Result<Self, DbError> {
        Ok(Self { connection: database::open()? })
    }

    /// Runs a statement that returns rows.
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let set = self.connection.query(sql, params)?;
        let columns = Rc::new(set.columns);
        Ok(set.rows.into_iter().map(|values| Row { columns: columns.clone(), values }).collect())
    }

    /// Runs a statement that returns at most one row.
    pub fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs a statement that returns exactly one row.
    pub fn query_one(&self, sql: &str, params: &[Value]) -> Result<Row, DbError> {
        self.query_opt(sql, params)?.ok_or_else(|| DbError {
            code: "P0002".into(),
            message: "the statement returned no row".into(),
            constraint: None,
        })
    }

    /// Runs a statement and returns how many rows it affected.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        self.connection.execute(sql, params)
    }

    /// Keeps this invocation's writes even when the handler answers an error status.
    pub fn commit_on_error(&self) {
        self.connection.commit_on_error();
    }
}

/// A `WHERE` clause under construction, for a query whose filters are optional: its values
/// bound as `$1, $2, ...` in order.
#[derive(Default)]
pub struct Conditions {
    /// `""`, or ` WHERE a AND b ...`.
    pub sql: String,
    /// The bound values, in placeholder order.
    pub params: Vec<Value>,
}

impl Conditions {
    /// Binds `value` and returns its placeholder.
    pub fn bind(&mut self, value: Value) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }

    /// Adds a condition, with its placeholders from [`Conditions::bind`].
    pub fn and(&mut self, condition: &str) {
        self.sql.push_str(if self.sql.is_empty() { " WHERE " } else { " AND " });
        self.sql.push_str(condition);
    }
}

/// One result row with access by column name.
///
/// The getters panic when a column is missing or of another type: that is a mismatch between
/// the component's SQL and its code, not bad input, and the host turns the trap into a 500
/// with everything rolled back.
pub struct Row {
    columns: Rc<Vec<String>>,
    values: Vec<Value>,
}

impl Row {
    /// The row's values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    fn get(&self, column: &str) -> &Value {
        let index = self.columns.iter().position(|name| name == column).unwrap_or_else(|| panic!("no column {column}"));
        &self.values[index]
    }

    fn mismatch(&self, column: &str, wanted: &str) -> ! {
        panic!("column {column} is not {wanted}: {:?}", self.get(column))
    }

    pub fn is_null(&self, column: &str) -> bool {
        matches!(self.get(column), Value::Null)
    }

    /// A text, UUID, decimal or JSON column as text; `None` for NULL.
    pub fn opt_text(&self, column: &str) -> Option<String> {
        match self.get(column) {
            Value::Null => None,
            Value::Text(s) | Value::Uuid(s) | Value::Decimal(s) | Value::Json(s) => Some(s.clone()),
            _ => self.mismatch(column, "text"),
        }
    }

    pub fn text(&self, column: &str) -> String {
        self.opt_text(column).unwrap_or_else(|| self.mismatch(column, "non-null text"))
    }

    pub fn opt_bool(&self, column: &str) -> Option<bool> {
        match self.get(column) {
            Value::Null => None,
            Value::Boolean(b) => Some(*b),
            _ => self.mismatch(column, "boolean"),
        }
    }

    pub fn bool(&self, column: &str) -> bool {
        self.opt_bool(column).unwrap_or_else(|| self.mismatch(column, "non-null boolean"))
    }

    pub fn opt_int(&self, column: &str) -> Option<i64> {
        match self.get(column) {
            Value::Null => None,
            Value::Integer(i) => Some(*i),
            _ => self.mismatch(column, "integer"),
        }
    }

    pub fn int(&self, column: &str) -> i64 {
        self.opt_int(column).unwrap_or_else(|| self.mismatch(column, "non-null integer"))
    }

    /// A timestamp column in microseconds since the epoch.
    pub fn opt_timestamp(&self, column: &str) -> Option<i64> {
        match self.get(column) {
            Value::Null => None,
            Value::Timestamp(t) => Some(*t),
            _ => self.mismatch(column, "timestamp"),
        }
    }

    /// A timestamp column formatted as RFC 3339; `None` for NULL.
    pub fn opt_rfc3339(&self, column: &str) -> Option<String> {
        self.opt_timestamp(column).map(crate::time::rfc3339)
    }

    /// A non-null timestamp column formatted as RFC 3339.
    pub fn rfc3339(&self, column: &str) -> String {
        self.opt_rfc3339(column).unwrap_or_else(|| self.mismatch(column, "non-null timestamp"))
    }

    /// A JSON column parsed; `Value::Null` for SQL NULL.
    pub fn json(&self, column: &str) -> serde_json::Value {
        match self.get(column) {
            Value::Null => serde_json::Value::Null,
            Value::Json(s) => serde_json::from_str(s).unwrap_or(serde_json::Value::Null),
            _ => self.mismatch(column, "json"),
        }
    }
}

/// Parameter constructors, so call sites read `&[text(email), uuid(id)]`.
pub mod param {
    use super::Value;

    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }
    pub fn opt_text(s: Option<impl Into<String>>) -> Value {
        s.map_or(Value::Null, |s| Value::Text(s.into()))
    }
    pub fn uuid(s: impl Into<String>) -> Value {
        Value::Uuid(s.into())
    }
    pub fn int(i: i64) -> Value {
        Value::Integer(i)
    }
    pub fn boolean(b: bool) -> Value {
        Value::Boolean(b)
    }
    pub fn opt_boolean(b: Option<bool>) -> Value {
        b.map_or(Value::Null, Value::Boolean)
    }
    pub fn timestamp(micros: i64) -> Value {
        Value::Timestamp(micros)
    }
    /// Anything that serialises as JSON: a `serde_json::Value`, or a typed record written
    /// straight to text without a JSON tree of it.
    pub fn json(value: &(impl serde::Serialize + ?Sized)) -> Value {
        Value::Json(serde_json::to_string(value).expect("a value serialises as JSON"))
    }
    pub fn decimal(s: impl Into<String>) -> Value {
        Value::Decimal(s.into())
    }
    /// A list of ids as one JSON array parameter, for `= ANY (ARRAY(SELECT
    /// jsonb_array_elements_text($1)::uuid))`.
    pub fn id_list(ids: &[String]) -> Value {
        json(&serde_json::json!(ids))
    }
}
