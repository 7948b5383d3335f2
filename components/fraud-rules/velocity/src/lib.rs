//! Velocity: a payer making their 10th payment or more within an hour adds 50; their 30th or
//! more within a day, or more than 10,000 within an hour, adds 70.

use micropay_rule_kit::{Decimal, Features, Finding, Rule, decimal, finding};

struct Velocity;

impl Rule for Velocity {
    fn evaluate(features: &Features) -> Option<Finding> {
        let hourly_amount = decimal(&features.payer_amount_last_hour) + decimal(&features.amount);
        if features.payer_payments_last_day >= 29 || hourly_amount > Decimal::from(10_000) {
            return Some(finding(
                70,
                format!("{} payments in a day, {hourly_amount} within an hour", features.payer_payments_last_day + 1),
            ));
        }
        (features.payer_payments_last_hour >= 9)
            .then(|| finding(50, format!("{} payments within an hour", features.payer_payments_last_hour + 1)))
    }
}

micropay_rule_kit::export_rule!(Velocity);
