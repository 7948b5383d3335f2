//! The notification service's rules, pure: which events warrant which messages, on which
//! channels, and what a delivery's outcome makes of a message.

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// A channel a message goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Channel {
    Email,
    Sms,
    Push,
    /// A row the user reads in the app: delivered when written.
    InApp,
    /// A signed POST to a URL the user registered.
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 5] = [Channel::Email, Channel::Sms, Channel::Push, Channel::InApp, Channel::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "EMAIL",
            Channel::Sms => "SMS",
            Channel::Push => "PUSH",
            Channel::InApp => "IN_APP",
            Channel::Webhook => "WEBHOOK",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|channel| channel.as_str() == text)
    }
}

/// How to reach a user and what they agreed to receive (mirrored from `user.contact_changed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub email: String,
    pub phone_number: Option<String>,
    pub email_enabled: bool,
    pub sms_enabled: bool,
    pub push_enabled: bool,
    pub locale: String,
}

/// A message an event warrants for one user, before its channels are chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub event_id: String,
    pub user_id: String,
    /// The template's name, also the notification's type.
    pub template: &'static str,
    /// A security message: it goes out whatever the user's preferences.
    pub critical: bool,
    pub variables: Json,
    /// Variables that must not outlive the message's delivery (a one-time code).
    pub secret_variables: Option<Json>,
    /// The one channel and address it must go to, when the event says (a code goes where it
    /// was asked for); otherwise the recipient's channels.
    pub to: Option<(Channel, String)>,
}

/// The channels and addresses `intent` goes to: its own when it names one; otherwise every
/// channel it has an active template on that the recipient can be reached on and agreed to
/// (a critical message ignores the agreement, never the address), and each webhook endpoint
/// the user registered (by its id: registering one is the agreement). In-app needs no address.
pub fn destinations(
    intent: &Intent,
    recipient: Option<&Recipient>,
    webhooks: &[String],
    templated: impl Fn(Channel) -> bool,
) -> Vec<(Channel, Option<String>)> {
    if let Some((channel, address)) = &intent.to {
        return match templated(*channel) {
            true => vec![(*channel, Some(address.clone()))],
            false => Vec::new(),
        };
    }
    let critical = intent.critical;
    let mut destinations: Vec<(Channel, Option<String>)> = Channel::ALL
        .into_iter()
        .filter(|channel| templated(*channel))
        .filter_map(|channel| match (channel, recipient) {
            (Channel::InApp, _) => Some((channel, None)),
            // Each registered endpoint, below.
            (Channel::Webhook, _) => None,
            (_, None) => None,
            (Channel::Email, Some(r)) => (critical || r.email_enabled).then(|| (channel, Some(r.email.clone()))),
            (Channel::Sms, Some(r)) => {
                r.phone_number.clone().filter(|_| critical || r.sms_enabled).map(|phone| (channel, Some(phone)))
            }
            // Push goes to the user's devices, which the provider knows by user id.
            (Channel::Push, Some(r)) => (critical || r.push_enabled).then(|| (channel, Some(intent.user_id.clone()))),
        })
        .collect();
    destinations.extend(webhooks.iter().map(|endpoint| (Channel::Webhook, Some(endpoint.clone()))));
    destinations
}

/// The id of the message `intent` makes on `channel` to `destination`: the same event, user,
/// template, channel and destination always make the same id, so an event handled twice makes
/// one message (and each of a user's webhook endpoints its own).
pub fn notification_id(
    event_id: &str,
    user_id: &str,
    template: &str,
    channel: Channel,
    destination: Option<&str>,
) -> String {
    let to = destination.unwrap_or_default();
    let digest = Sha256::digest(format!("{event_id}/{user_id}/{template}/{}/{to}", channel.as_str()));
    let hex = hex::encode(&digest[..16]);
    // A version-8 (custom) UUID, RFC 9562.
    let variant = (u8::from_str_radix(&hex[16..17], 16).unwrap_or(0) & 0x3) | 0x8;
    format!("{}-{}-8{}-{:x}{}-{}", &hex[..8], &hex[8..12], &hex[13..16], variant, &hex[17..20], &hex[20..32])
}

/// How deliveries are retried (`notification_settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: i64,
    pub base_ms: i64,
    pub max_ms: i64,
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failed attempt: the base, doubling, at most the max.
    pub fn backoff_ms(&self, attempts: i64) -> i64 {
        let doublings = (attempts - 1).clamp(0, 40) as u32;
        self.base_ms.saturating_mul(1_i64 << doublings.min(40)).min(self.max_ms)
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The channel took it.
    Sent,
    /// The receiver confirmed it (in-app: written).
    Delivered,
    /// Refused for good.
    Rejected(String),
    /// Not sent now (the server down, the template failing): try again later.
    Unavailable(String),
    /// Not tried (its channel found down by another message of the batch, or the batch's time
    /// spent): it waits as after its last attempt, which this one does not count as.
    NotTried(String),
}

/// A message's state after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub status: &'static str,
    pub retry_count: i64,
    /// When to try again (ms from now), while `PENDING`.
    pub retry_in_ms: Option<i64>,
    pub failure_reason: Option<String>,
}

