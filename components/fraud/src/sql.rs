//! The fraud service's statements, over the tables of `migrations/fraud/`.
//!
//! An assessment is two statements: one reads everything it needs (the thresholds, the rule
//! versions in force, and the payer's and accounts' features, each by an index), one writes the
//! assessment and, when it warrants one, its alert. Times are the host clock's, bound as
//! parameters (UTC), never the database's.

use micropay_sdk::db::param::{boolean, decimal, id_list, int, json, opt_text, text, timestamp, uuid};
use micropay_sdk::db::{Conditions, DbError};
use micropay_sdk::{Db, Row};
use serde_json::Value as Json;

use crate::domain::{AlertStatus, Mode, Thresholds};

const HOUR_MICROS: i64 = 3_600_000_000;

/// The payer's activity is counted per five minutes (`fraud_payer_activity`).
const BUCKET_MICROS: i64 = 300_000_000;

/// The start of the five minutes `micros` falls in.
fn bucket(micros: i64) -> i64 {
    micros.div_euclid(BUCKET_MICROS) * BUCKET_MICROS
}

/// Which of a payer's eight counters of five minutes counts a payment: its id's first hex digit
/// (random), so that concurrent payments of one payer seldom wait on one row.
fn shard(payment_id: &str) -> i64 {
    payment_id.chars().next().and_then(|digit| digit.to_digit(16)).map_or(0, |digit| i64::from(digit % 8))
}

// ---- assessing ----

/// What an assessment reads, as of `now`: the thresholds; `rules`, a JSON array of the active
/// rule versions in shadow or enforce, by priority (`rule_id, rule_name, rule_type, version,
/// mode, rule_condition, risk_score_impact`), as `fraud_live_rules` keeps it; the accounts'
/// opening times; the payer's verification; the payer's payments assessed in the last hour and
/// day (count, sum, round amounts: from the five-minute counters, at most a day's of them); and
/// whether the payer paid this payee before.
pub fn assessment_inputs(
    db: &Db,
    payer_user_id: &str,
    payer_account_id: &str,
    payee_account_id: &str,
    now: i64,
) -> Result<Row, DbError> {
    db.query_one(
        "SELECT s.medium_score, s.high_score, s.critical_score, s.review_score, s.decline_score, s.errored_rule, \
             (SELECT rules FROM fraud_live_rules) AS rules, \
             (SELECT opened_at FROM fraud_accounts WHERE account_id = $2) AS payer_opened_at, \
             (SELECT opened_at FROM fraud_accounts WHERE account_id = $3) AS payee_opened_at, \
             coalesce(u.email_verified, FALSE) AS email_verified, \
             d.payments_last_hour, d.amount_last_hour, d.payments_last_day, d.amount_last_day, d.round_last_day, \
             NOT EXISTS (SELECT FROM fraud_assessments WHERE user_id = $1 AND payee_account_id = $3) AS first_to_payee \
         FROM fraud_settings s \
         LEFT JOIN fraud_users u ON u.user_id = $1 \
         CROSS JOIN LATERAL ( \
             SELECT coalesce(sum(payments) FILTER (WHERE bucket >= $5), 0)::bigint AS payments_last_hour, \
                    coalesce(sum(amount) FILTER (WHERE bucket >= $5), 0) AS amount_last_hour, \
                    coalesce(sum(payments), 0)::bigint AS payments_last_day, \
                    coalesce(sum(amount), 0) AS amount_last_day, \
                    coalesce(sum(round_payments), 0)::bigint AS round_last_day \
               FROM fraud_payer_activity WHERE user_id = $1 AND bucket >= $4) d",
        &[
            uuid(payer_user_id),
            uuid(payer_account_id),
            uuid(payee_account_id),
            timestamp(bucket(now - 24 * HOUR_MICROS)),
            timestamp(bucket(now - HOUR_MICROS)),
        ],
    )
}

/// The thresholds of [`assessment_inputs`]' (or [`settings`]') row.
pub fn thresholds_of(row: &Row) -> Thresholds {
    let score = |column: &str| micropay_sdk::money::decimal(&row.text(column));
    Thresholds {
        medium: score("medium_score"),
        high: score("high_score"),
        critical: score("critical_score"),
        review: score("review_score"),
        decline: score("decline_score"),
        errored_rule: crate::domain::ErroredRule::parse(&row.text("errored_rule")).expect("a CHECK keeps it valid"),
    }
}

