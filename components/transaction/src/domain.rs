//! The transaction service's rules, free of any I/O so they are tested natively: what a valid
//! posting is (its entries, their balance per currency, their reservations), what a reversal
//! posts, which holds a posting asks for, who may reverse what, and the listing's parameters.

use micropay_sdk::cursor::Page;
use micropay_sdk::is_uuid;
use std::collections::{BTreeMap, HashSet};

use micropay_sdk::money::{self, Amount, Currency, Decimal};
use micropay_sdk::{AdminRole, ApiError, fields};
use serde::Deserialize;
use serde_json::Value as Json;

/// How many entries one posting may have: a debit and a credit at least, and a bound that
/// keeps a posting's unit of work (and its holds) small.
pub const MIN_ENTRIES: usize = 2;
pub const MAX_ENTRIES: usize = 100;

/// Size of the `description` and `reversal_reason` columns.
pub const TEXT_MAX: usize = 255;

/// How far behind the clock the ledger check's default cut-off lies: far beyond a posting's
/// deadline, so every posting created before it has committed or never will.
const DEFAULT_AS_OF_LAG_MICROS: i64 = 60_000_000;

/// Refuses (403 `platform_only`) an administrator whose admin key may not move money: only the
/// platform's (the treasury's) may deposit, withdraw, adjust or reverse; `ops` and `risk` keys
/// run and watch the platform, they do not pay.
pub fn check_treasury(role: AdminRole) -> Result<(), ApiError> {
    micropay_sdk::principal::require_admin_role(role, &[AdminRole::Platform], "moving money as an administrator")
}

/// Whether an entry takes from its account's balance (DEBIT) or adds to it (CREDIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryType {
    Debit,
    Credit,
}

impl EntryType {
    /// The type named exactly as stored (`DEBIT`, `CREDIT`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "DEBIT" => Some(Self::Debit),
            "CREDIT" => Some(Self::Credit),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debit => "DEBIT",
            Self::Credit => "CREDIT",
        }
    }

    /// The type that undoes this one, for a reversal.
    pub fn opposite(self) -> Self {
        match self {
            Self::Debit => Self::Credit,
            Self::Credit => Self::Debit,
        }
    }
}

/// What kind of posting a transaction is; it follows from the endpoint and the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionType {
    /// A user's posting through `POST /transactions`.
    Transfer,
    /// An administrator's posting through `POST /transactions`.
    Adjustment,
    /// Funds entering the platform: the currency's funding account pays an account.
    Deposit,
    /// Funds leaving the platform: an account pays the currency's funding account.
    Withdrawal,
    /// The mirror image of a settled transaction.
    Reversal,
}

impl TransactionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transfer => "TRANSFER",
            Self::Adjustment => "ADJUSTMENT",
            Self::Deposit => "DEPOSIT",
            Self::Withdrawal => "WITHDRAWAL",
            Self::Reversal => "REVERSAL",
        }
    }

    /// Whether the debited user accounts' transfer limits count this posting: money a user
    /// sends or takes out does; an administrator's corrections, deposits and reversals do not.
    pub fn counts_toward_limits(self) -> bool {
        matches!(self, Self::Transfer | Self::Withdrawal)
    }
}

/// One entry as a request names it. Every field is text so that a rule it breaks is a 422
/// naming the entry; a JSON number for the amount is still refused (400) as the wrong type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryRequest {
    pub account_id: String,
    pub entry_type: String,
    pub amount: String,
    pub currency: String,
    #[serde(default)]
    pub reservation_id: Option<String>,
}

impl From<micropay_sdk::contracts::Leg> for EntryRequest {
    fn from(leg: micropay_sdk::contracts::Leg) -> Self {
        Self {
            account_id: leg.account_id,
            entry_type: leg.entry_type,
            amount: leg.amount,
            currency: leg.currency,
            reservation_id: None,
        }
    }
}

/// One valid entry of a posting. Ids are lower case, as PostgreSQL prints them, so the same
/// account is always the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub account_id: String,
    pub entry_type: EntryType,
    pub amount: Amount,
    pub currency: Currency,
    /// The reservation a debit draws on (only ever on a DEBIT).
    pub reservation_id: Option<String>,
}

