//! The balance service's rules, free of I/O so that they are tested natively: valid ids, TTLs
//! and history pages, who may see an account's money, how much of it is available, when a
//! reservation may be captured or released, and how a posted transaction becomes one balance
//! event per entry.

use micropay_sdk::is_uuid;
use std::collections::{BTreeMap, BTreeSet};

use chrono::DateTime;
use micropay_sdk::money::{Amount, Currency, Decimal};
use micropay_sdk::{AdminRole, ApiError};
use serde::Deserialize;
use serde_json::Value as Json;

/// An account is snapshotted when this many events were appended since its last snapshot.
pub const SNAPSHOT_EVERY: i64 = 100;

/// The sweeper snapshots an account whose last snapshot is older than this (or missing) and
/// that has events after it.
pub const SNAPSHOT_MAX_AGE_SECONDS: i64 = 300;

/// A captured hold whose posting the transaction service does not know is released only once
/// it is this old: far beyond the transaction service's deadline, so a posting that has not
/// committed by then never will.
pub const HOLD_RELEASE_AFTER_SECONDS: i64 = 120;

/// How long a reservation lasts when the request names no TTL.
pub const DEFAULT_TTL_SECONDS: i64 = 900;

/// The longest a reservation may last: a day.
pub const MAX_TTL_SECONDS: i64 = 86_400;

/// The most holds one posting may place (a posting has at most 100 entries).
pub const MAX_HOLDS: usize = 100;

/// The most reservations one sweep expires: a backlog is worked off over several runs, each
/// within the deadline.
pub const EXPIRE_BATCH: i64 = 1000;

/// The most postings one sweep asks the transaction service about (one call each).
pub const STALE_POSTINGS_BATCH: i64 = 50;

/// The most accounts one sweep snapshots.
pub const SNAPSHOT_BATCH: i64 = 500;

/// The most problems of one kind the ledger check lists: past that, the ledger needs an
/// operator, not a longer list.
pub const PROBLEMS_PER_KIND: i64 = 1000;

/// Page size of the history when the request names none, and its maximum.
const HISTORY_DEFAULT_LIMIT: i64 = 50;
const HISTORY_MAX_LIMIT: i64 = 200;

// ---- ids and request fields ----

/// An id from a path, in lower case as the database writes it; `None` when it is not a UUID
/// (the resource cannot exist: 404).
pub fn path_id(text: &str) -> Option<String> {
    is_uuid(text).then(|| text.to_ascii_lowercase())
}

/// A reservation's lifetime in seconds: the default when none is asked, else 1 ..= one day.
pub fn ttl_seconds(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_TTL_SECONDS),
        Some(ttl) if (1..=MAX_TTL_SECONDS).contains(&ttl) => Ok(ttl),
        Some(_) => Err(ApiError::validation(format!("ttl_seconds must be from 1 to {MAX_TTL_SECONDS}"))),
    }
}

/// An RFC 3339 timestamp of a request body, in microseconds since the epoch; 422 otherwise.
pub fn body_timestamp(field: &str, text: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_micros())
        .map_err(|_| ApiError::validation(format!("{field} must be an RFC 3339 timestamp")))
}

/// One page of an account's history: at most `limit` events, all with a sequence below
/// `before` when given (the `next_before` of the previous page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPage {
    pub limit: i64,
    pub before: Option<i64>,
}

/// Reads the history's query parameters; anything malformed is a 400 naming the parameter.
pub fn history_page(limit: Option<&str>, before: Option<&str>) -> Result<HistoryPage, ApiError> {
    let limit = match limit.filter(|text| !text.is_empty()) {
        None => HISTORY_DEFAULT_LIMIT,
        Some(text) => {
            text.parse::<i64>().ok().filter(|limit| (1..=HISTORY_MAX_LIMIT).contains(limit)).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be a whole number from 1 to {HISTORY_MAX_LIMIT}"),
                )
            })?
        }
    };
    let before = match before.filter(|text| !text.is_empty()) {
        None => None,
        Some(text) => Some(text.parse::<i64>().ok().filter(|before| *before >= 1).ok_or_else(|| {
            ApiError::bad_request("invalid_before", "before must be an event sequence, as in next_before")
        })?),
    };
    Ok(HistoryPage { limit, before })
}

