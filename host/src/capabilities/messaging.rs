//! `messaging`: messages leaving the platform, through the host's channel adapters: email over
//! SMTP (`--smtp-url`), signed webhooks, SMS and push through a provider's HTTP endpoint
//! (`--sms-url`, `--push-url`). A channel without a server configured keeps its messages in the
//! host's outbox (`micropay_platform.outbox_messages`), which ops read with `micropay
//! notifications outbox`: a development host delivers nothing, and logs none of it either.
//!
//! Invariants kept here:
//! - a component sends only on the channels its policy grants (`[messaging] channels`): a
//!   component importing `messaging` under a policy that grants none is refused at load
//!   (`registry::check_imports`), and every call is checked again here;
//! - a webhook goes only to an `http`/`https` URL whose every address is public (no loopback,
//!   private, link-local, shared, multicast or unspecified address, IPv4 or IPv6): a literal
//!   address is checked before sending, a name by the webhook client's own resolver as it
//!   connects (so a second resolution cannot swap the address checked), and it follows no
//!   redirect; a host started with
//!   `--webhooks-to-private-addresses` (development, tests) lifts the address check only;
//! - what a message says is never logged: the log names the component, the channel and the
//!   message's id, and the reason of a failure (which never quotes the message);
//! - every send is bounded in time ([`SEND_TIMEOUT`]) and in size ([`MAX_BODY_BYTES`]); a
//!   failure is `unavailable` when trying again may help and `rejected` when it will not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::{Mailbox, MultiPart, header};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;
use sqlx::PgPool;

use crate::policy::Channel;
use crate::runtime::bindings::notification_service::micropay::platform::messaging::Host;
use crate::runtime::bindings::{Email, Receipt, SendError, ShortMessage, Webhook};
use crate::runtime::state::InvocationState;

/// The longest any adapter waits for its server.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest body (text, HTML, webhook JSON) a message may carry.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The header carrying a webhook's signature.
pub const SIGNATURE_HEADER: &str = "micropay-signature";

/// The header carrying a webhook delivery's id.
pub const WEBHOOK_ID_HEADER: &str = "micropay-webhook-id";

/// Where the adapters send, from the host's configuration.
#[derive(Debug, Clone, Default)]
pub struct ChannelSettings {
    /// `smtp://host:port` (plain), `smtp://host?tls=required` (STARTTLS), `smtps://host` (TLS),
    /// with `user:password@` for a server that authenticates; none keeps emails in the outbox.
    pub smtp_url: Option<String>,
    /// The sender of every email.
    pub email_from: String,
    /// The SMS provider's endpoint (it receives `{"id", "to", "text"}` as JSON); none keeps
    /// SMS in the outbox.
    pub sms_url: Option<String>,
    /// The push provider's endpoint (`{"id", "to", "title", "text"}`); none keeps them.
    pub push_url: Option<String>,
    /// Development and tests only: webhooks may go to loopback and private addresses.
    pub webhooks_to_private_addresses: bool,
}

/// The channel adapters, shared by every invocation of the host.
pub struct Channels {
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    sms_url: Option<reqwest::Url>,
    push_url: Option<reqwest::Url>,
    /// For the providers' endpoints, which ops configured.
    providers: reqwest::Client,
    /// For webhooks: resolves names to public addresses only (unless private ones are allowed).
    webhooks: reqwest::Client,
    webhooks_to_private_addresses: bool,
    /// The platform database (the platform role's pool), for the outbox.
    outbox: PgPool,
}

