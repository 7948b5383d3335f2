//! New payee: a first payment to a payee above 1,000 adds 40, or 60 when the payee's account
//! is less than a day old (or not heard of yet).

use micropay_rule_kit::{Decimal, Features, Finding, Rule, decimal, finding};

struct NewPayee;

impl Rule for NewPayee {
    fn evaluate(features: &Features) -> Option<Finding> {
        if !features.first_payment_to_payee || decimal(&features.amount) <= Decimal::from(1_000) {
            return None;
        }
        match features.payee_account_age_hours {
            Some(hours) if hours >= 24 => Some(finding(40, "first payment to this payee, above 1000")),
            _ => Some(finding(60, "first payment to a payee whose account is new, above 1000")),
        }
    }
}

micropay_rule_kit::export_rule!(NewPayee);
