//! The account service's rules: account types and their default limits, the status machine,
//! account numbers and their check digits, limit periods and usage, and who may use an account
//! in a posting. Pure functions over plain values, unit-tested natively.

use micropay_sdk::is_uuid;
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime};
use micropay_sdk::money::{self, Amount, Currency, Decimal};
use micropay_sdk::{AdminRole, ApiError, Principal};
use serde_json::Value as Json;

/// The owner of the system accounts (the nil UUID): no user can ever have this id.
pub const SYSTEM_USER_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The currency of an account opened without one.
pub const DEFAULT_CURRENCY: &str = "USD";

/// How many account numbers are drawn before giving up: a collision among 10^12 numbers is
/// already unlikely, several in a row mean something else is wrong.
pub const ACCOUNT_NUMBER_ATTEMPTS: usize = 5;

// ---- errors of the contract ----

/// 404 `account_not_found`: the same answer whether the account is missing or the caller may
/// not see it, so an id reveals nothing.
pub fn account_not_found() -> ApiError {
    ApiError::new(404, "account_not_found", "account not found")
}

/// 404 `account_not_found` naming the id the caller gave (a posting names several accounts).
pub fn named_account_not_found(account_id: &str) -> ApiError {
    ApiError::new(404, "account_not_found", format!("account {account_id} not found"))
}

/// 409 for an operation that system accounts do not have (limits, freezing, closing): they
/// carry the platform's side of every deposit and fee and must stay open.
pub fn system_account_refused(what: &str) -> ApiError {
    ApiError::conflict("system_account", format!("a system account cannot be {what}"))
}

// ---- who is asking ----

/// Whether `principal` may name an account owned by `owner` in a posting: an administrator
/// any account; a user never a system account, and debits only from their own accounts
/// (crediting any user account is paying someone).
pub fn may_post_to(principal: &Principal, owner: &str, system: bool, debited: bool) -> bool {
    match principal {
        Principal::Admin => true,
        Principal::User(_) if system => false,
        Principal::User(_) => !debited || principal.may_act_for(owner),
    }
}

/// What an administrator may do to accounts beyond reading them, each allowed to some admin-key
/// roles only (the table "Administrator roles" in `components/LEDGER.md`). An owner's own
/// requests (freezing, closing, limits up to the type's defaults) are not administrators' and
/// do not come here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// Setting an account's limits, to any amount: how much may leave it is a risk decision.
    ChangeLimits,
    /// Freezing: stops money and moves none, so every role may pull this brake.
    Freeze,
    /// Unfreezing: lets money move again, a risk decision.
    Unfreeze,
    /// Closing a user's (empty) account for good.
    Close,
    /// Opening a currency's FUNDING and FEES accounts, the platform's side of every deposit.
    OpenSystemAccounts,
}

impl AdminAction {
    /// The roles that may.
    pub fn roles(self) -> &'static [AdminRole] {
        use AdminRole::{Ops, Platform, Risk};
        match self {
            AdminAction::Freeze => &[Ops, Risk, Platform],
            AdminAction::ChangeLimits | AdminAction::Unfreeze | AdminAction::Close => &[Risk, Platform],
            AdminAction::OpenSystemAccounts => &[Platform],
        }
    }

    /// The action in words, for the refusal.
    fn describe(self) -> &'static str {
        match self {
            AdminAction::ChangeLimits => "changing an account's limits",
            AdminAction::Freeze => "freezing an account",
            AdminAction::Unfreeze => "unfreezing an account",
            AdminAction::Close => "closing a user's account",
            AdminAction::OpenSystemAccounts => "opening system accounts",
        }
    }

    /// Whether an admin key of `role` may: 403 otherwise (see `require_admin_role`).
    pub fn check(self, role: AdminRole) -> Result<(), ApiError> {
        micropay_sdk::principal::require_admin_role(role, self.roles(), self.describe())
    }
}

// ---- account types ----

/// What an account is for. User accounts carry transfer limits; the two system accounts of
/// each currency (funding: where deposits come from and withdrawals go; fees) do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountType {
    Primary,
    Savings,
    Business,
    Funding,
    Fees,
}

/// A pair of transfer limits: per UTC day and per UTC month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLimits {
    /// Most that may leave the account in one UTC day.
    pub daily: Decimal,
    /// Most that may leave the account in one UTC month.
    pub monthly: Decimal,
}