/// An assessment to write.
pub struct NewAssessment<'a> {
    pub payment_id: &'a str,
    pub user_id: &'a str,
    pub payer_account_id: &'a str,
    pub payee_account_id: &'a str,
    pub amount: &'a str,
    pub currency: &'a str,
    pub risk_score: String,
    pub risk_level: &'a str,
    pub recommendation: &'a str,
    pub risk_factors: Json,
    pub model_version: &'a str,
    pub rules_evaluated: Vec<crate::domain::EvaluatedRule<'a>>,
    pub features: &'a crate::features::Features,
    pub assessed_at: i64,
    /// The alert it opens, if any: its type.
    pub alert_type: Option<&'a str>,
    pub alert_description: Option<String>,
}

/// Writes an assessment, its alert, the payer's five-minute counter and, the first time its
/// model assesses, the model's rule versions (`fraud_models`), in one statement:
/// `assessment_id, alert_id` (null when none), or no row when the payment was assessed already
/// (then nothing is counted twice).
///
/// A new assessment's commit does not wait for the WAL's flush (`synchronous_commit` off for
/// this transaction, set with the row it answers): it is as durable as the payment it screens,
/// whose unit commits after this one on the same server and waits for the flush of the WAL up
/// to its own commit, and so of this one before it (`components/FRAUD.md`, invariants).
pub fn insert_assessment(db: &Db, new: &NewAssessment) -> Result<Option<Row>, DbError> {
    db.query_opt(
        "WITH assessed AS ( \
             INSERT INTO fraud_assessments (payment_id, user_id, payer_account_id, payee_account_id, amount, currency, \
                 risk_score, risk_level, recommendation, risk_factors, model_version, features, assessed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $13, $14) \
             ON CONFLICT (payment_id) DO NOTHING \
             RETURNING assessment_id, payment_id, risk_level, assessed_at), \
         alerted AS ( \
             INSERT INTO fraud_alerts (assessment_id, payment_id, alert_type, severity, description, created_at, updated_at) \
             SELECT assessment_id, payment_id, $15::text, risk_level, $16::text, assessed_at, assessed_at FROM assessed \
             WHERE $15::text IS NOT NULL \
             RETURNING alert_id), \
         counted AS ( \
             INSERT INTO fraud_payer_activity AS c (user_id, bucket, shard, payments, amount, round_payments) \
             SELECT $2, $17, $18, 1, $5, CASE WHEN $5 % 100 = 0 THEN 1 ELSE 0 END FROM assessed \
             ON CONFLICT (user_id, bucket, shard) DO UPDATE SET payments = c.payments + 1, \
                 amount = c.amount + EXCLUDED.amount, round_payments = c.round_payments + EXCLUDED.round_payments), \
         modelled AS ( \
             INSERT INTO fraud_models (model_version, rules_evaluated, first_assessed_at) \
             SELECT $11, $12::jsonb, $14 FROM assessed \
             WHERE NOT EXISTS (SELECT FROM fraud_models WHERE model_version = $11) \
             ON CONFLICT (model_version) DO NOTHING) \
         SELECT a.assessment_id, (SELECT alert_id FROM alerted) AS alert_id, \
             pg_catalog.set_config('synchronous_commit', 'off', true) AS synchronous_commit \
         FROM assessed a",
        &[
            uuid(new.payment_id),
            uuid(new.user_id),
            uuid(new.payer_account_id),
            uuid(new.payee_account_id),
            decimal(new.amount),
            text(new.currency),
            decimal(new.risk_score.clone()),
            text(new.risk_level),
            text(new.recommendation),
            json(&new.risk_factors),
            text(new.model_version),
            // Text, read as JSON only when the model is new.
            text(serde_json::to_string(&new.rules_evaluated).expect("rule versions serialise")),
            json(new.features),
            timestamp(new.assessed_at),
            opt_text(new.alert_type),
            opt_text(new.alert_description.clone()),
            timestamp(bucket(new.assessed_at)),
            int(shard(new.payment_id)),
        ],
    )
}

/// Every column of an assessment as the API shows it, over [`assessments!`].
macro_rules! assessment_columns {
    () => {
        "a.assessment_id, a.payment_id, a.user_id, a.payer_account_id, a.payee_account_id, a.amount, a.currency, \
         a.risk_score, a.risk_level, a.recommendation, a.risk_factors, a.model_version, \
         coalesce(m.rules_evaluated, a.rules_evaluated) AS rules_evaluated, \
         a.features, a.assessed_at, a.assessed_at AS created_at"
    };
}

/// The assessments (`a`) with the rule versions of their model (`m`; assessments written before
/// `fraud_models` kept their own).
macro_rules! assessments {
    () => {
        " FROM fraud_assessments a LEFT JOIN fraud_models m ON m.model_version = a.model_version"
    };
}

