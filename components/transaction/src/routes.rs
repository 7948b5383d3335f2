//! The endpoints and the event handler: each reads its input, applies the rules of
//! [`crate::domain`] and [`crate::ledger`], runs the statements of [`crate::sql`], calls the
//! account and balance services, and shapes the answer.
//!
//! Every posting (a transfer, an adjustment, a deposit, a withdrawal, a reversal) goes through
//! [`post`], the one place that authorizes, holds and records.

use std::collections::BTreeMap;

use micropay_sdk::db::DbError;
use micropay_sdk::money::{self, Amount, Currency};
use micropay_sdk::time::rfc3339;
use micropay_sdk::{ApiError, Context, Db, Principal, Response, Row, events, services};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::bindings::exports::micropay::platform::subscriber::Event;
use crate::domain::{self, Entry, EntryRequest, EntryType, TransactionType};
use crate::{ledger, sql};
use micropay_sdk::cursor::Cursor;

// ---- request bodies ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPosting {
    entries: Vec<EntryRequest>,
    description: Option<String>,
    payment_id: Option<String>,
}

/// A deposit or a withdrawal.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Funding {
    account_id: String,
    amount: String,
    currency: String,
    payment_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reversal {
    reason: String,
}

// ---- who is asking ----

/// Whether `principal` may see a transaction: its initiator, or an administrator.
fn may_see(principal: &Principal, transaction: &Row) -> bool {
    match transaction.opt_text("initiated_by") {
        Some(initiator) => principal.may_act_for(&initiator),
        None => *principal == Principal::Admin,
    }
}

/// The transaction id of the path; a malformed one names no transaction: 404.
fn path_transaction_id(ctx: &Context) -> Result<String, ApiError> {
    let id = ctx.param("transaction_id");
    if micropay_sdk::is_uuid(id) { Ok(id.to_ascii_lowercase()) } else { Err(no_transaction(id)) }
}

fn no_transaction(id: &str) -> ApiError {
    ApiError::not_found(format!("no transaction {id}"))
}

// ---- answers ----

fn entry_json(row: &Row) -> Json {
    json!({
        "entry_id": row.text("entry_id"),
        "account_id": row.text("account_id"),
        "entry_type": row.text("entry_type"),
        "amount": money::format(money::decimal(&row.text("amount"))),
        "currency": row.text("currency"),
        "created_at": row.rfc3339("created_at"),
    })
}

fn transaction_json(row: &Row, entries: Vec<Json>) -> Json {
    let mut transaction = json!({
        "transaction_id": row.text("transaction_id"),
        "payment_id": row.text("payment_id"),
        "transaction_type": row.text("transaction_type"),
        "status": row.text("status"),
        "total_amount": money::format(money::decimal(&row.text("total_amount"))),
        "currency": row.text("currency"),
        "description": row.opt_text("description"),
        "initiated_by": row.opt_text("initiated_by"),
        "created_at": row.rfc3339("created_at"),
        "settled_at": row.opt_rfc3339("settled_at"),
        "reversed_at": row.opt_rfc3339("reversed_at"),
        "reversal_reason": row.opt_text("reversal_reason"),
        "entries": entries,
    });
    if let Some(original_id) = row.opt_text("reversal_of") {
        transaction["reversal_of"] = Json::String(original_id);
    }
    transaction
}

/// The transactions of `rows` with their entries, fetched in one statement.
fn with_entries(db: &Db, rows: &[Row]) -> Result<Vec<Json>, ApiError> {
    let ids: Vec<String> = rows.iter().map(|row| row.text("transaction_id")).collect();
    let mut entries: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for entry in sql::entries_of(db, &ids)? {
        entries.entry(entry.text("transaction_id")).or_default().push(entry_json(&entry));
    }
    Ok(rows
        .iter()
        .map(|row| transaction_json(row, entries.remove(&row.text("transaction_id")).unwrap_or_default()))
        .collect())
}

