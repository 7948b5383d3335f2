//! Delivering messages: each rendered by its template component through the host's
//! `templates` capability, then sent on its channel through the host's `messaging`
//! capability; the outcomes of a batch written with one statement.
//!
//! A message is rendered when it is delivered, not when it is made: a template deployed in
//! between renders it, and a template that fails (and whose previous version fails too) leaves
//! it `PENDING` to be tried again, never lost. A channel that turns out unavailable is not
//! tried again within the same batch: its other messages wait for their next attempt.
//!
//! A webhook is not rendered: its body is the message's JSON (`id`, `type`, `created_at`,
//! `data`: the variables, which never hold a secret, since a code goes only to the address it
//! was asked for), signed by the host with the endpoint's secret.

use std::collections::BTreeMap;

use micropay_sdk::db::DbError;
use micropay_sdk::{Db, Row};
use serde_json::{Value as Json, json};

use crate::bindings::micropay::platform::messaging::{self, Email, Receipt, SendError, ShortMessage, Webhook};
use crate::bindings::micropay::platform::templates;
use crate::domain::{self, Attempt, Channel};
use crate::sql;

/// The longest subject kept (the column's width).
const SUBJECT_MAX: usize = 255;

/// How long one batch may spend sending, in microseconds: well within the policy's deadline
/// (30 s), since one send may take up to the host's 10 s. What is left waits for the sweep.
const SENDING_BUDGET_MICROS: i64 = 12_000_000;

/// Tries to deliver each of `rows` (messages `PENDING`, locked or just inserted) and records
/// what became of them. Returns how many were sent or delivered.
pub fn deliver(db: &Db, rows: &[Row]) -> Result<usize, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let policy = sql::retry_policy(db)?;
    let endpoints = endpoints(db, rows)?;
    let mut down = BTreeMap::new();
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut done = 0;
    let started = micropay_sdk::now_micros();
    for row in rows {
        // Slow receivers (a user's webhook that never answers) must not cost the batch its
        // deadline, and with it every other message.
        let (attempt, content) = match micropay_sdk::now_micros() - started > SENDING_BUDGET_MICROS {
            true => (Attempt::NotTried("the batch's time for sending was spent".into()), None),
            false => attempt(row, &endpoints, &mut down),
        };
        let attempted_at = micropay_sdk::now_micros();
        let after = domain::after(&attempt, row.int("retry_count"), &policy);
        done += usize::from(matches!(after.status, "SENT" | "DELIVERED"));
        let content = content.as_ref();
        outcomes.push(json!({
            "notification_id": row.text("notification_id"),
            "status": after.status,
            "subject": content.and_then(|c| c.subject.as_deref()).map(|subject| clip(subject, SUBJECT_MAX)),
            "message": content.map(|c| c.text.as_str()),
            "html_message": content.and_then(|c| c.html.as_deref()),
            "template_version": content.and_then(|c| c.version),
            "failure_reason": after.failure_reason,
            "retry_count": after.retry_count,
            "retry_in_ms": after.retry_in_ms,
            "redact": !row.is_null("secret_variables"),
            "attempted_at_micros": attempted_at,
        }));
    }
    sql::record_attempts(db, &Json::Array(outcomes))?;
    Ok(done)
}

/// What a message said, as it was sent.
struct Content {
    /// The template component's version that rendered it (none for a webhook).
    version: Option<i64>,
    subject: Option<String>,
    text: String,
    html: Option<String>,
}

/// A webhook endpoint to deliver to.
struct Endpoint {
    url: String,
    secret: String,
    active: bool,
}

