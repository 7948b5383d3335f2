//! A bank on a test host: accounts, deposits, balances and the ledger check, as the money
//! tests (the ledger's, the payments') drive them through the public API.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::{TestHost, User};

/// A host with the keys the money flows need.
pub struct Bank {
    pub host: TestHost,
    /// Deposits, withdrawals, reversals, system accounts.
    pub platform: String,
}

impl Bank {
    pub async fn start() -> Self {
        let host = TestHost::start().await;
        let platform = host.admin_key("platform");
        Self { host, platform }
    }

    pub async fn open_account(&self, user: &User, currency: &str) -> Value {
        let body = json!({"account_type": "PRIMARY", "currency": currency});
        let (status, account) = self.host.call("POST", "/v1/account/accounts", Some(&user.token), Some(body)).await;
        assert_eq!(status, 201, "{account}");
        account
    }

    /// Deposits `amount` into `account` with the admin key `key`: the answer as it comes.
    pub async fn deposit(&self, key: &str, account: &Value, amount: &str) -> (u16, Value) {
        let body = json!({"account_id": id(account), "amount": amount, "currency": account["currency"]});
        self.host.call("POST", "/v1/transaction/deposits", Some(key), Some(body)).await
    }

    /// Asks to close `account` as `token` (its owner or an admin key).
    pub async fn close(&self, token: &str, account: &Value) -> (u16, Value) {
        self.host.call("POST", &format!("/v1/account/accounts/{}/close", id(account)), Some(token), None).await
    }

    /// Deposits `amount` and waits until the balance service shows it.
    pub async fn fund(&self, account: &Value, amount: &str) {
        let id = account["account_id"].as_str().unwrap();
        let before = self.balance(&self.platform, id).await["balance"].clone();
        let (status, deposit) = self.deposit(&self.platform, account, amount).await;
        assert_eq!(status, 201, "{deposit}");
        assert_eq!(deposit["transaction_type"], "DEPOSIT");
        let expected = money(before.as_str().unwrap()) + money(amount);
        self.wait_for_balance(id, expected).await;
    }

    pub async fn balance(&self, token: &str, account_id: &str) -> Value {
        let (status, balance) =
            self.host.call("GET", &format!("/v1/balance/accounts/{account_id}"), Some(token), None).await;
        assert_eq!(status, 200, "{balance}");
        balance
    }

    pub async fn wait_for_balance(&self, account_id: &str, expected: Decimal) {
        self.wait_for_funds(account_id, "balance", expected).await
    }

    /// Waits up to 30 s until the balance service shows `field` (`balance`, `reserved`,
    /// `available`) of `account_id` at `expected`.
    pub async fn wait_for_funds(&self, account_id: &str, field: &str, expected: Decimal) {
        let started = Instant::now();
        loop {
            let balance = self.balance(&self.platform, account_id).await;
            if money(balance[field].as_str().unwrap()) == expected {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{field} of {account_id} is not {expected}: {balance}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Posts a two-entry transfer from `from` to `to`.
    pub async fn transfer(
        &self,
        token: &str,
        from: &Value,
        to: &Value,
        amount: &str,
        reservation: Option<&str>,
    ) -> (u16, Value) {
        transfer_via(&self.host, token, from, to, amount, reservation).await
    }

    /// Waits until no posting is PENDING: every balance event is written and reported back.
    pub async fn wait_until_settled(&self) {
        let mut db = self.host.admin_db("transaction").await;
        let pending = "SELECT count(*) FROM transactions WHERE status = 'PENDING'";
        crate::wait_until_none(&mut db, pending, Duration::from_secs(60), "postings still pending").await;
    }

    /// `micropay ledger check --as-of now`: its success and what it printed.
    pub fn ledger_check(&self) -> (bool, String) {
        self.host.command(&self.platform, &["ledger", "check", "--as-of", "now"])
    }
}

/// Posts a two-entry transfer from `from` to `to` through `host`.
pub async fn transfer_via(
    host: &TestHost,
    token: &str,
    from: &Value,
    to: &Value,
    amount: &str,
    reservation: Option<&str>,
) -> (u16, Value) {
    let currency = &from["currency"];
    let mut debit =
        json!({"account_id": from["account_id"], "entry_type": "DEBIT", "amount": amount, "currency": currency});
    if let Some(reservation) = reservation {
        debit["reservation_id"] = json!(reservation);
    }
    let credit =
        json!({"account_id": to["account_id"], "entry_type": "CREDIT", "amount": amount, "currency": currency});
    let body = json!({"entries": [debit, credit], "description": "test transfer"});
    host.call("POST", "/v1/transaction/transactions", Some(token), Some(body)).await
}

pub fn money(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|_| panic!("not an amount: {text}"))
}

pub fn id(value: &Value) -> &str {
    value["account_id"].as_str().or_else(|| value["transaction_id"].as_str()).unwrap()
}

/// xorshift64*, shared by the clients: reproducible enough, and no dependency.
pub fn next_random(state: &AtomicU64) -> u64 {
    let mut x = state.load(Ordering::Relaxed);
    loop {
        let mut next = x;
        next ^= next >> 12;
        next ^= next << 25;
        next ^= next >> 27;
        match state.compare_exchange_weak(x, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next.wrapping_mul(0x2545_f491_4f6c_dd1d),
            Err(current) => x = current,
        }
    }
}
