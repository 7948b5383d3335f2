//! The fraud service's rules, pure: how findings become a score, a level and a recommendation;
//! the rule versions' lifecycle; the alerts' workflow; how a backtest counts. No I/O here.

use std::collections::BTreeMap;

use micropay_sdk::ApiError;
use micropay_sdk::contracts::{Recommendation, RiskLevel};
use micropay_sdk::money::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::conditions::Condition;
use crate::features::Features;

/// The highest score, and the most one rule may add.
pub const MAX_SCORE: Decimal = Decimal::ONE_HUNDRED;

// ---- thresholds ----

/// What an enforced rule that failed to evaluate means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErroredRule {
    /// At least `REVIEW` (the default: a rule that cannot say is not a rule that approves).
    Review,
    /// As if it had not fired.
    Ignore,
}

impl ErroredRule {
    pub fn as_str(self) -> &'static str {
        match self {
            ErroredRule::Review => "REVIEW",
            ErroredRule::Ignore => "IGNORE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "REVIEW" => Some(ErroredRule::Review),
            "IGNORE" => Some(ErroredRule::Ignore),
            _ => None,
        }
    }
}

/// The thresholds the risk team sets (`fraud_settings`): scores from which a payment is of a
/// level, and from which it is reviewed or declined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    pub medium: Decimal,
    pub high: Decimal,
    pub critical: Decimal,
    pub review: Decimal,
    pub decline: Decimal,
    pub errored_rule: ErroredRule,
}

/// `PUT /settings`: every threshold, as decimal text from 0 (excluded) to 100.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsRequest {
    pub medium_score: String,
    pub high_score: String,
    pub critical_score: String,
    pub review_score: String,
    pub decline_score: String,
    pub errored_rule: ErroredRule,
}

impl Thresholds {
    /// Checks a request: each a score above 0 and at most 100 with at most two places; levels
    /// and recommendations in increasing order.
    pub fn from_request(request: &ThresholdsRequest) -> Result<Self, ApiError> {
        let thresholds = Thresholds {
            medium: score("medium_score", &request.medium_score)?,
            high: score("high_score", &request.high_score)?,
            critical: score("critical_score", &request.critical_score)?,
            review: score("review_score", &request.review_score)?,
            decline: score("decline_score", &request.decline_score)?,
            errored_rule: request.errored_rule,
        };
        if thresholds.medium.is_zero() || thresholds.review.is_zero() {
            return Err(ApiError::validation("medium_score and review_score must be above 0"));
        }
        if !(thresholds.medium <= thresholds.high && thresholds.high <= thresholds.critical) {
            return Err(ApiError::validation("medium_score <= high_score <= critical_score"));
        }
        if thresholds.review > thresholds.decline {
            return Err(ApiError::validation("review_score <= decline_score"));
        }
        Ok(thresholds)
    }

    pub fn level(&self, score: Decimal) -> RiskLevel {
        if score >= self.critical {
            RiskLevel::Critical
        } else if score >= self.high {
            RiskLevel::High
        } else if score >= self.medium {
            RiskLevel::Medium
        } else {
            RiskLevel::Low
        }
    }

    pub fn recommendation(&self, score: Decimal) -> Recommendation {
        if score >= self.decline {
            Recommendation::Decline
        } else if score >= self.review {
            Recommendation::Review
        } else {
            Recommendation::Approve
        }
    }
}

/// A score as the API shows it: two decimal places.
pub fn score_text(score: Decimal) -> String {
    let mut score = score;
    score.rescale(2);
    score.to_string()
}

/// A score as a request writes it: decimal text from 0 to 100, at most two places.
pub fn score(field: &str, text: &str) -> Result<Decimal, ApiError> {
    Decimal::from_str_exact(text.trim())
        .ok()
        .filter(|value| *value >= Decimal::ZERO && *value <= MAX_SCORE && value.normalize().scale() <= 2)
        .ok_or_else(|| ApiError::validation(format!("{field}: a score from 0 to 100 with at most two decimal places")))
}