/// The endpoints the webhook messages of `rows` go to, by id (one statement).
fn endpoints(db: &Db, rows: &[Row]) -> Result<BTreeMap<String, Endpoint>, DbError> {
    let ids: Vec<String> = rows
        .iter()
        .filter(|row| row.text("channel") == Channel::Webhook.as_str())
        .filter_map(|row| row.opt_text("destination"))
        .collect();
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(sql::endpoints_by_id(db, &ids)?
        .iter()
        .map(|row| {
            let endpoint = Endpoint { url: row.text("url"), secret: row.text("secret"), active: row.bool("is_active") };
            (row.text("endpoint_id"), endpoint)
        })
        .collect())
}

/// One attempt at one message: rendered (a webhook: its JSON), then sent, unless its channel
/// was found down.
fn attempt(
    row: &Row,
    endpoints: &BTreeMap<String, Endpoint>,
    down: &mut BTreeMap<Channel, String>,
) -> (Attempt, Option<Content>) {
    let Some(channel) = Channel::parse(&row.text("channel")) else {
        return (Attempt::Rejected(format!("no channel {}", row.text("channel"))), None);
    };
    if let Some(reason) = down.get(&channel) {
        return (Attempt::NotTried(format!("its channel is down: {reason}")), None);
    }
    let id = row.text("notification_id");
    let to = row.opt_text("destination").unwrap_or_default();
    if channel == Channel::Webhook {
        let Some(endpoint) = endpoints.get(&to).filter(|endpoint| endpoint.active) else {
            return (Attempt::Rejected("the webhook endpoint was removed".into()), None);
        };
        let body = json!({
            "id": id,
            "type": row.text("notification_type"),
            "created_at": row.rfc3339("created_at"),
            "data": row.json("variables"),
        })
        .to_string();
        let hook = Webhook { url: endpoint.url.clone(), secret: endpoint.secret.clone(), id, body: body.clone() };
        let content = Content { version: None, subject: None, text: body, html: None };
        return (outcome(messaging::post_webhook(&hook), channel, down), Some(content));
    }
    let mut variables = row.json("variables");
    if let (Some(all), Json::Object(secret)) = (variables.as_object_mut(), row.json("secret_variables")) {
        all.extend(secret);
    }
    let rendering = match templates::render(
        &row.text("template_component"),
        &row.text("template_name"),
        &row.text("locale"),
        &variables.to_string(),
        &id,
    ) {
        Ok(rendering) => rendering,
        Err(reason) => return (Attempt::Unavailable(format!("the template did not render: {reason}")), None),
    };
    let rendered = rendering.rendered;
    let content = Content {
        version: Some(rendering.version),
        subject: rendered.subject.clone(),
        text: rendered.text.clone(),
        html: rendered.html.clone(),
    };
    let sent = match channel {
        Channel::InApp => return (Attempt::Delivered, Some(content)),
        Channel::Webhook => unreachable!("answered above"),
        Channel::Email => messaging::send_email(&Email {
            to,
            subject: rendered.subject.unwrap_or_else(|| row.text("notification_type")),
            text: rendered.text,
            html: rendered.html,
            id,
        }),
        Channel::Sms => messaging::send_sms(&ShortMessage { to, title: None, text: rendered.text, id }),
        Channel::Push => messaging::send_push(&ShortMessage { to, title: rendered.subject, text: rendered.text, id }),
    };
    (outcome(sent, channel, down), Some(content))
}

/// What the channel's answer makes of the attempt; an unavailable channel is marked down.
fn outcome(sent: Result<Receipt, SendError>, channel: Channel, down: &mut BTreeMap<Channel, String>) -> Attempt {
    match sent {
        Ok(Receipt::Sent | Receipt::Kept) => Attempt::Sent,
        Ok(Receipt::Delivered) => Attempt::Delivered,
        Err(SendError::Rejected(reason) | SendError::NotGranted(reason)) => Attempt::Rejected(reason),
        // One webhook's receiver being down says nothing of another's.
        Err(SendError::Unavailable(reason)) if channel == Channel::Webhook => Attempt::Unavailable(reason),
        Err(SendError::Unavailable(reason)) => {
            down.insert(channel, reason.clone());
            Attempt::Unavailable(reason)
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