/// A transaction just written, as the API shows it.
fn written(db: &Db, transaction_id: &str) -> Result<Response, ApiError> {
    let row = sql::find_transaction(db, transaction_id)?
        .ok_or_else(|| ApiError::internal(&format!("transaction {transaction_id} vanished after being written")))?;
    let mut answer = with_entries(db, std::slice::from_ref(&row))?;
    Ok(Response::created(&answer.remove(0)))
}

// ---- posting ----

/// A posting about to be made.
struct Posting {
    transaction_type: TransactionType,
    entries: Vec<Entry>,
    /// The payment it belongs to; the transaction's own id when none.
    payment_id: Option<String>,
    description: Option<String>,
    /// The user who posts it; `None` for an administrator.
    initiated_by: Option<String>,
}

/// Posts `posting`, the same steps for every kind: validate; have the account service
/// authorize the accounts (and count the debits toward the users' limits); have the balance
/// service hold the debits of user accounts; then record the transaction `PENDING` with its
/// entries and publish `transaction.posted`, which the balance service applies. Returns the
/// new transaction's id.
///
/// A refusal by either service is the answer as it gave it. When the posting fails after the
/// authorization, the account service is told to give up what it took (the accounts' records
/// in flight, and the limits counted); what a posting that fails later still (or whose commit
/// never comes) leaves behind, the account and balance services' sweepers resolve once this
/// service says the transaction does not exist.
fn post(ctx: &mut Context, posting: &Posting) -> Result<String, ApiError> {
    let total = domain::validate_posting(&posting.entries)?;
    let transaction_id = micropay_sdk::new_uuid();
    let legs: Vec<Json> = posting
        .entries
        .iter()
        .map(|entry| {
            json!({
                "account_id": entry.account_id,
                "entry_type": entry.entry_type.as_str(),
                "amount": entry.amount,
                "currency": entry.currency,
            })
        })
        .collect();
    let counted = posting.transaction_type.counts_toward_limits();
    let authorization = json!({ "transaction_id": transaction_id, "legs": legs, "count_toward_limits": counted });
    let authorized = services::call_json("account", "POST", "/internal/authorize", Some(&authorization))?;

    let recorded = hold_and_record(ctx, posting, &transaction_id, &total, &authorized);
    if recorded.is_err() {
        give_up_authorization(&authorization);
    }
    recorded.map(|()| transaction_id)
}

/// The steps of [`post`] after the authorization: hold, then record.
fn hold_and_record(
    ctx: &mut Context,
    posting: &Posting,
    transaction_id: &str,
    total: &domain::Total,
    authorized: &Json,
) -> Result<(), ApiError> {
    let system = domain::system_accounts(authorized).map_err(|reason| {
        ApiError::internal(&format!("account /internal/authorize answered unexpectedly: {reason}"))
    })?;
    let payment_id = posting.payment_id.as_deref().unwrap_or(transaction_id);

    let holds = domain::holds(&posting.entries, |account_id| system.contains(account_id))?;
    if !holds.is_empty() {
        let holds: Vec<Json> = holds
            .iter()
            .map(|hold| {
                let mut json = json!({
                    "account_id": hold.account_id,
                    "amount": money::format(hold.amount),
                    "currency": hold.currency,
                });
                if let Some(reservation_id) = &hold.reservation_id {
                    json["reservation_id"] = Json::String(reservation_id.clone());
                }
                json
            })
            .collect();
        let request = json!({ "transaction_id": transaction_id, "payment_id": payment_id, "holds": holds });
        services::call_json("balance", "POST", "/internal/holds", Some(&request))?;
    }

    // The database only now, for the unit of work's writes: no connection waits on the other
    // services, and `created_at` (the unit of work's start) is close to the commit. (A reversal
    // has it open already: it locked the original first.)
    let db = ctx.db()?;
    let created_at = sql::insert_transaction(
        db,
        &sql::NewTransaction {
            transaction_id,
            payment_id,
            transaction_type: posting.transaction_type,
            total,
            description: posting.description.as_deref(),
            initiated_by: posting.initiated_by.as_deref(),
        },
    )?;
    let entry_ids: Vec<String> = posting.entries.iter().map(|_| micropay_sdk::new_uuid()).collect();
    sql::insert_entries(db, transaction_id, &entry_ids, &posting.entries)?;

    let entries: Vec<Json> = entry_ids
        .iter()
        .zip(&posting.entries)
        .map(|(entry_id, entry)| {
            json!({
                "entry_id": entry_id,
                "account_id": entry.account_id,
                "entry_type": entry.entry_type.as_str(),
                "amount": entry.amount,
                "currency": entry.currency,
                "system": system.contains(&entry.account_id),
            })
        })
        .collect();
    let posted = json!({
        "transaction_id": transaction_id,
        "payment_id": payment_id,
        "transaction_type": posting.transaction_type.as_str(),
        "created_at": created_at,
        "entries": entries,
    });
    events::publish("transaction.posted", transaction_id, &posted)?;
    Ok(())
}

