//! The fraud service as the risk team and payers meet it: declarative rules written in shadow,
//! backtested, promoted to decide, versioned, demoted and deactivated; payments declined (nothing
//! held) or held for review and decided by an analyst; alerts worked through their workflow;
//! and only the risk team reaching any of it. `micropay ledger check` judges the money at the end.

use std::time::{Duration, Instant};

use micropay_tests::bank::{Bank, id, money};
use micropay_tests::{User, error_code, signed_in_user};
use serde_json::{Value, json};

const PAYMENTS: &str = "/v1/payment/payments";
const FRAUD: &str = "/v1/fraud";

struct Fixture {
    bank: Bank,
    risk: String,
    ops: String,
    payer: User,
    payer_account: Value,
    payee_account: Value,
}

impl Fixture {
    async fn start() -> Self {
        let mut bank = Bank::start().await;
        let risk = bank.host.admin_key("risk");
        let ops = bank.host.admin_key("ops");
        let payer = signed_in_user(&mut bank.host).await;
        let payee = signed_in_user(&mut bank.host).await;
        let payer_account = bank.open_account(&payer, "USD").await;
        let payee_account = bank.open_account(&payee, "USD").await;
        bank.fund(&payer_account, "100000").await;
        Self { bank, risk, ops, payer, payer_account, payee_account }
    }

    /// Pays `amount` from the payer to the payee under a fresh key, waiting up to 10 s for the
    /// final state: the answer as it comes.
    async fn pay(&self, amount: &str) -> (u16, Value) {
        let key = uuid::Uuid::new_v4().to_string();
        let body = json!({
            "payer_account_id": id(&self.payer_account),
            "payee_account_id": id(&self.payee_account),
            "amount": amount,
            "currency": "USD",
        });
        let headers = [("idempotency-key", key.as_str()), ("prefer", "wait=10")];
        let (status, _, payment) =
            self.bank.host.call_with("POST", PAYMENTS, Some(&self.payer.token), &headers, Some(body)).await;
        (status, payment)
    }

    /// `method FRAUD+path` with the risk team's key.
    async fn risk(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.bank.host.call(method, &format!("{FRAUD}{path}"), Some(&self.risk), body).await
    }

    /// The assessment of a payment.
    async fn assessment(&self, payment_id: &str) -> Value {
        let (status, page) = self.risk("GET", &format!("/assessments?payment_id={payment_id}"), None).await;
        assert_eq!(status, 200, "{page}");
        let assessments = page["assessments"].as_array().unwrap();
        assert_eq!(assessments.len(), 1, "one assessment per payment: {page}");
        assessments[0].clone()
    }

    /// Pays 10 and names the rules its assessment evaluated, with their modes, sorted.
    async fn evaluated_by_next_payment(&self) -> Vec<(String, String)> {
        let (status, payment) = self.pay("10").await;
        assert_eq!((status, payment["status"].as_str()), (201, Some("COMPLETED")), "{payment}");
        let assessed = self.assessment(payment_id(&payment)).await;
        let mut evaluated: Vec<(String, String)> = assessed["rules_evaluated"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rule| (rule["rule_name"].as_str().unwrap().into(), rule["mode"].as_str().unwrap().into()))
            .collect();
        evaluated.sort();
        evaluated
    }

    async fn reserved(&self) -> String {
        let balance = self.bank.balance(&self.bank.platform, id(&self.payer_account)).await;
        balance["reserved"].as_str().unwrap().to_string()
    }

    async fn wait_until_reserved(&self, amount: &str) {
        self.bank.wait_for_funds(id(&self.payer_account), "reserved", money(amount)).await
    }
}

fn payment_id(payment: &Value) -> &str {
    payment["payment_id"].as_str().unwrap_or_else(|| panic!("no payment: {payment}"))
}

fn large_amount(impact: &str) -> Value {
    json!({
        "rule_name": "large-amount",
        "description": "payments of 500 or more",
        "rule_condition": {"feature": "amount", "op": "gte", "value": "500.00"},
        "risk_score_impact": impact,
        "priority": 10,
    })
}

