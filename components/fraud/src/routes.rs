//! The endpoints and the event handler: each reads its input, applies the rules of
//! [`crate::domain`], runs the statements of [`crate::sql`], and shapes the answer.
//! `components/FRAUD.md` is what they keep.

use micropay_sdk::contracts::{Assessment, AssessmentRequest, PaymentStatuses, PaymentStatusesRequest};
use micropay_sdk::cursor::Page;
use micropay_sdk::money::{self, Amount, Currency, Decimal};
use micropay_sdk::{AdminRole, ApiError, Context, Response, Row, events, services};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::bindings::exports::micropay::platform::subscriber::Event;
use crate::domain::{self, AlertStatus, LiveRule, Mode, Test};
use crate::features::{self, Features};
use crate::{rule_components, sql};

const HOUR_MICROS: i64 = 3_600_000_000;

/// Backtests run over this many past assessments unless asked otherwise, and at most over
/// [`MAX_BACKTEST`].
const DEFAULT_BACKTEST: i64 = 1_000;
const MAX_BACKTEST: i64 = 10_000;

// ---- who is asking ----

/// Everything here but the assessment is the risk team's: another admin role is 403 (a user
/// never gets this far: the routes take admin keys only).
fn risk_team(ctx: &Context, action: &str) -> Result<Option<String>, ApiError> {
    micropay_sdk::principal::require_admin_role(ctx.administrator()?, &[AdminRole::Risk], action)?;
    Ok(micropay_sdk::principal::administrator_key())
}

fn path_id(ctx: &Context, name: &str, what: &str) -> Result<String, ApiError> {
    let id = ctx.param(name);
    if !micropay_sdk::is_uuid(id) {
        return Err(ApiError::not_found(format!("no {what} {id}")));
    }
    Ok(id.to_ascii_lowercase())
}

// ---- assessing ----

/// `POST /internal/assess` (the payment service, before it authorizes a payment): builds the
/// payment's features, evaluates the active rule versions, records the assessment (and an
/// alert when it warrants one) and answers the decision. A payment assessed already gets its
/// first assessment again.
pub fn assess(ctx: &mut Context) -> Result<Response, ApiError> {
    let request: AssessmentRequest = ctx.json()?;
    for (field, id) in [
        ("payment_id", &request.payment_id),
        ("payer_user_id", &request.payer_user_id),
        ("payer_account_id", &request.payer_account_id),
        ("payee_account_id", &request.payee_account_id),
    ] {
        micropay_sdk::fields::uuid(field, id)?;
    }
    let amount = Amount::parse(&request.amount).map_err(ApiError::validation)?;
    let currency = Currency::parse(&request.currency).map_err(ApiError::validation)?;
    let now = micropay_sdk::now_micros();
    let db = ctx.db()?;
    let inputs =
        sql::assessment_inputs(db, &request.payer_user_id, &request.payer_account_id, &request.payee_account_id, now)?;
    let thresholds = sql::thresholds_of(&inputs);
    let rules = live_rules(&inputs.text("rules"))?;
    let features = features_of(amount.value(), currency.code(), &inputs, now);
    let components = rule_components::evaluate(&domain::components(&rules), &request.payment_id, &features);
    let decision = domain::decide(&thresholds, domain::evaluate(&rules, &features, &components));
    let model_version = domain::model_version(&rules, &components);
    let risk_score = domain::score_text(decision.score);
    let level = domain::level_name(decision.level);
    let recommendation = domain::recommendation_name(decision.recommendation);
    let alert_type = domain::alert_for(&decision);
    let written = sql::insert_assessment(
        db,
        &sql::NewAssessment {
            payment_id: &request.payment_id,
            user_id: &request.payer_user_id,
            payer_account_id: &request.payer_account_id,
            payee_account_id: &request.payee_account_id,
            amount: &money::format(amount.value()),
            currency: currency.code(),
            risk_score: risk_score.clone(),
            risk_level: level,
            recommendation,
            risk_factors: Json::Array(decision.findings.iter().map(domain::Finding::to_json).collect()),
            model_version: &model_version,
            rules_evaluated: domain::rules_evaluated(&rules, &components),
            features: &features,
            assessed_at: now,
            alert_type,
            alert_description: alert_type.map(|_| {
                let fired: Vec<&str> = decision.findings.iter().map(|finding| finding.rule_name.as_str()).collect();
                format!("score {risk_score} ({level}), {recommendation}; rules: {}", fired.join(", "))
            }),
        },
    )?;
    let Some(written) = written else {
        // Assessed already (the payment service asked again): the first answer stands.
        let stored = sql::assessment_of_payment(db, &request.payment_id)?
            .ok_or_else(|| ApiError::internal("an assessment both exists and does not"))?;
        return Ok(Response::ok(&answer_of(&stored)));
    };
    let assessment_id = written.text("assessment_id");
    if let Some(alert_id) = written.opt_text("alert_id") {
        let data = json!({
            "alert_id": alert_id,
            "assessment_id": assessment_id,
            "payment_id": request.payment_id,
            "alert_type": alert_type,
            "severity": level,
            "risk_score": risk_score,
            "recommendation": recommendation,
        });
        events::publish("fraud.alert_opened", &alert_id, &data)?;
    }
    Ok(Response::ok(&Assessment {
        assessment_id,
        risk_score,
        risk_level: decision.level,
        recommendation: decision.recommendation,
        model_version,
    }))
}

