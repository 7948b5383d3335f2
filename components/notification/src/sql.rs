//! The notification service's SQL, against the tables of `migrations/notification/`. A batch
//! of events is handled with set-based statements: the mirrors upserted with one statement
//! each, the new messages inserted with one, their outcomes written with one.

use micropay_sdk::db::param::{int, json, opt_text, text, uuid};
use micropay_sdk::db::{Conditions, DbError};
use micropay_sdk::{Db, Row};
use serde_json::Value as Json;

use crate::domain::RetryPolicy;

/// The columns of a message as the service reads it.
macro_rules! notification_columns {
    () => {
        "notification_id, user_id, notification_type, channel, subject, message, html_message, status, \
         sent_at, delivered_at, read_at, failure_reason, retry_count, metadata, created_at, event_id, \
         template_name, template_component, template_version, locale, destination, critical, \
         variables, secret_variables, next_attempt_at"
    };
}

/// Upserts recipients: `contacts` is a JSON array of `user.contact_changed` payloads, each
/// user at most once (the batch's last).
pub fn upsert_recipients(db: &Db, contacts: &Json) -> Result<u64, DbError> {
    db.execute(
        "INSERT INTO recipients (user_id, email, phone_number, email_notifications_enabled, \
                                 sms_notifications_enabled, push_notifications_enabled) \
         SELECT user_id, email, phone_number, email_notifications_enabled, sms_notifications_enabled, \
                push_notifications_enabled \
         FROM jsonb_to_recordset($1) AS c(user_id uuid, email text, phone_number text, \
              email_notifications_enabled boolean, sms_notifications_enabled boolean, \
              push_notifications_enabled boolean) \
         ORDER BY user_id \
         ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, phone_number = EXCLUDED.phone_number, \
             email_notifications_enabled = EXCLUDED.email_notifications_enabled, \
             sms_notifications_enabled = EXCLUDED.sms_notifications_enabled, \
             push_notifications_enabled = EXCLUDED.push_notifications_enabled, updated_at = CURRENT_TIMESTAMP",
        &[json(contacts)],
    )
}

/// Records accounts' owners: a JSON array of `{account_id, user_id}`.
pub fn insert_owners(db: &Db, owners: &Json) -> Result<u64, DbError> {
    db.execute(
        "INSERT INTO account_owners (account_id, user_id) \
         SELECT account_id, user_id FROM jsonb_to_recordset($1) AS o(account_id uuid, user_id uuid) \
         ORDER BY account_id ON CONFLICT (account_id) DO NOTHING",
        &[json(owners)],
    )
}

/// The owners of these accounts (those the service heard of).
pub fn owners(db: &Db, account_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT account_id, user_id FROM account_owners \
         WHERE account_id IN (SELECT a::uuid FROM jsonb_array_elements_text($1::jsonb) AS t(a))",
        &[micropay_sdk::db::param::id_list(account_ids)],
    )
}

/// These users' recipient rows.
pub fn recipients(db: &Db, user_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT user_id, email, phone_number, email_notifications_enabled, sms_notifications_enabled, \
                push_notifications_enabled, locale FROM recipients \
         WHERE user_id IN (SELECT u::uuid FROM jsonb_array_elements_text($1::jsonb) AS t(u))",
        &[micropay_sdk::db::param::id_list(user_ids)],
    )
}

/// The active templates, by name and channel, with the component that renders each.
pub fn active_templates(db: &Db) -> Result<Vec<Row>, DbError> {
    db.query("SELECT template_name, channel, component FROM notification_templates WHERE is_active", &[])
}

/// Every template mapping.
pub fn templates(db: &Db) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT template_id, template_name, template_type, channel, component, variables, is_active, \
                created_at, updated_at FROM notification_templates ORDER BY template_name, channel",
        &[],
    )
}

/// Inserts new messages (a JSON array of rows), leaving out those already made (an event
/// handled again), and returns the ones inserted.
pub fn insert_notifications(db: &Db, rows: &Json) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "INSERT INTO notifications (notification_id, user_id, notification_type, channel, event_id, \
                 template_name, template_component, locale, destination, critical, variables, secret_variables) \
             SELECT notification_id, user_id, notification_type, channel, event_id, template_name, \
                 template_component, locale, destination, critical, variables, secret_variables \
             FROM jsonb_to_recordset($1) AS n(notification_id uuid, user_id uuid, notification_type text, \
                 channel text, event_id uuid, template_name text, template_component text, locale text, \
                 destination text, critical boolean, variables jsonb, secret_variables jsonb) \
             ORDER BY notification_id \
             ON CONFLICT (notification_id) DO NOTHING RETURNING ",
            notification_columns!()
        ),
        &[json(rows)],
    )
}

