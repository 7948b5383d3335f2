//! `fraud-rules`: the rule components deployed on this host, evaluated for the service whose
//! policy hosts fraud rules (`[plugins] host = ["fraud-rule"]`).
//!
//! Invariants kept here:
//! - only a component whose policy hosts fraud rules evaluates any (its import is refused at
//!   load otherwise, by `registry::check_imports`, and every call is refused here again);
//! - each rule runs as its own invocation of its own version (the rules of one call side by
//!   side): a fresh instance, its policy's
//!   fuel, memory and deadline, its concurrency limit; whatever it does (a trap, a loop, a
//!   memory bomb) fails that rule's evaluation only, reported as `failed` with the reason, and
//!   counted and logged by the dispatcher like any failed invocation;
//! - a rule sees only the features: it imports nothing (WASI, if it was built for it, has
//!   nothing behind it), and the invocation carries no caller, no admin key, no database.

use crate::metrics::RuleResult;
use crate::policy::Kind;
use crate::runtime::bindings::fraud_service::micropay::platform::fraud_rules::Host;
use crate::runtime::bindings::{Features, RuleEvaluation, RuleOutcome};
use crate::runtime::state::{InvocationContext, InvocationState};

/// The most rules one call may name.
const MAX_RULES_PER_CALL: usize = 64;

/// Why a rule said nothing.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// No fraud rule of that name is deployed (or the name is a service's).
    #[error("{0}")]
    NotDeployed(String),
    /// Version `version` ran and failed (a trap, its fuel, its deadline, its limit).
    #[error("{reason}")]
    Failed { version: i64, reason: String },
}

impl Host for InvocationState {
    async fn evaluate(
        &mut self,
        rules: Vec<String>,
        key: String,
        features: Features,
    ) -> wasmtime::Result<Vec<RuleEvaluation>> {
        let refused = |rules: Vec<String>, why: &str| {
            rules
                .into_iter()
                .map(|name| RuleEvaluation { name, version: 0, outcome: RuleOutcome::Failed(why.into()) })
                .collect()
        };
        if !self.component.policy.hosts(Kind::FraudRule) {
            return Ok(refused(rules, "this component's policy hosts no fraud rules"));
        }
        if rules.len() > MAX_RULES_PER_CALL {
            return Ok(refused(rules, &format!("at most {MAX_RULES_PER_CALL} rules per call")));
        }
        // The rule's invocation is the host's, on behalf of no one: it learns nothing but the
        // features.
        let context = InvocationContext {
            depth: self.context.depth + 1,
            calling_service: Some(self.component.name.clone()),
            ..InvocationContext::new(None, &self.context.request_id)
        };
        // Side by side: each is an invocation of its own, and the answers keep the rules' order.
        let running = rules.iter().map(|name| {
            self.services.clone().evaluate_rule(name.clone(), key.clone(), features.clone(), context.clone())
        });
        let ran = futures_util::future::join_all(running).await;
        let mut evaluations = Vec::with_capacity(rules.len());
        for (name, ran) in rules.into_iter().zip(ran) {
            let (version, outcome, result) = match ran {
                Ok((version, Some(finding))) => (version, RuleOutcome::Matched(finding), Some(RuleResult::Matched)),
                Ok((version, None)) => (version, RuleOutcome::NoMatch, Some(RuleResult::NoMatch)),
                Err(RuleError::Failed { version, reason }) => {
                    (version, RuleOutcome::Failed(reason), Some(RuleResult::Failed))
                }
                Err(RuleError::NotDeployed(reason)) => (0, RuleOutcome::Failed(reason), None),
            };
            if let Some(result) = result {
                self.metrics.record_rule(&name, result);
            }
            evaluations.push(RuleEvaluation { name, version, outcome });
        }
        Ok(evaluations)
    }
}