/// The contract's answer for a stored assessment.
fn answer_of(row: &Row) -> Assessment {
    fn parse<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> T {
        serde_json::from_value(Json::String(row.text(column))).expect("a CHECK keeps it valid")
    }
    Assessment {
        assessment_id: row.text("assessment_id"),
        risk_score: domain::score_text(money::decimal(&row.text("risk_score"))),
        risk_level: parse(row, "risk_level"),
        recommendation: parse(row, "recommendation"),
        model_version: row.opt_text("model_version").unwrap_or_default(),
    }
}

/// The rule versions of [`sql::assessment_inputs`]' `rules`, their conditions read.
fn live_rules(rules: &str) -> Result<Vec<LiveRule>, ApiError> {
    #[derive(Deserialize)]
    struct Stored {
        rule_id: String,
        rule_name: String,
        rule_type: String,
        version: i64,
        mode: String,
        rule_condition: Json,
        risk_score_impact: String,
    }
    let stored: Vec<Stored> = serde_json::from_str(rules)
        .map_err(|err| ApiError::internal(&format!("the rules as stored do not read: {err}")))?;
    Ok(stored
        .into_iter()
        .map(|rule| LiveRule {
            test: domain::test_of(&rule.rule_type, &rule.rule_condition),
            mode: Mode::parse(&rule.mode).unwrap_or(Mode::Shadow),
            impact: money::decimal(&rule.risk_score_impact),
            rule_id: rule.rule_id,
            rule_name: rule.rule_name,
            version: rule.version,
        })
        .collect())
}

/// A payment's features from its request and what [`sql::assessment_inputs`] read, as of `now`.
fn features_of(amount: Decimal, currency: &str, inputs: &Row, now: i64) -> Features {
    let age = |column: &str| inputs.opt_timestamp(column).map(|opened| ((now - opened) / HOUR_MICROS).max(0));
    Features {
        amount,
        currency: currency.to_string(),
        hour_of_day: now.div_euclid(HOUR_MICROS).rem_euclid(24),
        amount_is_round: features::is_round(amount),
        payer_account_age_hours: age("payer_opened_at"),
        payee_account_age_hours: age("payee_opened_at"),
        payer_payments_last_hour: inputs.int("payments_last_hour"),
        payer_amount_last_hour: money::decimal(&inputs.text("amount_last_hour")),
        payer_payments_last_day: inputs.int("payments_last_day"),
        payer_amount_last_day: money::decimal(&inputs.text("amount_last_day")),
        payer_round_amounts_last_day: inputs.int("round_last_day"),
        first_payment_to_payee: inputs.bool("first_to_payee"),
        payer_email_verified: inputs.bool("email_verified"),
    }
}

// ---- what events teach ----