// ---- rules and their versions ----

/// The mode of a rule version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// Evaluated and recorded, marked shadow; never changes a decision.
    Shadow,
    /// Decides.
    Enforce,
    /// No longer evaluated.
    Retired,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Shadow => "SHADOW",
            Mode::Enforce => "ENFORCE",
            Mode::Retired => "RETIRED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "SHADOW" => Some(Mode::Shadow),
            "ENFORCE" => Some(Mode::Enforce),
            "RETIRED" => Some(Mode::Retired),
            _ => None,
        }
    }
}

/// A rule version as the assessment evaluates it (in the order of the rules' priorities).
#[derive(Debug, Clone)]
pub struct LiveRule {
    pub rule_id: String,
    pub rule_name: String,
    /// The version in `fraud_rule_versions` (a rule component's is always 1: its versions are
    /// its deploys, and the finding names the deployed one).
    pub version: i64,
    pub mode: Mode,
    /// A declarative rule's score when it matches; the most a rule component may add.
    pub impact: Decimal,
    pub test: Test,
}

/// How a rule judges a payment.
#[derive(Debug, Clone)]
pub enum Test {
    /// A declarative condition, or why the stored one no longer reads (the rule then counts as
    /// errored).
    Condition(Result<Condition, String>),
    /// A rule component deployed on the host, by name.
    Component(String),
}

/// What the host said a rule component found: the version that ran, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentResult {
    pub version: i64,
    pub outcome: ComponentOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentOutcome {
    NoMatch,
    /// It matched: its score (as it wrote it) and reason.
    Matched {
        score: String,
        reason: String,
    },
    /// It could not say (not deployed, trapped, out of fuel or time).
    Failed(String),
}

/// The longest reason kept from a rule component.
const MAX_REASON_CHARS: usize = 500;

/// `POST /rules`: a new rule, its first version in shadow: declarative (`rule_condition`) or a
/// rule component deployed on the host (`rule_type` `COMPONENT`, `component` its name).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    pub rule_name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub rule_type: RuleType,
    pub rule_condition: Option<Json>,
    pub component: Option<String>,
    pub risk_score_impact: String,
    #[serde(default)]
    pub priority: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RuleType {
    #[default]
    Declarative,
    Component,
}

impl RuleType {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleType::Declarative => "DECLARATIVE",
            RuleType::Component => "COMPONENT",
        }
    }
}

impl NewRule {
    /// The rule's stored condition, checked: a declarative condition, or `{"component": name}`
    /// for a rule component (a component's name as its policy gives it).
    pub fn checked_condition(&self) -> Result<Json, ApiError> {
        match (self.rule_type, &self.rule_condition, &self.component) {
            (RuleType::Declarative, Some(condition), None) => {
                check_condition(condition)?;
                Ok(condition.clone())
            }
            (RuleType::Component, None, Some(name)) => {
                let valid = (1..=32).contains(&name.len())
                    && name.starts_with(|c: char| c.is_ascii_lowercase())
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !valid {
                    return Err(ApiError::validation("component: a component's name (a-z, 0-9, _)"));
                }
                Ok(json!({ "component": name }))
            }
            (RuleType::Declarative, _, _) => {
                Err(ApiError::validation("a declarative rule has a rule_condition and no component"))
            }
            (RuleType::Component, _, _) => {
                Err(ApiError::validation("a COMPONENT rule names its component and has no rule_condition"))
            }
        }
    }
}

/// How a stored rule judges, from its type and condition.
pub fn test_of(rule_type: &str, condition: &Json) -> Test {
    match (rule_type, condition["component"].as_str()) {
        ("COMPONENT", Some(name)) => Test::Component(name.to_string()),
        ("COMPONENT", None) => Test::Condition(Err("a rule component without a name".into())),
        _ => Test::Condition(Condition::parse(condition)),
    }
}

/// `POST /rules/{id}/versions`: a new version of a rule, in shadow beside the enforced one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    pub rule_condition: Json,
    pub risk_score_impact: String,
}