// ---- who may see what ----

/// An account as the account service shows it: the owner and the rules of its money. Nothing
/// of it is stored here; it is asked for on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user_id: String,
    pub currency: String,
    pub status: String,
}

impl Account {
    /// Reads the account service's account JSON (it carries more fields; these are the ones
    /// this service needs).
    pub fn from_json(json: &Json) -> Result<Account, String> {
        let field = |name: &str| {
            json.get(name)
                .and_then(Json::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("the account has no {name}"))
        };
        Ok(Account { user_id: field("user_id")?, currency: field("currency")?, status: field("status")? })
    }

    /// Whether `user_id` may reserve `currency` on this account: only its owner (404 otherwise,
    /// as for a missing account), only while it is `ACTIVE`, only in its currency.
    pub fn check_reservable(&self, user_id: &str, currency: &Currency) -> Result<(), ApiError> {
        if !self.user_id.eq_ignore_ascii_case(user_id) {
            return Err(account_not_found());
        }
        if self.status != "ACTIVE" {
            return Err(ApiError::conflict("account_not_active", format!("the account is {}", self.status)));
        }
        if self.currency != currency.code() {
            return Err(currency_mismatch(&self.currency, currency.code()));
        }
        Ok(())
    }
}

/// 404 for an account that does not exist or that the caller may not see.
pub fn account_not_found() -> ApiError {
    ApiError::new(404, "account_not_found", "no such account")
}

/// 404 for a reservation that does not exist or that the caller may not see.
pub fn reservation_not_found() -> ApiError {
    ApiError::new(404, "reservation_not_found", "no such reservation")
}

/// Whether an administrator may release a user's reservation: it hands held funds back to be
/// spent, undoing what a payment counted on, so it is the treasury's call: the platform's admin
/// key only (403 `platform_only`). The owner releases their own without asking.
pub fn check_release_by_administrator(role: AdminRole) -> Result<(), ApiError> {
    micropay_sdk::principal::require_admin_role(
        role,
        &[AdminRole::Platform],
        "releasing a user's reservation as an administrator",
    )
}

/// 422: money of one currency named against an account (or reservation) of another.
pub fn currency_mismatch(held_in: &str, asked: &str) -> ApiError {
    ApiError::new(422, "currency_mismatch", format!("the account is in {held_in}, not {asked}"))
}

// ---- funds ----

/// An account's money at one moment: its balance and the part of it reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Funds {
    pub balance: Decimal,
    pub reserved: Decimal,
}

impl Funds {
    /// The balance less what is reserved: what a new reservation or hold may take.
    pub fn available(&self) -> Decimal {
        self.balance - self.reserved
    }

    /// Sets `amount` aside for a new reservation or hold, or refuses (422 `insufficient_funds`)
    /// when it exceeds the available balance. Called only with the account's row locked, so
    /// no other reservation can take the same money between the check and the insert.
    pub fn reserve(&mut self, amount: Amount) -> Result<(), ApiError> {
        if amount.value() > self.available() {
            return Err(ApiError::new(
                422,
                "insufficient_funds",
                format!("{amount} exceeds the available balance of {}", micropay_sdk::money::format(self.available())),
            ));
        }
        self.reserved += amount.value();
        Ok(())
    }
}

// ---- reservations ----

/// A reservation's stored status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Captured,
    Released,
    Expired,
}

impl Status {
    /// The status stored in `balance_reservations.status` (the table's CHECK allows no other);
    /// anything else is a mismatch between the schema and this code.
    pub fn from_db(text: &str) -> Status {
        match text {
            "ACTIVE" => Status::Active,
            "CAPTURED" => Status::Captured,
            "RELEASED" => Status::Released,
            "EXPIRED" => Status::Expired,
            other => panic!("unknown reservation status {other:?}"),
        }
    }

