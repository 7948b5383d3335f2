//! The endpoints and the event handler: each reads its input, applies the rules of
//! [`crate::domain`], runs the statements of [`crate::sql`] and shapes the answer.

use std::collections::BTreeMap;
use std::str::FromStr;

use micropay_sdk::db::DbError;
use micropay_sdk::money::{self, Amount, Currency, Decimal};
use micropay_sdk::{ApiError, Context, Db, Principal, Response, Row, services};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::bindings::exports::micropay::platform::subscriber::Event;
use crate::domain::{
    self, AccountFacts, AccountType, AdminAction, LimitType, LimitUsage, Period, PostingFate, Status, StatusChange,
    TransferLimits,
};
use crate::sql::{self, NewAccount};

// ---- request bodies ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OpenAccount {
    account_type: Option<String>,
    currency: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeLimits {
    daily_transfer_limit: Option<String>,
    monthly_transfer_limit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemAccountsFor {
    currency: String,
}

/// The body of `/internal/authorize` and `/internal/release-limits`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Posting {
    /// The transaction the posting will be recorded as (its id is drawn before it is
    /// authorized): what the accounts' records in flight name.
    transaction_id: String,
    legs: Vec<PostingLeg>,
    /// Whether the debits count toward the accounts' limits; counted unless told otherwise, so
    /// that forgetting the flag never lets a posting past a limit.
    #[serde(default = "counted_unless_told_otherwise")]
    count_toward_limits: bool,
}

fn counted_unless_told_otherwise() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostingLeg {
    account_id: String,
    entry_type: String,
    amount: String,
    currency: String,
}

/// The part of a `balance.updated` payload this service keeps (the event carries more).
#[derive(Deserialize)]
struct BalanceUpdated {
    account_id: String,
    balance: String,
    sequence: i64,
    /// The postings applied; no longer in flight on the account.
    #[serde(default)]
    transaction_ids: Vec<String>,
    /// The one posting applied, in events published before the balance service applied
    /// postings in batches (still on the bus, or replayed from the dead letters).
    #[serde(default)]
    transaction_id: Option<String>,
}

// ---- answers ----

/// A decimal column with four places; `None` for NULL.
fn money_column(row: &Row, column: &str) -> Option<String> {
    row.opt_text(column).map(|text| money::format(money::decimal(&text)))
}

fn account_type_of(row: &Row) -> AccountType {
    AccountType::parse(&row.text("account_type")).expect("account_type is CHECKed")
}

fn status_of(row: &Row) -> Status {
    Status::parse(&row.text("status")).expect("status is CHECKed")
}

/// The limits mirrored on an account row; `None` for a system account, which has none.
fn stored_limits(row: &Row) -> Option<TransferLimits> {
    let amount = |column: &str| row.opt_text(column).map(|text| money::decimal(&text));
    Some(TransferLimits { daily: amount("daily_transfer_limit")?, monthly: amount("monthly_transfer_limit")? })
}

/// A limit row's amounts and period as stored.
fn limit_usage(row: &Row) -> LimitUsage {
    let time = |column: &str| row.opt_timestamp(column).expect("period bounds are NOT NULL");
    LimitUsage {
        limit_type: LimitType::parse(&row.text("limit_type")).expect("limit_type is CHECKed"),
        limit_amount: money::decimal(&row.text("limit_amount")),
        current_usage: money::decimal(&row.text("current_usage")),
        period: Period { start: time("period_start_at"), end: time("period_end_at") },
    }
}

/// A limit as it stands at `now`: a period that has ended shows as the current one, unused,
/// which is what the next posting will find.
fn limit_json(row: &Row, now: i64) -> Json {
    let usage = limit_usage(row).at(now);
    json!({
        "limit_type": usage.limit_type.as_str(),
        "period_type": usage.limit_type.period_type().as_str(),
        "limit_amount": money::format(usage.limit_amount),
        "current_usage": money::format(usage.current_usage),
        "period_start_at": micropay_sdk::time::rfc3339(usage.period.start),
        "period_end_at": micropay_sdk::time::rfc3339(usage.period.end),
    })
}

