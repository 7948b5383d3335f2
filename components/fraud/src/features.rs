//! A payment's features: what rules decide on. Built by the fraud service when it assesses a
//! payment (from the request and from its own data, fed by events), stored with the assessment
//! (so a backtest sees exactly what the live rules saw), and named in declarative conditions
//! (`conditions`). Every feature has a name and a type; absent ones (an account the service has
//! not heard of yet) are `null`, and a comparison with `null` is false.

use micropay_sdk::money::Decimal;
use serde::{Deserialize, Serialize};

/// Every feature of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// The payment's amount.
    #[serde(with = "decimal_text")]
    pub amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
    /// The hour (0 to 23, UTC) the payment was made.
    pub hour_of_day: i64,
    /// A whole multiple of 100.
    pub amount_is_round: bool,
    /// Hours since the payer's account was opened (none when not heard of yet).
    pub payer_account_age_hours: Option<i64>,
    /// Hours since the payee's account was opened.
    pub payee_account_age_hours: Option<i64>,
    /// The payer's other payments assessed in the hour before this one (declined ones too).
    pub payer_payments_last_hour: i64,
    #[serde(with = "decimal_text")]
    pub payer_amount_last_hour: Decimal,
    /// The payer's other payments assessed in the day before this one.
    pub payer_payments_last_day: i64,
    #[serde(with = "decimal_text")]
    pub payer_amount_last_day: Decimal,
    /// How many of the payer's payments in the day before were round amounts.
    pub payer_round_amounts_last_day: i64,
    /// The payer never paid this payee before (as far as assessments go back).
    pub first_payment_to_payee: bool,
    /// The payer verified their email address.
    pub payer_email_verified: bool,
}

/// The type of a feature, which decides the operators and values a condition may use on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Decimal,
    Integer,
    Boolean,
    Text,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Decimal => "decimal",
            Kind::Integer => "integer",
            Kind::Boolean => "boolean",
            Kind::Text => "text",
        }
    }
}

/// One feature's value, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Decimal(Decimal),
    Integer(i64),
    Boolean(bool),
    Text(String),
    Null,
}

/// The features, by name: the language of declarative conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    Amount,
    Currency,
    HourOfDay,
    AmountIsRound,
    PayerAccountAgeHours,
    PayeeAccountAgeHours,
    PayerPaymentsLastHour,
    PayerAmountLastHour,
    PayerPaymentsLastDay,
    PayerAmountLastDay,
    PayerRoundAmountsLastDay,
    FirstPaymentToPayee,
    PayerEmailVerified,
}

impl Feature {
    pub const ALL: [Feature; 13] = [
        Feature::Amount,
        Feature::Currency,
        Feature::HourOfDay,
        Feature::AmountIsRound,
        Feature::PayerAccountAgeHours,
        Feature::PayeeAccountAgeHours,
        Feature::PayerPaymentsLastHour,
        Feature::PayerAmountLastHour,
        Feature::PayerPaymentsLastDay,
        Feature::PayerAmountLastDay,
        Feature::PayerRoundAmountsLastDay,
        Feature::FirstPaymentToPayee,
        Feature::PayerEmailVerified,
    ];

