//! Timestamps as the platform exchanges them: microseconds since the Unix epoch in the
//! database contract, RFC 3339 in JSON.

use chrono::{DateTime, SecondsFormat};

/// Formats microseconds since the Unix epoch (UTC) as RFC 3339, e.g. `2026-11-24T21:50:39.123456Z`.
pub fn rfc3339(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros).map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true)).unwrap_or_default()
}

/// Parses an RFC 3339 timestamp of a query string into microseconds since the Unix epoch;
/// `None` for anything else, a year PostgreSQL's `TIMESTAMP` cannot hold among them.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    use chrono::Datelike;
    let text = text.trim();
    // The `+` of an offset arrives as a space when the client did not percent-encode it; a
    // space that late in the text cannot be the date-time separator.
    let text = match text.rfind(' ') {
        Some(at) if at >= 19 => format!("{}+{}", &text[..at], &text[at + 1..]),
        _ => text.to_string(),
    };
    DateTime::parse_from_rfc3339(&text)
        .ok()
        .filter(|time| (1..=9999).contains(&time.year()))
        .map(|time| time.timestamp_micros())
}
