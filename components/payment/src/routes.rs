//! The endpoints and the event handler: each reads its input, applies the rules of
//! [`crate::domain`], runs the statements of [`crate::sql`], asks the account and transaction
//! services, and shapes the answer. `components/PAYMENTS.md` is the state machine they keep.

use std::collections::BTreeMap;

use micropay_sdk::contracts::{
    Assessment, AssessmentRequest, Authorization, AuthorizationRequest, MAX_PAYMENT_STATUSES, PaymentStatuses,
    PaymentStatusesRequest, PostingOutlook, PostingOutlookAnswer, Released, TransactionApplied,
};
use micropay_sdk::db::DbError;
use micropay_sdk::money;
use micropay_sdk::{ApiError, Context, Db, Principal, Response, Row, events, services};
use serde_json::{Value as Json, json};

use crate::bindings::exports::micropay::platform::subscriber::Event;
use crate::domain::{self, Actor, Payee, PaymentType, Screening, Status};
use crate::idempotency::{self, Claimed};
use crate::sql;

// ---- who is asking ----

fn actor(ctx: &Context) -> Result<Actor, ApiError> {
    match Principal::current()? {
        Principal::User(user_id) => Ok(Actor::User(user_id)),
        Principal::Admin => {
            Ok(Actor::Admin { role: ctx.administrator()?, key_id: micropay_sdk::principal::administrator_key() })
        }
    }
}

/// The payment of the path, when `actor` may see it; 404 otherwise, exactly as a missing one.
/// Locked (`FOR UPDATE`) when `lock`.
fn visible_payment(ctx: &mut Context, actor: &Actor, lock: bool) -> Result<Row, ApiError> {
    let id = ctx.param("payment_id").to_string();
    if !micropay_sdk::is_uuid(&id) {
        return Err(no_payment(&id));
    }
    let id = id.to_ascii_lowercase();
    let db = ctx.db()?;
    let row = if lock { sql::lock_payment(db, &id)? } else { sql::find_payment(db, &id)? };
    row.filter(|row| actor.may_see(&row.text("payer_user_id"), row.opt_text("payee_user_id").as_deref()))
        .ok_or_else(|| no_payment(&id))
}

fn no_payment(id: &str) -> ApiError {
    ApiError::not_found(format!("no payment {id}"))
}

fn status_of(row: &Row) -> Result<Status, ApiError> {
    Status::parse(&row.text("status"))
        .ok_or_else(|| ApiError::internal(&format!("payment {} has an unknown status", row.text("payment_id"))))
}

// ---- answers ----

fn payment_json(row: &Row, metadata: BTreeMap<String, String>) -> Json {
    json!({
        "payment_id": row.text("payment_id"),
        "payment_type": row.text("payment_type"),
        "status": row.text("status"),
        "payer_account_id": row.text("payer_account_id"),
        "payee_account_id": row.text("payee_account_id"),
        "amount": money::format(money::decimal(&row.text("amount"))),
        "currency": row.text("currency"),
        "description": row.opt_text("description"),
        "reference": row.opt_text("reference"),
        "metadata": metadata,
        "capture_method": row.text("capture_method"),
        "refund_of": row.opt_text("refund_of"),
        "refunded_amount": money::format(money::decimal(&row.text("refunded_amount"))),
        "initiated_by": row.text("initiated_by"),
        "failure_reason": row.opt_text("failure_reason"),
        "error_code": row.opt_text("error_code"),
        "error_message": row.opt_text("error_message"),
        "created_at": row.rfc3339("created_at"),
        "updated_at": row.rfc3339("updated_at"),
        "completed_at": row.opt_rfc3339("completed_at"),
        "cancelled_at": row.opt_rfc3339("cancelled_at"),
    })
}

