//! The transaction service's SQL, against the tables of `migrations/transaction/`.
//!
//! Entries are only ever inserted: the database refuses to change or remove one, and refuses
//! to commit a transaction whose entries do not balance. Reads of a transaction go through
//! `transaction_columns!`, so every answer carries the same columns.
//!
//! Lists of ids are one JSON array parameter matched as `= ANY (ARRAY(SELECT ...))`, so that
//! the key's index is used (see the balance service's `sql.rs`).

use micropay_sdk::db::param::{id_list, int, json, text, timestamp, uuid};
use micropay_sdk::db::{Conditions, DbError};
use micropay_sdk::money;
use micropay_sdk::{Db, Row};
use serde_json::json;

use crate::domain::{Entry, ListQuery, Total, TransactionType};

/// The constraint allowing one reversal per transaction: its violation is a reversal that a
/// concurrent one beat to it.
pub const ONE_REVERSAL: &str = "transaction_reversals_original_transaction_id_key";

/// The columns of a transaction as the API shows it (without its entries), over
/// `transactions_from!`; `reversal_of` is the transaction a reversal reverses.
macro_rules! transaction_columns {
    () => {
        "t.transaction_id, t.payment_id, t.transaction_type, t.status, t.total_amount, t.currency, \
         t.description, t.initiated_by, t.created_at, t.settled_at, t.reversed_at, t.reversal_reason, \
         r.original_transaction_id AS reversal_of"
    };
}

/// The tables `transaction_columns!` reads.
macro_rules! transactions_from {
    () => {
        " FROM transactions AS t \
         LEFT JOIN transaction_reversals AS r ON r.reversal_transaction_id = t.transaction_id"
    };
}

/// A posting as it is recorded: its transaction's row and its entries.
pub struct NewTransaction<'a> {
    pub transaction_id: &'a str,
    pub payment_id: &'a str,
    pub transaction_type: TransactionType,
    pub total: &'a Total,
    pub description: Option<&'a str>,
    pub initiated_by: Option<&'a str>,
    /// Its entries, numbered in this order; `entry_ids[i]` is the id of `entries[i]`.
    pub entries: &'a [Entry],
    pub entry_ids: &'a [String],
}

/// Inserts postings with one statement however many: each transaction `PENDING` with its
/// entries, unless a transaction of its id exists already (one posting per payment: its id is
/// the payment's), whose entries are then not inserted either. Returns the transactions
/// inserted now, each with its `created_at` (the unit of work's start, as RFC 3339), which its
/// entries share. The ids must differ from one another.
pub fn insert_transactions(db: &Db, postings: &[NewTransaction]) -> Result<Vec<(String, String)>, DbError> {
    let transactions: Vec<serde_json::Value> = postings
        .iter()
        .map(|new| {
            json!({
                "transaction_id": new.transaction_id,
                "payment_id": new.payment_id,
                "transaction_type": new.transaction_type.as_str(),
                "total_amount": money::format(new.total.amount),
                "currency": new.total.currency.code(),
                "description": new.description,
                "initiated_by": new.initiated_by,
            })
        })
        .collect();
    let entries: Vec<serde_json::Value> = postings
        .iter()
        .flat_map(|new| {
            new.entry_ids.iter().zip(new.entries).enumerate().map(|(index, (entry_id, entry))| {
                json!({
                    "entry_id": entry_id,
                    "transaction_id": new.transaction_id,
                    "entry_number": index + 1,
                    "account_id": entry.account_id,
                    "entry_type": entry.entry_type.as_str(),
                    "amount": entry.amount.to_string(),
                    "currency": entry.currency.code(),
                })
            })
        })
        .collect();
    // The transactions in id order, so that two batches wait on the key's index in one order.
    let rows = db.query(
        "WITH fresh AS ( \
             INSERT INTO transactions \
                 (transaction_id, payment_id, transaction_type, status, total_amount, currency, description, initiated_by) \
             SELECT t.transaction_id, t.payment_id, t.transaction_type, 'PENDING', t.total_amount, t.currency, \
                    t.description, t.initiated_by \
             FROM jsonb_to_recordset($1::jsonb) AS t( \
                 transaction_id uuid, payment_id uuid, transaction_type text, total_amount numeric, currency text, \
                 description text, initiated_by uuid) \
             ORDER BY t.transaction_id \
             ON CONFLICT (transaction_id) DO NOTHING \
             RETURNING transaction_id, created_at), \
         entries AS ( \
             INSERT INTO transaction_entries \
                 (entry_id, transaction_id, entry_number, account_id, entry_type, amount, currency) \
             SELECT e.entry_id, e.transaction_id, e.entry_number, e.account_id, e.entry_type, e.amount, e.currency \
             FROM jsonb_to_recordset($2::jsonb) AS e( \
                 entry_id uuid, transaction_id uuid, entry_number smallint, account_id uuid, entry_type text, \
                 amount numeric, currency text) \
             JOIN fresh USING (transaction_id)) \
         SELECT transaction_id, created_at FROM fresh",
        &[json(&serde_json::Value::Array(transactions)), json(&serde_json::Value::Array(entries))],
    )?;
    Ok(rows.iter().map(|row| (row.text("transaction_id"), row.rfc3339("created_at"))).collect())
}