impl AccountType {
    /// The type's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::Primary => "PRIMARY",
            AccountType::Savings => "SAVINGS",
            AccountType::Business => "BUSINESS",
            AccountType::Funding => "FUNDING",
            AccountType::Fees => "FEES",
        }
    }

    /// A stored type name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Primary, Self::Savings, Self::Business, Self::Funding, Self::Fees]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }

    /// The type a user asks to open: one of the user types (default PRIMARY), or 422.
    pub fn for_user(requested: Option<&str>) -> Result<Self, ApiError> {
        match requested.map(Self::parse) {
            None => Ok(Self::Primary),
            Some(Some(kind)) if !kind.is_system() => Ok(kind),
            Some(_) => Err(ApiError::validation("account_type must be PRIMARY, SAVINGS or BUSINESS")),
        }
    }

    /// Whether this is a system account type.
    pub fn is_system(self) -> bool {
        matches!(self, AccountType::Funding | AccountType::Fees)
    }

    /// The limits an account of this type opens with, and the most its owner may raise them
    /// to; `None` for system accounts, which have no limits.
    pub fn default_limits(self) -> Option<TransferLimits> {
        let (daily, monthly) = match self {
            AccountType::Primary => (10_000, 50_000),
            AccountType::Savings => (5_000, 20_000),
            AccountType::Business => (100_000, 1_000_000),
            AccountType::Funding | AccountType::Fees => return None,
        };
        Some(TransferLimits { daily: Decimal::from(daily), monthly: Decimal::from(monthly) })
    }
}

/// The limits after a change request: the values given replace the current ones. An owner may
/// go up to the type's defaults, an administrator to any amount; either way the daily limit
/// may not exceed the monthly one (422 `validation_failed`).
pub fn changed_limits(
    account_type: AccountType,
    current: TransferLimits,
    daily: Option<Amount>,
    monthly: Option<Amount>,
    by_admin: bool,
) -> Result<TransferLimits, ApiError> {
    let defaults = account_type.default_limits().ok_or_else(|| system_account_refused("given limits"))?;
    if daily.is_none() && monthly.is_none() {
        return Err(ApiError::validation("give daily_transfer_limit, monthly_transfer_limit or both"));
    }
    if !by_admin {
        let too_high =
            [("daily_transfer_limit", daily, defaults.daily), ("monthly_transfer_limit", monthly, defaults.monthly)]
                .into_iter()
                .find(|(_, asked, most)| asked.is_some_and(|asked| asked.value() > *most));
        if let Some((field, _, most)) = too_high {
            return Err(ApiError::validation(format!(
                "{field} may be at most {} for a {} account",
                money::format(most),
                account_type.as_str()
            )));
        }
    }
    let limits = TransferLimits {
        daily: daily.map_or(current.daily, Amount::value),
        monthly: monthly.map_or(current.monthly, Amount::value),
    };
    if limits.daily > limits.monthly {
        return Err(ApiError::validation(format!(
            "daily_transfer_limit {} may not exceed monthly_transfer_limit {}",
            money::format(limits.daily),
            money::format(limits.monthly)
        )));
    }
    Ok(limits)
}

/// The currency of a new account: the one asked for (an active ISO 4217 code, else 422), or USD.
pub fn currency(requested: Option<&str>) -> Result<Currency, ApiError> {
    Currency::parse(requested.unwrap_or(DEFAULT_CURRENCY)).map_err(|reason| money::invalid("currency", reason))
}

// ---- status ----

/// An account's status. `ACTIVE` accounts take part in postings; `FROZEN` ones wait for an
/// administrator; `CLOSED` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Frozen,
    Closed,
}

impl Status {
    /// The status's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "ACTIVE",
            Status::Frozen => "FROZEN",
            Status::Closed => "CLOSED",
        }
    }

    /// A stored status name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Active, Self::Frozen, Self::Closed].into_iter().find(|status| status.as_str() == text)
    }
}

/// A change of status someone asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Freeze,
    Unfreeze,
    Close,
}

impl StatusChange {
    /// The status the account moves to from `from`: `ACTIVE -> FROZEN -> ACTIVE`,
    /// `ACTIVE|FROZEN -> CLOSED`; anything else is 409 `invalid_status`.
    pub fn apply(self, from: Status) -> Result<Status, ApiError> {
        let to = match (self, from) {
            (StatusChange::Freeze, Status::Active) => Status::Frozen,
            (StatusChange::Unfreeze, Status::Frozen) => Status::Active,
            (StatusChange::Close, Status::Active | Status::Frozen) => Status::Closed,
            _ => {
                return Err(ApiError::conflict(
                    "invalid_status",
                    format!("an account that is {} cannot be {}", from.as_str(), self.past_tense()),
                ));
            }
        };
        Ok(to)
    }

    /// The event announcing the change.
    pub fn topic(self) -> &'static str {
        match self {
            StatusChange::Freeze => "account.frozen",
            StatusChange::Unfreeze => "account.unfrozen",
            StatusChange::Close => "account.closed",
        }
    }

    /// The change as an adjective, for messages.
    pub fn past_tense(self) -> &'static str {
        match self {
            StatusChange::Freeze => "frozen",
            StatusChange::Unfreeze => "unfrozen",
            StatusChange::Close => "closed",
        }
    }
}

// ---- account numbers ----

/// The country-code position of an account number: its two letters.
const NUMBER_PREFIX: &str = "MP";

/// How many random digits follow the check digits.
const NUMBER_BODY_DIGITS: usize = 12;