/// The payments of `rows` with their metadata, fetched in one statement.
fn with_metadata(db: &Db, rows: &[Row]) -> Result<Vec<Json>, ApiError> {
    let ids: Vec<String> = rows.iter().map(|row| row.text("payment_id")).collect();
    let mut metadata: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for pair in sql::metadata_of(db, &ids)? {
        metadata
            .entry(pair.text("payment_id"))
            .or_default()
            .insert(pair.text("metadata_key"), pair.opt_text("metadata_value").unwrap_or_default());
    }
    Ok(rows.iter().map(|row| payment_json(row, metadata.remove(&row.text("payment_id")).unwrap_or_default())).collect())
}

fn one_payment(db: &Db, row: &Row) -> Result<Json, ApiError> {
    Ok(with_metadata(db, std::slice::from_ref(row))?.remove(0))
}

/// Publishes `topic` about the payment `row` (key: its id), with the payment as the API
/// shows it.
fn publish_payment(db: &Db, topic: &str, row: &Row) -> Result<(), ApiError> {
    let payment = one_payment(db, row)?;
    events::publish(topic, &row.text("payment_id"), &payment)?;
    Ok(())
}

/// Asks the transaction service to record the posting of the `PROCESSING` payment `row`.
fn request_posting(row: &Row) -> Result<(), ApiError> {
    let payment_id = row.text("payment_id");
    let initiated_by = Some(row.text("initiated_by")).filter(|user| user != domain::NIL_UUID);
    let legs = legs_of(row);
    let posting = domain::posting(&payment_id, legs, row.opt_text("description"), initiated_by);
    let data = serde_json::to_value(&posting).expect("a contract serialises");
    events::publish("payment.processing", &payment_id, &data)?;
    Ok(())
}

fn legs_of(row: &Row) -> Vec<micropay_sdk::contracts::Leg> {
    domain::legs(
        &row.text("payer_account_id"),
        &row.text("payee_account_id"),
        &money::format(money::decimal(&row.text("amount"))),
        &row.text("currency"),
    )
}

fn payment_type_of(row: &Row) -> PaymentType {
    if row.is_null("refund_of") { PaymentType::Transfer } else { PaymentType::Refund }
}

/// The authorization the payment `row` was made with, to give it back.
fn authorization_of(row: &Row) -> AuthorizationRequest {
    domain::authorization(&row.text("payment_id"), payment_type_of(row), legs_of(row))
}

/// Marks an answer about a `PROCESSING` payment as describing work under way: a client that
/// asked to wait (`Prefer: wait=N`) gets the payment once it is final (see the host's
/// `gateway::wait`).
fn with_progress(mut response: Response, row: &Row) -> Response {
    if row.text("status") == Status::Processing.as_str() {
        response.headers.push((idempotency::AWAIT.into(), format!("/payments/{}", row.text("payment_id"))));
    }
    response
}

// ---- creating a payment or a refund ----

/// A payment or refund about to be authorized.
struct Authorizing<'a> {
    payment_id: String,
    payment_type: PaymentType,
    payer_account_id: &'a str,
    payee_account_id: &'a str,
    amount: String,
    currency: &'a str,
    description: Option<&'a str>,
    reference: Option<&'a str>,
    metadata: BTreeMap<String, String>,
    capture_method: domain::CaptureMethod,
    /// What the fraud service said of it.
    screening: Screening,
    refund_of: Option<&'a str>,
    /// Who the accounts belong to, when known before the authorization (a refund's): they
    /// see the refund even when its authorization is refused.
    payer_user_id: Option<String>,
    payee_user_id: Option<String>,
}

