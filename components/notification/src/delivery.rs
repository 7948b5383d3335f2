//! Delivering messages: each rendered by its template component through the host's
//! `templates` capability, then sent on its channel through the host's `messaging`
//! capability; the outcomes of a batch written with one statement.
//!
//! A message is rendered when it is delivered, not when it is made: a template deployed in
//! between renders it, and a template that fails (and whose previous version fails too) leaves
//! it `PENDING` to be tried again, never lost. A channel that turns out unavailable is not
//! tried again within the same batch: its other messages wait for their next attempt.

use std::collections::BTreeMap;

use micropay_sdk::db::DbError;
use micropay_sdk::{Db, Row};
use serde_json::{Value as Json, json};

use crate::bindings::micropay::platform::messaging::{self, Email, Receipt, SendError, ShortMessage};
use crate::bindings::micropay::platform::templates::{self, Rendering};
use crate::domain::{self, Attempt, Channel};
use crate::sql;

/// The longest subject kept (the column's width).
const SUBJECT_MAX: usize = 255;

/// Tries to deliver each of `rows` (messages `PENDING`, locked or just inserted) and records
/// what became of them. Returns how many were sent or delivered.
pub fn deliver(db: &Db, rows: &[Row]) -> Result<usize, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let policy = sql::retry_policy(db)?;
    let mut down = BTreeMap::new();
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut done = 0;
    for row in rows {
        let (attempt, rendering) = attempt(row, &mut down);
        let after = domain::after(&attempt, row.int("retry_count"), &policy);
        done += usize::from(matches!(after.status, "SENT" | "DELIVERED"));
        let rendered = rendering.as_ref().map(|rendering| &rendering.rendered);
        outcomes.push(json!({
            "notification_id": row.text("notification_id"),
            "status": after.status,
            "subject": rendered.and_then(|r| r.subject.as_deref()).map(|subject| clip(subject, SUBJECT_MAX)),
            "message": rendered.map(|r| r.text.as_str()),
            "html_message": rendered.and_then(|r| r.html.as_deref()),
            "template_version": rendering.as_ref().map(|rendering| rendering.version),
            "failure_reason": after.failure_reason,
            "retry_count": after.retry_count,
            "retry_in_ms": after.retry_in_ms,
            "redact": !row.is_null("secret_variables"),
        }));
    }
    sql::record_attempts(db, &Json::Array(outcomes))?;
    Ok(done)
}

/// One attempt at one message: rendered, then sent, unless its channel was found down.
fn attempt(row: &Row, down: &mut BTreeMap<Channel, String>) -> (Attempt, Option<Rendering>) {
    let Some(channel) = Channel::parse(&row.text("channel")) else {
        return (Attempt::Rejected(format!("no channel {}", row.text("channel"))), None);
    };
    if let Some(reason) = down.get(&channel) {
        return (Attempt::Unavailable(format!("not tried: {reason}")), None);
    }
    let id = row.text("notification_id");
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
    let rendered = &rendering.rendered;
    let to = row.opt_text("destination").unwrap_or_default();
    let sent = match channel {
        Channel::InApp => return (Attempt::Delivered, Some(rendering)),
        Channel::Email => messaging::send_email(&Email {
            to,
            subject: rendered.subject.clone().unwrap_or_else(|| row.text("notification_type")),
            text: rendered.text.clone(),
            html: rendered.html.clone(),
            id,
        }),
        Channel::Sms => messaging::send_sms(&ShortMessage { to, title: None, text: rendered.text.clone(), id }),
        Channel::Push => {
            messaging::send_push(&ShortMessage { to, title: rendered.subject.clone(), text: rendered.text.clone(), id })
        }
    };
    let attempt = match sent {
        Ok(Receipt::Sent | Receipt::Kept) => Attempt::Sent,
        Ok(Receipt::Delivered) => Attempt::Delivered,
        Err(SendError::Rejected(reason) | SendError::NotGranted(reason)) => Attempt::Rejected(reason),
        Err(SendError::Unavailable(reason)) => {
            down.insert(channel, reason.clone());
            Attempt::Unavailable(reason)
        }
    };
    (attempt, Some(rendering))
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