fn account_json(row: &Row, limits: &[Row], now: i64) -> Json {
    json!({
        "account_id": row.text("account_id"),
        "user_id": row.text("user_id"),
        "account_number": row.text("account_number"),
        "account_type": row.text("account_type"),
        "currency": row.text("currency"),
        "status": row.text("status"),
        "balance_snapshot": money_column(row, "balance_snapshot"),
        "balance_last_updated_at": row.opt_rfc3339("balance_last_updated_at"),
        "daily_transfer_limit": money_column(row, "daily_transfer_limit"),
        "monthly_transfer_limit": money_column(row, "monthly_transfer_limit"),
        "limits": limits.iter().map(|limit| limit_json(limit, now)).collect::<Vec<_>>(),
        "created_at": row.rfc3339("created_at"),
        "updated_at": row.rfc3339("updated_at"),
        "closed_at": row.opt_rfc3339("closed_at"),
    })
}

/// An account with its limit rows, read fresh.
fn account_with_limits(db: &Db, account: &Row, now: i64) -> Result<Json, ApiError> {
    let limits = sql::find_limits(db, &[account.text("account_id")])?;
    Ok(account_json(account, &limits, now))
}

/// Accounts with their limit rows, in the accounts' order.
fn accounts_with_limits(db: &Db, accounts: &[Row], now: i64) -> Result<Vec<Json>, ApiError> {
    let ids: Vec<String> = accounts.iter().map(|account| account.text("account_id")).collect();
    let mut limits_by_account: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for limit in sql::find_limits(db, &ids)? {
        limits_by_account.entry(limit.text("account_id")).or_default().push(limit);
    }
    Ok(accounts
        .iter()
        .zip(&ids)
        .map(|(account, id)| account_json(account, limits_by_account.get(id).map_or(&[], Vec::as_slice), now))
        .collect())
}

// ---- shared steps ----

/// The account at the path's `{account_id}`, if `principal` may manage it (its owner or an
/// administrator); otherwise 404, the same as a missing or malformed id. `lock` holds its row
/// until the unit of work ends.
fn managed_account(db: &Db, principal: &Principal, account_id: &str, lock: bool) -> Result<Row, ApiError> {
    if !micropay_sdk::is_uuid(account_id) {
        return Err(domain::account_not_found());
    }
    let account = if lock { sql::lock_account(db, account_id)? } else { sql::find_account(db, account_id)? };
    account.filter(|account| principal.may_act_for(&account.text("user_id"))).ok_or_else(domain::account_not_found)
}

/// Refuses an administrator whose admin key's role may not take `action` (see
/// [`AdminAction`]); a user passes, as the account's owner the handler then checks.
fn check_administrator(ctx: &Context, principal: &Principal, action: AdminAction) -> Result<(), ApiError> {
    match principal {
        Principal::Admin => action.check(ctx.administrator()?),
        Principal::User(_) => Ok(()),
    }
}

/// A uniformly random 64-bit value from the host's secure generator.
fn random_u64() -> u64 {
    let bytes = micropay_sdk::random_bytes(8);
    u64::from_le_bytes(bytes.try_into().expect("the host returns the length asked for"))
}

/// 500 when several account numbers in a row were all taken: not chance, something is wrong.
fn no_free_number() -> ApiError {
    ApiError::internal("every account number drawn was taken")
}

/// Announces a new account.
fn publish_opened(account: &Row) -> Result<(), ApiError> {
    let account_id = account.text("account_id");
    let data = json!({
        "account_id": account_id,
        "user_id": account.text("user_id"),
        "account_number": account.text("account_number"),
        "account_type": account.text("account_type"),
        "currency": account.text("currency"),
    });
    micropay_sdk::events::publish("account.opened", &account_id, &data)?;
    Ok(())
}

/// The currency's system account of `account_type`, opened now if it does not exist yet; the
/// flag says whether it was. Two requests opening it at once are kept to one account by the
/// unique index on system accounts: the later insert does nothing and the account is read back.
fn ensure_system_account(db: &Db, currency: &Currency, account_type: AccountType) -> Result<(Row, bool), ApiError> {
    for _ in 0..domain::ACCOUNT_NUMBER_ATTEMPTS {
        if let Some(account) = sql::find_system_account(db, currency.code(), account_type)? {
            return Ok((account, false));
        }
        let account_number = domain::random_account_number(random_u64);
        let new = NewAccount {
            user_id: domain::SYSTEM_USER_ID,
            account_number: &account_number,
            account_type,
            currency: currency.code(),
            limits: None,
        };
        if let Some(account) = sql::insert_account(db, &new)? {
            publish_opened(&account)?;
            return Ok((account, true));
        }
    }
    Err(no_free_number())
}

