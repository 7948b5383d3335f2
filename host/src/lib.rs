//! MicroPay's host: serves sandboxed payment-service components, each on its own PostgreSQL
//! database, behind one HTTP gateway.
//!
//! - [`runtime`]: the wasmtime engine, the services and their versions, invocations;
//! - [`capabilities`]: what a component may import (database, logging, clock, random, principal);
//! - [`postgres`]: the embedded cluster and the per-service databases, roles, pools, migrations;
//! - [`bus`]: the event bus: outbox relay, backends (embedded, NATS JetStream), delivery;
//! - [`gateway`]: the HTTP API;
//! - [`policy`]: what each component is granted;
//! - [`deploy`]: new versions checked, stored and swapped in on every host; signed artifacts;
//! - [`admin`]: admin API keys and the `/admin` routes;
//! - [`schedule`]: requests made to components on a timer (maintenance jobs);
//! - [`sessions`]: resolved bearer tokens, cached briefly and forgotten on every host when ended;
//! - [`platform`]: all of the above started together.

pub mod admin;
pub mod bench;
pub mod bus;
pub mod capabilities;
pub mod config;
pub mod deploy;
pub mod gateway;
pub mod metrics;
pub mod platform;
pub mod policy;
pub mod postgres;
pub mod runtime;
pub mod schedule;
pub mod sessions;
pub mod telemetry;

/// FNV-1a of `bytes`: a hash identical on every host and every build, for what hosts must
/// agree on (partitions, lock keys).
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, byte| (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193))
}