/// A rule's name: 1 to 100 characters of letters, digits, `-`, `_` and `.`.
pub fn rule_name(name: &str) -> Result<String, ApiError> {
    let ok = (1..=100).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(ApiError::validation("rule_name: 1 to 100 letters, digits, '-', '_' or '.'"));
    }
    Ok(name.to_string())
}

/// A declarative condition as written in a rule: 422 `invalid_condition`, naming where, when
/// it does not read.
pub fn check_condition(condition: &Json) -> Result<(), ApiError> {
    Condition::parse(condition).map(drop).map_err(|err| ApiError::new(422, "invalid_condition", err))
}

/// What promoting a rule does, from the modes of its versions: the shadow version becomes the
/// enforced one, and the version enforced until then is retired.
pub fn promotion(shadow: Option<i64>, enforced: Option<i64>) -> Result<(i64, Option<i64>), ApiError> {
    match shadow {
        Some(version) => Ok((version, enforced)),
        None => Err(ApiError::conflict("no_shadow_version", "the rule has no version in shadow to promote")),
    }
}

/// What demoting a rule does: the enforced version goes back to shadow, and a shadow version
/// it displaces is retired.
pub fn demotion(shadow: Option<i64>, enforced: Option<i64>) -> Result<(i64, Option<i64>), ApiError> {
    match enforced {
        Some(version) => Ok((version, shadow)),
        None => Err(ApiError::conflict("not_enforced", "the rule has no enforced version to demote")),
    }
}

// ---- assessing ----

/// What one rule version said of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule_id: String,
    pub rule_name: String,
    pub version: i64,
    pub mode: Mode,
    pub score: Decimal,
    pub reason: String,
    /// The rule failed to evaluate (a rule component that trapped, say): why.
    pub error: Option<String>,
}

impl Finding {
    pub fn to_json(&self) -> Json {
        json!({
            "rule_id": self.rule_id,
            "rule_name": self.rule_name,
            "version": self.version,
            "mode": self.mode.as_str(),
            "score": score_text(self.score),
            "reason": self.reason,
            "error": self.error,
        })
    }
}

/// An assessment's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub score: Decimal,
    pub level: RiskLevel,
    pub recommendation: Recommendation,
    /// Every rule that fired or failed, enforced and shadow, by priority.
    pub findings: Vec<Finding>,
}

/// The rule components among `rules`, by name: what the host is asked to evaluate.
pub fn components(rules: &[LiveRule]) -> Vec<String> {
    let mut names: Vec<String> = rules
        .iter()
        .filter_map(|rule| match &rule.test {
            Test::Component(name) => Some(name.clone()),
            Test::Condition(_) => None,
        })
        .collect();
    names.dedup();
    names
}

/// Evaluates `rules` on `features`, the rule components' results as the host reported them
/// (`components`, by name): the findings of the rules that matched, in the rules' order, and of
/// those that failed (errored). A declarative condition was checked when written, so only a
/// change of the language makes one fail; a rule component fails when it traps, runs out of
/// fuel or time, is not deployed, or answers a score outside 0 to 100.
pub fn evaluate(
    rules: &[LiveRule],
    features: &Features,
    components: &BTreeMap<String, ComponentResult>,
) -> Vec<Finding> {
    rules
        .iter()
        .filter_map(|rule| {
            let found = |version: i64, score: Decimal, reason: String, error: Option<String>| Finding {
                rule_id: rule.rule_id.clone(),
                rule_name: rule.rule_name.clone(),
                version,
                mode: rule.mode,
                score: if error.is_some() { Decimal::ZERO } else { score },
                reason,
                error,
            };
            let named = format!("rule {} v{}", rule.rule_name, rule.version);
            match &rule.test {
                Test::Condition(Ok(condition)) if condition.matches(features) => {
                    Some(found(rule.version, rule.impact, format!("{named} matched"), None))
                }
                Test::Condition(Ok(_)) => None,
                Test::Condition(Err(error)) => {
                    Some(found(rule.version, Decimal::ZERO, format!("{named} failed"), Some(error.clone())))
                }
                Test::Component(name) => {
                    let result = components.get(name);
                    let version = result.map_or(0, |result| result.version);
                    let named = format!("rule {} ({name} v{version})", rule.rule_name);
                    match result.map(|result| &result.outcome) {
                        Some(ComponentOutcome::NoMatch) => None,
                        Some(ComponentOutcome::Matched { score, reason }) => {
                            match component_score(score, rule.impact) {
                                Ok(score) => Some(found(version, score, truncate(reason), None)),
                                Err(error) => {
                                    Some(found(version, Decimal::ZERO, format!("{named} failed"), Some(error)))
                                }
                            }
                        }
                        Some(ComponentOutcome::Failed(error)) => {
                            Some(found(version, Decimal::ZERO, format!("{named} failed"), Some(error.clone())))
                        }
                        None => Some(found(0, Decimal::ZERO, format!("{named} failed"), Some("not evaluated".into()))),
                    }
                }
            }
        })
        .collect()
}

