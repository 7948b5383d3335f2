//! The ledger check's rules: how the transaction side (summed in SQL by
//! [`crate::sql::ledger_side`]), the balance side (`balance /internal/ledger`) and the account
//! service's list of accounts are compared, and the report they make. Free of I/O, so the
//! comparisons are tested natively.

use std::collections::{BTreeMap, BTreeSet};

use micropay_sdk::money::{self, Decimal};
use micropay_sdk::time::rfc3339;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value as Json, json};

/// How long before the cut-off a posting may still be `PENDING` without being reported: its
/// `transaction.posted` is normally applied within seconds, and the balance service's last
/// retry (10 attempts, backing off from 200 ms) comes about 80 s after the first. A posting
/// pending this long is stuck: its event is in the dead letters, or the bus is not delivering.
pub const PENDING_TOO_LONG_MICROS: i64 = 5 * 60 * 1_000_000;

/// The most postings pending too long the report names one by one (the rest are counted).
pub const PENDING_TOO_LONG_LISTED: i64 = 100;

/// One account's entries in one currency as one side counts them: how many, and their net
/// effect on the balance (credits − debits).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountSum {
    #[serde(deserialize_with = "lower_case")]
    pub account_id: String,
    pub currency: String,
    pub entries: i64,
    #[serde(deserialize_with = "decimal_text")]
    pub net: Decimal,
}

/// A transaction of the ledger short of a DEBIT or a CREDIT entry (or of both).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OneSided {
    pub transaction_id: String,
    pub debit_entries: i64,
    pub credit_entries: i64,
}

/// A transaction whose entries in one currency do not balance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Unbalanced {
    pub transaction_id: String,
    pub currency: String,
    #[serde(deserialize_with = "decimal_text")]
    pub debits: Decimal,
    #[serde(deserialize_with = "decimal_text")]
    pub credits: Decimal,
}

/// A posting still `PENDING` that was created [`PENDING_TOO_LONG_MICROS`] or more before the
/// cut-off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StalePending {
    pub transaction_id: String,
    /// Microseconds since the epoch.
    pub created_at: i64,
}

/// The transaction side of the check, over the transactions created before the cut-off, all
/// read in one statement (one snapshot), so the pending ones left out of `accounts` are exactly
/// the ones the balance side is told to leave out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TransactionSide {
    pub transactions_checked: i64,
    /// The transactions still `PENDING`: their balance events may be in flight.
    pub pending: Vec<String>,
    /// How many of them were created [`PENDING_TOO_LONG_MICROS`] or more before the cut-off,
    /// and the oldest of those (at most [`PENDING_TOO_LONG_LISTED`]).
    pub stale_pending_count: i64,
    pub stale_pending: Vec<StalePending>,
    pub one_sided: Vec<OneSided>,
    pub unbalanced: Vec<Unbalanced>,
    /// Per account and currency: the entries of the transactions not pending (`entries`,
    /// `net`), and a row with zero entries for an account only pending transactions name, so
    /// that every account the ledger names is checked against the account service.
    pub accounts: Vec<AccountSum>,
}

/// The sum of every balance in a currency, as the balance service computes it (zero when the
/// ledger is whole).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CurrencySum {
    pub currency: String,
    #[serde(deserialize_with = "decimal_text")]
    pub sum: Decimal,
}

/// Something the check found wrong: a kind from a fixed list and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: String,
    pub detail: String,
}

impl Problem {
    fn new(kind: &str, detail: String) -> Self {
        Self { kind: kind.to_string(), detail }
    }
}

/// The balance service's answer to `POST /internal/ledger`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BalanceSide {
    pub accounts: Vec<AccountSum>,
    pub currencies: Vec<CurrencySum>,
    pub problems: Vec<Problem>,
}

/// An account as the account service lists it; only what the check needs.
#[derive(Deserialize)]
struct KnownAccount {
    #[serde(deserialize_with = "lower_case")]
    account_id: String,
    currency: String,
}