/// Refuses (409 `balance_not_zero`) to close an account that still holds money or has money
/// held, as the balance service knows it at this moment.
fn ensure_balance_is_zero(account_id: &str) -> Result<(), ApiError> {
    let path = format!("/internal/accounts/{account_id}/position");
    let position = micropay_sdk::services::call_json("balance", "GET", &path, None)?;
    let amount = |field: &str| {
        position[field].as_str().and_then(|text| Decimal::from_str(text).ok()).ok_or_else(|| {
            ApiError::internal(&format!("balance {path} answered without a decimal {field}: {position}"))
        })
    };
    let (balance, reserved) = (amount("balance")?, amount("reserved")?);
    if !balance.is_zero() || !reserved.is_zero() {
        return Err(ApiError::conflict(
            "balance_not_zero",
            format!(
                "the account holds {} with {} reserved: only an empty account can close",
                money::format(balance),
                money::format(reserved)
            ),
        ));
    }
    Ok(())
}

/// An amount field of a request, when given (422 when it breaks a rule).
fn optional_amount(field: &str, text: Option<&str>) -> Result<Option<Amount>, ApiError> {
    text.map(|text| Amount::parse(text).map_err(|reason| money::invalid(field, reason))).transpose()
}

/// A request's transaction id, lower case as PostgreSQL prints it (422 when malformed).
fn posting_transaction_id(posting: &Posting) -> Result<String, ApiError> {
    if !micropay_sdk::is_uuid(&posting.transaction_id) {
        return Err(ApiError::validation("transaction_id: must be a UUID"));
    }
    Ok(posting.transaction_id.to_ascii_lowercase())
}

/// A request's legs, checked (422 `validation_failed` for the first bad field).
fn posting_legs(posting: &Posting) -> Result<Vec<domain::Leg>, ApiError> {
    if posting.legs.is_empty() {
        return Err(ApiError::validation("legs: at least one leg is required"));
    }
    posting
        .legs
        .iter()
        .enumerate()
        .map(|(index, leg)| domain::leg(index, &leg.account_id, &leg.entry_type, &leg.amount, &leg.currency))
        .collect()
}

// ---- accounts ----

/// `POST /accounts`: opens an account for the calling user, with the type's default limits
/// over the current UTC day and month.
pub fn open_account(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    // An empty body asks for the defaults.
    let body: OpenAccount = if ctx.body().is_empty() { OpenAccount::default() } else { ctx.json()? };
    let account_type = AccountType::for_user(body.account_type.as_deref())?;
    let currency = domain::currency(body.currency.as_deref())?;
    let limits = account_type.default_limits().expect("user account types have limits");
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;

    let mut opened = None;
    for _ in 0..domain::ACCOUNT_NUMBER_ATTEMPTS {
        let account_number = domain::random_account_number(random_u64);
        let new = NewAccount {
            user_id: &caller.user_id,
            account_number: &account_number,
            account_type,
            currency: currency.code(),
            limits: Some(limits),
        };
        opened = sql::insert_account(db, &new)?;
        if opened.is_some() {
            break;
        }
    }
    let account = opened.ok_or_else(no_free_number)?;
    let limit_rows = sql::insert_limits(db, &account.text("account_id"), limits, now)?;
    publish_opened(&account)?;
    Ok(Response::created(&account_json(&account, &limit_rows, now)))
}

/// `GET /accounts`: a user's own accounts; for an administrator every account, system ones
/// included, or one user's with `?user_id=`. Newest first.
pub fn list_accounts(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    let owner = match principal {
        Principal::User(user_id) => Some(user_id),
        Principal::Admin => match ctx.query("user_id") {
            Some(user_id) if !micropay_sdk::is_uuid(&user_id) => {
                return Err(ApiError::validation(format!("user_id: {user_id:?} is not a UUID")));
            }
            user_id => user_id,
        },
    };
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;

    let accounts = sql::list_accounts(db, owner.as_deref())?;
    Ok(Response::ok(&json!({ "accounts": accounts_with_limits(db, &accounts, now)? })))
}