/// 10^12: the count of distinct number bodies.
const NUMBER_BODIES: u64 = 1_000_000_000_000;

/// ISO 7064 MOD 97-10 over an IBAN-style string: the first four characters (letters and
/// check digits) are moved to the end, every letter becomes its two-digit value (A = 10 ...
/// Z = 35), and the remainder of that number by 97 is computed digit by digit. Any other
/// character gives `None`.
fn mod97_rearranged(text: &str) -> Option<u32> {
    if text.len() < 4 || !text.is_ascii() {
        return None;
    }
    let (head, tail) = text.split_at(4);
    let mut remainder = 0u32;
    for c in tail.chars().chain(head.chars()) {
        let value = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return None,
        };
        remainder = if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 };
    }
    Some(remainder)
}

/// The account number with these twelve digits: `MP`, the check digits making the whole
/// number's MOD 97-10 remainder 1 (as an IBAN's), then the digits.
pub fn account_number(body: u64) -> String {
    assert!(body < NUMBER_BODIES, "an account number body has twelve digits");
    let unchecked = format!("{NUMBER_PREFIX}00{body:012}");
    let remainder = mod97_rearranged(&unchecked).expect("letters and digits only");
    format!("{NUMBER_PREFIX}{:02}{body:012}", 98 - remainder)
}

/// A new account number from a source of random 64-bit values: a uniform twelve-digit body
/// (values that would favour some bodies are drawn again), with its check digits.
pub fn random_account_number(mut next_random: impl FnMut() -> u64) -> String {
    // The largest multiple of 10^12 that fits in a u64: below it, `% 10^12` is uniform.
    let zone = u64::MAX - u64::MAX % NUMBER_BODIES;
    loop {
        let value = next_random();
        if value < zone {
            return account_number(value % NUMBER_BODIES);
        }
    }
}

/// The canonical form of an account number as someone may type it: spaces dropped (numbers are
/// printed in groups of four), letters upper-cased.
pub fn normalize_account_number(typed: &str) -> String {
    typed.chars().filter(|c| !c.is_whitespace()).map(|c| c.to_ascii_uppercase()).collect()
}

/// Whether a (normalised) account number is well formed and its check digits hold: a mistyped
/// digit or two swapped neighbours fail here instead of naming another account.
pub fn is_valid_account_number(number: &str) -> bool {
    number.len() == NUMBER_PREFIX.len() + 2 + NUMBER_BODY_DIGITS
        && number.starts_with(NUMBER_PREFIX)
        && number[NUMBER_PREFIX.len()..].bytes().all(|b| b.is_ascii_digit())
        && mod97_rearranged(number) == Some(1)
}

// ---- limit periods ----

/// A limit's kind: how much may leave an account per UTC day or per UTC month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitType {
    DailyTransfer,
    MonthlyTransfer,
}

/// The calendar period a limit counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodType {
    Day,
    Month,
}

/// A half-open period `[start, end)` in microseconds since the epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// The first instant in the period.
    pub start: i64,
    /// The first instant after it.
    pub end: i64,
}

impl LimitType {
    /// Both kinds, in the order their rows are locked and shown.
    pub const ALL: [LimitType; 2] = [LimitType::DailyTransfer, LimitType::MonthlyTransfer];

    /// The kind's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitType::DailyTransfer => "DAILY_TRANSFER",
            LimitType::MonthlyTransfer => "MONTHLY_TRANSFER",
        }
    }

    /// A stored kind name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The period the kind counts over.
    pub fn period_type(self) -> PeriodType {
        match self {
            LimitType::DailyTransfer => PeriodType::Day,
            LimitType::MonthlyTransfer => PeriodType::Month,
        }
    }

    /// This kind's amount in a pair of limits.
    pub fn amount_in(self, limits: TransferLimits) -> Decimal {
        match self {
            LimitType::DailyTransfer => limits.daily,
            LimitType::MonthlyTransfer => limits.monthly,
        }
    }

    /// The kind in words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            LimitType::DailyTransfer => "daily transfer limit",
            LimitType::MonthlyTransfer => "monthly transfer limit",
        }
    }
}

impl PeriodType {
    /// The period type's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodType::Day => "DAY",
            PeriodType::Month => "MONTH",
        }
    }

    /// The UTC calendar day or month holding the instant `now` (µs since the epoch).
    pub fn containing(self, now: i64) -> Period {
        let today = DateTime::from_timestamp_micros(now).expect("the clock is within chrono's range").date_naive();
        let (first, next) = match self {
            PeriodType::Day => (today, today.succ_opt().expect("a day after today")),
            PeriodType::Month => {
                let first = today.with_day(1).expect("every month has a first day");
                let next = if first.month() == 12 {
                    NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                };
                (first, next.expect("the first of the next month"))
            }
        };
        let micros = |date: NaiveDate| date.and_time(NaiveTime::MIN).and_utc().timestamp_micros();
        Period { start: micros(first), end: micros(next) }
    }
}