#[derive(Deserialize)]
struct AccountList {
    accounts: Vec<KnownAccount>,
}

/// Reads a decimal written as JSON text (`"-12.5000"`); a JSON number is refused, since it
/// would already have passed through a float.
fn decimal_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse::<Decimal>().map_err(|_| serde::de::Error::custom(format!("{text:?} is not a decimal")))
}

/// Reads an id lower-cased, as PostgreSQL prints UUIDs, so both sides name an account alike.
fn lower_case<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(String::deserialize(deserializer)?.to_ascii_lowercase())
}

/// The transaction side from the `side` document of [`crate::sql::ledger_side`].
pub fn transaction_side(side: Json) -> Result<TransactionSide, String> {
    serde_json::from_value(side).map_err(|err| format!("the ledger's own sums are malformed: {err}"))
}

/// The balance side from its answer.
pub fn balance_side(answer: Json) -> Result<BalanceSide, String> {
    serde_json::from_value(answer).map_err(|err| format!("balance /internal/ledger answered unexpectedly: {err}"))
}

/// Every account the account service knows, with its currency, from its `{"accounts": [...]}`
/// answers.
pub fn known_accounts(answers: Vec<Json>) -> Result<BTreeMap<String, String>, String> {
    let mut known = BTreeMap::new();
    for answer in answers {
        let list: AccountList =
            serde_json::from_value(answer).map_err(|err| format!("account listed accounts unexpectedly: {err}"))?;
        known.extend(list.accounts.into_iter().map(|account| (account.account_id, account.currency)));
    }
    Ok(known)
}

/// Step 1: every transaction has a DEBIT and a CREDIT and balances per currency.
pub fn unbalanced_problems(side: &TransactionSide) -> Vec<Problem> {
    let one_sided = side.one_sided.iter().map(|t| {
        Problem::new(
            "transaction_unbalanced",
            format!(
                "transaction {} has {} DEBIT and {} CREDIT entries; it needs at least one of each",
                t.transaction_id, t.debit_entries, t.credit_entries
            ),
        )
    });
    let unbalanced = side.unbalanced.iter().map(|t| {
        Problem::new(
            "transaction_unbalanced",
            format!(
                "transaction {} does not balance in {}: debits {}, credits {}",
                t.transaction_id,
                t.currency,
                money::format(t.debits),
                money::format(t.credits)
            ),
        )
    });
    one_sided.chain(unbalanced).collect()
}

/// Step 5: no posting stays `PENDING` [`PENDING_TOO_LONG_MICROS`] or longer before the cut-off
/// (its balance events never came: the bus is stuck, or its `transaction.posted` was set aside
/// in the dead letters), one problem per posting named and one for the rest.
pub fn pending_problems(side: &TransactionSide) -> Vec<Problem> {
    let minutes = PENDING_TOO_LONG_MICROS / 60_000_000;
    let mut problems: Vec<Problem> = side
        .stale_pending
        .iter()
        .map(|posting| {
            Problem::new(
                "posting_pending_too_long",
                format!(
                    "transaction {} has been PENDING since {}, {minutes} minutes or more before the cut-off: \
                     its balance events have not been written",
                    posting.transaction_id,
                    rfc3339(posting.created_at)
                ),
            )
        })
        .collect();
    let unnamed = side.stale_pending_count - side.stale_pending.len() as i64;
    if unnamed > 0 {
        problems.push(Problem::new(
            "posting_pending_too_long",
            format!("{unnamed} more transactions have been PENDING as long"),
        ));
    }
    problems
}

