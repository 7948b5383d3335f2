//! The notification benchmark: how many notifications per second go from an event on the bus
//! to an SMTP server's acceptance, against the same server's rate for a plain SMTP client in
//! the same run; and how long each template takes to render, against a bare invocation.
//!
//! The SMTP server is a real one: aiosmtpd's `Sink` handler (Debian's `python3-aiosmtpd`, which
//! `cargo xtask bench` installs), which accepts every message and keeps none. The events are
//! `user.code_issued` as the user service publishes them (one email each, critical, with a
//! secret), appended to the bus directly so that the run measures the notification service:
//! its batch, the rendering through the template component, the send, and the commit of each
//! message's `SENT`. A message counts when its row says `SENT`: the SMTP server accepted it.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Summary, percentile};
use crate::bus::Envelope;
use crate::capabilities::services::CallService;
use crate::capabilities::templates::TemplateRequest;
use crate::config::Config;
use crate::platform::Platform;
use crate::runtime::state::InvocationContext;

/// Events appended to the bus per append.
const PER_APPEND: usize = 100;

/// Concurrent senders of the plain client's run: as many as the bus's partitions, the most
/// batches the notification service works on at once.
const PLAIN_SENDERS: usize = crate::bus::PARTITIONS as usize;

/// How long the messages may take before the run is declared stuck.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Renders of each template, one after another.
const RENDERS: usize = 1_000;

/// The figures of the run.
pub struct NotificationRun {
    pub messages: usize,
    /// From the first event appended to the last message accepted by the SMTP server.
    pub elapsed: Duration,
    /// Event appended → SMTP server accepted, per message: p50 and p99.
    pub lag: (Duration, Duration),
    /// The plain client's run: messages, elapsed.
    pub plain: (usize, Duration),
    /// Each template's rendering (template, channel's variant), one after another.
    pub renders: Vec<(&'static str, Summary)>,
    /// The probe's `/ping`, instantiate + call + drop, in the same run.
    pub invocation: Summary,
}

impl NotificationRun {
    fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn plain_per_second(&self) -> f64 {
        self.plain.0 as f64 / self.plain.1.as_secs_f64()
    }
}

impl std::fmt::Display for NotificationRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  event → SMTP accepted: {:.0} notifications/s ({} in {:.2} s), lag p50 {:.0} ms, p99 {:.0} ms",
            self.per_second(),
            self.messages,
            self.elapsed.as_secs_f64(),
            self.lag.0.as_secs_f64() * 1e3,
            self.lag.1.as_secs_f64() * 1e3,
        )?;
        writeln!(
            f,
            "  a plain SMTP client ({PLAIN_SENDERS} senders, the same server): {:.0} emails/s ({} in {:.2} s)",
            self.plain_per_second(),
            self.plain.0,
            self.plain.1.as_secs_f64(),
        )?;
        writeln!(f, "  notifications / plain client: {:.2}", self.per_second() / self.plain_per_second())?;
        writeln!(f, "  a bare invocation (the probe's /ping): {}", self.invocation)?;
        write!(f, "  render time per template ({RENDERS} each, one after another):")?;
        for (template, summary) in &self.renders {
            write!(
                f,
                "\n    {template:<24} {summary}; p50 / bare invocation {:.2}",
                summary.p50 / self.invocation.p50
            )?;
        }
        Ok(())
    }
}

/// aiosmtpd on a port of its own, accepting everything; stopped when dropped.
struct SmtpSink {
    _server: tokio::process::Child,
    port: u16,
}

impl SmtpSink {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let server = tokio::process::Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting aiosmtpd (Debian's python3-aiosmtpd; cargo xtask bench installs it)")?;
        let sink = Self { _server: server, port };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "aiosmtpd did not listen on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(sink)
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }
}

