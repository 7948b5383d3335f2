//! The audit service's rules: how a delivered event becomes an audit record and which hash
//! chain it joins, what a valid listing query is, and the cursor that pages through it.

use chrono::DateTime;
use micropay_sdk::ApiError;
use micropay_sdk::cursor::Cursor;
use micropay_sdk::is_uuid;
use serde_json::{Map, Value as Json};

use crate::bindings::exports::micropay::platform::subscriber::Event;

/// How many hash chains the trail is spread over: `audit_chain_heads` has one row for each.
pub const CHAINS: u32 = 16;

/// How many months after the current one maintenance keeps partitions ready.
pub const PARTITIONS_AHEAD: i64 = 3;

/// How long ago a month must have ended, as an SQL interval, before it moves to the archive.
pub const ARCHIVE_AFTER: &str = "12 months";

/// Page size of the listing when the request names none, and its maximum.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// Sizes of the `ip_address` and `entity_type` columns.
const IP_ADDRESS_MAX: usize = 45;
const ENTITY_TYPE_MAX: usize = 200;

/// What the trail keeps of an event's `secret` field (`micropay_sdk::contracts::SECRET_FIELD`).
pub const REDACTED: &str = "[redacted]";

/// One row of `audit_logs`, before the database chains it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub event_id: String,
    pub event_type: String,
    pub service_name: String,
    pub entity_type: String,
    pub entity_id: Option<String>,
    pub user_id: Option<String>,
    pub action: String,
    pub old_values: Option<Json>,
    pub new_values: Option<Json>,
    pub metadata: Json,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    /// When the event was published, in microseconds since the epoch (UTC).
    pub occurred_at: i64,
    pub chain: i64,
}

/// The record of a delivered event. Never fails: the trail takes every event, and a field the
/// payload does not provide in a usable shape is simply left empty.
///
/// - `event_type` is the topic, `service_name` its publisher, `entity_id` its subject;
/// - `entity_type` is the topic's first word (`user` for `user.registered`) unless the data
///   names one, and `action` the rest of the topic (`registered`);
/// - `new_values` is the data (its `secret` field [`REDACTED`]), or its `new_values` object when
///   it carries `old_values` too;
/// - `metadata` is the data's `metadata` object with the event's trace id and source, which the
///   payload cannot override.
pub fn record(event: &Event) -> Record {
    // The host only publishes JSON; anything else is kept verbatim, as a JSON string.
    let mut data: Json = serde_json::from_str(&event.data).unwrap_or_else(|_| Json::String(event.data.clone()));
    // An event's secret (a one-time code) is for its one reader, never for the trail.
    if let Some(secret) = data.get_mut(micropay_sdk::contracts::SECRET_FIELD) {
        *secret = Json::String(REDACTED.into());
    }
    let (first_word, rest) = event.topic.split_once('.').unwrap_or((&event.topic, &event.topic));
    let string = |field: &str| data.get(field).and_then(Json::as_str);

    let entity_type = string("entity_type")
        .filter(|name| !name.is_empty() && name.chars().count() <= ENTITY_TYPE_MAX)
        .unwrap_or(first_word)
        .to_string();
    let user_id = string("user_id").filter(|id| is_uuid(id)).map(str::to_ascii_lowercase);
    let old_values = data.get("old_values").filter(|values| !values.is_null()).cloned();
    let new_values = match data.get("new_values") {
        Some(values @ Json::Object(_)) if data.get("old_values").is_some() => Some(values.clone()),
        _ => Some(data.clone()).filter(|values| !values.is_null()),
    };
    let mut metadata = match data.get("metadata") {
        Some(Json::Object(fields)) => fields.clone(),
        _ => Map::new(),
    };
    metadata.insert("trace_id".into(), Json::String(event.trace_id.clone()));
    metadata.insert("source".into(), Json::String(event.source.clone()));
    let ip_address =
        string("ip_address").filter(|ip| !ip.is_empty() && ip.chars().count() <= IP_ADDRESS_MAX).map(str::to_string);

    Record {
        event_id: event.id.clone(),
        event_type: event.topic.clone(),
        service_name: event.source.clone(),
        entity_type,
        entity_id: Some(event.subject.clone()).filter(|subject| !subject.is_empty()),
        user_id,
        action: rest.to_string(),
        old_values,
        new_values,
        metadata: Json::Object(metadata),
        ip_address,
        user_agent: string("user_agent").map(str::to_string),
        occurred_at: event.time,
        chain: chain_of(&event.subject),
    }
}