/// Step 3: account by account (and currency), the entries of the ledger against the balance
/// events. More entries on the ledger's side, or as many with another net, means an entry
/// whose balance event is missing; more events means a balance event without its entry, as
/// does an account only the balance side knows. Answers how many accounts were compared, and
/// the differences in account order.
pub fn compare(ours: &[AccountSum], theirs: &[AccountSum]) -> (usize, Vec<Problem>) {
    type Side = (i64, Decimal);
    let mut sides: BTreeMap<(&str, &str), (Side, Side)> = BTreeMap::new();
    for sum in ours {
        let (our, _) = sides.entry((&sum.account_id, &sum.currency)).or_default();
        *our = (our.0 + sum.entries, our.1 + sum.net);
    }
    for sum in theirs {
        let (_, their) = sides.entry((&sum.account_id, &sum.currency)).or_default();
        *their = (their.0 + sum.entries, their.1 + sum.net);
    }

    let accounts: BTreeSet<&str> = sides.keys().map(|(account_id, _)| *account_id).collect();
    let problems = sides
        .iter()
        .filter(|(_, (our, their))| our != their)
        .map(|((account_id, currency), (our, their))| {
            let kind = if our.0 < their.0 { "balance_event_without_entry" } else { "entry_without_balance_event" };
            let detail = format!(
                "account {account_id} ({currency}): the ledger has {} entries netting {}, the balances {} events netting {}",
                our.0,
                money::format(our.1),
                their.0,
                money::format(their.1)
            );
            Problem::new(kind, detail)
        })
        .collect();
    (accounts.len(), problems)
}

/// Step 4: every account the ledger's entries name exists, in the entries' currency.
pub fn account_problems(ours: &[AccountSum], known: &BTreeMap<String, String>) -> Vec<Problem> {
    ours.iter()
        .filter_map(|sum| match known.get(&sum.account_id) {
            None => Some(Problem::new(
                "unknown_account",
                format!(
                    "entries in {} name account {}, which the account service does not know",
                    sum.currency, sum.account_id
                ),
            )),
            Some(currency) if *currency != sum.currency => Some(Problem::new(
                "currency_mismatch",
                format!(
                    "entries name account {} in {}, but the account is in {currency}",
                    sum.account_id, sum.currency
                ),
            )),
            Some(_) => None,
        })
        .collect()
}