/// Gives up what an authorization (`authorization`, the request that made it) took for a
/// posting that then failed: the accounts' records in flight, and the limit usage it counted.
/// Its own failure is logged, not answered: the client needs the posting's error (the account
/// service's sweeper clears the records later, the limits stay counted).
fn give_up_authorization(authorization: &Json) {
    if let Err(err) = services::call_json("account", "POST", "/internal/release-limits", Some(authorization)) {
        micropay_sdk::log_warn(&format!(
            "the authorization of failed posting {} not given up: {} {}",
            authorization["transaction_id"], err.code, err.message
        ));
    }
}

/// An entry as stored, for a reversal to mirror.
fn stored_entry(row: &Row) -> Result<Entry, ApiError> {
    let malformed = |what: &str| ApiError::internal(&format!("entry {} has {what}", row.text("entry_id")));
    Ok(Entry {
        account_id: row.text("account_id"),
        entry_type: EntryType::parse(&row.text("entry_type")).ok_or_else(|| malformed("an unknown type"))?,
        amount: Amount::new(money::decimal(&row.text("amount"))).map_err(|_| malformed("an invalid amount"))?,
        currency: Currency::parse(&row.text("currency")).map_err(|_| malformed("an unknown currency"))?,
        reservation_id: None,
    })
}

// ---- endpoints ----

/// `POST /transactions`: a user's transfer (initiated by them), or an administrator's
/// adjustment. 201 with the transaction, `PENDING` until the balances have applied it.
pub fn post_transaction(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    if principal == Principal::Admin {
        // An administrator's posting is an adjustment: it moves money.
        domain::check_treasury(ctx.administrator()?)?;
    }
    let request: NewPosting = ctx.json()?;
    let entries = domain::entries(request.entries)?;
    let description = domain::text_field("description", request.description.as_deref())?;
    let payment_id = request.payment_id.map(|id| domain::uuid_field("payment_id", &id)).transpose()?;
    let (transaction_type, initiated_by) = match principal {
        Principal::User(user_id) => (TransactionType::Transfer, Some(user_id)),
        Principal::Admin => (TransactionType::Adjustment, None),
    };

    let posting = Posting { transaction_type, entries, payment_id, description, initiated_by };
    let transaction_id = post(ctx, &posting)?;
    written(ctx.db()?, &transaction_id)
}

/// `POST /deposits`: money enters the platform; the currency's funding account pays the account.
pub fn deposit(ctx: &mut Context) -> Result<Response, ApiError> {
    fund(ctx, TransactionType::Deposit)
}

/// `POST /withdrawals`: money leaves the platform; the account pays the currency's funding
/// account, its debit held like any other.
pub fn withdraw(ctx: &mut Context) -> Result<Response, ApiError> {
    fund(ctx, TransactionType::Withdrawal)
}

