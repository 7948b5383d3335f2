//! The endpoints and the event handler: each reads its input, applies the rules of
//! [`crate::domain`] and [`crate::ledger`], runs the statements of [`crate::sql`], calls the
//! account and balance services, and shapes the answer.
//!
//! Every posting (a transfer, an adjustment, a deposit, a withdrawal, a reversal) goes through
//! [`post`], the one place that authorizes, holds and records.

use std::collections::{BTreeMap, HashSet};

use micropay_sdk::db::DbError;
use micropay_sdk::money::{self, Amount, Currency};
use micropay_sdk::time::rfc3339;
use micropay_sdk::{ApiError, Context, Db, Principal, Response, Row, events, fields, services};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::bindings::exports::micropay::platform::subscriber::Event;
use crate::domain::{self, Entry, EntryRequest, EntryType, TransactionType};
use crate::{ledger, sql};
use micropay_sdk::contracts::{
    Authorization, AuthorizationRequest, Leg, PaymentPosting, PostingOutlook, PostingOutlookAnswer, Released,
};

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
    /// Whether its debits count toward the users' transfer limits.
    counts_toward_limits: bool,
}

/// Posts `posting`, the same steps for every kind: [`authorize_and_hold`], then [`record`]
/// the transaction `PENDING` with its entries and publish `transaction.posted`, which the
/// balance service applies. Returns the new transaction's id.
///
/// When recording fails after the authorization, the account service is told to give up what
/// it took (the accounts' records in flight, and the limits counted); what a posting that
/// fails later still (or whose commit never comes) leaves behind, the account and balance
/// services' sweepers resolve once this service says the transaction does not exist.
fn post(ctx: &mut Context, posting: &Posting) -> Result<String, ApiError> {
    let transaction_id = micropay_sdk::new_uuid();
    let authorized = authorize_and_hold(posting, &transaction_id)?;
    let recorded = record(ctx.db()?, posting, &transaction_id, &authorized.system);
    if recorded.is_err() {
        give_up_authorization(&authorized.request);
    }
    recorded.map(|_| transaction_id)
}

/// The steps before a posting is recorded: validate it; have the account service authorize
/// the accounts (and count the debits toward the users' limits) for `transaction_id`; have the
/// balance service hold the debits of user accounts. A refusal by either service is the answer
/// as it gave it; a refused hold gives the authorization up first.
fn authorize_and_hold(posting: &Posting, transaction_id: &str) -> Result<Authorized, ApiError> {
    domain::validate_posting(&posting.entries)?;
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
    let counted = posting.counts_toward_limits;
    let request = json!({ "transaction_id": transaction_id, "legs": legs, "count_toward_limits": counted });
    let answer = services::call_json("account", "POST", "/internal/authorize", Some(&request))?;
    match hold(posting, transaction_id, &answer) {
        Ok(system) => Ok(Authorized { request, answer, system }),
        Err(err) => {
            give_up_authorization(&request);
            Err(err)
        }
    }
}

/// A posting authorized and held.
struct Authorized {
    /// The authorization's request, to give it up.
    request: Json,
    /// The account service's answer.
    answer: Json,
    /// The system accounts among the entries.
    system: HashSet<String>,
}

/// Holds the debits of user accounts for `transaction_id`; returns the system accounts the
/// authorization (`authorized`, the account service's answer) named.
fn hold(posting: &Posting, transaction_id: &str, authorized: &Json) -> Result<HashSet<String>, ApiError> {
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
    Ok(system)
}

/// An authorized and held posting about to be recorded under `transaction_id`; `system` are
/// the system accounts among its entries.
struct Recording<'a> {
    posting: &'a Posting,
    transaction_id: &'a str,
    system: &'a HashSet<String>,
}

/// Records a posting (see [`record_all`]); returns whether it was recorded now.
fn record(db: &Db, posting: &Posting, transaction_id: &str, system: &HashSet<String>) -> Result<bool, ApiError> {
    Ok(!record_all(db, &[Recording { posting, transaction_id, system }])?.is_empty())
}