/// Runs the part on databases of its own, the platform sending through a fresh SMTP sink.
pub async fn run(config: &Config, messages: usize) -> anyhow::Result<NotificationRun> {
    let sink = SmtpSink::start().await?;
    let plain = plain_client(&sink.url(), messages).await?;

    let mut config = config.clone();
    config.database_prefix = format!("{}notifications_", config.database_prefix);
    config.smtp_url = Some(sink.url());
    let platform = Platform::start(&config).await?;
    let (messages, elapsed, lag) = deliveries(&platform, messages).await?;
    let renders = renders(&platform).await?;
    let mut samples = Vec::with_capacity(RENDERS);
    super::invocations(&platform, RENDERS, &mut Vec::new()).await?;
    super::invocations(&platform, RENDERS, &mut samples).await?;
    platform.shutdown().await;
    Ok(NotificationRun { messages, elapsed, lag, plain, renders, invocation: Summary::of(&mut samples) })
}

/// `count` emails of a verification code's size through lettre, as the host sends them (one
/// transport from the URL, text and HTML), from [`PLAIN_SENDERS`] tasks: the server's rate.
async fn plain_client(url: &str, count: usize) -> anyhow::Result<(usize, Duration)> {
    let smtp = Arc::new(AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?.build());
    let from: Mailbox = "MicroPay <no-reply@micropay.local>".parse()?;
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..PLAIN_SENDERS {
        let (smtp, from) = (smtp.clone(), from.clone());
        let share = count / PLAIN_SENDERS + usize::from(sender < count % PLAIN_SENDERS);
        senders.spawn(async move {
            for index in 0..share {
                let email = Message::builder()
                    .from(from.clone())
                    .to(format!("plain-{sender}-{index}@example.com").parse()?)
                    .subject("Your MicroPay verification code")
                    .message_id(Some(format!("<{}@micropay>", uuid::Uuid::new_v4())))
                    .multipart(MultiPart::alternative_plain_html(
                        "Your verification code is 123456. It works until 2026-12-02T00:15:00Z.".to_string(),
                        "<p>Your verification code is <strong>123456</strong>.</p>".to_string(),
                    ))?;
                smtp.send(email).await?;
            }
            anyhow::Ok(share)
        });
    }
    let mut sent = 0;
    while let Some(share) = senders.join_next().await {
        sent += share??;
    }
    Ok((sent, started.elapsed()))
}