fn fund(ctx: &mut Context, transaction_type: TransactionType) -> Result<Response, ApiError> {
    domain::check_treasury(ctx.administrator()?)?;
    let request: Funding = ctx.json()?;
    let account_id = domain::uuid_field("account_id", &request.account_id)?;
    let amount = Amount::parse(&request.amount).map_err(|reason| money::invalid("amount", reason))?;
    let currency = Currency::parse(&request.currency).map_err(|reason| money::invalid("currency", reason))?;
    let payment_id = request.payment_id.map(|id| domain::uuid_field("payment_id", &id)).transpose()?;

    let funding =
        services::call_json("account", "POST", "/internal/system-account", Some(&json!({ "currency": currency })))?;
    let funding_id = funding["account_id"]
        .as_str()
        .filter(|id| micropay_sdk::is_uuid(id))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| ApiError::internal(&format!("account /internal/system-account answered {funding}")))?;

    let entries = domain::funding_entries(transaction_type, &account_id, &funding_id, amount, &currency);
    let posting = Posting { transaction_type, entries, payment_id, description: None, initiated_by: None };
    let transaction_id = post(ctx, &posting)?;
    written(ctx.db()?, &transaction_id)
}

/// `POST /transactions/{transaction_id}/reverse`: posts the mirror image of a settled
/// transaction and marks it `REVERSED`. 201 with the reversal, which names the original in
/// `reversal_of`.
pub fn reverse(ctx: &mut Context) -> Result<Response, ApiError> {
    domain::check_treasury(ctx.administrator()?)?;
    let original_id = path_transaction_id(ctx)?;
    let request: Reversal = ctx.json()?;
    let reason = domain::reason(&request.reason)?;

    // The original stays locked until this unit of work ends, so two reversals of it take
    // turns and the second finds it reversed.
    let db = ctx.db()?;
    let original = sql::lock_transaction(db, &original_id)?.ok_or_else(|| no_transaction(&original_id))?;
    domain::check_reversible(
        &original.text("transaction_type"),
        &original.text("status"),
        original.bool("has_reversal"),
    )?;
    let entries: Vec<Entry> =
        sql::entries_of(db, std::slice::from_ref(&original_id))?.iter().map(stored_entry).collect::<Result<_, _>>()?;

    let posting = Posting {
        transaction_type: TransactionType::Reversal,
        entries: domain::mirror(&entries),
        // The reversal belongs to the same payment as what it undoes.
        payment_id: Some(original.text("payment_id")),
        description: Some(reason.clone()),
        initiated_by: None,
    };
    let reversal_id = post(ctx, &posting)?;

    let db = ctx.db()?;
    sql::insert_reversal(db, &original_id, &reversal_id, &reason).map_err(|err| already_reversed(err, &original_id))?;
    sql::mark_reversed(db, &original_id, &reason)?;
    let reversed = json!({ "transaction_id": original_id, "reversal_transaction_id": reversal_id, "reason": reason });
    events::publish("transaction.reversed", &original_id, &reversed)?;
    written(db, &reversal_id)
}

/// A second reversal of one transaction is 409 `already_reversed`; any other error stays a 500.
fn already_reversed(err: DbError, original_id: &str) -> ApiError {
    if err.is_unique_violation(Some(sql::ONE_REVERSAL)) {
        ApiError::conflict("already_reversed", format!("transaction {original_id} has already been reversed"))
    } else {
        err.into()
    }
}

/// `GET /transactions`: a page of transactions, newest first: a user's own postings, or every
/// transaction for an administrator; with `account_id`, those with an entry on that account.
/// `next_cursor` fetches the next page and is null on the last.
pub fn list_transactions(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    let query = domain::list_query(|name| ctx.query(name))?;
    let initiated_by = match &principal {
        Principal::User(user_id) => Some(user_id.as_str()),
        Principal::Admin => None,
    };
    let db = ctx.db()?;

    let mut rows = sql::list_transactions(db, initiated_by, &query)?;
    // The statement fetches one row past the page: its presence is what says a next page exists.
    let page = usize::try_from(query.limit).unwrap_or(usize::MAX);
    let more = rows.len() > page;
    rows.truncate(page);
    let next_cursor = match rows.last() {
        Some(last) if more => {
            let created_at = last.opt_timestamp("created_at").expect("created_at is NOT NULL");
            Some(Cursor { time: created_at, id: last.text("transaction_id") }.encode())
        }
        _ => None,
    };
    let transactions = with_entries(db, &rows)?;
    Ok(Response::ok(&json!({ "transactions": transactions, "next_cursor": next_cursor })))
}