pub fn find_assessment(db: &Db, assessment_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", assessment_columns!(), assessments!(), " WHERE a.assessment_id = $1"),
        &[uuid(assessment_id)],
    )
}

pub fn assessment_of_payment(db: &Db, payment_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", assessment_columns!(), assessments!(), " WHERE a.payment_id = $1"),
        &[uuid(payment_id)],
    )
}

/// Filters of an assessments listing.
pub struct AssessmentFilter {
    pub payment_id: Option<String>,
    pub risk_level: Option<String>,
    pub recommendation: Option<String>,
    pub page: micropay_sdk::cursor::Page,
}

/// A page of assessments, newest first, one row past the page.
pub fn list_assessments(db: &Db, filter: &AssessmentFilter) -> Result<Vec<Row>, DbError> {
    let mut conditions = Conditions::default();
    if let Some(payment_id) = &filter.payment_id {
        let id = conditions.bind(uuid(payment_id.as_str()));
        conditions.and(&format!("a.payment_id = {id}"));
    }
    if let Some(level) = &filter.risk_level {
        let level = conditions.bind(text(level.as_str()));
        conditions.and(&format!("a.risk_level = {level}"));
    }
    if let Some(recommendation) = &filter.recommendation {
        let recommendation = conditions.bind(text(recommendation.as_str()));
        conditions.and(&format!("a.recommendation = {recommendation}"));
    }
    let order = filter.page.keyset(&mut conditions, "a.assessed_at", "a.assessment_id");
    let sql = format!(concat!("SELECT ", assessment_columns!(), assessments!(), "{}{}"), conditions.sql, order);
    db.query(&sql, &conditions.params)
}

/// The features and decision of the last `limit` assessments, newest first, with their alert's
/// status, for a backtest: `payment_id, features, recommendation, alert_status`.
pub fn recent_assessments(db: &Db, limit: i64) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT a.payment_id, a.features, a.recommendation, al.status AS alert_status \
         FROM (SELECT * FROM fraud_assessments ORDER BY assessed_at DESC, assessment_id DESC LIMIT $1) a \
         LEFT JOIN fraud_alerts al ON al.assessment_id = a.assessment_id \
         ORDER BY a.assessed_at DESC, a.assessment_id DESC",
        &[int(limit)],
    )
}

// ---- what events say ----

/// Accounts opened (`account_id, user_id, opened_at` each), kept once.
pub fn insert_accounts(db: &Db, accounts: &Json) -> Result<u64, DbError> {
    db.execute(
        "INSERT INTO fraud_accounts (account_id, user_id, opened_at) \
         SELECT account_id, user_id, opened_at FROM jsonb_to_recordset($1) AS a(account_id uuid, user_id uuid, opened_at timestamp) \
         ON CONFLICT (account_id) DO NOTHING",
        &[json(accounts)],
    )
}

/// Users whose email is verified.
pub fn mark_verified(db: &Db, user_ids: &[String]) -> Result<u64, DbError> {
    db.execute(
        "INSERT INTO fraud_users (user_id, email_verified) \
         SELECT DISTINCT u::uuid, TRUE FROM jsonb_array_elements_text($1::jsonb) AS t(u) \
         ON CONFLICT (user_id) DO UPDATE SET email_verified = TRUE, updated_at = CURRENT_TIMESTAMP",
        &[id_list(user_ids)],
    )
}

// ---- rules ----

/// A rule's enforced, shadow and newest versions, over `fraud_rules AS r`.
macro_rules! rule_versions {
    () => {
        "(SELECT version FROM fraud_rule_versions WHERE rule_id = r.rule_id AND mode = 'ENFORCE') AS enforced_version, \
         (SELECT version FROM fraud_rule_versions WHERE rule_id = r.rule_id AND mode = 'SHADOW') AS shadow_version, \
         (SELECT max(version) FROM fraud_rule_versions WHERE rule_id = r.rule_id) AS latest_version"
    };
}

/// Every column of a rule with its versions and how often it fired in the day before `$1`:
/// the day's findings counted once for all the rules listed.
macro_rules! rules_select {
    () => {
        concat!(
            "SELECT r.rule_id, r.rule_name, r.rule_type, r.rule_condition, r.risk_score_impact, r.is_active, \
                    r.priority, r.description, r.created_by, r.created_at, r.updated_at, ",
            rule_versions!(),
            ", coalesce(fired.count, 0) AS fired_last_day \
             FROM fraud_rules r \
             LEFT JOIN (SELECT f->>'rule_id' AS rule_id, count(*) AS count \
                          FROM fraud_assessments a, jsonb_array_elements(a.risk_factors) f \
                         WHERE a.assessed_at > $1 AND f->>'error' IS NULL GROUP BY 1) fired \
                    ON fired.rule_id = r.rule_id::text"
        )
    };
}