/// The steps a payment and a refund share once their request is valid, their key claimed and
/// the payment screened: authorize and hold through the transaction service, under the
/// payment's id; then write the payment (`PROCESSING`, `INITIATED` to be captured, or
/// `REQUIRES_REVIEW`), publish `payment.created` (and `payment.processing` to have it posted),
/// and keep the answer for the key. A refusal of the authorization, or the fraud service's
/// decline (then nothing is asked of the transaction service), is a payment `FAILED` with the
/// refusal's code and message, answered with the refusal, kept for the key (nothing was held). A failure after the authorization gives it
/// back before answering; one the service does not live to see (a crash, a deadline) leaves
/// holds that the balance and account sweepers release, since no payment of that id exists.
fn authorize_and_write(
    ctx: &mut Context,
    actor: &Actor,
    claim: &idempotency::Claim,
    new: Authorizing,
) -> Result<(Row, Response), ApiError> {
    let legs = domain::legs(new.payer_account_id, new.payee_account_id, &new.amount, new.currency);
    let authorization = domain::authorization(&new.payment_id, new.payment_type, legs);
    let authorized = match new.screening {
        Screening::Decline => Err(("fraud_declined", fraud_declined("the payment was declined by the fraud check"))),
        Screening::Clear | Screening::Review => services::call_typed::<Authorization>(
            "transaction",
            "POST",
            "/internal/authorizations",
            Some(&authorization),
        )
        .map_err(|refusal| ("authorization_refused", refusal)),
    };
    let initiated_by = actor.user_id();
    let base = sql::NewPaymentRow {
        payment_id: &new.payment_id,
        idempotency_key: claim.key(),
        payment_type: new.payment_type,
        status: Status::Failed,
        payer_account_id: new.payer_account_id,
        payee_account_id: new.payee_account_id,
        amount: &new.amount,
        currency: new.currency,
        description: new.description,
        reference: new.reference,
        initiated_by: &initiated_by,
        payer_user_id: new.payer_user_id.as_deref().unwrap_or(&initiated_by),
        payee_user_id: new.payee_user_id.as_deref(),
        capture_method: new.capture_method.as_str(),
        refund_of: new.refund_of,
        failure: None,
    };
    let db = ctx.db()?;
    let authorization_answer = match authorized {
        Ok(answer) => answer,
        Err((reason, refusal)) if refusal.status < 500 => {
            let failure = Some((reason, refusal.code.as_str(), refusal.message.as_str()));
            let failed = sql::insert_payment(db, &sql::NewPaymentRow { failure, ..base })?;
            sql::insert_metadata(db, &new.payment_id, &new.metadata)?;
            events::publish("payment.failed", &new.payment_id, &payment_json(&failed, new.metadata.clone()))?;
            let response = refusal.into_response();
            claim.keep(db, &new.payment_id, &response)?;
            return Ok((failed, response));
        }
        Err((_, err)) => return Err(err),
    };
    let written = write_authorized(db, claim, &new, &authorization_answer, base);
    if written.is_err()
        && let Err(err) = services::call_typed::<Released>(
            "transaction",
            "POST",
            "/internal/authorizations/release",
            Some(&authorization),
        )
    {
        micropay_sdk::log_warn(&format!(
            "the authorization of payment {} not given back ({} {}); the sweepers will",
            new.payment_id, err.code, err.message
        ));
    }
    written
}

/// Writes an authorized payment and keeps the key's answer (see [`authorize_and_write`]).
fn write_authorized(
    db: &Db,
    claim: &idempotency::Claim,
    new: &Authorizing,
    authorized: &Authorization,
    base: sql::NewPaymentRow,
) -> Result<(Row, Response), ApiError> {
    let owner = |account_id: &str| {
        authorized
            .accounts
            .iter()
            .find(|account| account.account_id.eq_ignore_ascii_case(account_id))
            .map(|account| account.user_id.to_ascii_lowercase())
            .ok_or_else(|| ApiError::internal(&format!("the authorization does not name account {account_id}")))
    };
    let payer_user_id = owner(new.payer_account_id)?;
    let payee_user_id = owner(new.payee_account_id)?;
    let status = new.screening.authorized_status(new.capture_method);
    let payment = sql::insert_payment(
        db,
        &sql::NewPaymentRow { status, payer_user_id: &payer_user_id, payee_user_id: Some(&payee_user_id), ..base },
    )?;
    sql::insert_metadata(db, &new.payment_id, &new.metadata)?;
    // Its metadata is what was just written: no need to read it back.
    let shown = payment_json(&payment, new.metadata.clone());
    events::publish("payment.created", &new.payment_id, &shown)?;
    if status == Status::RequiresReview {
        events::publish("payment.requires_review", &new.payment_id, &shown)?;
    }
    if status == Status::Processing {
        request_posting(&payment)?;
    }
    let response = with_progress(Response::created(&shown), &payment);
    claim.keep(db, &new.payment_id, &response)?;
    Ok((payment, response))
}

