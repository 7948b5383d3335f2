//! The messages, in MiniJinja: one entry per template and locale. `components/NOTIFICATIONS.md`
//! says which event sends each one, on which channels, with which variables.

/// The locale a template falls back to when it has none of the one asked for.
pub const DEFAULT_LOCALE: &str = "en";

/// One template in one locale.
pub struct Message {
    pub name: &'static str,
    pub locale: &'static str,
    /// The variables it needs (each must be passed; `null` is a value).
    pub variables: &'static [&'static str],
    pub subject: Option<&'static str>,
    pub text: &'static str,
    pub html: Option<&'static str>,
}

/// The template `name` in `locale`: the exact locale, else its language (`fr` for `fr-CA`),
/// else [`DEFAULT_LOCALE`].
pub fn find(name: &str, locale: &str) -> Option<&'static Message> {
    let language = locale.split(['-', '_']).next().unwrap_or(locale);
    [locale, language, DEFAULT_LOCALE].into_iter().find_map(|wanted| {
        ALL.iter().find(|message| message.name == name && message.locale.eq_ignore_ascii_case(wanted))
    })
}

const PAYMENT: &[&str] = &["amount", "currency", "payment_id", "description"];

pub const ALL: &[Message] = &[
    Message {
        name: "verification_code",
        locale: "en",
        variables: &["code", "expires_at", "purpose"],
        subject: Some("Your MicroPay code"),
        text: "Your MicroPay code is {{ code }}.\n\n\
               {% if purpose == 'RESET_PASSWORD' %}Use it to choose a new password.{% else %}Use it to verify your email address.{% endif %} \
               It works once, until {{ expires_at }}.\n\n\
               If you did not ask for it, you can ignore this message: nothing changes without the code.\n",
        html: Some(
            "<p>Your MicroPay code is <strong>{{ code }}</strong>.</p>\
             <p>{% if purpose == 'RESET_PASSWORD' %}Use it to choose a new password.{% else %}Use it to verify your email address.{% endif %} \
             It works once, until {{ expires_at }}.</p>\
             <p>If you did not ask for it, you can ignore this message: nothing changes without the code.</p>",
        ),
    },
    Message {
        name: "verification_code",
        locale: "fr",
        variables: &["code", "expires_at", "purpose"],
        subject: Some("Votre code MicroPay"),
        text: "Votre code MicroPay est {{ code }}.\n\n\
               Il ne sert qu'une fois, jusqu'au {{ expires_at }}.\n\n\
               Si vous ne l'avez pas demandé, ignorez ce message : rien ne change sans le code.\n",
        html: Some(
            "<p>Votre code MicroPay est <strong>{{ code }}</strong>.</p>\
             <p>Il ne sert qu'une fois, jusqu'au {{ expires_at }}.</p>\
             <p>Si vous ne l'avez pas demandé, ignorez ce message : rien ne change sans le code.</p>",
        ),
    },
    Message {
        name: "phone_verification_code",
        locale: "en",
        variables: &["code", "expires_at"],
        subject: None,
        text: "MicroPay code: {{ code }}. It works once, until {{ expires_at }}. Never share it.",
        html: None,
    },
    Message {
        name: "password_changed",
        locale: "en",
        variables: &["changed_at", "sessions_revoked"],
        subject: Some("Your MicroPay password was changed"),
        text: "Your MicroPay password was changed at {{ changed_at }}{% if sessions_revoked %}, and your other \
               {{ sessions_revoked }} session(s) were signed out{% endif %}.\n\n\
               If this was not you, contact support at once.\n",
        html: Some(
            "<p>Your MicroPay password was changed at {{ changed_at }}{% if sessions_revoked %}, and your other \
             {{ sessions_revoked }} session(s) were signed out{% endif %}.</p>\
             <p><strong>If this was not you, contact support at once.</strong></p>",
        ),
    },
    Message {
        name: "new_device_login",
        locale: "en",
        variables: &["logged_in_at", "user_agent", "ip_address"],
        subject: Some("A new device logged in to your MicroPay account"),
        text: "Your MicroPay account was logged in to from a device it had not seen before, at {{ logged_in_at }}\
               {% if user_agent %} ({{ user_agent }}){% endif %}{% if ip_address %} from {{ ip_address }}{% endif %}.\n\n\
               If this was you, there is nothing to do. If it was not, change your password at once: \
               that signs every other session out.\n",
        html: Some(
            "<p>Your MicroPay account was logged in to from a device it had not seen before, at {{ logged_in_at }}\
             {% if user_agent %} ({{ user_agent }}){% endif %}{% if ip_address %} from {{ ip_address }}{% endif %}.</p>\
             <p>If this was you, there is nothing to do. <strong>If it was not, change your password at once</strong>: \
             that signs every other session out.</p>",
        ),
    },
    Message {
        name: "account_frozen",
        locale: "en",
        variables: &["account_id"],
        subject: Some("Your MicroPay account was frozen"),
        text: "Your account {{ account_id }} was frozen: no payment can leave or reach it until it is unfrozen. \
               Contact support to learn why.\n",
        html: Some(
            "<p>Your account {{ account_id }} was frozen: no payment can leave or reach it until it is unfrozen.</p>\
             <p>Contact support to learn why.</p>",
        ),
    },
    Message {
        name: "payment_sent",
        locale: "en",
        variables: PAYMENT,
        subject: Some("You sent {{ amount }} {{ currency }}"),
        text: "Your payment of {{ amount }} {{ currency }}{% if description %} ({{ description }}){% endif %} \
               is complete.\n\nPayment {{ payment_id }}\n",
        html: Some(
            "<p>Your payment of <strong>{{ amount }} {{ currency }}</strong>{% if description %} ({{ description }}){% endif %} \
             is complete.</p><p>Payment {{ payment_id }}</p>",
        ),
    },
    Message {
        name: "payment_received",
        locale: "en",
        variables: PAYMENT,
        subject: Some("You received {{ amount }} {{ currency }}"),
        text: "You received {{ amount }} {{ currency }}{% if description %} ({{ description }}){% endif %}.\n\n\
               Payment {{ payment_id }}\n",
        html: Some(
            "<p>You received <strong>{{ amount }} {{ currency }}</strong>{% if description %} ({{ description }}){% endif %}.</p>\
             <p>Payment {{ payment_id }}</p>",
        ),
    },
    Message {
        name: "payment_under_review",
        locale: "en",
        variables: PAYMENT,
        subject: Some("Your payment of {{ amount }} {{ currency }} is being reviewed"),
        text: "Your payment of {{ amount }} {{ currency }}{% if description %} ({{ description }}){% endif %} \
               is being reviewed before it goes through. The amount is held on your account meanwhile; \
               you will hear from us when it completes, or when it is declined and the amount released.\n\n\
               Payment {{ payment_id }}\n",
        html: Some(
            "<p>Your payment of <strong>{{ amount }} {{ currency }}</strong>{% if description %} ({{ description }}){% endif %} \
             is being reviewed before it goes through. The amount is held on your account meanwhile; \
             you will hear from us when it completes, or when it is declined and the amount released.</p>\
             <p>Payment {{ payment_id }}</p>",
        ),
    },
    Message {
        name: "payment_failed",
        locale: "en",
        variables: &["amount", "currency", "payment_id", "description", "reason"],
        subject: Some("Your payment of {{ amount }} {{ currency }} failed"),
        text: "Your payment of {{ amount }} {{ currency }}{% if description %} ({{ description }}){% endif %} failed\
               {% if reason %}: {{ reason }}{% endif %}. Nothing was taken from your account.\n\n\
               Payment {{ payment_id }}\n",
        html: Some(
            "<p>Your payment of <strong>{{ amount }} {{ currency }}</strong>{% if description %} ({{ description }}){% endif %} \
             failed{% if reason %}: {{ reason }}{% endif %}. Nothing was taken from your account.</p>\
             <p>Payment {{ payment_id }}</p>",
        ),
    },
    Message {
        name: "payment_refunded",
        locale: "en",
        variables: &["amount", "currency", "payment_id", "description", "refunded"],
        subject: Some("{{ refunded }} {{ currency }} of a payment was refunded"),
        text: "{{ refunded }} {{ currency }} of the payment of {{ amount }} {{ currency }}\
               {% if description %} ({{ description }}){% endif %} was refunded.\n\nPayment {{ payment_id }}\n",
        html: Some(
            "<p><strong>{{ refunded }} {{ currency }}</strong> of the payment of {{ amount }} {{ currency }}\
             {% if description %} ({{ description }}){% endif %} was refunded.</p><p>Payment {{ payment_id }}</p>",
        ),
    },
];