/// What `attempt` makes of a message tried `retry_count` times before.
pub fn after(attempt: &Attempt, retry_count: i64, policy: &RetryPolicy) -> After {
    match attempt {
        Attempt::Sent => After { status: "SENT", retry_count, retry_in_ms: None, failure_reason: None },
        Attempt::Delivered => After { status: "DELIVERED", retry_count, retry_in_ms: None, failure_reason: None },
        Attempt::Rejected(reason) => {
            After { status: "FAILED", retry_count, retry_in_ms: None, failure_reason: Some(reason.clone()) }
        }
        Attempt::NotTried(reason) => After {
            status: "PENDING",
            retry_count,
            retry_in_ms: Some(policy.backoff_ms(retry_count.max(1))),
            failure_reason: Some(reason.clone()),
        },
        Attempt::Unavailable(reason) => {
            let attempts = retry_count + 1;
            if attempts >= policy.max_attempts {
                let reason = format!("gave up after {attempts} attempts: {reason}");
                After { status: "FAILED", retry_count: attempts, retry_in_ms: None, failure_reason: Some(reason) }
            } else {
                After {
                    status: "PENDING",
                    retry_count: attempts,
                    retry_in_ms: Some(policy.backoff_ms(attempts)),
                    failure_reason: Some(reason.clone()),
                }
            }
        }
    }
}

/// What replaces the text of a message that held a secret, once it is sent or failed.
pub const REDACTED: &str = "[redacted: this message held a one-time code]";

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(critical: bool) -> Intent {
        Intent {
            event_id: "e".into(),
            user_id: "u".into(),
            template: "payment_sent",
            critical,
            variables: Json::Null,
            secret_variables: None,
            to: None,
        }
    }

    fn recipient(email: bool, sms: bool, push: bool) -> Recipient {
        Recipient {
            email: "a@example.com".into(),
            phone_number: Some("+15550001".into()),
            email_enabled: email,
            sms_enabled: sms,
            push_enabled: push,
            locale: "en".into(),
        }
    }

    fn channels(intent: &Intent, recipient: Option<&Recipient>) -> Vec<Channel> {
        destinations(intent, recipient, &[], |_| true).into_iter().map(|(channel, _)| channel).collect()
    }

    const SENT_ON_ALL: [Channel; 4] = [Channel::Email, Channel::Sms, Channel::Push, Channel::InApp];

    #[test]
    fn opted_out_channels_are_skipped_unless_the_message_is_critical() {
        let everything = recipient(true, true, true);
        assert_eq!(channels(&intent(false), Some(&everything)), SENT_ON_ALL.to_vec());
        let nothing = recipient(false, false, false);
        assert_eq!(channels(&intent(false), Some(&nothing)), vec![Channel::InApp]);
        assert_eq!(channels(&intent(true), Some(&nothing)), SENT_ON_ALL.to_vec());
        // No address, no message on that channel, critical or not.
        let no_phone = Recipient { phone_number: None, ..nothing };
        assert_eq!(channels(&intent(true), Some(&no_phone)), vec![Channel::Email, Channel::Push, Channel::InApp]);
        assert_eq!(channels(&intent(true), None), vec![Channel::InApp]);
    }

    #[test]
    fn a_message_with_its_own_address_goes_there_only_if_it_has_a_template() {
        let code = Intent { to: Some((Channel::Email, "b@example.com".into())), ..intent(true) };
        let off = recipient(false, false, false);
        let hooks = ["endpoint".to_string()];
        let to = destinations(&code, Some(&off), &hooks, |_| true);
        assert_eq!(to, vec![(Channel::Email, Some("b@example.com".into()))], "a code never goes to a webhook");
        assert!(destinations(&code, Some(&off), &hooks, |channel| channel != Channel::Email).is_empty());
    }

    #[test]
    fn every_registered_webhook_gets_the_message() {
        let hooks = ["e1".to_string(), "e2".to_string()];
        let to = destinations(&intent(false), None, &hooks, |_| true);
        assert_eq!(
            to,
            vec![(Channel::InApp, None), (Channel::Webhook, Some("e1".into())), (Channel::Webhook, Some("e2".into())),]
        );
    }

    #[test]
    fn ids_are_uuids_and_stable() {
        let id = notification_id("e1", "u1", "payment_sent", Channel::Email, None);
        assert!(micropay_sdk::is_uuid(&id), "{id}");
        assert_eq!(id, notification_id("e1", "u1", "payment_sent", Channel::Email, None));
        assert_ne!(id, notification_id("e1", "u1", "payment_sent", Channel::Push, None));
        assert_ne!(id, notification_id("e2", "u1", "payment_sent", Channel::Email, None));
        let hook = |endpoint| notification_id("e1", "u1", "payment_sent", Channel::Webhook, Some(endpoint));
        assert_ne!(hook("endpoint-1"), hook("endpoint-2"), "two endpoints, two messages");
    }

    #[test]
    fn an_unavailable_channel_is_retried_with_backoff_then_given_up() {
        let policy = RetryPolicy { max_attempts: 3, base_ms: 100, max_ms: 150 };
        let down = Attempt::Unavailable("down".into());
        let first = after(&down, 0, &policy);
        assert_eq!((first.status, first.retry_count, first.retry_in_ms), ("PENDING", 1, Some(100)));
        let second = after(&down, 1, &policy);
        assert_eq!((second.status, second.retry_count, second.retry_in_ms), ("PENDING", 2, Some(150)));
        let third = after(&down, 2, &policy);
        assert_eq!((third.status, third.retry_count), ("FAILED", 3));
        assert!(third.failure_reason.unwrap().contains("after 3 attempts"));
        assert_eq!(after(&Attempt::Rejected("bad".into()), 1, &policy).status, "FAILED");
        let waiting = after(&Attempt::NotTried("later".into()), 2, &policy);
        assert_eq!((waiting.status, waiting.retry_count, waiting.retry_in_ms), ("PENDING", 2, Some(150)));
        assert_eq!(after(&Attempt::Sent, 2, &policy).status, "SENT");
    }
}