/// One limit row's amounts and period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitUsage {
    pub limit_type: LimitType,
    /// Most that may be used in one period.
    pub limit_amount: Decimal,
    /// What has been counted in `period`.
    pub current_usage: Decimal,
    /// The period the usage was counted in; it may have ended.
    pub period: Period,
}

impl LimitUsage {
    /// The row as it stands at `now`: once its period has ended, nothing is used yet of the
    /// period holding `now`.
    pub fn at(self, now: i64) -> Self {
        if self.period.end <= now {
            Self { current_usage: Decimal::ZERO, period: self.limit_type.period_type().containing(now), ..self }
        } else {
            self
        }
    }

    /// The row after counting `amount` more at `now`, or 422 `limit_exceeded` naming the limit
    /// when the usage would go over it.
    pub fn charge(self, amount: Decimal, now: i64, account_id: &str, currency: &str) -> Result<Self, ApiError> {
        let current = self.at(now);
        let usage = current.current_usage + amount;
        if usage > current.limit_amount {
            return Err(ApiError::new(
                422,
                "limit_exceeded",
                format!(
                    "the {} of {} {currency} on account {account_id} would be exceeded: {} used, {} more asked",
                    self.limit_type.describe(),
                    money::format(current.limit_amount),
                    money::format(current.current_usage),
                    money::format(amount),
                ),
            ));
        }
        Ok(Self { current_usage: usage, ..current })
    }

    /// The row after giving back `amount` counted earlier, never below zero; `None` when its
    /// period has ended (the usage no longer counts for anything).
    pub fn release(self, amount: Decimal, now: i64) -> Option<Self> {
        (self.period.end > now)
            .then(|| Self { current_usage: (self.current_usage - amount).max(Decimal::ZERO), ..self })
    }
}

// ---- postings ----

/// The side of a ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Debit,
    Credit,
}

/// One leg of a posting as the transaction service describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// Lower case, so legs of one account meet however their ids were written.
    pub account_id: String,
    pub entry_type: EntryType,
    pub amount: Amount,
    pub currency: Currency,
}

/// Checks one leg's fields (422 `validation_failed` naming `legs[index].field`).
pub fn leg(index: usize, account_id: &str, entry_type: &str, amount: &str, currency: &str) -> Result<Leg, ApiError> {
    let field = |name: &str| format!("legs[{index}].{name}");
    if !is_uuid(account_id) {
        return Err(ApiError::validation(format!("{}: {account_id:?} is not a UUID", field("account_id"))));
    }
    let entry_type = match entry_type {
        "DEBIT" => EntryType::Debit,
        "CREDIT" => EntryType::Credit,
        _ => return Err(ApiError::validation(format!("{}: must be DEBIT or CREDIT", field("entry_type")))),
    };
    Ok(Leg {
        account_id: account_id.to_ascii_lowercase(),
        entry_type,
        amount: Amount::parse(amount).map_err(|reason| money::invalid(&field("amount"), reason))?,
        currency: Currency::parse(currency).map_err(|reason| money::invalid(&field("currency"), reason))?,
    })
}

/// What a posting does to one account: its debits summed, and the currencies its legs name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountTotals {
    /// The debit legs' sum: what the posting takes from the account (zero when it only adds).
    pub debited: Decimal,
    /// Every currency its legs name (one, when the posting is right).
    pub currencies: Vec<String>,
}

impl AccountTotals {
    /// Whether any leg takes from the account.
    pub fn is_debited(&self) -> bool {
        self.debited > Decimal::ZERO
    }
}

/// The legs summed per account, in account id order (the order rows are locked in).
pub fn totals_by_account(legs: &[Leg]) -> BTreeMap<String, AccountTotals> {
    let mut totals: BTreeMap<String, AccountTotals> = BTreeMap::new();
    for leg in legs {
        let account = totals.entry(leg.account_id.clone()).or_default();
        if leg.entry_type == EntryType::Debit {
            account.debited += leg.amount.value();
        }
        if !account.currencies.iter().any(|currency| currency == leg.currency.code()) {
            account.currencies.push(leg.currency.code().to_string());
        }
    }
    totals
}

/// What authorization needs to know of a stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFacts {
    pub account_id: String,
    /// The owner (the nil UUID for a system account).
    pub user_id: String,
    /// Whether it is a FUNDING or FEES account.
    pub system: bool,
    pub currency: String,
    pub status: Status,
}

/// Checks that `principal` may name the account in a posting with these legs: visible to them
/// (404 `account_not_found` otherwise, the same as a missing one), in the legs' currency (422
/// `currency_mismatch`) and `ACTIVE` (409 `account_not_active`).
pub fn authorize_account(
    principal: &Principal,
    account: &AccountFacts,
    totals: &AccountTotals,
) -> Result<(), ApiError> {
    if !may_post_to(principal, &account.user_id, account.system, totals.is_debited()) {
        return Err(named_account_not_found(&account.account_id));
    }
    if let Some(other) = totals.currencies.iter().find(|currency| **currency != account.currency) {
        return Err(ApiError::new(
            422,
            "currency_mismatch",
            format!("account {} holds {}, not {other}", account.account_id, account.currency),
        ));
    }
    if account.status != Status::Active {
        return Err(ApiError::conflict(
            "account_not_active",
            format!("account {} is {}", account.account_id, account.status.as_str()),
        ));
    }
    Ok(())
}

