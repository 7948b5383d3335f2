//! The declarative rules' condition language: a JSON tree over a payment's features
//! (`features`), checked when a rule is written (so evaluating one never fails) and evaluated
//! with exact decimals.
//!
//! ```json
//! {"all": [
//!   {"feature": "amount", "op": "gte", "value": "1000.00"},
//!   {"any": [{"feature": "payer_account_age_hours", "op": "lt", "value": 24},
//!            {"not": {"feature": "payer_email_verified", "op": "eq", "value": true}}]},
//!   {"feature": "currency", "op": "in", "values": ["EUR", "USD"]}
//! ]}
//! ```
//!
//! - `all` and `any` take one or more conditions; `not` takes one.
//! - A comparison names a `feature`, an `op` and a `value`: `eq`, `ne` for every type; `gt`,
//!   `gte`, `lt`, `lte` for decimals and integers; `in` and `not_in` with `values` (1 to
//!   [`MAX_LIST`]) for text, integers and decimals.
//! - Values have the feature's type: a decimal is a JSON string of an exact decimal (`"0.10"`;
//!   a JSON number is refused for a decimal feature, as for every amount on the platform, except
//!   a whole one), an integer a JSON integer, a boolean `true` or `false`, text a string.
//! - A feature that is `null` (not known) makes every comparison false, `ne` and `not_in`
//!   included; `not` of such a comparison is true.
//! - At most [`MAX_DEPTH`] levels and [`MAX_NODES`] conditions in one rule.

use micropay_sdk::money::Decimal;
use serde_json::{Map, Value as Json};

use crate::features::{Feature, Features, Kind, Value};

pub const MAX_DEPTH: usize = 8;
pub const MAX_NODES: usize = 200;
pub const MAX_LIST: usize = 500;
const MAX_TEXT: usize = 100;

/// A checked condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Compare { feature: Feature, op: Op, value: Value },
    Member { feature: Feature, negated: bool, values: Vec<Value> },
}

/// A comparison's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Condition {
    /// Checks a condition as written in a rule; the error names where it is wrong
    /// (`all[1].value: ...`).
    pub fn parse(json: &Json) -> Result<Condition, String> {
        let mut nodes = 0;
        parse(json, "condition", 1, &mut nodes)
    }

    /// Whether `features` meet the condition.
    pub fn matches(&self, features: &Features) -> bool {
        match self {
            Condition::All(all) => all.iter().all(|condition| condition.matches(features)),
            Condition::Any(any) => any.iter().any(|condition| condition.matches(features)),
            Condition::Not(condition) => !condition.matches(features),
            Condition::Compare { feature, op, value } => compare(&feature.value(features), *op, value),
            Condition::Member { feature, negated, values } => {
                let actual = feature.value(features);
                if actual == Value::Null {
                    return false;
                }
                values.iter().any(|value| compare(&actual, Op::Eq, value)) != *negated
            }
        }
    }
}

fn compare(actual: &Value, op: Op, expected: &Value) -> bool {
    let ordering = match (actual, expected) {
        (Value::Decimal(a), Value::Decimal(b)) => a.cmp(b),
        (Value::Integer(a), Value::Integer(b)) => a.cmp(b),
        (Value::Boolean(a), Value::Boolean(b)) => a.cmp(b),
        (Value::Text(a), Value::Text(b)) => a.cmp(b),
        // A null feature (or, never after parsing, a value of another type): false.
        _ => return false,
    };
    match op {
        Op::Eq => ordering.is_eq(),
        Op::Ne => ordering.is_ne(),
        Op::Gt => ordering.is_gt(),
        Op::Gte => ordering.is_ge(),
        Op::Lt => ordering.is_lt(),
        Op::Lte => ordering.is_le(),
    }
}