/// Handles a batch of events: accounts opened (their age) and users verified, each kind with
/// one statement.
pub fn learn(events: &[Event]) -> Result<(), String> {
    let mut accounts = Vec::new();
    let mut verified = Vec::new();
    for event in events {
        match event.topic.as_str() {
            "account.opened" => {
                let data: Json = serde_json::from_str(&event.data).unwrap_or(Json::Null);
                if let (Some(account_id), Some(user_id)) = (data["account_id"].as_str(), data["user_id"].as_str()) {
                    let opened_at = micropay_sdk::time::rfc3339(event.time);
                    accounts.push(json!({"account_id": account_id, "user_id": user_id, "opened_at": opened_at}));
                }
            }
            "user.verified" if micropay_sdk::is_uuid(&event.subject) => verified.push(event.subject.clone()),
            // The policy subscribes to nothing else; another topic is acknowledged, not retried.
            other => micropay_sdk::log_warn(&format!("event {} on unexpected topic {other}", event.id)),
        }
    }
    let db = micropay_sdk::Db::open().map_err(|err| err.message)?;
    let failed = |err: micropay_sdk::db::DbError| err.message;
    if !accounts.is_empty() {
        sql::insert_accounts(&db, &Json::Array(accounts)).map_err(failed)?;
    }
    if !verified.is_empty() {
        sql::mark_verified(&db, &verified).map_err(failed)?;
    }
    Ok(())
}

// ---- rules ----

fn rule_json(row: &Row) -> Json {
    json!({
        "rule_id": row.text("rule_id"),
        "rule_name": row.text("rule_name"),
        "rule_type": row.text("rule_type"),
        "description": row.opt_text("description"),
        "rule_condition": row.json("rule_condition"),
        "risk_score_impact": domain::score_text(money::decimal(&row.text("risk_score_impact"))),
        "is_active": row.bool("is_active"),
        "priority": row.int("priority"),
        "enforced_version": row.opt_int("enforced_version"),
        "shadow_version": row.opt_int("shadow_version"),
        "latest_version": row.opt_int("latest_version"),
        "fired_last_day": row.int("fired_last_day"),
        "created_by": row.opt_text("created_by"),
        "created_at": row.rfc3339("created_at"),
        "updated_at": row.rfc3339("updated_at"),
    })
}

/// `GET /rules`: every rule, with the versions in force and how often each fired in the day.
pub fn list_rules(ctx: &mut Context) -> Result<Response, ApiError> {
    risk_team(ctx, "reading fraud rules")?;
    let rows = sql::list_rules(ctx.db()?, micropay_sdk::now_micros())?;
    Ok(Response::ok(&json!({ "rules": rows.iter().map(rule_json).collect::<Vec<_>>() })))
}

/// `POST /rules` `{rule_name, description?, rule_type?, rule_condition | component,
/// risk_score_impact, priority?}`: a rule whose first version is in shadow, declarative (the
/// default) or a rule component deployed on the host (`COMPONENT`; its score is capped at
/// `risk_score_impact`). 422 `invalid_condition` (naming where); 409 `rule_name_taken`.
pub fn create_rule(ctx: &mut Context) -> Result<Response, ApiError> {
    let by = risk_team(ctx, "writing fraud rules")?;
    let new: domain::NewRule = ctx.json()?;
    let name = domain::rule_name(&new.rule_name)?;
    let description = micropay_sdk::fields::text("description", new.description.as_deref(), 1000)?;
    let condition = new.checked_condition()?;
    let impact = domain::score("risk_score_impact", &new.risk_score_impact)?.to_string();
    let db = ctx.db()?;
    let row = sql::NewRuleRow {
        name: &name,
        rule_type: new.rule_type.as_str(),
        description: description.as_deref(),
        condition: &condition,
        impact: &impact,
        priority: new.priority,
        created_by: by.as_deref(),
    };
    let rule_id = sql::insert_rule(db, &row)?
        .ok_or_else(|| ApiError::conflict("rule_name_taken", format!("a rule named {name} exists")))?;
    sql::insert_version(db, &rule_id, 1, &condition, &impact, Mode::Shadow, by.as_deref())?;
    let row = sql::find_rule(db, &rule_id, micropay_sdk::now_micros())?
        .ok_or_else(|| ApiError::internal("a rule just written is gone"))?;
    Ok(Response::created(&rule_json(&row)))
}

/// The rule of the path, or 404.
fn rule_of_path(ctx: &mut Context) -> Result<Row, ApiError> {
    let rule_id = path_id(ctx, "rule_id", "rule")?;
    sql::find_rule(ctx.db()?, &rule_id, micropay_sdk::now_micros())?
        .ok_or_else(|| ApiError::not_found(format!("no rule {rule_id}")))
}

