//! The bank test: many clients pay one another at random, with idempotency keys, retrying as a
//! careful client does (the same key until an answer comes), some requests repeated and some
//! sent twice at once, while hosts are killed with SIGKILL and restarted. Afterwards the money
//! must add up exactly: no payment lost or stuck, none applied twice, no balance below zero,
//! and the ledger check clean.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use micropay_tests::bank::{Bank, id, money, next_random};
use micropay_tests::{Bus, HostOptions, TestHost, User, signed_in_user, wait_until_none};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const ACCOUNTS: usize = 20;
const USERS: usize = 4;
const CLIENTS: usize = 32;
const PAYMENTS_PER_CLIENT: usize = 12;
const FUNDING: &str = "1000";
const KILLS: usize = 3;

/// One logical payment as its client saw it: the final answer to its key.
#[derive(Debug, Clone)]
struct Answer {
    key: String,
    user: usize,
    status: u16,
    body: Value,
}

/// Where the clients send requests: the hosts' current addresses (they change on restart).
type Targets = Arc<RwLock<Vec<String>>>;

/// Requests the kills cut off (no answer came), counted to show the kills hit the traffic.
type CutOff = Arc<AtomicUsize>;

#[tokio::test]
async fn random_payments_survive_three_kills_of_the_host() {
    let bank = Bank::start().await;
    run_bank(bank, None).await;
}

#[tokio::test]
async fn random_payments_survive_a_killed_host_of_two_on_nats() {
    let host = TestHost::start_with(HostOptions::with_bus(Bus::Nats)).await;
    let platform = host.admin_key("platform");
    let bank = Bank { host, platform };
    let second = TestHost::start_with(bank.host.options.clone()).await;
    run_bank(bank, Some(second)).await;
}

/// Runs the clients against `bank.host` (and `second`, when given), killing and restarting
/// `bank.host` [`KILLS`] times meanwhile, then checks every invariant.
async fn run_bank(mut bank: Bank, mut second: Option<TestHost>) {
    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(signed_in_user(&mut bank.host).await);
    }
    let mut accounts = Vec::new();
    for index in 0..ACCOUNTS {
        let account = bank.open_account(&users[index % USERS], "USD").await;
        bank.fund(&account, FUNDING).await;
        accounts.push(account);
    }
    let total = money(FUNDING) * Decimal::from(ACCOUNTS as u64);

    let mut urls = vec![bank.host.base_url.clone()];
    urls.extend(second.as_ref().map(|host| host.base_url.clone()));
    let targets: Targets = Arc::new(RwLock::new(urls));
    let users = Arc::new(users);
    let accounts = Arc::new(accounts);
    let seed = Arc::new(AtomicU64::new(0x5eed_0fba_4c00));
    let cut_off = CutOff::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (targets, users, accounts, seed) = (targets.clone(), users.clone(), accounts.clone(), seed.clone());
            let cut_off = cut_off.clone();
            tokio::spawn(async move { client_run(client, targets, users, accounts, seed, cut_off).await })
        })
        .collect();

    // Kills while the clients pay: the first host, again and again.
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        bank.host.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        bank.host.restart().await;
        targets.write().unwrap()[0] = bank.host.base_url.clone();
    }
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    assert_eq!(answers.len(), CLIENTS * PAYMENTS_PER_CLIENT);
    let cut = cut_off.load(Ordering::Relaxed);
    assert!(cut > 0, "the kills cut no request off: the clients were done before them");
    println!("{} payments, {cut} requests cut off by the kills", answers.len());

    check_invariants(&bank, &users, &accounts, &answers, total).await;
    if let Some(second) = second.as_mut() {
        second.stop();
    }
}

/// One client: its payments one after another, each under a key of its own, retried with the
/// same key through kills until an answer comes; every tenth sent again after its answer,
/// every fifteenth sent twice at once.
async fn client_run(
    client: usize,
    targets: Targets,
    users: Arc<Vec<User>>,
    accounts: Arc<Vec<Value>>,
    seed: Arc<AtomicU64>,
    cut_off: CutOff,
) -> Vec<Answer> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut answers = Vec::new();
    for number in 0..PAYMENTS_PER_CLIENT {
        let payer = (next_random(&seed) % ACCOUNTS as u64) as usize;
        let payee = (payer + 1 + (next_random(&seed) % (ACCOUNTS as u64 - 1)) as usize) % ACCOUNTS;
        let cents = 100 + next_random(&seed) % 20_000;
        let body = json!({
            "payer_account_id": id(&accounts[payer]),
            "payee_account_id": id(&accounts[payee]),
            "amount": format!("{}.{:02}", cents / 100, cents % 100),
            "currency": "USD",
        });
        let user = payer % USERS;
        let token = &users[user].token;
        let key = format!("client-{client}-{number}-{}", uuid::Uuid::new_v4().simple());
        let send = || pay_until_answered(&http, &targets, token, &key, &body, client, &cut_off);
        let (status, answer) = if number % 15 == 7 {
            // One of the two runs; the other is told it is running (409) and retries until
            // it gets the same answer replayed.
            let (first, second) = tokio::join!(send(), send());
            assert_eq!(first, second, "two requests with one key answered differently");
            first
        } else {
            send().await
        };
        if number % 10 == 3 {
            let repeated = send().await;
            assert_eq!(repeated, (status, answer.clone()), "a repeated request was not answered the same");
        }
        answers.push(Answer { key, user, status, body: answer });
    }
    answers
}

