//! The balance service's SQL, against the tables of `migrations/balance/`.
//!
//! Lists of ids travel as one JSON array parameter, matched as `= ANY (ARRAY(SELECT
//! jsonb_array_elements_text($1)::uuid))`: the array is computed once and the key's index
//! used (with `IN (SELECT ...)` the planner hashes the list against a scan of the whole
//! table). Rows to write travel as one JSON array of objects (`jsonb_to_recordset`), so that a
//! posting of a hundred entries is a handful of statements, not hundreds.

use micropay_sdk::db::DbError;
use micropay_sdk::db::param::{decimal, id_list, int, json, text, timestamp, uuid};
use micropay_sdk::money::{self, Amount, Currency};
use micropay_sdk::{Db, Row};
use serde_json::json;

use crate::domain::{BalanceEvent, Posting};

/// The condition under which a reservation `r` counts against its account's available
/// balance: `ACTIVE` and not past `expires_at`, or `CAPTURED` and not yet settled. The first
/// conjunct is the predicate of `idx_balance_reservations_counting`, written out so that the
/// planner can use that index. Expiry is judged by `clock_timestamp()`, the moment the row is
/// read, not the transaction's start: read under the account's lock, a reservation that has
/// stopped counting for an earlier writer has stopped counting for this one too.
macro_rules! counting {
    () => {
        "(r.status = 'ACTIVE' OR (r.status = 'CAPTURED' AND r.settled_at IS NULL))
       AND (r.status <> 'ACTIVE' OR r.expires_at > clock_timestamp())"
    };
}

/// A balance event's signed amount: a CREDIT adds, a DEBIT takes.
macro_rules! signed_amount {
    ($event:literal) => {
        concat!("CASE ", $event, ".event_type WHEN 'CREDIT' THEN ", $event, ".amount ELSE -", $event, ".amount END")
    };
}

/// The columns of a reservation as the API shows it, and `lapsed`: whether it is `ACTIVE` and
/// past its expiry, judged when the row is read.
macro_rules! reservation_columns {
    () => {
        "reservation_id, account_id, payment_id, amount, currency, status, expires_at, created_at, released_at,
       transaction_id, captured_at, (status = 'ACTIVE' AND expires_at <= clock_timestamp()) AS lapsed"
    };
}

// ---- accounts and their locks ----

const ENSURE_ACCOUNTS: &str = "
INSERT INTO balance_accounts (account_id, currency, system)
SELECT given.account_id, given.currency, given.system
FROM jsonb_to_recordset($1) AS given(account_id uuid, currency text, system boolean)
ORDER BY given.account_id
ON CONFLICT (account_id) DO NOTHING";

/// Creates the `balance_accounts` rows that are missing, in `account_id` order; an existing row
/// is left as it is (its currency never changes). `accounts` is `(id, currency, system)`.
fn ensure_accounts(db: &Db, accounts: &[(String, String, bool)]) -> Result<(), DbError> {
    let rows: Vec<_> = accounts
        .iter()
        .map(|(account_id, currency, system)| {
            json!({ "account_id": account_id, "currency": currency, "system": system })
        })
        .collect();
    db.execute(ENSURE_ACCOUNTS, &[json(&json!(rows))])?;
    Ok(())
}

const LOCK_ACCOUNTS: &str = "
SELECT account_id FROM balance_accounts
WHERE account_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid))
ORDER BY account_id
FOR UPDATE";

/// Locks the accounts' rows until the unit of work ends, one after the other in `account_id`
/// order (the order every writer uses, so that no two writers wait on each other in a cycle).
///
/// Only the lock is taken here: what the rows hold is read by [`positions`], a later
/// statement, which therefore sees everything committed by whoever held a lock before.
pub fn lock_accounts(db: &Db, account_ids: &[String]) -> Result<usize, DbError> {
    Ok(db.query(LOCK_ACCOUNTS, &[id_list(account_ids)])?.len())
}