/// `GET /rules/{rule_id}`: the rule and every version of it, newest first.
pub fn get_rule(ctx: &mut Context) -> Result<Response, ApiError> {
    risk_team(ctx, "reading fraud rules")?;
    let row = rule_of_path(ctx)?;
    let versions: Vec<Json> = sql::versions_of(ctx.db()?, &row.text("rule_id"))?
        .iter()
        .map(|version| {
            json!({
                "version": version.int("version"),
                "mode": version.text("mode"),
                "rule_condition": version.json("rule_condition"),
                "risk_score_impact": domain::score_text(money::decimal(&version.text("risk_score_impact"))),
                "created_by": version.opt_text("created_by"),
                "created_at": version.rfc3339("created_at"),
                "mode_changed_at": version.rfc3339("mode_changed_at"),
            })
        })
        .collect();
    let mut rule = rule_json(&row);
    rule["versions"] = Json::Array(versions);
    Ok(Response::ok(&rule))
}

/// The rule of the path, locked for a change of its versions, or 404.
fn locked_rule(ctx: &mut Context) -> Result<Row, ApiError> {
    let rule_id = path_id(ctx, "rule_id", "rule")?;
    sql::lock_rule(ctx.db()?, &rule_id)?.ok_or_else(|| ApiError::not_found(format!("no rule {rule_id}")))
}

/// The rule after a change, as `GET /rules/{rule_id}` shows it (without its versions).
fn changed_rule(ctx: &mut Context, rule_id: &str) -> Result<Response, ApiError> {
    let row = sql::find_rule(ctx.db()?, rule_id, micropay_sdk::now_micros())?
        .ok_or_else(|| ApiError::internal("a rule just changed is gone"))?;
    Ok(Response::ok(&rule_json(&row)))
}

/// `POST /rules/{rule_id}/versions` `{rule_condition, risk_score_impact}`: the next version of a
/// declarative rule, in shadow beside the enforced one; a shadow version it replaces is
/// retired. 409 `component_rule` for a rule component, whose versions are its deploys.
pub fn add_version(ctx: &mut Context) -> Result<Response, ApiError> {
    let by = risk_team(ctx, "writing fraud rules")?;
    let new: domain::NewVersion = ctx.json()?;
    domain::check_condition(&new.rule_condition)?;
    let impact = domain::score("risk_score_impact", &new.risk_score_impact)?;
    let rule = locked_rule(ctx)?;
    let rule_id = rule.text("rule_id");
    if rule.text("rule_type") == domain::RuleType::Component.as_str() {
        return Err(ApiError::conflict(
            "component_rule",
            "a rule component's versions are its deploys (micropay deploy, rollback, promote)",
        ));
    }
    let db = ctx.db()?;
    if let Some(shadow) = rule.opt_int("shadow_version") {
        sql::set_modes(db, &rule_id, &[(shadow, Mode::Retired)])?;
    }
    let version = rule.opt_int("latest_version").unwrap_or(0) + 1;
    sql::insert_version(db, &rule_id, version, &new.rule_condition, &impact.to_string(), Mode::Shadow, by.as_deref())?;
    let mut response = changed_rule(ctx, &rule_id)?;
    response.status = 201;
    Ok(response)
}

/// `POST /rules/{rule_id}/promote`: the shadow version decides from the next assessment on; the
/// version enforced until then is retired. 409 `no_shadow_version`.
pub fn promote_rule(ctx: &mut Context) -> Result<Response, ApiError> {
    risk_team(ctx, "promoting fraud rules")?;
    let rule = locked_rule(ctx)?;
    let rule_id = rule.text("rule_id");
    let (promoted, retired) = domain::promotion(rule.opt_int("shadow_version"), rule.opt_int("enforced_version"))?;
    let mut modes: Vec<(i64, Mode)> = retired.map(|version| (version, Mode::Retired)).into_iter().collect();
    modes.push((promoted, Mode::Enforce));
    sql::set_modes(ctx.db()?, &rule_id, &modes)?;
    changed_rule(ctx, &rule_id)
}

/// `POST /rules/{rule_id}/demote`: the enforced version goes back to shadow (a shadow version
/// it displaces is retired). 409 `not_enforced`.
pub fn demote_rule(ctx: &mut Context) -> Result<Response, ApiError> {
    risk_team(ctx, "demoting fraud rules")?;
    let rule = locked_rule(ctx)?;
    let rule_id = rule.text("rule_id");
    let (demoted, retired) = domain::demotion(rule.opt_int("shadow_version"), rule.opt_int("enforced_version"))?;
    let mut modes: Vec<(i64, Mode)> = retired.map(|version| (version, Mode::Retired)).into_iter().collect();
    modes.push((demoted, Mode::Shadow));
    sql::set_modes(ctx.db()?, &rule_id, &modes)?;
    changed_rule(ctx, &rule_id)
}

