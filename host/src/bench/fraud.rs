//! The fraud benchmark: how long the fraud service takes to assess a payment with 20 active
//! rules (10 declarative, 10 rule components, the example rules of `components/fraud-rules/`
//! deployed twice each under other names) and the CPU time that takes, and what the assessment
//! costs a payment: payments completed per second with the fraud service and its rules, against
//! the same payments on an installation without a fraud service, in the same bench, and which
//! databases the difference in PostgreSQL's CPU time is spent on. Both installations run side
//! by side and take turns, in [`ROUNDS`] rounds each: the machine's neighbours change over the
//! minutes of a run, and taking turns spreads that over both sides alike.
//!
//! The rules are in shadow, so that they are all evaluated and none refuses a payment of the
//! payments run (a shadow rule costs what an enforced one does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::cpu::{self, BusyTime};
use super::ledger::call_in;
use super::{Summary, payments};
use crate::config::Config;
use crate::platform::Platform;
use crate::policy::Role;
use crate::runtime::service::Service;
use crate::runtime::state::InvocationContext;

/// How many turns each installation's payments are made in.
const ROUNDS: usize = 5;

/// The example rule components, each deployed twice.
const RULE_COMPONENTS: [&str; 5] = ["large_amount", "velocity", "new_payee", "round_amounts", "night_owl"];

/// Declarative rules of the run: conditions of the kinds the risk team writes, none matching
/// a payment of 1.00 from a known account, all evaluated.
fn declarative_rules() -> Vec<Value> {
    let comparison = |feature: &str, op: &str, value: Value| json!({"feature": feature, "op": op, "value": value});
    let conditions = [
        comparison("amount", "gte", json!("10000.00")),
        json!({"all": [comparison("amount", "gte", json!("1000")), comparison("first_payment_to_payee", "eq", json!(true))]}),
        comparison("payer_payments_last_hour", "gte", json!(1000)),
        comparison("payer_amount_last_day", "gt", json!("5000000")),
        json!({"all": [comparison("hour_of_day", "lt", json!(5)), comparison("amount", "gte", json!("500"))]}),
        json!({"feature": "currency", "op": "in", "values": ["XAU", "XAG", "XPT"]}),
        json!({"all": [comparison("amount_is_round", "eq", json!(true)), comparison("payer_round_amounts_last_day", "gte", json!(500))]}),
        json!({"any": [comparison("payer_account_age_hours", "lt", json!(-1)), comparison("payee_account_age_hours", "lt", json!(-1))]}),
        json!({"not": comparison("amount", "gt", json!("0"))}),
        json!({"all": [comparison("payer_email_verified", "eq", json!(false)), comparison("amount", "gte", json!("2000"))]}),
    ];
    conditions
        .into_iter()
        .enumerate()
        .map(|(index, condition)| {
            json!({"rule_name": format!("bench-declarative-{index}"), "rule_condition": condition, "risk_score_impact": "50"})
        })
        .collect()
}

/// The assessment's latency and the payments' cost of it.
pub struct FraudRun {
    pub assessments: Assessments,
    /// Each round's payments with the fraud service, then without, made one after the other.
    pub rounds: Vec<(payments::PaymentRun, payments::PaymentRun)>,
}

impl FraudRun {
    /// Payments per second with the fraud service over those without, over every round.
    fn ratio(&self) -> f64 {
        let rate = |runs: Vec<&payments::PaymentRun>| {
            let payments: usize = runs.iter().map(|run| run.payments).sum();
            payments as f64 / runs.iter().map(|run| run.elapsed.as_secs_f64()).sum::<f64>()
        };
        rate(self.rounds.iter().map(|(with, _)| with).collect())
            / rate(self.rounds.iter().map(|(_, without)| without).collect())
    }

    /// The machine's CPU time per payment without the fraud service over that with it, over
    /// every round (the rounds are of equal size).
    fn cpu_ratio(&self) -> f64 {
        let cpu =
            |side: fn(&(payments::PaymentRun, payments::PaymentRun)) -> f64| self.rounds.iter().map(side).sum::<f64>();
        cpu(|(_, without)| without.cpu_ms) / cpu(|(with, _)| with.cpu_ms)
    }

