//! The payment service's rules, with no I/O: what a valid payment or refund request is, the
//! lifecycle's transitions, who may do what, and the listing's query.

use std::collections::BTreeMap;

use micropay_sdk::contracts::{AuthorizationRequest, Leg, PaymentPosting, PostingLeg, Recommendation};
use micropay_sdk::cursor::Page;
use micropay_sdk::money::{self, Amount, Currency, Decimal};
use micropay_sdk::{AdminRole, ApiError, fields};
use serde::Deserialize;

/// How long an idempotency key and its answer are kept: at least a day, as clients are told.
pub const KEY_RETENTION_HOURS: i64 = 24;

/// How long a `PROCESSING` payment waits for its posting before the sweeper asks for it
/// again: far beyond what delivering `payment.processing` takes.
pub const POSTING_RETRY_AFTER_SECONDS: i64 = 60;

/// How long a manually captured payment may stay uncaptured, funds held, before the sweeper
/// cancels it.
pub const CAPTURE_EXPIRY_SECONDS: i64 = 7 * 24 * 3600;

/// The most payments one sweep handles of each kind.
pub const SWEEP_BATCH: i64 = 50;

/// The most metadata pairs of a payment, and their sizes.
const MAX_METADATA: usize = 20;
const MAX_METADATA_KEY: usize = 100;
const MAX_METADATA_VALUE: usize = 500;
/// The ledger's `transactions.description` holds 255 characters: the posting carries it.
const MAX_DESCRIPTION: usize = 255;
const MAX_REFERENCE: usize = 255;
const MAX_REASON: usize = 255;

/// A payment's status. See `components/PAYMENTS.md` for the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Authorized and held; waiting for a capture (or, with a fraud service, a review).
    Initiated,
    /// Held for an analyst's review.
    RequiresReview,
    /// Its posting is asked for; not cancellable any more.
    Processing,
    Completed,
    Failed,
    Cancelled,
    Refunded,
    PartiallyRefunded,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Initiated,
        Status::RequiresReview,
        Status::Processing,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::Refunded,
        Status::PartiallyRefunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Initiated => "INITIATED",
            Status::RequiresReview => "REQUIRES_REVIEW",
            Status::Processing => "PROCESSING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
            Status::Refunded => "REFUNDED",
            Status::PartiallyRefunded => "PARTIALLY_REFUNDED",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Whether the payment is cancellable: its funds are held and its posting not asked for.
    pub fn is_cancellable(self) -> bool {
        matches!(self, Status::Initiated | Status::RequiresReview)
    }

    /// Whether its posting will still be recorded (or its hold given back by this service).
    pub fn posting_coming(self) -> bool {
        matches!(self, Status::Initiated | Status::RequiresReview | Status::Processing)
    }

    /// Whether money may be refunded from it.
    pub fn is_refundable(self) -> bool {
        matches!(self, Status::Completed | Status::PartiallyRefunded)
    }
}

/// A payment or a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentType {
    Transfer,
    Refund,
}

impl PaymentType {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentType::Transfer => "TRANSFER",
            PaymentType::Refund => "REFUND",
        }
    }

    /// A payment's debit counts toward the payer's transfer limits; a refund's does not
    /// (giving money back is never limited).
    pub fn counts_toward_limits(self) -> bool {
        self == PaymentType::Transfer
    }
}

/// When a payment is processed: at once, or when its payer captures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMethod {
    Automatic,
    Manual,
}

impl CaptureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Automatic => "AUTOMATIC",
            CaptureMethod::Manual => "MANUAL",
        }
    }

    /// The stored name back (`capture_method` is kept to these by a CHECK).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "AUTOMATIC" => Some(CaptureMethod::Automatic),
            "MANUAL" => Some(CaptureMethod::Manual),
            _ => None,
        }
    }

    /// The status a payment has once authorized (and, when it was held for review, approved).
    pub fn authorized_status(self) -> Status {
        match self {
            CaptureMethod::Automatic => Status::Processing,
            CaptureMethod::Manual => Status::Initiated,
        }
    }
}

