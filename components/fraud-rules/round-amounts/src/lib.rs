//! Round amounts: a round amount (a whole multiple of 100) after three or more round amounts
//! within a day adds 30 (testing cards or structuring often looks like this).

use micropay_rule_kit::{Features, Finding, Rule, finding};

struct RoundAmounts;

impl Rule for RoundAmounts {
    fn evaluate(features: &Features) -> Option<Finding> {
        (features.amount_is_round && features.payer_round_amounts_last_day >= 3)
            .then(|| finding(30, format!("{} round amounts within a day", features.payer_round_amounts_last_day + 1)))
    }
}

micropay_rule_kit::export_rule!(RoundAmounts);