/// Messages due for another attempt, oldest first, locked (skipping those another
/// delivery holds).
pub fn due(db: &Db, limit: i64) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "SELECT ",
            notification_columns!(),
            " FROM notifications WHERE status = 'PENDING' AND next_attempt_at <= CURRENT_TIMESTAMP \
             ORDER BY next_attempt_at, notification_id LIMIT $1 FOR UPDATE SKIP LOCKED"
        ),
        &[int(limit)],
    )
}

/// Writes the attempts' outcomes: a JSON array of `{notification_id, status, subject, message,
/// html_message, template_version, failure_reason, retry_count, retry_in_ms, redact,
/// attempted_at_micros}`. A message leaving `PENDING` forgets its secret variables, and its
/// text when `redact`; `sent_at` and `delivered_at` are when its channel took it (the host's
/// clock as the attempt ended), not when the batch began.
pub fn record_attempts(db: &Db, outcomes: &Json) -> Result<u64, DbError> {
    db.execute(
        "UPDATE notifications n SET status = o.status, \
             subject = CASE WHEN o.redact AND o.status <> 'PENDING' THEN NULL ELSE COALESCE(o.subject, n.subject) END, \
             message = CASE WHEN o.redact AND o.status <> 'PENDING' THEN $2 ELSE COALESCE(o.message, n.message) END, \
             html_message = CASE WHEN o.redact AND o.status <> 'PENDING' THEN NULL \
                                 ELSE COALESCE(o.html_message, n.html_message) END, \
             template_version = COALESCE(o.template_version, n.template_version), \
             failure_reason = o.failure_reason, retry_count = o.retry_count, \
             sent_at = CASE WHEN o.status IN ('SENT', 'DELIVERED') THEN to_timestamp(o.attempted_at_micros / 1e6)::timestamp \
                       ELSE n.sent_at END, \
             delivered_at = CASE WHEN o.status = 'DELIVERED' THEN to_timestamp(o.attempted_at_micros / 1e6)::timestamp \
                            ELSE n.delivered_at END, \
             next_attempt_at = CASE WHEN o.status = 'PENDING' \
                                    THEN CURRENT_TIMESTAMP + o.retry_in_ms * INTERVAL '1 millisecond' END, \
             secret_variables = CASE WHEN o.status = 'PENDING' THEN n.secret_variables END \
         FROM jsonb_to_recordset($1) AS o(notification_id uuid, status text, subject text, message text, \
              html_message text, template_version bigint, failure_reason text, retry_count int, \
              retry_in_ms bigint, redact boolean, attempted_at_micros bigint) \
         WHERE n.notification_id = o.notification_id",
        &[json(outcomes), text(crate::domain::REDACTED)],
    )
}

/// The retry policy.
pub fn retry_policy(db: &Db) -> Result<RetryPolicy, DbError> {
    let row = settings(db)?;
    Ok(RetryPolicy {
        max_attempts: row.int("max_attempts"),
        base_ms: row.int("retry_base_ms"),
        max_ms: row.int("retry_max_ms"),
    })
}

pub fn settings(db: &Db) -> Result<Row, DbError> {
    db.query_one("SELECT max_attempts, retry_base_ms, retry_max_ms, updated_at FROM notification_settings", &[])
}

/// Sets the retry policy (each field when given).
pub fn update_settings(
    db: &Db,
    max_attempts: Option<i64>,
    base_ms: Option<i64>,
    max_ms: Option<i64>,
) -> Result<Row, DbError> {
    let opt = |value: Option<i64>| value.map(int).unwrap_or(micropay_sdk::Value::Null);
    db.query_one(
        "UPDATE notification_settings SET max_attempts = COALESCE($1::int, max_attempts), \
             retry_base_ms = COALESCE($2::int, retry_base_ms), retry_max_ms = COALESCE($3::int, retry_max_ms), \
             updated_at = CURRENT_TIMESTAMP \
         RETURNING max_attempts, retry_base_ms, retry_max_ms, updated_at",
        &[opt(max_attempts), opt(base_ms), opt(max_ms)],
    )
}

/// What a listing of messages filters on.
pub struct Filter {
    pub user_id: Option<String>,
    pub channel: Option<&'static str>,
    pub status: Option<String>,
    pub unread: bool,
    pub page: micropay_sdk::cursor::Page,
}

/// Messages, newest first.
pub fn list(db: &Db, filter: &Filter) -> Result<Vec<Row>, DbError> {
    let mut conditions = Conditions::default();
    if let Some(user_id) = &filter.user_id {
        let user = conditions.bind(uuid(user_id.as_str()));
        conditions.and(&format!("user_id = {user}"));
    }
    if let Some(channel) = filter.channel {
        let channel = conditions.bind(text(channel));
        conditions.and(&format!("channel = {channel}"));
    }
    if let Some(status) = &filter.status {
        let status = conditions.bind(text(status.as_str()));
        conditions.and(&format!("status = {status}"));
    }
    if filter.unread {
        conditions.and("read_at IS NULL");
    }
    let order = filter.page.keyset(&mut conditions, "created_at", "notification_id");
    let sql = format!(concat!("SELECT ", notification_columns!(), " FROM notifications{}{}"), conditions.sql, order);
    db.query(&sql, &conditions.params)
}