#[tokio::test]
async fn a_rule_goes_from_shadow_to_deciding_and_analysts_decide_what_it_holds() {
    let fixture = Fixture::start().await;

    // No rule: approved, and the assessment says so.
    let (status, small) = fixture.pay("10").await;
    assert_eq!((status, small["status"].as_str()), (201, Some("COMPLETED")), "{small}");
    let assessed = fixture.assessment(payment_id(&small)).await;
    assert_eq!((assessed["recommendation"].as_str(), assessed["risk_score"].as_str()), (Some("APPROVE"), Some("0.00")));
    assert_eq!(assessed["features"]["first_payment_to_payee"], true);

    // A rule in shadow fires, is recorded as shadow, and changes nothing.
    let (status, rule) = fixture.risk("POST", "/rules", Some(large_amount("90"))).await;
    assert_eq!(status, 201, "{rule}");
    assert_eq!((rule["shadow_version"].as_i64(), rule["enforced_version"].as_i64()), (Some(1), None));
    let rule_id = rule["rule_id"].as_str().unwrap().to_string();
    let (status, shadowed) = fixture.pay("600").await;
    assert_eq!((status, shadowed["status"].as_str()), (201, Some("COMPLETED")), "{shadowed}");
    let assessed = fixture.assessment(payment_id(&shadowed)).await;
    assert_eq!((assessed["recommendation"].as_str(), assessed["risk_score"].as_str()), (Some("APPROVE"), Some("0.00")));
    let factors = assessed["risk_factors"].as_array().unwrap();
    assert_eq!(factors.len(), 1, "{assessed}");
    assert_eq!(
        (factors[0]["rule_name"].as_str(), factors[0]["mode"].as_str(), factors[0]["version"].as_i64()),
        (Some("large-amount"), Some("SHADOW"), Some(1))
    );
    assert_eq!(assessed["features"]["first_payment_to_payee"], false);
    assert_eq!(assessed["features"]["payer_payments_last_day"], 1);

    // Backtest: over the two payments, it flags the large one, which completed (the outcome
    // comes from the payment's event).
    let started = Instant::now();
    let report = loop {
        let (status, report) =
            fixture.risk("POST", &format!("/rules/{rule_id}/backtest"), Some(json!({"limit": 100}))).await;
        assert_eq!(status, 200, "{report}");
        if report["all_by_outcome"]["completed"] == 2 {
            break report;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "outcomes never arrived: {report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((report["assessments"].as_i64(), report["flagged"].as_i64()), (Some(2), Some(1)), "{report}");
    assert_eq!(report["flagged_by_outcome"]["completed"], 1, "{report}");

    // Promoted, it decides: declined, nothing held or posted, kept as FAILED.
    let (status, promoted) = fixture.risk("POST", &format!("/rules/{rule_id}/promote"), None).await;
    assert_eq!(
        (status, promoted["enforced_version"].as_i64(), promoted["shadow_version"].as_i64()),
        (200, Some(1), None),
        "{promoted}"
    );
    let (status, declined) = fixture.pay("600").await;
    assert_eq!((status, error_code(&declined)), (422, "fraud_declined"), "{declined}");
    assert_eq!(money(&fixture.reserved().await), money("0"));
    let (status, page) =
        fixture.bank.host.call("GET", &format!("{PAYMENTS}?status=FAILED"), Some(&fixture.payer.token), None).await;
    assert_eq!(status, 200);
    let failed = &page["payments"][0];
    assert_eq!(
        (failed["error_code"].as_str(), failed["failure_reason"].as_str()),
        (Some("fraud_declined"), Some("fraud_declined")),
        "{page}"
    );
    let assessed = fixture.assessment(payment_id(failed)).await;
    assert_eq!(
        (assessed["recommendation"].as_str(), assessed["risk_level"].as_str()),
        (Some("DECLINE"), Some("CRITICAL"))
    );

    // A new version (score 60: review) waits in shadow until promoted; the old one retires.
    let version =
        json!({"rule_condition": {"feature": "amount", "op": "gte", "value": "500"}, "risk_score_impact": "60"});
    let (status, versioned) = fixture.risk("POST", &format!("/rules/{rule_id}/versions"), Some(version)).await;
    assert_eq!(
        (status, versioned["enforced_version"].as_i64(), versioned["shadow_version"].as_i64()),
        (201, Some(1), Some(2)),
        "{versioned}"
    );
    let (status, _) = fixture.risk("POST", &format!("/rules/{rule_id}/promote"), None).await;
    assert_eq!(status, 200);
    let (_, shown) = fixture.risk("GET", &format!("/rules/{rule_id}"), None).await;
    let modes: Vec<(i64, &str)> = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_i64().unwrap(), v["mode"].as_str().unwrap()))
        .collect();
    assert_eq!(modes, vec![(2, "ENFORCE"), (1, "RETIRED")]);

    // Review: held until an analyst decides; another admin role may not.
    let (status, held) = fixture.pay("600").await;
    assert_eq!((status, held["status"].as_str()), (201, Some("REQUIRES_REVIEW")), "{held}");
    fixture.wait_until_reserved("600").await;
    let review = |payment: &Value| format!("{PAYMENTS}/{}/review", payment_id(payment));
    let (status, body) =
        fixture.bank.host.call("POST", &review(&held), Some(&fixture.ops), Some(json!({"decision": "approve"}))).await;
    assert_eq!((status, error_code(&body)), (403, "role_not_allowed"));
    let (status, body) = fixture
        .bank
        .host
        .call("POST", &review(&held), Some(&fixture.payer.token), Some(json!({"decision": "approve"})))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, approved) =
        fixture.bank.host.call("POST", &review(&held), Some(&fixture.risk), Some(json!({"decision": "approve"}))).await;
    assert_eq!((status, approved["status"].as_str()), (200, Some("PROCESSING")), "{approved}");
    let path = format!("{PAYMENTS}/{}", payment_id(&held));
    fixture
        .bank
        .host
        .wait_for_json_as(&path, Some(&fixture.payer.token), "status", json!("COMPLETED"), Duration::from_secs(10))
        .await;
    let (status, body) =
        fixture.bank.host.call("POST", &review(&held), Some(&fixture.risk), Some(json!({"decision": "approve"}))).await;
    assert_eq!((status, error_code(&body)), (409, "not_in_review"));
    fixture.wait_until_reserved("0").await;

    // Declined in review: failed, its hold given back.
    let (status, held) = fixture.pay("700").await;
    assert_eq!((status, held["status"].as_str()), (201, Some("REQUIRES_REVIEW")), "{held}");
    let decline = json!({"decision": "decline", "notes": "card testing pattern"});
    let (status, declined) = fixture.bank.host.call("POST", &review(&held), Some(&fixture.risk), Some(decline)).await;
    assert_eq!(
        (status, declined["status"].as_str(), declined["error_code"].as_str()),
        (200, Some("FAILED"), Some("fraud_declined")),
        "{declined}"
    );
    assert_eq!(declined["error_message"], "card testing pattern");
    fixture.wait_until_reserved("0").await;

    // The payer was told, in the app, of each payment held for review.
    let started = std::time::Instant::now();
    loop {
        let (status, inbox) =
            fixture.bank.host.call("GET", "/v1/notification/notifications", Some(&fixture.payer.token), None).await;
        assert_eq!(status, 200, "{inbox}");
        let told: Vec<&Value> = inbox["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|shown| shown["notification_type"] == "payment_under_review")
            .collect();
        if told.len() == 2 {
            assert!(told[0]["message"].as_str().unwrap().contains("700.0000 USD is being reviewed"), "{inbox}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not told of the reviews: {inbox}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The alerts: one per decline or review, worked OPEN -> INVESTIGATING -> FALSE_POSITIVE.
    let (status, page) = fixture.risk("GET", "/alerts?status=OPEN", None).await;
    assert_eq!(status, 200);
    let alerts = page["alerts"].as_array().unwrap();
    let types: Vec<&str> = alerts.iter().map(|alert| alert["alert_type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["REVIEW_REQUIRED", "REVIEW_REQUIRED", "HIGH_RISK"], "{page}");
    let alert = format!("/alerts/{}", alerts[0]["alert_id"].as_str().unwrap());
    let (status, body) =
        fixture.risk("PATCH", &alert, Some(json!({"status": "RESOLVED", "resolution_notes": "x"}))).await;
    assert_eq!((status, error_code(&body)), (409, "invalid_transition"));
    let (status, body) = fixture.risk("PATCH", &alert, Some(json!({"status": "INVESTIGATING"}))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("INVESTIGATING")), "{body}");
    let (status, body) = fixture.risk("PATCH", &alert, Some(json!({"status": "FALSE_POSITIVE"}))).await;
    assert_eq!((status, error_code(&body)), (422, "validation_failed"));
    let (status, body) = fixture
        .risk("PATCH", &alert, Some(json!({"status": "FALSE_POSITIVE", "resolution_notes": "known customer"})))
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("FALSE_POSITIVE")), "{body}");
    assert!(body["resolved_by"].as_str().is_some_and(|key| fixture.risk.contains(key)), "{body}");

    // Demoted, it is shadow again; deactivated, it is not evaluated at all.
    let (status, demoted) = fixture.risk("POST", &format!("/rules/{rule_id}/demote"), None).await;
    assert_eq!(
        (status, demoted["enforced_version"].as_i64(), demoted["shadow_version"].as_i64()),
        (200, None, Some(2)),
        "{demoted}"
    );
    let (status, paid) = fixture.pay("800").await;
    assert_eq!((status, paid["status"].as_str()), (201, Some("COMPLETED")), "{paid}");
    assert_eq!(fixture.assessment(payment_id(&paid)).await["risk_factors"][0]["mode"], "SHADOW");
    let (status, _) = fixture.risk("POST", &format!("/rules/{rule_id}/deactivate"), None).await;
    assert_eq!(status, 200);
    let (_, paid) = fixture.pay("800").await;
    assert_eq!(fixture.assessment(payment_id(&paid)).await["risk_factors"], json!([]));
    let (_, rules) = fixture.risk("GET", "/rules", None).await;
    assert_eq!(
        (rules["rules"][0]["is_active"].as_bool(), rules["rules"][0]["fired_last_day"].as_i64()),
        (Some(false), Some(5)),
        "{rules}"
    );

    fixture.bank.wait_until_settled().await;
    let (clean, report) = fixture.bank.ledger_check();
    assert!(clean, "{report}");
}

#[tokio::test]
async fn rules_are_checked_and_only_the_risk_team_reaches_fraud_data() {
    let fixture = Fixture::start().await;

    // Conditions are checked when written, naming where they are wrong.
    let mut bad = large_amount("50");
    bad["rule_condition"] = json!({"all": [{"feature": "amount", "op": "gte", "value": 500.5}]});
    let (status, body) = fixture.risk("POST", "/rules", Some(bad)).await;
    assert_eq!((status, error_code(&body)), (422, "invalid_condition"));
    assert!(body["error"]["message"].as_str().unwrap().contains("condition.all[0].value"), "{body}");
    let mut bad = large_amount("101");
    bad["rule_name"] = json!("too-much");
    let (status, body) = fixture.risk("POST", "/rules", Some(bad)).await;
    assert_eq!((status, error_code(&body)), (422, "validation_failed"), "{body}");
    let (status, _) = fixture.risk("POST", "/rules", Some(large_amount("50"))).await;
    assert_eq!(status, 201);
    let (status, body) = fixture.risk("POST", "/rules", Some(large_amount("50"))).await;
    assert_eq!((status, error_code(&body)), (409, "rule_name_taken"));

    // Thresholds: checked, then in force.
    let thresholds = json!({"medium_score": "20", "high_score": "40", "critical_score": "60", "review_score": "70", "decline_score": "60", "errored_rule": "REVIEW"});
    let (status, body) = fixture.risk("PATCH", "/settings", Some(thresholds)).await;
    assert_eq!((status, error_code(&body)), (422, "validation_failed"), "{body}");

    // A user, an ops key and a platform key reach none of it; the assessment is the payment
    // service's alone.
    let host = &fixture.bank.host;
    for path in ["/rules", "/alerts", "/assessments", "/settings"] {
        let (status, _) = host.call("GET", &format!("{FRAUD}{path}"), Some(&fixture.payer.token), None).await;
        assert_eq!(status, 403, "a user reads {path}");
        for key in [&fixture.ops, &fixture.bank.platform] {
            let (status, body) = host.call("GET", &format!("{FRAUD}{path}"), Some(key), None).await;
            assert_eq!((status, error_code(&body)), (403, "role_not_allowed"), "{path}");
        }
    }
    let (status, body) =
        host.call("POST", &format!("{FRAUD}/rules"), Some(&fixture.ops), Some(large_amount("10"))).await;
    assert_eq!((status, error_code(&body)), (403, "role_not_allowed"));
    let assess = json!({"payment_id": uuid::Uuid::new_v4(), "payer_user_id": fixture.payer.user_id, "payer_account_id": id(&fixture.payer_account), "payee_account_id": id(&fixture.payee_account), "amount": "1", "currency": "USD"});
    for key in [&fixture.payer.token, &fixture.risk] {
        let (status, _) = host.call("POST", &format!("{FRAUD}/internal/assess"), Some(key), Some(assess.clone())).await;
        assert_eq!(status, 404, "the assessment is invisible from the gateway");
    }
}

/// An assessment reads the rule versions in force as one document, which every change of the
/// rules rewrites: rules written at once, promoted at once, then some deactivated at once, are
/// in force exactly as those changes left them, none lost to a change made beside it.
#[tokio::test]
async fn rules_changed_at_once_are_in_force_as_the_changes_left_them() {
    const RULES: usize = 8;
    let fixture = Fixture::start().await;
    let written = futures_util::future::join_all((0..RULES).map(|index| {
        let mut rule = large_amount("1");
        rule["rule_name"] = json!(format!("at-once-{index}"));
        fixture.risk("POST", "/rules", Some(rule))
    }))
    .await;
    let rule_ids: Vec<&str> = written
        .iter()
        .map(|(status, rule)| {
            assert_eq!(*status, 201, "{rule}");
            rule["rule_id"].as_str().unwrap()
        })
        .collect();
    let paths: Vec<String> = rule_ids.iter().map(|rule_id| format!("/rules/{rule_id}/promote")).collect();
    let promoted = futures_util::future::join_all(paths.iter().map(|path| fixture.risk("POST", path, None))).await;
    for (status, rule) in &promoted {
        assert_eq!((*status, rule["enforced_version"].as_i64()), (200, Some(1)), "{rule}");
    }

    let in_force = |rules: Vec<usize>| -> Vec<(String, String)> {
        rules.into_iter().map(|index| (format!("at-once-{index}"), "ENFORCE".into())).collect()
    };
    assert_eq!(fixture.evaluated_by_next_payment().await, in_force((0..RULES).collect()));

    // Deactivating is one statement per rule: each must still see the others' commits.
    let paths: Vec<String> =
        rule_ids.iter().skip(1).step_by(2).map(|rule_id| format!("/rules/{rule_id}/deactivate")).collect();
    let deactivated = futures_util::future::join_all(paths.iter().map(|path| fixture.risk("POST", path, None))).await;
    for (status, rule) in &deactivated {
        assert_eq!((*status, rule["is_active"].as_bool()), (200, Some(false)), "{rule}");
    }
    assert_eq!(fixture.evaluated_by_next_payment().await, in_force((0..RULES).step_by(2).collect()));
}

// ---- rule components ----

/// A component file in `target/components`, and a policy of the repository, as paths.
fn component(file: &str) -> String {
    micropay_tests::root().join("target/components").join(file).display().to_string()
}

fn policy(path: &str) -> String {
    micropay_tests::root().join(path).display().to_string()
}

impl Fixture {
    /// Deploys a rule component with the risk team's key: `micropay deploy FILE --policy P`.
    fn deploy_rule(&self, file: &str, policy_path: &str, extra: &[&str]) -> String {
        let (file, policy_path) = (component(file), policy(policy_path));
        let mut args = vec!["deploy", file.as_str(), "--policy", policy_path.as_str()];
        args.extend_from_slice(extra);
        let (ok, printed) = self.bank.host.command(&self.risk, &args);
        assert!(ok, "{printed}");
        printed
    }

    /// Names a deployed rule component in a rule of the fraud service, promoted to enforce
    /// when `enforce`: its id.
    async fn component_rule(&self, name: &str, component: &str, enforce: bool) -> String {
        let body =
            json!({"rule_name": name, "rule_type": "COMPONENT", "component": component, "risk_score_impact": "100"});
        let (status, rule) = self.risk("POST", "/rules", Some(body)).await;
        assert_eq!(status, 201, "{rule}");
        let rule_id = rule["rule_id"].as_str().unwrap().to_string();
        if enforce {
            let (status, body) = self.risk("POST", &format!("/rules/{rule_id}/promote"), None).await;
            assert_eq!(status, 200, "{body}");
        }
        rule_id
    }
}

/// The finding of `rule` in an assessment, if it fired or failed.
fn factor<'a>(assessment: &'a Value, rule: &str) -> Option<&'a Value> {
    assessment["risk_factors"].as_array().unwrap().iter().find(|factor| factor["rule_name"] == rule)
}