/// A rule component's score: exact decimal text from 0 to 100 with at most two places, at
/// most the rule's `cap`.
pub fn component_score(text: &str, cap: Decimal) -> Result<Decimal, String> {
    Decimal::from_str_exact(text.trim())
        .ok()
        .filter(|value| *value >= Decimal::ZERO && *value <= MAX_SCORE && value.normalize().scale() <= 2)
        .map(|value| value.min(cap))
        .ok_or_else(|| format!("the rule answered the score {text:?}, not a decimal from 0 to 100"))
}

fn truncate(reason: &str) -> String {
    reason.chars().take(MAX_REASON_CHARS).collect()
}

/// Decides from `findings`: the score is the sum of the enforced findings' scores (at most
/// 100); shadow findings are recorded and change nothing; an enforced rule that failed means
/// at least `REVIEW` unless the thresholds say to ignore it.
pub fn decide(thresholds: &Thresholds, findings: Vec<Finding>) -> Decision {
    let enforced = findings.iter().filter(|finding| finding.mode == Mode::Enforce);
    let score =
        enforced.clone().filter(|finding| finding.error.is_none()).map(|finding| finding.score).sum::<Decimal>();
    let score = score.min(MAX_SCORE);
    let mut recommendation = thresholds.recommendation(score);
    let errored = enforced.clone().any(|finding| finding.error.is_some());
    if errored && thresholds.errored_rule == ErroredRule::Review && recommendation == Recommendation::Approve {
        recommendation = Recommendation::Review;
    }
    Decision { score, level: thresholds.level(score), recommendation, findings }
}

/// The version of `rule` that judged: a declarative rule's own, a rule component's deployed
/// one (0 when none ran).
fn judging_version(rule: &LiveRule, components: &BTreeMap<String, ComponentResult>) -> i64 {
    match &rule.test {
        Test::Condition(_) => rule.version,
        Test::Component(name) => components.get(name).map_or(0, |result| result.version),
    }
}

/// The digest naming a set of rule versions (`model_version`): equal sets, equal names.
pub fn model_version(rules: &[LiveRule], components: &BTreeMap<String, ComponentResult>) -> String {
    let mut names: Vec<String> = rules
        .iter()
        .map(|rule| format!("{}@{}:{}", rule.rule_id, judging_version(rule, components), rule.mode.as_str()))
        .collect();
    names.sort();
    let digest = Sha256::digest(names.join("\n").as_bytes());
    format!("rules-{}", &hex::encode(digest)[..16])
}

/// A rule version an assessment evaluated, as its model records it (`fraud_models`).
#[derive(Debug, Serialize)]
pub struct EvaluatedRule<'a> {
    pub rule_id: &'a str,
    pub rule_name: &'a str,
    pub version: i64,
    /// A rule component's name; none for a declarative rule.
    pub component: Option<&'a str>,
    pub mode: &'static str,
}

