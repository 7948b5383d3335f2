//! The endpoints and the event handler: each reads its input, applies the rules of
//! [`crate::domain`], runs the statements of [`crate::sql`] and shapes the answer.

use micropay_sdk::db::DbError;
use micropay_sdk::{ApiError, Context, Db, Response, Row};
use serde_json::{Value as Json, json};

use crate::bindings::exports::micropay::platform::subscriber::Event;
use crate::domain;
use crate::sql;
use micropay_sdk::cursor::Cursor;

fn log_json(row: &Row) -> Json {
    json!({
        "log_id": row.text("log_id"),
        "event_id": row.text("event_id"),
        "event_type": row.text("event_type"),
        "service_name": row.text("service_name"),
        "entity_type": row.opt_text("entity_type"),
        "entity_id": row.opt_text("entity_id"),
        "user_id": row.opt_text("user_id"),
        "action": row.text("action"),
        "old_values": row.json("old_values"),
        "new_values": row.json("new_values"),
        "metadata": row.json("metadata"),
        "ip_address": row.opt_text("ip_address"),
        "user_agent": row.opt_text("user_agent"),
        "occurred_at": row.rfc3339("occurred_at"),
        "chain": row.int("chain"),
        "chain_position": row.int("chain_position"),
        "row_hash": row.text("row_hash"),
    })
}

/// Records a batch of delivered events in the trail, with one statement. The host's inbox
/// already keeps a redelivered event from reaching this twice; the trail's own key on the
/// event is the second guard, so a duplicate is acknowledged without a second row. An error
/// rolls the delivery back and the host retries it.
pub fn record_events(events: &[Event]) -> Result<(), String> {
    let records: Vec<_> = events.iter().map(domain::record).collect();
    let db = Db::open().map_err(describe)?;
    let appended = sql::append(&db, &records).map_err(describe)?;
    if appended < records.len() as i64 {
        let already = records.len() as i64 - appended;
        micropay_sdk::log_info(&format!("{already} of {} events were already in the audit trail", records.len()));
    }
    Ok(())
}

fn describe(err: DbError) -> String {
    format!("database error {}: {}", err.code, err.message)
}

/// `GET /logs`: records matching the filters, newest first, a page at a time; `next_cursor`
/// fetches the next page and is null on the last.
pub fn list_logs(ctx: &mut Context) -> Result<Response, ApiError> {
    let query = domain::log_query(|name| ctx.query(name))?;
    let db = ctx.db()?;

    let mut rows = sql::list_logs(db, &query)?;
    // The statement fetches one row past the page: its presence is what says a next page exists.
    let page = usize::try_from(query.limit).unwrap_or(usize::MAX);
    let more = rows.len() > page;
    rows.truncate(page);
    let next_cursor = match rows.last() {
        Some(last) if more => {
            let occurred_at = last.opt_timestamp("occurred_at").expect("occurred_at is NOT NULL");
            Some(Cursor { time: occurred_at, id: last.text("log_id") }.encode())
        }
        _ => None,
    };
    let logs: Vec<Json> = rows.iter().map(log_json).collect();
    Ok(Response::ok(&json!({ "logs": logs, "next_cursor": next_cursor })))
}

/// `POST /verify`: whether every chain of the trail is intact, and if not, its first break.
pub fn verify(ctx: &mut Context) -> Result<Response, ApiError> {
    let db = ctx.db()?;

    let result = sql::verify(db)?;
    let rows_checked = result.int("rows_checked");
    let Some(reason) = result.opt_text("reason") else {
        return Ok(Response::ok(&json!({ "intact": true, "rows_checked": rows_checked })));
    };
    let first_broken = json!({
        "log_id": result.opt_text("log_id"),
        "event_id": result.opt_text("event_id"),
        "chain": result.int("chain"),
        "chain_position": result.int("chain_position"),
        "reason": reason,
        "message": domain::reason_message(&reason),
    });
    micropay_sdk::log_warn(&format!("the audit trail is broken: {first_broken}"));
    Ok(Response::ok(&json!({ "intact": false, "rows_checked": rows_checked, "first_broken": first_broken })))
}

/// `POST /maintenance` (daily, from the host's schedule): creates the partitions of the coming
/// months and archives the months older than a year.
pub fn maintain(ctx: &mut Context) -> Result<Response, ApiError> {
    let db = ctx.db()?;

    let created = sql::ensure_partitions(db, domain::PARTITIONS_AHEAD)?;
    let archived = sql::archive(db, domain::ARCHIVE_AFTER)?;
    if !created.is_empty() || !archived.is_empty() {
        micropay_sdk::log_info(&format!("audit partitions created {created:?}, archived {archived:?}"));
    }
    Ok(Response::ok(&json!({ "created": created, "archived": archived })))
}
