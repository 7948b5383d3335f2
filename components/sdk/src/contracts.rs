//! The typed contracts between services: the body and answer of each call one service makes
//! to another's `/internal/...` endpoint, and the payload of each event one publishes for
//! another, as both sides read and write them. `components/PAYMENTS.md` and
//! `components/LEDGER.md` say what each one means.

use serde::{Deserialize, Serialize};

/// One leg of a posting to be: an entry on one account. Amounts are decimal text, as every
/// amount crossing a service boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leg {
    pub account_id: String,
    /// `DEBIT` or `CREDIT`.
    pub entry_type: String,
    pub amount: String,
    pub currency: String,
}

/// `transaction POST /internal/authorizations` (from the payment service): authorize the
/// posting's accounts and limits and hold its debits now, to be recorded later under
/// `transaction_id`. Also the body of `POST /internal/authorizations/release` and the payload
/// of event `payment.releasing` (a payment cancelled), which give back what the authorization
/// took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRequest {
    /// The id the posting will be recorded under (a payment's own id).
    pub transaction_id: String,
    pub legs: Vec<Leg>,
    /// Whether the debits count toward the payer's transfer limits.
    pub count_toward_limits: bool,
}

/// An account an authorization named, as the account service described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedAccount {
    pub account_id: String,
    /// The owner; the nil UUID for a system account.
    pub user_id: String,
    pub currency: String,
    /// A system account (funding, fees): never held, never limited.
    pub system: bool,
}

/// The answer of `POST /internal/authorizations`: the accounts, authorized and held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub accounts: Vec<AuthorizedAccount>,
}

/// The answer of `POST /internal/authorizations/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// How many holds were released (none when the authorization held nothing or was
    /// released already).
    pub holds_released: u64,
}

/// A leg of a posting to record, with what the authorization said of its account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostingLeg {
    #[serde(flatten)]
    pub leg: Leg,
    pub system: bool,
}

/// Event `payment.processing` (payment → transaction): record the posting of an authorized
/// payment or refund, under the payment's id as its transaction id. Published once the payment
/// may no longer be cancelled; published again by the payment service's sweeper while the
/// posting is missing (recording it is idempotent: one posting per payment id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentPosting {
    pub payment_id: String,
    pub legs: Vec<PostingLeg>,
    pub description: Option<String>,
    /// The user who initiated it; none for an administrator's refund.
    pub initiated_by: Option<String>,
}

/// `payment GET /internal/payments/{payment_id}/posting` (from the transaction service, asked
/// by the balance and account sweepers about a posting that does not exist): whether a
/// payment of that id will still have it recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostingOutlook {
    /// The payment exists and is authorized (held, in review, or processing): its posting will
    /// be recorded, or its authorization given back by the payment service itself.
    Coming,
    /// No payment of that id exists, or it ended without a posting (failed, cancelled): what
    /// was authorized for it may be given back.
    Never,
}

/// The answer of `GET /internal/payments/{payment_id}/posting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostingOutlookAnswer {
    pub posting: PostingOutlook,
}

/// Event `balance.transaction_applied` (balance → transaction, payment): every entry of the
/// transaction is in the balances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionApplied {
    pub transaction_id: String,
}

/// `fraud POST /internal/assess` (from the payment service): score a payment about to be
/// authorized. The fraud service adds what it knows itself (the accounts' age, the payer's
/// recent payments, ...) and records the assessment under `payment_id`: asking twice for one
/// payment answers the first assessment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssessmentRequest {
    pub payment_id: String,
    pub payer_user_id: String,
    pub payer_account_id: String,
    pub payee_account_id: String,
    /// Decimal text, as every amount crossing a service boundary.
    pub amount: String,
    pub currency: String,
}

/// How risky an assessed payment is, from the thresholds the risk team sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
    Critical,
}

