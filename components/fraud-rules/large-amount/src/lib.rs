//! Large amount: a payment of 5,000 or more (any currency) adds 60, of 20,000 or more 90.

use micropay_rule_kit::{Decimal, Features, Finding, Rule, decimal, finding};

struct LargeAmount;

impl Rule for LargeAmount {
    fn evaluate(features: &Features) -> Option<Finding> {
        let amount = decimal(&features.amount);
        if amount >= Decimal::from(20_000) {
            Some(finding(90, format!("amount {} {} is very large", features.amount, features.currency)))
        } else if amount >= Decimal::from(5_000) {
            Some(finding(60, format!("amount {} {} is large", features.amount, features.currency)))
        } else {
            None
        }
    }
}

micropay_rule_kit::export_rule!(LargeAmount);
