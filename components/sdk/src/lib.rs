//! What every MicroPay service component shares: the generated bindings of the platform
//! contract (`wit/platform.wit`), a route table, JSON errors in the platform's shape, and typed
//! access to database rows.
//!
//! A component is a route table plus handlers:
//!
//! ```ignore
//! struct Service;
//! impl micropay_sdk::Service for Service {
//!     fn router() -> Router { Router::new().get("/ping", "Answers pong", Access::Public, ping) }
//! }
//! micropay_sdk::export_service!(Service);
//! ```

pub mod contracts;
pub mod cursor;
pub mod db;
pub mod events;
pub mod fields;
pub mod http;
pub mod money;
pub mod principal;
pub mod router;
pub mod services;
pub mod time;

pub use db::{Db, Row};
pub use http::{ApiError, Context, Response};
pub use principal::Principal;
pub use router::{Access, Router};

/// Bindings of the `service` world: the imports every component may use and the `handler` export.
///
/// A component of another world (the user service's `identity-service`) generates its own
/// exports and maps its imports onto these modules with `with`, so the helpers here serve it too.
pub mod service {
    wit_bindgen::generate!({
        world: "service",
        path: "../../wit",
        default_bindings_module: "micropay_sdk::service",
        pub_export_macro: true,
        export_macro_name: "export_service_bindings",
    });
}

pub use service::micropay::platform::principal::{AdminRole, Caller};
pub use service::micropay::platform::types::Value;
use service::micropay::platform::{clock, logging, random};

/// A service component: its route table.
pub trait Service {
    /// The component's endpoints. Built on every invocation (instances live for one request),
    /// so keep it a plain table.
    fn router() -> Router;
}

/// Exports a [`Service`] as a component of the `service` world.
#[macro_export]
macro_rules! export_service {
    ($service:ty) => {
        const _: () = {
            struct Export;
            impl $crate::service::exports::micropay::platform::handler::Guest for Export {
                fn handle(
                    request: $crate::service::micropay::platform::http::Request,
                ) -> $crate::service::micropay::platform::http::Response {
                    <$service as $crate::Service>::router().handle(request)
                }
                fn routes() -> ::std::vec::Vec<$crate::service::micropay::platform::http::Route> {
                    <$service as $crate::Service>::router().routes()
                }
            }
            $crate::service::export_service_bindings!(Export);
        };
    };
}

/// Generates, in a component crate, the bindings of a world that extends `service` (the user
/// service's `identity-service`, a subscriber's `subscribing-service`): its own exports, with
/// its imports mapped onto this crate's, so every helper here serves it. The component then
/// implements the generated `Guest` traits and calls the generated `export!`. `$wit_dir` is
/// the repository's `wit/`, relative to the component crate.
#[macro_export]
macro_rules! world_bindings {
    ($world:literal, $wit_dir:literal) => {
        wit_bindgen::generate!({
            world: $world,
            path: $wit_dir,
            with: {
                "micropay:platform/types@0.1.0": micropay_sdk::service::micropay::platform::types,
                "micropay:platform/database@0.1.0": micropay_sdk::service::micropay::platform::database,
                "micropay:platform/logging@0.1.0": micropay_sdk::service::micropay::platform::logging,
                "micropay:platform/clock@0.1.0": micropay_sdk::service::micropay::platform::clock,
                "micropay:platform/random@0.1.0": micropay_sdk::service::micropay::platform::random,
                "micropay:platform/principal@0.1.0": micropay_sdk::service::micropay::platform::principal,
                "micropay:platform/http@0.1.0": micropay_sdk::service::micropay::platform::http,
                "micropay:platform/services@0.1.0": micropay_sdk::service::micropay::platform::services,
                "micropay:platform/events@0.1.0": micropay_sdk::service::micropay::platform::events,
            },
        });
    };
}

/// Writes an informational line to the host's log.
pub fn log_info(message: &str) {
    logging::log(logging::Level::Info, message);
}

/// Writes a warning to the host's log.
pub fn log_warn(message: &str) {
    logging::log(logging::Level::Warn, message);
}

/// Hands the host a one-time secret meant for a person (a verification code): logged only by
/// a host in development (`--dev-log-secrets`), dropped otherwise.
pub fn log_development_secret(message: &str) {
    logging::log_development_secret(message);
}

/// The host's wall-clock time in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    clock::now()
}

/// `len` bytes from the host's secure random generator.
pub fn random_bytes(len: u32) -> Vec<u8> {
    random::random_bytes(len)
}

/// Whether `text` is a UUID in hyphenated form (either case), so that a malformed id is
/// refused before it reaches the database.
pub fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A new random (version 4) UUID, from the host's secure random generator: for ids a unit of
/// work needs before its first insert, e.g. to name a transaction in another service's hold.
pub fn new_uuid() -> String {
    let mut bytes = random::random_bytes(16);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuids_are_hyphenated_hex() {
        assert!(super::is_uuid("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"));
        assert!(super::is_uuid("0B1C2D3E-4F50-6172-8394-A5B6C7D8E9F0"));
        assert!(!super::is_uuid("0b1c2d3e4f5061728394a5b6c7d8e9f0"));
        assert!(!super::is_uuid("zb1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"));
    }
}