pub fn list_rules(db: &Db, now: i64) -> Result<Vec<Row>, DbError> {
    db.query(concat!(rules_select!(), " ORDER BY r.priority DESC, r.rule_name"), &[timestamp(now - 24 * HOUR_MICROS)])
}

pub fn find_rule(db: &Db, rule_id: &str, now: i64) -> Result<Option<Row>, DbError> {
    db.query_opt(concat!(rules_select!(), " WHERE r.rule_id = $2"), &[timestamp(now - 24 * HOUR_MICROS), uuid(rule_id)])
}

/// Locks a rule (`FOR UPDATE`): its versions change one request at a time.
pub fn lock_rule(db: &Db, rule_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!(
            "SELECT r.rule_id, r.rule_type, ",
            rule_versions!(),
            " FROM fraud_rules r WHERE r.rule_id = $1 FOR UPDATE"
        ),
        &[uuid(rule_id)],
    )
}

/// A new rule; `None` when the name is taken.
pub struct NewRuleRow<'a> {
    pub name: &'a str,
    pub rule_type: &'a str,
    pub description: Option<&'a str>,
    pub condition: &'a Json,
    pub impact: &'a str,
    pub priority: i64,
    pub created_by: Option<&'a str>,
}

pub fn insert_rule(db: &Db, new: &NewRuleRow) -> Result<Option<String>, DbError> {
    let row = db.query_opt(
        "INSERT INTO fraud_rules (rule_name, rule_type, rule_condition, risk_score_impact, priority, description, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (rule_name) DO NOTHING RETURNING rule_id",
        &[
            text(new.name),
            text(new.rule_type),
            json(new.condition),
            decimal(new.impact),
            int(new.priority),
            opt_text(new.description),
            opt_text(new.created_by),
        ],
    )?;
    Ok(row.map(|row| row.text("rule_id")))
}

/// Adds version `version` of a rule in `mode`, and makes its condition the rule's newest.
pub fn insert_version(
    db: &Db,
    rule_id: &str,
    version: i64,
    condition: &Json,
    impact: &str,
    mode: Mode,
    created_by: Option<&str>,
) -> Result<(), DbError> {
    db.execute(
        "WITH added AS ( \
             INSERT INTO fraud_rule_versions (rule_id, version, rule_condition, risk_score_impact, mode, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING rule_id) \
         UPDATE fraud_rules SET rule_condition = $3, risk_score_impact = $4, updated_at = CURRENT_TIMESTAMP \
         WHERE rule_id IN (SELECT rule_id FROM added)",
        &[uuid(rule_id), int(version), json(condition), decimal(impact), text(mode.as_str()), opt_text(created_by)],
    )?;
    Ok(())
}

/// Sets the mode of the rule's versions named, each `(version, mode)` in the order given: the
/// one-enforced and one-shadow indexes are checked row by row, so a version leaving a mode comes
/// before the one taking it.
pub fn set_modes(db: &Db, rule_id: &str, modes: &[(i64, Mode)]) -> Result<(), DbError> {
    for (version, mode) in modes {
        db.execute(
            "UPDATE fraud_rule_versions SET mode = $3, mode_changed_at = CURRENT_TIMESTAMP \
             WHERE rule_id = $1 AND version = $2",
            &[uuid(rule_id), int(*version), text(mode.as_str())],
        )?;
    }
    db.execute("UPDATE fraud_rules SET updated_at = CURRENT_TIMESTAMP WHERE rule_id = $1", &[uuid(rule_id)])?;
    Ok(())
}

pub fn set_active(db: &Db, rule_id: &str, active: bool) -> Result<(), DbError> {
    db.execute(
        "UPDATE fraud_rules SET is_active = $2, updated_at = CURRENT_TIMESTAMP WHERE rule_id = $1",
        &[uuid(rule_id), boolean(active)],
    )?;
    Ok(())
}

/// Every version of a rule, newest first.
pub fn versions_of(db: &Db, rule_id: &str) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT version, rule_condition, risk_score_impact, mode, created_by, created_at, mode_changed_at \
         FROM fraud_rule_versions WHERE rule_id = $1 ORDER BY version DESC",
        &[uuid(rule_id)],
    )
}

