//! The money core: accounts, the double-entry ledger and event-sourced balances, through the
//! public API as clients and administrators use it, with `micropay ledger check` as the judge.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use micropay_tests::bank::{Bank, id, money, next_random, transfer_via};
use micropay_tests::{TestHost, error_code, signed_in_user};
use rust_decimal::Decimal;
use serde_json::{Value, json};

#[tokio::test]
async fn random_transfers_from_two_hosts_keep_every_invariant() {
    const CLIENTS: usize = 16;
    const OPERATIONS_PER_CLIENT: usize = 30;
    const FUNDING: &str = "1000.00";

    let mut bank = Bank::start().await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(signed_in_user(&mut bank.host).await);
    }
    // 20 accounts, five per user, each funded with 1000.
    let mut accounts = Vec::new();
    for index in 0..20 {
        let owner = index % users.len();
        let account = bank.open_account(&users[owner], "USD").await;
        bank.fund(&account, FUNDING).await;
        accounts.push((owner, account));
    }
    let total = money(FUNDING) * Decimal::from(accounts.len());
    // A second host on the same databases: the clients alternate between the two, so the
    // accounts are serialized in PostgreSQL, not in either host's memory.
    let second = Arc::new(TestHost::start_with(bank.host.options.clone()).await);

    let bank = Arc::new(bank);
    let users = Arc::new(users);
    let accounts = Arc::new(accounts);
    let posted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let seed = Arc::new(AtomicU64::new(0x9e37_79b9_7f4a_7c15));

    // A watcher reads available balances all along: never below zero.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (bank, accounts, watching) = (bank.clone(), accounts.clone(), watching.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while watching.load(Ordering::Relaxed) {
                for (_, account) in accounts.iter() {
                    let balance = bank.balance(&bank.platform, id(account)).await;
                    let available = money(balance["available"].as_str().unwrap());
                    assert!(available >= Decimal::ZERO, "available below zero: {balance}");
                    reads += 1;
                }
            }
            reads
        })
    };

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (bank, second, users, accounts) = (bank.clone(), second.clone(), users.clone(), accounts.clone());
        let (posted, refused, seed) = (posted.clone(), refused.clone(), seed.clone());
        clients.push(tokio::spawn(async move {
            let host = if client % 2 == 0 { &bank.host } else { &*second };
            for _ in 0..OPERATIONS_PER_CLIENT {
                let roll = next_random(&seed);
                let from = (roll % 20) as usize;
                let to = ((roll >> 8) % 19) as usize;
                let to = if to >= from { to + 1 } else { to };
                // 1.00 to 400.99: large enough that some transfers find too little available.
                let amount = format!("{}.{:02}", 1 + (roll >> 16) % 400, (roll >> 32) % 100);
                let (owner, source) = &accounts[from];
                let token = &users[*owner].token;

                // Half the transfers hold the funds first, then capture the reservation.
                let reservation = if roll >> 40 & 1 == 0 {
                    let body =
                        json!({"account_id": id(source), "amount": amount, "currency": "USD", "ttl_seconds": 60});
                    let (status, body) = host.call("POST", "/v1/balance/reservations", Some(token), Some(body)).await;
                    match status {
                        201 => Some(body["reservation_id"].as_str().unwrap().to_string()),
                        422 => {
                            assert_eq!(error_code(&body), "insufficient_funds");
                            refused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        _ => panic!("reservation: {status} {body}"),
                    }
                } else {
                    None
                };
                let (status, body) =
                    transfer_via(host, token, source, &accounts[to].1, &amount, reservation.as_deref()).await;
                match status {
                    201 => posted.fetch_add(1, Ordering::Relaxed),
                    422 if reservation.is_none() && error_code(&body) == "insufficient_funds" => {
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => panic!("transfer: {status} {body}"),
                };
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    bank.wait_until_settled().await;
    watching.store(false, Ordering::Relaxed);
    assert!(watcher.await.unwrap() > 0);
    let posted = posted.load(Ordering::Relaxed);
    let refused = refused.load(Ordering::Relaxed);
    assert_eq!(posted + refused, CLIENTS * OPERATIONS_PER_CLIENT);
    assert!(posted > 100 && refused > 0, "{posted} posted, {refused} refused: the run tested both paths");

    // The money is all still there, none of it below zero.
    let mut sum = Decimal::ZERO;
    for (_, account) in accounts.iter() {
        let balance = bank.balance(&bank.platform, id(account)).await;
        let available = money(balance["available"].as_str().unwrap());
        assert!(available >= Decimal::ZERO, "{balance}");
        assert_eq!(money(balance["reserved"].as_str().unwrap()), Decimal::ZERO, "every hold settled: {balance}");
        sum += money(balance["balance"].as_str().unwrap());
    }
    assert_eq!(sum, total, "the users' money is unchanged by transfers among them");
    let mut balance_db = bank.host.admin_db("balance").await;
    let negative: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM balance_events e JOIN balance_accounts a USING (account_id)
         WHERE NOT a.system AND e.balance_after < 0",
    )
    .fetch_one(&mut balance_db)
    .await
    .unwrap();
    assert_eq!(negative, 0, "no user balance ever went below zero");

    // Snapshots now (the sweeper takes one for accounts that have none), then more
    // transfers after them: the check replays events from zero against the snapshots.
    let (status, body) = bank.host.call("POST", "/v1/balance/maintenance", Some(&bank.platform), None).await;
    assert_eq!(status, 200, "{body}");
    let snapshots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM balance_snapshots").fetch_one(&mut balance_db).await.unwrap();
    assert!(snapshots >= 20, "{snapshots} snapshots");
    for round in 0..5 {
        let (owner, source) = &accounts[round];
        let (status, body) = bank.transfer(&users[*owner].token, source, &accounts[round + 5].1, "0.01", None).await;
        assert_eq!(status, 201, "{body}");
    }
    bank.wait_until_settled().await;

    let (clean, report) = bank.ledger_check();
    assert!(clean, "ledger check: {report}");
    assert!(report.contains("USD sums to 0.0000"), "{report}");
    assert!(report.contains("ledger reconciles"), "{report}");
}

async fn entry_count(db: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM transaction_entries").fetch_one(db).await.unwrap()
}

#[tokio::test]
async fn postings_are_refused_unless_balanced_and_reversed_at_most_once() {
    let mut bank = Bank::start().await;
    let user = signed_in_user(&mut bank.host).await;
    let usd_a = bank.open_account(&user, "USD").await;
    let usd_b = bank.open_account(&user, "USD").await;
    let eur_a = bank.open_account(&user, "EUR").await;
    let eur_b = bank.open_account(&user, "EUR").await;
    bank.fund(&usd_a, "100").await;
    bank.fund(&eur_a, "100").await;

    let entry = |account: &Value, kind: &str, amount: &str| json!({"account_id": id(account), "entry_type": kind, "amount": amount, "currency": account["currency"]});
    let post = |entries: Vec<Value>| {
        let host = &bank.host;
        let token = user.token.clone();
        async move {
            host.call("POST", "/v1/transaction/transactions", Some(&token), Some(json!({ "entries": entries }))).await
        }
    };
    let mut transaction_db = bank.host.admin_db("transaction").await;
    let entries_before = entry_count(&mut transaction_db).await;

    // Debits and credits differ.
    let (status, body) = post(vec![entry(&usd_a, "DEBIT", "10"), entry(&usd_b, "CREDIT", "9.99")]).await;
    assert_eq!((status, error_code(&body)), (422, "unbalanced"), "{body}");
    // Only credits.
    let (status, body) = post(vec![entry(&usd_b, "CREDIT", "10"), entry(&usd_b, "CREDIT", "10")]).await;
    assert_eq!((status, error_code(&body)), (422, "unbalanced"), "{body}");
    // Balanced in total but not per currency.
    let (status, body) = post(vec![entry(&usd_a, "DEBIT", "10"), entry(&eur_b, "CREDIT", "10")]).await;
    assert_eq!((status, error_code(&body)), (422, "unbalanced"), "{body}");
    // A float amount, a fifth decimal place, an unknown currency.
    let mut float = entry(&usd_a, "DEBIT", "10");
    float["amount"] = json!(10.0);
    let (status, _) = post(vec![float, entry(&usd_b, "CREDIT", "10")]).await;
    assert_eq!(status, 400);
    let (status, body) = post(vec![entry(&usd_a, "DEBIT", "0.00001"), entry(&usd_b, "CREDIT", "0.00001")]).await;
    assert_eq!((status, error_code(&body)), (422, "validation_failed"));
    assert_eq!(entry_count(&mut transaction_db).await, entries_before, "nothing written");

    // Mixed currencies balanced per currency: accepted.
    let (status, mixed) = post(vec![
        entry(&usd_a, "DEBIT", "10"),
        entry(&usd_b, "CREDIT", "10"),
        entry(&eur_a, "DEBIT", "5"),
        entry(&eur_b, "CREDIT", "5"),
    ])
    .await;
    assert_eq!(status, 201, "{mixed}");
    assert_eq!(mixed["entries"].as_array().unwrap().len(), 4);
    bank.wait_until_settled().await;
    let (_, settled) =
        bank.host.call("GET", &format!("/v1/transaction/transactions/{}", id(&mixed)), Some(&user.token), None).await;
    assert_eq!(settled["status"], "SETTLED", "{settled}");
    assert!(settled["settled_at"].is_string());

    // Entries are immutable, even to a superuser's UPDATE.
    let tamper = sqlx::query("UPDATE transaction_entries SET amount = 1 WHERE transaction_id = $1::uuid")
        .bind(id(&mixed))
        .execute(&mut transaction_db)
        .await;
    assert!(tamper.is_err(), "an entry was altered");

    // A reversal mirrors the entries once; the second is refused.
    let reverse = json!({"reason": "customer dispute"});
    let path = format!("/v1/transaction/transactions/{}/reverse", id(&mixed));
    let (status, reversal) = bank.host.call("POST", &path, Some(&bank.platform), Some(reverse.clone())).await;
    assert_eq!(status, 201, "{reversal}");
    assert_eq!(reversal["transaction_type"], "REVERSAL");
    assert_eq!(reversal["reversal_of"].as_str(), Some(id(&mixed)));
    let mirrored: Vec<(&str, &str)> = reversal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| (entry["account_id"].as_str().unwrap(), entry["entry_type"].as_str().unwrap()))
        .collect();
    assert!(mirrored.contains(&(id(&usd_a), "CREDIT")) && mirrored.contains(&(id(&usd_b), "DEBIT")));
    let (status, body) = bank.host.call("POST", &path, Some(&bank.platform), Some(reverse)).await;
    assert_eq!((status, error_code(&body)), (409, "already_reversed"), "{body}");
    bank.wait_until_settled().await;
    let (_, original) = bank
        .host
        .call("GET", &format!("/v1/transaction/transactions/{}", id(&mixed)), Some(&bank.platform), None)
        .await;
    assert_eq!(original["status"], "REVERSED");
    assert_eq!(original["reversal_reason"], "customer dispute");
    bank.wait_for_balance(id(&usd_a), money("100")).await;
    bank.wait_for_balance(id(&eur_b), money("0")).await;

    // A user may not reverse, deposit or withdraw.
    let (status, _) = bank.host.call("POST", &path, Some(&user.token), Some(json!({"reason": "mine"}))).await;
    assert_eq!(status, 403);
    let body = json!({"account_id": id(&usd_a), "amount": "5", "currency": "USD"});
    let (status, _) = bank.host.call("POST", "/v1/transaction/deposits", Some(&user.token), Some(body)).await;
    assert_eq!(status, 403);

    let (clean, report) = bank.ledger_check();
    assert!(clean, "{report}");
}

#[tokio::test]
async fn accounts_are_private_frozen_accounts_cannot_move_money_and_limits_roll_over() {
    let mut bank = Bank::start().await;
    let alice = signed_in_user(&mut bank.host).await;
    let bob = signed_in_user(&mut bank.host).await;
    let savings = bank.open_account(&alice, "USD").await;
    let spending = bank.open_account(&alice, "USD").await;
    let bobs = bank.open_account(&bob, "USD").await;
    bank.fund(&savings, "500").await;

    // The number carries check digits: a typo is caught, not sent to someone else.
    let number = savings["account_number"].as_str().unwrap();
    assert!(number.starts_with("MP") && number.len() == 16, "{number}");
    let (status, found) =
        bank.host.call("GET", &format!("/v1/account/accounts/lookup?number={number}"), Some(&bob.token), None).await;
    assert_eq!((status, found["account_id"].as_str()), (200, Some(id(&savings))), "{found}");
    let mut typo: Vec<char> = number.chars().collect();
    typo[8] = if typo[8] == '9' { '0' } else { char::from(typo[8] as u8 + 1) };
    let typo: String = typo.into_iter().collect();
    let (status, body) =
        bank.host.call("GET", &format!("/v1/account/accounts/lookup?number={typo}"), Some(&bob.token), None).await;
    assert_eq!((status, error_code(&body)), (422, "invalid_account_number"));

    // Another user's account does not exist, wherever Bob looks.
    for path in [
        format!("/v1/account/accounts/{}", id(&savings)),
        format!("/v1/balance/accounts/{}", id(&savings)),
        format!("/v1/balance/accounts/{}/history", id(&savings)),
        format!("/v1/account/accounts/{}", uuid::Uuid::new_v4()),
    ] {
        let (status, body) = bank.host.call("GET", &path, Some(&bob.token), None).await;
        assert_eq!((status, error_code(&body)), (404, "account_not_found"), "{path}: {body}");
    }
    let (status, body) = bank.transfer(&bob.token, &savings, &bobs, "1", None).await;
    assert_eq!(status, 404, "Bob debits Alice's account: {body}");
    let (_, listed) = bank.host.call("GET", "/v1/account/accounts", Some(&bob.token), None).await;
    assert_eq!(listed["accounts"].as_array().unwrap().len(), 1);
    // Endpoints meant for other services do not exist from the outside, even for admins.
    let ops = bank.host.admin_key("ops");
    for (path, body) in [
        ("/v1/account/internal/authorize", json!({"legs": [], "count_toward_limits": false})),
        ("/v1/balance/internal/holds", json!({"transaction_id": id(&bobs), "payment_id": id(&bobs), "holds": []})),
        ("/v1/balance/internal/ledger", json!({})),
    ] {
        for token in [&bob.token, &ops] {
            let (status, _) = bank.host.call("POST", path, Some(token), Some(body.clone())).await;
            assert_eq!(status, 404, "{path}");
        }
    }
    // Only the platform opens system accounts.
    let (status, _) = bank
        .host
        .call("POST", "/v1/account/system-accounts", Some(&alice.token), Some(json!({"currency": "USD"})))
        .await;
    assert_eq!(status, 403);

    // Frozen: no debit, no credit; unfrozen by an administrator.
    let freeze = format!("/v1/account/accounts/{}/freeze", id(&savings));
    let (status, frozen) = bank.host.call("POST", &freeze, Some(&alice.token), None).await;
    assert_eq!((status, frozen["status"].as_str()), (200, Some("FROZEN")), "{frozen}");
    let (status, body) = bank.transfer(&alice.token, &savings, &spending, "10", None).await;
    assert_eq!((status, error_code(&body)), (409, "account_not_active"), "{body}");
    let (status, body) = bank.transfer(&bob.token, &bobs, &savings, "10", None).await;
    assert!(status == 409 || status == 422, "a credit to a frozen account: {status} {body}");
    let unfreeze = format!("/v1/account/accounts/{}/unfreeze", id(&savings));
    let (status, _) = bank.host.call("POST", &unfreeze, Some(&alice.token), None).await;
    assert_eq!(status, 403, "the owner cannot unfreeze");
    let (status, body) = bank.host.call("POST", &unfreeze, Some(&bank.platform), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ACTIVE")), "{body}");

    // The daily limit: the transfer that would cross it is refused; tomorrow starts at zero.
    let limits = format!("/v1/account/accounts/{}/limits", id(&savings));
    let (status, body) =
        bank.host.call("PUT", &limits, Some(&alice.token), Some(json!({"daily_transfer_limit": "100"}))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bank.transfer(&alice.token, &savings, &spending, "60", None).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = bank.transfer(&alice.token, &savings, &spending, "50", None).await;
    assert_eq!((status, error_code(&body)), (422, "limit_exceeded"), "{body}");
    let mut account_db = bank.host.admin_db("account").await;
    sqlx::query(
        "UPDATE account_limits SET period_start_at = period_start_at - interval '1 day',
                period_end_at = period_end_at - interval '1 day'
         WHERE account_id = $1::uuid AND limit_type = 'DAILY_TRANSFER'",
    )
    .bind(id(&savings))
    .execute(&mut account_db)
    .await
    .unwrap();
    let (status, body) = bank.transfer(&alice.token, &savings, &spending, "50", None).await;
    assert_eq!(status, 201, "the next day: {body}");
    let (_, account) =
        bank.host.call("GET", &format!("/v1/account/accounts/{}", id(&savings)), Some(&alice.token), None).await;
    let usage: HashMap<&str, Decimal> = account["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|limit| (limit["limit_type"].as_str().unwrap(), money(limit["current_usage"].as_str().unwrap())))
        .collect();
    assert_eq!(usage["DAILY_TRANSFER"], money("50"), "{account}");
    assert_eq!(usage["MONTHLY_TRANSFER"], money("110"), "{account}");

    // Closing needs a zero balance; the snapshot in the account follows the balance events.
    bank.wait_until_settled().await;
    let close = format!("/v1/account/accounts/{}/close", id(&savings));
    let (status, body) = bank.host.call("POST", &close, Some(&alice.token), None).await;
    assert_eq!((status, error_code(&body)), (409, "balance_not_zero"), "{body}");
    // A withdrawal counts toward the limits too: raise them back first.
    let body = json!({"daily_transfer_limit": "10000"});
    let (status, body) = bank.host.call("PUT", &limits, Some(&alice.token), Some(body)).await;
    assert_eq!(status, 200, "{body}");
    let body = json!({"account_id": id(&savings), "amount": "390", "currency": "USD"});
    let (status, body) = bank.host.call("POST", "/v1/transaction/withdrawals", Some(&bank.platform), Some(body)).await;
    assert_eq!(status, 201, "{body}");
    bank.wait_for_balance(id(&savings), Decimal::ZERO).await;
    let (status, closed) = bank.host.call("POST", &close, Some(&alice.token), None).await;
    assert_eq!((status, closed["status"].as_str()), (200, Some("CLOSED")), "{closed}");
    bank.host
        .wait_for_json_as(
            &format!("/v1/account/accounts/{}", id(&spending)),
            Some(&alice.token),
            "balance_snapshot",
            json!("110.0000"),
            Duration::from_secs(30),
        )
        .await;
}

#[tokio::test]
async fn an_expired_reservation_frees_the_funds_and_cannot_be_captured() {
    let mut bank = Bank::start().await;
    let user = signed_in_user(&mut bank.host).await;
    let from = bank.open_account(&user, "USD").await;
    let to = bank.open_account(&user, "USD").await;
    bank.fund(&from, "100").await;

    // Three seconds: time enough for the checks while it holds, on a loaded machine too.
    let body = json!({"account_id": id(&from), "amount": "80", "currency": "USD", "ttl_seconds": 3});
    let (status, reservation) = bank.host.call("POST", "/v1/balance/reservations", Some(&user.token), Some(body)).await;
    assert_eq!((status, reservation["status"].as_str()), (201, Some("ACTIVE")), "{reservation}");
    let held = bank.balance(&user.token, id(&from)).await;
    assert_eq!((held["available"].as_str(), held["reserved"].as_str()), (Some("20.0000"), Some("80.0000")));
    // Held funds are not available to anything else.
    let (status, body) = bank.transfer(&user.token, &from, &to, "30", None).await;
    assert_eq!((status, error_code(&body)), (422, "insufficient_funds"), "{body}");

    let expires_at = chrono::DateTime::parse_from_rfc3339(reservation["expires_at"].as_str().unwrap()).unwrap();
    let left = (expires_at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(300)).await;
    let freed = bank.balance(&user.token, id(&from)).await;
    assert_eq!((freed["available"].as_str(), freed["reserved"].as_str()), (Some("100.0000"), Some("0.0000")));
    let reservation_id = reservation["reservation_id"].as_str().unwrap();
    let (status, body) = bank.transfer(&user.token, &from, &to, "80", Some(reservation_id)).await;
    assert_eq!((status, error_code(&body)), (409, "reservation_expired"), "{body}");
    let path = format!("/v1/balance/reservations/{reservation_id}");
    let (_, shown) = bank.host.call("GET", &path, Some(&user.token), None).await;
    assert_eq!(shown["status"], "EXPIRED", "{shown}");

    // The sweeper records it; a live reservation is captured by a posting.
    let (status, body) = bank.host.call("POST", "/v1/balance/maintenance", Some(&bank.platform), None).await;
    assert_eq!(status, 200, "{body}");
    let mut balance_db = bank.host.admin_db("balance").await;
    let stored: String = sqlx::query_scalar("SELECT status FROM balance_reservations WHERE reservation_id = $1::uuid")
        .bind(reservation_id)
        .fetch_one(&mut balance_db)
        .await
        .unwrap();
    assert_eq!(stored, "EXPIRED");
    let body = json!({"account_id": id(&from), "amount": "80", "currency": "USD"});
    let (_, live) = bank.host.call("POST", "/v1/balance/reservations", Some(&user.token), Some(body)).await;
    let live_id = live["reservation_id"].as_str().unwrap();
    let (status, body) = bank.transfer(&user.token, &from, &to, "75", Some(live_id)).await;
    assert_eq!(status, 201, "{body}");
    bank.wait_for_balance(id(&from), money("25")).await;
    bank.wait_until_settled().await;
    let after = bank.balance(&user.token, id(&from)).await;
    assert_eq!((after["available"].as_str(), after["reserved"].as_str()), (Some("25.0000"), Some("0.0000")));
    let (_, captured) =
        bank.host.call("GET", &format!("/v1/balance/reservations/{live_id}"), Some(&user.token), None).await;
    assert_eq!(captured["status"], "CAPTURED", "{captured}");

    // The history shows each balance event with its transaction and bus event.
    let (_, history) =
        bank.host.call("GET", &format!("/v1/balance/accounts/{}/history", id(&from)), Some(&user.token), None).await;
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{history}");
    assert_eq!(
        (events[0]["event_type"].as_str(), events[0]["balance_after"].as_str()),
        (Some("DEBIT"), Some("25.0000"))
    );
    assert_eq!(events[1]["balance_before"], "0.0000");
    assert!(events[0]["transaction_id"].is_string() && events[0]["bus_event_id"].is_string(), "{history}");
}

#[tokio::test]
async fn money_movements_reach_the_audit_trail() {
    let mut bank = Bank::start().await;
    let user = signed_in_user(&mut bank.host).await;
    let from = bank.open_account(&user, "USD").await;
    let to = bank.open_account(&user, "USD").await;
    bank.fund(&from, "10").await;
    let (status, transfer) = bank.transfer(&user.token, &from, &to, "4", None).await;
    assert_eq!(status, 201, "{transfer}");
    bank.wait_until_settled().await;

    let ops = bank.host.admin_key("ops");
    let started = Instant::now();
    for event_type in ["account.opened", "transaction.posted", "balance.updated", "balance.transaction_applied"] {
        loop {
            let query = format!("/v1/audit/logs?event_type={event_type}");
            let (status, logs) = bank.host.call("GET", &query, Some(&ops), None).await;
            assert_eq!(status, 200, "{logs}");
            if !logs["logs"].as_array().unwrap().is_empty() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no {event_type} in the audit trail");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn only_the_platform_key_moves_or_frees_money() {
    let mut bank = Bank::start().await;
    let user = signed_in_user(&mut bank.host).await;
    let from = bank.open_account(&user, "USD").await;
    let to = bank.open_account(&user, "USD").await;
    let euros = bank.open_account(&user, "EUR").await;
    bank.fund(&from, "100").await;
    let (status, deposit) = bank.deposit(&bank.platform, &to, "3").await;
    assert_eq!(status, 201, "{deposit}");
    bank.wait_until_settled().await;
    let body = json!({"account_id": id(&from), "amount": "10", "currency": "USD"});
    let (status, reservation) = bank.host.call("POST", "/v1/balance/reservations", Some(&user.token), Some(body)).await;
    assert_eq!(status, 201, "{reservation}");
    let reservation_id = reservation["reservation_id"].as_str().unwrap();

    let mut transaction_db = bank.host.admin_db("transaction").await;
    let mut account_db = bank.host.admin_db("account").await;
    let transactions = "SELECT count(*) FROM transactions";
    let postings_before: i64 = sqlx::query_scalar(transactions).fetch_one(&mut transaction_db).await.unwrap();
    let system_accounts = "SELECT count(*) FROM accounts WHERE account_type IN ('FUNDING', 'FEES')";
    let system_before: i64 = sqlx::query_scalar(system_accounts).fetch_one(&mut account_db).await.unwrap();

    let adjustment = json!({"entries": [
        {"account_id": id(&from), "entry_type": "DEBIT", "amount": "1", "currency": "USD"},
        {"account_id": id(&to), "entry_type": "CREDIT", "amount": "1", "currency": "USD"},
    ]});
    // In an order the platform's key can then make them all in.
    let money_moves = [
        ("/v1/transaction/deposits".to_string(), json!({"account_id": id(&from), "amount": "5", "currency": "USD"})),
        // A currency without system accounts yet: refused before its funding account is opened.
        ("/v1/transaction/deposits".to_string(), json!({"account_id": id(&euros), "amount": "5", "currency": "EUR"})),
        ("/v1/transaction/withdrawals".to_string(), json!({"account_id": id(&from), "amount": "5", "currency": "USD"})),
        ("/v1/transaction/transactions".to_string(), adjustment),
        (format!("/v1/transaction/transactions/{}/reverse", id(&deposit)), json!({"reason": "deposited twice"})),
        (format!("/v1/balance/reservations/{reservation_id}/release"), json!({})),
    ];
    for role in ["risk", "ops"] {
        let key = bank.host.admin_key(role);
        for (path, body) in &money_moves {
            let (status, answer) = bank.host.call("POST", path, Some(&key), Some(body.clone())).await;
            assert_eq!((status, error_code(&answer)), (403, "platform_only"), "{role} POST {path}: {answer}");
        }
    }
    let postings_after: i64 = sqlx::query_scalar(transactions).fetch_one(&mut transaction_db).await.unwrap();
    assert_eq!(postings_after, postings_before, "no posting written");
    let system_after: i64 = sqlx::query_scalar(system_accounts).fetch_one(&mut account_db).await.unwrap();
    assert_eq!(system_after, system_before, "no system account opened");
    let held = bank.balance(&user.token, id(&from)).await;
    assert_eq!((held["balance"].as_str(), held["reserved"].as_str()), (Some("100.0000"), Some("10.0000")), "{held}");

    // What changes which money may move: risk and platform, not ops. Freezing, the brake: anyone.
    let ops = bank.host.admin_key("ops");
    let risk = bank.host.admin_key("risk");
    let limits = format!("/v1/account/accounts/{}/limits", id(&to));
    let raise = json!({"daily_transfer_limit": "20000", "monthly_transfer_limit": "60000"});
    let (status, body) = bank.host.call("PUT", &limits, Some(&ops), Some(raise.clone())).await;
    assert_eq!((status, error_code(&body)), (403, "role_not_allowed"), "{body}");
    let (status, body) = bank.host.call("PUT", &limits, Some(&risk), Some(raise)).await;
    assert_eq!((status, body["daily_transfer_limit"].as_str()), (200, Some("20000.0000")), "{body}");
    let (status, body) =
        bank.host.call("POST", &format!("/v1/account/accounts/{}/freeze", id(&to)), Some(&ops), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("FROZEN")), "{body}");
    let unfreeze = format!("/v1/account/accounts/{}/unfreeze", id(&to));
    let (status, body) = bank.host.call("POST", &unfreeze, Some(&ops), None).await;
    assert_eq!((status, error_code(&body)), (403, "role_not_allowed"), "{body}");
    let (status, body) = bank.close(&ops, &euros).await;
    assert_eq!((status, error_code(&body)), (403, "role_not_allowed"), "{body}");
    let (status, body) = bank.host.call("POST", &unfreeze, Some(&risk), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ACTIVE")), "{body}");

    // The platform's key does all of it.
    for (path, body) in &money_moves {
        let (status, answer) = bank.host.call("POST", path, Some(&bank.platform), Some(body.clone())).await;
        assert!(status == 200 || status == 201, "platform POST {path}: {status} {answer}");
        bank.wait_until_settled().await;
    }
    // 100 + 5 - 5 - 1 and nothing reserved; 3 + 1 - 3; 5.
    for (account, expected) in [(&from, "99.0000"), (&to, "1.0000"), (&euros, "5.0000")] {
        let after = bank.balance(&user.token, id(account)).await;
        assert_eq!(
            (after["balance"].as_str(), after["reserved"].as_str()),
            (Some(expected), Some("0.0000")),
            "{after}"
        );
    }
    let (clean, report) = bank.ledger_check();
    assert!(clean, "{report}");
}

#[tokio::test]
async fn closing_an_account_while_credits_race_into_it_never_strands_money() {
    const ACCOUNTS: usize = 8;
    const CREDITS: usize = 4;

    let mut bank = Bank::start().await;
    let user = signed_in_user(&mut bank.host).await;
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(bank.open_account(&user, "USD").await);
    }
    let bank = Arc::new(bank);
    let token = Arc::new(user.token.clone());

    // Every account at once: credits of 1.00, and its owner closing it again and again until
    // the close succeeds or the credits have all been answered.
    let mut races = Vec::new();
    for account in accounts.iter().cloned() {
        let (bank, token) = (bank.clone(), token.clone());
        races.push(tokio::spawn(async move {
            let answered = Arc::new(AtomicUsize::new(0));
            let credits: Vec<_> = (0..CREDITS)
                .map(|_| {
                    let (bank, account, answered) = (bank.clone(), account.clone(), answered.clone());
                    tokio::spawn(async move {
                        let (status, body) = bank.deposit(&bank.platform, &account, "1.00").await;
                        answered.fetch_add(1, Ordering::SeqCst);
                        (status, body)
                    })
                })
                .collect();
            let mut refusals = Vec::new();
            let closed = loop {
                let done = answered.load(Ordering::SeqCst) == CREDITS;
                let (status, body) = bank.close(&token, &account).await;
                if status == 200 {
                    break true;
                }
                assert_eq!(status, 409, "{body}");
                refusals.push(error_code(&body).to_string());
                if done {
                    break false;
                }
            };
            let mut credited = 0;
            for credit in credits {
                let (status, body) = credit.await.unwrap();
                match status {
                    201 => credited += 1,
                    409 => assert_eq!(error_code(&body), "account_not_active", "{body}"),
                    _ => panic!("a credit: {status} {body}"),
                }
            }
            (account, closed, credited, refusals)
        }));
    }
    let mut outcomes = Vec::new();
    for race in races {
        outcomes.push(race.await.unwrap());
    }
    bank.wait_until_settled().await;

    let mut closed_count = 0;
    for (account, closed, credited, refusals) in &outcomes {
        eprintln!("account {}: closed {closed}, {credited} credits, close refused {refusals:?}", id(account));
        for code in refusals {
            assert!(code == "postings_in_flight" || code == "balance_not_zero", "{code}");
        }
        let balance = bank.balance(&bank.platform, id(account)).await;
        let (_, shown) =
            bank.host.call("GET", &format!("/v1/account/accounts/{}", id(account)), Some(&token), None).await;
        if *closed {
            closed_count += 1;
            // Closed first: every credit after it was refused, and nothing reached it.
            assert_eq!(*credited, 0, "a CLOSED account took credits: {balance}");
            assert_eq!(shown["status"], "CLOSED", "{shown}");
            assert_eq!((balance["balance"].as_str(), balance["reserved"].as_str()), (Some("0.0000"), Some("0.0000")));
        } else {
            // A credit first: the close waited for it and then refused; all of it arrived.
            assert!(*credited > 0, "the close was refused with nothing credited: {refusals:?}");
            assert_eq!(shown["status"], "ACTIVE", "{shown}");
            assert_eq!(money(balance["balance"].as_str().unwrap()), Decimal::from(*credited as i64), "{balance}");
        }
    }
    eprintln!("{closed_count} of {ACCOUNTS} accounts closed before any credit");
    let (clean, report) = bank.ledger_check();
    assert!(clean, "{report}");
}

#[tokio::test]
async fn an_account_does_not_close_while_a_posting_to_it_is_in_flight() {
    let mut bank = Bank::start().await;
    let user = signed_in_user(&mut bank.host).await;
    let account = bank.open_account(&user, "USD").await;
    let other = bank.open_account(&user, "USD").await;

    // The balance service is slow to apply what comes next: the account's balance row is being
    // written by someone else, uncommitted, so applying a posting to it waits.
    let mut balance_db = bank.host.admin_db("balance").await;
    let mut slow = sqlx::Connection::begin(&mut balance_db).await.unwrap();
    sqlx::query("INSERT INTO balance_accounts (account_id, currency, system) VALUES ($1::uuid, 'USD', false)")
        .bind(id(&account))
        .execute(&mut *slow)
        .await
        .unwrap();
    let (status, deposit) = bank.deposit(&bank.platform, &account, "50").await;
    assert_eq!((status, deposit["status"].as_str()), (201, Some("PENDING")), "{deposit}");
    // The balance is zero and nothing is held, but 50 are on their way.
    let position = bank.balance(&user.token, id(&account)).await;
    assert_eq!((position["balance"].as_str(), position["reserved"].as_str()), (Some("0.0000"), Some("0.0000")));
    let (status, body) = bank.close(&user.token, &account).await;
    assert_eq!((status, error_code(&body)), (409, "postings_in_flight"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(id(&deposit)), "{body}");
    slow.rollback().await.unwrap();
    bank.wait_for_balance(id(&account), money("50")).await;

    // Applied: the posting is no longer in flight once the account service has heard so.
    let started = Instant::now();
    loop {
        let (status, body) = bank.close(&user.token, &account).await;
        assert_eq!(status, 409, "{body}");
        if error_code(&body) == "balance_not_zero" {
            break;
        }
        assert_eq!(error_code(&body), "postings_in_flight");
        assert!(started.elapsed() < Duration::from_secs(30), "still in flight: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A posting refused after its authorization gives it up at once.
    let (status, body) = bank.transfer(&user.token, &account, &other, "80", None).await;
    assert_eq!((status, error_code(&body)), (422, "insufficient_funds"), "{body}");
    let (status, body) = bank.close(&user.token, &account).await;
    assert_eq!((status, error_code(&body)), (409, "balance_not_zero"), "{body}");

    // Emptied, it closes once the withdrawal is applied, and takes nothing after.
    let body = json!({"account_id": id(&account), "amount": "50", "currency": "USD"});
    let (status, body) = bank.host.call("POST", "/v1/transaction/withdrawals", Some(&bank.platform), Some(body)).await;
    assert_eq!(status, 201, "{body}");
    bank.wait_for_balance(id(&account), Decimal::ZERO).await;
    let started = Instant::now();
    loop {
        let (status, body) = bank.close(&user.token, &account).await;
        if status == 200 {
            assert_eq!(body["status"], "CLOSED", "{body}");
            break;
        }
        assert_eq!((status, error_code(&body)), (409, "postings_in_flight"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(30), "still in flight: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = bank.deposit(&bank.platform, &account, "1").await;
    assert_eq!((status, error_code(&body)), (409, "account_not_active"), "{body}");
    let (status, body) = bank.transfer(&user.token, &other, &account, "1", None).await;
    assert_eq!((status, error_code(&body)), (409, "account_not_active"), "{body}");
    bank.wait_until_settled().await;
    let (clean, report) = bank.ledger_check();
    assert!(clean, "{report}");
}

#[tokio::test]
async fn the_sweep_clears_postings_in_flight_that_never_committed_or_have_settled() {
    let mut bank = Bank::start().await;
    let user = signed_in_user(&mut bank.host).await;
    let account = bank.open_account(&user, "USD").await;
    let other = bank.open_account(&user, "USD").await;
    bank.fund(&other, "5").await;
    bank.wait_until_settled().await;
    let (_, settled) = bank
        .host
        .call("GET", &format!("/v1/transaction/transactions?account_id={}", id(&other)), Some(&bank.platform), None)
        .await;
    let settled_id = settled["transactions"][0]["transaction_id"].as_str().unwrap().to_string();

    // Records as an authorization writes them: of a posting whose transaction service failed
    // before its commit, and of a settled one whose balance.updated never reached this service,
    // both long ago; and of a posting authorized just now, which may still commit.
    let never_committed = uuid::Uuid::new_v4().to_string();
    let just_now = uuid::Uuid::new_v4().to_string();
    let mut account_db = bank.host.admin_db("account").await;
    for (transaction_id, age) in [(&never_committed, "10 minutes"), (&settled_id, "10 minutes"), (&just_now, "0")] {
        sqlx::query(
            "INSERT INTO account_postings_in_flight (account_id, transaction_id, authorized_at)
             VALUES ($1::uuid, $2::uuid, now() - $3::interval)",
        )
        .bind(id(&account))
        .bind(transaction_id)
        .bind(age)
        .execute(&mut account_db)
        .await
        .unwrap();
    }
    let (status, body) = bank.close(&user.token, &account).await;
    assert_eq!((status, error_code(&body)), (409, "postings_in_flight"), "{body}");

    let (status, body) = bank.host.call("POST", "/v1/account/maintenance", Some(&bank.platform), None).await;
    assert_eq!(status, 200, "{body}");
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT transaction_id::text FROM account_postings_in_flight WHERE account_id = $1::uuid ORDER BY 1",
    )
    .bind(id(&account))
    .fetch_all(&mut account_db)
    .await
    .unwrap();
    assert_eq!(left, vec![just_now.clone()], "only the fresh record stays");
    let (status, body) = bank.close(&user.token, &account).await;
    assert_eq!((status, error_code(&body)), (409, "postings_in_flight"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(&just_now), "{body}");
}

#[tokio::test]
async fn the_ledger_check_names_postings_stuck_pending_and_dead_lettered() {
    let mut bank = Bank::start().await;
    let user = signed_in_user(&mut bank.host).await;
    let account = bank.open_account(&user, "USD").await;

    // The balance service holds the account in another currency (a damaged row), so it refuses
    // every posting to it: the event is retried, then set aside in the dead letters.
    let mut balance_db = bank.host.admin_db("balance").await;
    sqlx::query("INSERT INTO balance_accounts (account_id, currency, system) VALUES ($1::uuid, 'EUR', false)")
        .bind(id(&account))
        .execute(&mut balance_db)
        .await
        .unwrap();
    let (status, deposit) = bank.deposit(&bank.platform, &account, "10").await;
    assert_eq!(status, 201, "{deposit}");
    let transaction_id = id(&deposit).to_string();

    // The balance service's ten attempts back off over about 80 s.
    let started = Instant::now();
    let event_id = loop {
        let (status, body) = bank.host.call("GET", "/admin/events/dead-letters", Some(&bank.platform), None).await;
        assert_eq!(status, 200, "{body}");
        let letter = body["dead_letters"].as_array().unwrap().iter().find(|letter| {
            letter["subscriber"] == "balance"
                && letter["topic"] == "transaction.posted"
                && letter["subject"] == *transaction_id
        });
        if let Some(letter) = letter {
            break letter["event_id"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(240), "not dead-lettered: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (clean, report) = bank.ledger_check();
    assert!(!clean, "{report}");
    assert!(
        report.contains(&format!(
            "posting_dead_lettered: transaction {transaction_id}: its transaction.posted event {event_id}"
        )),
        "{report}"
    );
    assert!(!report.contains("posting_pending_too_long"), "pending for seconds only: {report}");

    // Pending for longer than the bound: named too.
    let mut transaction_db = bank.host.admin_db("transaction").await;
    sqlx::query(
        "UPDATE transactions SET created_at = created_at - interval '6 minutes' WHERE transaction_id = $1::uuid",
    )
    .bind(&transaction_id)
    .execute(&mut transaction_db)
    .await
    .unwrap();
    let (clean, report) = bank.ledger_check();
    assert!(!clean, "{report}");
    assert!(
        report.contains(&format!("posting_pending_too_long: transaction {transaction_id} has been PENDING since")),
        "{report}"
    );
    let (_, answer) =
        bank.host.call("POST", "/v1/transaction/ledger/check?as_of=now", Some(&bank.platform), None).await;
    assert_eq!(answer["problems"].as_array().unwrap().len(), 1, "the dead letter is the command's to read: {answer}");

    // Mended and replayed: the posting is applied and the ledger reconciles again.
    sqlx::query("UPDATE balance_accounts SET currency = 'USD' WHERE account_id = $1::uuid")
        .bind(id(&account))
        .execute(&mut balance_db)
        .await
        .unwrap();
    let (replayed, output) = bank.host.command(&bank.platform, &["events", "replay", &event_id]);
    assert!(replayed, "{output}");
    bank.wait_until_settled().await;
    bank.wait_for_balance(id(&account), money("10")).await;
    let (clean, report) = bank.ledger_check();
    assert!(clean, "{report}");
}
