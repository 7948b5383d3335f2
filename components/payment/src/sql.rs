//! The payment service's statements, over the tables of `migrations/payment/`.

use std::collections::BTreeMap;

use micropay_sdk::db::param::{decimal, id_list, int, json, opt_text, text, timestamp, uuid};
use micropay_sdk::db::{Conditions, DbError};
use micropay_sdk::{Db, Row, Value};

use crate::domain::{ListQuery, PaymentType, Status};

/// Every column of a payment as the API shows it, over `payments AS p`.
macro_rules! payment_columns {
    () => {
        "p.payment_id, p.payment_type, p.status, p.payer_account_id, p.payee_account_id, p.amount, p.currency, \
         p.description, p.reference, p.initiated_by, p.failure_reason, p.error_code, p.error_message, \
         p.created_at, p.updated_at, p.completed_at, p.cancelled_at, p.payer_user_id, p.payee_user_id, \
         p.capture_method, p.refund_of, p.refunded_amount, p.idempotency_key"
    };
}

// ---- idempotency keys ----

/// Takes the key's transaction-level advisory lock if no other unit of work holds it: false
/// while a request with the same key is running.
pub fn try_lock_key(db: &Db, scope: &str, key: &str) -> Result<bool, DbError> {
    let row = db.query_one(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || chr(10) || $2, 0)) AS taken",
        &[text(scope), text(key)],
    )?;
    Ok(row.bool("taken"))
}

/// The stored first answer of a key: `fingerprint, response_status, response_body, payment_id`.
pub fn find_key(db: &Db, scope: &str, key: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        "SELECT fingerprint, response_status, response_body, payment_id FROM idempotency_keys \
         WHERE scope = $1 AND idempotency_key = $2",
        &[text(scope), text(key)],
    )
}

/// A key's first answer, as stored.
pub struct StoredAnswer<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub payment_id: Option<&'a str>,
    pub status: u16,
    pub body: &'a str,
}

pub fn insert_key(db: &Db, answer: &StoredAnswer) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO idempotency_keys \
             (scope, idempotency_key, fingerprint, payment_id, response_status, response_body) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            text(answer.scope),
            text(answer.key),
            text(answer.fingerprint),
            answer.payment_id.map_or(Value::Null, uuid),
            int(i64::from(answer.status)),
            text(answer.body),
        ],
    )?;
    Ok(())
}

/// Deletes the keys written over `hours` ago; returns how many.
pub fn purge_keys(db: &Db, hours: i64) -> Result<u64, DbError> {
    db.execute("DELETE FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 hour'", &[int(hours)])
}

// ---- payments ----

/// A payment's row as it is first written.
#[derive(Clone, Copy)]
pub struct NewPaymentRow<'a> {
    pub payment_id: &'a str,
    pub idempotency_key: &'a str,
    pub payment_type: PaymentType,
    pub status: Status,
    pub payer_account_id: &'a str,
    pub payee_account_id: &'a str,
    pub amount: &'a str,
    pub currency: &'a str,
    pub description: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub initiated_by: &'a str,
    pub payer_user_id: &'a str,
    pub payee_user_id: Option<&'a str>,
    pub capture_method: &'a str,
    pub refund_of: Option<&'a str>,
    /// Why it failed, for a payment refused at its authorization: reason, code, message.
    pub failure: Option<(&'a str, &'a str, &'a str)>,
}

/// Inserts a payment; returns it as the API shows it (without metadata).
pub fn insert_payment(db: &Db, new: &NewPaymentRow) -> Result<Row, DbError> {
    let (reason, code, message) = match new.failure {
        Some((reason, code, message)) => (Some(reason), Some(code), Some(message)),
        None => (None, None, None),
    };
    db.query_one(
        concat!(
            "WITH p AS (INSERT INTO payments (payment_id, idempotency_key, payment_type, status, payer_account_id, \
                 payee_account_id, amount, currency, description, reference, initiated_by, payer_user_id, \
                 payee_user_id, capture_method, refund_of, failure_reason, error_code, error_message, \
                 posting_requested_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
                 CASE WHEN $4 = 'PROCESSING' THEN now() END) \
             RETURNING *) \
             SELECT ",
            payment_columns!(),
            " FROM p"
        ),
        &[
            uuid(new.payment_id),
            text(new.idempotency_key),
            text(new.payment_type.as_str()),
            text(new.status.as_str()),
            uuid(new.payer_account_id),
            uuid(new.payee_account_id),
            decimal(new.amount),
            text(new.currency),
            opt_text(new.description),
            opt_text(new.reference),
            uuid(new.initiated_by),
            uuid(new.payer_user_id),
            new.payee_user_id.map_or(Value::Null, uuid),
            text(new.capture_method),
            new.refund_of.map_or(Value::Null, uuid),
            opt_text(reason),
            opt_text(code),
            opt_text(message),
        ],
    )
}