/// `POST /rules/{rule_id}/deactivate`: the rule is no longer evaluated (its versions keep
/// their modes, for when it is activated again).
pub fn deactivate_rule(ctx: &mut Context) -> Result<Response, ApiError> {
    set_active(ctx, false)
}

/// `POST /rules/{rule_id}/activate`.
pub fn activate_rule(ctx: &mut Context) -> Result<Response, ApiError> {
    set_active(ctx, true)
}

fn set_active(ctx: &mut Context, active: bool) -> Result<Response, ApiError> {
    risk_team(ctx, "activating fraud rules")?;
    let rule_id = locked_rule(ctx)?.text("rule_id");
    sql::set_active(ctx.db()?, &rule_id, active)?;
    changed_rule(ctx, &rule_id)
}

/// `POST /rules/{rule_id}/backtest` `{version?, limit?}`: runs a version (the shadow one by
/// default, else the enforced one, else the newest; for a rule component, its deployed
/// version) over the features of the last `limit`
/// assessments (1000 by default, at most 10000) and counts what it would have flagged by the
/// payments' later outcome, beside the same counts for all of them.
pub fn backtest_rule(ctx: &mut Context) -> Result<Response, ApiError> {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Backtest {
        version: Option<i64>,
        limit: Option<i64>,
    }
    risk_team(ctx, "backtesting fraud rules")?;
    let request: Backtest = if ctx.body().is_empty() { Backtest::default() } else { ctx.json()? };
    let limit = request.limit.unwrap_or(DEFAULT_BACKTEST);
    if !(1..=MAX_BACKTEST).contains(&limit) {
        return Err(ApiError::validation(format!("limit: from 1 to {MAX_BACKTEST}")));
    }
    let rule = rule_of_path(ctx)?;
    let rule_id = rule.text("rule_id");
    let version = request
        .version
        .or(rule.opt_int("shadow_version"))
        .or(rule.opt_int("enforced_version"))
        .or(rule.opt_int("latest_version"))
        .ok_or_else(|| ApiError::internal("a rule without versions"))?;
    let db = ctx.db()?;
    let stored = sql::find_version(db, &rule_id, version)?
        .ok_or_else(|| ApiError::not_found(format!("rule {rule_id} has no version {version}")))?;
    let live = LiveRule {
        rule_id: rule_id.clone(),
        rule_name: rule.text("rule_name"),
        version,
        mode: Mode::Enforce,
        impact: money::decimal(&stored.text("risk_score_impact")),
        test: domain::test_of(&rule.text("rule_type"), &stored.json("rule_condition")),
    };
    if let Test::Condition(Err(err)) = &live.test {
        return Err(ApiError::internal(&format!("version {version} no longer reads: {err}")));
    }
    let rules = std::slice::from_ref(&live);
    let names = domain::components(rules);
    let past = sql::recent_assessments(db, limit)?;
    let statuses = payment_statuses(&past)?;
    let outcomes: Vec<(&'static str, bool)> = past
        .iter()
        .map(|row| {
            let outcome = domain::later_outcome(
                row.opt_text("alert_status").as_deref(),
                &row.text("recommendation"),
                statuses.get(&row.text("payment_id")).map(String::as_str),
            );
            // A rule that fails on a payment did not flag it.
            let flagged = serde_json::from_value::<Features>(row.json("features")).is_ok_and(|features| {
                let components = rule_components::evaluate(&names, &row.text("payment_id"), &features);
                domain::evaluate(rules, &features, &components).iter().any(|finding| finding.error.is_none())
            });
            (outcome, flagged)
        })
        .collect();
    let flagged = outcomes.iter().filter(|(_, flagged)| *flagged).count();
    Ok(Response::ok(&json!({
        "rule_id": rule_id,
        "rule_name": rule.text("rule_name"),
        "version": version,
        "mode": stored.text("mode"),
        "assessments": outcomes.len(),
        "flagged": flagged,
        "flagged_by_outcome": domain::tally(outcomes.iter().filter(|(_, flagged)| *flagged).map(|(outcome, _)| *outcome)),
        "all_by_outcome": domain::tally(outcomes.iter().map(|(outcome, _)| *outcome)),
    })))
}

/// What became of the payments of `assessments`, as the payment service says now.
fn payment_statuses(assessments: &[Row]) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let payment_ids = assessments.iter().map(|row| row.text("payment_id")).collect();
    let request = PaymentStatusesRequest { payment_ids };
    let answer: PaymentStatuses =
        services::call_typed("payment", "POST", "/internal/payments/statuses", Some(&request))?;
    Ok(answer.statuses)
}