#[tokio::test]
async fn rule_components_are_deployed_by_the_risk_team_and_decide_once_promoted() {
    let fixture = Fixture::start().await;
    let host = &fixture.bank.host;

    // Only the risk team (or the platform) brings a new rule; ops may not, and a rule's policy
    // may not grant it anything.
    let (file, large_policy) =
        (component("large_amount.wasm"), policy("components/fraud-rules/large-amount/policy.toml"));
    let (ok, printed) = host.command(&fixture.ops, &["deploy", &file, "--policy", &large_policy]);
    assert!(!ok && printed.contains("new_service_needs_platform"), "{printed}");
    let (status, _) = host
        .call("POST", "/admin/components/large_amount/versions", Some(&fixture.payer.token), Some(json!({"wasm": ""})))
        .await;
    assert!(matches!(status, 401 | 403), "a user deploys nothing: {status}");
    let printed = fixture.deploy_rule("large_amount.wasm", "components/fraud-rules/large-amount/policy.toml", &[]);
    assert!(printed.contains("version 1"), "{printed}");
    let (status, body) = host.call("GET", "/v1/large_amount/anything", Some(&fixture.payer.token), None).await;
    assert_eq!(status, 404, "a rule is not served: {body}");

    // A service's component in a rule's clothing is refused before it runs.
    let sneaky = fixture.bank.host.options.data_dir.join("sneaky.toml");
    std::fs::write(&sneaky, "[component]\nname = \"sneaky\"\nfile = \"probe.wasm\"\nkind = \"fraud-rule\"\n[limits]\nfuel = 1000\ndeadline_ms = 5\n").unwrap();
    let (ok, printed) =
        host.command(&fixture.risk, &["deploy", &component("probe.wasm"), "--policy", &sneaky.display().to_string()]);
    assert!(!ok && printed.contains("imports_not_granted"), "{printed}");

    // Evaluating rules is a grant: the fraud service's own component under a policy without
    // `[plugins]` is refused before it runs, even with a platform key.
    let fraud_policy = std::fs::read_to_string(policy("policies/fraud.toml")).unwrap();
    let ungranted = fraud_policy
        .replace("name = \"fraud\"", "name = \"fraud_copy\"")
        .replace("[plugins]\nhost = [\"fraud-rule\"]", "");
    assert!(ungranted.contains("fraud_copy") && !ungranted.contains("[plugins]"), "{ungranted}");
    let ungranted_path = host.options.data_dir.join("fraud_copy.toml");
    std::fs::write(&ungranted_path, ungranted).unwrap();
    let (ok, printed) = host.command(
        &fixture.bank.platform,
        &["deploy", &component("fraud.wasm"), "--policy", &ungranted_path.display().to_string()],
    );
    assert!(!ok && printed.contains("imports_not_granted") && printed.contains("fraud-rules"), "{printed}");

    // Named in a rule, in shadow: it fires, recorded with its deployed version, and decides nothing.
    let rule_id = fixture.component_rule("large", "large_amount", false).await;
    let (status, paid) = fixture.pay("5000").await;
    assert_eq!((status, paid["status"].as_str()), (201, Some("COMPLETED")), "{paid}");
    let assessed = fixture.assessment(payment_id(&paid)).await;
    let fired = factor(&assessed, "large").unwrap_or_else(|| panic!("{assessed}"));
    assert_eq!(
        (fired["mode"].as_str(), fired["version"].as_i64(), fired["score"].as_str()),
        (Some("SHADOW"), Some(1), Some("60.00")),
        "{fired}"
    );
    assert_eq!(assessed["recommendation"], "APPROVE");

    // Promoted with the command, it decides: a score of 60 asks for a review.
    let (ok, printed) = host.command(&fixture.risk, &["fraud-rules", "promote", "large"]);
    assert!(ok && printed.contains("enforce v1"), "{printed}");
    let (status, held) = fixture.pay("5000").await;
    assert_eq!((status, held["status"].as_str()), (201, Some("REQUIRES_REVIEW")), "{held}");
    // (Cancelled by the payer: the day's transfer limit is 10000.)
    let cancel = format!("{PAYMENTS}/{}/cancel", payment_id(&held));
    let (status, body) = host.call("POST", &cancel, Some(&fixture.payer.token), None).await;
    assert_eq!(status, 200, "{body}");

    // A rule built with the standard wasm32-wasip2 toolchain runs too, its WASI empty.
    fixture.deploy_rule("night_owl.wasm", "components/fraud-rules/night-owl/policy.toml", &[]);
    fixture.component_rule("night-owl", "night_owl", false).await;
    let (_, paid) = fixture.pay("20").await;
    let assessed = fixture.assessment(payment_id(&paid)).await;
    assert!(factor(&assessed, "night-owl").is_none_or(|fired| fired["error"].is_null()), "{assessed}");
    assert_eq!(assessed["rules_evaluated"].as_array().unwrap().len(), 2, "{assessed}");

    // The list and the backtest, from the command line.
    let (ok, printed) = host.command(&fixture.risk, &["fraud-rules", "list"]);
    assert!(
        ok && printed.contains("component large_amount") && printed.contains("fired 2 in the last day"),
        "{printed}"
    );
    let (ok, printed) = host.command(&fixture.risk, &["fraud-rules", "backtest", "large", "--limit", "10"]);
    assert!(ok && printed.contains("flagged 2 of the last 3 assessments"), "{printed}");
    let (ok, printed) = host.command(&fixture.ops, &["fraud-rules", "list"]);
    assert!(!ok && printed.contains("role_not_allowed"), "{printed}");
    let (status, body) = fixture
        .risk(
            "POST",
            &format!("/rules/{rule_id}/versions"),
            Some(json!({"rule_condition": {"feature": "amount", "op": "gt", "value": "1"}, "risk_score_impact": "1"})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "component_rule"));
}