    /// The value stored in `balance_reservations.status`, and shown in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "ACTIVE",
            Status::Captured => "CAPTURED",
            Status::Released => "RELEASED",
            Status::Expired => "EXPIRED",
        }
    }

    /// The status a client sees: an `ACTIVE` reservation past its expiry (`lapsed`) no longer
    /// counts and is `EXPIRED`, whether or not the sweeper has recorded it yet.
    pub fn shown(self, lapsed: bool) -> Status {
        if self == Status::Active && lapsed { Status::Expired } else { self }
    }
}

/// What the rules need of a stored reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub account_id: String,
    pub currency: String,
    pub amount: Decimal,
    pub status: Status,
    /// Whether it is `ACTIVE` and past its `expires_at`, judged by the database's clock.
    pub lapsed: bool,
}

impl Reservation {
    /// Whether a posting's hold of `amount` on `account_id` may capture this reservation: it
    /// must be that account's (404 otherwise, as for a missing one), in the hold's currency,
    /// `ACTIVE` and unexpired, and hold at least the amount.
    pub fn check_capture(&self, account_id: &str, currency: &Currency, amount: Amount) -> Result<(), ApiError> {
        if self.account_id != account_id {
            return Err(reservation_not_found());
        }
        if self.currency != currency.code() {
            return Err(currency_mismatch(&self.currency, currency.code()));
        }
        self.check_active()?;
        if amount.value() > self.amount {
            return Err(ApiError::new(
                422,
                "exceeds_reservation",
                format!("{amount} exceeds the reservation's {}", micropay_sdk::money::format(self.amount)),
            ));
        }
        Ok(())
    }

    /// Whether the reservation may still be captured or released: `ACTIVE` and unexpired.
    pub fn check_active(&self) -> Result<(), ApiError> {
        match self.status.shown(self.lapsed) {
            Status::Active => Ok(()),
            Status::Expired => Err(ApiError::conflict("reservation_expired", "the reservation has expired")),
            other => {
                Err(ApiError::conflict("reservation_not_active", format!("the reservation is {}", other.as_str())))
            }
        }
    }
}

/// One hold of `POST /internal/holds`, its ids checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub account_id: String,
    pub amount: Amount,
    pub currency: Currency,
    pub reservation_id: Option<String>,
}

/// The accounts a set of holds touches, each with its currency code, in `account_id` order
/// (the order they are locked in). 422 when there are too many holds or one account is named in
/// two currencies.
pub fn hold_accounts(holds: &[Hold]) -> Result<BTreeMap<String, String>, ApiError> {
    if holds.len() > MAX_HOLDS {
        return Err(ApiError::validation(format!("at most {MAX_HOLDS} holds")));
    }
    let mut accounts: BTreeMap<String, String> = BTreeMap::new();
    for hold in holds {
        let currency = accounts.entry(hold.account_id.clone()).or_insert_with(|| hold.currency.code().to_string());
        if currency != hold.currency.code() {
            return Err(currency_mismatch(currency, hold.currency.code()));
        }
    }
    Ok(accounts)
}

// ---- postings ----

/// A ledger entry's direction: a CREDIT adds to the balance, a DEBIT takes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EntryType {
    Debit,
    Credit,
}

impl EntryType {
    /// The value stored in `balance_events.event_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::Debit => "DEBIT",
            EntryType::Credit => "CREDIT",
        }
    }

    /// How much an entry of `amount` moves the balance.
    pub fn signed(self, amount: Decimal) -> Decimal {
        match self {
            EntryType::Debit => -amount,
            EntryType::Credit => amount,
        }
    }
}

