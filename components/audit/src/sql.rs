//! The audit service's SQL, against the tables and functions of `migrations/audit/`.
//!
//! Rows are only ever written by `audit_append`, which chains them; the hash of a row is only
//! ever computed by `audit_row_digest`, for appending and verifying alike. Reads go through
//! the `audit_trail` view, live and archived months together.

use micropay_sdk::db::param::{int, json, text, timestamp, uuid};
use micropay_sdk::db::{Conditions, DbError};
use micropay_sdk::{Db, Row};

use crate::domain::{LogQuery, Record};

/// The columns of a record as the API shows it.
macro_rules! log_columns {
    () => {
        "log_id, event_id, event_type, service_name, entity_type, entity_id, user_id, action, \
         old_values, new_values, metadata, ip_address, user_agent, occurred_at, \
         chain, chain_position, row_hash"
    };
}

/// Appends a batch of records to their chains with one statement; returns how many were
/// appended (an event recorded already is not appended again).
pub fn append(db: &Db, records: &[Record]) -> Result<i64, DbError> {
    let rows: Vec<serde_json::Value> = records
        .iter()
        .map(|record| {
            serde_json::json!({
                "event_id": record.event_id,
                "event_type": record.event_type,
                "service_name": record.service_name,
                "entity_type": record.entity_type,
                "entity_id": record.entity_id,
                "user_id": record.user_id,
                "action": record.action,
                "old_values": record.old_values,
                "new_values": record.new_values,
                "metadata": record.metadata,
                "ip_address": record.ip_address,
                "user_agent": record.user_agent,
                "occurred_at": record.occurred_at,
                "chain": record.chain,
            })
        })
        .collect();
    let row = db.query_one("SELECT audit_append_batch($1) AS appended", &[json(&serde_json::Value::Array(rows))])?;
    Ok(row.int("appended"))
}

/// One page of the trail matching `query`, newest first, with one record more than the page
/// holds when there is a next page. Ordered by `(occurred_at, log_id)`, which is unique, so a
/// page starts exactly after the cursor however many records share a time.
pub fn list_logs(db: &Db, query: &LogQuery) -> Result<Vec<Row>, DbError> {
    let mut conditions = Conditions::default();
    let texts = [
        ("entity_type", &query.entity_type),
        ("entity_id", &query.entity_id),
        ("event_type", &query.event_type),
        ("service_name", &query.service_name),
    ];
    for (column, value) in texts {
        if let Some(value) = value {
            let placeholder = conditions.bind(text(value));
            conditions.and(&format!("{column} = {placeholder}"));
        }
    }
    if let Some(user_id) = &query.user_id {
        let placeholder = conditions.bind(uuid(user_id));
        conditions.and(&format!("user_id = {placeholder}"));
    }
    if let Some(from) = query.from {
        let placeholder = conditions.bind(timestamp(from));
        conditions.and(&format!("occurred_at >= {placeholder}"));
    }
    if let Some(to) = query.to {
        let placeholder = conditions.bind(timestamp(to));
        conditions.and(&format!("occurred_at < {placeholder}"));
    }
    if let Some(after) = &query.after {
        let occurred_at = conditions.bind(timestamp(after.time));
        let log_id = conditions.bind(uuid(&after.id));
        conditions.and(&format!("(occurred_at, log_id) < ({occurred_at}, {log_id})"));
    }
    let limit = conditions.bind(int(query.limit + 1));
    let sql = format!(
        concat!("SELECT ", log_columns!(), " FROM audit_trail{} ORDER BY occurred_at DESC, log_id DESC LIMIT {}"),
        conditions.sql, limit
    );
    db.query(&sql, &conditions.params)
}