#[tokio::test]
async fn a_rule_component_swapped_under_load_decides_from_the_next_payment_and_rolls_back() {
    let fixture = Fixture::start().await;
    // Version 1 never matches a payment of 17; version 2 (the rule probe, same name) declines it.
    let swap_policy = fixture.bank.host.options.data_dir.join("swap_rule.toml");
    let text = std::fs::read_to_string(policy("components/testing/rule-probe/policy.toml")).unwrap();
    std::fs::write(&swap_policy, text.replace("name = \"rule_probe\"", "name = \"swap_rule\"")).unwrap();
    let swap_policy = swap_policy.display().to_string();
    let deploy = |file: &str| {
        let file = component(file);
        let (ok, printed) = fixture.bank.host.command(&fixture.risk, &["deploy", &file, "--policy", &swap_policy]);
        assert!(ok, "{printed}");
    };
    deploy("large_amount.wasm");
    fixture.component_rule("swap", "swap_rule", true).await;

    // 16 clients pay 17 at a time, each payment stamped with when it was sent.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (http, url) = (fixture.bank.host.http.clone(), fixture.bank.host.url(PAYMENTS));
            let (token, stop) = (fixture.payer.token.clone(), stop.clone());
            let body = json!({"payer_account_id": id(&fixture.payer_account), "payee_account_id": id(&fixture.payee_account), "amount": "17", "currency": "USD"});
            tokio::spawn(async move {
                let mut sent = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = uuid::Uuid::new_v4().to_string();
                    let at = Instant::now();
                    let request = http.post(&url).bearer_auth(&token).header("idempotency-key", &key).json(&body);
                    let response = request.send().await.expect("request sent");
                    let status = response.status().as_u16();
                    let answer: Value = response.json().await.unwrap_or(Value::Null);
                    sent.push((at, Instant::now(), status, answer));
                }
                sent
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A payment is decided between its sending and its answer: one that spans a swap's command
    // may go either way.
    let deploying = Instant::now();
    deploy("rule_probe.wasm");
    let swapped = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rolling_back = Instant::now();
    let (ok, printed) = fixture.bank.host.command(&fixture.risk, &["rollback", "swap_rule"]);
    assert!(ok, "{printed}");
    let rolled_back = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.unwrap());
    }

    // No request failed; each decision is the version's in force when the payment was sent
    // (those in flight while a swap's command ran may go either way).
    let failed: Vec<_> = sent.iter().filter(|(_, _, status, _)| *status >= 500).collect();
    assert!(failed.is_empty(), "{} of {} failed: {:?}", failed.len(), sent.len(), failed.first());
    let (mut before, mut during, mut after) = (0, 0, 0);
    for (at, answered, status, answer) in &sent {
        let declined = *status == 422 && error_code(answer) == "fraud_declined";
        if *at > swapped && *answered < rolling_back {
            assert!(declined, "sent after the deploy: {status} {answer}");
            during += 1;
        } else if *at > rolled_back || *answered < deploying {
            assert_eq!(*status, 201, "sent before the deploy or after the rollback: {answer}");
            if *at > rolled_back { after += 1 } else { before += 1 }
        }
    }
    assert!(before > 0 && during > 0 && after > 0, "{before} {during} {after}");
    // The assessments name the version that decided.
    let (_, page) = fixture.risk("GET", "/assessments?recommendation=DECLINE&limit=1", None).await;
    assert_eq!(factor(&page["assessments"][0], "swap").unwrap()["version"], 2, "{page}");
    let (_, page) = fixture.risk("GET", "/assessments?limit=1", None).await;
    assert_eq!(page["assessments"][0]["rules_evaluated"][0]["version"], 1, "rolled back to version 1: {page}");

    // On trial for half the payments (by payment id): each decided by the version that ran it;
    // promoted, it decides them all.
    let probe = component("rule_probe.wasm");
    let (ok, printed) =
        fixture.bank.host.command(&fixture.risk, &["deploy", &probe, "--policy", &swap_policy, "--canary", "50"]);
    assert!(ok, "{printed}");
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let (status, answer) = fixture.pay("17").await;
        let (_, page) = fixture.risk("GET", "/assessments?limit=1", None).await;
        let version = page["assessments"][0]["rules_evaluated"][0]["version"].as_i64().unwrap();
        assert_eq!(status == 422, version == 3, "version {version} answered {status} {answer}");
        versions.insert(version);
    }
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), vec![1, 3], "both versions decide some payments");
    let (ok, printed) = fixture.bank.host.command(&fixture.risk, &["promote", "swap_rule"]);
    assert!(ok, "{printed}");
    let (status, declined) = fixture.pay("17").await;
    assert_eq!((status, error_code(&declined)), (422, "fraud_declined"), "{declined}");
}