/// `POST /payments` with an `Idempotency-Key`: pays from one of the caller's accounts into
/// another account, named by id or by number. 201 with the payment, `PROCESSING` (or
/// `INITIATED` with `capture_method: manual`) and its funds held; the posting follows through
/// the bus. A refusal (funds, limits, an account frozen, a currency mismatch) is the refusal's
/// 4xx with a `FAILED` payment, nothing held or posted.
pub fn create_payment(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let actor = Actor::User(caller.user_id.to_ascii_lowercase());
    let claim = match idempotency::claim(ctx, &actor)? {
        Claimed::Replay(response) => return Ok(response),
        Claimed::First(claim) => claim,
    };
    let request: domain::PaymentRequest = ctx.json()?;
    let new = domain::new_payment(request)?;
    let payee_account_id = match &new.payee {
        Payee::Account(account_id) => account_id.clone(),
        Payee::Number(number) => lookup_account(number)?,
    };
    if payee_account_id == new.payer_account_id {
        return Err(ApiError::validation("payee_account_number: a payment needs two different accounts"));
    }
    let amount = money::format(new.amount.value());
    let payment_id = micropay_sdk::new_uuid();
    let screening = screen(&AssessmentRequest {
        payment_id: payment_id.clone(),
        payer_user_id: actor.user_id(),
        payer_account_id: new.payer_account_id.clone(),
        payee_account_id: payee_account_id.clone(),
        amount: amount.clone(),
        currency: new.currency.code().to_string(),
    })?;
    let authorizing = Authorizing {
        payment_id,
        payment_type: PaymentType::Transfer,
        payer_account_id: &new.payer_account_id,
        payee_account_id: &payee_account_id,
        amount,
        currency: new.currency.code(),
        description: new.description.as_deref(),
        reference: new.reference.as_deref(),
        metadata: new.metadata.clone(),
        capture_method: new.capture_method,
        screening,
        refund_of: None,
        payer_user_id: None,
        payee_user_id: None,
    };
    let (_, response) = authorize_and_write(ctx, &actor, &claim, authorizing)?;
    Ok(response)
}

/// What the fraud service says of a payment about to be authorized, when one is loaded: its
/// assessment is recorded under the payment's id (asking again answers the same). A fraud
/// service that cannot answer is 503 `fraud_unavailable`: nothing is written, and the client's
/// retry with the same key runs afresh. Money never moves unscreened while one is loaded.
fn screen(request: &AssessmentRequest) -> Result<Screening, ApiError> {
    let assessment = services::call_typed_if_loaded::<Assessment>("fraud", "POST", "/internal/assess", request)?;
    Ok(Screening::of(assessment.map(|assessment| assessment.recommendation)))
}

fn fraud_declined(message: &str) -> ApiError {
    ApiError::new(422, "fraud_declined", message)
}

/// The account a number names, through the account service (which verifies the check digits:
/// 422 `invalid_account_number`; 404 when no account has it).
fn lookup_account(number: &str) -> Result<String, ApiError> {
    let query: String = number
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let found = services::call_json("account", "GET", &format!("/accounts/lookup?number={query}"), None)?;
    found["account_id"]
        .as_str()
        .filter(|id| micropay_sdk::is_uuid(id))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| ApiError::internal(&format!("account /accounts/lookup answered {found}")))
}