/// `GET /accounts/{account_id}`: the account with its limits, for its owner or an administrator.
pub fn get_account(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    let account_id = ctx.param("account_id").to_string();
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;

    let account = managed_account(db, &principal, &account_id, false)?;
    Ok(Response::ok(&account_with_limits(db, &account, now)?))
}

/// `GET /accounts/lookup?number=`: the account a number names, to pay into. The check digits
/// are verified first (422 `invalid_account_number`), so a typo is reported as one rather than
/// as an unknown account. A user never finds a system account.
pub fn lookup_account(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    let number = domain::normalize_account_number(&ctx.query("number").unwrap_or_default());
    if !domain::is_valid_account_number(&number) {
        return Err(ApiError::new(
            422,
            "invalid_account_number",
            "number must be an account number (MP, two check digits, twelve digits) with valid check digits",
        ));
    }
    let db = ctx.db()?;

    let account = sql::find_account_by_number(db, &number)?
        .filter(|account| principal == Principal::Admin || !account_type_of(account).is_system())
        .ok_or_else(domain::account_not_found)?;
    Ok(Response::ok(&json!({
        "account_id": account.text("account_id"),
        "account_number": account.text("account_number"),
        "currency": account.text("currency"),
        "status": account.text("status"),
    })))
}

/// `PUT /accounts/{account_id}/limits`: changes the daily and/or monthly transfer limit. An
/// owner may set them up to the type's defaults, an administrator to any amount.
pub fn change_limits(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    check_administrator(ctx, &principal, AdminAction::ChangeLimits)?;
    let body: ChangeLimits = ctx.json()?;
    let daily = optional_amount("daily_transfer_limit", body.daily_transfer_limit.as_deref())?;
    let monthly = optional_amount("monthly_transfer_limit", body.monthly_transfer_limit.as_deref())?;
    let account_id = ctx.param("account_id").to_string();
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;

    let account = managed_account(db, &principal, &account_id, true)?;
    if status_of(&account) == Status::Closed {
        return Err(ApiError::conflict("invalid_status", "a CLOSED account's limits cannot change"));
    }
    let current = stored_limits(&account).ok_or_else(|| domain::system_account_refused("given limits"))?;
    let limits =
        domain::changed_limits(account_type_of(&account), current, daily, monthly, principal == Principal::Admin)?;

    sql::lock_limits(db, std::slice::from_ref(&account_id))?;
    let account = sql::set_limits(db, &account_id, limits)?;
    let data = json!({
        "account_id": account_id,
        "daily_transfer_limit": money::format(limits.daily),
        "monthly_transfer_limit": money::format(limits.monthly),
    });
    micropay_sdk::events::publish("account.limits_changed", &account_id, &data)?;
    Ok(Response::ok(&account_with_limits(db, &account, now)?))
}

/// Moves the account at the path to the status `change` leads to, for its owner or an
/// administrator whose role may (the route decides who), and announces it.
///
/// The account's row is locked `FOR UPDATE` first, which an authorization's `FOR KEY SHARE`
/// conflicts with ([`sql::authorize_accounts`]): an authorization of the account either
/// committed before (and its posting is in flight) or waits for this change and finds the
/// account no longer `ACTIVE`. So once a freeze or a close has answered, no posting authorized
/// after it touches the account.
///
/// **Invariant: a CLOSED account holds no money**, and never comes to. A close is refused
/// (409 `postings_in_flight`) while a posting authorized against the account has not been
/// applied to its balance nor given up, then (409 `balance_not_zero`) unless the balance
/// service says its balance and holds are zero. The records in flight are read after the lock,
/// and a record goes only once its posting's balance events have committed, was given up, or
/// never committed ([`maintain`]): with none left, everything authorized before the lock is in
/// the balance the balance service answers, and nothing can be authorized after it.
fn change_status(ctx: &mut Context, change: StatusChange, action: AdminAction) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    check_administrator(ctx, &principal, action)?;
    let account_id = ctx.param("account_id").to_string();
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;

    let account = managed_account(db, &principal, &account_id, true)?;
    if account_type_of(&account).is_system() {
        return Err(domain::system_account_refused(change.past_tense()));
    }
    let status = change.apply(status_of(&account))?;
    if change == StatusChange::Close {
        // The row stays locked meanwhile, so no other status change or authorization slips in.
        let in_flight = sql::postings_in_flight(db, &account_id, domain::IN_FLIGHT_NAMED)?;
        domain::check_nothing_in_flight(&account_id, &in_flight)?;
        ensure_balance_is_zero(&account_id)?;
    }
    let account = sql::set_status(db, &account_id, status)?;
    let data = json!({ "account_id": account_id, "user_id": account.text("user_id") });
    micropay_sdk::events::publish(change.topic(), &account_id, &data)?;
    Ok(Response::ok(&account_with_limits(db, &account, now)?))
}