/// Records authorized and held postings with one statement: each transaction `PENDING` with its
/// entries, and `transaction.posted`, which the balance service applies. Returns the ids of
/// those recorded now: a transaction of that id recorded already (a payment's posting asked for
/// again) is left as it is, and nothing is published for it. The ids must differ.
fn record_all(db: &Db, postings: &[Recording]) -> Result<HashSet<String>, ApiError> {
    let mut totals = Vec::with_capacity(postings.len());
    for recording in postings {
        totals.push(domain::validate_posting(&recording.posting.entries)?);
    }
    let entry_ids: Vec<Vec<String>> = postings
        .iter()
        .map(|recording| recording.posting.entries.iter().map(|_| micropay_sdk::new_uuid()).collect())
        .collect();
    let rows: Vec<sql::NewTransaction> = postings
        .iter()
        .zip(&totals)
        .zip(&entry_ids)
        .map(|((recording, total), entry_ids)| sql::NewTransaction {
            transaction_id: recording.transaction_id,
            payment_id: recording.posting.payment_id.as_deref().unwrap_or(recording.transaction_id),
            transaction_type: recording.posting.transaction_type,
            total,
            description: recording.posting.description.as_deref(),
            initiated_by: recording.posting.initiated_by.as_deref(),
            entries: &recording.posting.entries,
            entry_ids,
        })
        .collect();
    let recorded: BTreeMap<String, String> = sql::insert_transactions(db, &rows)?.into_iter().collect();
    for ((recording, row), entry_ids) in postings.iter().zip(&rows).zip(&entry_ids) {
        let Some(created_at) = recorded.get(&recording.transaction_id.to_ascii_lowercase()) else { continue };
        let entries: Vec<Json> = entry_ids
            .iter()
            .zip(&recording.posting.entries)
            .map(|(entry_id, entry)| {
                json!({
                    "entry_id": entry_id,
                    "account_id": entry.account_id,
                    "entry_type": entry.entry_type.as_str(),
                    "amount": entry.amount,
                    "currency": entry.currency,
                    "system": recording.system.contains(&entry.account_id),
                })
            })
            .collect();
        let posted = json!({
            "transaction_id": recording.transaction_id,
            "payment_id": row.payment_id,
            "transaction_type": recording.posting.transaction_type.as_str(),
            "created_at": created_at,
            "entries": entries,
        });
        events::publish("transaction.posted", recording.transaction_id, &posted)?;
    }
    Ok(recorded.into_keys().collect())
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
    let description = fields::text("description", request.description.as_deref(), domain::TEXT_MAX)?;
    let payment_id = request.payment_id.map(|id| fields::uuid("payment_id", &id)).transpose()?;
    let (transaction_type, initiated_by) = match principal {
        Principal::User(user_id) => (TransactionType::Transfer, Some(user_id)),
        Principal::Admin => (TransactionType::Adjustment, None),
    };

    let counts_toward_limits = transaction_type.counts_toward_limits();
    let posting = Posting { transaction_type, entries, payment_id, description, initiated_by, counts_toward_limits };
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
    let account_id = fields::uuid("account_id", &request.account_id)?;
    let amount = Amount::parse(&request.amount).map_err(|reason| money::invalid("amount", reason))?;
    let currency = Currency::parse(&request.currency).map_err(|reason| money::invalid("currency", reason))?;
    let payment_id = request.payment_id.map(|id| fields::uuid("payment_id", &id)).transpose()?;

    let funding =
        services::call_json("account", "POST", "/internal/system-account", Some(&json!({ "currency": currency })))?;
    let funding_id = funding["account_id"]
        .as_str()
        .filter(|id| micropay_sdk::is_uuid(id))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| ApiError::internal(&format!("account /internal/system-account answered {funding}")))?;

    let entries = domain::funding_entries(transaction_type, &account_id, &funding_id, amount, &currency);
    let posting = Posting {
        transaction_type,
        entries,
        payment_id,
        description: None,
        initiated_by: None,
        counts_toward_limits: transaction_type.counts_toward_limits(),
    };
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
        counts_toward_limits: TransactionType::Reversal.counts_toward_limits(),
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
    let next_cursor = query.page.cut(&mut rows, "transaction_id");
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
/// never did (or are settled) can be released. A posting authorized for a payment and not yet
/// recorded is `{"exists": true, "status": "AUTHORIZED"}` while the payment service says it is
/// coming (its transaction id is the payment's id): what was authorized for it must stay.
pub fn transaction_status(ctx: &mut Context) -> Result<Response, ApiError> {
    let transaction_id = path_transaction_id(ctx)?;
    let db = ctx.db()?;

    let status = match sql::status_of(db, &transaction_id)? {
        Some(status) => Some(status),
        None => payment_posting_coming(&transaction_id)?.then(|| "AUTHORIZED".to_string()),
    };
    Ok(Response::ok(&json!({ "exists": status.is_some(), "status": status })))
}