/// `POST /payments/{payment_id}/refunds` with an `Idempotency-Key` `{amount?, reason?}`: the
/// payee (or a platform administrator) gives back some or all of a completed payment, as a new
/// payment the other way (`payment_type` `REFUND`). 201 with the refund; 422
/// `refund_exceeds_payment` past what remains; 409 `not_refundable` unless the payment is
/// `COMPLETED` or `PARTIALLY_REFUNDED`; the payer gets 403, anyone else 404.
pub fn create_refund(ctx: &mut Context) -> Result<Response, ApiError> {
    let actor = actor(ctx)?;
    let claim = match idempotency::claim(ctx, &actor)? {
        Claimed::Replay(response) => return Ok(response),
        Claimed::First(claim) => claim,
    };
    let request: domain::RefundRequest = ctx.json()?;
    let reason = domain::refund_reason(request.reason)?;
    // Locked until this unit of work ends: two refunds of one payment take turns, and the
    // second sees what the first took.
    let original = visible_payment(ctx, &actor, true)?;
    domain::check_payee(&actor, original.opt_text("payee_user_id").as_deref())?;
    if payment_type_of(&original) == PaymentType::Refund || !status_of(&original)?.is_refundable() {
        return Err(ApiError::conflict(
            "not_refundable",
            format!(
                "payment {} is {}; only a completed payment is refunded",
                original.text("payment_id"),
                original.text("status")
            ),
        ));
    }
    let amount = domain::refund_amount(
        request.amount.as_deref(),
        money::decimal(&original.text("amount")),
        money::decimal(&original.text("refunded_amount")),
    )?;
    let original_id = original.text("payment_id");
    let payee_account_id = original.text("payer_account_id");
    let payer_account_id = original.text("payee_account_id");
    let currency = original.text("currency");
    let description = reason.or_else(|| Some(format!("Refund of payment {original_id}")));
    let authorizing = Authorizing {
        payment_id: micropay_sdk::new_uuid(),
        payment_type: PaymentType::Refund,
        payer_account_id: &payer_account_id,
        payee_account_id: &payee_account_id,
        amount: money::format(amount.value()),
        currency: &currency,
        description: description.as_deref(),
        reference: None,
        metadata: BTreeMap::new(),
        capture_method: domain::CaptureMethod::Automatic,
        screening: Screening::Clear,
        refund_of: Some(&original_id),
        payer_user_id: original.opt_text("payee_user_id"),
        payee_user_id: Some(original.text("payer_user_id")),
    };
    let (refund, response) = authorize_and_write(ctx, &actor, &claim, authorizing)?;
    if status_of(&refund)? != Status::Failed {
        sql::add_refunded(ctx.db()?, &original_id, &money::format(amount.value()))?;
    }
    Ok(response)
}

// ---- reading ----

/// `GET /payments/{payment_id}`: the payment, to its payer, its payee or an administrator.
pub fn get_payment(ctx: &mut Context) -> Result<Response, ApiError> {
    let actor = actor(ctx)?;
    let row = visible_payment(ctx, &actor, false)?;
    let db = ctx.db()?;
    let mut payment = one_payment(db, &row)?;
    let retries: Vec<Json> = sql::retries_of(db, &row.text("payment_id"))?
        .iter()
        .map(|retry| {
            json!({
                "retry_attempt": retry.int("retry_attempt"),
                "retry_reason": retry.opt_text("retry_reason"),
                "retry_status": retry.text("retry_status"),
                "error_message": retry.opt_text("error_message"),
                "retried_at": retry.rfc3339("retried_at"),
            })
        })
        .collect();
    payment["retries"] = Json::Array(retries);
    Ok(with_progress(Response::ok(&payment), &row))
}

/// `GET /payments?status=&from=&to=&limit=&cursor=`: the payments the caller pays or is paid
/// by (all of them for an administrator), newest first.
pub fn list_payments(ctx: &mut Context) -> Result<Response, ApiError> {
    let actor = actor(ctx)?;
    let query = domain::list_query(|name| ctx.query(name))?;
    let user_id = match &actor {
        Actor::User(user_id) => Some(user_id.clone()),
        Actor::Admin { .. } => None,
    };
    let db = ctx.db()?;
    let mut rows = sql::list_payments(db, user_id.as_deref(), &query)?;
    let next_cursor = query.page.cut(&mut rows, "payment_id");
    let payments = with_metadata(db, &rows)?;
    Ok(Response::ok(&json!({ "payments": payments, "next_cursor": next_cursor })))
}