/// `POST /accounts/{account_id}/freeze`: stops every posting to or from the account.
pub fn freeze_account(ctx: &mut Context) -> Result<Response, ApiError> {
    change_status(ctx, StatusChange::Freeze, AdminAction::Freeze)
}

/// `POST /accounts/{account_id}/unfreeze`: lets postings through again (administrators only).
pub fn unfreeze_account(ctx: &mut Context) -> Result<Response, ApiError> {
    change_status(ctx, StatusChange::Unfreeze, AdminAction::Unfreeze)
}

/// `POST /accounts/{account_id}/close`: closes an empty account for good.
pub fn close_account(ctx: &mut Context) -> Result<Response, ApiError> {
    change_status(ctx, StatusChange::Close, AdminAction::Close)
}

// ---- system accounts ----

/// `POST /system-accounts`: opens the FUNDING and FEES accounts of a currency, or answers the
/// existing ones (201 when either was opened now, 200 otherwise). Platform administrators only.
pub fn create_system_accounts(ctx: &mut Context) -> Result<Response, ApiError> {
    AdminAction::OpenSystemAccounts.check(ctx.administrator()?)?;
    let body: SystemAccountsFor = ctx.json()?;
    let currency = Currency::parse(&body.currency).map_err(|reason| money::invalid("currency", reason))?;
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;

    let (funding, funding_opened) = ensure_system_account(db, &currency, AccountType::Funding)?;
    let (fees, fees_opened) = ensure_system_account(db, &currency, AccountType::Fees)?;
    let status = if funding_opened || fees_opened { 201 } else { 200 };
    Ok(Response::json(
        status,
        &json!({ "funding": account_json(&funding, &[], now), "fees": account_json(&fees, &[], now) }),
    ))
}

/// `GET /system-accounts`: every system account, by currency then type.
pub fn list_system_accounts(ctx: &mut Context) -> Result<Response, ApiError> {
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;

    let accounts: Vec<Json> =
        sql::list_system_accounts(db)?.iter().map(|account| account_json(account, &[], now)).collect();
    Ok(Response::ok(&json!({ "accounts": accounts })))
}

// ---- internal: the transaction service ----