/// The rule versions an assessment evaluated.
pub fn rules_evaluated<'a>(
    rules: &'a [LiveRule],
    components: &BTreeMap<String, ComponentResult>,
) -> Vec<EvaluatedRule<'a>> {
    rules
        .iter()
        .map(|rule| EvaluatedRule {
            rule_id: &rule.rule_id,
            rule_name: &rule.rule_name,
            version: judging_version(rule, components),
            component: match &rule.test {
                Test::Component(name) => Some(name),
                Test::Condition(_) => None,
            },
            mode: rule.mode.as_str(),
        })
        .collect()
}

/// The alert an assessment opens, if any: a review asked for, or a high risk.
pub fn alert_for(decision: &Decision) -> Option<&'static str> {
    if decision.recommendation == Recommendation::Review {
        Some("REVIEW_REQUIRED")
    } else if matches!(decision.level, RiskLevel::High | RiskLevel::Critical) {
        Some("HIGH_RISK")
    } else {
        None
    }
}

pub fn level_name(level: RiskLevel) -> &'static str {
    match level {
        RiskLevel::Low => "LOW",
        RiskLevel::Medium => "MEDIUM",
        RiskLevel::High => "HIGH",
        RiskLevel::Critical => "CRITICAL",
    }
}

pub fn recommendation_name(recommendation: Recommendation) -> &'static str {
    match recommendation {
        Recommendation::Approve => "APPROVE",
        Recommendation::Review => "REVIEW",
        Recommendation::Decline => "DECLINE",
    }
}

// ---- alerts ----

/// An alert's status: `OPEN → INVESTIGATING → RESOLVED | FALSE_POSITIVE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertStatus {
    Open,
    Investigating,
    /// Confirmed fraud.
    Resolved,
    FalsePositive,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "OPEN",
            AlertStatus::Investigating => "INVESTIGATING",
            AlertStatus::Resolved => "RESOLVED",
            AlertStatus::FalsePositive => "FALSE_POSITIVE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "OPEN" => Some(AlertStatus::Open),
            "INVESTIGATING" => Some(AlertStatus::Investigating),
            "RESOLVED" => Some(AlertStatus::Resolved),
            "FALSE_POSITIVE" => Some(AlertStatus::FalsePositive),
            _ => None,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, AlertStatus::Resolved | AlertStatus::FalsePositive)
    }
}

/// `PATCH /alerts/{id}`: the next status, with notes when it ends the alert.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertUpdate {
    pub status: AlertStatus,
    pub resolution_notes: Option<String>,
}

/// Whether an alert may go from `from` to `to`: 409 `invalid_transition` otherwise.
pub fn check_transition(from: AlertStatus, to: AlertStatus) -> Result<(), ApiError> {
    let allowed = matches!(
        (from, to),
        (AlertStatus::Open, AlertStatus::Investigating)
            | (AlertStatus::Investigating, AlertStatus::Resolved | AlertStatus::FalsePositive)
    );
    if allowed {
        return Ok(());
    }
    Err(ApiError::conflict(
        "invalid_transition",
        format!(
            "an alert goes OPEN -> INVESTIGATING -> RESOLVED | FALSE_POSITIVE, not {} -> {}",
            from.as_str(),
            to.as_str()
        ),
    ))
}

// ---- backtests ----

/// What became of an assessed payment, for a backtest: an analyst's verdict first, then the
/// fraud service's own decline, then the payment's outcome.
pub fn later_outcome(alert_status: Option<&str>, recommendation: &str, outcome: Option<&str>) -> &'static str {
    match (alert_status, recommendation, outcome) {
        (Some("RESOLVED"), _, _) => "confirmed_fraud",
        (Some("FALSE_POSITIVE"), _, _) => "false_positive",
        (_, "DECLINE", _) => "declined",
        (_, _, Some("COMPLETED")) => "completed",
        (_, _, Some("REFUNDED" | "PARTIALLY_REFUNDED")) => "refunded",
        (_, _, Some("FAILED")) => "failed",
        (_, _, Some("CANCELLED")) => "cancelled",
        _ => "pending",
    }
}

