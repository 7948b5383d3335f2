//! The notification service's endpoints and its event handler.

use std::collections::BTreeMap;

use micropay_sdk::contracts::{CodeIssued, CodePurpose, NewDeviceLogin, PaymentRefunded, PaymentSummary, UserContact};
use micropay_sdk::cursor::Page;
use micropay_sdk::principal::require_admin_role;
use micropay_sdk::{AdminRole, ApiError, Context, Db, Response, Row};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::bindings::exports::micropay::platform::subscriber::Event;
use crate::bindings::micropay::platform::templates;
use crate::delivery;
use crate::domain::{self, Channel, Intent, Recipient};
use crate::sql;

/// The most due messages one scheduled delivery tries.
const DUE_PER_RUN: i64 = 100;

// ---- events ----

/// Handles a batch of events: the mirrors first (recipients, accounts' owners), then the
/// messages the other events warrant, inserted with one statement (an event handled again
/// makes none) and delivered.
pub fn handle_events(events: &[Event]) -> Result<(), String> {
    let db = Db::open().map_err(|err| err.message)?;
    let failed = |err: micropay_sdk::db::DbError| err.message;
    let mut contacts = BTreeMap::new();
    let mut owners = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    for event in events {
        match event.topic.as_str() {
            "user.contact_changed" => match serde_json::from_str::<UserContact>(&event.data) {
                Ok(contact) => {
                    contacts.insert(contact.user_id.clone(), serde_json::to_value(&contact).expect("serialises"));
                }
                Err(err) => malformed(event, &err),
            },
            "account.opened" => {
                let data: Json = serde_json::from_str(&event.data).unwrap_or(Json::Null);
                if let (Some(account_id), Some(user_id)) = (data["account_id"].as_str(), data["user_id"].as_str()) {
                    owners.push(json!({ "account_id": account_id, "user_id": user_id }));
                }
            }
            _ => match warranted(event) {
                Ok(found) => pending.extend(found),
                Err(err) => malformed(event, &err),
            },
        }
    }
    if !contacts.is_empty() {
        sql::upsert_recipients(&db, &Json::Array(contacts.into_values().collect())).map_err(failed)?;
    }
    if !owners.is_empty() {
        sql::insert_owners(&db, &Json::Array(owners)).map_err(failed)?;
    }
    let intents = resolve(&db, pending).map_err(failed)?;
    if intents.is_empty() {
        return Ok(());
    }
    let inserted = make(&db, &intents).map_err(failed)?;
    delivery::deliver(&db, &inserted).map_err(failed)?;
    Ok(())
}

/// An event the service cannot read is acknowledged, not retried: retrying would not help.
fn malformed(event: &Event, err: &serde_json::Error) {
    micropay_sdk::log_warn(&format!("event {} ({}) is malformed: {err}", event.id, event.topic));
}

/// A message an event warrants, for a user known directly or by an account.
struct Pending {
    intent: Intent,
    /// The account whose owner it is for, when the event names an account, not a user.
    account_id: Option<String>,
}

impl Pending {
    fn for_user(intent: Intent) -> Self {
        Self { intent, account_id: None }
    }

    fn for_account(account_id: &str, intent: Intent) -> Self {
        Self { intent, account_id: Some(account_id.to_string()) }
    }
}