/// Checks each requested entry on its own (ids, type, amount, currency, reservation); the
/// posting as a whole is checked by [`validate_posting`].
pub fn entries(requests: Vec<EntryRequest>) -> Result<Vec<Entry>, ApiError> {
    requests.into_iter().enumerate().map(|(index, request)| entry(index, request)).collect()
}

fn entry(index: usize, request: EntryRequest) -> Result<Entry, ApiError> {
    let field = |name: &str| format!("entries[{index}].{name}");
    let account_id = fields::uuid(&field("account_id"), &request.account_id)?;
    let entry_type = EntryType::parse(&request.entry_type)
        .ok_or_else(|| ApiError::validation(format!("{}: must be DEBIT or CREDIT", field("entry_type"))))?;
    let amount = Amount::parse(&request.amount).map_err(|reason| money::invalid(&field("amount"), reason))?;
    let currency = Currency::parse(&request.currency).map_err(|reason| money::invalid(&field("currency"), reason))?;
    let reservation_id = match request.reservation_id {
        None => None,
        Some(_) if entry_type == EntryType::Credit => {
            return Err(ApiError::validation(format!(
                "{}: only a DEBIT entry draws on a reservation",
                field("reservation_id")
            )));
        }
        Some(id) => Some(fields::uuid(&field("reservation_id"), &id)?),
    };
    Ok(Entry { account_id, entry_type, amount, currency, reservation_id })
}

/// What a posting's row records of its entries: the first debit's currency and the sum of the
/// debits in that currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Total {
    pub currency: Currency,
    pub amount: Decimal,
}

/// 422 `unbalanced`.
fn unbalanced(message: impl Into<String>) -> ApiError {
    ApiError::new(422, "unbalanced", message)
}

/// Checks a posting as a whole, whoever built it (a request, a deposit, a reversal): 2 to 100
/// entries; at least one DEBIT and one CREDIT, and per currency the debits equal the credits
/// (422 `unbalanced`); sums that fit the ledger's columns; and one reservation at most per
/// debited account, since its debits are held together. Answers the posting's [`Total`].
pub fn validate_posting(entries: &[Entry]) -> Result<Total, ApiError> {
    if !(MIN_ENTRIES..=MAX_ENTRIES).contains(&entries.len()) {
        return Err(ApiError::validation(format!(
            "entries: a posting has {MIN_ENTRIES} to {MAX_ENTRIES} entries, not {}",
            entries.len()
        )));
    }
    let Some(first_debit) = entries.iter().find(|entry| entry.entry_type == EntryType::Debit) else {
        return Err(unbalanced("a posting needs at least one DEBIT entry"));
    };
    if !entries.iter().any(|entry| entry.entry_type == EntryType::Credit) {
        return Err(unbalanced("a posting needs at least one CREDIT entry"));
    }

    let mut sums: BTreeMap<&Currency, (Decimal, Decimal)> = BTreeMap::new();
    for entry in entries {
        let (debits, credits) = sums.entry(&entry.currency).or_default();
        match entry.entry_type {
            EntryType::Debit => *debits += entry.amount.value(),
            EntryType::Credit => *credits += entry.amount.value(),
        }
    }
    for (currency, (debits, credits)) in &sums {
        if debits != credits {
            return Err(unbalanced(format!(
                "entries in {currency} do not balance: debits {}, credits {}",
                money::format(*debits),
                money::format(*credits)
            )));
        }
        // A per-account hold is at most this sum, so checking it covers them too.
        Amount::new(*debits).map_err(|reason| money::invalid(&format!("entries in {currency}"), reason))?;
    }

    let mut reservations: BTreeMap<&str, &str> = BTreeMap::new();
    for entry in entries {
        let Some(reservation_id) = entry.reservation_id.as_deref() else { continue };
        let held = reservations.entry(&entry.account_id).or_insert(reservation_id);
        if *held != reservation_id {
            return Err(ApiError::validation(format!(
                "entries: the debits of account {} are held together and can draw on one reservation, \
                 not both {held} and {reservation_id}",
                entry.account_id
            )));
        }
    }

    let currency = first_debit.currency.clone();
    let amount = sums[&currency].0;
    Ok(Total { currency, amount })
}