/// Walks every chain, live and archived months together, in one statement (one snapshot).
///
/// A row is broken when positions skip before it (`row_missing`), when its hash is not the
/// digest of its content (`content_altered`), or when it does not follow the row before it:
/// same position again, or a `previous_hash` other than that row's hash (`link_broken`). A
/// chain's head must name its last row: when it is further on, rows are missing at the end
/// (reported at the first missing position, without a row); otherwise it is `head_mismatch`.
///
/// Answers one row: `rows_checked`, and the first problem by time, chain and position
/// (`log_id`, `event_id`, `chain`, `chain_position`, `reason`), all NULL when there is none.
const VERIFY: &str = "
WITH checked AS (
    SELECT log_id, event_id, occurred_at, chain, chain_position, previous_hash, row_hash,
           row_hash = audit_row_digest(previous_hash, event_id, event_type, service_name, entity_type,
               entity_id, user_id, action, old_values, new_values, metadata, ip_address, user_agent,
               occurred_at, chain, chain_position) AS content_intact,
           lag(chain_position, 1, 0::bigint) OVER by_chain AS prior_position,
           lag(row_hash, 1, audit_genesis_hash()) OVER by_chain AS prior_hash
    FROM audit_trail
    WINDOW by_chain AS (PARTITION BY chain ORDER BY chain_position)
),
tails AS (
    SELECT DISTINCT ON (chain) log_id, event_id, occurred_at, chain, chain_position, row_hash
    FROM checked
    ORDER BY chain, chain_position DESC
),
problems AS (
    SELECT log_id, event_id, occurred_at, chain, chain_position,
           CASE
               WHEN chain_position > prior_position + 1 THEN 'row_missing'
               WHEN NOT content_intact THEN 'content_altered'
               WHEN chain_position <> prior_position + 1 OR previous_hash <> prior_hash THEN 'link_broken'
           END AS reason
    FROM checked
    UNION ALL
    SELECT CASE WHEN ahead THEN NULL ELSE t.log_id END,
           CASE WHEN ahead THEN NULL ELSE t.event_id END,
           CASE WHEN ahead THEN NULL ELSE t.occurred_at END,
           h.chain,
           CASE WHEN ahead THEN coalesce(t.chain_position, 0) + 1 ELSE t.chain_position END,
           CASE WHEN ahead THEN 'row_missing' ELSE 'head_mismatch' END
    FROM audit_chain_heads AS h
    LEFT JOIN tails AS t ON t.chain = h.chain
    CROSS JOIN LATERAL (SELECT h.position > coalesce(t.chain_position, 0) AS ahead) AS head
    WHERE h.position <> coalesce(t.chain_position, 0)
       OR h.row_hash <> coalesce(t.row_hash, audit_genesis_hash())
)
SELECT (SELECT count(*) FROM checked) AS rows_checked,
       first.log_id, first.event_id, first.chain, first.chain_position, first.reason
FROM (SELECT 1) AS one
LEFT JOIN (
    SELECT * FROM problems
    WHERE reason IS NOT NULL
    ORDER BY occurred_at NULLS LAST, chain, chain_position
    LIMIT 1
) AS first ON TRUE";

/// Verifies the whole trail; see [`VERIFY`].
pub fn verify(db: &Db) -> Result<Row, DbError> {
    db.query_one(VERIFY, &[])
}

/// Creates the partitions of this month and the `months_ahead` after it that are missing;
/// returns their names.
pub fn ensure_partitions(db: &Db, months_ahead: i64) -> Result<Vec<String>, DbError> {
    let rows = db.query("SELECT name FROM audit_ensure_partitions($1::integer) AS name", &[int(months_ahead)])?;
    Ok(rows.iter().map(|row| row.text("name")).collect())
}

/// Moves the months that ended more than `older_than` (an SQL interval) ago to the archive;
/// returns the names of the partitions moved.
pub fn archive(db: &Db, older_than: &str) -> Result<Vec<String>, DbError> {
    let rows = db.query("SELECT name FROM audit_archive($1::interval) AS name", &[text(older_than)])?;
    Ok(rows.iter().map(|row| row.text("name")).collect())
}