impl Channels {
    /// The adapters the settings describe, creating the outbox table if it is missing.
    pub async fn open(settings: &ChannelSettings, platform: PgPool) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let smtp = match &settings.smtp_url {
            Some(url) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .context("MICROPAY_SMTP_URL is not an SMTP URL")?
                    .timeout(Some(SEND_TIMEOUT))
                    .build(),
            ),
            None => None,
        };
        let from = settings.email_from.parse().context("MICROPAY_EMAIL_FROM is not an email address")?;
        let endpoint = |url: &Option<String>, name: &str| {
            url.as_deref()
                .map(|url| reqwest::Url::parse(url).with_context(|| format!("{name} is not a URL")))
                .transpose()
        };
        let providers = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the providers' HTTP client")?;
        let webhooks = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PublicOnly { private_allowed: settings.webhooks_to_private_addresses }))
            .build()
            .context("building the webhooks' HTTP client")?;
        sqlx::query(OUTBOX_TABLE).execute(&platform).await.context("creating the message outbox")?;
        Ok(Self {
            smtp,
            from,
            sms_url: endpoint(&settings.sms_url, "MICROPAY_SMS_URL")?,
            push_url: endpoint(&settings.push_url, "MICROPAY_PUSH_URL")?,
            providers,
            webhooks,
            webhooks_to_private_addresses: settings.webhooks_to_private_addresses,
            outbox: platform,
        })
    }

    /// Sends an email, or keeps it when no SMTP server is configured.
    pub async fn send_email(&self, sender: &str, message: Email) -> Result<Receipt, SendError> {
        let id = message_id(&message.id)?;
        bounded(&[&message.text, message.html.as_deref().unwrap_or_default()])?;
        let to: Mailbox =
            message.to.parse().map_err(|_| SendError::Rejected("the recipient is not an email address".into()))?;
        let Some(smtp) = &self.smtp else {
            let kept = Kept { channel: Channel::Email, to: &message.to, subject: Some(&message.subject) };
            return self.keep(sender, id, kept, &message.text, message.html.as_deref()).await;
        };
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.subject)
            .message_id(Some(format!("<{id}@micropay>")));
        let email = match message.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(message.text, html)),
            None => builder.header(header::ContentType::TEXT_PLAIN).body(message.text),
        }
        .map_err(|err| SendError::Rejected(format!("the email cannot be built: {err}")))?;
        match smtp.send(email).await {
            Ok(_) => Ok(Receipt::Sent),
            Err(err) if err.is_permanent() => Err(SendError::Rejected(format!("the SMTP server refused it: {err}"))),
            Err(err) => Err(SendError::Unavailable(format!("the SMTP server did not take it: {err}"))),
        }
    }

    /// Posts a signed webhook to a public address.
    pub async fn post_webhook(&self, hook: Webhook) -> Result<Receipt, SendError> {
        let id = message_id(&hook.id)?;
        bounded(&[&hook.body])?;
        if serde_json::from_str::<serde::de::IgnoredAny>(&hook.body).is_err() {
            return Err(SendError::Rejected("the body is not one JSON document".into()));
        }
        let url = webhook_url(&hook.url, self.webhooks_to_private_addresses)?;
        let timestamp = chrono::Utc::now().timestamp();
        let answer = self
            .webhooks
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(WEBHOOK_ID_HEADER, id.to_string())
            .header(SIGNATURE_HEADER, signature_header(&hook.secret, timestamp, &hook.body))
            .body(hook.body)
            .send()
            .await;
        if let Err(err) = &answer
            && let Some(refused) = not_public(err)
        {
            return Err(SendError::Rejected(refused.to_string()));
        }
        http_receipt(answer, Receipt::Delivered, "the receiver")
    }

    /// Sends an SMS or a push through its provider, or keeps it when none is configured.
    pub async fn send_short(
        &self,
        sender: &str,
        channel: Channel,
        message: ShortMessage,
    ) -> Result<Receipt, SendError> {
        let id = message_id(&message.id)?;
        bounded(&[&message.text, message.title.as_deref().unwrap_or_default()])?;
        if message.to.is_empty() || message.to.len() > 255 {
            return Err(SendError::Rejected("the recipient is empty or longer than 255 characters".into()));
        }
        let endpoint = if channel == Channel::Sms { &self.sms_url } else { &self.push_url };
        let Some(endpoint) = endpoint else {
            let kept = Kept { channel, to: &message.to, subject: message.title.as_deref() };
            return self.keep(sender, id, kept, &message.text, None).await;
        };
        let body = serde_json::json!({
            "id": id, "channel": channel.name(), "to": message.to, "title": message.title, "text": message.text,
        });
        let answer = self.providers.post(endpoint.clone()).json(&body).send().await;
        http_receipt(answer, Receipt::Sent, "the provider")
    }

    /// Keeps a message in the outbox (once per id: sending it again keeps it once).
    async fn keep(
        &self,
        sender: &str,
        id: uuid::Uuid,
        kept: Kept<'_>,
        text: &str,
        html: Option<&str>,
    ) -> Result<Receipt, SendError> {
        sqlx::query(
            "INSERT INTO micropay_platform.outbox_messages \
             (message_id, sender, channel, recipient, subject, text_body, html_body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(id)
        .bind(sender)
        .bind(kept.channel.name())
        .bind(kept.to)
        .bind(kept.subject)
        .bind(text)
        .bind(html)
        .execute(&self.outbox)
        .await
        .map_err(|err| SendError::Unavailable(format!("the outbox could not keep it: {err}")))?;
        Ok(Receipt::Kept)
    }

    /// The messages kept in the outbox, newest first.
    pub async fn outbox(&self, limit: i64, recipient: Option<&str>) -> anyhow::Result<Vec<KeptMessage>> {
        Ok(sqlx::query_as(
            "SELECT message_id, sender, channel, recipient, subject, text_body, html_body, kept_at \
             FROM micropay_platform.outbox_messages WHERE $2::text IS NULL OR recipient = $2 \
             ORDER BY kept_at DESC, message_id LIMIT $1",
        )
        .bind(limit)
        .bind(recipient)
        .fetch_all(&self.outbox)
        .await?)
    }
}