// ---- postings in flight ----

/// A record in flight is resolved by the sweep only once it is this old: far beyond the
/// transaction service's deadline (30 s), so a posting that has not committed by then never
/// will. The same bound as the balance service's for the holds of such postings.
pub const IN_FLIGHT_RESOLVE_AFTER_SECONDS: i64 = 120;

/// The most postings one sweep asks the transaction service about (one call each).
pub const IN_FLIGHT_SWEEP_BATCH: i64 = 50;

/// How many postings in flight a refused close names.
pub const IN_FLIGHT_NAMED: i64 = 5;

/// Refuses (409 `postings_in_flight`) to close an account while postings authorized against it
/// have not yet been applied to its balance: what they bring would land on a CLOSED account.
/// `in_flight` is a few of them, oldest first.
pub fn check_nothing_in_flight(account_id: &str, in_flight: &[String]) -> Result<(), ApiError> {
    if in_flight.is_empty() {
        return Ok(());
    }
    Err(ApiError::conflict(
        "postings_in_flight",
        format!(
            "account {account_id} has postings not yet applied to its balance ({}): close it once they are",
            in_flight.join(", ")
        ),
    ))
}

/// What became of a posting whose record in flight has outlived
/// [`IN_FLIGHT_RESOLVE_AFTER_SECONDS`], from the transaction service's
/// `GET /internal/transactions/{id}` answer `{exists, status}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostingFate {
    /// It does not exist: it never committed, and never will this late.
    NeverCommitted,
    /// Settled or reversed: the balance service has applied every entry (a posting is settled
    /// only once it has, and reversed only once settled).
    Applied,
    /// Still `PENDING`: its balance events are still to come.
    Pending,
}

impl PostingFate {
    /// The fate an answer says; `None` for an answer that says nothing sure, which keeps the
    /// record until a later sweep.
    pub fn of(answer: &Json) -> Option<Self> {
        match (answer.get("exists").and_then(Json::as_bool), answer.get("status").and_then(Json::as_str)) {
            (Some(false), _) => Some(PostingFate::NeverCommitted),
            (Some(true), Some("PENDING")) => Some(PostingFate::Pending),
            (Some(true), Some("SETTLED" | "REVERSED")) => Some(PostingFate::Applied),
            _ => None,
        }
    }

    /// Whether its records in flight may go: nothing more of it will reach the balances.
    pub fn is_resolved(self) -> bool {
        self != PostingFate::Pending
    }
}