/// Appends `count` `user.code_issued` events and waits until every message they make is
/// `SENT`: the count, the elapsed time, and the lag's p50 and p99.
async fn deliveries(platform: &Platform, count: usize) -> anyhow::Result<(usize, Duration, (Duration, Duration))> {
    let notification = platform
        .bus
        .subscriptions()
        .iter()
        .find(|subscription| &*subscription.name == "notification")
        .context("the notification bench needs the notification service (policies/)")?
        .pool
        .clone();
    let since: chrono::NaiveDateTime =
        sqlx::query_scalar("SELECT clock_timestamp()::timestamp").fetch_one(&notification).await?;
    let expires_at = (chrono::Utc::now() + chrono::Duration::minutes(15)).to_rfc3339();

    let started = Instant::now();
    // Each event's offset from `since`, by id, for its lag.
    let mut appended_at = std::collections::HashMap::with_capacity(count);
    for first in (0..count).step_by(PER_APPEND) {
        let mut events = Vec::with_capacity(PER_APPEND);
        for index in first..(first + PER_APPEND).min(count) {
            let user_id = uuid::Uuid::new_v4().to_string();
            let data = json!({
                "user_id": user_id, "purpose": "VERIFY_EMAIL", "destination": format!("bench-{index}@example.com"),
                "expires_at": expires_at, "secret": {"code": "123456"},
            });
            events.push(Envelope {
                id: uuid::Uuid::new_v4(),
                topic: "user.code_issued".into(),
                source: "user".into(),
                subject: user_id,
                time: chrono::Utc::now(),
                data: RawValue::from_string(data.to_string())?,
                trace_id: String::new(),
            });
        }
        let offset = started.elapsed();
        platform.bus.backend.publish(&events).await?;
        appended_at.extend(events.iter().map(|event| (event.id, offset)));
    }

    let ids: Vec<uuid::Uuid> = appended_at.keys().copied().collect();
    loop {
        let (sent, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'SENT'), count(*) FILTER (WHERE status = 'FAILED') \
             FROM notification_schema.notifications WHERE event_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(&notification)
        .await?;
        anyhow::ensure!(failed == 0, "{failed} notifications FAILED: is the SMTP sink up?");
        if sent as usize >= count {
            break;
        }
        anyhow::ensure!(started.elapsed() < TIMEOUT, "{sent} of {count} notifications sent in {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let rows: Vec<(uuid::Uuid, f64)> = sqlx::query_as(
        "SELECT event_id, extract(epoch FROM sent_at - $1)::float8 FROM notification_schema.notifications \
         WHERE status = 'SENT' AND event_id = ANY($2)",
    )
    .bind(since)
    .bind(&ids)
    .fetch_all(&notification)
    .await?;
    let mut lags: Vec<Duration> = rows
        .iter()
        .filter_map(|(event, sent)| {
            let appended = appended_at.get(event)?;
            Some(Duration::from_secs_f64(sent.max(0.0)).saturating_sub(*appended))
        })
        .collect();
    lags.sort();
    let last = rows.iter().map(|(_, sent)| *sent).fold(0.0, f64::max);
    Ok((rows.len(), Duration::from_secs_f64(last), (percentile(&lags, 0.50), percentile(&lags, 0.99))))
}

/// Each template of the platform's template component with the variables the notification
/// service gives it (`components/NOTIFICATIONS.md`), rendered [`RENDERS`] times as the service
/// asks for it.
fn samples() -> Vec<(&'static str, Value)> {
    let payment = json!({
        "amount": "125.5000", "currency": "EUR", "payment_id": uuid::Uuid::new_v4(), "description": "Dinner",
    });
    let with = |extra: Value| {
        let mut variables = payment.clone();
        variables.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
        variables
    };
    vec![
        (
            "verification_code",
            json!({"code": "123456", "expires_at": "2026-12-02T00:15:00Z", "purpose": "VERIFY_EMAIL"}),
        ),
        ("phone_verification_code", json!({"code": "123456", "expires_at": "2026-12-02T00:15:00Z"})),
        ("password_changed", json!({"changed_at": "2026-12-02T00:00:00Z", "sessions_revoked": 2})),
        ("account_frozen", json!({"account_id": uuid::Uuid::new_v4()})),
        ("payment_sent", payment.clone()),
        ("payment_received", payment.clone()),
        ("payment_failed", with(json!({"reason": "insufficient_funds"}))),
        ("payment_refunded", with(json!({"refunded": "25.0000"}))),
    ]
}

async fn renders(platform: &Platform) -> anyhow::Result<Vec<(&'static str, Summary)>> {
    let mut results = Vec::new();
    for (template, variables) in samples() {
        let mut samples = Vec::with_capacity(RENDERS);
        for _ in 0..RENDERS {
            let request =
                TemplateRequest { name: template.into(), locale: "en".into(), variables: variables.to_string() };
            let context = InvocationContext {
                depth: 1,
                calling_service: Some("notification".into()),
                ..InvocationContext::new(None, "bench")
            };
            let one = Instant::now();
            let rendering = platform
                .dispatcher
                .clone()
                .render_template("templates".into(), request, uuid::Uuid::new_v4().to_string(), context)
                .await
                .map_err(|err| anyhow::anyhow!("rendering {template}: {err}"))?;
            samples.push(one.elapsed());
            anyhow::ensure!(!rendering.rendered.text.is_empty(), "{template} rendered no text");
        }
        results.push((template, Summary::of(&mut samples)));
    }
    Ok(results)
}