/// `GET /payments/{payment_id}/refunds`: the refunds of a payment, oldest first.
pub fn list_refunds(ctx: &mut Context) -> Result<Response, ApiError> {
    let actor = actor(ctx)?;
    let row = visible_payment(ctx, &actor, false)?;
    let db = ctx.db()?;
    let refunds = with_metadata(db, &sql::refunds_of(db, &row.text("payment_id"))?)?;
    Ok(Response::ok(&json!({ "refunds": refunds })))
}

// ---- capture and cancel ----

/// `POST /payments/{payment_id}/capture`: the payer (or a platform administrator) has an
/// `INITIATED` payment processed. 200 `PROCESSING`; 409 `not_capturable` in another status.
pub fn capture_payment(ctx: &mut Context) -> Result<Response, ApiError> {
    let actor = actor(ctx)?;
    let row = visible_payment(ctx, &actor, true)?;
    domain::check_payer(&actor, &row.text("payer_user_id"), "capture")?;
    if status_of(&row)? != Status::Initiated {
        return Err(ApiError::conflict("not_capturable", format!("payment is {}", row.text("status"))));
    }
    let db = ctx.db()?;
    let processing = sql::set_status(db, &row.text("payment_id"), Status::Processing, None, None)?;
    request_posting(&processing)?;
    Ok(with_progress(Response::ok(&one_payment(db, &processing)?), &processing))
}

/// `POST /payments/{payment_id}/cancel`: the payer (or a platform administrator) cancels a
/// payment whose posting was not asked for (`INITIATED`, `REQUIRES_REVIEW`): its holds and
/// limits are given back. 200 `CANCELLED`; 409 `not_cancellable` once it is processing.
pub fn cancel_payment(ctx: &mut Context) -> Result<Response, ApiError> {
    let actor = actor(ctx)?;
    // The lock makes the cancel and the capture take turns: a cancelled payment is never
    // posted, a processing one never cancelled.
    let row = visible_payment(ctx, &actor, true)?;
    domain::check_payer(&actor, &row.text("payer_user_id"), "cancel")?;
    if !status_of(&row)?.is_cancellable() {
        return Err(ApiError::conflict(
            "not_cancellable",
            format!("payment is {}; only a payment not yet processing is cancelled", row.text("status")),
        ));
    }
    let cancelled = cancel(ctx.db()?, &row, "cancelled")?;
    Ok(Response::ok(&one_payment(ctx.db()?, &cancelled)?))
}

/// Marks a locked cancellable payment `CANCELLED` and has its authorization given back.
fn cancel(db: &Db, row: &Row, reason: &str) -> Result<Row, ApiError> {
    let cancelled = sql::set_status(db, &row.text("payment_id"), Status::Cancelled, Some(reason), None)?;
    publish_payment(db, "payment.cancelled", &cancelled)?;
    release(row)?;
    Ok(cancelled)
}

/// Asks for the authorization of the payment `row`, which will never be posted, to be given
/// back (`payment.releasing`, handled by the transaction service), in the unit of work that
/// ended the payment: the holds go only once that committed, so a payment whose cancel (or
/// decline) did not commit keeps them, and can still be captured with them.
fn release(row: &Row) -> Result<(), ApiError> {
    let releasing = serde_json::to_value(authorization_of(row)).expect("a contract serialises");
    events::publish("payment.releasing", &row.text("payment_id"), &releasing)?;
    Ok(())
}