/// Sends the payment until an answer comes that is not "the host is down" or "a request with
/// this key is still running" (each retried after a pause, with the same key).
async fn pay_until_answered(
    http: &reqwest::Client,
    targets: &Targets,
    token: &str,
    key: &str,
    body: &Value,
    client: usize,
    cut_off: &CutOff,
) -> (u16, Value) {
    let started = Instant::now();
    let mut attempt = 0usize;
    let mut last = String::new();
    loop {
        assert!(started.elapsed() < Duration::from_secs(300), "payment {key} never answered; last: {last}");
        let base = {
            let targets = targets.read().unwrap();
            targets[(client + attempt) % targets.len()].clone()
        };
        attempt += 1;
        let sent = http
            .post(format!("{base}/v1/payment/payments"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                cut_off.fetch_add(1, Ordering::Relaxed);
                last = err.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let retry = match status {
            409 => answer["error"]["code"] == "idempotency_conflict",
            // The host failed, was at capacity, or the outcome of a commit is unknown: a retry
            // with the key finds out.
            429 | 500..=599 => true,
            _ => false,
        };
        if !retry {
            return (status, answer);
        }
        last = format!("{status} {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn check_invariants(bank: &Bank, users: &[User], accounts: &[Value], answers: &[Answer], total: Decimal) {
    // Every acknowledged payment completes: none lost, none stuck.
    let accepted: Vec<&Answer> = answers.iter().filter(|answer| answer.status == 201).collect();
    assert!(accepted.len() > answers.len() / 2, "too few payments went through: {answers:?}");
    for answer in answers.iter().filter(|answer| answer.status != 201) {
        let code = answer.body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            answer.status == 422 && ["insufficient_funds", "limit_exceeded"].contains(&code),
            "unexpected answer to {}: {} {}",
            answer.key,
            answer.status,
            answer.body
        );
    }
    let mut payments = bank.host.admin_db("payment").await;
    let unfinished = "SELECT count(*) FROM payments WHERE status NOT IN ('COMPLETED', 'FAILED')";
    wait_until_none(&mut payments, unfinished, Duration::from_secs(180), "payments never finished").await;

    // Each key is one payment, and the payments are exactly the answers the clients got.
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT payer_user_id::text, idempotency_key, payment_id::text, status FROM payments WHERE payment_type = 'TRANSFER'",
    )
    .fetch_all(&mut payments)
    .await
    .unwrap();
    let mut by_key: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    for (user_id, key, payment_id, status) in rows {
        by_key.entry((user_id, key)).or_default().push((payment_id, status));
    }
    for answer in answers {
        let key = (users[answer.user].user_id.clone(), answer.key.clone());
        let payments = by_key.remove(&key).unwrap_or_default();
        assert_eq!(payments.len(), 1, "key {} has payments {payments:?}", answer.key);
        let (payment_id, status) = &payments[0];
        let expected = if answer.status == 201 { "COMPLETED" } else { "FAILED" };
        assert_eq!(status, expected, "payment {payment_id} of key {}", answer.key);
        if answer.status == 201 {
            assert_eq!(answer.body["payment_id"].as_str(), Some(payment_id.as_str()));
        }
    }
    assert!(by_key.is_empty(), "payments no client was answered about: {by_key:?}");

    // One posting per payment.
    let mut ledger = bank.host.admin_db("transaction").await;
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT payment_id FROM transactions GROUP BY payment_id HAVING count(*) > 1) AS d",
    )
    .fetch_one(&mut ledger)
    .await
    .unwrap();
    assert_eq!(doubled, 0, "a payment was posted twice");

    // The money: each account's balance is its funding moved by exactly its completed
    // payments; together they hold what was deposited; none is below zero available.
    let mut expected: BTreeMap<String, Decimal> =
        accounts.iter().map(|account| (id(account).to_string(), money(FUNDING))).collect();
    for answer in &accepted {
        let amount = money(answer.body["amount"].as_str().unwrap());
        *expected.get_mut(answer.body["payer_account_id"].as_str().unwrap()).unwrap() -= amount;
        *expected.get_mut(answer.body["payee_account_id"].as_str().unwrap()).unwrap() += amount;
    }
    let mut sum = Decimal::ZERO;
    for (account_id, expected) in &expected {
        let path = format!("/v1/balance/accounts/{account_id}");
        let (status, balance) = bank.host.call("GET", &path, Some(&bank.platform), None).await;
        assert_eq!(status, 200, "{balance}");
        assert_eq!(money(balance["balance"].as_str().unwrap()), *expected, "account {account_id}: {balance}");
        assert!(money(balance["available"].as_str().unwrap()) >= Decimal::ZERO, "{balance}");
        sum += *expected;
    }
    assert_eq!(sum, total);

    let (clean, report) = bank.ledger_check();
    assert!(clean, "{report}");
}
