//! The rule components deployed on the host, asked through the `fraud-rules` capability: each
//! runs in a sandbox of its own, on fuel and within its deadline, and whatever it does fails
//! only its own evaluation.

use std::collections::BTreeMap;

use micropay_sdk::money;

use crate::bindings::micropay::platform::fraud_rules::{self, RuleOutcome};
use crate::bindings::micropay::platform::rule_types;
use crate::domain::{ComponentOutcome, ComponentResult};
use crate::features::Features;

/// Evaluates the rule components `names` on `features` (`key` picks the version of a rule on
/// trial: the payment's id), by name.
pub fn evaluate(names: &[String], key: &str, features: &Features) -> BTreeMap<String, ComponentResult> {
    if names.is_empty() {
        return BTreeMap::new();
    }
    fraud_rules::evaluate(names, key, &contract(features))
        .into_iter()
        .map(|evaluation| {
            let outcome = match evaluation.outcome {
                RuleOutcome::NoMatch => ComponentOutcome::NoMatch,
                RuleOutcome::Matched(finding) => {
                    ComponentOutcome::Matched { score: finding.score, reason: finding.reason }
                }
                RuleOutcome::Failed(error) => ComponentOutcome::Failed(error),
            };
            (evaluation.name, ComponentResult { version: evaluation.version, outcome })
        })
        .collect()
}

/// The features as the `fraud-rule` world carries them.
fn contract(features: &Features) -> rule_types::Features {
    rule_types::Features {
        amount: money::format(features.amount),
        currency: features.currency.clone(),
        hour_of_day: features.hour_of_day.clamp(0, 23) as u8,
        amount_is_round: features.amount_is_round,
        payer_account_age_hours: features.payer_account_age_hours,
        payee_account_age_hours: features.payee_account_age_hours,
        payer_payments_last_hour: features.payer_payments_last_hour,
        payer_amount_last_hour: money::format(features.payer_amount_last_hour),
        payer_payments_last_day: features.payer_payments_last_day,
        payer_amount_last_day: money::format(features.payer_amount_last_day),
        payer_round_amounts_last_day: features.payer_round_amounts_last_day,
        first_payment_to_payee: features.first_payment_to_payee,
        payer_email_verified: features.payer_email_verified,
    }
}