/// `POST /payments/{payment_id}/review` `{decision: "approve" | "decline", notes?}`: a risk
/// analyst decides a payment the fraud service held for review (`REQUIRES_REVIEW`, its funds
/// held). Approve: it goes on as if approved at once (`PROCESSING` and its posting asked for,
/// or `INITIATED` when captured manually). Decline: `FAILED` with `fraud_declined` (the notes
/// as its message), its holds and limits given back. 409 `not_in_review`; 403 for an admin key
/// other than `risk`.
pub fn review_payment(ctx: &mut Context) -> Result<Response, ApiError> {
    let actor = actor(ctx)?;
    domain::check_reviewer(&actor)?;
    let request: domain::ReviewRequest = ctx.json()?;
    let notes = micropay_sdk::fields::text("notes", request.notes.as_deref(), 1000)?;
    // Locked: a review, a cancel and the sweeper take turns.
    let row = visible_payment(ctx, &actor, true)?;
    if status_of(&row)? != Status::RequiresReview {
        return Err(ApiError::conflict("not_in_review", format!("payment is {}", row.text("status"))));
    }
    let payment_id = row.text("payment_id");
    let db = ctx.db()?;
    let reviewed = match request.decision {
        domain::ReviewDecision::Approve => {
            let capture_method = domain::CaptureMethod::parse(&row.text("capture_method"))
                .ok_or_else(|| ApiError::internal(&format!("payment {payment_id} has an unknown capture method")))?;
            let approved = sql::set_status(db, &payment_id, capture_method.authorized_status(), None, None)?;
            if status_of(&approved)? == Status::Processing {
                request_posting(&approved)?;
            }
            approved
        }
        domain::ReviewDecision::Decline => {
            let message = notes.as_deref().unwrap_or("declined in review");
            let error = Some(("fraud_declined", message));
            let failed = sql::set_status(db, &payment_id, Status::Failed, Some("fraud_declined"), error)?;
            publish_payment(db, "payment.failed", &failed)?;
            release(&row)?;
            failed
        }
    };
    Ok(with_progress(Response::ok(&one_payment(db, &reviewed)?), &reviewed))
}

// ---- the fraud service's question ----

/// `POST /internal/payments/statuses` `{payment_ids}` (the fraud service, for a backtest): the
/// statuses of those payments, by id; unknown ids are left out. At most 10,000 ids, each a
/// UUID (422 otherwise).
pub fn payment_statuses(ctx: &mut Context) -> Result<Response, ApiError> {
    let request: PaymentStatusesRequest = ctx.json()?;
    if request.payment_ids.len() > MAX_PAYMENT_STATUSES {
        return Err(ApiError::validation(format!("payment_ids: at most {MAX_PAYMENT_STATUSES}")));
    }
    let ids = request
        .payment_ids
        .iter()
        .map(|id| micropay_sdk::fields::uuid("payment_ids", id))
        .collect::<Result<Vec<_>, _>>()?;
    let statuses =
        sql::statuses(ctx.db()?, &ids)?.iter().map(|row| (row.text("payment_id"), row.text("status"))).collect();
    Ok(Response::ok(&PaymentStatuses { statuses }))
}

// ---- the transaction service's question ----

/// `GET /internal/payments/{payment_id}/posting` (the transaction service, for the balance and
/// account sweepers): whether the posting of this id is still coming.
pub fn posting_outlook(ctx: &mut Context) -> Result<Response, ApiError> {
    let id = ctx.param("payment_id").to_ascii_lowercase();
    if !micropay_sdk::is_uuid(&id) {
        return Err(no_payment(&id));
    }
    let row = sql::find_payment(ctx.db()?, &id)?;
    let coming = match &row {
        Some(row) => status_of(row)?.posting_coming(),
        None => false,
    };
    let posting = if coming { PostingOutlook::Coming } else { PostingOutlook::Never };
    Ok(Response::ok(&PostingOutlookAnswer { posting }))
}

// ---- completion ----

/// Handles a batch of `balance.transaction_applied`: the payments whose postings they are
/// (their ids are the transactions'), if `PROCESSING`, are `COMPLETED` with one statement, and
/// `payment.completed` published for each; a refund also marks its payment `REFUNDED` or
/// `PARTIALLY_REFUNDED` and publishes `payment.refunded`. Another service's posting, or a
/// repeat, changes nothing.
pub fn complete(events: &[Event]) -> Result<(), String> {
    let mut transaction_ids = Vec::with_capacity(events.len());
    for event in events {
        match serde_json::from_str::<TransactionApplied>(&event.data) {
            Ok(applied) if micropay_sdk::is_uuid(&applied.transaction_id) => {
                transaction_ids.push(applied.transaction_id.to_ascii_lowercase())
            }
            _ => {
                micropay_sdk::log_warn(&format!("event {} ({}) cannot be read: {}", event.id, event.topic, event.data))
            }
        }
    }
    if transaction_ids.is_empty() {
        return Ok(());
    }
    let db = Db::open().map_err(describe)?;
    complete_payments(&db, &transaction_ids).map_err(|err| err.message)
}