/// `GET /transactions/{transaction_id}`: the transaction with its entries, to the user who
/// posted it or an administrator; to anyone else it does not exist.
pub fn get_transaction(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    let transaction_id = path_transaction_id(ctx)?;
    let db = ctx.db()?;

    let row = sql::find_transaction(db, &transaction_id)?
        .filter(|row| may_see(&principal, row))
        .ok_or_else(|| no_transaction(&transaction_id))?;
    let mut answer = with_entries(db, std::slice::from_ref(&row))?;
    Ok(Response::ok(&answer.remove(0)))
}

/// `GET /internal/transactions/{transaction_id}` (the balance and account services): whether a
/// posting committed, and its status, so that holds and records in flight of postings that
/// never did (or are settled) can be released.
pub fn transaction_status(ctx: &mut Context) -> Result<Response, ApiError> {
    let transaction_id = path_transaction_id(ctx)?;
    let db = ctx.db()?;

    let status = sql::status_of(db, &transaction_id)?;
    Ok(Response::ok(&json!({ "exists": status.is_some(), "status": status })))
}

/// `POST /ledger/check`: the reconciliation of the ledger with the balances and the accounts,
/// up to `as_of` (see `LEDGER.md`). Always 200; `ok` says whether any problem was found.
pub fn check_ledger(ctx: &mut Context) -> Result<Response, ApiError> {
    let as_of = domain::as_of(ctx.query("as_of").as_deref(), micropay_sdk::now_micros())?;
    let as_of_text = rfc3339(as_of);
    let db = ctx.db()?;

    let pending_before = as_of - ledger::PENDING_TOO_LONG_MICROS;
    let ours = ledger::transaction_side(sql::ledger_side(db, as_of, pending_before, ledger::PENDING_TOO_LONG_LISTED)?)
        .map_err(|err| ApiError::internal(&err))?;
    let request = json!({ "as_of": as_of_text, "exclude_transactions": ours.pending });
    let theirs = ledger::balance_side(services::call_json("balance", "POST", "/internal/ledger", Some(&request))?)
        .map_err(|err| ApiError::internal(&err))?;
    // System accounts are listed on their own as well, whether or not the full list has them.
    let accounts = services::call_json("account", "GET", "/accounts", None)?;
    let system_accounts = services::call_json("account", "GET", "/system-accounts", None)?;
    let known = ledger::known_accounts(vec![accounts, system_accounts]).map_err(|err| ApiError::internal(&err))?;

    let report = ledger::report(&as_of_text, &ours, &theirs, &known);
    if report["ok"] == Json::Bool(false) {
        micropay_sdk::log_warn(&format!("the ledger check found problems: {}", report["problems"]));
    }
    Ok(Response::ok(&report))
}

/// Handles `balance.transaction_applied`: every entry of the transaction is in the balances,
/// so it is `SETTLED`. An event naming no pending transaction changes nothing: a transaction
/// unknown here is logged (retrying would not make it appear), one settled already is a
/// repeat.
pub fn settle(event: &Event) -> Result<(), String> {
    let Some(transaction_id) = domain::applied_transaction_id(&event.data) else {
        micropay_sdk::log_warn(&format!("event {} ({}) names no transaction: {}", event.id, event.topic, event.data));
        return Ok(());
    };
    let db = Db::open().map_err(describe)?;
    if sql::settle(&db, &transaction_id).map_err(describe)? == 0 {
        match sql::status_of(&db, &transaction_id).map_err(describe)? {
            None => micropay_sdk::log_warn(&format!("event {} names unknown transaction {transaction_id}", event.id)),
            Some(status) => {
                micropay_sdk::log_info(&format!("transaction {transaction_id} is already {status}; event {}", event.id))
            }
        }
    }
    Ok(())
}

fn describe(err: DbError) -> String {
    format!("database error {}: {}", err.code, err.message)
}