// ---- settings ----

fn settings_json(row: &Row) -> Json {
    json!({
        "medium_score": domain::score_text(money::decimal(&row.text("medium_score"))),
        "high_score": domain::score_text(money::decimal(&row.text("high_score"))),
        "critical_score": domain::score_text(money::decimal(&row.text("critical_score"))),
        "review_score": domain::score_text(money::decimal(&row.text("review_score"))),
        "decline_score": domain::score_text(money::decimal(&row.text("decline_score"))),
        "errored_rule": row.text("errored_rule"),
        "updated_at": row.rfc3339("updated_at"),
        "updated_by": row.opt_text("updated_by"),
    })
}

/// `GET /settings`: the thresholds.
pub fn get_settings(ctx: &mut Context) -> Result<Response, ApiError> {
    risk_team(ctx, "reading fraud settings")?;
    Ok(Response::ok(&settings_json(&sql::settings(ctx.db()?)?)))
}

/// `PATCH /settings` with every threshold: in force from the next assessment on.
pub fn update_settings(ctx: &mut Context) -> Result<Response, ApiError> {
    let by = risk_team(ctx, "changing fraud settings")?;
    let request: domain::ThresholdsRequest = ctx.json()?;
    let thresholds = domain::Thresholds::from_request(&request)?;
    Ok(Response::ok(&settings_json(&sql::update_settings(ctx.db()?, &thresholds, by.as_deref())?)))
}

// ---- assessments ----

fn assessment_json(row: &Row) -> Json {
    json!({
        "assessment_id": row.text("assessment_id"),
        "payment_id": row.text("payment_id"),
        "user_id": row.opt_text("user_id"),
        "payer_account_id": row.text("payer_account_id"),
        "payee_account_id": row.text("payee_account_id"),
        "amount": money::format(money::decimal(&row.text("amount"))),
        "currency": row.text("currency"),
        "risk_score": domain::score_text(money::decimal(&row.text("risk_score"))),
        "risk_level": row.text("risk_level"),
        "recommendation": row.text("recommendation"),
        "risk_factors": row.json("risk_factors"),
        "model_version": row.opt_text("model_version"),
        "rules_evaluated": row.json("rules_evaluated"),
        "features": row.json("features"),
        "assessed_at": row.rfc3339("assessed_at"),
    })
}

/// A query parameter that must be one of `allowed`, upper case; 400 `invalid_{name}` otherwise.
fn one_of(ctx: &Context, name: &str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
    match ctx.query(name).filter(|value| !value.is_empty()) {
        None => Ok(None),
        Some(value) if allowed.contains(&value.as_str()) => Ok(Some(value)),
        Some(value) => Err(ApiError::bad_request(
            &format!("invalid_{name}"),
            format!("{name} {value:?} is not one of {}", allowed.join(", ")),
        )),
    }
}

fn uuid_query(ctx: &Context, name: &str) -> Result<Option<String>, ApiError> {
    ctx.query(name)
        .filter(|value| !value.is_empty())
        .map(|value| {
            micropay_sdk::is_uuid(&value)
                .then(|| value.to_ascii_lowercase())
                .ok_or_else(|| ApiError::bad_request(&format!("invalid_{name}"), format!("{name} must be a UUID")))
        })
        .transpose()
}

const LEVELS: [&str; 4] = ["LOW", "MEDIUM", "HIGH", "CRITICAL"];