fn complete_payments(db: &Db, payment_ids: &[String]) -> Result<(), ApiError> {
    let completed = sql::complete(db, payment_ids)?;
    // The refunded payments, locked together in id order: two batches never wait on each
    // other in a cycle (the refunds themselves were locked in id order by `complete`).
    let mut originals: Vec<String> = completed.iter().filter_map(|row| row.opt_text("refund_of")).collect();
    originals.sort();
    originals.dedup();
    sql::lock_payments(db, &originals)?;
    // Their metadata with one statement, for all of them.
    for (row, payment) in completed.iter().zip(with_metadata(db, &completed)?) {
        let payment_id = row.text("payment_id");
        events::publish("payment.completed", &payment_id, &payment)?;
        if let Some(original_id) = row.opt_text("refund_of") {
            let original = sql::mark_refunded(db, &original_id)?;
            let data = json!({ "payment": one_payment(db, &original)?, "refund": payment });
            events::publish("payment.refunded", &original_id, &data)?;
        }
    }
    Ok(())
}

fn describe(err: DbError) -> String {
    format!("database error {}: {}", err.code, err.message)
}

// ---- the sweeper ----

/// `POST /maintenance` (every minute, on every host): asks again for the posting of payments
/// `PROCESSING` for over a minute whose posting the transaction service does not have
/// (recording a retry), completes those whose posting settled without this service hearing
/// of it, cancels manually captured payments left uncaptured for a week, and purges
/// idempotency keys past a day. Safe on several hosts at once: it skips payments another unit
/// of work holds.
pub fn maintain(ctx: &mut Context) -> Result<Response, ApiError> {
    let db = ctx.db()?;
    let mut asked_again = 0;
    let mut completed = 0;
    for row in sql::stale_processing(db, domain::POSTING_RETRY_AFTER_SECONDS, domain::SWEEP_BATCH)? {
        let payment_id = row.text("payment_id");
        let path = format!("/internal/transactions/{payment_id}");
        let status = match services::call_json("transaction", "GET", &path, None) {
            Ok(answer) => answer["status"].as_str().map(str::to_string),
            Err(err) => {
                micropay_sdk::log_warn(&format!("payment {payment_id} not checked: {} {}", err.code, err.message));
                continue;
            }
        };
        match status.as_deref() {
            // Not recorded: ask again.
            None | Some("AUTHORIZED") => {
                request_posting(&row)?;
                sql::record_retry(db, &payment_id, "posting_missing", "REQUESTED", None)?;
                asked_again += 1;
            }
            Some("SETTLED") => {
                complete_payments(db, std::slice::from_ref(&payment_id))?;
                completed += 1;
            }
            // Recorded, on its way through the balances.
            Some(_) => {}
        }
    }
    let mut expired = 0;
    for row in sql::expired_captures(db, domain::CAPTURE_EXPIRY_SECONDS, domain::SWEEP_BATCH)? {
        cancel(db, &row, "capture_expired")?;
        expired += 1;
    }
    let purged = sql::purge_keys(db, domain::KEY_RETENTION_HOURS)?;
    if asked_again > 0 || completed > 0 || expired > 0 {
        micropay_sdk::log_info(&format!(
            "payments: {asked_again} postings asked again, {completed} completed late, {expired} uncaptured cancelled"
        ));
    }
    Ok(Response::ok(&json!({
        "postings_asked_again": asked_again,
        "completed": completed,
        "captures_expired": expired,
        "keys_purged": purged,
    })))
}
