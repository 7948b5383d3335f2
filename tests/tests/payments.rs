//! Payments through the public API as clients use them: idempotency keys, the lifecycle with
//! refunds, manual capture and cancellation, who may see and do what, and the refusals that
//! hold and post nothing. `micropay ledger check` judges the money at the end.

use std::collections::HashSet;
use std::time::Duration;

use micropay_tests::bank::{Bank, id, money};
use micropay_tests::{User, error_code, signed_in_user};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const PAYMENTS: &str = "/v1/payment/payments";

/// A bank with two funded users' accounts: `payer` (1000 USD) and `payee`.
struct Fixture {
    bank: Bank,
    payer: User,
    payer_account: Value,
    payee: User,
    payee_account: Value,
}

impl Fixture {
    async fn start() -> Self {
        let mut bank = Bank::start().await;
        let payer = signed_in_user(&mut bank.host).await;
        let payee = signed_in_user(&mut bank.host).await;
        let payer_account = bank.open_account(&payer, "USD").await;
        let payee_account = bank.open_account(&payee, "USD").await;
        bank.fund(&payer_account, "1000").await;
        Self { bank, payer, payer_account, payee, payee_account }
    }

    /// A payment body from the payer to the payee.
    fn body(&self, amount: &str) -> Value {
        json!({
            "payer_account_id": id(&self.payer_account),
            "payee_account_id": id(&self.payee_account),
            "amount": amount,
            "currency": "USD",
            "description": "rent",
        })
    }

    /// `POST path` as `token` with `key` (none: no header) and extra headers.
    async fn post(
        &self,
        path: &str,
        token: &str,
        key: Option<&str>,
        extra: &[(&str, &str)],
        body: Value,
    ) -> (u16, HeaderMap, Value) {
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        self.bank.host.call_with("POST", path, Some(token), &headers, Some(body)).await
    }

    /// Pays `amount` from the payer under a fresh key, waiting for the final state.
    async fn pay(&self, amount: &str) -> Value {
        let key = uuid::Uuid::new_v4().to_string();
        let (status, _, payment) =
            self.post(PAYMENTS, &self.payer.token, Some(&key), &[("prefer", "wait=10")], self.body(amount)).await;
        assert_eq!(status, 201, "{payment}");
        assert_eq!(payment["status"], "COMPLETED", "{payment}");
        payment
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.bank.host.call("GET", path, Some(token), None).await
    }

    /// The payer's balance and reserved amount.
    async fn payer_funds(&self) -> (String, String) {
        let balance = self.bank.balance(&self.bank.platform, id(&self.payer_account)).await;
        (balance["balance"].as_str().unwrap().to_string(), balance["reserved"].as_str().unwrap().to_string())
    }

    /// Waits until the payer's reserved amount is `amount`.
    async fn wait_until_reserved(&self, amount: &str) {
        self.bank.wait_for_funds(id(&self.payer_account), "reserved", money(amount)).await
    }

    async fn postings(&self) -> i64 {
        let mut db = self.bank.host.admin_db("transaction").await;
        sqlx::query_scalar("SELECT count(*) FROM transactions").fetch_one(&mut db).await.unwrap()
    }
}

fn payment_id(payment: &Value) -> &str {
    payment["payment_id"].as_str().unwrap_or_else(|| panic!("no payment: {payment}"))
}