fn parse(json: &Json, at: &str, depth: usize, nodes: &mut usize) -> Result<Condition, String> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(format!("{at}: a condition has at most {MAX_NODES} parts"));
    }
    if depth > MAX_DEPTH {
        return Err(format!("{at}: conditions nest at most {MAX_DEPTH} deep"));
    }
    let object = json.as_object().ok_or_else(|| format!("{at}: a condition is a JSON object"))?;
    if let Some(list) = single(object, "all") {
        return Ok(Condition::All(parse_list(list, &format!("{at}.all"), depth, nodes)?));
    }
    if let Some(list) = single(object, "any") {
        return Ok(Condition::Any(parse_list(list, &format!("{at}.any"), depth, nodes)?));
    }
    if let Some(inner) = single(object, "not") {
        return Ok(Condition::Not(Box::new(parse(inner, &format!("{at}.not"), depth + 1, nodes)?)));
    }
    parse_comparison(object, at)
}

/// The only member of `object` when it is `key`.
fn single<'a>(object: &'a Map<String, Json>, key: &str) -> Option<&'a Json> {
    (object.len() == 1).then(|| object.get(key)).flatten()
}

fn parse_list(json: &Json, at: &str, depth: usize, nodes: &mut usize) -> Result<Vec<Condition>, String> {
    let list = json.as_array().filter(|list| !list.is_empty()).ok_or_else(|| format!("{at}: a non-empty list"))?;
    list.iter().enumerate().map(|(index, item)| parse(item, &format!("{at}[{index}]"), depth + 1, nodes)).collect()
}

fn parse_comparison(object: &Map<String, Json>, at: &str) -> Result<Condition, String> {
    let name = object
        .get("feature")
        .and_then(Json::as_str)
        .ok_or_else(|| format!("{at}: a condition is all, any, not, or a comparison with feature, op and value"))?;
    let feature = Feature::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Feature::ALL.iter().map(|feature| feature.name()).collect();
        format!("{at}.feature: no feature {name:?} (known: {})", known.join(", "))
    })?;
    let op = object.get("op").and_then(Json::as_str).ok_or_else(|| format!("{at}.op: missing"))?;
    let kind = feature.kind();
    let expected_keys: &[&str] =
        if matches!(op, "in" | "not_in") { &["feature", "op", "values"] } else { &["feature", "op", "value"] };
    if let Some(extra) = object.keys().find(|key| !expected_keys.contains(&key.as_str())) {
        return Err(format!("{at}: unexpected member {extra:?} (a {op} comparison has {})", expected_keys.join(", ")));
    }
    let ordered = matches!(kind, Kind::Decimal | Kind::Integer);
    let op = match op {
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "gt" | "gte" | "lt" | "lte" if !ordered => {
            return Err(format!("{at}.op: {op} compares numbers; {name} is {}", kind.name()));
        }
        "gt" => Op::Gt,
        "gte" => Op::Gte,
        "lt" => Op::Lt,
        "lte" => Op::Lte,
        "in" | "not_in" => {
            if kind == Kind::Boolean {
                return Err(format!("{at}.op: {op} takes a list; compare {name}, a boolean, with eq"));
            }
            let values = object
                .get("values")
                .and_then(Json::as_array)
                .filter(|values| (1..=MAX_LIST).contains(&values.len()))
                .ok_or_else(|| format!("{at}.values: a list of 1 to {MAX_LIST} values"))?;
            let values = values
                .iter()
                .enumerate()
                .map(|(index, value)| operand(kind, value, &format!("{at}.values[{index}]"), name))
                .collect::<Result<_, _>>()?;
            return Ok(Condition::Member { feature, negated: op == "not_in", values });
        }
        other => return Err(format!("{at}.op: no operator {other:?} (eq, ne, gt, gte, lt, lte, in, not_in)")),
    };
    let value = object.get("value").ok_or_else(|| format!("{at}.value: missing"))?;
    Ok(Condition::Compare { feature, op, value: operand(kind, value, &format!("{at}.value"), name)? })
}

/// A value written for a feature of `kind`.
fn operand(kind: Kind, json: &Json, at: &str, name: &str) -> Result<Value, String> {
    let wrong = || format!("{at}: {name} is {}; {}", kind.name(), how_written(kind));
    match kind {
        Kind::Decimal => match json {
            Json::String(text) => Decimal::from_str_exact(text.trim()).map(Value::Decimal).map_err(|_| wrong()),
            Json::Number(number) => number.as_i64().map(|whole| Value::Decimal(Decimal::from(whole))).ok_or_else(wrong),
            _ => Err(wrong()),
        },
        Kind::Integer => json.as_i64().map(Value::Integer).ok_or_else(wrong),
        Kind::Boolean => json.as_bool().map(Value::Boolean).ok_or_else(wrong),
        Kind::Text => json
            .as_str()
            .filter(|text| text.chars().count() <= MAX_TEXT)
            .map(|text| Value::Text(text.to_string()))
            .ok_or_else(wrong),
    }
}