/// Inserts a payment's metadata pairs in one statement.
pub fn insert_metadata(db: &Db, payment_id: &str, metadata: &BTreeMap<String, String>) -> Result<(), DbError> {
    if metadata.is_empty() {
        return Ok(());
    }
    let pairs = serde_json::to_value(metadata).expect("strings serialise");
    db.execute(
        "INSERT INTO payment_metadata (payment_id, metadata_key, metadata_value) \
         SELECT $1, m.key, m.value FROM jsonb_each_text($2::jsonb) AS m",
        &[uuid(payment_id), json(&pairs)],
    )?;
    Ok(())
}

/// The metadata of `payment_ids`: `payment_id, metadata_key, metadata_value`.
pub fn metadata_of(db: &Db, payment_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT payment_id, metadata_key, metadata_value FROM payment_metadata \
         WHERE payment_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid)) \
         ORDER BY payment_id, metadata_key",
        &[id_list(payment_ids)],
    )
}

pub fn find_payment(db: &Db, payment_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", payment_columns!(), " FROM payments AS p WHERE p.payment_id = $1"),
        &[uuid(payment_id)],
    )
}

/// A payment, locked until the unit of work ends (`FOR UPDATE`): every change of a payment's
/// status takes this lock first, so two changes take turns and the second sees the first.
pub fn lock_payment(db: &Db, payment_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", payment_columns!(), " FROM payments AS p WHERE p.payment_id = $1 FOR UPDATE"),
        &[uuid(payment_id)],
    )
}

/// Locks payments until the unit of work ends, one after the other in id order.
pub fn lock_payments(db: &Db, payment_ids: &[String]) -> Result<(), DbError> {
    if payment_ids.is_empty() {
        return Ok(());
    }
    db.query(
        "SELECT payment_id FROM payments \
         WHERE payment_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid)) \
         ORDER BY payment_id FOR UPDATE",
        &[id_list(payment_ids)],
    )?;
    Ok(())
}

/// A page of payments, newest first, one row past the page (to tell whether another follows):
/// every payment, or those `user_id` pays or is paid by.
pub fn list_payments(db: &Db, user_id: Option<&str>, query: &ListQuery) -> Result<Vec<Row>, DbError> {
    let mut conditions = Conditions::default();
    if let Some(user_id) = user_id {
        let user = conditions.bind(uuid(user_id));
        conditions.and(&format!("(p.payer_user_id = {user} OR p.payee_user_id = {user})"));
    }
    if let Some(status) = query.status {
        let status = conditions.bind(text(status.as_str()));
        conditions.and(&format!("p.status = {status}"));
    }
    if let Some(from) = query.from {
        let from = conditions.bind(timestamp(from));
        conditions.and(&format!("p.created_at >= {from}"));
    }
    if let Some(to) = query.to {
        let to = conditions.bind(timestamp(to));
        conditions.and(&format!("p.created_at < {to}"));
    }
    let order = query.page.keyset(&mut conditions, "p.created_at", "p.payment_id");
    let sql = format!(concat!("SELECT ", payment_columns!(), " FROM payments AS p{}{}"), conditions.sql, order);
    db.query(&sql, &conditions.params)
}

/// The statuses of the payments `payment_ids`: `payment_id, status`.
pub fn statuses(db: &Db, payment_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT payment_id, status FROM payments \
         WHERE payment_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)::uuid))",
        &[id_list(payment_ids)],
    )
}

/// The refunds of a payment, oldest first.
pub fn refunds_of(db: &Db, payment_id: &str) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments AS p WHERE p.refund_of = $1 ORDER BY p.created_at, p.payment_id"
        ),
        &[uuid(payment_id)],
    )
}

/// Moves a locked payment to `status`, stamping what the status means (`completed_at`,
/// `cancelled_at`, the posting's request time) and why it failed or was cancelled (`reason`;
/// `error`: its code and message).
pub fn set_status(
    db: &Db,
    payment_id: &str,
    status: Status,
    reason: Option<&str>,
    error: Option<(&str, &str)>,
) -> Result<Row, DbError> {
    db.query_one(
        concat!(
            "WITH p AS (UPDATE payments SET status = $2, updated_at = now(), \
                 completed_at = CASE WHEN $2 = 'COMPLETED' THEN now() ELSE completed_at END, \
                 cancelled_at = CASE WHEN $2 = 'CANCELLED' THEN now() ELSE cancelled_at END, \
                 posting_requested_at = CASE WHEN $2 = 'PROCESSING' THEN now() ELSE posting_requested_at END, \
                 failure_reason = COALESCE($3, failure_reason), \
                 error_code = COALESCE($4, error_code), error_message = COALESCE($5, error_message) \
             WHERE payment_id = $1 RETURNING *) \
             SELECT ",
            payment_columns!(),
            " FROM p"
        ),
        &[
            uuid(payment_id),
            text(status.as_str()),
            opt_text(reason),
            opt_text(error.map(|(code, _)| code)),
            opt_text(error.map(|(_, message)| message)),
        ],
    )
}

