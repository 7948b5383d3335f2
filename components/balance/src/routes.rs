//! The endpoints and the event handler: each reads its input, applies the rules of
//! [`crate::domain`], runs the statements of [`crate::sql`] and shapes the answer.

use std::collections::{BTreeMap, BTreeSet};

use micropay_sdk::contracts::Released;
use micropay_sdk::db::DbError;
use micropay_sdk::events::{self, PublishError};
use micropay_sdk::money::{self, Amount, Currency, Decimal};
use micropay_sdk::{ApiError, Context, Db, Principal, Response, Row, fields, services};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::bindings::exports::micropay::platform::subscriber::Event;
use crate::domain::{
    self, Account, Chain, Funds, Hold, Posting, Reservation, Status, account_not_found, currency_mismatch,
    reservation_not_found,
};
use crate::sql;

// ---- request bodies ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewReservation {
    account_id: String,
    amount: Amount,
    currency: Currency,
    ttl_seconds: Option<i64>,
    payment_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransactionHolds {
    transaction_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldsRequest {
    transaction_id: String,
    payment_id: String,
    holds: Vec<HoldRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    account_id: String,
    amount: Amount,
    currency: Currency,
    reservation_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerRequest {
    as_of: String,
    #[serde(default)]
    exclude_transactions: Vec<String>,
}

// ---- answers ----

fn reservation_json(row: &Row) -> Json {
    let status = Status::from_db(&row.text("status")).shown(row.bool("lapsed"));
    json!({
        "reservation_id": row.text("reservation_id"),
        "account_id": row.text("account_id"),
        "payment_id": row.text("payment_id"),
        "amount": money::format(money::decimal(&row.text("amount"))),
        "currency": row.text("currency"),
        "status": status.as_str(),
        "expires_at": row.rfc3339("expires_at"),
        "created_at": row.rfc3339("created_at"),
        "released_at": row.opt_rfc3339("released_at"),
        "transaction_id": row.opt_text("transaction_id"),
        "captured_at": row.opt_rfc3339("captured_at"),
    })
}

fn event_json(row: &Row) -> Json {
    let amount = |column: &str| money::format(money::decimal(&row.text(column)));
    json!({
        "event_id": row.text("event_id"),
        "sequence": row.int("sequence"),
        "event_type": row.text("event_type"),
        "event_source": row.text("event_source"),
        "amount": amount("amount"),
        "currency": row.text("currency"),
        "balance_before": amount("balance_before"),
        "balance_after": amount("balance_after"),
        "transaction_id": row.opt_text("transaction_id"),
        "payment_id": row.opt_text("payment_id"),
        "entry_id": row.text("entry_id"),
        // The `transaction.posted` event this balance event was applied from (the spec's
        // `kafka_event_id` column).
        "bus_event_id": row.opt_text("kafka_event_id"),
        "posted_at": row.rfc3339("posted_at"),
        "occurred_at": row.rfc3339("occurred_at"),
    })
}

/// Balance, available and reserved as the API writes them.
fn formatted(funds: Funds) -> (String, String, String) {
    (money::format(funds.balance), money::format(funds.available()), money::format(funds.reserved))
}

fn funds_of(row: &Row) -> Funds {
    Funds { balance: money::decimal(&row.text("balance")), reserved: money::decimal(&row.text("reserved")) }
}

fn reservation_of(row: &Row) -> Reservation {
    Reservation {
        account_id: row.text("account_id"),
        currency: row.text("currency"),
        amount: money::decimal(&row.text("amount")),
        status: Status::from_db(&row.text("status")),
        lapsed: row.bool("lapsed"),
    }
}

/// Publishes one of the reservation events (`balance.reserved`, `balance.reservation_released`,
/// `balance.reservation_expired`) about a reservation row, keyed by its account.
fn publish_reservation(topic: &str, row: &Row) -> Result<(), PublishError> {
    let account_id = row.text("account_id");
    let data = json!({
        "reservation_id": row.text("reservation_id"),
        "account_id": account_id,
        "amount": money::format(money::decimal(&row.text("amount"))),
        "currency": row.text("currency"),
    });
    events::publish(topic, &account_id, &data)?;
    Ok(())
}

// ---- who may act ----

/// The account as the account service shows it to the caller, whose principal the call
/// carries: its 404 (a missing account, or another user's) is the answer here too.
fn account(account_id: &str) -> Result<Account, ApiError> {
    let json = services::call_json("account", "GET", &format!("/accounts/{account_id}"), None)?;
    Account::from_json(&json)
        .map_err(|err| ApiError::internal(&format!("the account service's account {account_id}: {err}")))
}

/// The account, when `principal` may see it: its owner or an administrator (404 otherwise).
fn visible_account(principal: &Principal, account_id: &str) -> Result<Account, ApiError> {
    let account = account(account_id)?;
    if !principal.may_act_for(&account.user_id) {
        return Err(account_not_found());
    }
    Ok(account)
}

/// Whether `principal` may see a reservation on `account_id`: an administrator always, a user
/// when the account service says the account is theirs. Anything else is 404, as for a
/// reservation that does not exist. Nothing about owners is stored here.
fn check_reservation_visible(principal: &Principal, account_id: &str) -> Result<(), ApiError> {
    if *principal == Principal::Admin {
        return Ok(());
    }
    match visible_account(principal, account_id) {
        Ok(_) => Ok(()),
        Err(err) if err.status == 404 => Err(reservation_not_found()),
        Err(err) => Err(err),
    }
}

// ---- the account lock ----

/// Locks the accounts' `balance_accounts` rows for a reservation or holds, and reads their
/// funds; `accounts` maps each id to the currency the request names for it. Missing rows are
/// created first (`INSERT ... ON CONFLICT DO NOTHING`), so that there is a row to lock, as
/// user accounts: reservations and holds are only ever placed on those. 422
/// `currency_mismatch` when an existing row is in another currency: an account's currency
/// never changes.
///
/// **Invariant: a non-system account's available balance (balance − reserved) is never below
/// zero**, under any concurrency, on any number of hosts. Every change to an account's money
/// happens with its row locked, here or, for a posting, in [`apply_posting`] by the same
/// statements (`SELECT ... FOR UPDATE`, several rows in `account_id` order, so that writers
/// never wait on each other in a cycle; a batch of postings locks every account it touches
/// at once, in the same order), and the figures are read only after the lock, by a statement
/// that sees everything committed before it. So, for one account:
/// 1. a reservation or hold ([`Funds::reserve`]) is refused when its amount exceeds the
///    available balance, and nothing else can take the same money before it commits;
/// 2. a posting's debit of a non-system account comes with a hold of at least its amount,
///    captured for its transaction ([`place_holds`]); applying the debit ([`apply_posting`])
///    settles that hold in the same unit of work: the balance falls by the debit and the
///    reserved amount by the hold, so available does not fall. A debit without its hold is
///    still applied (the transaction has committed) and logged as a warning;
/// 3. what stops counting only raises available: an expired reservation (judged by the
///    database clock at the moment it is read, under this lock, so it never counts again once
///    it has stopped: an expired one cannot be captured), a released one, and a hold whose
///    posting the transaction service says never committed, released by the sweeper only after
///    [`domain::HOLD_RELEASE_AFTER_SECONDS`], far beyond that service's deadline.
fn lock_funds(db: &Db, accounts: &BTreeMap<String, String>) -> Result<BTreeMap<String, Funds>, ApiError> {
    let ids: Vec<String> = accounts.keys().cloned().collect();
    let rows: Vec<_> = accounts.iter().map(|(id, currency)| (id.clone(), currency.clone(), false)).collect();
    sql::lock_or_create_accounts(db, &rows)?;
    let mut funds = BTreeMap::new();
    for row in sql::positions(db, &ids)? {
        let account_id = row.text("account_id");
        let currency = row.text("currency");
        if accounts.get(&account_id).is_some_and(|asked| *asked != currency) {
            return Err(currency_mismatch(&currency, &accounts[&account_id]));
        }
        funds.insert(account_id, funds_of(&row));
    }
    Ok(funds)
}

// ---- balances ----

/// `GET /accounts/{account_id}`: the account's balance, available and reserved amounts, and
/// the sequence of its last balance event. Zeros for an account with no events yet.
pub fn get_balance(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    let account_id = domain::path_id(ctx.param("account_id")).ok_or_else(account_not_found)?;
    let account = visible_account(&principal, &account_id)?;
    let db = ctx.db()?;

    let row = sql::balance(db, &account_id)?;
    let (balance, available, reserved) = formatted(funds_of(&row));
    Ok(Response::ok(&json!({
        "account_id": account_id,
        "currency": row.opt_text("currency").unwrap_or(account.currency),
        "balance": balance,
        "available": available,
        "reserved": reserved,
        "sequence": row.int("sequence"),
    })))
}

/// `GET /accounts/{account_id}/history`: the account's balance events newest first, a page at
/// a time; `next_before` fetches the next page and is null on the last.
pub fn history(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    let account_id = domain::path_id(ctx.param("account_id")).ok_or_else(account_not_found)?;
    let page = domain::history_page(ctx.query("limit").as_deref(), ctx.query("before").as_deref())?;
    visible_account(&principal, &account_id)?;
    let db = ctx.db()?;

    // One event past the page: its presence is what says a next page exists.
    let mut rows = sql::history(db, &account_id, page.limit + 1, page.before)?;
    let more = rows.len() as i64 > page.limit;
    rows.truncate(page.limit as usize);
    let next_before = rows.last().filter(|_| more).map(|row| row.int("sequence"));
    let events: Vec<Json> = rows.iter().map(event_json).collect();
    Ok(Response::ok(&json!({ "events": events, "next_before": next_before })))
}

/// `GET /internal/accounts/{account_id}/position` (the account service, before closing an
/// account): its balance and reserved amount, zeros for an account never seen.
pub fn position(ctx: &mut Context) -> Result<Response, ApiError> {
    let account_id = domain::path_id(ctx.param("account_id")).ok_or_else(account_not_found)?;
    let db = ctx.db()?;

    let (balance, _, reserved) = formatted(funds_of(&sql::balance(db, &account_id)?));
    Ok(Response::ok(&json!({ "balance": balance, "reserved": reserved })))
}

// ---- reservations ----

/// `POST /reservations`: sets funds of the caller's own `ACTIVE` account aside for a while
/// (`ttl_seconds`, 900 by default); 422 `insufficient_funds` beyond the available balance.
pub fn create_reservation(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let request: NewReservation = ctx.json()?;
    let account_id = fields::uuid("account_id", &request.account_id)?;
    let payment_id = request.payment_id.as_deref().map(|id| fields::uuid("payment_id", id)).transpose()?;
    let ttl_seconds = domain::ttl_seconds(request.ttl_seconds)?;
    account(&account_id)?.check_reservable(&caller.user_id, &request.currency)?;
    let db = ctx.db()?;

    let accounts = BTreeMap::from([(account_id.clone(), request.currency.code().to_string())]);
    let mut funds = lock_funds(db, &accounts)?;
    funds.get_mut(&account_id).expect("locked above").reserve(request.amount)?;
    let reservation_id = micropay_sdk::new_uuid();
    let payment_id = payment_id.unwrap_or_else(|| reservation_id.clone());
    let row = sql::insert_reservation(
        db,
        &reservation_id,
        &account_id,
        &payment_id,
        request.amount,
        &request.currency,
        ttl_seconds,
    )?;
    publish_reservation("balance.reserved", &row)?;
    Ok(Response::created(&reservation_json(&row)))
}

/// `GET /reservations/{reservation_id}`: the reservation, to its account's owner or an
/// administrator.
pub fn get_reservation(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    let reservation_id = domain::path_id(ctx.param("reservation_id")).ok_or_else(reservation_not_found)?;
    let db = ctx.db()?;

    let row = sql::reservation(db, &reservation_id)?.ok_or_else(reservation_not_found)?;
    check_reservation_visible(&principal, &row.text("account_id"))?;
    Ok(Response::ok(&reservation_json(&row)))
}

/// `POST /reservations/{reservation_id}/release`: gives an `ACTIVE` reservation's funds back;
/// 409 `reservation_expired` once it has expired, `reservation_not_active` once captured or
/// released.
pub fn release_reservation(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    if principal == Principal::Admin {
        domain::check_release_by_administrator(ctx.administrator()?)?;
    }
    let reservation_id = domain::path_id(ctx.param("reservation_id")).ok_or_else(reservation_not_found)?;
    let db = ctx.db()?;

    let row = sql::reservation(db, &reservation_id)?.ok_or_else(reservation_not_found)?;
    let account_id = row.text("account_id");
    check_reservation_visible(&principal, &account_id)?;
    // The account's lock, then the reservation's: the order holds take them in.
    sql::lock_accounts(db, std::slice::from_ref(&account_id))?;
    let row = sql::lock_reservation(db, &reservation_id)?.ok_or_else(reservation_not_found)?;
    reservation_of(&row).check_active()?;
    let row = sql::release_reservation(db, &reservation_id)?;
    publish_reservation("balance.reservation_released", &row)?;
    Ok(Response::ok(&reservation_json(&row)))
}

/// `POST /internal/holds` (the transaction service, before it commits a posting): holds the
/// funds of the posting's debits, all or nothing. A hold naming a reservation captures it; one
/// without creates a reservation captured from the start, within the available balance. The
/// accounts are locked first, in `account_id` order (see [`lock_funds`]); each reservation
/// after them.
pub fn place_holds(ctx: &mut Context) -> Result<Response, ApiError> {
    let request: HoldsRequest = ctx.json()?;
    let transaction_id = fields::uuid("transaction_id", &request.transaction_id)?;
    let payment_id = fields::uuid("payment_id", &request.payment_id)?;
    let holds = request
        .holds
        .into_iter()
        .map(|hold| {
            Ok(Hold {
                account_id: fields::uuid("account_id", &hold.account_id)?,
                amount: hold.amount,
                currency: hold.currency,
                reservation_id: hold
                    .reservation_id
                    .as_deref()
                    .map(|id| fields::uuid("reservation_id", id))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<Hold>, ApiError>>()?;
    let accounts = domain::hold_accounts(&holds)?;
    let db = ctx.db()?;

    let mut funds = lock_funds(db, &accounts)?;
    let mut reservation_ids = Vec::with_capacity(holds.len());
    for hold in &holds {
        match &hold.reservation_id {
            Some(reservation_id) => {
                // Captured, an ACTIVE reservation keeps counting at its whole amount until the
                // debit settles it: what is available does not change.
                let row = sql::lock_reservation(db, reservation_id)?.ok_or_else(reservation_not_found)?;
                reservation_of(&row).check_capture(&hold.account_id, &hold.currency, hold.amount)?;
                sql::capture_reservation(db, reservation_id, &transaction_id)?;
                reservation_ids.push(reservation_id.clone());
            }
            None => {
                funds.get_mut(&hold.account_id).expect("locked above").reserve(hold.amount)?;
                let reservation_id = micropay_sdk::new_uuid();
                sql::insert_hold(
                    db,
                    &reservation_id,
                    &hold.account_id,
                    &payment_id,
                    hold.amount,
                    &hold.currency,
                    &transaction_id,
                )?;
                reservation_ids.push(reservation_id);
            }
        }
    }
    Ok(Response::ok(&json!({ "reservation_ids": reservation_ids })))
}

/// `POST /internal/holds/release` `{"transaction_id"}` (the transaction service, for a
/// payment cancelled or failed before its posting was recorded): releases the transaction's
/// unsettled holds and publishes `balance.reservation_released` for each. Idempotent: holds
/// released already (or a hold another unit of work holds, which the sweeper releases later,
/// once the transaction service says the posting will never come) are not counted.
pub fn release_transaction_holds(ctx: &mut Context) -> Result<Response, ApiError> {
    let request: TransactionHolds = ctx.json()?;
    let transaction_id = fields::uuid("transaction_id", &request.transaction_id)?;
    let released = sql::release_holds(ctx.db()?, &[transaction_id], 0)?;
    for row in &released {
        publish_reservation("balance.reservation_released", row)?;
    }
    Ok(Response::ok(&Released { holds_released: released.len() as u64 }))
}

// ---- the sweeper ----

/// `POST /maintenance` (every minute, on every host, as the platform administrator): releases
/// the holds of postings that never committed, records expired reservations, and snapshots
/// accounts whose last snapshot is over five minutes old. Safe to run any number of times and
/// on several hosts at once: every step skips rows another unit of work holds, and changes only
/// rows still in the state it looked for.
///
/// The transaction service is asked first, while this unit of work holds no lock; the account
/// rows the snapshots lock are the last thing taken, just before the commit.
pub fn maintain(ctx: &mut Context) -> Result<Response, ApiError> {
    let db = ctx.db()?;

    let unsettled = sql::unsettled_postings(db, domain::HOLD_RELEASE_AFTER_SECONDS, domain::STALE_POSTINGS_BATCH)?;
    let never_committed: Vec<String> = unsettled.into_iter().filter(|id| posting_never_committed(id)).collect();
    let released = sql::release_holds(db, &never_committed, domain::HOLD_RELEASE_AFTER_SECONDS)?;
    for row in &released {
        publish_reservation("balance.reservation_released", row)?;
    }
    if !released.is_empty() {
        micropay_sdk::log_info(&format!(
            "released {} holds of {} postings that never committed",
            released.len(),
            never_committed.len()
        ));
    }

    let expired = sql::expire_reservations(db, domain::EXPIRE_BATCH)?;
    for row in &expired {
        publish_reservation("balance.reservation_expired", row)?;
    }

    let due = sql::lock_snapshots_due(db, domain::SNAPSHOT_MAX_AGE_SECONDS, domain::SNAPSHOT_BATCH)?;
    let snapshots = sql::take_snapshots(db, &due, 1)?;

    Ok(Response::ok(&json!({
        "reservations_expired": expired.len(),
        "holds_released": released.len(),
        "snapshots_taken": snapshots,
    })))
}

/// Whether the transaction service says `transaction_id` does not exist: its posting never
/// committed. Any other answer, or none, keeps the hold until a later run.
fn posting_never_committed(transaction_id: &str) -> bool {
    let path = format!("/internal/transactions/{transaction_id}");
    match services::call_json("transaction", "GET", &path, None) {
        Ok(answer) => answer.get("exists").and_then(Json::as_bool) == Some(false),
        Err(err) => {
            micropay_sdk::log_warn(&format!("transaction {transaction_id} not checked: {} {}", err.code, err.message));
            false
        }
    }
}

// ---- the ledger check ----

/// `POST /internal/ledger` (the transaction service's ledger check): per account, the count
/// and net of the balance events posted before `as_of`, leaving out the transactions still in
/// flight; per currency, the sum of all balances; and every break found in the balance
/// history: chains, snapshots, currencies that do not sum to zero.
pub fn ledger(ctx: &mut Context) -> Result<Response, ApiError> {
    let request: LedgerRequest = ctx.json()?;
    let as_of = domain::body_timestamp("as_of", &request.as_of)?;
    let excluded = request
        .exclude_transactions
        .iter()
        .map(|id| fields::uuid("exclude_transactions", id))
        .collect::<Result<Vec<String>, ApiError>>()?;
    let db = ctx.db()?;

    let accounts: Vec<Json> = sql::ledger_accounts(db, as_of, &excluded)?
        .iter()
        .map(|row| {
            json!({
                "account_id": row.text("account_id"),
                "currency": row.text("currency"),
                "entries": row.int("entries"),
                "net": money::format(money::decimal(&row.text("net"))),
            })
        })
        .collect();
    let mut problems: Vec<Json> = Vec::new();
    for row in sql::chain_problems(db, domain::PROBLEMS_PER_KIND)?
        .iter()
        .chain(sql::snapshot_problems(db, domain::PROBLEMS_PER_KIND)?.iter())
    {
        problems.push(json!({ "kind": row.text("kind"), "detail": row.text("detail") }));
    }
    let mut currencies: Vec<Json> = Vec::new();
    for row in sql::currency_sums(db)? {
        let currency = row.text("currency");
        let sum = money::decimal(&row.text("sum"));
        if sum != Decimal::ZERO {
            let detail = format!("the balances in {currency} sum to {}, not zero", money::format(sum));
            problems.push(json!({ "kind": "currency_not_zero", "detail": detail }));
        }
        currencies.push(json!({ "currency": currency, "sum": money::format(sum) }));
    }
    Ok(Response::ok(&json!({ "accounts": accounts, "currencies": currencies, "problems": problems })))
}

// ---- the event handler ----

/// Applies a batch of `transaction.posted` events in one unit of work: one balance event per
/// entry, postings in the order they came and each one's entries in entry order, on every
/// account of the batch locked at once in `account_id` order; the postings' holds settled; a
/// snapshot of an account at every [`domain::SNAPSHOT_EVERY`] events; then one
/// `balance.updated` per account (its state after the whole batch, naming the transactions
/// applied to it) and one `balance.transaction_applied` per posting.
///
/// **Invariant: two units of work applying postings never wait on each other in a cycle.**
/// Kept by taking every row lock a batch needs in one statement, before anything else, in
/// `account_id` order (`sql::lock_accounts`): any two batches lock their common accounts in
/// the same order. (The holds and reservations they update after are their own postings'.)
///
/// An event that breaks the contract, or whose entry is in another currency than its account,
/// is an error: the batch is rolled back and its events delivered again one by one, so that
/// only that one is retried and then dead-lettered for an operator, never skipped, since the
/// ledger would otherwise lack a committed posting. A posting already applied (its entries
/// have their events) is acknowledged without a second application.
pub fn apply_postings(events: &[Event]) -> Result<(), String> {
    let mut postings = Vec::with_capacity(events.len());
    for event in events {
        if event.topic != "transaction.posted" {
            micropay_sdk::log_info(&format!("event {} on {} is not handled here", event.id, event.topic));
            continue;
        }
        postings.push((event, domain::posting(&event.data).map_err(|err| refuse(event, &err))?));
    }
    if postings.is_empty() {
        return Ok(());
    }
    let db = Db::open().map_err(failed)?;
    apply(&db, &postings)
}

/// The unit of work of [`apply_postings`], on postings read and checked.
fn apply(db: &Db, postings: &[(&Event, Posting)]) -> Result<(), String> {
    let mut accounts: BTreeMap<String, domain::PostedAccount> = BTreeMap::new();
    for (event, posting) in postings {
        for (id, account) in posting.accounts().map_err(|err| refuse(event, &err))? {
            let known = accounts.entry(id.clone()).or_insert_with(|| account.clone());
            if known.currency != account.currency {
                let reason = format!("account {id} is in {} in another posting of its batch", known.currency);
                return Err(refuse(event, &reason));
            }
            known.system |= account.system;
        }
    }
    let ids: Vec<String> = accounts.keys().cloned().collect();
    let rows: Vec<_> =
        accounts.iter().map(|(id, account)| (id.clone(), account.currency.clone(), account.system)).collect();
    sql::lock_or_create_accounts(db, &rows).map_err(failed)?;

    let entry_ids: Vec<String> = postings.iter().flat_map(|(_, posting)| posting.entry_ids()).collect();
    let applied: BTreeSet<String> = sql::applied_entries(db, &entry_ids).map_err(failed)?.into_iter().collect();

    let mut chains = BTreeMap::new();
    let mut system = BTreeSet::new();
    for row in sql::positions(db, &ids).map_err(failed)? {
        let account_id = row.text("account_id");
        if row.bool("system") || accounts[&account_id].system {
            system.insert(account_id.clone());
        }
        let chain = Chain {
            currency: row.text("currency"),
            last_sequence: row.int("last_sequence"),
            balance: money::decimal(&row.text("balance")),
        };
        chains.insert(account_id, chain);
    }
    let first_sequence: BTreeMap<String, i64> =
        chains.iter().map(|(id, chain)| (id.clone(), chain.last_sequence)).collect();

    let transaction_ids: Vec<String> = postings.iter().map(|(_, posting)| posting.transaction_id.clone()).collect();
    let mut held: BTreeMap<String, BTreeMap<String, Decimal>> = BTreeMap::new();
    for row in sql::captured_holds(db, &transaction_ids).map_err(failed)? {
        held.entry(row.text("transaction_id"))
            .or_default()
            .insert(row.text("account_id"), money::decimal(&row.text("held")));
    }

    let mut to_insert = Vec::with_capacity(postings.len());
    let mut applied_to: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (event, posting) in postings {
        let entries = posting.entry_ids();
        let done = entries.iter().filter(|id| applied.contains(*id)).count();
        if done == entries.len() {
            micropay_sdk::log_info(&format!("transaction {} is already applied", posting.transaction_id));
            continue;
        }
        if done > 0 {
            return Err(refuse(event, &format!("{done} of its {} entries are already applied", entries.len())));
        }
        let balance_events = domain::balance_events(posting, &mut chains).map_err(|err| refuse(event, &err))?;
        let no_holds = BTreeMap::new();
        let holds = held.get(&posting.transaction_id).unwrap_or(&no_holds);
        for shortfall in domain::unheld_debits(posting, &system, holds) {
            micropay_sdk::log_warn(&format!(
                "transaction {} debits account {} by {} but holds only {} for it: applied all the same",
                posting.transaction_id,
                shortfall.account_id,
                money::format(shortfall.debited),
                money::format(shortfall.held)
            ));
        }
        for account_id in posting.accounts().map_err(|err| refuse(event, &err))?.into_keys() {
            applied_to.entry(account_id).or_default().push(posting.transaction_id.clone());
        }
        to_insert.push(sql::PostingEvents { posting, bus_event_id: &event.id, events: balance_events });
    }
    if to_insert.is_empty() {
        return Ok(());
    }

    sql::insert_events(db, &to_insert).map_err(failed)?;
    let advances: Vec<_> = chains
        .iter()
        .filter(|(id, chain)| chain.last_sequence > first_sequence[*id])
        .map(|(id, chain)| (id.clone(), chain.last_sequence, chain.last_sequence - first_sequence[id]))
        .collect();
    sql::advance_accounts(db, &advances).map_err(failed)?;
    let applied_transactions: Vec<String> =
        to_insert.iter().map(|applied| applied.posting.transaction_id.clone()).collect();
    sql::settle_holds(db, &applied_transactions).map_err(failed)?;
    let touched: Vec<String> = applied_to.keys().cloned().collect();
    sql::take_snapshots(db, &touched, domain::SNAPSHOT_EVERY).map_err(failed)?;

    for row in sql::positions(db, &touched).map_err(failed)? {
        let account_id = row.text("account_id");
        let (balance, available, reserved) = formatted(funds_of(&row));
        let data = json!({
            "account_id": account_id,
            "currency": row.text("currency"),
            "balance": balance,
            "available": available,
            "reserved": reserved,
            "sequence": row.int("last_sequence"),
            "transaction_ids": applied_to[&account_id],
        });
        events::publish("balance.updated", &account_id, &data).map_err(unpublished)?;
    }
    for transaction_id in &applied_transactions {
        let data = json!({ "transaction_id": transaction_id });
        events::publish("balance.transaction_applied", transaction_id, &data).map_err(unpublished)?;
    }
    Ok(())
}

/// An event that cannot be applied as it is: logged for an operator, and failed so that it is
/// retried, then dead-lettered.
fn refuse(event: &Event, reason: &str) -> String {
    let message = format!("transaction.posted {} cannot be applied: {reason}", event.id);
    micropay_sdk::log_warn(&message);
    message
}

/// A database failure, for the host's retry of the delivery.
fn failed(err: DbError) -> String {
    format!("database error {}: {}", err.code, err.message)
}

/// A refused publish, for the host's retry of the delivery.
fn unpublished(err: PublishError) -> String {
    format!("event not published: {err:?}")
}