/// A message as the outbox keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct KeptMessage {
    pub message_id: uuid::Uuid,
    /// The component that sent it.
    pub sender: String,
    pub channel: String,
    pub recipient: String,
    pub subject: Option<String>,
    pub text_body: String,
    pub html_body: Option<String>,
    pub kept_at: chrono::DateTime<chrono::Utc>,
}

/// The outbox of messages no server was configured for.
const OUTBOX_TABLE: &str = "CREATE TABLE IF NOT EXISTS micropay_platform.outbox_messages (
    message_id UUID PRIMARY KEY,
    sender TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT,
    text_body TEXT NOT NULL,
    html_body TEXT,
    kept_at TIMESTAMPTZ NOT NULL DEFAULT pg_catalog.now()
)";

/// Where a kept message was going.
struct Kept<'a> {
    channel: Channel,
    to: &'a str,
    subject: Option<&'a str>,
}

/// The webhooks' resolver: a name resolves only when every address it has is public.
struct PublicOnly {
    private_allowed: bool,
}

/// A webhook's host resolved to an address that is not public.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a public address")]
struct NotPublic(IpAddr);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (host, private_allowed) = (name.as_str().to_string(), self.private_allowed);
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !private_allowed && let Some(address) = addresses.iter().find(|address| !is_public(address.ip())) {
                return Err(Box::new(NotPublic(address.ip())) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The resolver's refusal in a request's error, if that is why it failed.
fn not_public(err: &reqwest::Error) -> Option<&NotPublic> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<NotPublic>() {
            return Some(refused);
        }
        // Wrapped in an I/O error on the way, whose `source` skips what it wraps.
        let wrapped = err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        if let Some(refused) = wrapped.and_then(|inner| inner.downcast_ref::<NotPublic>()) {
            return Some(refused);
        }
        source = err.source();
    }
    None
}

/// `MicroPay-Signature: t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature_header(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn message_id(id: &str) -> Result<uuid::Uuid, SendError> {
    uuid::Uuid::parse_str(id).map_err(|_| SendError::Rejected("the message id is not a UUID".into()))
}

fn bounded(parts: &[&str]) -> Result<(), SendError> {
    match parts.iter().map(|part| part.len()).sum::<usize>() > MAX_BODY_BYTES {
        true => Err(SendError::Rejected(format!("the message is over {MAX_BODY_BYTES} bytes"))),
        false => Ok(()),
    }
}

/// A 2xx is `success`; 408, 429 and 5xx, or no answer, may pass later; any other status won't.
fn http_receipt(
    answer: Result<reqwest::Response, reqwest::Error>,
    success: Receipt,
    who: &str,
) -> Result<Receipt, SendError> {
    let answer =
        answer.map_err(|err| SendError::Unavailable(format!("{who} did not answer: {}", err.without_url())))?;
    let status = answer.status();
    match status.as_u16() {
        200..=299 => Ok(success),
        408 | 429 | 500..=599 => Err(SendError::Unavailable(format!("{who} answered {status}"))),
        _ => Err(SendError::Rejected(format!("{who} answered {status}"))),
    }
}

/// The URL a webhook may be posted to: http or https, to a host. A literal address must be
/// public (unless `private_allowed`), however the URL spells it (`127.1`, `0x7f.0.0.1` and
/// `[::ffff:127.0.0.1]` are parsed to the address they mean); a name is checked by the
/// client's resolver (`PublicOnly`) as it connects, so that a second resolution cannot swap
/// the address.
fn webhook_url(url: &str, private_allowed: bool) -> Result<reqwest::Url, SendError> {
    let url = reqwest::Url::parse(url).map_err(|_| SendError::Rejected("the URL is malformed".into()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SendError::Rejected("a webhook URL is http or https".into()));
    }
    // The parser writes a literal address in its canonical form, IPv6 in brackets.
    let host = url.host_str().ok_or_else(|| SendError::Rejected("the URL names no host".into()))?;
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>()
        && !private_allowed
        && !is_public(ip)
    {
        return Err(SendError::Rejected(format!("{ip} is not a public address")));
    }
    Ok(url)
}

/// Whether an address is one the public internet routes: not loopback, private, link-local,
/// shared (CGNAT), documentation, benchmarking, multicast, broadcast or unspecified; an IPv6
/// address mapping or embedding an IPv4 one is judged as that.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| v6.to_ipv4().filter(|_| v6.segments()[..6] == [0; 6])) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8)
}

