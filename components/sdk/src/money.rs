//! Money as the platform exchanges it: exact decimals of at most four places that fit
//! `DECIMAL(19,4)`, written as JSON strings (`"12.5000"`), and ISO 4217 currency codes.
//!
//! A JSON number is refused: a client's float has already lost the exact value.

use std::fmt;
use std::str::FromStr;

pub use rust_decimal::Decimal;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::http::ApiError;

/// Decimal places the ledger keeps (`DECIMAL(19,4)`).
pub const SCALE: u32 = 4;

/// The largest magnitude `DECIMAL(19,4)` holds: 15 digits before the point.
fn max_magnitude() -> Decimal {
    Decimal::from_i128_with_scale(9_999_999_999_999_999_999, SCALE)
}

/// A positive amount of money: more than zero, at most four decimal places, within
/// `DECIMAL(19,4)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(Decimal);

impl Amount {
    /// Parses a request's amount; the error says which rule it breaks (for a 422).
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = Decimal::from_str_exact(text.trim()).map_err(|_| format!("{text:?} is not a decimal amount"))?;
        Self::new(value)
    }

    /// Checks a computed amount against the same rules.
    pub fn new(value: Decimal) -> Result<Self, String> {
        if value <= Decimal::ZERO {
            return Err(format!("amount {value} must be greater than zero"));
        }
        if value.normalize().scale() > SCALE {
            return Err(format!("amount {value} has more than {SCALE} decimal places"));
        }
        if value > max_magnitude() {
            return Err(format!("amount {value} is too large"));
        }
        Ok(Self(value))
    }

    pub fn value(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// Only from a JSON string; a number, a negative or a fifth decimal place is refused as
/// `invalid_request` by [`crate::Context::json`].
impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Amount::parse(&text).map_err(de::Error::custom)
    }
}

/// Formats any decimal (a balance may be negative) with exactly four places, as stored.
pub fn format(value: Decimal) -> String {
    let mut value = value;
    value.rescale(SCALE);
    value.to_string()
}

/// Reads a `DECIMAL` column's text as returned by the database capability.
pub fn decimal(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|_| panic!("the database returned a non-decimal {text:?}"))
}

/// An active ISO 4217 currency code, upper case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency(String);

impl Currency {
    /// Accepts an active ISO 4217 alphabetic code, upper case only (`USD`, not `usd`).
    pub fn parse(code: &str) -> Result<Self, String> {
        if ISO_4217.binary_search(&code).is_ok() {
            Ok(Self(code.to_string()))
        } else {
            Err(format!("{code:?} is not an ISO 4217 currency code"))
        }
    }

    pub fn code(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Currency::parse(&text).map_err(de::Error::custom)
    }
}

/// A rule broken by an amount or currency in a request body field: 422.
pub fn invalid(field: &str, reason: impl fmt::Display) -> ApiError {
    ApiError::validation(format!("{field}: {reason}"))
}

/// Active ISO 4217 alphabetic codes, sorted (for the binary search), including the funds codes
/// and precious metals the standard lists, excluding `XTS` (testing) and `XXX` (no currency).
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BHD", "BIF", "BMD", "BND",
    "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY",
    "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP",
    "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD",
    "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP",
    "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN",
    "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN",
    "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD",
    "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX",
    "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB",
    "XBC", "XBD", "XCD", "XCG", "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_table_is_sorted_for_binary_search() {
        assert!(ISO_4217.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn currencies_are_checked_against_iso_4217() {
        assert!(Currency::parse("USD").is_ok());
        assert!(Currency::parse("EUR").is_ok());
        assert!(Currency::parse("usd").is_err());
        assert!(Currency::parse("ABC").is_err());
        assert!(Currency::parse("XTS").is_err());
    }

    #[test]
    fn amounts_are_exact_positive_and_fit_the_column() {
        assert_eq!(Amount::parse("12.5").unwrap().to_string(), "12.5000");
        assert_eq!(Amount::parse("0.0001").unwrap().to_string(), "0.0001");
        assert!(Amount::parse("0").is_err());
        assert!(Amount::parse("-1").is_err());
        assert!(Amount::parse("1.00001").is_err());
        assert!(Amount::parse("1.00010").is_ok());
        assert!(Amount::parse("1e3").is_err());
        assert!(Amount::parse("999999999999999.9999").is_ok());
        assert!(Amount::parse("1000000000000000").is_err());
    }

    #[test]
    fn amounts_come_only_from_strings() {
        assert!(serde_json::from_str::<Amount>("\"10.25\"").is_ok());
        assert!(serde_json::from_str::<Amount>("10.25").is_err());
    }

    #[test]
    fn negative_balances_format_with_four_places() {
        assert_eq!(format(Decimal::new(-15, 1)), "-1.5000");
    }
}
