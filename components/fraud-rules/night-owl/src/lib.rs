//! Night owl: a payment made between 01:00 and 05:00 UTC from an account less than three days
//! old (or not heard of yet) adds 35. Built with the standard `wasm32-wasip2` toolchain, plain
//! `std` and `wit-bindgen`, as a team outside MicroPay would build a rule: its standard library
//! imports WASI, which the host gives it with nothing behind it.

use exports::micropay::platform::rule::{Features, Finding, Guest};

wit_bindgen::generate!({ world: "fraud-rule", path: "../../../wit" });

struct NightOwl;

impl Guest for NightOwl {
    fn evaluate(features: Features) -> Option<Finding> {
        let at_night = (1..5).contains(&features.hour_of_day);
        let new_account = features.payer_account_age_hours.is_none_or(|hours| hours < 72);
        (at_night && new_account).then(|| Finding {
            score: "35".to_string(),
            reason: format!("a new account paying at {:02}:00 UTC", features.hour_of_day),
        })
    }
}

export!(NightOwl);