/// What the fraud service said of a payment before it was authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screening {
    /// Go on: the fraud service approved, or none is loaded (refunds are not screened).
    Clear,
    /// Authorize and hold, then wait for an analyst (`REQUIRES_REVIEW`).
    Review,
    /// Refuse: `FAILED` with `fraud_declined`, nothing authorized or held.
    Decline,
}

impl Screening {
    pub fn of(recommendation: Option<Recommendation>) -> Self {
        match recommendation {
            None | Some(Recommendation::Approve) => Screening::Clear,
            Some(Recommendation::Review) => Screening::Review,
            Some(Recommendation::Decline) => Screening::Decline,
        }
    }

    /// The status of a payment authorized after this screening.
    pub fn authorized_status(self, capture_method: CaptureMethod) -> Status {
        match self {
            Screening::Review => Status::RequiresReview,
            Screening::Clear | Screening::Decline => capture_method.authorized_status(),
        }
    }
}

/// `POST /payments/{payment_id}/review`: an analyst's decision on a payment held for review.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    pub decision: ReviewDecision,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewDecision {
    /// The payment goes on as if it had been approved at once.
    Approve,
    /// It fails with `fraud_declined`; its holds and limits are given back.
    Decline,
}

/// `POST /payments` as sent. Every field is text so that a rule it breaks is a 422 naming it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    pub payer_account_id: String,
    pub payee_account_id: Option<String>,
    pub payee_account_number: Option<String>,
    pub amount: String,
    pub currency: String,
    pub description: Option<String>,
    pub reference: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub capture_method: Option<CaptureMethod>,
}

/// Who is paid: an account id, or an account number to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payee {
    Account(String),
    Number(String),
}

/// A valid payment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    pub payer_account_id: String,
    pub payee: Payee,
    pub amount: Amount,
    pub currency: Currency,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub capture_method: CaptureMethod,
}

/// Checks a payment request: 422 `validation_failed` naming the field that breaks a rule.
pub fn new_payment(request: PaymentRequest) -> Result<NewPayment, ApiError> {
    let payer_account_id = fields::uuid("payer_account_id", &request.payer_account_id)?;
    let payee = match (request.payee_account_id, request.payee_account_number) {
        (Some(id), None) => Payee::Account(fields::uuid("payee_account_id", &id)?),
        (None, Some(number)) if !number.trim().is_empty() => Payee::Number(number.trim().to_string()),
        _ => {
            return Err(ApiError::validation(
                "name the payee with exactly one of payee_account_id and payee_account_number",
            ));
        }
    };
    if payee == Payee::Account(payer_account_id.clone()) {
        return Err(ApiError::validation("payee_account_id: a payment needs two different accounts"));
    }
    let amount = Amount::parse(&request.amount).map_err(|reason| money::invalid("amount", reason))?;
    let currency = Currency::parse(&request.currency).map_err(|reason| money::invalid("currency", reason))?;
    let description = fields::text("description", request.description.as_deref(), MAX_DESCRIPTION)?;
    let reference = fields::text("reference", request.reference.as_deref(), MAX_REFERENCE)?;
    if request.metadata.len() > MAX_METADATA {
        return Err(ApiError::validation(format!("metadata: at most {MAX_METADATA} pairs")));
    }
    for (key, value) in &request.metadata {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY || key.chars().any(char::is_control) {
            return Err(ApiError::validation(format!(
                "metadata: keys are 1 to {MAX_METADATA_KEY} characters, none a control character"
            )));
        }
        if value.chars().count() > MAX_METADATA_VALUE || value.chars().any(char::is_control) {
            return Err(ApiError::validation(format!(
                "metadata.{key}: at most {MAX_METADATA_VALUE} characters, none a control character"
            )));
        }
    }
    Ok(NewPayment {
        payer_account_id,
        payee,
        amount,
        currency,
        description,
        reference,
        metadata: request.metadata,
        capture_method: request.capture_method.unwrap_or(CaptureMethod::Automatic),
    })
}

/// `POST /payments/{id}/refunds` as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// What to refund; the whole remaining amount when absent.
    pub amount: Option<String>,
    pub reason: Option<String>,
}