/// One transaction, by id.
pub fn find_transaction(db: &Db, transaction_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", transaction_columns!(), transactions_from!(), " WHERE t.transaction_id = $1"),
        &[uuid(transaction_id)],
    )
}

/// Locks a transaction about to be reversed (`FOR UPDATE`), so that of two reversals of it the
/// second waits for the first and then finds it reversed. `has_reversal` says whether a
/// reversal row names it already.
pub fn lock_transaction(db: &Db, transaction_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        "SELECT t.transaction_id, t.payment_id, t.transaction_type, t.status, \
                EXISTS (SELECT 1 FROM transaction_reversals AS r \
                        WHERE r.original_transaction_id = t.transaction_id) AS has_reversal \
         FROM transactions AS t \
         WHERE t.transaction_id = $1 \
         FOR UPDATE OF t",
        &[uuid(transaction_id)],
    )
}

/// The entries of the given transactions, each transaction's in the order they were posted.
pub fn entries_of(db: &Db, transaction_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT entry_id, transaction_id, account_id, entry_type, amount, currency, created_at \
         FROM transaction_entries \
         WHERE transaction_id = ANY (ARRAY(SELECT id::uuid FROM jsonb_array_elements_text($1::jsonb) AS id)) \
         ORDER BY transaction_id, entry_number",
        &[json(&json!(transaction_ids))],
    )
}

/// One page of transactions, newest first, with one more than the page holds when there is a
/// next page: those `initiated_by` posted (all when `None`), only those with an entry on
/// `query.account_id` when given. Ordered by `(created_at, transaction_id)`, which is unique,
/// so a page starts exactly after the cursor however many transactions share a time.
pub fn list_transactions(db: &Db, initiated_by: Option<&str>, query: &ListQuery) -> Result<Vec<Row>, DbError> {
    let mut conditions = Conditions::default();
    if let Some(user_id) = initiated_by {
        let placeholder = conditions.bind(uuid(user_id));
        conditions.and(&format!("t.initiated_by = {placeholder}"));
    }
    if let Some(account_id) = &query.account_id {
        let placeholder = conditions.bind(uuid(account_id));
        conditions.and(&format!(
            "EXISTS (SELECT 1 FROM transaction_entries AS e \
                     WHERE e.transaction_id = t.transaction_id AND e.account_id = {placeholder})"
        ));
    }
    let order = query.page.keyset(&mut conditions, "t.created_at", "t.transaction_id");
    let sql = format!(concat!("SELECT ", transaction_columns!(), transactions_from!(), "{}{}"), conditions.sql, order);
    db.query(&sql, &conditions.params)
}

/// A transaction's status, or `None` when there is no such transaction.
pub fn status_of(db: &Db, transaction_id: &str) -> Result<Option<String>, DbError> {
    let row = db.query_opt("SELECT status FROM transactions WHERE transaction_id = $1", &[uuid(transaction_id)])?;
    Ok(row.map(|row| row.text("status")))
}

/// Marks pending transactions settled: every entry is in the balances. Returns the rows
/// changed (a transaction unknown or settled already is not).
pub fn settle(db: &Db, transaction_ids: &[String]) -> Result<u64, DbError> {
    db.execute(
        "UPDATE transactions SET status = 'SETTLED', settled_at = now() \
         WHERE transaction_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid)) AND status = 'PENDING'",
        &[id_list(transaction_ids)],
    )
}

/// Records that `reversal_id` reverses `original_id`. Only administrators reverse, and
/// `reversed_by` names a user, so it stays NULL. A second reversal of the same transaction
/// violates [`ONE_REVERSAL`].
pub fn insert_reversal(db: &Db, original_id: &str, reversal_id: &str, reason: &str) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO transaction_reversals (original_transaction_id, reversal_transaction_id, reversal_reason) \
         VALUES ($1, $2, $3)",
        &[uuid(original_id), uuid(reversal_id), text(reason)],
    )?;
    Ok(())
}

