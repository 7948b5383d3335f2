//! Keyset pagination: where a page of a newest-first listing stopped, as an opaque token.

use chrono::{DateTime, Datelike};

use crate::db::Conditions;
use crate::db::param::{int, timestamp, uuid};
use crate::{ApiError, Row};

/// Page size of a listing when the request names none, and its maximum.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// Where a page of a newest-first listing starts and how long it is, from the request's
/// `limit` and `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    /// The last row of the previous page.
    pub after: Option<Cursor>,
}

impl Page {
    /// Reads `limit` (1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent) and `cursor` (a
    /// `next_cursor` this listing returned) from the query parameters (`param` looks one up by
    /// name); a malformed one is a 400 naming it.
    pub fn from_query(param: impl Fn(&str) -> Option<String>) -> Result<Self, ApiError> {
        let given = |name: &str| param(name).filter(|value| !value.is_empty());
        let limit = match given("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => {
                text.parse::<i64>().ok().filter(|limit| (1..=MAX_LIMIT).contains(limit)).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_limit",
                        format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                    )
                })?
            }
        };
        let after = match given("cursor") {
            None => None,
            Some(text) => Some(Cursor::decode(&text).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor must be a next_cursor returned by this endpoint")
            })?),
        };
        Ok(Self { limit, after })
    }

    /// Ends a listing's conditions with the page's: rows older than the cursor by `(time, id)`
    /// (columns of the query, newest first), bound in `conditions` after every filter; answers
    /// the query's `ORDER BY ... LIMIT ...`, one row past the page (see [`Page::cut`]).
    pub fn keyset(&self, conditions: &mut Conditions, time: &str, id: &str) -> String {
        if let Some(after) = &self.after {
            let after_time = conditions.bind(timestamp(after.time));
            let after_id = conditions.bind(uuid(after.id.as_str()));
            conditions.and(&format!("({time}, {id}) < ({after_time}, {after_id})"));
        }
        let limit = conditions.bind(int(self.limit + 1));
        format!(" ORDER BY {time} DESC, {id} DESC LIMIT {limit}")
    }

    /// Cuts `rows` (fetched one past the page, newest first by `created_at` and `id_column`:
    /// the extra row's presence says another page follows) to the page, and returns the cursor
    /// of the next page, if there is one.
    pub fn cut(&self, rows: &mut Vec<Row>, id_column: &str) -> Option<String> {
        let page = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let more = rows.len() > page;
        rows.truncate(page);
        let last = rows.last().filter(|_| more)?;
        let time = last.opt_timestamp("created_at").expect("created_at is NOT NULL");
        Some(Cursor { time, id: last.text(id_column) }.encode())
    }
}

/// The last row of a page: its time and id, the key a listing is ordered by. Opaque to
/// clients: 48 hex digits, the time's 64 bits then the id's 128.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Microseconds since the epoch (UTC).
    pub time: i64,
    /// A UUID, hyphenated.
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        // Two's complement bits of the time, so a time before 1970 survives the round trip.
        format!("{:016x}{}", self.time as u64, self.id.replace('-', ""))
    }

    /// The cursor `text` encodes, or `None` for anything [`Cursor::encode`] would not produce.
    pub fn decode(text: &str) -> Option<Cursor> {
        if text.len() != 48 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let time = u64::from_str_radix(&text[..16], 16).ok()? as i64;
        // A forged cursor whose time PostgreSQL cannot hold must be a 400, not a database error.
        let year = DateTime::from_timestamp_micros(time)?.year();
        if !(1..=9999).contains(&year) {
            return None;
        }
        let id = &text[16..];
        let id = format!("{}-{}-{}-{}-{}", &id[..8], &id[8..12], &id[12..16], &id[16..20], &id[20..]);
        Some(Cursor { time, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        for time in [0, 1_795_000_000_123_456, -86_400_000_000] {
            let cursor = Cursor { time, id: ID.into() };
            let text = cursor.encode();
            assert_eq!(text.len(), 48);
            assert_eq!(Cursor::decode(&text), Some(cursor));
        }
        assert_eq!(Cursor { time: 1, id: ID.into() }.encode(), "00000000000000010b1c2d3e4f5061728394a5b6c7d8e9f0");
        assert_eq!(Cursor::decode(&"A".repeat(48)), None);
        assert_eq!(Cursor::decode(&"0".repeat(47)), None);
        assert_eq!(Cursor::decode(&format!("7fffffffffffffff{}", "0".repeat(32))), None);
    }
}