/// The amount a refund takes from a payment of `amount` of which `refunded` is taken already:
/// the requested one, at most what remains (422 `refund_exceeds_payment`), or all that
/// remains. 409 `not_refundable` when nothing remains.
pub fn refund_amount(requested: Option<&str>, amount: Decimal, refunded: Decimal) -> Result<Amount, ApiError> {
    let remaining = amount - refunded;
    if remaining <= Decimal::ZERO {
        return Err(ApiError::conflict("not_refundable", "the payment is refunded in full"));
    }
    let Some(requested) = requested else {
        return Amount::new(remaining).map_err(|reason| ApiError::internal(&reason));
    };
    let requested = Amount::parse(requested).map_err(|reason| money::invalid("amount", reason))?;
    if requested.value() > remaining {
        return Err(ApiError::new(
            422,
            "refund_exceeds_payment",
            format!("amount: at most {} remains to be refunded", money::format(remaining)),
        ));
    }
    Ok(requested)
}

/// The reason of a refund, when given: trimmed, 1 to 255 characters.
pub fn refund_reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    fields::text("reason", reason.as_deref(), MAX_REASON)
}

/// The legs of a payment of `amount` from `payer` to `payee`.
pub fn legs(payer: &str, payee: &str, amount: &str, currency: &str) -> Vec<Leg> {
    let leg = |account_id: &str, entry_type: &str| Leg {
        account_id: account_id.to_string(),
        entry_type: entry_type.to_string(),
        amount: amount.to_string(),
        currency: currency.to_string(),
    };
    vec![leg(payer, "DEBIT"), leg(payee, "CREDIT")]
}

/// The authorization a payment (or refund) asks of the transaction service, under its own id.
pub fn authorization(payment_id: &str, payment_type: PaymentType, legs: Vec<Leg>) -> AuthorizationRequest {
    AuthorizationRequest {
        transaction_id: payment_id.to_string(),
        legs,
        count_toward_limits: payment_type.counts_toward_limits(),
    }
}

/// The posting a payment asks to be recorded. Payments move money between user accounts only
/// (the account service refuses a user's payment naming a system account), so no leg is a
/// system account's.
pub fn posting(
    payment_id: &str,
    legs: Vec<Leg>,
    description: Option<String>,
    initiated_by: Option<String>,
) -> PaymentPosting {
    PaymentPosting {
        payment_id: payment_id.to_string(),
        legs: legs.into_iter().map(|leg| PostingLeg { leg, system: false }).collect(),
        description,
        initiated_by,
    }
}

/// Who acts on a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(String),
    /// An admin API key: its role, and its id (none when the host itself acts, on a schedule).
    Admin {
        role: AdminRole,
        key_id: Option<String>,
    },
}

impl Actor {
    /// Whether the actor may see a payment whose payer and payee belong to these users.
    pub fn may_see(&self, payer_user_id: &str, payee_user_id: Option<&str>) -> bool {
        match self {
            Actor::Admin { .. } => true,
            Actor::User(user_id) => {
                user_id.eq_ignore_ascii_case(payer_user_id)
                    || payee_user_id.is_some_and(|payee| user_id.eq_ignore_ascii_case(payee))
            }
        }
    }

    /// The scope of the actor's idempotency keys: a user's own, an admin key's own (two keys
    /// of one role never see each other's answers), or the host's, per role.
    pub fn key_scope(&self) -> String {
        match self {
            Actor::User(user_id) => format!("user:{}", user_id.to_ascii_lowercase()),
            Actor::Admin { key_id: Some(key_id), .. } => format!("admin-key:{key_id}"),
            Actor::Admin { role, key_id: None } => format!("admin:{}", micropay_sdk::principal::role_name(*role)),
        }
    }

    /// The user it is, for `initiated_by`; the nil UUID for an administrator.
    pub fn user_id(&self) -> String {
        match self {
            Actor::User(user_id) => user_id.to_ascii_lowercase(),
            Actor::Admin { .. } => NIL_UUID.to_string(),
        }
    }
}