/// Marks one of `user_id`'s in-app messages read (the first time), and returns it; none when
/// the user has no such message.
pub fn mark_read(db: &Db, user_id: &str, notification_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!(
            "UPDATE notifications SET read_at = COALESCE(read_at, CURRENT_TIMESTAMP) \
             WHERE notification_id = $1 AND user_id = $2 AND channel = 'IN_APP' RETURNING ",
            notification_columns!()
        ),
        &[uuid(notification_id), uuid(user_id)],
    )
}

/// One message by id.
pub fn find(db: &Db, notification_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", notification_columns!(), " FROM notifications WHERE notification_id = $1"),
        &[uuid(notification_id)],
    )
}

/// A template's row for `name` on `channel`, if mapped.
pub fn template(db: &Db, name: &str, channel: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        "SELECT template_name, channel, component, variables FROM notification_templates \
         WHERE template_name = $1 AND channel = $2",
        &[text(name), text(channel)],
    )
}

/// Sets a template mapping's component and whether it is active.
pub fn update_template(
    db: &Db,
    name: &str,
    channel: &str,
    component: Option<&str>,
    is_active: Option<bool>,
) -> Result<Option<Row>, DbError> {
    db.query_opt(
        "UPDATE notification_templates SET component = COALESCE($3, component), \
             is_active = COALESCE($4, is_active), updated_at = CURRENT_TIMESTAMP \
         WHERE template_name = $1 AND channel = $2 \
         RETURNING template_id, template_name, template_type, channel, component, variables, is_active, \
                   created_at, updated_at",
        &[text(name), text(channel), opt_text(component), micropay_sdk::db::param::opt_boolean(is_active)],
    )
}

// ---- webhook endpoints ----

/// The columns of an endpoint as its user sees it (never its secret).
macro_rules! endpoint_columns {
    () => {
        "endpoint_id, user_id, url, is_active, created_at"
    };
}

/// Registers an endpoint and returns it.
pub fn insert_endpoint(db: &Db, user_id: &str, url: &str, secret: &str) -> Result<Row, DbError> {
    db.query_one(
        concat!(
            "INSERT INTO webhook_endpoints (user_id, url, secret) VALUES ($1, $2, $3) RETURNING ",
            endpoint_columns!()
        ),
        &[uuid(user_id), text(url), text(secret)],
    )
}

/// A user's active endpoints, oldest first.
pub fn endpoints_of(db: &Db, user_id: &str) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "SELECT ",
            endpoint_columns!(),
            " FROM webhook_endpoints WHERE user_id = $1 AND is_active ORDER BY created_at, endpoint_id"
        ),
        &[uuid(user_id)],
    )
}

/// How many active endpoints a user has.
pub fn count_endpoints(db: &Db, user_id: &str) -> Result<i64, DbError> {
    Ok(db
        .query_one("SELECT count(*) AS n FROM webhook_endpoints WHERE user_id = $1 AND is_active", &[uuid(user_id)])?
        .int("n"))
}

/// Removes one of `user_id`'s endpoints; whether there was one.
pub fn deactivate_endpoint(db: &Db, user_id: &str, endpoint_id: &str) -> Result<bool, DbError> {
    Ok(db.execute(
        "UPDATE webhook_endpoints SET is_active = FALSE WHERE endpoint_id = $1 AND user_id = $2 AND is_active",
        &[uuid(endpoint_id), uuid(user_id)],
    )? == 1)
}

/// The active endpoints of these users (their ids, by user).
pub fn active_endpoints(db: &Db, user_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT endpoint_id, user_id FROM webhook_endpoints WHERE is_active \
         AND user_id IN (SELECT u::uuid FROM jsonb_array_elements_text($1::jsonb) AS t(u)) \
         ORDER BY created_at, endpoint_id",
        &[micropay_sdk::db::param::id_list(user_ids)],
    )
}

/// These endpoints' URLs and secrets, to deliver to (removed ones included: a message made
/// before the removal fails rather than goes).
pub fn endpoints_by_id(db: &Db, endpoint_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT endpoint_id, url, secret, is_active FROM webhook_endpoints \
         WHERE endpoint_id IN (SELECT e::uuid FROM jsonb_array_elements_text($1::jsonb) AS t(e))",
        &[micropay_sdk::db::param::id_list(endpoint_ids)],
    )
}