/// Locks the accounts' rows as [`lock_accounts`] does, creating the missing ones
/// ([`ensure_accounts`]; `accounts` is `(id, currency, system)`, their ids distinct). The rows
/// exist for every hold and posting but an account's first, so they are locked first, and
/// created only when some are missing: then the missing ones are created (a row created is
/// locked by its creation, and no one else holds it) and the whole set locked again, which
/// takes the rows another unit of work created meanwhile.
pub fn lock_or_create_accounts(db: &Db, accounts: &[(String, String, bool)]) -> Result<(), DbError> {
    let ids: Vec<String> = accounts.iter().map(|(id, _, _)| id.clone()).collect();
    if lock_accounts(db, &ids)? == ids.len() {
        return Ok(());
    }
    ensure_accounts(db, accounts)?;
    lock_accounts(db, &ids)?;
    Ok(())
}

const POSITIONS: &str = concat!(
    "
SELECT a.account_id, a.currency, a.system, a.last_sequence,
       coalesce(e.balance_after, 0) AS balance, held.reserved
FROM balance_accounts AS a
LEFT JOIN balance_events AS e ON e.account_id = a.account_id AND e.sequence = a.last_sequence
CROSS JOIN LATERAL (
    SELECT coalesce(sum(r.amount), 0) AS reserved
    FROM balance_reservations AS r
    WHERE r.account_id = a.account_id
      AND ",
    counting!(),
    "
) AS held
WHERE a.account_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid))
ORDER BY a.account_id"
);

/// Each account's row with its balance (the last event's `balance_after`, found through the
/// `(account_id, sequence)` key) and what is reserved of it, in `account_id` order. Columns:
/// `account_id, currency, system, last_sequence, balance, reserved`.
pub fn positions(db: &Db, account_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(POSITIONS, &[id_list(account_ids)])
}