/// Completes the `PROCESSING` payments whose postings are `transaction_ids` (their own ids),
/// locked in id order; returns them. Another service's posting, or a repeat, is not among
/// them.
pub fn complete(db: &Db, transaction_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "WITH due AS (SELECT payment_id FROM payments \
                          WHERE payment_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid)) \
                            AND status = 'PROCESSING' ORDER BY payment_id FOR UPDATE), \
             p AS (UPDATE payments AS q SET status = 'COMPLETED', completed_at = now(), updated_at = now() \
                   FROM due WHERE q.payment_id = due.payment_id RETURNING q.*) \
             SELECT ",
            payment_columns!(),
            " FROM p ORDER BY p.payment_id"
        ),
        &[id_list(transaction_ids)],
    )
}

/// Counts `amount` more as refunded from a locked payment (the table's CHECK refuses more
/// than its amount in all), or gives it back (a negative `amount`, for a refund that failed).
pub fn add_refunded(db: &Db, payment_id: &str, amount: &str) -> Result<(), DbError> {
    db.execute(
        "UPDATE payments SET refunded_amount = refunded_amount + $2, updated_at = now() WHERE payment_id = $1",
        &[uuid(payment_id), decimal(amount)],
    )?;
    Ok(())
}

/// After a refund of it completed, a payment is `REFUNDED` when its completed refunds sum to
/// its amount, `PARTIALLY_REFUNDED` otherwise. Returns it.
pub fn mark_refunded(db: &Db, payment_id: &str) -> Result<Row, DbError> {
    db.query_one(
        concat!(
            "WITH done AS (SELECT COALESCE(sum(amount), 0) AS refunded FROM payments \
                           WHERE refund_of = $1 AND status = 'COMPLETED'), \
             p AS (UPDATE payments AS o \
                   SET status = CASE WHEN done.refunded >= o.amount THEN 'REFUNDED' ELSE 'PARTIALLY_REFUNDED' END, \
                       updated_at = now() \
                   FROM done WHERE o.payment_id = $1 RETURNING o.*) \
             SELECT ",
            payment_columns!(),
            " FROM p"
        ),
        &[uuid(payment_id)],
    )
}

// ---- the sweeper ----

/// `PROCESSING` payments whose posting was asked for over `seconds` ago, locked (skipping
/// those another unit of work holds).
pub fn stale_processing(db: &Db, seconds: i64, limit: i64) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments AS p WHERE p.status = 'PROCESSING' \
               AND p.posting_requested_at < now() - $1 * interval '1 second' \
             ORDER BY p.posting_requested_at LIMIT $2 FOR UPDATE SKIP LOCKED"
        ),
        &[int(seconds), int(limit)],
    )
}

/// `INITIATED` payments created over `seconds` ago (uncaptured), locked (skipping those
/// another unit of work holds).
pub fn expired_captures(db: &Db, seconds: i64, limit: i64) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments AS p WHERE p.status = 'INITIATED' \
               AND p.created_at < now() - $1 * interval '1 second' \
             ORDER BY p.created_at LIMIT $2 FOR UPDATE SKIP LOCKED"
        ),
        &[int(seconds), int(limit)],
    )
}

/// Records a retried step of a payment (numbered after its earlier ones) and, for an asked
/// posting, when it was asked.
pub fn record_retry(db: &Db, payment_id: &str, reason: &str, status: &str, error: Option<&str>) -> Result<(), DbError> {
    db.execute(
        "WITH retry AS (INSERT INTO payment_retries (payment_id, retry_attempt, retry_reason, retry_status, error_message) \
             SELECT $1, COALESCE(max(retry_attempt), 0) + 1, $2, $3, $4 FROM payment_retries WHERE payment_id = $1) \
         UPDATE payments SET posting_requested_at = now(), updated_at = now() WHERE payment_id = $1",
        &[uuid(payment_id), text(reason), text(status), opt_text(error)],
    )?;
    Ok(())
}

/// The retried steps of a payment, oldest first.
pub fn retries_of(db: &Db, payment_id: &str) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT retry_attempt, retry_reason, retry_status, error_message, retried_at FROM payment_retries \
         WHERE payment_id = $1 ORDER BY retry_attempt",
        &[uuid(payment_id)],
    )
}