/// `initiated_by` of what an administrator did.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Refuses (403) what only the payer (or a platform administrator) may do to a payment:
/// capture or cancel it. The payee sees it but may not.
pub fn check_payer(actor: &Actor, payer_user_id: &str, action: &str) -> Result<(), ApiError> {
    match actor {
        Actor::User(user_id) if user_id.eq_ignore_ascii_case(payer_user_id) => Ok(()),
        Actor::User(_) => Err(ApiError::forbidden("payer_only", format!("only the payer may {action} a payment"))),
        Actor::Admin { role, .. } => check_treasury(*role),
    }
}

/// Refuses (403) what only the payee (or a platform administrator) may do: refund.
pub fn check_payee(actor: &Actor, payee_user_id: Option<&str>) -> Result<(), ApiError> {
    match actor {
        Actor::User(user_id) if payee_user_id.is_some_and(|payee| user_id.eq_ignore_ascii_case(payee)) => Ok(()),
        Actor::User(_) => Err(ApiError::forbidden("payee_only", "only the payee may refund a payment")),
        Actor::Admin { role, .. } => check_treasury(*role),
    }
}

/// Deciding a payment held for review takes a risk analyst's key (a user never gets here: the
/// route takes admin keys only).
pub fn check_reviewer(actor: &Actor) -> Result<(), ApiError> {
    match actor {
        Actor::Admin { role, .. } => {
            micropay_sdk::principal::require_admin_role(*role, &[AdminRole::Risk], "deciding a payment in review")
        }
        Actor::User(_) => Err(ApiError::forbidden("admin_only", "deciding a payment in review takes an admin key")),
    }
}

/// Moving or freeing money as an administrator takes the platform's key.
fn check_treasury(role: AdminRole) -> Result<(), ApiError> {
    micropay_sdk::principal::require_admin_role(role, &[AdminRole::Platform], "moving money as an administrator")
}

/// Checks an idempotency key: 1 to 255 visible ASCII characters (400 otherwise).
pub fn idempotency_key(header: Option<&str>) -> Result<String, ApiError> {
    let key = header
        .ok_or_else(|| ApiError::bad_request("idempotency_key_missing", "an Idempotency-Key header is required"))?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(key.to_string())
}

/// What makes two requests with one key "the same request": method, path and body.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// A listing request: its page, and the filters.
#[derive(Debug, PartialEq, Eq)]
pub struct ListQuery {
    pub page: Page,
    pub status: Option<Status>,
    /// Created at or after, microseconds.
    pub from: Option<i64>,
    /// Created before, microseconds.
    pub to: Option<i64>,
}