fn how_written(kind: Kind) -> &'static str {
    match kind {
        Kind::Decimal => "write an exact decimal as a string (\"1000.00\")",
        Kind::Integer => "write a whole number",
        Kind::Boolean => "write true or false",
        Kind::Text => "write a string of at most 100 characters",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::features::tests::sample;

    fn matches(condition: Json) -> bool {
        Condition::parse(&condition).unwrap().matches(&sample())
    }

    fn refusal(condition: Json) -> String {
        Condition::parse(&condition).unwrap_err()
    }

    #[test]
    fn comparisons_are_exact_decimals() {
        assert!(matches(json!({"feature": "amount", "op": "gte", "value": "2500.00"})));
        assert!(!matches(json!({"feature": "amount", "op": "gt", "value": "2500"})));
        assert!(matches(json!({"feature": "amount", "op": "lt", "value": "2500.0001"})));
        assert!(matches(json!({"feature": "amount", "op": "eq", "value": 2500})));
        assert!(matches(json!({"feature": "payer_amount_last_day", "op": "eq", "value": "999.99"})));
    }

    #[test]
    fn all_any_not_and_lists_combine() {
        assert!(matches(json!({"all": [
            {"feature": "payer_payments_last_hour", "op": "gte", "value": 3},
            {"any": [{"feature": "currency", "op": "in", "values": ["USD", "EUR"]}, {"feature": "hour_of_day", "op": "eq", "value": 12}]},
            {"not": {"feature": "payer_email_verified", "op": "eq", "value": true}}
        ]})));
        assert!(!matches(json!({"any": [
            {"feature": "currency", "op": "not_in", "values": ["EUR"]},
            {"feature": "first_payment_to_payee", "op": "ne", "value": true}
        ]})));
    }

    #[test]
    fn a_null_feature_makes_every_comparison_false() {
        assert!(!matches(json!({"feature": "payee_account_age_hours", "op": "lt", "value": 24})));
        assert!(!matches(json!({"feature": "payee_account_age_hours", "op": "ne", "value": 24})));
        assert!(!matches(json!({"feature": "payee_account_age_hours", "op": "not_in", "values": [1]})));
        assert!(matches(json!({"not": {"feature": "payee_account_age_hours", "op": "gte", "value": 24}})));
    }

    #[test]
    fn malformed_conditions_are_refused_with_where() {
        assert!(refusal(json!({"feature": "amount", "op": "gte", "value": 1000.5})).contains("condition.value"));
        assert!(refusal(json!({"feature": "amont", "op": "gte", "value": "1"})).contains("no feature \"amont\""));
        assert!(refusal(json!({"feature": "currency", "op": "gt", "value": "EUR"})).contains("compares numbers"));
        assert!(refusal(json!({"feature": "amount_is_round", "op": "in", "values": [true]})).contains("boolean"));
        assert!(refusal(json!({"all": []})).contains("condition.all: a non-empty list"));
        assert!(refusal(json!({"all": [{"feature": "amount", "op": "lte", "value": "x"}]})).contains("all[0].value"));
        assert!(
            refusal(json!({"feature": "amount", "op": "eq", "value": "1", "extra": 1})).contains("unexpected member")
        );
        assert!(refusal(json!({"all": [true], "any": []})).contains("comparison"));
        let mut deep = json!({"feature": "amount", "op": "gt", "value": "1"});
        for _ in 0..MAX_DEPTH {
            deep = json!({"not": deep});
        }
        assert!(refusal(deep).contains("nest at most"));
        let wide: Vec<Json> =
            (0..MAX_NODES).map(|_| json!({"feature": "hour_of_day", "op": "eq", "value": 1})).collect();
        assert!(refusal(json!({ "any": wide })).contains("at most"));
    }
}