/// `POST /internal/authorize`: checks that the principal may post these legs (every account
/// visible to them, in the legs' currency, `ACTIVE`) and, with `count_toward_limits`, counts
/// each debited user account's total against both of its limits. Answers each account's owner
/// and whether it is a system account.
///
/// The user accounts are locked (`FOR KEY SHARE`, see [`change_status`]) and the posting is
/// recorded in flight on each of them, in the same statement that reads them: the accounts,
/// then their limit rows, each in `account_id` order.
pub fn authorize(ctx: &mut Context) -> Result<Response, ApiError> {
    let principal = Principal::current()?;
    let posting: Posting = ctx.json()?;
    let transaction_id = posting_transaction_id(&posting)?;
    let legs = posting_legs(&posting)?;
    let totals = domain::totals_by_account(&legs);
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;

    let ids: Vec<String> = totals.keys().cloned().collect();
    let accounts: BTreeMap<String, Row> = sql::authorize_accounts(db, &ids, &transaction_id)?
        .into_iter()
        .map(|account| (account.text("account_id"), account))
        .collect();
    let mut answer = Vec::with_capacity(totals.len());
    // The debited user accounts whose limits count this posting: id -> (currency, total).
    let mut counted: BTreeMap<&str, (String, Decimal)> = BTreeMap::new();
    for (account_id, account_totals) in &totals {
        let account = accounts.get(account_id).ok_or_else(|| domain::named_account_not_found(account_id))?;
        let facts = AccountFacts {
            account_id: account_id.clone(),
            user_id: account.text("user_id"),
            system: account_type_of(account).is_system(),
            currency: account.text("currency"),
            status: status_of(account),
        };
        domain::authorize_account(&principal, &facts, account_totals)?;
        if posting.count_toward_limits && !facts.system && account_totals.is_debited() {
            counted.insert(account_id, (facts.currency.clone(), account_totals.debited));
        }
        answer.push(json!({
            "account_id": facts.account_id,
            "user_id": facts.user_id,
            "currency": facts.currency,
            "system": facts.system,
        }));
    }

    if !counted.is_empty() {
        let counted_ids: Vec<String> = counted.keys().map(|id| id.to_string()).collect();
        let limits = sql::lock_limits(db, &counted_ids)?;
        if limits.len() != LimitType::ALL.len() * counted.len() {
            return Err(ApiError::internal(&format!("limit rows missing among accounts {counted_ids:?}")));
        }
        let mut usages = Vec::with_capacity(limits.len());
        for limit in &limits {
            let account_id = limit.text("account_id");
            let (currency, debited) = &counted[account_id.as_str()];
            let usage = limit_usage(limit).charge(*debited, now, &account_id, currency)?;
            usages.push((limit.text("limit_id"), usage));
        }
        sql::set_usages(db, &usages)?;
    }
    Ok(Response::ok(&json!({ "accounts": answer })))
}

/// `POST /internal/release-limits`: gives up what an authorize of the same posting took, when
/// the posting failed after it: its records in flight on the accounts, and the usage counted
/// (with `count_toward_limits`). Only periods still running are changed (an ended one no longer
/// counts), and never below zero. Answers what was given back per account.
pub fn release_limits(ctx: &mut Context) -> Result<Response, ApiError> {
    let posting: Posting = ctx.json()?;
    let transaction_id = posting_transaction_id(&posting)?;
    let legs = posting_legs(&posting)?;
    let totals = domain::totals_by_account(&legs);
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;

    let named: Vec<String> = totals.keys().cloned().collect();
    let given_up = sql::give_up_in_flight(db, &named, &transaction_id)?;
    // Given up already (asked twice, or the sweep cleared it): its usage was given back then.
    if !posting.count_toward_limits || given_up == 0 {
        return Ok(Response::ok(&json!({ "released": [] })));
    }
    let debited: BTreeMap<String, Decimal> = totals
        .into_iter()
        .filter(|(_, totals)| totals.is_debited())
        .map(|(account_id, totals)| (account_id, totals.debited))
        .collect();
    let ids: Vec<String> = debited.keys().cloned().collect();
    // System accounts have no limit rows: only user accounts come back.
    let mut released: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut usages = Vec::new();
    for limit in sql::lock_limits(db, &ids)? {
        let account_id = limit.text("account_id");
        let amount = debited[&account_id];
        if let Some(usage) = limit_usage(&limit).release(amount, now) {
            usages.push((limit.text("limit_id"), usage));
        }
        released.insert(account_id, amount);
    }
    sql::set_usages(db, &usages)?;
    let released: Vec<Json> = released
        .into_iter()
        .map(|(account_id, amount)| json!({ "account_id": account_id, "amount": money::format(amount) }))
        .collect();
    Ok(Response::ok(&json!({ "released": released })))
}

