//! Timestamps as the platform exchanges them: microseconds since the Unix epoch in the
//! database contract, RFC 3339 in JSON.

use chrono::{DateTime, SecondsFormat};

/// Formats microseconds since the Unix epoch (UTC) as RFC 3339, e.g. `2026-11-24T21:50:39.123456Z`.
pub fn rfc3339(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros).map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true)).unwrap_or_default()
}