/// The chain of an entity's records: FNV-1a of its key, modulo [`CHAINS`], so every record of
/// one entity lands in the same chain and its history is one unbroken sequence. Each row
/// stores its chain, so verification never recomputes this; changing it would only split the
/// histories of entities between their old and new chains.
pub fn chain_of(key: &str) -> i64 {
    let hash = key.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
    i64::from(hash % CHAINS)
}

/// A listing request: the filters, the page size, and where the previous page stopped.
#[derive(Debug, Default, PartialEq)]
pub struct LogQuery {
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub user_id: Option<String>,
    pub event_type: Option<String>,
    pub service_name: Option<String>,
    /// Inclusive lower bound of `occurred_at`, in microseconds.
    pub from: Option<i64>,
    /// Exclusive upper bound of `occurred_at`, in microseconds.
    pub to: Option<i64>,
    pub limit: i64,
    pub after: Option<Cursor>,
}

/// Reads a listing request from its query parameters (`param` looks one up by name). Anything
/// malformed is a 400 naming the parameter, before any query runs.
pub fn log_query(param: impl Fn(&str) -> Option<String>) -> Result<LogQuery, ApiError> {
    let filter = |name: &str| -> Result<Option<String>, ApiError> {
        match param(name) {
            // PostgreSQL refuses NUL in text; as a filter it could only ever match nothing.
            Some(value) if value.contains('\0') => {
                Err(ApiError::bad_request("invalid_filter", format!("{name} must not contain NUL characters")))
            }
            value => Ok(value.filter(|value| !value.is_empty())),
        }
    };
    let user_id = match filter("user_id")? {
        Some(id) if is_uuid(&id) => Some(id.to_ascii_lowercase()),
        Some(_) => return Err(ApiError::bad_request("invalid_user_id", "user_id must be a UUID")),
        None => None,
    };
    let from = filter("from")?.map(|text| timestamp("from", &text)).transpose()?;
    let to = filter("to")?.map(|text| timestamp("to", &text)).transpose()?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(ApiError::bad_request("invalid_range", "from must not be later than to"));
    }
    let limit = match filter("limit")? {
        None => DEFAULT_LIMIT,
        Some(text) => text.parse::<i64>().ok().filter(|limit| (1..=MAX_LIMIT).contains(limit)).ok_or_else(|| {
            ApiError::bad_request("invalid_limit", format!("limit must be a whole number from 1 to {MAX_LIMIT}"))
        })?,
    };
    let after = match filter("cursor")? {
        None => None,
        Some(text) => Some(Cursor::decode(&text).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor must be a next_cursor returned by this endpoint")
        })?),
    };
    Ok(LogQuery {
        entity_type: filter("entity_type")?,
        entity_id: filter("entity_id")?,
        user_id,
        event_type: filter("event_type")?,
        service_name: filter("service")?,
        from,
        to,
        limit,
        after,
    })
}

/// An RFC 3339 timestamp as microseconds since the epoch, or 400 `invalid_timestamp`.
fn timestamp(name: &str, text: &str) -> Result<i64, ApiError> {
    // The `+` of an offset arrives as a space when the client did not percent-encode it; a
    // space that late in the text cannot be the date-time separator.
    let text = match text.rfind(' ') {
        Some(at) if at >= 19 => format!("{}+{}", &text[..at], &text[at + 1..]),
        _ => text.to_string(),
    };
    DateTime::parse_from_rfc3339(&text).map(|time| time.timestamp_micros()).map_err(|_| {
        ApiError::bad_request(
            "invalid_timestamp",
            format!("{name} must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z (encode + as %2B)"),
        )
    })
}