const BALANCE: &str = concat!(
    "
WITH latest AS (
    SELECT s.balance, s.last_sequence FROM balance_snapshots AS s
    WHERE s.account_id = $1
    ORDER BY s.last_sequence DESC
    LIMIT 1
),
since AS (
    SELECT coalesce(sum(",
    signed_amount!("e"),
    "), 0) AS moved, max(e.sequence) AS last_sequence
    FROM balance_events AS e
    WHERE e.account_id = $1 AND e.sequence > coalesce((SELECT last_sequence FROM latest), 0)
)
SELECT (SELECT a.currency FROM balance_accounts AS a WHERE a.account_id = $1) AS currency,
       coalesce((SELECT balance FROM latest), 0) + since.moved AS balance,
       coalesce(since.last_sequence, (SELECT last_sequence FROM latest), 0) AS sequence,
       (SELECT coalesce(sum(r.amount), 0) FROM balance_reservations AS r
        WHERE r.account_id = $1
          AND ",
    counting!(),
    ") AS reserved
FROM since"
);

/// An account's balance as defined: its latest snapshot's balance plus the signed amounts of
/// the events after it; with the sequence it is at, what is reserved of it and its currency
/// (NULL for an account never seen, whose balance, reserved and sequence are zero). One
/// statement, so that the figures agree with each other.
pub fn balance(db: &Db, account_id: &str) -> Result<Row, DbError> {
    db.query_one(BALANCE, &[uuid(account_id)])
}

const HISTORY: &str = "
SELECT event_id, sequence, event_type, event_source, amount, currency, balance_before, balance_after,
       transaction_id, payment_id, kafka_event_id, entry_id, posted_at, occurred_at
FROM balance_events
WHERE account_id = $1 AND sequence < $2
ORDER BY sequence DESC
LIMIT $3";

/// A page of an account's events, newest first: at most `limit`, with a sequence below
/// `before` (any when `None`).
pub fn history(db: &Db, account_id: &str, limit: i64, before: Option<i64>) -> Result<Vec<Row>, DbError> {
    db.query(HISTORY, &[uuid(account_id), int(before.unwrap_or(i64::MAX)), int(limit)])
}

// ---- reservations and holds ----

const INSERT_RESERVATION: &str = concat!(
    "
INSERT INTO balance_reservations (reservation_id, account_id, payment_id, amount, currency, status, expires_at)
VALUES ($1, $2, $3, $4, $5, 'ACTIVE', now() + $6 * interval '1 second')
RETURNING ",
    reservation_columns!()
);

/// Inserts an `ACTIVE` reservation lasting `ttl_seconds` from now; returns it.
pub fn insert_reservation(
    db: &Db,
    reservation_id: &str,
    account_id: &str,
    payment_id: &str,
    amount: Amount,
    currency: &Currency,
    ttl_seconds: i64,
) -> Result<Row, DbError> {
    db.query_one(
        INSERT_RESERVATION,
        &[
            uuid(reservation_id),
            uuid(account_id),
            uuid(payment_id),
            decimal(amount.to_string()),
            text(currency.code()),
            int(ttl_seconds),
        ],
    )
}

const INSERT_HOLD: &str = "
INSERT INTO balance_reservations
    (reservation_id, account_id, payment_id, amount, currency, status, expires_at, transaction_id, captured_at)
VALUES ($1, $2, $3, $4, $5, 'CAPTURED', now(), $6, now())";

/// Inserts a hold: a reservation captured for `transaction_id` from the start. Nothing of it
/// waits to be captured, so its `expires_at` is the moment it is made.
pub fn insert_hold(
    db: &Db,
    reservation_id: &str,
    account_id: &str,
    payment_id: &str,
    amount: Amount,
    currency: &Currency,
    transaction_id: &str,
) -> Result<(), DbError> {
    db.execute(
        INSERT_HOLD,
        &[
            uuid(reservation_id),
            uuid(account_id),
            uuid(payment_id),
            decimal(amount.to_string()),
            text(currency.code()),
            uuid(transaction_id),
        ],
    )?;
    Ok(())
}

const RESERVATION: &str = concat!(
    "
SELECT ",
    reservation_columns!(),
    "
FROM balance_reservations
WHERE reservation_id = $1"
);

/// A reservation, without locking it.
pub fn reservation(db: &Db, reservation_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(RESERVATION, &[uuid(reservation_id)])
}

const LOCK_RESERVATION: &str = concat!(
    "
SELECT ",
    reservation_columns!(),
    "
FROM balance_reservations
WHERE reservation_id = $1
FOR UPDATE"
);

/// A reservation, locked until the unit of work ends. Always taken after its account's lock.
pub fn lock_reservation(db: &Db, reservation_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(LOCK_RESERVATION, &[uuid(reservation_id)])
}

const CAPTURE_RESERVATION: &str = "
UPDATE balance_reservations SET status = 'CAPTURED', transaction_id = $2, captured_at = now()
WHERE reservation_id = $1 AND status = 'ACTIVE'";

/// Captures an `ACTIVE` reservation for `transaction_id`.
pub fn capture_reservation(db: &Db, reservation_id: &str, transaction_id: &str) -> Result<(), DbError> {
    db.execute(CAPTURE_RESERVATION, &[uuid(reservation_id), uuid(transaction_id)])?;
    Ok(())
}

const RELEASE_RESERVATION: &str = concat!(
    "
UPDATE balance_reservations SET status = 'RELEASED', released_at = now()
WHERE reservation_id = $1
RETURNING ",
    reservation_columns!()
);

/// Releases a reservation; returns it.
pub fn release_reservation(db: &Db, reservation_id: &str) -> Result<Row, DbError> {
    db.query_one(RELEASE_RESERVATION, &[uuid(reservation_id)])
}

// ---- applying postings ----

const APPLIED_ENTRIES: &str = "
SELECT entry_id
FROM balance_events
WHERE entry_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid))";

/// Which of these ledger entries already have their balance event.
pub fn applied_entries(db: &Db, entry_ids: &[String]) -> Result<Vec<String>, DbError> {
    Ok(db.query(APPLIED_ENTRIES, &[id_list(entry_ids)])?.iter().map(|row| row.text("entry_id")).collect())
}

const CAPTURED_HOLDS: &str = "
SELECT transaction_id, account_id, sum(amount) AS held
FROM balance_reservations
WHERE transaction_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid))
  AND status = 'CAPTURED' AND settled_at IS NULL
