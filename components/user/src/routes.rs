//! The endpoints: each reads its input, applies the rules of [`crate::domain`], runs the
//! statements of [`crate::sql`] and shapes the answer.

use micropay_sdk::contracts::{NewDeviceLogin, UserContact};
use micropay_sdk::db::DbError;
use micropay_sdk::db::param::{boolean, opt_text};
use micropay_sdk::{ApiError, Caller, Context, Db, Response, Row, fields};
use serde::{Deserialize, Deserializer};
use serde_json::{Value as Json, json};

use crate::domain::{self, Activity, Channel};
use crate::sql::{self, Patch};

/// The header in which the host passes the client's address.
const CLIENT_IP_HEADER: &str = "x-micropay-client-ip";

/// The size of `ip_address` columns.
const IP_ADDRESS_MAX: usize = 45;

/// Page size of the activity list when the request names none, and its maximum.
const ACTIVITY_DEFAULT_LIMIT: i64 = 50;
const ACTIVITY_MAX_LIMIT: i64 = 100;

// ---- request bodies ----

/// Deserializes a field that tells "absent" (`None`, through `#[serde(default)]`) from
/// "null" (`Some(None)`), so a PATCH can clear a column.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignUp {
    email: String,
    password: String,
    phone_number: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyEmail {
    email: String,
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendEmailCode {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordReset {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordResetConfirmation {
    email: String,
    code: String,
    new_password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyPhone {
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogIn {
    email: String,
    password: String,
    device_info: Option<Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    #[serde(default, deserialize_with = "nullable")]
    first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    phone_number: Option<Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateProfile {
    #[serde(default, deserialize_with = "nullable")]
    date_of_birth: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    address_line1: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    address_line2: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    city: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    state: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    country: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    postal_code: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    preferred_currency: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    timezone: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    language: Option<Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdatePreferences {
    email_notifications_enabled: Option<bool>,
    sms_notifications_enabled: Option<bool>,
    push_notifications_enabled: Option<bool>,
    marketing_emails_enabled: Option<bool>,
    two_factor_enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    current_password: String,
    new_password: String,
}

// ---- answers ----

fn user_json(row: &Row) -> Json {
    json!({
        "user_id": row.text("user_id"),
        "email": row.text("email"),
        "phone_number": row.opt_text("phone_number"),
        "first_name": row.opt_text("first_name"),
        "last_name": row.opt_text("last_name"),
        "status": row.text("status"),
        "email_verified": row.bool("email_verified"),
        "phone_verified": row.bool("phone_verified"),
        "kyc_status": row.opt_text("kyc_status"),
        "created_at": row.rfc3339("created_at"),
        "updated_at": row.rfc3339("updated_at"),
        "last_login_at": row.opt_rfc3339("last_login_at"),
    })
}

fn profile_json(row: &Row) -> Json {
    json!({
        "profile_id": row.text("profile_id"),
        "user_id": row.text("user_id"),
        "date_of_birth": row.opt_text("date_of_birth"),
        "address_line1": row.opt_text("address_line1"),
        "address_line2": row.opt_text("address_line2"),
        "city": row.opt_text("city"),
        "state": row.opt_text("state"),
        "country": row.opt_text("country"),
        "postal_code": row.opt_text("postal_code"),
        "preferred_currency": row.opt_text("preferred_currency"),
        "timezone": row.opt_text("timezone"),
        "language": row.opt_text("language"),
        "created_at": row.rfc3339("created_at"),
        "updated_at": row.rfc3339("updated_at"),
    })
}

fn preferences_json(row: &Row) -> Json {
    json!({
        "preference_id": row.text("preference_id"),
        "user_id": row.text("user_id"),
        "email_notifications_enabled": row.opt_bool("email_notifications_enabled"),
        "sms_notifications_enabled": row.opt_bool("sms_notifications_enabled"),
        "push_notifications_enabled": row.opt_bool("push_notifications_enabled"),
        "marketing_emails_enabled": row.opt_bool("marketing_emails_enabled"),
        "two_factor_enabled": row.opt_bool("two_factor_enabled"),
        "created_at": row.rfc3339("created_at"),
        "updated_at": row.rfc3339("updated_at"),
    })
}

fn session_json(row: &Row, current_session_id: &str) -> Json {
    let session_id = row.text("session_id");
    json!({
        "current": session_id == current_session_id,
        "session_id": session_id,
        "device_info": row.json("device_info"),
        "ip_address": row.opt_text("ip_address"),
        "user_agent": row.opt_text("user_agent"),
        "created_at": row.rfc3339("created_at"),
        "last_activity_at": row.rfc3339("last_activity_at"),
        "expires_at": row.rfc3339("expires_at"),
    })
}

fn activity_json(row: &Row) -> Json {
    json!({
        "log_id": row.text("log_id"),
        "activity_type": row.text("activity_type"),
        "activity_description": row.opt_text("activity_description"),
        "metadata": row.json("metadata"),
        "ip_address": row.opt_text("ip_address"),
        "created_at": row.rfc3339("created_at"),
    })
}

fn sent() -> Response {
    Response::json(202, &json!({ "status": "sent" }))
}

// ---- shared steps ----

/// The client's address as the host reports it. A value that cannot be an address (empty, or
/// longer than the column) is dropped rather than failing the write.
/// Records an account event: a row in the user's activity log and, in the same unit of work,
/// an event for the rest of the platform (`user.registered`, `user.logged_in`, ...).
fn record(
    db: &Db,
    user_id: &str,
    activity: Activity,
    metadata: Option<&Json>,
    ip_address: Option<&str>,
) -> Result<(), ApiError> {
    sql::log_activity(db, user_id, activity, metadata, ip_address)?;
    let data = json!({
        "user_id": user_id,
        "activity": activity.as_str(),
        "description": activity.description(),
        "metadata": metadata,
        "ip_address": ip_address,
    });
    micropay_sdk::events::publish(activity.topic(), user_id, &data)?;
    Ok(())
}

/// Event `user.contact_changed`: how to reach the user and what they agreed to receive, as
/// this unit of work leaves it.
fn publish_contact(db: &Db, user_id: &str) -> Result<(), ApiError> {
    let row = sql::contact(db, user_id)?;
    let contact = UserContact {
        user_id: row.text("user_id"),
        email: row.text("email"),
        email_verified: row.bool("email_verified"),
        phone_number: row.opt_text("phone_number"),
        phone_verified: row.bool("phone_verified"),
        email_notifications_enabled: row.bool("email_notifications_enabled"),
        sms_notifications_enabled: row.bool("sms_notifications_enabled"),
        push_notifications_enabled: row.bool("push_notifications_enabled"),
    };
    let data = serde_json::to_value(&contact).expect("a contract serialises");
    micropay_sdk::events::publish("user.contact_changed", user_id, &data)?;
    Ok(())
}

fn client_ip(ctx: &Context) -> Option<String> {
    ctx.header(CLIENT_IP_HEADER).filter(|ip| !ip.is_empty() && ip.len() <= IP_ADDRESS_MAX).map(str::to_string)
}

/// Turns a unique violation on email or phone into its 409; any other error stays a 500.
fn taken(err: DbError) -> ApiError {
    if err.is_unique_violation(Some(sql::EMAIL_KEY)) {
        ApiError::conflict("email_taken", "an account with this email already exists")
    } else if err.is_unique_violation(Some(sql::PHONE_KEY)) {
        ApiError::conflict("phone_taken", "an account with this phone number already exists")
    } else {
        err.into()
    }
}

/// The caller's user row. The authenticator resolves only live users, so a missing row means
/// the account went away since: the caller is no longer anyone.
fn current_user(db: &Db, caller: &Caller) -> Result<Row, ApiError> {
    sql::find_user(db, &caller.user_id)?.ok_or_else(|| ApiError::unauthenticated("the account no longer exists"))
}

fn invalid_code() -> ApiError {
    ApiError::new(422, "invalid_code", "the code is wrong, expired or already used")
}

fn invalid_credentials() -> ApiError {
    ApiError::new(401, "invalid_credentials", "the email or password is wrong")
}

/// Redeems a verification code or refuses with 422 `invalid_code`, keeping the attempt counted.
fn redeem_or_refuse(db: &Db, user_id: &str, channel: Channel, code: &str) -> Result<(), ApiError> {
    if domain::redeem_code(db, user_id, channel, code)? {
        Ok(())
    } else {
        db.commit_on_error();
        Err(invalid_code())
    }
}

// ---- sign-up and verification ----

/// `POST /users`: creates an account waiting for its email to be verified.
pub fn sign_up(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: SignUp = ctx.json()?;
    let email = domain::email(&body.email)?;
    domain::check_password_strength(&body.password)?;
    let phone_number = body.phone_number.as_deref().map(domain::phone).transpose()?;
    let first_name = fields::text("first_name", body.first_name.as_deref(), 100)?;
    let last_name = fields::text("last_name", body.last_name.as_deref(), 100)?;
    let password_hash = domain::hash_password(&body.password)?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let user = sql::insert_user(
        db,
        &email,
        phone_number.as_deref(),
        &password_hash,
        first_name.as_deref(),
        last_name.as_deref(),
    )
    .map_err(taken)?;
    let user_id = user.text("user_id");
    sql::insert_user_settings(db, &user_id)?;
    record(db, &user_id, Activity::SignedUp, None, ip.as_deref())?;
    publish_contact(db, &user_id)?;
    domain::count_code_request(db, Channel::Email, &email)?;
    domain::issue_code(db, &user_id, Channel::Email, &email)?;
    Ok(Response::created(&user_json(&user)))
}

/// `POST /verifications/email`: proves control of the email and activates the account.
pub fn verify_email(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: VerifyEmail = ctx.json()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    // An unknown email gets the same answer as a wrong code, so it reveals nothing.
    let user = sql::find_user_by_email(db, &domain::canonical_email(&body.email))?.ok_or_else(invalid_code)?;
    let user_id = user.text("user_id");
    redeem_or_refuse(db, &user_id, Channel::Email, &body.code)?;
    let user = sql::mark_email_verified(db, &user_id)?;
    record(db, &user_id, Activity::EmailVerified, None, ip.as_deref())?;
    publish_contact(db, &user_id)?;
    Ok(Response::ok(&user_json(&user)))
}

/// `POST /verifications/email/resend`: sends a new code to an unverified account; answers the
/// same whatever the email, so it reveals nothing (the hourly limit too counts every address
/// asked for, known or not).
pub fn resend_email_code(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: ResendEmailCode = ctx.json()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let email = domain::canonical_email(&body.email);
    domain::count_code_request(db, Channel::Email, &email)?;
    if let Some(user) = sql::find_user_by_email(db, &email)?
        && !user.bool("email_verified")
    {
        let user_id = user.text("user_id");
        domain::issue_code(db, &user_id, Channel::Email, &email)?;
        record(db, &user_id, Activity::EmailVerificationSent, None, ip.as_deref())?;
    }
    Ok(sent())
}

/// `POST /password-resets` `{email}`: sends a code to choose a new password to the account's
/// email address; answers the same whatever the email, so it reveals nothing (the hourly limit
/// of codes to one address counts every address asked for, known or not).
pub fn request_password_reset(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: PasswordReset = ctx.json()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let email = domain::canonical_email(&body.email);
    domain::count_code_request(db, Channel::Email, &email)?;
    if let Some(user) = sql::find_user_by_email(db, &email)? {
        let user_id = user.text("user_id");
        domain::issue_code(db, &user_id, Channel::Reset, &email)?;
        record(db, &user_id, Activity::PasswordResetRequested, None, ip.as_deref())?;
    }
    Ok(sent())
}

/// `POST /password-resets/confirm` `{email, code, new_password}`: sets the new password with
/// the code and ends every session of the account. A wrong, expired or used code, or an unknown
/// email, is the same 422 `invalid_code`.
pub fn confirm_password_reset(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: PasswordResetConfirmation = ctx.json()?;
    domain::check_password_strength(&body.new_password)?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let user = sql::find_user_by_email(db, &domain::canonical_email(&body.email))?.ok_or_else(invalid_code)?;
    let user_id = user.text("user_id");
    redeem_or_refuse(db, &user_id, Channel::Reset, &body.code)?;
    sql::set_password_hash(db, &user_id, &domain::hash_password(&body.new_password)?)?;
    let revoked = sql::delete_sessions(db, &user_id)?;
    let metadata = json!({ "sessions_revoked": revoked, "by": "reset" });
    record(db, &user_id, Activity::PasswordChanged, Some(&metadata), ip.as_deref())?;
    Ok(sessions_ended(Response::no_content(), "user", &user_id))
}

/// `POST /me/phone/verification`: sends a code to the caller's phone.
pub fn request_phone_code(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let user = current_user(db, &caller)?;
    if user.is_null("phone_number") {
        return Err(ApiError::conflict("no_phone", "the account has no phone number"));
    }
    if user.bool("phone_verified") {
        return Err(ApiError::conflict("already_verified", "the phone number is already verified"));
    }
    let phone_number = user.text("phone_number");
    domain::count_code_request(db, Channel::Phone, &phone_number)?;
    domain::issue_code(db, &caller.user_id, Channel::Phone, &phone_number)?;
    record(db, &caller.user_id, Activity::PhoneVerificationSent, None, ip.as_deref())?;
    Ok(sent())
}

/// `POST /me/phone/verify`: proves control of the caller's phone.
pub fn verify_phone(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: VerifyPhone = ctx.json()?;
    let caller = ctx.caller()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let user = current_user(db, &caller)?;
    if user.is_null("phone_number") {
        return Err(ApiError::conflict("no_phone", "the account has no phone number"));
    }
    if user.bool("phone_verified") {
        return Err(ApiError::conflict("already_verified", "the phone number is already verified"));
    }
    redeem_or_refuse(db, &caller.user_id, Channel::Phone, &body.code)?;
    let user = sql::mark_phone_verified(db, &caller.user_id)?;
    record(db, &caller.user_id, Activity::PhoneVerified, None, ip.as_deref())?;
    publish_contact(db, &caller.user_id)?;
    Ok(Response::ok(&user_json(&user)))
}

// ---- sessions ----

/// `POST /sessions`: logs in and issues a bearer token.
pub fn log_in(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: LogIn = ctx.json()?;
    let device_info = domain::device_info(body.device_info)?;
    let ip = client_ip(ctx);
    let user_agent = ctx.header("user-agent").map(str::to_string);
    let db = ctx.db()?;

    let Some(user) = sql::find_user_by_email(db, &domain::canonical_email(&body.email))? else {
        domain::verify_nothing(&body.password);
        return Err(invalid_credentials());
    };
    let user_id = user.text("user_id");
    if !domain::verify_password(&body.password, &user.text("password_hash")) {
        record(db, &user_id, Activity::LoginFailed, None, ip.as_deref())?;
        db.commit_on_error();
        return Err(invalid_credentials());
    }
    match user.text("status").as_str() {
        "ACTIVE" => {}
        "PENDING_VERIFICATION" => {
            return Err(ApiError::forbidden("email_not_verified", "verify the email address before logging in"));
        }
        _ => return Err(ApiError::forbidden("account_inactive", "this account cannot log in")),
    }

    let token = domain::new_session_token();
    let session = sql::insert_session(
        db,
        &sql::NewSession {
            user_id: &user_id,
            token_hash: &domain::sha256_hex(&token),
            device_info: device_info.as_ref(),
            ip_address: ip.as_deref(),
            user_agent: user_agent.as_deref(),
            ttl: domain::SESSION_TTL,
        },
    )?;
    let session_id = session.text("session_id");
    if sql::seen_device(db, &user_id, &domain::device_hash(device_info.as_ref(), user_agent.as_deref()))? {
        let login = NewDeviceLogin {
            user_id: user_id.clone(),
            logged_in_at: micropay_sdk::time::rfc3339(micropay_sdk::now_micros()),
            user_agent: user_agent.clone(),
            ip_address: ip.clone(),
        };
        let data = serde_json::to_value(&login).expect("a contract serialises");
        micropay_sdk::events::publish("user.new_device_login", &user_id, &data)?;
    }
    let user = sql::record_login(db, &user_id)?;
    let metadata = json!({ "session_id": session_id });
    record(db, &user_id, Activity::LoggedIn, Some(&metadata), ip.as_deref())?;
    Ok(Response::created(&json!({
        "token": token,
        "session_id": session_id,
        "expires_at": session.rfc3339("expires_at"),
        "user": user_json(&user),
    })))
}

/// Tells the host that sessions ended with this answer (`session <id>`, or `user <id>` for
/// all of a user's): it stops accepting their tokens on every host at once, rather than when
/// its short-lived cache of resolved tokens lapses.
fn sessions_ended(mut response: Response, kind: &str, id: &str) -> Response {
    response.headers.push(("micropay-sessions-ended".into(), format!("{kind} {id}")));
    response
}

/// `DELETE /sessions/current`: logs out.
pub fn log_out(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    sql::delete_session(db, &caller.user_id, &caller.session_id)?;
    let metadata = json!({ "session_id": caller.session_id });
    record(db, &caller.user_id, Activity::LoggedOut, Some(&metadata), ip.as_deref())?;
    Ok(sessions_ended(Response::no_content(), "session", &caller.session_id))
}

/// `GET /sessions`: the caller's unexpired sessions, newest first.
pub fn list_sessions(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let db = ctx.db()?;

    let sessions: Vec<Json> =
        sql::list_sessions(db, &caller.user_id)?.iter().map(|row| session_json(row, &caller.session_id)).collect();
    Ok(Response::ok(&json!({ "sessions": sessions })))
}

/// `DELETE /sessions/{session_id}`: revokes one of the caller's sessions. Another user's
/// session is as unknown as a missing one.
pub fn revoke_session(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let session_id = ctx.param("session_id").to_ascii_lowercase();
    let ip = client_ip(ctx);
    let not_found = || ApiError::not_found("no such session");
    if !micropay_sdk::is_uuid(&session_id) {
        return Err(not_found());
    }
    let db = ctx.db()?;

    if sql::delete_session(db, &caller.user_id, &session_id)? == 0 {
        return Err(not_found());
    }
    let metadata = json!({ "session_id": session_id });
    record(db, &caller.user_id, Activity::SessionRevoked, Some(&metadata), ip.as_deref())?;
    Ok(sessions_ended(Response::no_content(), "session", &session_id))
}

/// Resolves a bearer token to its caller: an unexpired session of a user that is not deleted.
/// Refuses anything that is not shaped like a token without a query, and fails closed on a
/// database error.
pub fn authenticate(token: &str) -> Option<Caller> {
    if !domain::is_session_token(token) {
        return None;
    }
    let resolve = || -> Result<Option<Caller>, DbError> {
        let db = Db::open()?;
        let Some(session) = sql::find_session_by_token(&db, &domain::sha256_hex(token))? else {
            return Ok(None);
        };
        let session_id = session.text("session_id");
        sql::touch_session(&db, &session_id)?;
        Ok(Some(Caller { user_id: session.text("user_id"), session_id }))
    };
    resolve().unwrap_or_else(|err| {
        micropay_sdk::log_warn(&format!("authentication failed on database error {}: {}", err.code, err.message));
        None
    })
}

// ---- the account ----

/// `GET /me`: the caller's account.
pub fn get_me(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let db = ctx.db()?;
    Ok(Response::ok(&user_json(&current_user(db, &caller)?)))
}

/// `PATCH /me`: changes names or phone number; a new phone number is unverified.
pub fn update_me(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: UpdateUser = ctx.json()?;
    let first_name = body.first_name.map(|name| fields::text("first_name", name.as_deref(), 100)).transpose()?;
    let last_name = body.last_name.map(|name| fields::text("last_name", name.as_deref(), 100)).transpose()?;
    let phone_number = body.phone_number.map(|phone| phone.as_deref().map(domain::phone).transpose()).transpose()?;
    let caller = ctx.caller()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let mut patch = Patch::user();
    let mut changed = Vec::new();
    for (column, value) in [("first_name", first_name), ("last_name", last_name)] {
        if let Some(value) = value {
            patch.set(column, opt_text(value));
            changed.push(column);
        }
    }
    let current = current_user(db, &caller)?;
    let phone_changed = phone_number.as_ref().is_some_and(|phone| *phone != current.opt_text("phone_number"));
    if phone_changed && let Some(phone) = phone_number {
        patch.set("phone_number", opt_text(phone));
        patch.set("phone_verified", boolean(false));
        changed.push("phone_number");
    }
    let user = patch.apply(db, &caller.user_id).map_err(taken)?;
    if phone_changed {
        // A code sent to the old number must not verify the new one.
        sql::consume_open_codes(db, &caller.user_id, Channel::Phone.as_str())?;
    }
    let metadata = json!({ "fields": changed });
    record(db, &caller.user_id, Activity::UserUpdated, Some(&metadata), ip.as_deref())?;
    if phone_changed {
        publish_contact(db, &caller.user_id)?;
    }
    Ok(Response::ok(&user_json(&user)))
}

/// `POST /me/password`: changes the password and ends every other session.
pub fn change_password(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: ChangePassword = ctx.json()?;
    let caller = ctx.caller()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let user = current_user(db, &caller)?;
    if !domain::verify_password(&body.current_password, &user.text("password_hash")) {
        return Err(ApiError::forbidden("invalid_password", "the current password is wrong"));
    }
    domain::check_password_strength(&body.new_password)?;
    sql::set_password_hash(db, &caller.user_id, &domain::hash_password(&body.new_password)?)?;
    let revoked = sql::delete_other_sessions(db, &caller.user_id, &caller.session_id)?;
    let metadata = json!({ "sessions_revoked": revoked });
    record(db, &caller.user_id, Activity::PasswordChanged, Some(&metadata), ip.as_deref())?;
    Ok(sessions_ended(Response::no_content(), "user", &caller.user_id))
}

/// `DELETE /me`: soft-deletes the account and ends all its sessions.
pub fn delete_me(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    sql::soft_delete_user(db, &caller.user_id)?;
    let revoked = sql::delete_sessions(db, &caller.user_id)?;
    let metadata = json!({ "sessions_revoked": revoked });
    record(db, &caller.user_id, Activity::AccountDeleted, Some(&metadata), ip.as_deref())?;
    Ok(sessions_ended(Response::no_content(), "user", &caller.user_id))
}

/// `GET /me/activity`: the caller's activity, newest first.
pub fn list_activity(ctx: &mut Context) -> Result<Response, ApiError> {
    let limit = match ctx.query("limit") {
        None => ACTIVITY_DEFAULT_LIMIT,
        Some(text) => {
            text.parse::<i64>().ok().filter(|limit| (1..=ACTIVITY_MAX_LIMIT).contains(limit)).ok_or_else(|| {
                ApiError::validation(format!("limit must be a whole number from 1 to {ACTIVITY_MAX_LIMIT}"))
            })?
        }
    };
    let caller = ctx.caller()?;
    let db = ctx.db()?;

    let activity: Vec<Json> = sql::list_activity(db, &caller.user_id, limit)?.iter().map(activity_json).collect();
    Ok(Response::ok(&json!({ "activity": activity })))
}

// ---- profile and preferences ----

/// `GET /me/profile`: the caller's profile.
pub fn get_profile(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let db = ctx.db()?;
    Ok(Response::ok(&profile_json(&sql::find_profile(db, &caller.user_id)?)))
}

/// `PATCH /me/profile`: changes the named fields; null clears one.
pub fn update_profile(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: UpdateProfile = ctx.json()?;
    let mut patch = Patch::profile();
    let mut changed = Vec::new();
    if let Some(date) = body.date_of_birth {
        let now = micropay_sdk::now_micros();
        let date = date.map(|date| domain::birth_date(&date, now)).transpose()?;
        patch.set_cast("date_of_birth", "::date", opt_text(date));
        changed.push("date_of_birth");
    }
    if let Some(currency) = body.preferred_currency {
        patch.set("preferred_currency", opt_text(currency.map(|code| domain::currency(&code)).transpose()?));
        changed.push("preferred_currency");
    }
    // Limits are the columns' VARCHAR sizes.
    let texts = [
        ("address_line1", body.address_line1, 255),
        ("address_line2", body.address_line2, 255),
        ("city", body.city, 100),
        ("state", body.state, 100),
        ("country", body.country, 100),
        ("postal_code", body.postal_code, 20),
        ("timezone", body.timezone, 50),
        ("language", body.language, 10),
    ];
    for (column, value, max) in texts {
        if let Some(value) = value {
            patch.set(column, opt_text(fields::text(column, value.as_deref(), max)?));
            changed.push(column);
        }
    }
    let caller = ctx.caller()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let profile = patch.apply(db, &caller.user_id)?;
    let metadata = json!({ "fields": changed });
    record(db, &caller.user_id, Activity::ProfileUpdated, Some(&metadata), ip.as_deref())?;
    Ok(Response::ok(&profile_json(&profile)))
}

/// `GET /me/preferences`: the caller's notification and security preferences.
pub fn get_preferences(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    let db = ctx.db()?;
    Ok(Response::ok(&preferences_json(&sql::find_preferences(db, &caller.user_id)?)))
}

/// `PATCH /me/preferences`: changes the named preferences.
pub fn update_preferences(ctx: &mut Context) -> Result<Response, ApiError> {
    let body: UpdatePreferences = ctx.json()?;
    let mut patch = Patch::preferences();
    let mut changed = Vec::new();
    let flags = [
        ("email_notifications_enabled", body.email_notifications_enabled),
        ("sms_notifications_enabled", body.sms_notifications_enabled),
        ("push_notifications_enabled", body.push_notifications_enabled),
        ("marketing_emails_enabled", body.marketing_emails_enabled),
        ("two_factor_enabled", body.two_factor_enabled),
    ];
    for (column, value) in flags {
        if let Some(value) = value {
            patch.set(column, boolean(value));
            changed.push(column);
        }
    }
    let caller = ctx.caller()?;
    let ip = client_ip(ctx);
    let db = ctx.db()?;

    let preferences = patch.apply(db, &caller.user_id)?;
    let metadata = json!({ "fields": changed });
    record(db, &caller.user_id, Activity::PreferencesUpdated, Some(&metadata), ip.as_deref())?;
    publish_contact(db, &caller.user_id)?;
    Ok(Response::ok(&preferences_json(&preferences)))
}