/// The entries that undo `entries`: the same accounts, amounts and currencies, each DEBIT a
/// CREDIT and each CREDIT a DEBIT. Reservations are not carried over: a reversal's debits are
/// held afresh against the accounts' available balances.
pub fn mirror(entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .map(|entry| Entry { entry_type: entry.entry_type.opposite(), reservation_id: None, ..entry.clone() })
        .collect()
}

/// The two entries of a deposit (the currency's funding account pays `account_id`) or of a
/// withdrawal (`account_id` pays the funding account, which takes the money off the platform).
pub fn funding_entries(
    transaction_type: TransactionType,
    account_id: &str,
    funding_account_id: &str,
    amount: Amount,
    currency: &Currency,
) -> Vec<Entry> {
    let (debited, credited) = match transaction_type {
        TransactionType::Withdrawal => (account_id, funding_account_id),
        _ => (funding_account_id, account_id),
    };
    let entry = |account_id: &str, entry_type| Entry {
        account_id: account_id.to_string(),
        entry_type,
        amount,
        currency: currency.clone(),
        reservation_id: None,
    };
    vec![entry(debited, EntryType::Debit), entry(credited, EntryType::Credit)]
}

/// The funds a posting holds on one account before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub account_id: String,
    pub currency: Currency,
    pub amount: Decimal,
    pub reservation_id: Option<String>,
}

/// The holds a posting needs: one per debited non-system account, for the sum of its debits,
/// drawing on the reservation its debits name (one at most, see [`validate_posting`]). System
/// accounts may go negative and are never held, so a reservation named on one is a 422.
/// Ordered by account, the order the balance service locks them in.
pub fn holds(entries: &[Entry], is_system: impl Fn(&str) -> bool) -> Result<Vec<Hold>, ApiError> {
    let mut holds: BTreeMap<(&str, &Currency), Hold> = BTreeMap::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.entry_type != EntryType::Debit {
            continue;
        }
        if is_system(&entry.account_id) {
            if entry.reservation_id.is_some() {
                return Err(ApiError::validation(format!(
                    "entries[{index}].reservation_id: account {} is a system account, which has no reservations",
                    entry.account_id
                )));
            }
            continue;
        }
        let hold = holds.entry((&entry.account_id, &entry.currency)).or_insert_with(|| Hold {
            account_id: entry.account_id.clone(),
            currency: entry.currency.clone(),
            amount: Decimal::ZERO,
            reservation_id: None,
        });
        hold.amount += entry.amount.value();
        if hold.reservation_id.is_none() {
            hold.reservation_id.clone_from(&entry.reservation_id);
        }
    }
    Ok(holds.into_values().collect())
}

/// The accounts the account service's `/internal/authorize` answered as system accounts
/// (`{"accounts": [{"account_id", "system"}, ...]}`); the error describes a malformed answer.
pub fn system_accounts(authorized: &Json) -> Result<HashSet<String>, String> {
    let accounts = authorized["accounts"].as_array().ok_or("the answer has no accounts list")?;
    let mut system = HashSet::new();
    for account in accounts {
        let id = account["account_id"].as_str().ok_or("an account has no account_id")?;
        let is_system = account["system"].as_bool().ok_or("an account has no system flag")?;
        if is_system {
            system.insert(id.to_ascii_lowercase());
        }
    }
    Ok(system)
}

/// Refuses to reverse what cannot be reversed: a reversal itself (409 `not_reversible`), a
/// transaction already reversed (409 `already_reversed`) or not yet settled, whose entries may
/// not all be in the balances yet (409 `not_settled`).
pub fn check_reversible(transaction_type: &str, status: &str, has_reversal: bool) -> Result<(), ApiError> {
    if transaction_type == TransactionType::Reversal.as_str() {
        return Err(ApiError::conflict("not_reversible", "a reversal cannot itself be reversed"));
    }
    if has_reversal || status == "REVERSED" {
        return Err(ApiError::conflict("already_reversed", "the transaction has already been reversed"));
    }
    if status != "SETTLED" {
        return Err(ApiError::conflict("not_settled", "the transaction is not settled yet; try again shortly"));
    }
    Ok(())
}