impl Host for InvocationState {
    async fn send_email(&mut self, message: Email) -> wasmtime::Result<Result<Receipt, SendError>> {
        let Some(channels) = self.granted(Channel::Email, &message.id) else {
            return Ok(Err(not_granted(Channel::Email)));
        };
        let id = message.id.clone();
        let sent = channels.send_email(&self.component.name, message).await;
        Ok(self.outcome(Channel::Email, &id, sent))
    }

    async fn post_webhook(&mut self, hook: Webhook) -> wasmtime::Result<Result<Receipt, SendError>> {
        let Some(channels) = self.granted(Channel::Webhook, &hook.id) else {
            return Ok(Err(not_granted(Channel::Webhook)));
        };
        let id = hook.id.clone();
        let sent = channels.post_webhook(hook).await;
        Ok(self.outcome(Channel::Webhook, &id, sent))
    }

    async fn send_sms(&mut self, message: ShortMessage) -> wasmtime::Result<Result<Receipt, SendError>> {
        self.short(Channel::Sms, message).await
    }

    async fn send_push(&mut self, message: ShortMessage) -> wasmtime::Result<Result<Receipt, SendError>> {
        self.short(Channel::Push, message).await
    }
}

impl InvocationState {
    /// The adapters, when the policy grants `channel`; logs and counts a refusal.
    fn granted(&self, channel: Channel, id: &str) -> Option<Arc<Channels>> {
        if self.component.policy.sends(channel) {
            return Some(self.channels.clone());
        }
        let component = &*self.component.name;
        tracing::warn!(component, channel = channel.name(), message_id = id, "message refused: channel not granted");
        self.metrics.record_message(component, channel.name(), "refused");
        None
    }

    async fn short(&mut self, channel: Channel, message: ShortMessage) -> wasmtime::Result<Result<Receipt, SendError>> {
        let Some(channels) = self.granted(channel, &message.id) else {
            return Ok(Err(not_granted(channel)));
        };
        let id = message.id.clone();
        let sent = channels.send_short(&self.component.name, channel, message).await;
        Ok(self.outcome(channel, &id, sent))
    }

    /// Counts and logs what became of a message: its id and the reason, never its content.
    fn outcome(&self, channel: Channel, id: &str, sent: Result<Receipt, SendError>) -> Result<Receipt, SendError> {
        let component = &*self.component.name;
        let result = match &sent {
            Ok(Receipt::Sent) => "sent",
            Ok(Receipt::Delivered) => "delivered",
            Ok(Receipt::Kept) => "kept",
            Err(SendError::Rejected(reason)) => {
                tracing::warn!(component, channel = channel.name(), message_id = id, "message rejected: {reason}");
                "rejected"
            }
            Err(SendError::Unavailable(reason)) => {
                tracing::warn!(component, channel = channel.name(), message_id = id, "message not sent: {reason}");
                "unavailable"
            }
            Err(SendError::NotGranted(_)) => "refused",
        };
        self.metrics.record_message(component, channel.name(), result);
        sent
    }
}

fn not_granted(channel: Channel) -> SendError {
    SendError::NotGranted(format!("the policy grants no {} channel ([messaging] channels)", channel.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_url_reaches_no_private_address_however_spelt() {
        for hostile in [
            "http://127.0.0.1/hook",
            "http://127.1/hook",
            "http://0x7f.0.0.1/hook",
            "http://2130706433/hook",
            "http://0177.0.0.1/hook",
            "http://[::1]:8080/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://[::ffff:a9fe:a9fe]/latest/meta-data",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0:5432/",
            "https://10.0.0.1/hook",
            "file:///etc/passwd",
            "gopher://example.com/",
            "ftp://example.com/hook",
            "http://",
            "not a url",
        ] {
            assert!(matches!(webhook_url(hostile, false), Err(SendError::Rejected(_))), "{hostile} was let through");
        }
        assert!(webhook_url("https://hooks.example.com/micropay", false).is_ok());
        assert!(webhook_url("http://93.184.216.34/hook", false).is_ok());
        // Development: the operator's flag lets a local receiver in; the scheme still counts.
        assert!(webhook_url("http://127.0.0.1:9/hook", true).is_ok());
        assert!(webhook_url("file:///etc/passwd", true).is_err());
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "198.18.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_signature_covers_the_timestamp_and_the_body() {
        let signed = signature_header("whsec", 1_700_000_000, "{\"a\":1}");
        assert!(signed.starts_with("t=1700000000,v1="));
        assert_eq!(signed, signature_header("whsec", 1_700_000_000, "{\"a\":1}"));
        assert_ne!(signed, signature_header("whsec", 1_700_000_001, "{\"a\":1}"));
        assert_ne!(signed, signature_header("whsec", 1_700_000_000, "{\"a\":2}"));
        assert_ne!(signed, signature_header("other", 1_700_000_000, "{\"a\":1}"));
    }
}