/// One version of a rule: `rule_condition, risk_score_impact, mode`.
pub fn find_version(db: &Db, rule_id: &str, version: i64) -> Result<Option<Row>, DbError> {
    db.query_opt(
        "SELECT rule_condition, risk_score_impact::text AS risk_score_impact, mode \
         FROM fraud_rule_versions WHERE rule_id = $1 AND version = $2",
        &[uuid(rule_id), int(version)],
    )
}

// ---- settings ----

/// The thresholds as `GET /settings` shows them.
macro_rules! settings_columns {
    () => {
        "medium_score, high_score, critical_score, review_score, decline_score, errored_rule, updated_at, updated_by"
    };
}

pub fn settings(db: &Db) -> Result<Row, DbError> {
    db.query_one(concat!("SELECT ", settings_columns!(), " FROM fraud_settings"), &[])
}

pub fn update_settings(db: &Db, thresholds: &Thresholds, updated_by: Option<&str>) -> Result<Row, DbError> {
    db.query_one(
        concat!(
            "UPDATE fraud_settings SET medium_score = $1, high_score = $2, critical_score = $3, review_score = $4, \
                 decline_score = $5, errored_rule = $6, updated_by = $7, updated_at = CURRENT_TIMESTAMP \
             RETURNING ",
            settings_columns!()
        ),
        &[
            decimal(thresholds.medium.to_string()),
            decimal(thresholds.high.to_string()),
            decimal(thresholds.critical.to_string()),
            decimal(thresholds.review.to_string()),
            decimal(thresholds.decline.to_string()),
            text(thresholds.errored_rule.as_str()),
            opt_text(updated_by),
        ],
    )
}

// ---- alerts ----

macro_rules! alert_columns {
    () => {
        "al.alert_id, al.assessment_id, al.payment_id, al.alert_type, al.severity, al.description, al.status, \
         al.resolved_at, al.resolved_by, al.resolution_notes, al.created_at, al.updated_at"
    };
}

pub fn find_alert(db: &Db, alert_id: &str, lock: bool) -> Result<Option<Row>, DbError> {
    let sql = format!(
        concat!("SELECT ", alert_columns!(), " FROM fraud_alerts al WHERE al.alert_id = $1{}"),
        if lock { " FOR UPDATE" } else { "" }
    );
    db.query_opt(&sql, &[uuid(alert_id)])
}

/// Filters of an alerts listing.
pub struct AlertFilter {
    pub status: Option<AlertStatus>,
    pub severity: Option<String>,
    pub payment_id: Option<String>,
    pub page: micropay_sdk::cursor::Page,
}

/// A page of alerts, newest first, one row past the page.
pub fn list_alerts(db: &Db, filter: &AlertFilter) -> Result<Vec<Row>, DbError> {
    let mut conditions = Conditions::default();
    if let Some(status) = filter.status {
        let status = conditions.bind(text(status.as_str()));
        conditions.and(&format!("al.status = {status}"));
    }
    if let Some(severity) = &filter.severity {
        let severity = conditions.bind(text(severity.as_str()));
        conditions.and(&format!("al.severity = {severity}"));
    }
    if let Some(payment_id) = &filter.payment_id {
        let id = conditions.bind(uuid(payment_id.as_str()));
        conditions.and(&format!("al.payment_id = {id}"));
    }
    let order = filter.page.keyset(&mut conditions, "al.created_at", "al.alert_id");
    let sql = format!(concat!("SELECT ", alert_columns!(), " FROM fraud_alerts al{}{}"), conditions.sql, order);
    db.query(&sql, &conditions.params)
}

/// Moves an alert to `status` (checked by the caller), with who ended it and why.
pub fn update_alert(
    db: &Db,
    alert_id: &str,
    status: AlertStatus,
    resolved_by: Option<&str>,
    notes: Option<&str>,
) -> Result<Row, DbError> {
    let ends = status.is_final();
    db.query_one(
        &format!(
            "UPDATE fraud_alerts al SET status = $2, updated_at = CURRENT_TIMESTAMP, \
                 resolved_at = CASE WHEN $3 THEN CURRENT_TIMESTAMP END, \
                 resolved_by = CASE WHEN $3 THEN $4 END, \
                 resolution_notes = coalesce($5, resolution_notes) \
             WHERE alert_id = $1 RETURNING {}",
            alert_columns!()
        ),
        &[uuid(alert_id), text(status.as_str()), boolean(ends), opt_text(resolved_by), opt_text(notes)],
    )
}