/// Whether the payment service says a payment of this id will still have its posting
/// recorded. When it cannot say (not served now, failing), the answer is an error: the
/// sweepers then keep what they hold and ask again later, rather than free the funds of a
/// payment that may still be posted.
fn payment_posting_coming(payment_id: &str) -> Result<bool, ApiError> {
    let path = format!("/internal/payments/{payment_id}/posting");
    let outlook: PostingOutlookAnswer = services::call_typed("payment", "GET", &path, None::<&()>)?;
    Ok(outlook.posting == PostingOutlook::Coming)
}

// ---- payments ----

/// A payment's or a refund's legs as a posting's entries.
fn payment_posting(legs: Vec<Leg>, counts_toward_limits: bool) -> Result<Posting, ApiError> {
    let entries = domain::entries(legs.into_iter().map(EntryRequest::from).collect())?;
    Ok(Posting {
        transaction_type: TransactionType::Transfer,
        entries,
        payment_id: None,
        description: None,
        initiated_by: None,
        counts_toward_limits,
    })
}

/// `POST /internal/authorizations` (the payment service): authorizes and holds a payment's
/// posting now, under the payment's id, to be recorded when the payment asks for it
/// (`payment.processing`). Writes nothing here. The answer describes the accounts.
pub fn authorize_payment(ctx: &mut Context) -> Result<Response, ApiError> {
    let request: AuthorizationRequest = ctx.json()?;
    let transaction_id = fields::uuid("transaction_id", &request.transaction_id)?;
    let posting = payment_posting(request.legs, request.count_toward_limits)?;
    let authorized = authorize_and_hold(&posting, &transaction_id)?;
    let answer: Authorization = serde_json::from_value(authorized.answer).map_err(|err| {
        give_up_authorization(&authorized.request);
        ApiError::internal(&format!("account /internal/authorize answered outside its contract: {err}"))
    })?;
    Ok(Response::ok(&answer))
}

/// `POST /internal/authorizations/release` (the payment service): gives back what an
/// authorization of the same body took, for a payment whose writing failed after it was
/// authorized (see [`release`]).
pub fn release_payment(ctx: &mut Context) -> Result<Response, ApiError> {
    let request: AuthorizationRequest = ctx.json()?;
    Ok(Response::ok(&release(ctx.db()?, &request)?))
}

/// Handles `payment.releasing`: a payment cancelled (its status committed first) has what its
/// authorization took given back, as `POST /internal/authorizations/release` does. Asked
/// again, it gives back nothing more (both services give back what is still held, once). A
/// payment whose posting is recorded is never released: logged, and acknowledged.
pub fn release_cancelled(event: &Event) -> Result<(), String> {
    let request: AuthorizationRequest = serde_json::from_str(&event.data)
        .map_err(|err| refuse_payment(event, &format!("its payload is not an authorization: {err}")))?;
    let db = Db::open().map_err(describe)?;
    match release(&db, &request) {
        Ok(_) => Ok(()),
        Err(err) if err.status < 500 => {
            micropay_sdk::log_warn(&format!(
                "payment.releasing {} not released: {} {}",
                event.id, err.code, err.message
            ));
            Ok(())
        }
        Err(err) => Err(format!("payment.releasing {} not released yet: {}", event.id, err.message)),
    }
}