/// The data of a `transaction.posted` event. Fields this service does not use are ignored, so
/// the transaction service may add some without breaking delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct Posting {
    pub transaction_id: String,
    #[serde(default)]
    pub payment_id: Option<String>,
    pub created_at: String,
    pub entries: Vec<PostedEntry>,
    /// `created_at` in microseconds since the epoch, filled in by [`posting`].
    #[serde(skip)]
    pub posted_at: i64,
}

/// One entry of a posted transaction.
#[derive(Debug, Clone, Deserialize)]
pub struct PostedEntry {
    pub entry_id: String,
    pub account_id: String,
    pub entry_type: EntryType,
    pub amount: Amount,
    pub currency: Currency,
    /// A platform account (FUNDING, FEES), whose balance may go negative.
    #[serde(default)]
    pub system: bool,
}

/// An account as a posting names it: its currency and whether it is a platform account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedAccount {
    pub currency: String,
    pub system: bool,
}

/// Reads a `transaction.posted` event's data: ids are UUIDs (kept in lower case), there is
/// at least one entry and no entry twice, `created_at` is RFC 3339, and each account has one
/// currency in it.
/// An error means the event breaks the contract; retrying cannot fix it.
pub fn posting(data: &str) -> Result<Posting, String> {
    let mut posting: Posting =
        serde_json::from_str(data).map_err(|err| format!("malformed transaction.posted: {err}"))?;
    let id = |field: &str, text: &str| path_id(text).ok_or_else(|| format!("{field} {text:?} is not a UUID"));
    posting.transaction_id = id("transaction_id", &posting.transaction_id)?;
    posting.payment_id = posting.payment_id.as_deref().map(|text| id("payment_id", text)).transpose()?;
    posting.posted_at = DateTime::parse_from_rfc3339(&posting.created_at)
        .map(|time| time.timestamp_micros())
        .map_err(|_| format!("created_at {:?} is not an RFC 3339 timestamp", posting.created_at))?;
    if posting.entries.is_empty() {
        return Err("the transaction has no entries".into());
    }
    let mut entry_ids = BTreeSet::new();
    for entry in &mut posting.entries {
        entry.entry_id = id("entry_id", &entry.entry_id)?;
        entry.account_id = id("account_id", &entry.account_id)?;
        if !entry_ids.insert(entry.entry_id.clone()) {
            return Err(format!("entry {} appears twice", entry.entry_id));
        }
    }
    posting.accounts()?;
    Ok(posting)
}

impl Posting {
    /// The accounts the posting touches, in `account_id` order (the order they are locked in).
    /// An account named as a platform account by any entry is one.
    pub fn accounts(&self) -> Result<BTreeMap<String, PostedAccount>, String> {
        let mut accounts: BTreeMap<String, PostedAccount> = BTreeMap::new();
        for entry in &self.entries {
            let account = accounts
                .entry(entry.account_id.clone())
                .or_insert_with(|| PostedAccount { currency: entry.currency.code().to_string(), system: false });
            if account.currency != entry.currency.code() {
                return Err(format!(
                    "account {} has entries in both {} and {}",
                    entry.account_id, account.currency, entry.currency
                ));
            }
            account.system |= entry.system;
        }
        Ok(accounts)
    }

    /// The entry ids, for the check that the posting was not applied already.
    pub fn entry_ids(&self) -> Vec<String> {
        self.entries.iter().map(|entry| entry.entry_id.clone()).collect()
    }
}

/// An account's end of its chain, read under its lock: the currency of its row, its last event
/// and the balance after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub currency: String,
    pub last_sequence: i64,
    pub balance: Decimal,
}

/// One row of `balance_events` to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceEvent {
    pub entry_id: String,
    pub account_id: String,
    pub entry_type: EntryType,
    pub amount: Amount,
    pub currency: String,
    pub sequence: i64,
    pub balance_before: Decimal,
    pub balance_after: Decimal,
}