/// The messages `event` warrants (`NOTIFICATIONS.md` lists them).
fn warranted(event: &Event) -> Result<Vec<Pending>, serde_json::Error> {
    let intent = |user_id: &str, template: &'static str, critical: bool, variables: Json| Intent {
        event_id: event.id.clone(),
        user_id: user_id.to_string(),
        template,
        critical,
        variables,
        secret_variables: None,
        to: None,
    };
    let when = micropay_sdk::time::rfc3339(event.time);
    Ok(match event.topic.as_str() {
        "user.code_issued" => {
            let issued: CodeIssued = serde_json::from_str(&event.data)?;
            let (template, channel) = match issued.purpose {
                CodePurpose::VerifyEmail | CodePurpose::ResetPassword => ("verification_code", Channel::Email),
                CodePurpose::VerifyPhone => ("phone_verification_code", Channel::Sms),
            };
            let purpose = serde_json::to_value(issued.purpose)?;
            let variables = json!({ "expires_at": issued.expires_at, "purpose": purpose });
            vec![Pending::for_user(Intent {
                secret_variables: Some(json!({ "code": issued.secret.code })),
                to: Some((channel, issued.destination)),
                ..intent(&issued.user_id, template, true, variables)
            })]
        }
        "user.password_changed" => {
            let data: Json = serde_json::from_str(&event.data)?;
            let revoked = data["metadata"]["sessions_revoked"].as_i64().unwrap_or(0);
            let variables = json!({ "changed_at": when, "sessions_revoked": revoked });
            vec![Pending::for_user(intent(&event.subject, "password_changed", true, variables))]
        }
        "user.new_device_login" => {
            let login: NewDeviceLogin = serde_json::from_str(&event.data)?;
            let variables = json!({
                "logged_in_at": login.logged_in_at, "user_agent": login.user_agent, "ip_address": login.ip_address,
            });
            vec![Pending::for_user(intent(&login.user_id, "new_device_login", true, variables))]
        }
        "account.frozen" => {
            let data: Json = serde_json::from_str(&event.data)?;
            let user_id = data["user_id"].as_str().unwrap_or_default();
            let variables = json!({ "account_id": event.subject });
            vec![Pending::for_user(intent(user_id, "account_frozen", true, variables))]
        }
        "payment.completed" => {
            let payment: PaymentSummary = serde_json::from_str(&event.data)?;
            if payment.refund_of.is_some() {
                return Ok(Vec::new()); // payment.refunded tells of it
            }
            let variables = payment_variables(&payment);
            vec![
                Pending::for_account(&payment.payer_account_id, intent("", "payment_sent", false, variables.clone())),
                Pending::for_account(&payment.payee_account_id, intent("", "payment_received", false, variables)),
            ]
        }
        "payment.requires_review" => {
            let payment: PaymentSummary = serde_json::from_str(&event.data)?;
            let variables = payment_variables(&payment);
            vec![Pending::for_account(&payment.payer_account_id, intent("", "payment_under_review", false, variables))]
        }
        "payment.failed" => {
            let payment: PaymentSummary = serde_json::from_str(&event.data)?;
            let mut variables = payment_variables(&payment);
            variables["reason"] = json!(payment.failure_reason);
            vec![Pending::for_account(&payment.payer_account_id, intent("", "payment_failed", false, variables))]
        }
        "payment.refunded" => {
            let refunded: PaymentRefunded = serde_json::from_str(&event.data)?;
            let mut variables = payment_variables(&refunded.payment);
            variables["refunded"] = json!(refunded.refund.amount);
            let payment = &refunded.payment;
            vec![
                Pending::for_account(
                    &payment.payer_account_id,
                    intent("", "payment_refunded", false, variables.clone()),
                ),
                Pending::for_account(&payment.payee_account_id, intent("", "payment_refunded", false, variables)),
            ]
        }
        // The policy subscribes to nothing else.
        _ => Vec::new(),
    })
}

fn payment_variables(payment: &PaymentSummary) -> Json {
    json!({
        "amount": payment.amount,
        "currency": payment.currency,
        "payment_id": payment.payment_id,
        "description": payment.description,
    })
}

/// The intents, each for its user: an account's owner looked up (one statement for the
/// batch); one the service knows no owner of (a system account) is dropped.
fn resolve(db: &Db, pending: Vec<Pending>) -> Result<Vec<Intent>, micropay_sdk::db::DbError> {
    let accounts: Vec<String> = pending.iter().filter_map(|p| p.account_id.clone()).collect();
    let owners: BTreeMap<String, String> = match accounts.is_empty() {
        true => BTreeMap::new(),
        false => sql::owners(db, &accounts)?.iter().map(|row| (row.text("account_id"), row.text("user_id"))).collect(),
    };
    Ok(pending
        .into_iter()
        .filter_map(|Pending { mut intent, account_id }| {
            if let Some(account_id) = account_id {
                intent.user_id = owners.get(&account_id)?.clone();
            }
            micropay_sdk::is_uuid(&intent.user_id).then_some(intent)
        })
        .collect())
}