GROUP BY transaction_id, account_id";

/// What the holds captured for `transaction_ids`, and not settled yet, hold per transaction
/// and account. Columns: `transaction_id, account_id, held`.
pub fn captured_holds(db: &Db, transaction_ids: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(CAPTURED_HOLDS, &[id_list(transaction_ids)])
}

const INSERT_EVENTS: &str = "
INSERT INTO balance_events (account_id, event_type, event_source, amount, currency, balance_before, balance_after,
    transaction_id, payment_id, kafka_event_id, sequence, entry_id, posted_at)
SELECT e.account_id, e.event_type, 'transaction', e.amount, e.currency, e.balance_before, e.balance_after,
       e.transaction_id, e.payment_id, e.bus_event_id, e.sequence, e.entry_id,
       'epoch'::timestamp + e.posted_at * interval '1 microsecond'
FROM jsonb_to_recordset($1) AS e(account_id uuid, event_type text, amount numeric, currency text,
    balance_before numeric, balance_after numeric, sequence bigint, entry_id uuid, transaction_id uuid,
    payment_id uuid, bus_event_id text, posted_at bigint)";

/// The balance events of one posting, and the bus event (`transaction.posted`) it came in.
pub struct PostingEvents<'a> {
    pub posting: &'a Posting,
    pub bus_event_id: &'a str,
    pub events: Vec<BalanceEvent>,
}

/// Appends the balance events of a batch of postings in one statement.
pub fn insert_events(db: &Db, postings: &[PostingEvents]) -> Result<(), DbError> {
    let rows: Vec<_> = postings
        .iter()
        .flat_map(|applied| {
            applied.events.iter().map(move |event| {
                json!({
                    "account_id": event.account_id,
                    "event_type": event.entry_type.as_str(),
                    "amount": event.amount.to_string(),
                    "currency": event.currency,
                    "balance_before": money::format(event.balance_before),
                    "balance_after": money::format(event.balance_after),
                    "sequence": event.sequence,
                    "entry_id": event.entry_id,
                    "transaction_id": applied.posting.transaction_id,
                    "payment_id": applied.posting.payment_id,
                    "bus_event_id": applied.bus_event_id,
                    "posted_at": applied.posting.posted_at,
                })
            })
        })
        .collect();
    db.execute(INSERT_EVENTS, &[json(&json!(rows))])?;
    Ok(())
}

const ADVANCE_ACCOUNTS: &str = "
UPDATE balance_accounts AS a
SET last_sequence = given.last_sequence, events_since_snapshot = a.events_since_snapshot + given.appended
FROM jsonb_to_recordset($1) AS given(account_id uuid, last_sequence bigint, appended integer)
WHERE a.account_id = given.account_id
  AND a.account_id = ANY (ARRAY(SELECT (item ->> 'account_id')::uuid FROM jsonb_array_elements($1) AS item))";

/// Moves each account's `last_sequence` to its new last event and counts the events appended
/// since its last snapshot. `advances` is `(account_id, last_sequence, appended)`.
pub fn advance_accounts(db: &Db, advances: &[(String, i64, i64)]) -> Result<(), DbError> {
    let rows: Vec<_> = advances
        .iter()
        .map(|(account_id, last_sequence, appended)| {
            json!({ "account_id": account_id, "last_sequence": last_sequence, "appended": appended })
        })
        .collect();
    db.execute(ADVANCE_ACCOUNTS, &[json(&json!(rows))])?;
    Ok(())
}