/// What the fraud service asks the payment service to do with an assessed payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Recommendation {
    /// Go on.
    Approve,
    /// Hold the funds and wait for an analyst (`REQUIRES_REVIEW`).
    Review,
    /// Refuse: the payment fails with `fraud_declined`, nothing held.
    Decline,
}

/// The answer of `POST /internal/assess`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    pub assessment_id: String,
    /// 0 to 100, two decimal places, as decimal text.
    pub risk_score: String,
    pub risk_level: RiskLevel,
    pub recommendation: Recommendation,
    /// The set of rule versions that decided (a digest; the assessment lists them).
    pub model_version: String,
}

/// `payment POST /internal/payments/statuses` (from the fraud service, for a backtest): the
/// statuses of these payments, as they are now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentStatusesRequest {
    /// At most [`MAX_PAYMENT_STATUSES`] ids.
    pub payment_ids: Vec<String>,
}

/// The most payments one `POST /internal/payments/statuses` names.
pub const MAX_PAYMENT_STATUSES: usize = 10_000;

/// The answer of `POST /internal/payments/statuses`: each known payment's status
/// (`COMPLETED`, `FAILED`, `REFUNDED`, ... as `PAYMENTS.md` names them), by id (lower case);
/// an id no payment has is left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentStatuses {
    pub statuses: std::collections::BTreeMap<String, String>,
}

/// Event `user.contact_changed` (user → notification): how to reach a user and what they
/// agreed to receive, as it is now. Published on sign-up and whenever the email, the phone
/// number or a notification preference changes; the last one of a user is the truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserContact {
    pub user_id: String,
    pub email: String,
    pub email_verified: bool,
    pub phone_number: Option<String>,
    pub phone_verified: bool,
    pub email_notifications_enabled: bool,
    pub sms_notifications_enabled: bool,
    pub push_notifications_enabled: bool,
}

/// What a one-time code is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CodePurpose {
    /// Proves control of the email address (`POST /verifications/email`).
    VerifyEmail,
    /// Proves control of the phone number (`POST /me/phone/verify`).
    VerifyPhone,
    /// Sets a new password (`POST /password-resets/confirm`).
    ResetPassword,
}

/// The secret part of an event: a payload's `secret` field. The audit service stores the
/// event with it replaced by `"[redacted]"`; only the notification service reads it, to put
/// it in the one message meant for the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeSecret {
    pub code: String,
}

/// Event `user.code_issued` (user → notification): a one-time code to send to `destination`
/// (the email address for `VERIFY_EMAIL` and `RESET_PASSWORD`, the phone number for
/// `VERIFY_PHONE`). The code is in `secret`, never anywhere else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeIssued {
    pub user_id: String,
    pub purpose: CodePurpose,
    pub destination: String,
    /// When the code stops working (RFC 3339).
    pub expires_at: String,
    pub secret: CodeSecret,
}

/// Event `user.new_device_login` (user → notification): the user logged in from a device they
/// never used before (not their first one), so that they learn of it if it was not them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDeviceLogin {
    pub user_id: String,
    /// RFC 3339.
    pub logged_in_at: String,
    /// As the client sent it: untrusted text.
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
}

/// The field of an event payload that holds a secret (see [`CodeSecret`]).
pub const SECRET_FIELD: &str = "secret";

/// What the notification service reads of a payment event (`payment.completed`,
/// `payment.failed`; `payment.refunded` carries two, `payment` and `refund`): a part of the
/// payment as the payment service shows it (`PAYMENTS.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSummary {
    pub payment_id: String,
    pub payer_account_id: String,
    pub payee_account_id: String,
    /// Decimal text.
    pub amount: String,
    pub currency: String,
    pub description: Option<String>,
    pub status: String,
    pub failure_reason: Option<String>,
    /// The payment a refund gives back, for a refund.
    pub refund_of: Option<String>,
}

/// Event `payment.refunded`: the refunded payment and the refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment: PaymentSummary,
    pub refund: PaymentSummary,
}