/// The reason of a reversal: required, trimmed, at most [`TEXT_MAX`] characters.
pub fn reason(text: &str) -> Result<String, ApiError> {
    fields::text("reason", Some(text), TEXT_MAX)?.ok_or_else(|| ApiError::validation("reason: must not be empty"))
}

/// The transaction a `balance.transaction_applied` event names, when its data is
/// `{"transaction_id": "<uuid>", ...}`.
pub fn applied_transaction_id(data: &str) -> Option<String> {
    let data: Json = serde_json::from_str(data).ok()?;
    data["transaction_id"].as_str().filter(|id| is_uuid(id)).map(str::to_ascii_lowercase)
}

/// A listing request: its page, and an account whose transactions only are wanted.
#[derive(Debug, PartialEq, Eq)]
pub struct ListQuery {
    pub page: Page,
    pub account_id: Option<String>,
}

/// Reads a listing request from its query parameters (`param` looks one up by name); anything
/// malformed is a 400 naming the parameter.
pub fn list_query(param: impl Fn(&str) -> Option<String>) -> Result<ListQuery, ApiError> {
    let page = Page::from_query(&param)?;
    let account_id = match param("account_id").filter(|value| !value.is_empty()) {
        None => None,
        Some(id) if is_uuid(&id) => Some(id.to_ascii_lowercase()),
        Some(_) => return Err(ApiError::bad_request("invalid_account_id", "account_id must be a UUID")),
    };
    Ok(ListQuery { page, account_id })
}