/// `GET /assessments?payment_id=&risk_level=&recommendation=&limit=&cursor=`, newest first.
pub fn list_assessments(ctx: &mut Context) -> Result<Response, ApiError> {
    risk_team(ctx, "reading fraud assessments")?;
    let filter = sql::AssessmentFilter {
        payment_id: uuid_query(ctx, "payment_id")?,
        risk_level: one_of(ctx, "risk_level", &LEVELS)?,
        recommendation: one_of(ctx, "recommendation", &["APPROVE", "REVIEW", "DECLINE"])?,
        page: Page::from_query(|name| ctx.query(name))?,
    };
    let mut rows = sql::list_assessments(ctx.db()?, &filter)?;
    let next_cursor = filter.page.cut(&mut rows, "assessment_id");
    Ok(Response::ok(&json!({
        "assessments": rows.iter().map(assessment_json).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

/// `GET /assessments/{assessment_id}`.
pub fn get_assessment(ctx: &mut Context) -> Result<Response, ApiError> {
    risk_team(ctx, "reading fraud assessments")?;
    let id = path_id(ctx, "assessment_id", "assessment")?;
    let row =
        sql::find_assessment(ctx.db()?, &id)?.ok_or_else(|| ApiError::not_found(format!("no assessment {id}")))?;
    Ok(Response::ok(&assessment_json(&row)))
}

// ---- alerts ----

fn alert_json(row: &Row) -> Json {
    json!({
        "alert_id": row.text("alert_id"),
        "assessment_id": row.text("assessment_id"),
        "payment_id": row.text("payment_id"),
        "alert_type": row.text("alert_type"),
        "severity": row.text("severity"),
        "description": row.opt_text("description"),
        "status": row.text("status"),
        "resolved_at": row.opt_rfc3339("resolved_at"),
        "resolved_by": row.opt_text("resolved_by"),
        "resolution_notes": row.opt_text("resolution_notes"),
        "created_at": row.rfc3339("created_at"),
        "updated_at": row.rfc3339("updated_at"),
    })
}

/// `GET /alerts?status=&severity=&payment_id=&limit=&cursor=`, newest first.
pub fn list_alerts(ctx: &mut Context) -> Result<Response, ApiError> {
    risk_team(ctx, "reading fraud alerts")?;
    let status = one_of(ctx, "status", &["OPEN", "INVESTIGATING", "RESOLVED", "FALSE_POSITIVE"])?;
    let filter = sql::AlertFilter {
        status: status.as_deref().and_then(AlertStatus::parse),
        severity: one_of(ctx, "severity", &LEVELS)?,
        payment_id: uuid_query(ctx, "payment_id")?,
        page: Page::from_query(|name| ctx.query(name))?,
    };
    let mut rows = sql::list_alerts(ctx.db()?, &filter)?;
    let next_cursor = filter.page.cut(&mut rows, "alert_id");
    Ok(Response::ok(&json!({ "alerts": rows.iter().map(alert_json).collect::<Vec<_>>(), "next_cursor": next_cursor })))
}

/// `GET /alerts/{alert_id}`.
pub fn get_alert(ctx: &mut Context) -> Result<Response, ApiError> {
    risk_team(ctx, "reading fraud alerts")?;
    let id = path_id(ctx, "alert_id", "alert")?;
    let row = sql::find_alert(ctx.db()?, &id, false)?.ok_or_else(|| ApiError::not_found(format!("no alert {id}")))?;
    Ok(Response::ok(&alert_json(&row)))
}

/// `PATCH /alerts/{alert_id}` `{status, resolution_notes?}`: `OPEN → INVESTIGATING → RESOLVED |
/// FALSE_POSITIVE`; the key that ends it is recorded as `resolved_by`. 409
/// `invalid_transition`; ending one takes `resolution_notes`.
pub fn update_alert(ctx: &mut Context) -> Result<Response, ApiError> {
    let by = risk_team(ctx, "working fraud alerts")?;
    let update: domain::AlertUpdate = ctx.json()?;
    let notes = micropay_sdk::fields::text("resolution_notes", update.resolution_notes.as_deref(), 4000)?;
    if update.status.is_final() && notes.is_none() {
        return Err(ApiError::validation("resolution_notes: say why the alert ends"));
    }
    let id = path_id(ctx, "alert_id", "alert")?;
    let db = ctx.db()?;
    let row = sql::find_alert(db, &id, true)?.ok_or_else(|| ApiError::not_found(format!("no alert {id}")))?;
    let from =
        AlertStatus::parse(&row.text("status")).ok_or_else(|| ApiError::internal("an alert of unknown status"))?;
    domain::check_transition(from, update.status)?;
    let row = sql::update_alert(db, &id, update.status, by.as_deref(), notes.as_deref())?;
    let shown = alert_json(&row);
    if update.status.is_final() {
        events::publish("fraud.alert_resolved", &id, &shown)?;
    }
    Ok(Response::ok(&shown))
}