/// What a verification failure means, for the people reading the answer.
pub fn reason_message(reason: &str) -> &'static str {
    match reason {
        "content_altered" => "the record's content no longer matches its hash",
        "link_broken" => "the record does not follow the one before it in its chain",
        "row_missing" => "records are missing from the chain before this position",
        "head_mismatch" => "the chain's head does not name the chain's last record",
        _ => "the chain is broken here",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    const USER: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

    fn event(topic: &str, subject: &str, data: &str) -> Event {
        Event {
            id: "5f0c1c9e-8a55-4c55-9d86-1f2a3b4c5d6e".into(),
            topic: topic.into(),
            source: "user".into(),
            subject: subject.into(),
            time: 1_795_000_000_123_456,
            data: data.into(),
            trace_id: "req-42".into(),
            attempt: 2,
        }
    }

    fn query(pairs: &[(&str, &str)]) -> Result<LogQuery, ApiError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        log_query(|name| map.get(name).cloned())
    }

    fn code(result: Result<LogQuery, ApiError>) -> String {
        let err = result.expect_err("refused");
        assert_eq!(err.status, 400);
        err.code
    }

    #[test]
    fn a_user_event_becomes_a_record() {
        let data = json!({
            "user_id": USER.to_uppercase(),
            "activity": "SIGNED_UP",
            "metadata": { "session_id": "s-1", "trace_id": "forged" },
            "ip_address": "203.0.113.7",
            "user_agent": "curl/8",
        });
        let record = record(&event("user.registered", USER, &data.to_string()));
        assert_eq!(record.event_id, "5f0c1c9e-8a55-4c55-9d86-1f2a3b4c5d6e");
        assert_eq!(record.event_type, "user.registered");
        assert_eq!(record.service_name, "user");
        assert_eq!(record.entity_type, "user");
        assert_eq!(record.entity_id.as_deref(), Some(USER));
        assert_eq!(record.user_id.as_deref(), Some(USER));
        assert_eq!(record.action, "registered");
        assert_eq!(record.old_values, None);
        assert_eq!(record.new_values, Some(data));
        assert_eq!(record.metadata, json!({ "session_id": "s-1", "trace_id": "req-42", "source": "user" }));
        assert_eq!(record.ip_address.as_deref(), Some("203.0.113.7"));
        assert_eq!(record.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(record.occurred_at, 1_795_000_000_123_456);
        assert_eq!(record.chain, chain_of(USER));
    }

    #[test]
    fn topics_split_into_entity_and_action() {
        let record = record(&event("user.password_changed", "k", "{}"));
        assert_eq!((record.entity_type.as_str(), record.action.as_str()), ("user", "password_changed"));
        let record = super::record(&event("payment.refund.completed", "k", "{}"));
        assert_eq!((record.entity_type.as_str(), record.action.as_str()), ("payment", "refund.completed"));
        let record = super::record(&event("heartbeat", "k", "{}"));
        assert_eq!((record.entity_type.as_str(), record.action.as_str()), ("heartbeat", "heartbeat"));
        let record = super::record(&event("account.opened", "k", r#"{"entity_type":"savings_account"}"#));
        assert_eq!(record.entity_type, "savings_account");
        // An entity type that is not a usable name falls back to the topic's.
        for data in [r#"{"entity_type":""}"#, r#"{"entity_type":7}"#] {
            assert_eq!(super::record(&event("account.opened", "k", data)).entity_type, "account");
        }
        let long = json!({ "entity_type": "x".repeat(201) }).to_string();
        assert_eq!(super::record(&event("account.opened", "k", &long)).entity_type, "account");
    }

    #[test]
    fn old_and_new_values() {
        let data = json!({ "old_values": { "status": "ACTIVE" }, "new_values": { "status": "FROZEN" }, "by": "ops" });
        let record = record(&event("account.updated", "a", &data.to_string()));
        assert_eq!(record.old_values, Some(json!({ "status": "ACTIVE" })));
        assert_eq!(record.new_values, Some(json!({ "status": "FROZEN" })));

        // A creation: old_values null, new_values still the object.
        let data = json!({ "old_values": null, "new_values": { "status": "ACTIVE" } });
        let record = super::record(&event("account.opened", "a", &data.to_string()));
        assert_eq!(record.old_values, None);
        assert_eq!(record.new_values, Some(json!({ "status": "ACTIVE" })));

        // new_values without old_values is just a field of the data.
        let data = json!({ "new_values": { "status": "ACTIVE" }, "note": "x" });
        assert_eq!(super::record(&event("account.opened", "a", &data.to_string())).new_values, Some(data));

        // Any JSON document is kept; JSON null is no values at all.
        assert_eq!(super::record(&event("x.y", "a", "[1,2]")).new_values, Some(json!([1, 2])));
        assert_eq!(super::record(&event("x.y", "a", "null")).new_values, None);
        assert_eq!(super::record(&event("x.y", "a", "not json")).new_values, Some(json!("not json")));
    }

    #[test]
    fn unusable_fields_are_left_empty() {
        let data = json!({
            "user_id": "not-a-uuid",
            "ip_address": "1".repeat(46),
            "user_agent": 12,
            "metadata": "not an object",
        });
        let record = record(&event("user.logged_in", "k", &data.to_string()));
        assert_eq!(record.user_id, None);
        assert_eq!(record.ip_address, None);
        assert_eq!(record.user_agent, None);
        assert_eq!(record.metadata, json!({ "trace_id": "req-42", "source": "user" }));
        let ipv6 = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        let data = json!({ "ip_address": ipv6 }).to_string();
        assert_eq!(super::record(&event("user.logged_in", "k", &data)).ip_address.as_deref(), Some(ipv6));
    }

    #[test]
    fn chains_are_stable_and_spread() {
        // Fixed values: a change here would scatter existing entities over other chains.
        assert_eq!(chain_of(""), 0x811c_9dc5 % 16);
        assert_eq!(chain_of("a"), 0xe40c_292c % 16);
        assert_eq!(chain_of(USER), chain_of(USER));
        let mut used = [false; CHAINS as usize];
        for n in 0..200 {
            let chain = chain_of(&format!("entity-{n}"));
            assert!((0..i64::from(CHAINS)).contains(&chain));
            used[chain as usize] = true;
        }
        assert!(used.iter().all(|&u| u), "200 keys should reach every chain");
    }

    #[test]
    fn listing_queries() {
        let q = query(&[]).unwrap();
        assert_eq!(q, LogQuery { limit: 50, ..LogQuery::default() });

        let q = query(&[
            ("entity_type", "user"),
            ("entity_id", "42"),
            ("user_id", &USER.to_uppercase()),
            ("event_type", "user.registered"),
            ("service", "user"),
            ("from", "2026-01-01T00:00:00Z"),
            ("to", "2026-01-01 01:00:00 01:00"),
            ("limit", "500"),
            ("cursor", ""),
        ])
        .unwrap();
        assert_eq!(q.entity_type.as_deref(), Some("user"));
        assert_eq!(q.entity_id.as_deref(), Some("42"));
        assert_eq!(q.user_id.as_deref(), Some(USER));
        assert_eq!(q.event_type.as_deref(), Some("user.registered"));
        assert_eq!(q.service_name.as_deref(), Some("user"));
        assert_eq!(q.from, Some(1_767_225_600_000_000));
        // 01:00 at +01:00 is midnight UTC: the unencoded `+` (a space) was read as an offset.
        assert_eq!(q.to, Some(1_767_225_600_000_000));
        assert_eq!(q.limit, 500);
        assert_eq!(q.after, None);
    }

    #[test]
    fn bad_parameters_are_400_with_a_code() {
        assert_eq!(code(query(&[("user_id", "42")])), "invalid_user_id");
        assert_eq!(code(query(&[("from", "yesterday")])), "invalid_timestamp");
        assert_eq!(code(query(&[("to", "2026-01-01")])), "invalid_timestamp");
        assert_eq!(code(query(&[("from", "2026-02-01T00:00:00Z"), ("to", "2026-01-01T00:00:00Z")])), "invalid_range");
        for limit in ["0", "501", "-1", "ten", "1.5"] {
            assert_eq!(code(query(&[("limit", limit)])), "invalid_limit", "{limit}");
        }
        for cursor in ["abc", &"z".repeat(48), &"A".repeat(48), &format!("{}{}", "7".repeat(16), "0".repeat(32))] {
            assert_eq!(code(query(&[("cursor", cursor)])), "invalid_cursor", "{cursor}");
        }
        assert_eq!(code(query(&[("entity_id", "a\0b")])), "invalid_filter");
    }

    #[test]
    fn uuids() {}

    #[test]
    fn an_events_secret_is_redacted() {
        let data = json!({ "user_id": USER, "destination": "a@example.com", "secret": { "code": "123456" } });
        let record = record(&event("user.code_issued", USER, &data.to_string()));
        let kept = record.new_values.unwrap();
        assert_eq!(kept["secret"], json!(REDACTED));
        assert_eq!(kept["destination"], json!("a@example.com"));
        assert!(!kept.to_string().contains("123456"));
    }
}