/// The report of `POST /ledger/check`: every problem of the three checks and of the balance
/// side's own, `ok` when there is none. `as_of` is already RFC 3339.
pub fn report(as_of: &str, ours: &TransactionSide, theirs: &BalanceSide, known: &BTreeMap<String, String>) -> Json {
    let (accounts_checked, differences) = compare(&ours.accounts, &theirs.accounts);
    let mut problems = unbalanced_problems(ours);
    problems.extend(pending_problems(ours));
    problems.extend(differences);
    problems.extend(account_problems(&ours.accounts, known));
    problems.extend(theirs.problems.iter().cloned());
    let currencies: Vec<Json> = theirs
        .currencies
        .iter()
        .map(|sum| json!({ "currency": sum.currency, "sum": money::format(sum.sum) }))
        .collect();
    json!({
        "as_of": as_of,
        "ok": problems.is_empty(),
        "transactions_checked": ours.transactions_checked,
        "accounts_checked": accounts_checked,
        "in_flight": ours.pending.len(),
        "currencies": currencies,
        "problems": problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const BOB: &str = "1b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const FUNDING: &str = "2b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const TRANSACTION: &str = "5f0c1c9e-8a55-4c55-9d86-1f2a3b4c5d6e";

    fn sum(account_id: &str, currency: &str, entries: i64, net: &str) -> AccountSum {
        AccountSum { account_id: account_id.into(), currency: currency.into(), entries, net: net.parse().unwrap() }
    }

    fn kinds(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|problem| problem.kind.as_str()).collect()
    }

    fn whole_ledger() -> (TransactionSide, BalanceSide, BTreeMap<String, String>) {
        let accounts = vec![sum(ALICE, "USD", 2, "15.0000"), sum(FUNDING, "USD", 1, "-15.0000")];
        let ours = TransactionSide {
            transactions_checked: 3,
            pending: vec![TRANSACTION.into()],
            stale_pending_count: 0,
            stale_pending: Vec::new(),
            one_sided: Vec::new(),
            unbalanced: Vec::new(),
            accounts: accounts.iter().cloned().chain([sum(BOB, "USD", 0, "0")]).collect(),
        };
        let theirs = BalanceSide {
            accounts,
            currencies: vec![CurrencySum { currency: "USD".into(), sum: Decimal::ZERO }],
            problems: Vec::new(),
        };
        let known = [(ALICE, "USD"), (BOB, "USD"), (FUNDING, "USD")]
            .into_iter()
            .map(|(id, currency)| (id.to_string(), currency.to_string()))
            .collect();
        (ours, theirs, known)
    }

    #[test]
    fn a_whole_ledger_reports_ok() {
        let (ours, theirs, known) = whole_ledger();
        let report = report("2026-01-01T00:00:00.000000Z", &ours, &theirs, &known);
        assert_eq!(
            report,
            json!({
                "as_of": "2026-01-01T00:00:00.000000Z",
                "ok": true,
                "transactions_checked": 3,
                "accounts_checked": 3,
                "in_flight": 1,
                "currencies": [{ "currency": "USD", "sum": "0.0000" }],
                "problems": [],
            })
        );
    }

    #[test]
    fn sides_are_compared_account_by_account() {
        let ours = [
            sum(ALICE, "USD", 2, "15"),    // one event missing
            sum(BOB, "USD", 1, "5"),       // as many, another net
            sum(FUNDING, "USD", 3, "-20"), // one entry missing
            sum(FUNDING, "EUR", 0, "0"),   // only pending entries: nothing to compare
        ];
        let theirs = [
            sum(ALICE, "USD", 1, "10"),
            sum(BOB, "USD", 1, "4"),
            sum(FUNDING, "USD", 4, "-25"),
            sum("9b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "USD", 1, "1"), // only the balances know it
        ];
        let (accounts_checked, problems) = compare(&ours, &theirs);
        assert_eq!(accounts_checked, 4);
        assert_eq!(
            kinds(&problems),
            vec![
                "entry_without_balance_event",
                "entry_without_balance_event",
                "balance_event_without_entry",
                "balance_event_without_entry",
            ]
        );
        assert_eq!(
            problems[0].detail,
            format!(
                "account {ALICE} (USD): the ledger has 2 entries netting 15.0000, the balances 1 events netting 10.0000"
            )
        );
        assert!(problems[2].detail.contains("4 events netting -25.0000"), "{}", problems[2].detail);
        assert!(problems[3].detail.contains("the ledger has 0 entries netting 0.0000"), "{}", problems[3].detail);
    }

    #[test]
    fn entries_must_name_known_accounts_in_their_currency() {
        let (ours, _, mut known) = whole_ledger();
        assert!(account_problems(&ours.accounts, &known).is_empty());
        known.remove(BOB);
        known.insert(FUNDING.into(), "EUR".into());
        let problems = account_problems(&ours.accounts, &known);
        assert_eq!(kinds(&problems), vec!["currency_mismatch", "unknown_account"]);
        assert_eq!(problems[0].detail, format!("entries name account {FUNDING} in USD, but the account is in EUR"));
        assert!(problems[1].detail.contains(BOB));
    }

    #[test]
    fn unbalanced_transactions_are_named() {
        let (mut ours, theirs, known) = whole_ledger();
        ours.one_sided.push(OneSided { transaction_id: TRANSACTION.into(), debit_entries: 0, credit_entries: 2 });
        ours.unbalanced.push(Unbalanced {
            transaction_id: TRANSACTION.into(),
            currency: "EUR".into(),
            debits: Decimal::ZERO,
            credits: "2.5".parse().unwrap(),
        });
        let problems = unbalanced_problems(&ours);
        assert_eq!(kinds(&problems), vec!["transaction_unbalanced", "transaction_unbalanced"]);
        assert_eq!(
            problems[1].detail,
            format!("transaction {TRANSACTION} does not balance in EUR: debits 0.0000, credits 2.5000")
        );
        let report = report("t", &ours, &theirs, &known);
        assert_eq!(report["ok"], json!(false));
        assert_eq!(report["problems"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn postings_pending_too_long_are_named() {
        let (mut ours, theirs, known) = whole_ledger();
        assert!(pending_problems(&ours).is_empty());
        // Pending, but not for long: in flight, not a problem.
        assert_eq!(report("t", &ours, &theirs, &known)["ok"], json!(true));

        ours.stale_pending_count = 3;
        ours.stale_pending =
            vec![StalePending { transaction_id: TRANSACTION.into(), created_at: 1_767_225_600_000_000 }];
        let problems = pending_problems(&ours);
        assert_eq!(kinds(&problems), vec!["posting_pending_too_long", "posting_pending_too_long"]);
        assert_eq!(
            problems[0].detail,
            format!(
                "transaction {TRANSACTION} has been PENDING since 2026-01-01T00:00:00.000000Z, 5 minutes or more \
                 before the cut-off: its balance events have not been written"
            )
        );
        assert_eq!(problems[1].detail, "2 more transactions have been PENDING as long");
        assert_eq!(report("t", &ours, &theirs, &known)["ok"], json!(false));
    }

    #[test]
    fn the_balance_sides_problems_pass_through() {
        let (ours, mut theirs, known) = whole_ledger();
        theirs.problems.push(Problem::new("chain_broken", "account x: event 3 does not follow event 2".into()));
        theirs.currencies = vec![CurrencySum { currency: "USD".into(), sum: "0.5".parse().unwrap() }];
        let report = report("t", &ours, &theirs, &known);
        assert_eq!(report["ok"], json!(false));
        assert_eq!(
            report["problems"],
            json!([{ "kind": "chain_broken", "detail": "account x: event 3 does not follow event 2" }])
        );
        assert_eq!(report["currencies"], json!([{ "currency": "USD", "sum": "0.5000" }]));
    }

    #[test]
    fn answers_are_read_strictly_where_it_matters() {
        let answer = json!({
            "accounts": [{ "account_id": ALICE.to_uppercase(), "currency": "USD", "entries": 2, "net": "-1.5000" }],
            "currencies": [{ "currency": "USD", "sum": "0.0000" }],
            "problems": [],
            "extra": true,
        });
        let side = balance_side(answer).unwrap();
        assert_eq!(side.accounts, vec![sum(ALICE, "USD", 2, "-1.5")]);
        // A net as a JSON number has been through a float: refused.
        let number = json!({ "accounts": [{ "account_id": ALICE, "currency": "USD", "entries": 2, "net": -1.5 }],
                             "currencies": [], "problems": [] });
        assert!(balance_side(number).is_err());

        let ours = json!({
            "transactions_checked": 2,
            "pending": [TRANSACTION],
            "stale_pending_count": 1,
            "stale_pending": [{ "transaction_id": TRANSACTION, "created_at": 1_767_225_600_000_000_i64 }],
            "one_sided": [],
            "unbalanced": [{ "transaction_id": TRANSACTION, "currency": "USD", "debits": "1.0000", "credits": "2.0000" }],
            "accounts": [{ "account_id": ALICE, "currency": "USD", "entries": 1, "net": "1.0000" }],
        });
        let side = transaction_side(ours).unwrap();
        assert_eq!(side.pending, vec![TRANSACTION.to_string()]);
        assert_eq!(side.stale_pending[0].created_at, 1_767_225_600_000_000);
        assert_eq!(side.unbalanced[0].credits, Decimal::new(2, 0));

        let lists = vec![
            json!({ "accounts": [{ "account_id": ALICE, "currency": "USD", "status": "ACTIVE" }] }),
            json!({ "accounts": [{ "account_id": FUNDING.to_uppercase(), "currency": "EUR" }] }),
        ];
        let known = known_accounts(lists).unwrap();
        assert_eq!(known.get(FUNDING).map(String::as_str), Some("EUR"));
        assert_eq!(known.len(), 2);
        assert!(known_accounts(vec![json!({ "items": [] })]).is_err());
    }
}