/// The balance events of a posting, one per entry in entry order, each continuing its
/// account's chain (the next sequence, starting from the balance the previous one left);
/// `chains` is advanced to the end of each chain. Fails when an entry's currency is not its
/// account's: such an entry cannot be applied to that balance.
pub fn balance_events(posting: &Posting, chains: &mut BTreeMap<String, Chain>) -> Result<Vec<BalanceEvent>, String> {
    posting
        .entries
        .iter()
        .map(|entry| {
            let chain = chains
                .get_mut(&entry.account_id)
                .ok_or_else(|| format!("account {} is not locked", entry.account_id))?;
            if chain.currency != entry.currency.code() {
                return Err(format!(
                    "entry {} is in {} but account {} is in {}",
                    entry.entry_id, entry.currency, entry.account_id, chain.currency
                ));
            }
            let balance_before = chain.balance;
            chain.balance += entry.entry_type.signed(entry.amount.value());
            chain.last_sequence += 1;
            Ok(BalanceEvent {
                entry_id: entry.entry_id.clone(),
                account_id: entry.account_id.clone(),
                entry_type: entry.entry_type,
                amount: entry.amount,
                currency: chain.currency.clone(),
                sequence: chain.last_sequence,
                balance_before,
                balance_after: chain.balance,
            })
        })
        .collect()
}

/// A non-system account debited by a posting beyond what the posting's captured holds cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub account_id: String,
    pub debited: Decimal,
    pub held: Decimal,
}