/// Marks a transaction reversed, with the reversal's reason.
pub fn mark_reversed(db: &Db, transaction_id: &str, reason: &str) -> Result<(), DbError> {
    db.execute(
        "UPDATE transactions SET status = 'REVERSED', reversed_at = now(), reversal_reason = $2 \
         WHERE transaction_id = $1",
        &[uuid(transaction_id), text(reason)],
    )?;
    Ok(())
}

/// The transaction side of the ledger check, over the transactions created before the cut-off
/// (`$1`), computed by the database in one statement, hence over one snapshot: which
/// transactions are pending, and which of those were created before `$2` (the oldest `$3` of
/// them, with their creation in microseconds since the epoch, and how many); which lack a
/// DEBIT or a CREDIT, which do not balance in a currency, and per account and currency the
/// count and net (credits − debits) of the entries of the transactions not pending. Amounts
/// travel as JSON text, never as JSON numbers. Answers one row with one `side` document (see
/// [`crate::ledger::TransactionSide`]).
const LEDGER_SIDE: &str = "
WITH checked AS MATERIALIZED (
    SELECT transaction_id, created_at, status = 'PENDING' AS pending
    FROM transactions
    WHERE created_at < $1
),
stale AS (
    SELECT transaction_id, created_at FROM checked WHERE pending AND created_at < $2
),
entries AS MATERIALIZED (
    SELECT e.transaction_id, e.account_id, e.entry_type, e.amount, e.currency, c.pending
    FROM transaction_entries AS e
    JOIN checked AS c USING (transaction_id)
),
sides AS (
    SELECT c.transaction_id,
           count(e.transaction_id) FILTER (WHERE e.entry_type = 'DEBIT') AS debit_entries,
           count(e.transaction_id) FILTER (WHERE e.entry_type = 'CREDIT') AS credit_entries
    FROM checked AS c
    LEFT JOIN entries AS e USING (transaction_id)
    GROUP BY c.transaction_id
),
currencies AS (
    SELECT transaction_id, currency,
           coalesce(sum(amount) FILTER (WHERE entry_type = 'DEBIT'), 0) AS debits,
           coalesce(sum(amount) FILTER (WHERE entry_type = 'CREDIT'), 0) AS credits
    FROM entries
    GROUP BY transaction_id, currency
),
accounts AS (
    SELECT account_id, currency,
           count(*) FILTER (WHERE NOT pending) AS entries,
           coalesce(sum(CASE entry_type WHEN 'CREDIT' THEN amount ELSE -amount END)
                        FILTER (WHERE NOT pending), 0) AS net
    FROM entries
    GROUP BY account_id, currency
)
SELECT jsonb_build_object(
    'transactions_checked', (SELECT count(*) FROM checked),
    'pending', (SELECT coalesce(jsonb_agg(transaction_id ORDER BY transaction_id), '[]')
                FROM checked WHERE pending),
    'stale_pending_count', (SELECT count(*) FROM stale),
    'stale_pending', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                 'transaction_id', transaction_id,
                                 'created_at', (extract(epoch FROM created_at) * 1000000)::bigint)
                             ORDER BY created_at, transaction_id), '[]')
                      FROM (SELECT * FROM stale ORDER BY created_at, transaction_id LIMIT $3) AS oldest),
    'one_sided', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                             'transaction_id', transaction_id,
                             'debit_entries', debit_entries,
                             'credit_entries', credit_entries) ORDER BY transaction_id), '[]')
                  FROM sides WHERE debit_entries = 0 OR credit_entries = 0),
    'unbalanced', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                              'transaction_id', transaction_id,
                              'currency', currency,
                              'debits', debits::text,
                              'credits', credits::text) ORDER BY transaction_id, currency), '[]')
                   FROM currencies WHERE debits <> credits),
    'accounts', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                            'account_id', account_id,
                            'currency', currency,
                            'entries', entries,
                            'net', net::text) ORDER BY account_id, currency), '[]')
                 FROM accounts)
) AS side";

/// The transaction side of the ledger check up to `as_of`, naming up to `listed` of the
/// postings still pending that were created before `pending_before` (both in microseconds);
/// see [`LEDGER_SIDE`].
pub fn ledger_side(db: &Db, as_of: i64, pending_before: i64, listed: i64) -> Result<serde_json::Value, DbError> {
    Ok(db.query_one(LEDGER_SIDE, &[timestamp(as_of), timestamp(pending_before), int(listed)])?.json("side"))
}
