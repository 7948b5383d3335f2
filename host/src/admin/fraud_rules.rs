//! `micropay fraud-rules`: the risk team's rules as the fraud service keeps them (listed with
//! their mode, versions and how often each fired in the last day; promoted, demoted,
//! deactivated, backtested), through its API with a `risk` admin key. Rule components
//! themselves are deployed, rolled back and canaried with `micropay deploy`, `rollback` and
//! `promote`, like any component.

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{HostAddress, error_message};

const RULES: &str = "/v1/fraud/rules";

#[derive(Debug, clap::Subcommand)]
pub enum FraudRulesCommand {
    /// Every rule: its kind, mode (shadow, enforce), versions and fires in the last day.
    List(HostAddress),
    /// Enforce the rule's shadow version (the enforced one retires).
    Promote {
        rule: String,
        #[command(flatten)]
        host: HostAddress,
    },
    /// Put the rule's enforced version back in shadow.
    Demote {
        rule: String,
        #[command(flatten)]
        host: HostAddress,
    },
    /// Stop evaluating the rule.
    Deactivate {
        rule: String,
        #[command(flatten)]
        host: HostAddress,
    },
    /// Evaluate a deactivated rule again.
    Activate {
        rule: String,
        #[command(flatten)]
        host: HostAddress,
    },
    /// Run a version of the rule over the last assessments and count what it would have
    /// flagged, by the payments' later outcome.
    Backtest {
        rule: String,
        /// The version (by default its shadow one, else its enforced one).
        #[arg(long)]
        version: Option<i64>,
        /// How many past assessments (1 to 10000).
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[command(flatten)]
        host: HostAddress,
    },
}

pub async fn run(command: FraudRulesCommand) -> anyhow::Result<()> {
    match command {
        FraudRulesCommand::List(host) => list(&host).await,
        FraudRulesCommand::Promote { rule, host } => change(&host, &rule, "promote").await,
        FraudRulesCommand::Demote { rule, host } => change(&host, &rule, "demote").await,
        FraudRulesCommand::Deactivate { rule, host } => change(&host, &rule, "deactivate").await,
        FraudRulesCommand::Activate { rule, host } => change(&host, &rule, "activate").await,
        FraudRulesCommand::Backtest { rule, version, limit, host } => backtest(&host, &rule, version, limit).await,
    }
}

async fn rules(host: &HostAddress) -> anyhow::Result<Vec<Value>> {
    let (status, body) = host.request(Method::GET, RULES).await?;
    anyhow::ensure!(status == 200, "{}", error_message(status, &body));
    Ok(body["rules"].as_array().cloned().unwrap_or_default())
}

/// The id of the rule named `name`.
async fn rule_id(host: &HostAddress, name: &str) -> anyhow::Result<String> {
    let rules = rules(host).await?;
    let rule = rules.iter().find(|rule| rule["rule_name"] == name).with_context(|| format!("no rule named {name}"))?;
    Ok(rule["rule_id"].as_str().unwrap_or_default().to_string())
}

/// One line per rule: name, kind, mode and version, active or not, fires in the last day.
fn line(rule: &Value) -> String {
    let version = |field: &str| rule[field].as_i64().map_or("-".to_string(), |version| format!("v{version}"));
    let kind = match rule["rule_type"].as_str() {
        Some("COMPONENT") => format!("component {}", rule["rule_condition"]["component"].as_str().unwrap_or("?")),
        _ => "declarative".to_string(),
    };
    format!(
        "{:<24} {:<28} enforce {:<4} shadow {:<4} {:<8} priority {:<4} fired {} in the last day",
        rule["rule_name"].as_str().unwrap_or("?"),
        kind,
        version("enforced_version"),
        version("shadow_version"),
        if rule["is_active"] == true { "active" } else { "inactive" },
        rule["priority"],
        rule["fired_last_day"],
    )
}

async fn list(host: &HostAddress) -> anyhow::Result<()> {
    for rule in rules(host).await? {
        println!("{}", line(&rule));
    }
    Ok(())
}

async fn change(host: &HostAddress, name: &str, action: &str) -> anyhow::Result<()> {
    let id = rule_id(host, name).await?;
    let (status, body) = host.request(Method::POST, &format!("{RULES}/{id}/{action}")).await?;
    anyhow::ensure!(status == 200, "{}", error_message(status, &body));
    println!("{}", line(&body));
    Ok(())
}

async fn backtest(host: &HostAddress, name: &str, version: Option<i64>, limit: i64) -> anyhow::Result<()> {
    let id = rule_id(host, name).await?;
    let body = json!({ "version": version, "limit": limit });
    let (status, report) = host.send(Method::POST, &format!("{RULES}/{id}/backtest"), Some(&body)).await?;
    anyhow::ensure!(status == 200, "{}", error_message(status, &report));
    println!(
        "{} v{} ({}): flagged {} of the last {} assessments",
        name,
        report["version"],
        report["mode"].as_str().unwrap_or("?").to_lowercase(),
        report["flagged"],
        report["assessments"]
    );
    let counts = |field: &str| report[field].as_object().cloned().unwrap_or_default();
    let (flagged, all) = (counts("flagged_by_outcome"), counts("all_by_outcome"));
    for (outcome, count) in &flagged {
        println!("  {outcome:<16} {count:>6} of {}", all.get(outcome).cloned().unwrap_or(json!(0)));
    }
    Ok(())
}