/// Reads a listing request from its query parameters; anything malformed is a 400 naming it.
pub fn list_query(param: impl Fn(&str) -> Option<String>) -> Result<ListQuery, ApiError> {
    let page = Page::from_query(&param)?;
    let given = |name: &str| param(name).filter(|value| !value.is_empty());
    let status = match given("status") {
        None => None,
        Some(text) => Some(Status::parse(&text).ok_or_else(|| {
            ApiError::bad_request("invalid_status", format!("status {text:?} is not a payment status"))
        })?),
    };
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        given(name)
            .map(|text| {
                micropay_sdk::time::parse_rfc3339(&text).ok_or_else(|| {
                    ApiError::bad_request(&format!("invalid_{name}"), format!("{name} must be an RFC 3339 timestamp"))
                })
            })
            .transpose()
    };
    Ok(ListQuery { page, status, from: time("from")?, to: time("to")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const B: &str = "1b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

    #[test]
    fn idempotency_keys_are_scoped_to_each_caller() {
        let admin =
            |key_id: Option<&str>| Actor::Admin { role: AdminRole::Platform, key_id: key_id.map(str::to_string) };
        let scopes = [
            Actor::User(A.to_uppercase()).key_scope(),
            Actor::User(B.into()).key_scope(),
            admin(Some("k1")).key_scope(),
            admin(Some("k2")).key_scope(),
            admin(None).key_scope(),
        ];
        assert_eq!(scopes[0], format!("user:{A}"));
        let distinct: std::collections::BTreeSet<&String> = scopes.iter().collect();
        assert_eq!(distinct.len(), scopes.len(), "{scopes:?}");
    }

    fn request() -> PaymentRequest {
        PaymentRequest {
            payer_account_id: A.into(),
            payee_account_id: Some(B.into()),
            payee_account_number: None,
            amount: "10.5".into(),
            currency: "USD".into(),
            description: None,
            reference: None,
            metadata: BTreeMap::new(),
            capture_method: None,
        }
    }

    #[test]
    fn a_payment_names_one_payee_other_than_its_payer() {
        assert!(new_payment(request()).is_ok());
        let both = PaymentRequest { payee_account_number: Some("MP00".into()), ..request() };
        assert_eq!(new_payment(both).unwrap_err().status, 422);
        let neither = PaymentRequest { payee_account_id: None, ..request() };
        assert_eq!(new_payment(neither).unwrap_err().status, 422);
        let itself = PaymentRequest { payee_account_id: Some(A.to_uppercase()), ..request() };
        assert_eq!(new_payment(itself).unwrap_err().status, 422);
    }

    #[test]
    fn amounts_currencies_and_metadata_follow_the_rules() {
        assert_eq!(new_payment(PaymentRequest { amount: "0".into(), ..request() }).unwrap_err().status, 422);
        assert_eq!(new_payment(PaymentRequest { amount: "1.00001".into(), ..request() }).unwrap_err().status, 422);
        assert_eq!(new_payment(PaymentRequest { currency: "usd".into(), ..request() }).unwrap_err().status, 422);
        let many: BTreeMap<String, String> = (0..21).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(new_payment(PaymentRequest { metadata: many, ..request() }).unwrap_err().status, 422);
        let twenty: BTreeMap<String, String> = (0..20).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(new_payment(PaymentRequest { metadata: twenty, ..request() }).is_ok());
        // What the ledger could not record is refused here, before anything is held.
        let long = PaymentRequest { description: Some("d".repeat(256)), ..request() };
        assert_eq!(new_payment(long).unwrap_err().status, 422);
        let nul = PaymentRequest { reference: Some("a\u{0}b".into()), ..request() };
        assert_eq!(new_payment(nul).unwrap_err().status, 422);
    }

    #[test]
    fn a_refund_takes_at_most_what_remains() {
        let amount = Decimal::new(100, 0);
        assert_eq!(refund_amount(None, amount, Decimal::new(30, 0)).unwrap().value(), Decimal::new(70, 0));
        assert_eq!(refund_amount(Some("70"), amount, Decimal::new(30, 0)).unwrap().value(), Decimal::new(70, 0));
        assert_eq!(
            refund_amount(Some("70.0001"), amount, Decimal::new(30, 0)).unwrap_err().code,
            "refund_exceeds_payment"
        );
        assert_eq!(refund_amount(None, amount, amount).unwrap_err().code, "not_refundable");
    }

    #[test]
    fn keys_are_visible_ascii_of_at_most_255() {
        assert_eq!(idempotency_key(None).unwrap_err().code, "idempotency_key_missing");
        assert!(idempotency_key(Some(&"k".repeat(255))).is_ok());
        assert_eq!(idempotency_key(Some(&"k".repeat(256))).unwrap_err().code, "invalid_idempotency_key");
        assert_eq!(idempotency_key(Some("a b")).unwrap_err().code, "invalid_idempotency_key");
    }

    #[test]
    fn the_fingerprint_covers_method_path_and_body() {
        let base = fingerprint("POST", "/payments", b"{}");
        assert_eq!(base, fingerprint("POST", "/payments", b"{}"));
        assert_ne!(base, fingerprint("POST", "/payments", b"{ }"));
        assert_ne!(base, fingerprint("POST", "/payments/x/refunds", b"{}"));
    }

    #[test]
    fn only_held_payments_are_cancellable_and_only_completed_ones_refundable() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert!(Status::Initiated.is_cancellable());
        assert!(!Status::Processing.is_cancellable());
        assert!(Status::Completed.is_refundable());
        assert!(Status::PartiallyRefunded.is_refundable());
        assert!(!Status::Refunded.is_refundable());
    }
}