    /// What the fraud check adds to PostgreSQL's CPU time per payment, by database: with the
    /// fraud service less without, averaged over the rounds, the most first.
    fn added_by_database(&self) -> Vec<(String, f64)> {
        let mut added: BTreeMap<&str, f64> = BTreeMap::new();
        let rounds = self.rounds.len().max(1) as f64;
        for (with, without) in &self.rounds {
            for (database, ms) in &with.by_database {
                *added.entry(database).or_default() += ms / rounds;
            }
            for (database, ms) in &without.by_database {
                *added.entry(database).or_default() -= ms / rounds;
            }
        }
        let mut added: Vec<(String, f64)> =
            added.into_iter().map(|(database, ms)| (database.to_string(), ms)).collect();
        added.sort_by(|a, b| b.1.total_cmp(&a.1));
        added
    }
}

/// Writes a policies directory holding `policies`' files (without the fraud service's when
/// `fraud` is false) and, with it, policies deploying each rule component twice.
fn policies_dir(config: &Config, fraud: bool) -> anyhow::Result<PathBuf> {
    let dir = config.data_dir.join(if fraud { "policies-fraud" } else { "policies-no-fraud" });
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    for source in &config.policies {
        for entry in std::fs::read_dir(source).with_context(|| format!("reading {}", source.display()))? {
            let path = entry?.path();
            let name = path.file_name().context("a file")?.to_owned();
            let is_policy = path.extension().is_some_and(|ext| ext == "toml");
            if is_policy && (fraud || name != "fraud.toml") {
                std::fs::copy(&path, dir.join(&name))?;
            }
        }
    }
    if fraud {
        for (index, component) in RULE_COMPONENTS.iter().cycle().take(10).enumerate() {
            let policy = format!(
                "[component]\nname = \"bench_rule_{index}\"\nfile = \"{component}.wasm\"\nkind = \"fraud-rule\"\n\
                 [deploy]\nroles = [\"risk\"]\n[limits]\nfuel = 5000000\ndeadline_ms = 20\nmemory_mb = 8\nmax_instances = 64\nqueue_ms = 5\n"
            );
            std::fs::write(dir.join(format!("bench_rule_{index}.toml")), policy)?;
        }
    }
    Ok(dir)
}

/// Names the 20 rules in the fraud service (in shadow).
async fn write_rules(platform: &Platform, fraud: &Arc<Service>) -> anyhow::Result<()> {
    let context = || InvocationContext::administrator(Role::Risk, Some("bench"), "bench");
    let components = (0..10).map(|index| {
        json!({"rule_name": format!("bench-component-{index}"), "rule_type": "COMPONENT",
               "component": format!("bench_rule_{index}"), "risk_score_impact": "100"})
    });
    for rule in declarative_rules().into_iter().chain(components) {
        call_in(&platform.dispatcher, fraud, context(), "POST", "/rules", &rule).await?;
    }
    Ok(())
}

/// Assessments made one after another: their durations, and the CPU time each cost.
pub struct Assessments {
    pub latency: Summary,
    /// Milliseconds of the machine's busy CPU time per assessment (the host, PostgreSQL).
    pub cpu_ms: f64,
    /// Of which the host's.
    pub host_cpu_ms: f64,
}

impl std::fmt::Display for Assessments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {:.2} ms CPU each ({:.2} in the host)", self.latency, self.cpu_ms, self.host_cpu_ms)
    }
}