/// `POST /internal/system-account`: the currency's FUNDING account, opened (with its FEES
/// account, so a currency's system accounts come as a pair) on first use. Only an
/// administrator's request may name a system account: for anyone else it is 404.
pub fn system_account(ctx: &mut Context) -> Result<Response, ApiError> {
    if Principal::current()? != Principal::Admin {
        return Err(domain::account_not_found());
    }
    let body: SystemAccountsFor = ctx.json()?;
    let currency = Currency::parse(&body.currency).map_err(|reason| money::invalid("currency", reason))?;
    let db = ctx.db()?;

    let (funding, _) = ensure_system_account(db, &currency, AccountType::Funding)?;
    ensure_system_account(db, &currency, AccountType::Fees)?;
    Ok(Response::ok(&json!({ "account_id": funding.text("account_id"), "currency": funding.text("currency") })))
}

// ---- maintenance ----

/// `POST /maintenance` (every minute, on every host, as the platform administrator): resolves
/// the records in flight older than [`domain::IN_FLIGHT_RESOLVE_AFTER_SECONDS`], asking the
/// transaction service about each posting: one that never committed (the transaction service
/// failed between the authorization and its commit) or is settled (every entry applied, its
/// `balance.updated` lost to this service) leaves no record; one still `PENDING` keeps them.
/// Safe to run any number of times and on several hosts at once. The transaction service is
/// asked while this unit of work holds no lock.
pub fn maintain(ctx: &mut Context) -> Result<Response, ApiError> {
    let db = ctx.db()?;

    let bound = domain::IN_FLIGHT_RESOLVE_AFTER_SECONDS;
    let stale = sql::stale_postings_in_flight(db, bound, domain::IN_FLIGHT_SWEEP_BATCH)?;
    let resolved: Vec<String> =
        stale.into_iter().filter(|id| posting_fate(id).is_some_and(PostingFate::is_resolved)).collect();
    let cleared = sql::clear_postings_in_flight(db, &resolved, bound)?;
    if cleared > 0 {
        micropay_sdk::log_info(&format!(
            "cleared {cleared} records in flight of {} postings that never committed or are settled",
            resolved.len()
        ));
    }
    Ok(Response::ok(&json!({ "postings_resolved": resolved.len(), "records_cleared": cleared })))
}

/// What the transaction service says became of a posting; `None` when it cannot say now.
fn posting_fate(transaction_id: &str) -> Option<PostingFate> {
    let path = format!("/internal/transactions/{transaction_id}");
    match services::call_json("transaction", "GET", &path, None) {
        Ok(answer) => PostingFate::of(&answer),
        Err(err) => {
            micropay_sdk::log_warn(&format!("transaction {transaction_id} not checked: {} {}", err.code, err.message));
            None
        }
    }
}

// ---- events ----

/// Handles a batch of `balance.updated` with one statement: each account's balance snapshot
/// moves to the newest sequence the batch reports for it, when newer than the stored one
/// (events may arrive out of order after a retry), and the records in flight of the
/// transactions applied to it go, whatever the sequence. The rows are locked in `account_id`
/// order. An unknown account, an older sequence, or a payload that cannot be read (which a
/// retry would not mend, logged) changes nothing.
pub fn handle_events(events: &[Event]) -> Result<(), String> {
    let mut updates = Vec::with_capacity(events.len());
    for event in events {
        if event.topic != "balance.updated" {
            micropay_sdk::log_warn(&format!("event {} on {} is not one this service handles", event.id, event.topic));
            continue;
        }
        let update = serde_json::from_str::<BalanceUpdated>(&event.data)
            .ok()
            .filter(|update| micropay_sdk::is_uuid(&update.account_id))
            .and_then(|update| Decimal::from_str(&update.balance).ok().map(|balance| (update, balance)));
        let Some((update, balance)) = update else {
            micropay_sdk::log_warn(&format!("balance.updated {} has a payload this service cannot read", event.id));
            continue;
        };
        let applied = update
            .transaction_ids
            .into_iter()
            .chain(update.transaction_id)
            .filter(|id| micropay_sdk::is_uuid(id))
            .collect();
        updates.push(sql::BalanceUpdate { account_id: update.account_id, balance, sequence: update.sequence, applied });
    }
    if updates.is_empty() {
        return Ok(());
    }
    let db = Db::open().map_err(describe)?;
    sql::record_balances(&db, &updates).map_err(describe)?;
    Ok(())
}

fn describe(err: DbError) -> String {
    format!("database error {}: {}", err.code, err.message)
}