const SETTLE_HOLDS: &str = "
UPDATE balance_reservations SET settled_at = now()
WHERE transaction_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid))
  AND status = 'CAPTURED' AND settled_at IS NULL";

/// Settles the holds captured for `transaction_ids`: their debits are applied, so the holds
/// no longer count against the available balance (the balance itself has fallen instead).
pub fn settle_holds(db: &Db, transaction_ids: &[String]) -> Result<(), DbError> {
    db.execute(SETTLE_HOLDS, &[id_list(transaction_ids)])?;
    Ok(())
}

// ---- snapshots ----

const TAKE_SNAPSHOTS: &str = concat!(
    "
WITH due AS (
    SELECT a.account_id, a.currency, a.last_sequence, e.event_id, e.balance_after
    FROM balance_accounts AS a
    JOIN balance_events AS e ON e.account_id = a.account_id AND e.sequence = a.last_sequence
    WHERE a.account_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid))
      AND a.events_since_snapshot >= $2
),
taken AS (
    INSERT INTO balance_snapshots (account_id, balance, available_balance, reserved_balance, currency,
        last_event_id, last_sequence)
    SELECT d.account_id, d.balance_after, d.balance_after - held.reserved, held.reserved, d.currency,
           d.event_id::text, d.last_sequence
    FROM due AS d
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(r.amount), 0) AS reserved
        FROM balance_reservations AS r
        WHERE r.account_id = d.account_id
          AND ",
    counting!(),
    "
    ) AS held
    RETURNING account_id
)
UPDATE balance_accounts SET events_since_snapshot = 0, last_snapshot_at = now()
WHERE account_id IN (SELECT account_id FROM taken)"
);

/// Snapshots those of the accounts (locked by the caller) with at least `min_events` events
/// since their last snapshot: the balance and sequence of their last event, and what is
/// reserved now. Returns how many were taken.
pub fn take_snapshots(db: &Db, account_ids: &[String], min_events: i64) -> Result<u64, DbError> {
    db.execute(TAKE_SNAPSHOTS, &[id_list(account_ids), int(min_events)])
}

const LOCK_SNAPSHOTS_DUE: &str = "
SELECT account_id
FROM balance_accounts
WHERE events_since_snapshot > 0
  AND (last_snapshot_at IS NULL OR last_snapshot_at < now() - $1 * interval '1 second')
ORDER BY last_snapshot_at NULLS FIRST
LIMIT $2
FOR UPDATE SKIP LOCKED";

/// Locks up to `limit` accounts with events after a snapshot older than `max_age_seconds` (or
/// none), the oldest first; returns their ids. An account another unit of work holds is skipped,
/// not waited for: the sweeper never queues behind a posting (nor behind another host's
/// sweeper), and the next run takes it.
pub fn lock_snapshots_due(db: &Db, max_age_seconds: i64, limit: i64) -> Result<Vec<String>, DbError> {
    let rows = db.query(LOCK_SNAPSHOTS_DUE, &[int(max_age_seconds), int(limit)])?;
    Ok(rows.iter().map(|row| row.text("account_id")).collect())
}

// ---- the sweeper's reservations ----