/// `count` assessments one after another, as the payment service asks for them: each one's
/// duration, and what they cost in CPU time.
async fn assess(platform: &Platform, fraud: &Arc<Service>, count: usize) -> anyhow::Result<Assessments> {
    let mut samples = Vec::with_capacity(count);
    let before = BusyTime::now();
    let (payer, payer_account, payee_account) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for _ in 0..count {
        let body = json!({
            "payment_id": uuid::Uuid::new_v4(), "payer_user_id": payer, "payer_account_id": payer_account,
            "payee_account_id": payee_account, "amount": "1.00", "currency": "USD",
        });
        let context = InvocationContext {
            calling_service: Some("payment".into()),
            depth: 1,
            ..InvocationContext::new(None, "bench")
        };
        let one = Instant::now();
        let answer = call_in(&platform.dispatcher, fraud, context, "POST", "/internal/assess", &body).await?;
        samples.push(one.elapsed());
        let evaluated = answer["model_version"].as_str().unwrap_or_default();
        anyhow::ensure!(!evaluated.is_empty(), "an assessment without its model: {answer}");
    }
    let after = BusyTime::now();
    Ok(Assessments {
        latency: Summary::of(&mut samples),
        cpu_ms: after.ms_per(before, count),
        host_cpu_ms: after.process_ms_per(before, count),
    })
}

/// One installation, started and with its accounts open: with the fraud service, its 20
/// rules and the assessments' latency measured first.
async fn install(
    config: &Config,
    policies: &Path,
    prefix: &str,
    with_rules: bool,
) -> anyhow::Result<(payments::Payments, payments::Counters, Option<Assessments>)> {
    let mut config = config.clone();
    config.database_prefix = format!("{}{prefix}", config.database_prefix);
    config.policies = vec![policies.to_path_buf()];
    let server_url = config.database_url.clone().expect("checked at the start");
    let counters = payments::Counters::connect(&server_url, &config.database_prefix).await?;
    let platform = Platform::start(&config).await?;
    let assessed = match platform.registry().get("fraud").filter(|_| with_rules) {
        Some(fraud) => {
            write_rules(&platform, &fraud).await?;
            Some(assess(&platform, &fraud, 2_000).await?)
        }
        None => None,
    };
    Ok((payments::Payments::open(platform).await?, counters, assessed))
}

/// Runs the part: an installation with the fraud service and 20 rules beside one without a
/// fraud service, `count` payments each at `clients`, in turns.
pub async fn run(config: &Config, clients: usize, count: usize) -> anyhow::Result<FraudRun> {
    let (with, mut with_counters, assessments) = install(config, &policies_dir(config, true)?, "fraud_", true).await?;
    let (without, mut without_counters, _) = install(config, &policies_dir(config, false)?, "nofraud_", false).await?;
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let payments = count / ROUNDS + usize::from(round < count % ROUNDS);
        let with_fraud = with.run(clients, payments, &mut with_counters).await?;
        let without_fraud = without.run(clients, payments, &mut without_counters).await?;
        rounds.push((with_fraud, without_fraud));
    }
    with.shutdown().await;
    without.shutdown().await;
    let assessments = assessments.context("the fraud service was not loaded")?;
    Ok(FraudRun { assessments, rounds })
}

impl std::fmt::Display for FraudRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  an assessment with 20 rules (10 declarative, 10 components), one after another: {}",
            self.assessments
        )?;
        for (round, (with, without)) in self.rounds.iter().enumerate() {
            writeln!(f, "  round {}, with the fraud service: {with}", round + 1)?;
            writeln!(f, "  round {}, without a fraud service: {without}", round + 1)?;
        }
        let by_round: Vec<String> = self
            .rounds
            .iter()
            .map(|(with, without)| format!("{:.2}", with.per_second() / without.per_second()))
            .collect();
        write!(
            f,
            "  payments/s with / without: {:.2} over the rounds (each: {}); by CPU time per payment: {:.2}",
            self.ratio(),
            by_round.join(", "),
            self.cpu_ratio()
        )?;
        let added = self.added_by_database();
        if !added.is_empty() {
            write!(
                f,
                "\n  what the check adds to PostgreSQL's CPU a payment, by database, ms (with less without, over the \
                 rounds): {}",
                cpu::by_database(&added)
            )?;
        }
        Ok(())
    }
}
