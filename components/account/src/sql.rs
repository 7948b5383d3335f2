//! The account service's SQL, against the tables of `migrations/account/`.
//!
//! Stored times are the database's `now()` (UTC for the service's role); limit periods are
//! computed from the host's clock, which is the same wall clock. Several accounts, or their
//! limit rows, are always read and locked in `account_id` order, so two units of work never
//! wait on each other in a circle. Sets of ids travel as one JSON array parameter, matched as
//! `= ANY (ARRAY(SELECT ...))` so that the key's index is used (see the balance service's
//! `sql.rs`).

use micropay_sdk::db::DbError;
use micropay_sdk::db::param::{boolean, decimal, id_list, int, json, text, timestamp, uuid};
use micropay_sdk::money::{self, Decimal};
use micropay_sdk::{Db, Row, Value};

use crate::domain::{AccountType, LimitType, LimitUsage, SYSTEM_USER_ID, Status, TransferLimits};

/// The columns of an account as the API shows it.
macro_rules! account_columns {
    () => {
        "account_id, user_id, account_number, account_type, currency, status, balance_snapshot, \
         balance_last_updated_at, daily_transfer_limit, monthly_transfer_limit, created_at, updated_at, closed_at"
    };
}

/// The columns of a limit row.
macro_rules! limit_columns {
    () => {
        "limit_id, account_id, limit_type, limit_amount, period_type, current_usage, period_start_at, period_end_at"
    };
}

fn money_value(amount: Decimal) -> Value {
    decimal(money::format(amount))
}

// ---- accounts ----

/// An account about to be opened.
pub struct NewAccount<'a> {
    /// The owner (the nil UUID for a system account).
    pub user_id: &'a str,
    /// A freshly drawn number with its check digits.
    pub account_number: &'a str,
    pub account_type: AccountType,
    pub currency: &'a str,
    /// The limits mirrored on the account row; `None` for a system account.
    pub limits: Option<TransferLimits>,
}

/// Inserts an account and returns it, or `None` when a unique key is already taken: its number
/// (drawn again by the caller) or, for a system account, the currency's account of that type.
/// `ON CONFLICT DO NOTHING` rather than an error, because an error would end the unit of work.
pub fn insert_account(db: &Db, account: &NewAccount<'_>) -> Result<Option<Row>, DbError> {
    let limit = |pick: fn(TransferLimits) -> Decimal| account.limits.map_or(Value::Null, |l| money_value(pick(l)));
    db.query_opt(
        concat!(
            "INSERT INTO accounts (user_id, account_number, account_type, currency, \
             daily_transfer_limit, monthly_transfer_limit) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING ",
            account_columns!()
        ),
        &[
            uuid(account.user_id),
            text(account.account_number),
            text(account.account_type.as_str()),
            text(account.currency),
            limit(|l| l.daily),
            limit(|l| l.monthly),
        ],
    )
}

/// An account by id.
pub fn find_account(db: &Db, account_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(concat!("SELECT ", account_columns!(), " FROM accounts WHERE account_id = $1"), &[uuid(account_id)])
}

/// An account by id, its row locked until the unit of work ends: for changes that depend on
/// its current status or limits.
pub fn lock_account(db: &Db, account_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", account_columns!(), " FROM accounts WHERE account_id = $1 FOR UPDATE"),
        &[uuid(account_id)],
    )
}

/// An account by its (normalised) number.
pub fn find_account_by_number(db: &Db, account_number: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", account_columns!(), " FROM accounts WHERE account_number = $1"),
        &[text(account_number)],
    )
}

/// The accounts a posting names (`$1`) for `/internal/authorize`, in one statement: the user
/// accounts among them locked `FOR KEY SHARE` in `account_id` order and read as they are once
/// locked, the posting `$2` recorded in flight on each of them, and the system accounts (owner
/// `$3`, never frozen nor closed) read without a lock.
///
/// `FOR KEY SHARE` conflicts with the `FOR UPDATE` that freezing and closing take
/// ([`lock_account`]), so an authorization and a status change of the same account take turns:
/// one waits for the other's commit, then reads what it wrote (a locking read returns the
/// latest committed row). It does not conflict with the `UPDATE` of the balance snapshot
/// ([`record_balances`]), nor with other authorizations. The rows read after the lock come from
/// the locking CTE itself: another scan in the same statement would see the statement's
/// snapshot, taken before any wait. The record is written before the rules are checked; a
/// refusal rolls the unit of work back, record included.
const AUTHORIZE_ACCOUNTS: &str = concat!(
    "
WITH user_accounts AS (
    SELECT ",
    account_columns!(),
    " FROM accounts
    WHERE account_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)::uuid)) AND user_id <> $3
    ORDER BY account_id
    FOR KEY SHARE
),
system_accounts AS (
    SELECT ",
    account_columns!(),
    " FROM accounts
    WHERE account_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)::uuid)) AND user_id = $3
),
in_flight AS (
    INSERT INTO account_postings_in_flight (account_id, transaction_id)
    SELECT account_id, $2 FROM user_accounts
    ON CONFLICT DO NOTHING
)
SELECT * FROM user_accounts
UNION ALL
SELECT * FROM system_accounts
ORDER BY account_id"
);