/// Gives back what the authorization `request` took: the accounts' records in flight and
/// limits counted, and the holds. 409 `posting_recorded` when the posting exists: its debits
/// are applied against those holds.
fn release(db: &Db, request: &AuthorizationRequest) -> Result<Released, ApiError> {
    let transaction_id = fields::uuid("transaction_id", &request.transaction_id)?;
    if sql::status_of(db, &transaction_id)?.is_some() {
        return Err(ApiError::conflict("posting_recorded", format!("the posting of {transaction_id} is recorded")));
    }
    let authorization = serde_json::to_value(request).expect("a contract serialises");
    services::call_json("account", "POST", "/internal/release-limits", Some(&authorization))?;
    services::call_typed(
        "balance",
        "POST",
        "/internal/holds/release",
        Some(&json!({ "transaction_id": transaction_id })),
    )
}

/// Handles a batch's `payment.processing`: records the authorized postings of payments and
/// refunds, under the payments' ids, with one statement. Asked again (a redelivery, or the
/// payment service's sweeper), a posting is found recorded and nothing is done. A payload that
/// cannot be read is logged and fails the batch, so that it is retried on its own and then set
/// aside in the dead letters for an operator: the payment's money is held until it is recorded.
pub fn record_payments(events: &[&Event]) -> Result<(), String> {
    let mut postings: Vec<(String, Posting, HashSet<String>)> = Vec::with_capacity(events.len());
    for event in events {
        let (payment_id, posting, system) = payment_posting_of(event).map_err(|err| refuse_payment(event, &err))?;
        // One posting per payment: a second request for it in the batch is the same posting.
        if !postings.iter().any(|(known, ..)| *known == payment_id) {
            postings.push((payment_id, posting, system));
        }
    }
    if postings.is_empty() {
        return Ok(());
    }
    let recordings: Vec<Recording> = postings
        .iter()
        .map(|(payment_id, posting, system)| Recording { posting, transaction_id: payment_id, system })
        .collect();
    let db = Db::open().map_err(describe)?;
    record_all(&db, &recordings).map_err(|err| {
        let message = format!("payment postings cannot be recorded: {}", err.message);
        micropay_sdk::log_warn(&message);
        message
    })?;
    Ok(())
}

/// A `payment.processing` event's posting: the payment's id (lower case), the posting, and the
/// system accounts among its legs.
fn payment_posting_of(event: &Event) -> Result<(String, Posting, HashSet<String>), String> {
    let request: PaymentPosting =
        serde_json::from_str(&event.data).map_err(|err| format!("its payload is not a payment posting: {err}"))?;
    let payment_id = fields::uuid("payment_id", &request.payment_id).map_err(|err| err.message)?;
    let system: HashSet<String> =
        request.legs.iter().filter(|leg| leg.system).map(|leg| leg.leg.account_id.to_ascii_lowercase()).collect();
    let legs = request.legs.into_iter().map(|leg| leg.leg).collect();
    let mut posting = payment_posting(legs, false).map_err(|err| err.message)?;
    posting.description =
        fields::text("description", request.description.as_deref(), domain::TEXT_MAX).map_err(|err| err.message)?;
    posting.initiated_by = request.initiated_by;
    Ok((payment_id, posting, system))
}

fn refuse_payment(event: &Event, reason: &str) -> String {
    let message = format!("payment.processing {} cannot be recorded: {reason}", event.id);
    micropay_sdk::log_warn(&message);
    message
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

/// Handles a batch of `balance.transaction_applied`: every entry of each transaction is in the
/// balances, so it is `SETTLED`, all with one statement. An event naming no pending
/// transaction changes nothing (one settled already is a repeat); one naming no transaction
/// at all is logged, since retrying would not make one appear.
pub fn settle(events: &[&Event]) -> Result<(), String> {
    let mut transaction_ids = Vec::with_capacity(events.len());
    for event in events {
        match domain::applied_transaction_id(&event.data) {
            Some(transaction_id) => transaction_ids.push(transaction_id),
            None => micropay_sdk::log_warn(&format!(
                "event {} ({}) names no transaction: {}",
                event.id, event.topic, event.data
            )),
        }
    }
    if transaction_ids.is_empty() {
        return Ok(());
    }
    let db = Db::open().map_err(describe)?;
    sql::settle(&db, &transaction_ids).map_err(describe)?;
    Ok(())
}

fn describe(err: DbError) -> String {
    format!("database error {}: {}", err.code, err.message)
}