const EXPIRE_RESERVATIONS: &str = "
WITH due AS (
    SELECT reservation_id
    FROM balance_reservations
    WHERE status = 'ACTIVE' AND expires_at <= now()
    ORDER BY expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE balance_reservations AS r SET status = 'EXPIRED', released_at = now()
FROM due
WHERE r.reservation_id = due.reservation_id
RETURNING r.reservation_id, r.account_id, r.amount, r.currency";

/// Records up to `limit` `ACTIVE` reservations past their expiry as `EXPIRED`; returns them
/// (`reservation_id, account_id, amount, currency`). They stopped counting at their expiry
/// already, so no account lock is needed. A row another unit of work holds is left for the next
/// run, so sweepers on several hosts never wait on each other.
pub fn expire_reservations(db: &Db, limit: i64) -> Result<Vec<Row>, DbError> {
    db.query(EXPIRE_RESERVATIONS, &[int(limit)])
}

const UNSETTLED_POSTINGS: &str = "
SELECT transaction_id
FROM balance_reservations
WHERE status = 'CAPTURED' AND settled_at IS NULL AND captured_at < now() - $1 * interval '1 second'
GROUP BY transaction_id
ORDER BY min(captured_at)
LIMIT $2";

/// Up to `limit` transactions, oldest first, with a hold captured over `older_than_seconds`
/// ago and still unsettled: postings that never committed, or whose event is late.
pub fn unsettled_postings(db: &Db, older_than_seconds: i64, limit: i64) -> Result<Vec<String>, DbError> {
    let rows = db.query(UNSETTLED_POSTINGS, &[int(older_than_seconds), int(limit)])?;
    Ok(rows.iter().map(|row| row.text("transaction_id")).collect())
}

const RELEASE_HOLDS: &str = "
WITH due AS (
    SELECT reservation_id
    FROM balance_reservations
    WHERE transaction_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1)::uuid))
      AND status = 'CAPTURED' AND settled_at IS NULL
      AND captured_at < now() - $2 * interval '1 second'
    FOR UPDATE SKIP LOCKED
)
UPDATE balance_reservations AS r SET status = 'RELEASED', released_at = now()
FROM due
WHERE r.reservation_id = due.reservation_id
RETURNING r.reservation_id, r.account_id, r.amount, r.currency";

/// Releases the unsettled holds, captured over `older_than_seconds` ago, of transactions known
/// never to have committed; returns them (`reservation_id, account_id, amount, currency`).
/// Releasing only lowers what is reserved, so no account lock is needed; a row another unit of
/// work holds is left for the next run.
pub fn release_holds(db: &Db, transaction_ids: &[String], older_than_seconds: i64) -> Result<Vec<Row>, DbError> {
    db.query(RELEASE_HOLDS, &[id_list(transaction_ids), int(older_than_seconds)])
}

// ---- the ledger check ----