/// The accounts named by `ids` that exist, in `account_id` order, the user accounts among them
/// locked and `transaction_id` recorded in flight on each (see [`AUTHORIZE_ACCOUNTS`]).
pub fn authorize_accounts(db: &Db, ids: &[String], transaction_id: &str) -> Result<Vec<Row>, DbError> {
    db.query(AUTHORIZE_ACCOUNTS, &[id_list(ids), uuid(transaction_id), uuid(SYSTEM_USER_ID)])
}

/// Every account, or those of one owner (the nil UUID: the system accounts), newest first.
pub fn list_accounts(db: &Db, owner: Option<&str>) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE $1::uuid IS NULL OR user_id = $1::uuid ORDER BY created_at DESC, account_id DESC"
        ),
        &[owner.map_or(Value::Null, uuid)],
    )
}

/// The system account of a currency and type.
pub fn find_system_account(db: &Db, currency: &str, account_type: AccountType) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE user_id = $1 AND currency = $2 AND account_type = $3"
        ),
        &[uuid(SYSTEM_USER_ID), text(currency), text(account_type.as_str())],
    )
}

/// Every system account, by currency then type.
pub fn list_system_accounts(db: &Db) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!("SELECT ", account_columns!(), " FROM accounts WHERE user_id = $1 ORDER BY currency, account_type"),
        &[uuid(SYSTEM_USER_ID)],
    )
}

/// Moves an account to `status` (stamping `closed_at` when it closes) and returns it.
pub fn set_status(db: &Db, account_id: &str, status: Status) -> Result<Row, DbError> {
    db.query_one(
        concat!(
            "UPDATE accounts SET status = $2, updated_at = now(), \
             closed_at = CASE WHEN $3 THEN now() ELSE closed_at END \
             WHERE account_id = $1 RETURNING ",
            account_columns!()
        ),
        &[uuid(account_id), text(status.as_str()), boolean(status == Status::Closed)],
    )
}

/// Sets an account's limits: both limit rows (locked beforehand with [`lock_limits`]) and
/// their mirror on the account row, which it returns.
pub fn set_limits(db: &Db, account_id: &str, limits: TransferLimits) -> Result<Row, DbError> {
    for limit_type in LimitType::ALL {
        db.execute(
            "UPDATE account_limits SET limit_amount = $3, updated_at = now() WHERE account_id = $1 AND limit_type = $2",
            &[uuid(account_id), text(limit_type.as_str()), money_value(limit_type.amount_in(limits))],
        )?;
    }
    db.query_one(
        concat!(
            "UPDATE accounts SET daily_transfer_limit = $2, monthly_transfer_limit = $3, updated_at = now() \
             WHERE account_id = $1 RETURNING ",
            account_columns!()
        ),
        &[uuid(account_id), money_value(limits.daily), money_value(limits.monthly)],
    )
}

/// What a `balance.updated` reports of an account.
pub struct BalanceUpdate {
    pub account_id: String,
    pub balance: Decimal,
    pub sequence: i64,
    /// The postings applied to it, no longer in flight.
    pub applied: Vec<String>,
}

const RECORD_BALANCES: &str = "
WITH given AS (
    SELECT u.account_id, u.balance, u.sequence, u.applied
    FROM jsonb_to_recordset($1) AS u(account_id uuid, balance numeric, sequence bigint, applied jsonb)
),
landed AS (
    DELETE FROM account_postings_in_flight AS f
    USING given AS g, jsonb_array_elements_text(g.applied) AS t(transaction_id)
    WHERE f.account_id = g.account_id AND f.transaction_id = t.transaction_id::uuid
),
newest AS (
    SELECT DISTINCT ON (account_id) account_id, balance, sequence FROM given ORDER BY account_id, sequence DESC
),
locked AS (
    SELECT a.account_id, n.balance, n.sequence
    FROM accounts AS a JOIN newest AS n ON n.account_id = a.account_id
    WHERE a.balance_sequence < n.sequence
    ORDER BY a.account_id
    FOR NO KEY UPDATE OF a
)
UPDATE accounts AS a SET balance_snapshot = l.balance, balance_last_updated_at = now(), balance_sequence = l.sequence
FROM locked AS l
WHERE a.account_id = l.account_id";

/// Records a batch of reported balances in one statement: each account's snapshot at the
/// newest sequence reported for it, if newer than the stored one, and the records in flight of
/// the postings applied removed. Returns the snapshots moved.
pub fn record_balances(db: &Db, updates: &[BalanceUpdate]) -> Result<u64, DbError> {
    let rows: Vec<serde_json::Value> = updates
        .iter()
        .map(|update| {
            serde_json::json!({
                "account_id": update.account_id,
                "balance": money::format(update.balance),
                "sequence": update.sequence,
                "applied": update.applied,
            })
        })
        .collect();
    db.execute(RECORD_BALANCES, &[json(&serde_json::Value::Array(rows))])
}

// ---- limits ----