    /// The feature's name, as in [`Features`]' JSON and in conditions.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Amount => "amount",
            Feature::Currency => "currency",
            Feature::HourOfDay => "hour_of_day",
            Feature::AmountIsRound => "amount_is_round",
            Feature::PayerAccountAgeHours => "payer_account_age_hours",
            Feature::PayeeAccountAgeHours => "payee_account_age_hours",
            Feature::PayerPaymentsLastHour => "payer_payments_last_hour",
            Feature::PayerAmountLastHour => "payer_amount_last_hour",
            Feature::PayerPaymentsLastDay => "payer_payments_last_day",
            Feature::PayerAmountLastDay => "payer_amount_last_day",
            Feature::PayerRoundAmountsLastDay => "payer_round_amounts_last_day",
            Feature::FirstPaymentToPayee => "first_payment_to_payee",
            Feature::PayerEmailVerified => "payer_email_verified",
        }
    }

    pub fn parse(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|feature| feature.name() == name)
    }

    pub fn kind(self) -> Kind {
        match self {
            Feature::Amount | Feature::PayerAmountLastHour | Feature::PayerAmountLastDay => Kind::Decimal,
            Feature::Currency => Kind::Text,
            Feature::AmountIsRound | Feature::FirstPaymentToPayee | Feature::PayerEmailVerified => Kind::Boolean,
            Feature::HourOfDay
            | Feature::PayerAccountAgeHours
            | Feature::PayeeAccountAgeHours
            | Feature::PayerPaymentsLastHour
            | Feature::PayerPaymentsLastDay
            | Feature::PayerRoundAmountsLastDay => Kind::Integer,
        }
    }

    /// This feature's value in `features`.
    pub fn value(self, features: &Features) -> Value {
        let integer = |value: Option<i64>| value.map_or(Value::Null, Value::Integer);
        match self {
            Feature::Amount => Value::Decimal(features.amount),
            Feature::Currency => Value::Text(features.currency.clone()),
            Feature::HourOfDay => Value::Integer(features.hour_of_day),
            Feature::AmountIsRound => Value::Boolean(features.amount_is_round),
            Feature::PayerAccountAgeHours => integer(features.payer_account_age_hours),
            Feature::PayeeAccountAgeHours => integer(features.payee_account_age_hours),
            Feature::PayerPaymentsLastHour => Value::Integer(features.payer_payments_last_hour),
            Feature::PayerAmountLastHour => Value::Decimal(features.payer_amount_last_hour),
            Feature::PayerPaymentsLastDay => Value::Integer(features.payer_payments_last_day),
            Feature::PayerAmountLastDay => Value::Decimal(features.payer_amount_last_day),
            Feature::PayerRoundAmountsLastDay => Value::Integer(features.payer_round_amounts_last_day),
            Feature::FirstPaymentToPayee => Value::Boolean(features.first_payment_to_payee),
            Feature::PayerEmailVerified => Value::Boolean(features.payer_email_verified),
        }
    }
}

/// Whether `amount` is a whole multiple of 100.
pub fn is_round(amount: Decimal) -> bool {
    (amount % Decimal::ONE_HUNDRED).is_zero()
}

/// Decimals as exact text in JSON, never as numbers.
mod decimal_text {
    use micropay_sdk::money::{self, Decimal};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&money::format(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        let text = String::deserialize(deserializer)?;
        Decimal::from_str_exact(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Features {
        Features {
            amount: Decimal::new(250_000, 2),
            currency: "EUR".into(),
            hour_of_day: 3,
            amount_is_round: false,
            payer_account_age_hours: Some(2),
            payee_account_age_hours: None,
            payer_payments_last_hour: 4,
            payer_amount_last_hour: Decimal::new(12_000, 2),
            payer_payments_last_day: 9,
            payer_amount_last_day: Decimal::new(99_999, 2),
            payer_round_amounts_last_day: 1,
            first_payment_to_payee: true,
            payer_email_verified: false,
        }
    }

    #[test]
    fn features_round_trip_as_json_with_decimals_as_text() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["amount"], "2500.0000");
        let names: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        for feature in Feature::ALL {
            assert!(names.contains(&feature.name()), "{} is not a field", feature.name());
        }
        assert_eq!(names.len(), Feature::ALL.len());
        assert_eq!(serde_json::from_value::<Features>(json).unwrap(), sample());
    }

    #[test]
    fn round_amounts_are_whole_hundreds() {
        assert!(is_round(Decimal::new(50_000, 2)));
        assert!(!is_round(Decimal::new(50_001, 2)));
        assert!(!is_round(Decimal::new(150, 0)));
    }
}