/// The outcomes a backtest counts, each from zero.
pub const OUTCOMES: [&str; 8] =
    ["completed", "refunded", "declined", "confirmed_fraud", "false_positive", "failed", "cancelled", "pending"];

/// A backtest's tally: of the assessments it ran over, how many the rule flagged, by outcome.
pub fn tally<'a>(flagged: impl Iterator<Item = &'a str>) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> = OUTCOMES.iter().map(|outcome| (*outcome, 0)).collect();
    for outcome in flagged {
        if let Some(count) = counts.get_mut(outcome) {
            *count += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::tests::sample;

    fn thresholds() -> Thresholds {
        Thresholds {
            medium: Decimal::from(30),
            high: Decimal::from(60),
            critical: Decimal::from(85),
            review: Decimal::from(50),
            decline: Decimal::from(80),
            errored_rule: ErroredRule::Review,
        }
    }

    fn finding(mode: Mode, score: i64, error: Option<&str>) -> Finding {
        Finding {
            rule_id: "r".into(),
            rule_name: "r".into(),
            version: 1,
            mode,
            score: Decimal::from(score),
            reason: String::new(),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn enforced_findings_add_up_and_shadow_ones_change_nothing() {
        let decision = decide(&thresholds(), vec![finding(Mode::Enforce, 40, None), finding(Mode::Shadow, 90, None)]);
        assert_eq!(
            (decision.score, decision.level, decision.recommendation),
            (Decimal::from(40), RiskLevel::Medium, Recommendation::Approve)
        );
        let decision = decide(&thresholds(), vec![finding(Mode::Enforce, 70, None), finding(Mode::Enforce, 70, None)]);
        assert_eq!(
            (decision.score, decision.level, decision.recommendation),
            (MAX_SCORE, RiskLevel::Critical, Recommendation::Decline)
        );
        assert_eq!(decision.findings.len(), 2);
    }

    #[test]
    fn an_errored_enforced_rule_reviews_unless_ignored() {
        let errored = vec![finding(Mode::Enforce, 0, Some("trapped")), finding(Mode::Shadow, 0, Some("trapped"))];
        assert_eq!(decide(&thresholds(), errored.clone()).recommendation, Recommendation::Review);
        let ignore = Thresholds { errored_rule: ErroredRule::Ignore, ..thresholds() };
        assert_eq!(decide(&ignore, errored).recommendation, Recommendation::Approve);
        let shadow_only = vec![finding(Mode::Shadow, 0, Some("trapped"))];
        assert_eq!(decide(&thresholds(), shadow_only).recommendation, Recommendation::Approve);
    }

    #[test]
    fn thresholds_are_checked_in_order() {
        let request = |medium: &str, review: &str, decline: &str| ThresholdsRequest {
            medium_score: medium.into(),
            high_score: "60".into(),
            critical_score: "85".into(),
            review_score: review.into(),
            decline_score: decline.into(),
            errored_rule: ErroredRule::Review,
        };
        assert!(Thresholds::from_request(&request("30", "50", "80")).is_ok());
        assert_eq!(Thresholds::from_request(&request("70", "50", "80")).unwrap_err().status, 422);
        assert_eq!(Thresholds::from_request(&request("30", "90", "80")).unwrap_err().status, 422);
        assert_eq!(Thresholds::from_request(&request("30", "50", "100.001")).unwrap_err().status, 422);
        assert_eq!(Thresholds::from_request(&request("0", "50", "80")).unwrap_err().status, 422);
    }

    #[test]
    fn matching_rules_become_findings() {
        let rule = |name: &str, condition: Json| LiveRule {
            rule_id: name.into(),
            rule_name: name.into(),
            version: 2,
            mode: Mode::Enforce,
            impact: Decimal::from(25),
            test: Test::Condition(Condition::parse(&condition)),
        };
        let rules = [
            rule("large", json!({"feature": "amount", "op": "gte", "value": "1000"})),
            rule("small", json!({"feature": "amount", "op": "lt", "value": "10"})),
        ];
        let none = BTreeMap::new();
        let findings = evaluate(&rules, &sample(), &none);
        assert_eq!(findings.len(), 1);
        assert_eq!((findings[0].rule_name.as_str(), findings[0].version), ("large", 2));
        assert_ne!(model_version(&rules, &none), model_version(&rules[..1], &none));
        assert!(model_version(&rules, &none).len() <= 50);
    }

    #[test]
    fn rule_components_are_judged_by_what_the_host_reports() {
        let component = |name: &str| LiveRule {
            rule_id: name.into(),
            rule_name: name.into(),
            version: 1,
            mode: Mode::Enforce,
            impact: Decimal::from(40),
            test: Test::Component(name.into()),
        };
        let rules =
            [component("velocity"), component("quiet"), component("liar"), component("trapper"), component("gone")];
        let results: BTreeMap<String, ComponentResult> = [
            ("velocity", 3, ComponentOutcome::Matched { score: "75".into(), reason: "9 payments in an hour".into() }),
            ("quiet", 1, ComponentOutcome::NoMatch),
            ("liar", 2, ComponentOutcome::Matched { score: "1e9".into(), reason: String::new() }),
            ("trapper", 5, ComponentOutcome::Failed("the component ran out of fuel".into())),
        ]
        .into_iter()
        .map(|(name, version, outcome)| (name.to_string(), ComponentResult { version, outcome }))
        .collect();
        let findings = evaluate(&rules, &sample(), &results);
        let seen: Vec<(&str, i64, String, bool)> = findings
            .iter()
            .map(|f| (f.rule_name.as_str(), f.version, f.score.to_string(), f.error.is_some()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("velocity", 3, "40".to_string(), false),
                ("liar", 2, "0".to_string(), true),
                ("trapper", 5, "0".to_string(), true),
                ("gone", 0, "0".to_string(), true),
            ]
        );
        let other: BTreeMap<String, ComponentResult> =
            [("velocity".to_string(), ComponentResult { version: 4, outcome: ComponentOutcome::NoMatch })].into();
        assert_ne!(model_version(&rules, &results), model_version(&rules, &other), "a new deploy is a new model");
        assert_eq!(rules_evaluated(&rules, &results)[0].version, 3);
    }

    #[test]
    fn promotion_and_demotion_swap_modes() {
        assert_eq!(promotion(Some(3), Some(2)).unwrap(), (3, Some(2)));
        assert_eq!(promotion(None, Some(2)).unwrap_err().code, "no_shadow_version");
        assert_eq!(demotion(Some(3), Some(2)).unwrap(), (2, Some(3)));
        assert_eq!(demotion(Some(3), None).unwrap_err().code, "not_enforced");
    }

    #[test]
    fn alerts_follow_their_workflow() {
        assert!(check_transition(AlertStatus::Open, AlertStatus::Investigating).is_ok());
        assert!(check_transition(AlertStatus::Investigating, AlertStatus::FalsePositive).is_ok());
        assert_eq!(check_transition(AlertStatus::Open, AlertStatus::Resolved).unwrap_err().code, "invalid_transition");
        assert!(check_transition(AlertStatus::Resolved, AlertStatus::Investigating).is_err());
    }

    #[test]
    fn backtests_count_by_later_outcome() {
        assert_eq!(later_outcome(Some("RESOLVED"), "REVIEW", Some("COMPLETED")), "confirmed_fraud");
        assert_eq!(later_outcome(None, "DECLINE", Some("FAILED")), "declined");
        assert_eq!(later_outcome(Some("OPEN"), "APPROVE", Some("PARTIALLY_REFUNDED")), "refunded");
        assert_eq!(later_outcome(None, "APPROVE", None), "pending");
        let counts = tally(["completed", "completed", "declined"].into_iter());
        assert_eq!((counts["completed"], counts["declined"], counts["pending"]), (2, 1, 0));
        assert_eq!(counts.len(), OUTCOMES.len());
    }
}