#[tokio::test]
async fn a_hostile_rule_fails_only_its_own_evaluation_as_the_policy_says() {
    let fixture = Fixture::start().await;
    fixture.deploy_rule("rule_probe.wasm", "components/testing/rule-probe/policy.toml", &[]);
    fixture.component_rule("probe", "rule_probe", true).await;

    // A loop, a memory bomb, a trap and a score out of range: each an errored rule, which by
    // default asks for a review; the payment itself never fails for it.
    for (amount, reason) in [("13", "fuel"), ("14", "memory"), ("15", "trapped"), ("16", "not a decimal from 0 to 100")]
    {
        let (status, held) = fixture.pay(amount).await;
        assert_eq!((status, held["status"].as_str()), (201, Some("REQUIRES_REVIEW")), "{amount}: {held}");
        let assessed = fixture.assessment(payment_id(&held)).await;
        let failed = factor(&assessed, "probe").unwrap_or_else(|| panic!("{assessed}"));
        assert!(failed["error"].as_str().is_some_and(|error| error.contains(reason)), "{amount}: {failed}");
    }
    // The host counts the three it cut (the fourth answered, and the fraud service refused the answer).
    let failures =
        fixture.bank.host.metric("micropay_fraud_rule_evaluations_total{rule=\"rule_probe\",result=\"Failed\"}").await;
    assert!(failures >= 3.0, "{failures}");

    // The policy says to ignore an errored rule: the payment goes through.
    let settings = json!({"medium_score": "30", "high_score": "60", "critical_score": "85", "review_score": "50", "decline_score": "80", "errored_rule": "IGNORE"});
    let (status, body) = fixture.risk("PATCH", "/settings", Some(settings)).await;
    assert_eq!(status, 200, "{body}");
    let (status, paid) = fixture.pay("15").await;
    assert_eq!((status, paid["status"].as_str()), (201, Some("COMPLETED")), "{paid}");
    // And when it answers, it decides.
    let (status, declined) = fixture.pay("17").await;
    assert_eq!((status, error_code(&declined)), (422, "fraud_declined"), "{declined}");
}