#[tokio::test]
async fn an_idempotency_key_is_one_payment_whatever_is_repeated() {
    let fixture = Fixture::start().await;
    let token = fixture.payer.token.clone();

    // No key, or a malformed one: refused before anything else.
    let (status, _, body) = fixture.post(PAYMENTS, &token, None, &[], fixture.body("10")).await;
    assert_eq!((status, error_code(&body)), (400, "idempotency_key_missing"));
    let long = "k".repeat(256);
    let (status, _, body) = fixture.post(PAYMENTS, &token, Some(&long), &[], fixture.body("10")).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_idempotency_key"));

    // The first answer, replayed to the same request; another request under the key is 422.
    let (status, headers, first) = fixture.post(PAYMENTS, &token, Some("key-1"), &[], fixture.body("10")).await;
    assert_eq!(status, 201, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    assert!(headers.get("micropay-await").is_none(), "the component's header never reaches a client");
    let (status, headers, again) = fixture.post(PAYMENTS, &token, Some("key-1"), &[], fixture.body("10")).await;
    assert_eq!((status, &again), (201, &first));
    assert_eq!(headers["idempotent-replayed"], "true");
    let (status, _, body) = fixture.post(PAYMENTS, &token, Some("key-1"), &[], fixture.body("11")).await;
    assert_eq!((status, error_code(&body)), (422, "idempotency_key_reused"));

    // An error answer is kept and replayed too: the payment failed, nothing was held.
    let (status, _, refused) = fixture.post(PAYMENTS, &token, Some("key-2"), &[], fixture.body("5000")).await;
    assert_eq!((status, error_code(&refused)), (422, "insufficient_funds"));
    let (status, headers, again) = fixture.post(PAYMENTS, &token, Some("key-2"), &[], fixture.body("5000")).await;
    assert_eq!((status, &again), (422, &refused));
    assert_eq!(headers["idempotent-replayed"], "true");

    // A request refused before it did anything is not kept: corrected, the key serves.
    let (status, _, body) = fixture.post(PAYMENTS, &token, Some("key-3"), &[], fixture.body("ten")).await;
    assert_eq!((status, error_code(&body)), (422, "validation_failed"));
    let (status, _, body) = fixture.post(PAYMENTS, &token, Some("key-3"), &[], fixture.body("3")).await;
    assert_eq!(status, 201, "{body}");

    // While a request with the key runs (its lock held), a repeat is 409 at once.
    let mut db = fixture.bank.host.admin_db("payment").await;
    let scope = format!("user:{}", fixture.payer.user_id);
    let lock = "SELECT pg_advisory_lock(hashtextextended($1 || chr(10) || $2, 0))";
    sqlx::query(lock).bind(&scope).bind("key-4").execute(&mut db).await.unwrap();
    let (status, _, body) = fixture.post(PAYMENTS, &token, Some("key-4"), &[], fixture.body("4")).await;
    assert_eq!((status, error_code(&body)), (409, "idempotency_conflict"));
    sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut db).await.unwrap();
    let (status, _, body) = fixture.post(PAYMENTS, &token, Some("key-4"), &[], fixture.body("4")).await;
    assert_eq!(status, 201, "{body}");

    // Keys are the caller's own: another user's key-1 is another key.
    let payee_account = fixture.bank.open_account(&fixture.payee, "USD").await;
    fixture.bank.fund(&payee_account, "10").await;
    let theirs = json!({
        "payer_account_id": id(&payee_account), "payee_account_id": id(&fixture.payer_account),
        "amount": "1", "currency": "USD",
    });
    let (status, _, body) = fixture.post(PAYMENTS, &fixture.payee.token, Some("key-1"), &[], theirs).await;
    assert_eq!(status, 201, "{body}");

    // Ten at once with one key: one payment; the others wait their turn (409) or replay it.
    let answers = futures_util::future::join_all(
        (0..10).map(|_| fixture.post(PAYMENTS, &token, Some("key-5"), &[], fixture.body("5"))),
    )
    .await;
    let mut ids = HashSet::new();
    for (status, _, body) in &answers {
        match status {
            201 => {
                ids.insert(payment_id(body).to_string());
            }
            409 => assert_eq!(error_code(body), "idempotency_conflict"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "{answers:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE idempotency_key = 'key-5'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(count, 1);

    // Waiting for the final state; then the money is where the completed payments say.
    let completed = fixture.pay("7").await;
    assert!(completed["completed_at"].is_string());
    let (status, list) = fixture.get(&token, &format!("{PAYMENTS}?status=PROCESSING")).await;
    assert_eq!(status, 200);
    for payment in list["payments"].as_array().unwrap() {
        let path = format!("{PAYMENTS}/{}", payment_id(payment));
        fixture
            .bank
            .host
            .wait_for_json_as(&path, Some(&token), "status", json!("COMPLETED"), Duration::from_secs(10))
            .await;
    }
    let (balance, reserved) = fixture.payer_funds().await;
    // 1000 - (10 + 3 + 4 + 5 + 7) + 1 received.
    assert_eq!((money(&balance), money(&reserved)), (money("972"), money("0")));

    // Each admin key is a caller of its own: two platform keys sending one refund under one
    // Idempotency-Key make two refunds, neither a replay of the other's.
    let refunds = format!("{PAYMENTS}/{}/refunds", payment_id(&completed));
    let (first_key, second_key) = (fixture.bank.platform.clone(), fixture.bank.host.admin_key("platform"));
    let mut by_admin = Vec::new();
    for admin in [&first_key, &second_key] {
        let (status, headers, body) = fixture.post(&refunds, admin, Some("shared"), &[], json!({"amount": "1"})).await;
        assert_eq!(status, 201, "{body}");
        assert!(headers.get("idempotent-replayed").is_none(), "{body}");
        by_admin.push(payment_id(&body).to_string());
    }
    assert_ne!(by_admin[0], by_admin[1]);
    let (status, headers, body) =
        fixture.post(&refunds, &second_key, Some("shared"), &[], json!({"amount": "1"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(headers.get("idempotent-replayed").map(|value| value.to_str().unwrap()), Some("true"));
    assert_eq!(payment_id(&body), by_admin[1]);

    // A day later the keys are purged: the same request is a new payment.
    sqlx::query("UPDATE idempotency_keys SET created_at = created_at - interval '25 hours'")
        .execute(&mut db)
        .await
        .unwrap();
    let ops = fixture.bank.host.admin_key("ops");
    let (status, swept) = fixture.bank.host.call("POST", "/v1/payment/maintenance", Some(&ops), None).await;
    assert_eq!(status, 200, "{swept}");
    assert!(swept["keys_purged"].as_i64().unwrap() >= 6, "{swept}");
    let (status, headers, body) = fixture.post(PAYMENTS, &token, Some("key-1"), &[], fixture.body("10")).await;
    assert_eq!(status, 201, "{body}");
    assert!(headers.get("idempotent-replayed").is_none());
    assert_ne!(payment_id(&body), payment_id(&first));

    let (clean, report) = fixture.bank.ledger_check();
    assert!(clean, "{report}");
}

#[tokio::test]
async fn refusals_hold_and_post_nothing_and_others_payments_do_not_exist() {
    let mut fixture = Fixture::start().await;
    let token = fixture.payer.token.clone();
    let stranger = signed_in_user(&mut fixture.bank.host).await;
    let euro_user = signed_in_user(&mut fixture.bank.host).await;
    let euros = fixture.bank.open_account(&euro_user, "EUR").await;
    let postings_before = fixture.postings().await;

    let refused = |body: Value, status: u16, code: &'static str| {
        let fixture = &fixture;
        let token = token.clone();
        async move {
            let key = uuid::Uuid::new_v4().to_string();
            let (got, _, answer) = fixture.post(PAYMENTS, &token, Some(&key), &[], body).await;
            assert_eq!((got, error_code(&answer)), (status, code), "{answer}");
        }
    };

    // Funds, an unknown payee (by id and by number), a mistyped number, a currency mismatch.
    refused(fixture.body("1000.0001"), 422, "insufficient_funds").await;
    let mut unknown = fixture.body("1");
    unknown["payee_account_id"] = json!(uuid::Uuid::new_v4().to_string());
    refused(unknown, 404, "account_not_found").await;
    let number = fixture.payee_account["account_number"].as_str().unwrap().to_string();
    let by_number = |number: String| {
        json!({"payer_account_id": id(&fixture.payer_account), "payee_account_number": number,
               "amount": "1", "currency": "USD"})
    };
    let mut mistyped: Vec<char> = number.chars().collect();
    let last = mistyped.len() - 1;
    mistyped[last] = if mistyped[last] == '0' { '1' } else { '0' };
    refused(by_number(mistyped.into_iter().collect()), 422, "invalid_account_number").await;
    let mut mismatch = fixture.body("1");
    mismatch["payee_account_id"] = json!(id(&euros));
    refused(mismatch, 422, "currency_mismatch").await;

    // A limit: the payer lowers their own daily limit below the amount.
    let limits = format!("/v1/account/accounts/{}/limits", id(&fixture.payer_account));
    let (status, body) =
        fixture.bank.host.call("PUT", &limits, Some(&token), Some(json!({"daily_transfer_limit": "50"}))).await;
    assert_eq!(status, 200, "{body}");
    refused(fixture.body("60"), 422, "limit_exceeded").await;

    // A frozen account pays nothing.
    let freeze = format!("/v1/account/accounts/{}/freeze", id(&fixture.payer_account));
    let (status, body) = fixture.bank.host.call("POST", &freeze, Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    refused(fixture.body("1"), 409, "account_not_active").await;

    // Nothing held, nothing posted; each refusal is a FAILED payment with its code.
    let (balance, reserved) = fixture.payer_funds().await;
    assert_eq!((money(&balance), money(&reserved)), (money("1000"), money("0")));
    assert_eq!(fixture.postings().await, postings_before);
    let (status, list) = fixture.get(&token, &format!("{PAYMENTS}?status=FAILED")).await;
    assert_eq!(status, 200);
    let codes: HashSet<&str> =
        list["payments"].as_array().unwrap().iter().filter_map(|p| p["error_code"].as_str()).collect();
    assert_eq!(
        codes,
        HashSet::from([
            "insufficient_funds",
            "account_not_found",
            "currency_mismatch",
            "limit_exceeded",
            "account_not_active"
        ])
    );

    // Unfrozen, a payment goes through; its payer and payee see it, nobody else does.
    let unfreeze = format!("/v1/account/accounts/{}/unfreeze", id(&fixture.payer_account));
    let risk = fixture.bank.host.admin_key("risk");
    let (status, body) = fixture.bank.host.call("POST", &unfreeze, Some(&risk), None).await;
    assert_eq!(status, 200, "{body}");
    let payment = fixture.pay("20").await;
    let path = format!("{PAYMENTS}/{}", payment_id(&payment));
    assert_eq!(fixture.get(&token, &path).await.0, 200);
    assert_eq!(fixture.get(&fixture.payee.token, &path).await.0, 200);
    let (status, body) = fixture.get(&stranger.token, &path).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, list) = fixture.get(&stranger.token, PAYMENTS).await;
    assert_eq!((status, list["payments"].as_array().unwrap().len()), (200, 0), "{list}");
    let (status, body) = fixture.get(&stranger.token, &format!("{path}/refunds")).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let key = [("idempotency-key", "stranger-1")];
    for action in ["cancel", "refunds", "capture"] {
        let (status, _, body) = fixture
            .bank
            .host
            .call_with("POST", &format!("{path}/{action}"), Some(&stranger.token), &key, Some(json!({})))
            .await;
        assert_eq!((status, error_code(&body)), (404, "not_found"), "{action}");
    }
    let (status, list) = fixture.get(&fixture.payee.token, PAYMENTS).await;
    assert_eq!((status, list["payments"].as_array().unwrap().len()), (200, 1), "{list}");

    let (clean, report) = fixture.bank.ledger_check();
    assert!(clean, "{report}");
}

#[tokio::test]
async fn refunds_captures_and_cancellations_follow_the_state_machine() {
    let fixture = Fixture::start().await;
    let (payer, payee) = (fixture.payer.token.clone(), fixture.payee.token.clone());
    let payment = fixture.pay("100").await;
    let refunds = format!("{PAYMENTS}/{}/refunds", payment_id(&payment));

    // Only the payee (or the platform's key) refunds.
    let (status, _, body) = fixture.post(&refunds, &payer, Some("r-0"), &[], json!({"amount": "10"})).await;
    assert_eq!((status, error_code(&body)), (403, "payee_only"));
    let ops = fixture.bank.host.admin_key("ops");
    let (status, _, body) = fixture.post(&refunds, &ops, Some("r-0"), &[], json!({"amount": "10"})).await;
    assert_eq!((status, error_code(&body)), (403, "platform_only"));

    // A partial refund, then more than remains (422), then the rest.
    let wait = [("prefer", "wait=10")];
    let (status, _, refund) = fixture.post(&refunds, &payee, Some("r-1"), &wait, json!({"amount": "30"})).await;
    assert_eq!(status, 201, "{refund}");
    assert_eq!((refund["status"].as_str(), refund["payment_type"].as_str()), (Some("COMPLETED"), Some("REFUND")));
    assert_eq!(refund["refund_of"], payment["payment_id"]);
    let path = format!("{PAYMENTS}/{}", payment_id(&payment));
    let (_, original) = fixture.get(&payer, &path).await;
    assert_eq!(original["status"], "PARTIALLY_REFUNDED", "{original}");
    let (status, _, body) = fixture.post(&refunds, &payee, Some("r-2"), &[], json!({"amount": "70.0001"})).await;
    assert_eq!((status, error_code(&body)), (422, "refund_exceeds_payment"));
    let (status, _, refund) = fixture.post(&refunds, &fixture.bank.platform, Some("r-3"), &wait, json!({})).await;
    assert_eq!((status, refund["amount"].as_str()), (201, Some("70.0000")), "{refund}");
    let (_, original) = fixture.get(&payer, &path).await;
    assert_eq!(
        (original["status"].as_str(), original["refunded_amount"].as_str()),
        (Some("REFUNDED"), Some("100.0000"))
    );
    let (status, _, body) = fixture.post(&refunds, &payee, Some("r-4"), &[], json!({"amount": "1"})).await;
    assert_eq!((status, error_code(&body)), (409, "not_refundable"));
    let (status, list) = fixture.get(&payer, &refunds).await;
    assert_eq!((status, list["refunds"].as_array().unwrap().len()), (200, 2), "{list}");
    let (balance, reserved) = fixture.payer_funds().await;
    assert_eq!((money(&balance), money(&reserved)), (money("1000"), money("0")));

    // Manual capture: held until captured or cancelled; only the payer does either.
    let mut manual = fixture.body("40");
    manual["capture_method"] = json!("manual");
    let (status, _, held) = fixture.post(PAYMENTS, &payer, Some("m-1"), &[], manual.clone()).await;
    assert_eq!((status, held["status"].as_str()), (201, Some("INITIATED")), "{held}");
    assert_eq!(money(&fixture.payer_funds().await.1), money("40"));
    let cancel = format!("{PAYMENTS}/{}/cancel", payment_id(&held));
    let (status, body) = fixture.bank.host.call("POST", &cancel, Some(&payee), None).await;
    assert_eq!((status, error_code(&body)), (403, "payer_only"));
    let (status, cancelled) = fixture.bank.host.call("POST", &cancel, Some(&payer), None).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("CANCELLED")), "{cancelled}");
    assert!(cancelled["cancelled_at"].is_string());
    // The hold goes once the cancel committed, through the bus.
    fixture.wait_until_reserved("0").await;
    let (status, body) = fixture.bank.host.call("POST", &cancel, Some(&payer), None).await;
    assert_eq!((status, error_code(&body)), (409, "not_cancellable"));

    let (status, _, held) = fixture.post(PAYMENTS, &payer, Some("m-2"), &[], manual).await;
    assert_eq!(status, 201, "{held}");
    let capture = format!("{PAYMENTS}/{}/capture", payment_id(&held));
    let (status, _, captured) = fixture.bank.host.call_with("POST", &capture, Some(&payer), &wait, None).await;
    assert_eq!((status, captured["status"].as_str()), (200, Some("COMPLETED")), "{captured}");
    let (status, body) = fixture.bank.host.call("POST", &capture, Some(&payer), None).await;
    assert_eq!((status, error_code(&body)), (409, "not_capturable"));
    let (status, body) = fixture
        .bank
        .host
        .call("POST", &format!("{PAYMENTS}/{}/cancel", payment_id(&payment)), Some(&payer), None)
        .await;
    assert_eq!((status, error_code(&body)), (409, "not_cancellable"));

    let (balance, reserved) = fixture.payer_funds().await;
    assert_eq!((money(&balance), money(&reserved)), (money("960"), money("0")));
    let (clean, report) = fixture.bank.ledger_check();
    assert!(clean, "{report}");
}

#[tokio::test]
async fn the_sweeper_asks_again_for_a_lost_posting_and_completes_a_missed_completion() {
    let fixture = Fixture::start().await;
    let payer = fixture.payer.token.clone();
    let mut db = fixture.bank.host.admin_db("payment").await;

    // A capture whose `payment.processing` was lost: PROCESSING, funds held, no posting.
    let mut manual = fixture.body("40");
    manual["capture_method"] = json!("manual");
    let (status, _, held) = fixture.post(PAYMENTS, &payer, Some("lost-1"), &[], manual).await;
    assert_eq!(status, 201, "{held}");
    let lost = payment_id(&held).to_string();
    // A completion (`balance.transaction_applied`) that never reached the payment service.
    let completed = fixture.pay("5").await;
    let missed = payment_id(&completed).to_string();
    // The transaction service hears the same event on its own: the sweeper completes a
    // payment only once its posting is settled there.
    let posting = format!("/v1/transaction/transactions/{missed}");
    let settled = json!("SETTLED");
    fixture.bank.host.wait_for_json_as(&posting, Some(&payer), "status", settled, Duration::from_secs(10)).await;
    let age = "UPDATE payments SET status = 'PROCESSING', completed_at = NULL, \
               posting_requested_at = now() - interval '2 minutes' WHERE payment_id = $1::uuid";
    for id in [&lost, &missed] {
        sqlx::query(age).bind(id).execute(&mut db).await.unwrap();
    }

    let ops = fixture.bank.host.admin_key("ops");
    let (status, swept) = fixture.bank.host.call("POST", "/v1/payment/maintenance", Some(&ops), None).await;
    assert_eq!(status, 200, "{swept}");
    assert_eq!((swept["postings_asked_again"].as_i64(), swept["completed"].as_i64()), (Some(1), Some(1)), "{swept}");

    let path = |id: &str| format!("{PAYMENTS}/{id}");
    let (_, again) = fixture.get(&payer, &path(&missed)).await;
    assert_eq!(again["status"], "COMPLETED", "{again}");
    let host = &fixture.bank.host;
    host.wait_for_json_as(&path(&lost), Some(&payer), "status", json!("COMPLETED"), Duration::from_secs(10)).await;
    let (_, recovered) = fixture.get(&payer, &path(&lost)).await;
    let retries = recovered["retries"].as_array().unwrap();
    assert_eq!(retries.len(), 1, "{recovered}");
    assert_eq!(
        (retries[0]["retry_reason"].as_str(), retries[0]["retry_status"].as_str()),
        (Some("posting_missing"), Some("REQUESTED"))
    );

    // Posted once each, from the hold made when it was authorized.
    let (balance, reserved) = fixture.payer_funds().await;
    assert_eq!((money(&balance), money(&reserved)), (money("955"), money("0")));
    let (clean, report) = fixture.bank.ledger_check();
    assert!(clean, "{report}");
}