/// The non-system accounts whose debits in `posting` exceed the holds captured for it (`held`,
/// per account). The posting is applied regardless, since the transaction has committed; a
/// shortfall means the holds were bypassed and is reported for an operator.
pub fn unheld_debits(posting: &Posting, system: &BTreeSet<String>, held: &BTreeMap<String, Decimal>) -> Vec<Shortfall> {
    let mut debited: BTreeMap<&str, Decimal> = BTreeMap::new();
    for entry in posting.entries.iter().filter(|entry| entry.entry_type == EntryType::Debit) {
        if !system.contains(&entry.account_id) {
            *debited.entry(&entry.account_id).or_default() += entry.amount.value();
        }
    }
    debited
        .into_iter()
        .filter_map(|(account_id, debited)| {
            let held = held.get(account_id).copied().unwrap_or_default();
            (debited > held).then(|| Shortfall { account_id: account_id.to_string(), debited, held })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use serde_json::json;

    use super::*;

    const A: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const B: &str = "1b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

    #[test]
    fn only_the_treasury_releases_a_users_reservation() {
        assert!(check_release_by_administrator(AdminRole::Platform).is_ok());
        for role in [AdminRole::Ops, AdminRole::Risk] {
            let refused = check_release_by_administrator(role).unwrap_err();
            assert_eq!((refused.status, refused.code.as_str()), (403, "platform_only"), "{role:?}");
        }
    }
    const F: &str = "ffffffff-4f50-6172-8394-a5b6c7d8e9f0";
    const USER: &str = "9c1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn amount(text: &str) -> Amount {
        Amount::parse(text).unwrap()
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn code<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (u16, String) {
        let err = result.expect_err("refused");
        (err.status, err.code)
    }

    fn posting_json(entries: Json) -> String {
        json!({
            "transaction_id": "AAAAAAAA-0000-4000-8000-000000000001",
            "payment_id": "aaaaaaaa-0000-4000-8000-000000000002",
            "transaction_type": "TRANSFER",
            "created_at": "2026-03-01T12:00:00.5Z",
            "entries": entries,
        })
        .to_string()
    }

    fn entry(n: u8, account: &str, entry_type: &str, amount: &str, system: bool) -> Json {
        json!({
            "entry_id": format!("eeeeeeee-0000-4000-8000-0000000000{n:02}"),
            "account_id": account,
            "entry_type": entry_type,
            "amount": amount,
            "currency": "USD",
            "system": system,
        })
    }

    #[test]
    fn ids_are_uuids_in_lower_case() {
        assert_eq!(path_id(&A.to_uppercase()).as_deref(), Some(A));
        assert_eq!(path_id("42"), None);
        assert_eq!(path_id(&format!("{A}0")), None);
        assert_eq!(path_id("0b1c2d3e04f50-6172-8394-a5b6c7d8e9f0"), None);
        assert_eq!(micropay_sdk::fields::uuid("account_id", A).unwrap(), A);
        assert_eq!(code(micropay_sdk::fields::uuid("account_id", "nope")), (422, "validation_failed".into()));
    }

    #[test]
    fn ttl_defaults_to_fifteen_minutes_and_is_at_most_a_day() {
        assert_eq!(ttl_seconds(None).unwrap(), 900);
        assert_eq!(ttl_seconds(Some(1)).unwrap(), 1);
        assert_eq!(ttl_seconds(Some(86_400)).unwrap(), 86_400);
        for ttl in [0, -5, 86_401] {
            assert_eq!(code(ttl_seconds(Some(ttl))).0, 422, "{ttl}");
        }
    }

    #[test]
    fn timestamps_in_bodies() {
        assert_eq!(body_timestamp("as_of", "2026-01-01T00:00:00Z").unwrap(), 1_767_225_600_000_000);
        assert_eq!(body_timestamp("as_of", "2026-01-01T01:00:00+01:00").unwrap(), 1_767_225_600_000_000);
        assert_eq!(code(body_timestamp("as_of", "yesterday")).0, 422);
    }

    #[test]
    fn history_pages() {
        assert_eq!(history_page(None, None).unwrap(), HistoryPage { limit: 50, before: None });
        assert_eq!(history_page(Some(""), Some("")).unwrap(), HistoryPage { limit: 50, before: None });
        assert_eq!(history_page(Some("200"), Some("17")).unwrap(), HistoryPage { limit: 200, before: Some(17) });
        for limit in ["0", "201", "-1", "ten", "1.5"] {
            assert_eq!(code(history_page(Some(limit), None)), (400, "invalid_limit".into()), "{limit}");
        }
        for before in ["0", "-3", "x"] {
            assert_eq!(code(history_page(None, Some(before))), (400, "invalid_before".into()), "{before}");
        }
    }

    #[test]
    fn reservations_need_the_owner_an_active_account_and_its_currency() {
        let json = json!({ "account_id": A, "user_id": USER, "currency": "USD", "status": "ACTIVE", "limits": [] });
        let account = Account::from_json(&json).unwrap();
        assert_eq!(account, Account { user_id: USER.into(), currency: "USD".into(), status: "ACTIVE".into() });
        assert!(account.check_reservable(USER, &usd()).is_ok());
        assert_eq!(code(account.check_reservable(A, &usd())), (404, "account_not_found".into()));
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(code(account.check_reservable(USER, &eur)), (422, "currency_mismatch".into()));
        let frozen = Account { status: "FROZEN".into(), ..account };
        assert_eq!(code(frozen.check_reservable(USER, &usd())), (409, "account_not_active".into()));
        assert!(Account::from_json(&json!({ "user_id": USER, "currency": "USD" })).is_err());
    }

    #[test]
    fn funds_are_reserved_only_up_to_the_available_balance() {
        let mut funds = Funds { balance: dec("100"), reserved: dec("30") };
        assert_eq!(funds.available(), dec("70"));
        funds.reserve(amount("50")).unwrap();
        funds.reserve(amount("20")).unwrap();
        assert_eq!(funds.available(), Decimal::ZERO);
        assert_eq!(code(funds.reserve(amount("0.0001"))), (422, "insufficient_funds".into()));
        assert_eq!(funds.reserved, dec("100"), "a refused reservation sets nothing aside");
        // A balance already short of its reservations allows nothing.
        let mut short = Funds { balance: dec("-5"), reserved: Decimal::ZERO };
        assert_eq!(code(short.reserve(amount("1"))).1, "insufficient_funds");
    }

    fn reservation(status: Status, lapsed: bool) -> Reservation {
        Reservation { account_id: A.into(), currency: "USD".into(), amount: dec("25"), status, lapsed }
    }

    #[test]
    fn lapsed_active_reservations_show_as_expired() {
        assert_eq!(Status::Active.shown(false), Status::Active);
        assert_eq!(Status::Active.shown(true), Status::Expired);
        for status in [Status::Captured, Status::Released, Status::Expired] {
            assert_eq!(status.shown(true), status);
            assert_eq!(Status::from_db(status.as_str()), status);
        }
    }

    #[test]
    fn captures_need_the_account_currency_an_active_reservation_and_enough_held() {
        let active = reservation(Status::Active, false);
        assert!(active.check_capture(A, &usd(), amount("25")).is_ok());
        assert!(active.check_capture(A, &usd(), amount("10")).is_ok());
        assert_eq!(code(active.check_capture(B, &usd(), amount("10"))), (404, "reservation_not_found".into()));
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(code(active.check_capture(A, &eur, amount("10"))), (422, "currency_mismatch".into()));
        assert_eq!(code(active.check_capture(A, &usd(), amount("25.0001"))), (422, "exceeds_reservation".into()));
        let lapsed = reservation(Status::Active, true);
        assert_eq!(code(lapsed.check_capture(A, &usd(), amount("1"))), (409, "reservation_expired".into()));
        let expired = reservation(Status::Expired, false);
        assert_eq!(code(expired.check_active()), (409, "reservation_expired".into()));
        for status in [Status::Captured, Status::Released] {
            assert_eq!(
                code(reservation(status, false).check_capture(A, &usd(), amount("1"))).1,
                "reservation_not_active"
            );
            assert_eq!(code(reservation(status, false).check_active()).1, "reservation_not_active");
        }
    }

    #[test]
    fn holds_name_each_account_in_one_currency() {
        let hold = |account: &str, currency: &str| Hold {
            account_id: account.into(),
            amount: amount("1"),
            currency: Currency::parse(currency).unwrap(),
            reservation_id: None,
        };
        let accounts = hold_accounts(&[hold(B, "USD"), hold(A, "EUR"), hold(B, "USD")]).unwrap();
        assert_eq!(accounts.keys().collect::<Vec<_>>(), [A, B], "in account_id order");
        assert_eq!(accounts[A], "EUR");
        assert_eq!(code(hold_accounts(&[hold(A, "USD"), hold(A, "EUR")])), (422, "currency_mismatch".into()));
        let many: Vec<Hold> = (0..101).map(|_| hold(A, "USD")).collect();
        assert_eq!(code(hold_accounts(&many)).0, 422);
    }

    #[test]
    fn a_posting_is_read_and_checked() {
        let data = posting_json(json!([
            entry(1, &A.to_uppercase(), "DEBIT", "10.5", false),
            entry(2, F, "CREDIT", "10.5", true)
        ]));
        let posting = posting(&data).unwrap();
        assert_eq!(posting.transaction_id, "aaaaaaaa-0000-4000-8000-000000000001");
        assert_eq!(posting.payment_id.as_deref(), Some("aaaaaaaa-0000-4000-8000-000000000002"));
        assert_eq!(posting.posted_at, 1_772_366_400_500_000);
        assert_eq!(posting.entries[0].account_id, A);
        assert_eq!(posting.entries[0].entry_type, EntryType::Debit);
        assert_eq!(posting.entries[0].amount, amount("10.5"));
        let accounts = posting.accounts().unwrap();
        assert_eq!(accounts[A], PostedAccount { currency: "USD".into(), system: false });
        assert_eq!(accounts[F], PostedAccount { currency: "USD".into(), system: true });
        assert_eq!(posting.entry_ids().len(), 2);

        // No payment id, no system flags: both optional.
        let mut bare: Json = serde_json::from_str(&data).unwrap();
        bare.as_object_mut().unwrap().remove("payment_id");
        bare["entries"][1].as_object_mut().unwrap().remove("system");
        let bare = super::posting(&bare.to_string()).unwrap();
        assert_eq!(bare.payment_id, None);
        assert!(!bare.entries[1].system);
    }

    #[test]
    fn malformed_postings_are_refused() {
        let broken = [
            "not json".to_string(),
            posting_json(json!([])),
            posting_json(json!([entry(1, "nope", "DEBIT", "1", false)])),
            posting_json(json!([entry(1, A, "HOLD", "1", false)])),
            posting_json(json!([entry(1, A, "DEBIT", "-1", false)])),
            posting_json(json!([{
                "entry_id": "eeeeeeee-0000-4000-8000-000000000009", "account_id": A,
                "entry_type": "DEBIT", "amount": 1, "currency": "USD",
            }])),
            posting_json(json!([entry(1, A, "DEBIT", "1", false), {
                "entry_id": "eeeeeeee-0000-4000-8000-000000000009", "account_id": A,
                "entry_type": "CREDIT", "amount": "1", "currency": "EUR",
            }])),
            posting_json(json!([entry(1, A, "DEBIT", "1", false)])).replace("2026-03-01T12:00:00.5Z", "March"),
            posting_json(json!([entry(1, A, "DEBIT", "1", false), entry(1, B, "CREDIT", "1", false)])),
        ];
        for data in broken {
            assert!(posting(&data).is_err(), "{data}");
        }
    }

    #[test]
    fn entries_continue_their_accounts_chains_in_entry_order() {
        let data = posting_json(json!([
            entry(1, A, "DEBIT", "10", false),
            entry(2, B, "CREDIT", "7", false),
            entry(3, B, "CREDIT", "3", false),
        ]));
        let posting = posting(&data).unwrap();
        let mut chains = BTreeMap::from([
            (A.to_string(), Chain { currency: "USD".into(), last_sequence: 4, balance: dec("12.5") }),
            (B.to_string(), Chain { currency: "USD".into(), last_sequence: 0, balance: Decimal::ZERO }),
        ]);
        let events = balance_events(&posting, &mut chains).unwrap();
        let summary: Vec<_> =
            events.iter().map(|e| (e.account_id.as_str(), e.sequence, e.balance_before, e.balance_after)).collect();
        assert_eq!(summary, [(A, 5, dec("12.5"), dec("2.5")), (B, 1, dec("0"), dec("7")), (B, 2, dec("7"), dec("10"))]);
        assert_eq!(chains[A].last_sequence, 5);
        assert_eq!(chains[B], Chain { currency: "USD".into(), last_sequence: 2, balance: dec("10") });

        // An account whose row is in another currency cannot take the entry.
        let mut chains = BTreeMap::from([
            (A.to_string(), Chain { currency: "EUR".into(), last_sequence: 0, balance: Decimal::ZERO }),
            (B.to_string(), Chain { currency: "USD".into(), last_sequence: 0, balance: Decimal::ZERO }),
        ]);
        assert!(balance_events(&posting, &mut chains).is_err());
    }

    #[test]
    fn debits_beyond_their_holds_are_found() {
        let data = posting_json(json!([
            entry(1, A, "DEBIT", "6", false),
            entry(2, A, "DEBIT", "4", false),
            entry(3, B, "DEBIT", "5", false),
            entry(4, F, "DEBIT", "100", true),
            entry(5, B, "CREDIT", "115", false),
        ]));
        let posting = posting(&data).unwrap();
        let system = BTreeSet::from([F.to_string()]);
        let held = BTreeMap::from([(A.to_string(), dec("10")), (B.to_string(), dec("4.9999"))]);
        assert_eq!(
            unheld_debits(&posting, &system, &held),
            [Shortfall { account_id: B.into(), debited: dec("5"), held: dec("4.9999") }]
        );
        assert_eq!(unheld_debits(&posting, &system, &BTreeMap::new()).len(), 2, "system accounts need no hold");
    }
}