/// Creates a new account's two limit rows, unused, over the periods holding `now`; returns them
/// in limit type order.
pub fn insert_limits(db: &Db, account_id: &str, limits: TransferLimits, now: i64) -> Result<Vec<Row>, DbError> {
    LimitType::ALL
        .into_iter()
        .map(|limit_type| {
            let period_type = limit_type.period_type();
            let period = period_type.containing(now);
            db.query_one(
                concat!(
                    "INSERT INTO account_limits (account_id, limit_type, limit_amount, period_type, current_usage, \
                     period_start_at, period_end_at) VALUES ($1, $2, $3, $4, 0, $5, $6) RETURNING ",
                    limit_columns!()
                ),
                &[
                    uuid(account_id),
                    text(limit_type.as_str()),
                    money_value(limit_type.amount_in(limits)),
                    text(period_type.as_str()),
                    timestamp(period.start),
                    timestamp(period.end),
                ],
            )
        })
        .collect()
}

/// The limit rows of the accounts named by `ids`, by account then limit type.
pub fn find_limits(db: &Db, ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "SELECT ",
            limit_columns!(),
            " FROM account_limits WHERE account_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)::uuid)) \
             ORDER BY account_id, limit_type"
        ),
        &[id_list(ids)],
    )
}

/// The limit rows of the accounts named by `ids`, locked until the unit of work ends, in
/// account then limit type order: a posting's usage is counted against rows no one else is
/// changing, and concurrent postings over the same accounts queue in the same order.
pub fn lock_limits(db: &Db, ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        concat!(
            "SELECT ",
            limit_columns!(),
            " FROM account_limits WHERE account_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)::uuid)) \
             ORDER BY account_id, limit_type FOR UPDATE"
        ),
        &[id_list(ids)],
    )
}

/// Stores limit rows' usage and periods (after counting, giving back or rolling over), each
/// `(limit_id, usage)`, with one statement. The rows are the caller's, locked by
/// [`lock_limits`].
pub fn set_usages(db: &Db, usages: &[(String, LimitUsage)]) -> Result<(), DbError> {
    if usages.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = usages
        .iter()
        .map(|(limit_id, usage)| {
            serde_json::json!({
                "limit_id": limit_id,
                "current_usage": money::format(usage.current_usage),
                "period_start_at": usage.period.start,
                "period_end_at": usage.period.end,
            })
        })
        .collect();
    db.execute(
        "UPDATE account_limits AS l SET current_usage = u.current_usage, \
                period_start_at = 'epoch'::timestamp + u.period_start_at * interval '1 microsecond', \
                period_end_at = 'epoch'::timestamp + u.period_end_at * interval '1 microsecond', \
                updated_at = now() \
         FROM jsonb_to_recordset($1) AS u(limit_id uuid, current_usage numeric, period_start_at bigint, \
                                          period_end_at bigint) \
         WHERE l.limit_id = u.limit_id",
        &[json(&serde_json::Value::Array(rows))],
    )?;
    Ok(())
}

// ---- postings in flight ----

/// Up to `limit` postings in flight on an account (authorized, not yet applied to it nor given
/// up), oldest first.
pub fn postings_in_flight(db: &Db, account_id: &str, limit: i64) -> Result<Vec<String>, DbError> {
    Ok(db
        .query(
            "SELECT transaction_id FROM account_postings_in_flight WHERE account_id = $1 \
             ORDER BY authorized_at, transaction_id LIMIT $2",
            &[uuid(account_id), int(limit)],
        )?
        .iter()
        .map(|row| row.text("transaction_id"))
        .collect())
}

/// Gives up the records of a posting that failed after its authorization, on the accounts it
/// named. Returns how many there were.
pub fn give_up_in_flight(db: &Db, ids: &[String], transaction_id: &str) -> Result<u64, DbError> {
    db.execute(
        "DELETE FROM account_postings_in_flight \
         WHERE account_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)::uuid)) AND transaction_id = $2",
        &[id_list(ids), uuid(transaction_id)],
    )
}

/// Up to `limit` postings with a record in flight written more than `older_than_seconds` ago,
/// oldest first.
pub fn stale_postings_in_flight(db: &Db, older_than_seconds: i64, limit: i64) -> Result<Vec<String>, DbError> {
    Ok(db
        .query(
            "SELECT transaction_id FROM account_postings_in_flight \
             WHERE authorized_at < now() - $1 * interval '1 second' \
             GROUP BY transaction_id ORDER BY min(authorized_at), transaction_id LIMIT $2",
            &[int(older_than_seconds), int(limit)],
        )?
        .iter()
        .map(|row| row.text("transaction_id"))
        .collect())
}

/// Removes every record in flight of these postings written more than `older_than_seconds`
/// ago. Returns how many there were.
pub fn clear_postings_in_flight(db: &Db, transaction_ids: &[String], older_than_seconds: i64) -> Result<u64, DbError> {
    db.execute(
        "DELETE FROM account_postings_in_flight \
         WHERE transaction_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)::uuid)) \
           AND authorized_at < now() - $2 * interval '1 second'",
        &[id_list(transaction_ids), int(older_than_seconds)],
    )
}