const LEDGER_ACCOUNTS: &str = concat!(
    "
WITH excluded AS (
    SELECT jsonb_array_elements_text($2)::uuid AS transaction_id
)
SELECT e.account_id, e.currency, count(*) AS entries, sum(",
    signed_amount!("e"),
    ") AS net
FROM balance_events AS e
WHERE e.posted_at < $1
  AND NOT EXISTS (SELECT 1 FROM excluded AS x WHERE x.transaction_id = e.transaction_id)
GROUP BY e.account_id, e.currency
ORDER BY e.account_id, e.currency"
);

/// Per account (and currency), the number of events and their net (credits − debits), over
/// the events posted before `as_of` whose transaction is not one of `excluded`. Columns:
/// `account_id, currency, entries, net`.
pub fn ledger_accounts(db: &Db, as_of: i64, excluded: &[String]) -> Result<Vec<Row>, DbError> {
    db.query(LEDGER_ACCOUNTS, &[timestamp(as_of), id_list(excluded)])
}

const CURRENCY_SUMS: &str = "
SELECT last.currency, sum(last.balance_after) AS sum
FROM (
    SELECT DISTINCT ON (account_id) account_id, currency, balance_after
    FROM balance_events
    ORDER BY account_id, sequence DESC
) AS last
GROUP BY last.currency
ORDER BY last.currency";

/// Per currency, the sum of every account's current balance (its last event's
/// `balance_after`), system accounts included: zero in a sound ledger. Columns: `currency, sum`.
pub fn currency_sums(db: &Db) -> Result<Vec<Row>, DbError> {
    db.query(CURRENCY_SUMS, &[])
}

const CHAIN_PROBLEMS: &str = concat!(
    "
WITH chain AS (
    SELECT e.account_id, e.sequence, e.event_id, e.currency, e.balance_before, e.balance_after,
           e.balance_after - e.balance_before AS moved,
           ",
    signed_amount!("e"),
    " AS signed,
           lag(e.sequence) OVER w AS previous_sequence,
           lag(e.balance_after) OVER w AS previous_after,
           lag(e.currency) OVER w AS previous_currency
    FROM balance_events AS e
    WINDOW w AS (PARTITION BY e.account_id ORDER BY e.sequence)
),
broken AS (
    SELECT account_id, sequence,
           format('account %s, event %s (sequence %s): %s', account_id, event_id, sequence, CASE
               WHEN previous_sequence IS NULL AND sequence <> 1
                   THEN format('the first event has sequence %s, not 1', sequence)
               WHEN previous_sequence IS NULL AND balance_before <> 0
                   THEN format('the first event starts from %s, not 0', balance_before)
               WHEN sequence <> previous_sequence + 1
                   THEN format('it follows sequence %s', previous_sequence)
               WHEN balance_before <> previous_after
                   THEN format('it starts from %s but the event before ended at %s', balance_before, previous_after)
               WHEN currency <> previous_currency
                   THEN format('it is in %s but the event before is in %s', currency, previous_currency)
               ELSE format('it moved the balance by %s instead of %s', moved, signed)
           END) AS detail
    FROM chain
    WHERE (previous_sequence IS NULL AND (sequence <> 1 OR balance_before <> 0))
       OR sequence <> previous_sequence + 1
       OR balance_before <> previous_after
       OR currency <> previous_currency
       OR moved <> signed
    UNION ALL
    SELECT coalesce(a.account_id, last.account_id), NULL,
           format('account %s: its row names sequence %s as its last event, its events end at %s',
               coalesce(a.account_id, last.account_id), coalesce(a.last_sequence, 0), coalesce(last.sequence, 0))
    FROM balance_accounts AS a
    FULL JOIN (
        SELECT account_id, max(sequence) AS sequence FROM balance_events GROUP BY account_id
    ) AS last ON last.account_id = a.account_id
    WHERE coalesce(a.last_sequence, 0) <> coalesce(last.sequence, 0)
)
SELECT 'chain_broken' AS kind, detail
FROM broken
ORDER BY account_id, sequence NULLS LAST
LIMIT $1"
);

/// Breaks in the accounts' chains, at most `limit`, as `kind, detail`: an event that does not
/// follow the one before it (its sequence, its currency, or its `balance_before` against the
/// previous `balance_after`), a first event that is not sequence 1 starting from zero, an event
/// that moved the balance by other than its signed amount, and an account row whose
/// `last_sequence` is not its last event. Over the whole history, with window functions.
pub fn chain_problems(db: &Db, limit: i64) -> Result<Vec<Row>, DbError> {
    db.query(CHAIN_PROBLEMS, &[int(limit)])
}

const SNAPSHOT_PROBLEMS: &str = concat!(
    "
WITH replay AS (
    SELECT e.account_id, e.sequence,
           sum(",
    signed_amount!("e"),
    ") OVER (PARTITION BY e.account_id ORDER BY e.sequence) AS balance
    FROM balance_events AS e
)
SELECT 'snapshot_mismatch' AS kind,
       format('snapshot %s of account %s at sequence %s holds %s, the replay of its events gives %s',
           s.snapshot_id, s.account_id, s.last_sequence, s.balance, coalesce(r.balance::text, 'no such event'))
           AS detail
FROM balance_snapshots AS s
LEFT JOIN replay AS r ON r.account_id = s.account_id AND r.sequence = s.last_sequence
WHERE r.balance IS DISTINCT FROM s.balance
ORDER BY s.account_id, s.last_sequence
LIMIT $1"
);

/// Snapshots whose balance is not the replay from zero of their account's events up to their
/// `last_sequence`, at most `limit`, as `kind, detail`. The replay is a running sum over each
/// account's events (a window function), joined to the snapshots.
pub fn snapshot_problems(db: &Db, limit: i64) -> Result<Vec<Row>, DbError> {
    db.query(SNAPSHOT_PROBLEMS, &[int(limit)])
}
