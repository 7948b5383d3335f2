//! The rule probe: a fraud rule that misbehaves on request, by the payment's amount, so the
//! tests can show that a rule's misbehaviour fails only its own evaluation:
//!
//! - `13` loops forever (its fuel, or its deadline, ends it);
//! - `14` allocates until its memory limit stops it;
//! - `15` panics (a trap);
//! - `16` answers a score outside 0 to 100;
//! - `17` matches with the score 100;
//! - any other amount does not match.

use micropay_rule_kit::{Features, Finding, Rule, decimal, finding};

struct RuleProbe;

impl Rule for RuleProbe {
    fn evaluate(features: &Features) -> Option<Finding> {
        match decimal(&features.amount).to_string().trim_end_matches('0').trim_end_matches('.') {
            "13" => loop {
                std::hint::black_box(features.payer_payments_last_day);
            },
            "14" => {
                // Capacity only: growing memory costs little fuel, so the memory limit is what stops it.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(4 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "15" => panic!("the rule probe was asked to trap"),
            "16" => Some(Finding { score: "250".into(), reason: "a score no rule may give".into() }),
            "17" => Some(finding(100, "the rule probe matches amount 17")),
            _ => None,
        }
    }
}

micropay_rule_kit::export_rule!(RuleProbe);