/// The ledger check's cut-off in microseconds: a minute before `now` when none is given, `now`
/// for `now`, otherwise an RFC 3339 timestamp (400 `invalid_as_of`).
pub fn as_of(param: Option<&str>, now: i64) -> Result<i64, ApiError> {
    let text = match param.map(str::trim) {
        None | Some("") => return Ok(now - DEFAULT_AS_OF_LAG_MICROS),
        Some("now") => return Ok(now),
        Some(text) => text,
    };
    micropay_sdk::time::parse_rfc3339(text).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_as_of",
            "as_of must be `now` or an RFC 3339 timestamp such as 2026-01-31T12:00:00Z (encode + as %2B)",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use micropay_sdk::cursor::Cursor;

    use super::*;

    const ALICE: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const BOB: &str = "1b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const FUNDING: &str = "2b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const RESERVATION: &str = "3b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const OTHER_RESERVATION: &str = "4b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

    #[test]
    fn only_the_treasury_moves_money_as_an_administrator() {
        assert!(check_treasury(AdminRole::Platform).is_ok());
        for role in [AdminRole::Ops, AdminRole::Risk] {
            let refused = check_treasury(role).unwrap_err();
            assert_eq!((refused.status, refused.code.as_str()), (403, "platform_only"), "{role:?}");
        }
    }

    fn request(account_id: &str, entry_type: &str, amount: &str, currency: &str) -> EntryRequest {
        EntryRequest {
            account_id: account_id.into(),
            entry_type: entry_type.into(),
            amount: amount.into(),
            currency: currency.into(),
            reservation_id: None,
        }
    }

    fn entry(account_id: &str, entry_type: EntryType, amount: &str, currency: &str) -> Entry {
        Entry {
            account_id: account_id.into(),
            entry_type,
            amount: Amount::parse(amount).unwrap(),
            currency: Currency::parse(currency).unwrap(),
            reservation_id: None,
        }
    }

    fn debit(account_id: &str, amount: &str, currency: &str) -> Entry {
        entry(account_id, EntryType::Debit, amount, currency)
    }

    fn credit(account_id: &str, amount: &str, currency: &str) -> Entry {
        entry(account_id, EntryType::Credit, amount, currency)
    }

    fn reserved(mut entry: Entry, reservation_id: &str) -> Entry {
        entry.reservation_id = Some(reservation_id.into());
        entry
    }

    fn refusal<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (u16, String, String) {
        let err = result.expect_err("refused");
        (err.status, err.code, err.message)
    }

    #[test]
    fn requested_entries_are_checked_field_by_field() {
        let mut upper = request(&ALICE.to_uppercase(), "DEBIT", "12.5", "USD");
        upper.reservation_id = Some(RESERVATION.to_uppercase());
        let entries = entries(vec![upper, request(BOB, "CREDIT", "12.5000", "USD")]).unwrap();
        assert_eq!(entries[0], reserved(debit(ALICE, "12.5", "USD"), RESERVATION));
        assert_eq!(entries[1], credit(BOB, "12.5", "USD"));

        let cases = [
            (request("not-a-uuid", "DEBIT", "1", "USD"), "entries[0].account_id"),
            (request(ALICE, "debit", "1", "USD"), "entries[0].entry_type"),
            (request(ALICE, "HOLD", "1", "USD"), "entries[0].entry_type"),
            (request(ALICE, "DEBIT", "0", "USD"), "entries[0].amount"),
            (request(ALICE, "DEBIT", "-1", "USD"), "entries[0].amount"),
            (request(ALICE, "DEBIT", "1.00001", "USD"), "entries[0].amount"),
            (request(ALICE, "DEBIT", "ten", "USD"), "entries[0].amount"),
            (request(ALICE, "DEBIT", "1", "usd"), "entries[0].currency"),
            (request(ALICE, "DEBIT", "1", "ABC"), "entries[0].currency"),
        ];
        for (bad, field) in cases {
            let (status, code, message) = refusal(super::entries(vec![bad]));
            assert_eq!((status, code.as_str()), (422, "validation_failed"), "{message}");
            assert!(message.starts_with(field), "{message}");
        }

        let mut on_credit = request(BOB, "CREDIT", "1", "USD");
        on_credit.reservation_id = Some(RESERVATION.into());
        let (status, _, message) = refusal(super::entries(vec![request(ALICE, "DEBIT", "1", "USD"), on_credit]));
        assert_eq!(status, 422);
        assert!(message.starts_with("entries[1].reservation_id: only a DEBIT"), "{message}");

        let mut malformed = request(ALICE, "DEBIT", "1", "USD");
        malformed.reservation_id = Some("r-1".into());
        let (status, _, message) = refusal(super::entries(vec![malformed]));
        assert_eq!(status, 422);
        assert!(message.starts_with("entries[0].reservation_id: must be a UUID"), "{message}");
    }

    #[test]
    fn entry_requests_refuse_unknown_fields_and_numbers() {
        let parsed: EntryRequest = serde_json::from_value(
            json!({ "account_id": ALICE, "entry_type": "DEBIT", "amount": "1", "currency": "USD", "reservation_id": null }),
        )
        .unwrap();
        assert_eq!(parsed.reservation_id, None);
        let unknown =
            json!({ "account_id": ALICE, "entry_type": "DEBIT", "amount": "1", "currency": "USD", "memo": "x" });
        assert!(serde_json::from_value::<EntryRequest>(unknown).is_err());
        let number = json!({ "account_id": ALICE, "entry_type": "DEBIT", "amount": 1.5, "currency": "USD" });
        assert!(serde_json::from_value::<EntryRequest>(number).is_err());
    }

    #[test]
    fn a_balanced_posting_totals_its_first_debits_currency() {
        let total = validate_posting(&[debit(ALICE, "10", "USD"), credit(BOB, "10", "USD")]).unwrap();
        assert_eq!(total, Total { currency: Currency::parse("USD").unwrap(), amount: Decimal::new(10, 0) });

        // Split debits and credits in one currency.
        let total = validate_posting(&[
            credit(BOB, "7.5", "USD"),
            debit(ALICE, "4", "USD"),
            debit(FUNDING, "6", "USD"),
            credit(FUNDING, "2.5", "USD"),
        ])
        .unwrap();
        assert_eq!(total.amount, Decimal::new(10, 0));
        assert_eq!(total.currency.code(), "USD");
    }

    #[test]
    fn mixed_currencies_balance_per_currency() {
        let entries = [
            credit(BOB, "9.2", "EUR"),
            debit(ALICE, "10", "USD"),
            credit(FUNDING, "10", "USD"),
            debit(FUNDING, "9.2", "EUR"),
        ];
        let total = validate_posting(&entries).unwrap();
        // The first debit is in USD: the row carries the USD debits.
        assert_eq!(total, Total { currency: Currency::parse("USD").unwrap(), amount: Decimal::new(10, 0) });

        // Equal grand totals are not enough: each currency must balance on its own.
        let entries =
            [debit(ALICE, "10", "USD"), credit(BOB, "10", "EUR"), debit(BOB, "10", "EUR"), credit(ALICE, "5", "USD")];
        let (status, code, message) = refusal(validate_posting(&entries));
        assert_eq!((status, code.as_str()), (422, "unbalanced"));
        assert_eq!(message, "entries in USD do not balance: debits 10.0000, credits 5.0000");

        let crossed = [debit(ALICE, "10", "USD"), credit(BOB, "10", "EUR")];
        let (status, code, message) = refusal(validate_posting(&crossed));
        assert_eq!((status, code.as_str()), (422, "unbalanced"));
        assert_eq!(message, "entries in EUR do not balance: debits 0.0000, credits 10.0000");
    }

    #[test]
    fn a_posting_needs_both_sides_and_a_bounded_size() {
        let (status, code, _) = refusal(validate_posting(&[credit(ALICE, "1", "USD"), credit(BOB, "1", "USD")]));
        assert_eq!((status, code.as_str()), (422, "unbalanced"));
        let (status, code, _) = refusal(validate_posting(&[debit(ALICE, "1", "USD"), debit(BOB, "1", "USD")]));
        assert_eq!((status, code.as_str()), (422, "unbalanced"));

        for count in [0, 1, 101] {
            let entries: Vec<Entry> = (0..count).map(|_| debit(ALICE, "1", "USD")).collect();
            let (status, code, message) = refusal(validate_posting(&entries));
            assert_eq!((status, code.as_str()), (422, "validation_failed"), "{message}");
            assert!(message.contains(&format!("not {count}")), "{message}");
        }

        let mut hundred: Vec<Entry> = (0..50).map(|_| debit(ALICE, "1", "USD")).collect();
        hundred.extend((0..50).map(|_| credit(BOB, "1", "USD")));
        assert_eq!(validate_posting(&hundred).unwrap().amount, Decimal::new(50, 0));
    }

    #[test]
    fn sums_must_fit_the_ledgers_columns() {
        let max = "999999999999999.9999";
        let entries =
            [debit(ALICE, max, "USD"), debit(FUNDING, "1", "USD"), credit(BOB, max, "USD"), credit(BOB, "1", "USD")];
        let (status, code, message) = refusal(validate_posting(&entries));
        assert_eq!((status, code.as_str()), (422, "validation_failed"));
        assert!(message.contains("too large"), "{message}");
    }

    #[test]
    fn an_accounts_debits_draw_on_one_reservation() {
        let entries = [
            reserved(debit(ALICE, "4", "USD"), RESERVATION),
            debit(ALICE, "6", "USD"),
            reserved(debit(FUNDING, "1", "USD"), OTHER_RESERVATION),
            credit(BOB, "11", "USD"),
        ];
        assert!(validate_posting(&entries).is_ok());

        let entries = [
            reserved(debit(ALICE, "4", "USD"), RESERVATION),
            reserved(debit(ALICE, "6", "USD"), OTHER_RESERVATION),
            credit(BOB, "10", "USD"),
        ];
        let (status, code, message) = refusal(validate_posting(&entries));
        assert_eq!((status, code.as_str()), (422, "validation_failed"));
        assert!(message.contains(RESERVATION) && message.contains(OTHER_RESERVATION), "{message}");
    }

    #[test]
    fn a_reversal_mirrors_every_entry() {
        let original = [reserved(debit(ALICE, "10", "USD"), RESERVATION), credit(BOB, "10", "USD")];
        let mirrored = mirror(&original);
        assert_eq!(mirrored, vec![credit(ALICE, "10", "USD"), debit(BOB, "10", "USD")]);
        assert_eq!(validate_posting(&mirrored).unwrap().amount, Decimal::new(10, 0));
        assert_eq!(mirror(&mirrored), vec![debit(ALICE, "10", "USD"), credit(BOB, "10", "USD")]);
    }

    #[test]
    fn deposits_and_withdrawals_move_money_through_the_funding_account() {
        let usd = Currency::parse("USD").unwrap();
        let amount = Amount::parse("25").unwrap();
        let deposit = funding_entries(TransactionType::Deposit, ALICE, FUNDING, amount, &usd);
        assert_eq!(deposit, vec![debit(FUNDING, "25", "USD"), credit(ALICE, "25", "USD")]);
        let withdrawal = funding_entries(TransactionType::Withdrawal, ALICE, FUNDING, amount, &usd);
        assert_eq!(withdrawal, vec![debit(ALICE, "25", "USD"), credit(FUNDING, "25", "USD")]);
        assert!(validate_posting(&deposit).is_ok() && validate_posting(&withdrawal).is_ok());
    }

    #[test]
    fn debits_of_user_accounts_are_held_per_account() {
        let entries = [
            debit(BOB, "2", "USD"),
            debit(ALICE, "4", "USD"),
            reserved(debit(ALICE, "6", "USD"), RESERVATION),
            debit(FUNDING, "3", "USD"),
            credit(BOB, "15", "USD"),
        ];
        let holds = holds(&entries, |id| id == FUNDING).unwrap();
        assert_eq!(
            holds,
            vec![
                Hold {
                    account_id: ALICE.into(),
                    currency: Currency::parse("USD").unwrap(),
                    amount: Decimal::new(10, 0),
                    reservation_id: Some(RESERVATION.into()),
                },
                Hold {
                    account_id: BOB.into(),
                    currency: Currency::parse("USD").unwrap(),
                    amount: Decimal::new(2, 0),
                    reservation_id: None,
                },
            ]
        );

        // A deposit debits only the funding account: nothing to hold.
        assert!(
            super::holds(&[debit(FUNDING, "5", "USD"), credit(BOB, "5", "USD")], |id| id == FUNDING)
                .unwrap()
                .is_empty()
        );

        let on_system = [reserved(debit(FUNDING, "5", "USD"), RESERVATION), credit(BOB, "5", "USD")];
        let (status, _, message) = refusal(super::holds(&on_system, |id| id == FUNDING));
        assert_eq!(status, 422);
        assert!(message.starts_with("entries[0].reservation_id"), "{message}");
    }

    #[test]
    fn system_accounts_come_from_the_authorization() {
        let answer = json!({ "accounts": [
            { "account_id": ALICE, "user_id": BOB, "currency": "USD", "system": false },
            { "account_id": FUNDING.to_uppercase(), "user_id": "00000000-0000-0000-0000-000000000000", "currency": "USD", "system": true },
        ]});
        assert_eq!(system_accounts(&answer).unwrap(), HashSet::from([FUNDING.to_string()]));
        assert!(system_accounts(&json!({})).is_err());
        assert!(system_accounts(&json!({ "accounts": [{ "account_id": ALICE }] })).is_err());
    }

    #[test]
    fn transaction_types() {
        assert!(TransactionType::Transfer.counts_toward_limits());
        assert!(TransactionType::Withdrawal.counts_toward_limits());
        assert!(!TransactionType::Adjustment.counts_toward_limits());
        assert!(!TransactionType::Deposit.counts_toward_limits());
        assert!(!TransactionType::Reversal.counts_toward_limits());
        assert_eq!(EntryType::parse("DEBIT").map(EntryType::opposite), Some(EntryType::Credit));
        assert_eq!(EntryType::Credit.as_str(), "CREDIT");
    }

    #[test]
    fn only_settled_transactions_are_reversible() {
        assert!(check_reversible("TRANSFER", "SETTLED", false).is_ok());
        assert!(check_reversible("DEPOSIT", "SETTLED", false).is_ok());
        let code = |result: Result<(), ApiError>| refusal(result).1;
        assert_eq!(code(check_reversible("REVERSAL", "SETTLED", false)), "not_reversible");
        assert_eq!(code(check_reversible("REVERSAL", "PENDING", false)), "not_reversible");
        assert_eq!(code(check_reversible("TRANSFER", "REVERSED", true)), "already_reversed");
        assert_eq!(code(check_reversible("TRANSFER", "SETTLED", true)), "already_reversed");
        assert_eq!(code(check_reversible("TRANSFER", "REVERSED", false)), "already_reversed");
        assert_eq!(code(check_reversible("TRANSFER", "PENDING", false)), "not_settled");
        assert_eq!(refusal(check_reversible("TRANSFER", "PENDING", false)).0, 409);
    }

    #[test]
    fn texts() {
        assert_eq!(reason("  chargeback  ").unwrap(), "chargeback");
        assert_eq!(refusal(reason("   ")).0, 422);
        assert_eq!(refusal(reason(&"x".repeat(256))).0, 422);
        assert!(reason(&"é".repeat(255)).is_ok());
        assert_eq!(refusal(reason("a\0b")).0, 422);
        assert_eq!(fields::text("description", None, TEXT_MAX).unwrap(), None);
        assert_eq!(fields::text("description", Some(" "), TEXT_MAX).unwrap(), None);
        assert_eq!(fields::text("description", Some("rent"), TEXT_MAX).unwrap().as_deref(), Some("rent"));
    }

    #[test]
    fn uuids() {
        assert_eq!(fields::uuid("payment_id", &ALICE.to_uppercase()).unwrap(), ALICE);
        let (status, _, message) = refusal(fields::uuid("payment_id", "42"));
        assert_eq!((status, message.as_str()), (422, "payment_id: must be a UUID"));
    }

    #[test]
    fn applied_events_name_their_transaction() {
        let data = json!({ "transaction_id": ALICE.to_uppercase(), "extra": 1 }).to_string();
        assert_eq!(applied_transaction_id(&data).as_deref(), Some(ALICE));
        assert_eq!(applied_transaction_id(r#"{"transaction_id":"x"}"#), None);
        assert_eq!(applied_transaction_id("{}"), None);
        assert_eq!(applied_transaction_id("not json"), None);
    }

    fn query(pairs: &[(&str, &str)]) -> Result<ListQuery, ApiError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        list_query(|name| map.get(name).cloned())
    }

    #[test]
    fn listing_queries() {
        let page = |limit, after| Page { limit, after };
        assert_eq!(query(&[]).unwrap(), ListQuery { page: page(50, None), account_id: None });
        let cursor = Cursor { time: 1_795_000_000_123_456, id: ALICE.into() };
        let q = query(&[("limit", "200"), ("cursor", &cursor.encode()), ("account_id", &BOB.to_uppercase())]).unwrap();
        assert_eq!(q, ListQuery { page: page(200, Some(cursor)), account_id: Some(BOB.into()) });
        assert_eq!(query(&[("limit", ""), ("cursor", "")]).unwrap().page.limit, 50);

        let code = |pairs: &[(&str, &str)]| {
            let (status, code, _) = refusal(query(pairs));
            assert_eq!(status, 400);
            code
        };
        for limit in ["0", "201", "-1", "ten", "1.5"] {
            assert_eq!(code(&[("limit", limit)]), "invalid_limit");
        }
        assert_eq!(code(&[("cursor", "abc")]), "invalid_cursor");
        assert_eq!(code(&[("account_id", "abc")]), "invalid_account_id");
    }

    #[test]
    fn ledger_cut_offs() {
        let now = 1_795_000_000_000_000;
        assert_eq!(as_of(None, now).unwrap(), now - 60_000_000);
        assert_eq!(as_of(Some(""), now).unwrap(), now - 60_000_000);
        assert_eq!(as_of(Some("now"), now).unwrap(), now);
        assert_eq!(as_of(Some("2026-01-01T00:00:00Z"), now).unwrap(), 1_767_225_600_000_000);
        // An unencoded `+` arrives as a space.
        assert_eq!(as_of(Some("2026-01-01T01:00:00 01:00"), now).unwrap(), 1_767_225_600_000_000);
        for bad in ["yesterday", "2026-01-01", "NOW"] {
            let (status, code, _) = refusal(as_of(Some(bad), now));
            assert_eq!((status, code.as_str()), (400, "invalid_as_of"));
        }
    }
}