// ---- small shapes ----

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const BOB: &str = "1b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

    /// An instant in UTC, in microseconds since the epoch.
    fn micros(y: i32, m: u32, d: u32, h: u32, min: u32) -> i64 {
        NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(h, min, 0).unwrap().and_utc().timestamp_micros()
    }

    fn amount(text: &str) -> Amount {
        Amount::parse(text).unwrap()
    }

    fn dec(text: &str) -> Decimal {
        money::decimal(text)
    }

    #[test]
    fn check_digits_are_those_of_an_iban() {
        // The standard's own example IBAN validates with the same arithmetic.
        assert_eq!(mod97_rearranged("GB82WEST12345698765432"), Some(1));
        assert_eq!(mod97_rearranged("GB83WEST12345698765432"), Some(2));
        let number = account_number(123_456_789_012);
        assert_eq!(number.len(), 16);
        assert!(number.starts_with("MP"));
        assert!(number.ends_with("123456789012"));
        assert!(is_valid_account_number(&number));
        // The body, then M = 22, P = 25 and 00 in place of the check digits: 98 minus that mod 97.
        let rearranged: u128 = "123456789012222500".parse().unwrap();
        let expected = 98 - rearranged % 97;
        assert_eq!(number[2..4], format!("{expected:02}"));
        assert_eq!(account_number(1), "MP89000000000001");
        assert!(is_valid_account_number(&account_number(0)));
        assert!(is_valid_account_number(&account_number(NUMBER_BODIES - 1)));
    }

    #[test]
    fn a_changed_digit_never_names_another_account() {
        for body in [0, 1, 123_456_789_012, 999_999_999_999, 402_718_556_003] {
            let number = account_number(body);
            for position in 2..number.len() {
                for digit in b'0'..=b'9' {
                    let mut typo = number.clone().into_bytes();
                    if typo[position] == digit {
                        continue;
                    }
                    typo[position] = digit;
                    let typo = String::from_utf8(typo).unwrap();
                    assert!(!is_valid_account_number(&typo), "{number} -> {typo}");
                }
            }
        }
    }

    #[test]
    fn two_swapped_neighbours_never_name_another_account() {
        for body in [123_456_789_012, 987_650_432_101, 102_030_405_060, 555_555_555_556] {
            let number = account_number(body);
            for position in 2..number.len() - 1 {
                let mut swapped = number.clone().into_bytes();
                if swapped[position] == swapped[position + 1] {
                    continue;
                }
                swapped.swap(position, position + 1);
                let swapped = String::from_utf8(swapped).unwrap();
                assert!(!is_valid_account_number(&swapped), "{number} -> {swapped}");
            }
        }
    }

    #[test]
    fn malformed_numbers_are_refused() {
        let number = account_number(42);
        for bad in ["", "MP", "XX00000000000042", "MP0000000000004", "MP000000000000420", "MP0A000000000042"] {
            assert!(!is_valid_account_number(bad), "{bad}");
        }
        assert!(!is_valid_account_number(&number.replace("MP", "MQ")));
        let printed = format!("{} {} {} {}", &number[0..4], &number[4..8], &number[8..12], &number[12..16]);
        assert_eq!(normalize_account_number(&printed.to_lowercase()), number);
    }

    #[test]
    fn random_numbers_are_drawn_uniformly() {
        let mut draws = [u64::MAX, 7].into_iter();
        // u64::MAX lies beyond the last whole block of 10^12 and is drawn again.
        assert_eq!(random_account_number(|| draws.next().unwrap()), account_number(7));
        let number = random_account_number(|| 3 * NUMBER_BODIES + 99);
        assert_eq!(number, account_number(99));
    }

    #[test]
    fn days_and_months_are_utc_calendar_periods() {
        let now = micros(2024, 2, 29, 13, 45);
        assert_eq!(
            PeriodType::Day.containing(now),
            Period { start: micros(2024, 2, 29, 0, 0), end: micros(2024, 3, 1, 0, 0) }
        );
        assert_eq!(
            PeriodType::Month.containing(now),
            Period { start: micros(2024, 2, 1, 0, 0), end: micros(2024, 3, 1, 0, 0) }
        );
        // A month's last microsecond, and the year's.
        assert_eq!(PeriodType::Month.containing(micros(2023, 4, 1, 0, 0) - 1).end, micros(2023, 4, 1, 0, 0));
        let new_year_eve = micros(2025, 1, 1, 0, 0) - 1;
        assert_eq!(
            PeriodType::Day.containing(new_year_eve),
            Period { start: micros(2024, 12, 31, 0, 0), end: micros(2025, 1, 1, 0, 0) }
        );
        assert_eq!(
            PeriodType::Month.containing(new_year_eve),
            Period { start: micros(2024, 12, 1, 0, 0), end: micros(2025, 1, 1, 0, 0) }
        );
        // The first instant of a period belongs to it.
        assert_eq!(PeriodType::Day.containing(micros(2025, 1, 1, 0, 0)).start, micros(2025, 1, 1, 0, 0));
        assert_eq!(PeriodType::Month.containing(micros(2023, 2, 28, 23, 59)).end, micros(2023, 3, 1, 0, 0));
    }

    fn daily(limit: &str, used: &str, period: Period) -> LimitUsage {
        LimitUsage { limit_type: LimitType::DailyTransfer, limit_amount: dec(limit), current_usage: dec(used), period }
    }

    #[test]
    fn usage_counts_up_to_the_limit() {
        let now = micros(2024, 5, 10, 12, 0);
        let today = PeriodType::Day.containing(now);
        let row = daily("100", "60", today);
        assert_eq!(row.charge(dec("40"), now, ALICE, "USD").unwrap().current_usage, dec("100"));
        let refused = row.charge(dec("40.0001"), now, ALICE, "USD").unwrap_err();
        assert_eq!((refused.status, refused.code.as_str()), (422, "limit_exceeded"));
        assert!(refused.message.contains("daily transfer limit of 100.0000 USD"), "{}", refused.message);
    }

    #[test]
    fn an_ended_period_rolls_over() {
        let now = micros(2024, 5, 10, 0, 0);
        let yesterday = PeriodType::Day.containing(now - 1);
        let row = daily("100", "100", yesterday);
        let rolled = row.at(now);
        assert_eq!(rolled.current_usage, Decimal::ZERO);
        assert_eq!(rolled.period, PeriodType::Day.containing(now));
        assert_eq!(row.charge(dec("30"), now, ALICE, "USD").unwrap().current_usage, dec("30"));
        // Long unused: the new period is the current one, not the one after the stored period.
        let last_year = PeriodType::Month.containing(micros(2023, 1, 15, 0, 0));
        let monthly = LimitUsage { limit_type: LimitType::MonthlyTransfer, ..daily("100", "5", last_year) };
        assert_eq!(monthly.at(now).period, PeriodType::Month.containing(now));
        // A period still running is left as it is.
        let today = PeriodType::Day.containing(now);
        assert_eq!(daily("100", "5", today).at(now), daily("100", "5", today));
    }

    #[test]
    fn releases_never_go_below_zero_nor_touch_an_ended_period() {
        let now = micros(2024, 5, 10, 12, 0);
        let today = PeriodType::Day.containing(now);
        assert_eq!(daily("100", "60", today).release(dec("25"), now).unwrap().current_usage, dec("35"));
        assert_eq!(daily("100", "10", today).release(dec("25"), now).unwrap().current_usage, Decimal::ZERO);
        assert_eq!(daily("100", "60", PeriodType::Day.containing(now - 86_400_000_000)).release(dec("1"), now), None);
    }

    #[test]
    fn users_open_user_accounts_only() {
        assert_eq!(AccountType::for_user(None).unwrap(), AccountType::Primary);
        assert_eq!(AccountType::for_user(Some("BUSINESS")).unwrap(), AccountType::Business);
        for refused in ["FUNDING", "FEES", "primary", "CHECKING"] {
            assert_eq!(AccountType::for_user(Some(refused)).unwrap_err().status, 422, "{refused}");
        }
        assert_eq!(currency(None).unwrap().code(), "USD");
        assert_eq!(currency(Some("usd")).unwrap_err().status, 422);
    }

    #[test]
    fn default_limits_by_type() {
        let limits = |kind: AccountType| kind.default_limits().map(|l| (l.daily, l.monthly));
        assert_eq!(limits(AccountType::Primary), Some((dec("10000"), dec("50000"))));
        assert_eq!(limits(AccountType::Savings), Some((dec("5000"), dec("20000"))));
        assert_eq!(limits(AccountType::Business), Some((dec("100000"), dec("1000000"))));
        assert_eq!(limits(AccountType::Funding), None);
        assert_eq!(limits(AccountType::Fees), None);
    }

    #[test]
    fn limit_changes() {
        let current = AccountType::Primary.default_limits().unwrap();
        let change = |daily: Option<&str>, monthly: Option<&str>, by_admin: bool| {
            changed_limits(AccountType::Primary, current, daily.map(amount), monthly.map(amount), by_admin)
        };
        assert_eq!(change(Some("500"), None, false).unwrap(), TransferLimits { daily: dec("500"), ..current });
        assert_eq!(change(Some("10000"), Some("50000"), false).unwrap(), current);
        // An owner stays within the type's defaults; an administrator does not have to.
        assert_eq!(change(Some("10000.0001"), None, false).unwrap_err().status, 422);
        assert_eq!(change(None, Some("60000"), false).unwrap_err().status, 422);
        assert_eq!(change(Some("20000"), Some("60000"), true).unwrap().daily, dec("20000"));
        // Daily never above monthly, whoever asks, counting the value left unchanged.
        assert_eq!(change(Some("50000.0001"), None, true).unwrap_err().status, 422);
        assert_eq!(change(None, Some("9999"), false).unwrap_err().status, 422);
        assert_eq!(change(None, None, true).unwrap_err().status, 422);
        let system = changed_limits(AccountType::Funding, current, Some(amount("1")), None, true).unwrap_err();
        assert_eq!((system.status, system.code.as_str()), (409, "system_account"));
    }

    #[test]
    fn status_machine() {
        use Status::*;
        use StatusChange::*;
        assert_eq!(Freeze.apply(Active).unwrap(), Frozen);
        assert_eq!(Unfreeze.apply(Frozen).unwrap(), Active);
        assert_eq!(Close.apply(Active).unwrap(), Closed);
        assert_eq!(Close.apply(Frozen).unwrap(), Closed);
        for (change, from) in
            [(Freeze, Frozen), (Freeze, Closed), (Unfreeze, Active), (Unfreeze, Closed), (Close, Closed)]
        {
            let refused = change.apply(from).unwrap_err();
            assert_eq!((refused.status, refused.code.as_str()), (409, "invalid_status"), "{change:?} from {from:?}");
        }
    }

    #[test]
    fn legs_are_checked_and_summed_per_account() {
        assert_eq!(leg(0, "nope", "DEBIT", "1", "USD").unwrap_err().status, 422);
        assert_eq!(leg(0, ALICE, "debit", "1", "USD").unwrap_err().status, 422);
        assert_eq!(leg(0, ALICE, "DEBIT", "0", "USD").unwrap_err().status, 422);
        assert_eq!(leg(0, ALICE, "DEBIT", "1", "XYZ").unwrap_err().status, 422);
        let legs = [
            leg(0, &ALICE.to_uppercase(), "DEBIT", "10", "USD").unwrap(),
            leg(1, BOB, "CREDIT", "15", "USD").unwrap(),
            leg(2, ALICE, "DEBIT", "5.5", "USD").unwrap(),
            leg(3, ALICE, "CREDIT", "0.5", "USD").unwrap(),
        ];
        let totals = totals_by_account(&legs);
        assert_eq!(totals.keys().collect::<Vec<_>>(), [ALICE, BOB]);
        assert_eq!(totals[ALICE].debited, dec("15.5"));
        assert!(!totals[BOB].is_debited());
    }

    #[test]
    fn who_may_name_an_account_in_a_posting() {
        let alice = Principal::User(ALICE.to_string());
        let account = |owner: &str, system: bool| AccountFacts {
            account_id: BOB.to_string(),
            user_id: owner.to_string(),
            system,
            currency: "USD".to_string(),
            status: Status::Active,
        };
        let debit = AccountTotals { debited: dec("1"), currencies: vec!["USD".into()] };
        let credit = AccountTotals { debited: Decimal::ZERO, currencies: vec!["USD".into()] };
        let code = |result: Result<(), ApiError>| result.map_err(|err| err.code).err();

        assert_eq!(code(authorize_account(&alice, &account(ALICE, false), &debit)), None);
        assert_eq!(code(authorize_account(&alice, &account(BOB, false), &credit)), None);
        assert_eq!(code(authorize_account(&alice, &account(BOB, false), &debit)).as_deref(), Some("account_not_found"));
        let system = account(SYSTEM_USER_ID, true);
        assert_eq!(code(authorize_account(&alice, &system, &credit)).as_deref(), Some("account_not_found"));
        assert_eq!(code(authorize_account(&Principal::Admin, &system, &debit)), None);
        assert_eq!(code(authorize_account(&Principal::Admin, &account(BOB, false), &debit)), None);

        let euros = AccountTotals { currencies: vec!["EUR".into()], ..credit.clone() };
        assert_eq!(code(authorize_account(&alice, &account(BOB, false), &euros)).as_deref(), Some("currency_mismatch"));
        let frozen = AccountFacts { status: Status::Frozen, ..account(BOB, false) };
        assert_eq!(code(authorize_account(&alice, &frozen, &credit)).as_deref(), Some("account_not_active"));
        // Someone else's frozen account is still just not found when debited.
        assert_eq!(code(authorize_account(&alice, &frozen, &debit)).as_deref(), Some("account_not_found"));
    }

    #[test]
    fn uuids() {}

    #[test]
    fn administrators_act_by_role() {
        use AdminRole::{Ops, Platform, Risk};
        let code = |action: AdminAction, role| action.check(role).map_err(|err| (err.status, err.code)).err();
        assert_eq!(code(AdminAction::Freeze, Ops), None);
        assert_eq!(code(AdminAction::Freeze, Risk), None);
        for action in [AdminAction::ChangeLimits, AdminAction::Unfreeze, AdminAction::Close] {
            assert_eq!(code(action, Ops), Some((403, "role_not_allowed".to_string())), "{action:?}");
            assert_eq!(code(action, Risk), None, "{action:?}");
            assert_eq!(code(action, Platform), None, "{action:?}");
        }
        for role in [Ops, Risk] {
            assert_eq!(code(AdminAction::OpenSystemAccounts, role), Some((403, "platform_only".to_string())));
        }
        let refused = AdminAction::Unfreeze.check(Ops).unwrap_err();
        assert_eq!(refused.message, "unfreezing an account takes an admin key of role risk or platform");
        // The platform's key may do everything the others may.
        for action in [
            AdminAction::ChangeLimits,
            AdminAction::Freeze,
            AdminAction::Unfreeze,
            AdminAction::Close,
            AdminAction::OpenSystemAccounts,
        ] {
            assert!(action.roles().contains(&Platform), "{action:?}");
        }
    }

    #[test]
    fn an_account_closes_only_with_nothing_in_flight() {
        assert!(check_nothing_in_flight(ALICE, &[]).is_ok());
        let refused = check_nothing_in_flight(ALICE, &[BOB.to_string()]).unwrap_err();
        assert_eq!((refused.status, refused.code.as_str()), (409, "postings_in_flight"));
        assert!(refused.message.contains(BOB), "{}", refused.message);
    }

    #[test]
    fn the_fate_of_a_posting_long_in_flight() {
        use serde_json::json;
        let fate = |answer: Json| PostingFate::of(&answer);
        assert_eq!(fate(json!({ "exists": false, "status": null })), Some(PostingFate::NeverCommitted));
        assert_eq!(fate(json!({ "exists": true, "status": "PENDING" })), Some(PostingFate::Pending));
        assert_eq!(fate(json!({ "exists": true, "status": "SETTLED" })), Some(PostingFate::Applied));
        assert_eq!(fate(json!({ "exists": true, "status": "REVERSED" })), Some(PostingFate::Applied));
        // Nothing sure: kept for a later sweep.
        assert_eq!(fate(json!({ "exists": true, "status": "LOST" })), None);
        assert_eq!(fate(json!({ "status": "SETTLED" })), None);
        assert_eq!(fate(json!(null)), None);
        assert!(PostingFate::NeverCommitted.is_resolved() && PostingFate::Applied.is_resolved());
        assert!(!PostingFate::Pending.is_resolved());
    }
}