/// Makes the messages of `intents` on their channels and inserts them; returns the new ones.
fn make(db: &Db, intents: &[Intent]) -> Result<Vec<Row>, micropay_sdk::db::DbError> {
    let templates: BTreeMap<(String, String), String> = sql::active_templates(db)?
        .iter()
        .map(|row| ((row.text("template_name"), row.text("channel")), row.text("component")))
        .collect();
    let mut users: Vec<String> = intents.iter().map(|intent| intent.user_id.clone()).collect();
    users.sort();
    users.dedup();
    let recipients: BTreeMap<String, Recipient> =
        sql::recipients(db, &users)?.iter().map(|row| (row.text("user_id"), recipient(row))).collect();
    let mut webhooks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in sql::active_endpoints(db, &users)? {
        webhooks.entry(row.text("user_id")).or_default().push(row.text("endpoint_id"));
    }
    let mut rows = Vec::new();
    for intent in intents {
        let recipient = recipients.get(&intent.user_id);
        let hooks = webhooks.get(&intent.user_id).map_or(&[][..], Vec::as_slice);
        let component = |channel: Channel| templates.get(&(intent.template.to_string(), channel.as_str().to_string()));
        let templated = |channel: Channel| component(channel).is_some();
        for (channel, destination) in domain::destinations(intent, recipient, hooks, templated) {
            rows.push(json!({
                "notification_id": domain::notification_id(
                    &intent.event_id,
                    &intent.user_id,
                    intent.template,
                    channel,
                    destination.as_deref(),
                ),
                "user_id": intent.user_id,
                "notification_type": intent.template,
                "channel": channel.as_str(),
                "event_id": intent.event_id,
                "template_name": intent.template,
                // A webhook is not rendered: its body is the message's JSON.
                "template_component": component(channel).map_or("none", String::as_str),
                "locale": recipient.map_or("en", |r| r.locale.as_str()),
                "destination": destination,
                "critical": intent.critical,
                "variables": intent.variables,
                "secret_variables": intent.secret_variables,
            }));
        }
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    sql::insert_notifications(db, &Json::Array(rows))
}

fn recipient(row: &Row) -> Recipient {
    Recipient {
        email: row.text("email"),
        phone_number: row.opt_text("phone_number"),
        email_enabled: row.bool("email_notifications_enabled"),
        sms_enabled: row.bool("sms_notifications_enabled"),
        push_enabled: row.bool("push_notifications_enabled"),
        locale: row.text("locale"),
    }
}

// ---- users: their in-app messages ----

/// A message as its user sees it.
fn inbox_json(row: &Row) -> Json {
    json!({
        "notification_id": row.text("notification_id"),
        "notification_type": row.text("notification_type"),
        "subject": row.opt_text("subject"),
        "message": row.opt_text("message"),
        "status": row.text("status"),
        "read_at": row.opt_rfc3339("read_at"),
        "created_at": row.rfc3339("created_at"),
    })
}

/// `GET /notifications?unread=&limit=&cursor=`: the caller's in-app messages, newest first.
pub fn list_mine(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let unread = flag(ctx, "unread")?;
    let filter = sql::Filter {
        user_id: Some(caller.user_id),
        channel: Some(Channel::InApp.as_str()),
        status: None,
        unread,
        page: Page::from_query(|name| ctx.query(name))?,
    };
    let mut rows = sql::list(ctx.db()?, &filter)?;
    let next_cursor = filter.page.cut(&mut rows, "notification_id");
    let shown: Vec<Json> = rows.iter().map(inbox_json).collect();
    Ok(Response::ok(&json!({ "notifications": shown, "next_cursor": next_cursor })))
}

/// `POST /notifications/{notification_id}/read`: marks one of the caller's in-app messages
/// read; anyone else's is 404.
pub fn mark_read(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let id = path_id(ctx, "notification_id")?;
    let row = sql::mark_read(ctx.db()?, &caller.user_id, &id)?.ok_or_else(|| no_notification(&id))?;
    Ok(Response::ok(&inbox_json(&row)))
}

// ---- users: their webhook endpoints ----

/// The most endpoints one user may register.
const MAX_ENDPOINTS: i64 = 5;

fn endpoint_json(row: &Row) -> Json {
    json!({
        "endpoint_id": row.text("endpoint_id"),
        "url": row.text("url"),
        "created_at": row.rfc3339("created_at"),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    url: String,
}

/// `POST /webhooks` `{url}`: registers an `http`/`https` URL to receive the caller's
/// notifications as webhooks, each signed with the secret this answer shows, once
/// (`MicroPay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`). At most
/// [`MAX_ENDPOINTS`]; the host posts only to public addresses.
pub fn create_endpoint(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let body: NewEndpoint = ctx.json()?;
    let url = body.url.trim();
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    let host_part = url.split("://").nth(1).unwrap_or_default();
    if !scheme_ok || url.len() > 2048 || host_part.is_empty() || url.chars().any(char::is_whitespace) {
        return Err(ApiError::validation("url: an http or https URL of at most 2048 characters"));
    }
    let db = ctx.db()?;
    if sql::count_endpoints(db, &caller.user_id)? >= MAX_ENDPOINTS {
        return Err(ApiError::conflict("too_many_endpoints", format!("at most {MAX_ENDPOINTS} webhook endpoints")));
    }
    let secret = format!("whsec_{}", hex::encode(micropay_sdk::random_bytes(24)));
    let row = sql::insert_endpoint(db, &caller.user_id, url, &secret)?;
    let mut shown = endpoint_json(&row);
    shown["secret"] = json!(secret);
    Ok(Response::created(&shown))
}

/// `GET /webhooks`: the caller's endpoints (never their secrets).
pub fn list_endpoints(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let rows = sql::endpoints_of(ctx.db()?, &caller.user_id)?;
    Ok(Response::ok(&json!({ "endpoints": rows.iter().map(endpoint_json).collect::<Vec<_>>() })))
}

/// `DELETE /webhooks/{endpoint_id}`: removes one of the caller's endpoints; anyone else's is
/// 404. Messages made for it and not yet delivered fail.
pub fn delete_endpoint(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let id = ctx.param("endpoint_id").to_string();
    let missing = || ApiError::not_found(format!("no webhook endpoint {id}"));
    if !micropay_sdk::is_uuid(&id) {
        return Err(missing());
    }
    match sql::deactivate_endpoint(ctx.db()?, &caller.user_id, &id)? {
        true => Ok(Response::no_content()),
        false => Err(missing()),
    }
}

// ---- ops ----

/// Refuses every admin role but ops and platform.
fn operators(ctx: &Context, action: &str) -> Result<(), ApiError> {
    require_admin_role(ctx.administrator()?, &[AdminRole::Ops, AdminRole::Platform], action)
}

/// A message as ops see it: where it went and what became of it, never a secret.
fn message_json(row: &Row) -> Json {
    json!({
        "notification_id": row.text("notification_id"),
        "user_id": row.text("user_id"),
        "notification_type": row.text("notification_type"),
        "channel": row.text("channel"),
        "destination": row.opt_text("destination"),
        "critical": row.bool("critical"),
        "subject": row.opt_text("subject"),
        "message": row.opt_text("message"),
        "status": row.text("status"),
        "failure_reason": row.opt_text("failure_reason"),
        "retry_count": row.int("retry_count"),
        "next_attempt_at": row.opt_rfc3339("next_attempt_at"),
        "template_name": row.text("template_name"),
        "template_component": row.text("template_component"),
        "template_version": row.opt_int("template_version"),
        "event_id": row.text("event_id"),
        "sent_at": row.opt_rfc3339("sent_at"),
        "delivered_at": row.opt_rfc3339("delivered_at"),
        "read_at": row.opt_rfc3339("read_at"),
        "created_at": row.rfc3339("created_at"),
    })
}

/// `GET /messages?user_id=&channel=&status=&limit=&cursor=`: every message, newest first.
pub fn list_messages(ctx: &mut Context) -> Result<Response, ApiError> {
    operators(ctx, "reading messages")?;
    let user_id = match ctx.query("user_id").filter(|id| !id.is_empty()) {
        Some(id) if micropay_sdk::is_uuid(&id) => Some(id),
        Some(_) => return Err(ApiError::bad_request("invalid_user_id", "user_id must be a UUID")),
        None => None,
    };
    let channel = match ctx.query("channel").filter(|channel| !channel.is_empty()) {
        Some(text) => Some(
            Channel::parse(&text)
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_channel", "channel is EMAIL, SMS, PUSH, IN_APP or WEBHOOK")
                })?
                .as_str(),
        ),
        None => None,
    };
    let status = match ctx.query("status").filter(|status| !status.is_empty()) {
        Some(status) if ["PENDING", "SENT", "DELIVERED", "FAILED"].contains(&status.as_str()) => Some(status),
        Some(_) => {
            return Err(ApiError::bad_request("invalid_status", "status is PENDING, SENT, DELIVERED or FAILED"));
        }
        None => None,
    };
    let filter =
        sql::Filter { user_id, channel, status, unread: false, page: Page::from_query(|name| ctx.query(name))? };
    let mut rows = sql::list(ctx.db()?, &filter)?;
    let next_cursor = filter.page.cut(&mut rows, "notification_id");
    let shown: Vec<Json> = rows.iter().map(message_json).collect();
    Ok(Response::ok(&json!({ "messages": shown, "next_cursor": next_cursor })))
}

/// `GET /messages/{notification_id}`.
pub fn get_message(ctx: &mut Context) -> Result<Response, ApiError> {
    operators(ctx, "reading messages")?;
    let id = path_id(ctx, "notification_id")?;
    let row = sql::find(ctx.db()?, &id)?.ok_or_else(|| no_notification(&id))?;
    Ok(Response::ok(&message_json(&row)))
}

/// `POST /internal/deliveries` (every second, from the host's schedule): tries the messages
/// whose next attempt is due.
pub fn deliver_due(ctx: &mut Context) -> Result<Response, ApiError> {
    operators(ctx, "delivering messages")?;
    let db = ctx.db()?;
    let due = sql::due(db, DUE_PER_RUN)?;
    let delivered = delivery::deliver(db, &due)?;
    Ok(Response::ok(&json!({ "tried": due.len(), "delivered": delivered })))
}

fn settings_json(row: &Row) -> Json {
    json!({
        "max_attempts": row.int("max_attempts"),
        "retry_base_ms": row.int("retry_base_ms"),
        "retry_max_ms": row.int("retry_max_ms"),
        "updated_at": row.rfc3339("updated_at"),
    })
}

/// `GET /settings`: how deliveries are retried.
pub fn get_settings(ctx: &mut Context) -> Result<Response, ApiError> {
    operators(ctx, "reading the delivery settings")?;
    Ok(Response::ok(&settings_json(&sql::settings(ctx.db()?)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsUpdate {
    max_attempts: Option<i64>,
    retry_base_ms: Option<i64>,
    retry_max_ms: Option<i64>,
}

/// `PATCH /settings` `{max_attempts?, retry_base_ms?, retry_max_ms?}`.
pub fn update_settings(ctx: &mut Context) -> Result<Response, ApiError> {
    operators(ctx, "changing the delivery settings")?;
    let update: SettingsUpdate = ctx.json()?;
    let within = |value: Option<i64>, field: &str, range: std::ops::RangeInclusive<i64>| match value {
        Some(value) if !range.contains(&value) => {
            Err(ApiError::validation(format!("{field}: {value} is outside {}..={}", range.start(), range.end())))
        }
        _ => Ok(()),
    };
    within(update.max_attempts, "max_attempts", 1..=50)?;
    within(update.retry_base_ms, "retry_base_ms", 10..=3_600_000)?;
    within(update.retry_max_ms, "retry_max_ms", 10..=86_400_000)?;
    let row = sql::update_settings(ctx.db()?, update.max_attempts, update.retry_base_ms, update.retry_max_ms)?;
    Ok(Response::ok(&settings_json(&row)))
}

fn template_json(row: &Row) -> Json {
    json!({
        "template_id": row.text("template_id"),
        "template_name": row.text("template_name"),
        "template_type": row.text("template_type"),
        "channel": row.text("channel"),
        "component": row.text("component"),
        "variables": row.json("variables"),
        "is_active": row.bool("is_active"),
        "created_at": row.rfc3339("created_at"),
        "updated_at": row.rfc3339("updated_at"),
    })
}

/// `GET /templates`: each template name and channel, the component that renders it.
pub fn list_templates(ctx: &mut Context) -> Result<Response, ApiError> {
    operators(ctx, "reading templates")?;
    let rows = sql::templates(ctx.db()?)?;
    Ok(Response::ok(&json!({ "templates": rows.iter().map(template_json).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateUpdate {
    component: Option<String>,
    is_active: Option<bool>,
}

/// `PATCH /templates/{template_name}/{channel}` `{component?, is_active?}`: which template
/// component renders it, and whether it is sent at all.
pub fn update_template(ctx: &mut Context) -> Result<Response, ApiError> {
    operators(ctx, "changing templates")?;
    let update: TemplateUpdate = ctx.json()?;
    if let Some(component) = &update.component
        && (component.is_empty()
            || component.len() > 32
            || !component.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
    {
        return Err(ApiError::validation("component: a component name (a-z, 0-9, _; at most 32)"));
    }
    let (name, channel) = (ctx.param("template_name").to_string(), ctx.param("channel").to_string());
    let row = sql::update_template(ctx.db()?, &name, &channel, update.component.as_deref(), update.is_active)?
        .ok_or_else(|| ApiError::not_found(format!("no template {name} on {channel}")))?;
    Ok(Response::ok(&template_json(&row)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Preview {
    #[serde(default = "email")]
    channel: String,
    #[serde(default = "english")]
    locale: String,
    variables: Json,
}

fn email() -> String {
    Channel::Email.as_str().into()
}

fn english() -> String {
    "en".into()
}

/// `POST /templates/{template_name}/preview` `{channel?, locale?, variables}`: renders the
/// template with sample variables as the next message would be, and answers the rendering
/// with the version that made it. Nothing is sent or written.
pub fn preview_template(ctx: &mut Context) -> Result<Response, ApiError> {
    operators(ctx, "previewing templates")?;
    let preview: Preview = ctx.json()?;
    if !preview.variables.is_object() {
        return Err(ApiError::validation("variables: one JSON object"));
    }
    let name = ctx.param("template_name").to_string();
    let template = sql::template(ctx.db()?, &name, &preview.channel)?
        .ok_or_else(|| ApiError::not_found(format!("no template {name} on {}", preview.channel)))?;
    let component = template.text("component");
    let key = micropay_sdk::now_micros().to_string();
    let rendering = templates::render(&component, &name, &preview.locale, &preview.variables.to_string(), &key)
        .map_err(|reason| ApiError::new(422, "render_failed", reason))?;
    let rendered = rendering.rendered;
    Ok(Response::ok(&json!({
        "template_name": name,
        "channel": preview.channel,
        "component": component,
        "version": rendering.version,
        "fell_back_from": rendering.fell_back_from,
        "subject": rendered.subject,
        "text": rendered.text,
        "html": rendered.html,
    })))
}

// ---- shared ----

fn flag(ctx: &Context, name: &str) -> Result<bool, ApiError> {
    match ctx.query(name).as_deref() {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::bad_request(&format!("invalid_{name}"), format!("{name} is true or false"))),
    }
}

fn path_id(ctx: &Context, name: &str) -> Result<String, ApiError> {
    let id = ctx.param(name).to_string();
    match micropay_sdk::is_uuid(&id) {
        true => Ok(id),
        false => Err(no_notification(&id)),
    }
}

fn no_notification(id: &str) -> ApiError {
    ApiError::not_found(format!("no notification {id}"))
}
