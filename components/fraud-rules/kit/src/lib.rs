//! What every fraud rule component shares: the bindings of the `fraud-rule` world
//! (`wit/platform.wit`) and the features' amounts as exact decimals. A rule is one function:
//!
//! ```ignore
//! struct LargeAmount;
//! impl micropay_rule_kit::Rule for LargeAmount {
//!     fn evaluate(features: &Features) -> Option<Finding> { ... }
//! }
//! micropay_rule_kit::export_rule!(LargeAmount);
//! ```
//!
//! A rule imports nothing: it sees the features it is given and answers. It runs on fuel and
//! within its policy's deadline; a panic only fails its own evaluation.

pub use rust_decimal::Decimal;

/// Bindings of the `fraud-rule` world.
pub mod bindings {
    wit_bindgen::generate!({
        world: "fraud-rule",
        path: "../../../wit",
        default_bindings_module: "micropay_rule_kit::bindings",
        pub_export_macro: true,
        export_macro_name: "export_rule_bindings",
    });
}

pub use bindings::micropay::platform::rule_types::{Features, Finding};

/// A fraud rule: judges one payment.
pub trait Rule {
    /// A finding when the rule matches the payment, none otherwise.
    fn evaluate(features: &Features) -> Option<Finding>;
}

/// Exports a [`Rule`] as a component of the `fraud-rule` world.
#[macro_export]
macro_rules! export_rule {
    ($rule:ty) => {
        const _: () = {
            struct Export;
            impl $crate::bindings::exports::micropay::platform::rule::Guest for Export {
                fn evaluate(features: $crate::Features) -> ::core::option::Option<$crate::Finding> {
                    <$rule as $crate::Rule>::evaluate(&features)
                }
            }
            $crate::bindings::export_rule_bindings!(Export);
        };
    };
}

/// An amount of the features as an exact decimal (the platform writes them as decimal text;
/// anything else reads as zero, which no rule should take for a large amount).
pub fn decimal(text: &str) -> Decimal {
    Decimal::from_str_exact(text).unwrap_or(Decimal::ZERO)
}

/// A finding of `score` (0 to 100) for `reason`.
pub fn finding(score: u8, reason: impl Into<String>) -> Finding {
    Finding { score: score.min(100).to_string(), reason: reason.into() }
}
