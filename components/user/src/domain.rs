//! The user service's rules: what a valid email, phone, password, name, currency or date is,
//! how passwords are hashed, and how session tokens and verification codes are made, kept and
//! checked.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, NaiveDate};
use micropay_sdk::contracts::{CodeIssued, CodePurpose, CodeSecret};
use micropay_sdk::{ApiError, Db};
use sha2::{Digest, Sha256};

use crate::sql;

/// How many guesses a verification code allows.
const MAX_CODE_ATTEMPTS: i64 = 5;

/// How many codes one address (an email address, a phone number) may be sent in an hour.
pub const MAX_CODES_PER_HOUR: i64 = 5;

/// How long a verification code is valid, as an SQL interval.
const CODE_TTL: &str = "15 minutes";

/// How long a session lasts, as an SQL interval.
pub const SESSION_TTL: &str = "24 hours";

/// Bounds of a password, in characters.
const PASSWORD_MIN: usize = 12;
const PASSWORD_MAX: usize = 128;

/// An argon2id hash (default parameters) of no known password: logging in with an unknown
/// email verifies against it, so that answer takes as long as a wrong password.
const DUMMY_PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ArqjzFYYNUh8CEE7s7imfg$EuVTd4rBAxTf8tF9AAShaZNFDYguDgW4XhQsk4DbNjM";

/// What a one-time code proves control of: the email address, the phone number, or (a reset
/// code, sent to the email address) the account whose password is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Phone,
    Reset,
}

impl Channel {
    /// The value stored in `user_verification_codes.channel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "EMAIL",
            Channel::Phone => "PHONE",
            Channel::Reset => "RESET",
        }
    }
}

/// The kinds of rows written to `user_activity_logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    SignedUp,
    EmailVerificationSent,
    EmailVerified,
    PhoneVerificationSent,
    PhoneVerified,
    LoggedIn,
    LoginFailed,
    LoggedOut,
    SessionRevoked,
    UserUpdated,
    ProfileUpdated,
    PreferencesUpdated,
    PasswordChanged,
    PasswordResetRequested,
    AccountDeleted,
}

impl Activity {
    /// The value stored in `activity_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::SignedUp => "SIGNED_UP",
            Activity::EmailVerificationSent => "EMAIL_VERIFICATION_SENT",
            Activity::EmailVerified => "EMAIL_VERIFIED",
            Activity::PhoneVerificationSent => "PHONE_VERIFICATION_SENT",
            Activity::PhoneVerified => "PHONE_VERIFIED",
            Activity::LoggedIn => "LOGGED_IN",
            Activity::LoginFailed => "LOGIN_FAILED",
            Activity::LoggedOut => "LOGGED_OUT",
            Activity::SessionRevoked => "SESSION_REVOKED",
            Activity::UserUpdated => "USER_UPDATED",
            Activity::ProfileUpdated => "PROFILE_UPDATED",
            Activity::PreferencesUpdated => "PREFERENCES_UPDATED",
            Activity::PasswordChanged => "PASSWORD_CHANGED",
            Activity::PasswordResetRequested => "PASSWORD_RESET_REQUESTED",
            Activity::AccountDeleted => "ACCOUNT_DELETED",
        }
    }

    /// The topic of the event published with it.
    pub fn topic(self) -> &'static str {
        match self {
            Activity::SignedUp => "user.registered",
            Activity::EmailVerificationSent => "user.email_verification_sent",
            Activity::EmailVerified => "user.verified",
            Activity::PhoneVerificationSent => "user.phone_verification_sent",
            Activity::PhoneVerified => "user.phone_verified",
            Activity::LoggedIn => "user.logged_in",
            Activity::LoginFailed => "user.login_failed",
            Activity::LoggedOut => "user.logged_out",
            Activity::SessionRevoked => "user.session_revoked",
            Activity::UserUpdated => "user.updated",
            Activity::ProfileUpdated => "user.profile_updated",
            Activity::PreferencesUpdated => "user.preferences_updated",
            Activity::PasswordChanged => "user.password_changed",
            Activity::PasswordResetRequested => "user.password_reset_requested",
            Activity::AccountDeleted => "user.deleted",
        }
    }

    /// The value stored in `activity_description`.
    pub fn description(self) -> &'static str {
        match self {
            Activity::SignedUp => "Account created",
            Activity::EmailVerificationSent => "Email verification code sent",
            Activity::EmailVerified => "Email address verified",
            Activity::PhoneVerificationSent => "Phone verification code sent",
            Activity::PhoneVerified => "Phone number verified",
            Activity::LoggedIn => "Logged in",
            Activity::LoginFailed => "Login failed: wrong password",
            Activity::LoggedOut => "Logged out",
            Activity::SessionRevoked => "Session revoked",
            Activity::UserUpdated => "Account details updated",
            Activity::ProfileUpdated => "Profile updated",
            Activity::PreferencesUpdated => "Preferences updated",
            Activity::PasswordChanged => "Password changed",
            Activity::PasswordResetRequested => "Password reset code sent",
            Activity::AccountDeleted => "Account deleted",
        }
    }
}

/// An email as it is looked up: trimmed and lower-cased, without checking its shape (a login
/// with a malformed email is simply an unknown one).
pub fn canonical_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// A valid email, trimmed and lower-cased, or 422 `invalid_email`.
pub fn email(raw: &str) -> Result<String, ApiError> {
    let email = canonical_email(raw);
    let invalid = || ApiError::new(422, "invalid_email", "email must be an address like name@example.com");
    if email.chars().count() > 255 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if local.is_empty() || !domain_ok {
        return Err(invalid());
    }
    Ok(email)
}

/// A phone number in E.164 form (`+` and 8 to 15 digits), trimmed, or 422 `invalid_phone`.
pub fn phone(raw: &str) -> Result<String, ApiError> {
    let phone = raw.trim();
    let valid = phone
        .strip_prefix('+')
        .is_some_and(|digits| (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        Ok(phone.to_string())
    } else {
        Err(ApiError::new(422, "invalid_phone", "phone_number must be in E.164 form, e.g. +14155550123"))
    }
}

/// Checks a new password: 12 to 128 characters with at least one letter and one digit, or 422
/// `weak_password`.
pub fn check_password_strength(password: &str) -> Result<(), ApiError> {
    let length = password.chars().count();
    let strong = (PASSWORD_MIN..=PASSWORD_MAX).contains(&length)
        && password.chars().any(char::is_alphabetic)
        && password.chars().any(|c| c.is_ascii_digit());
    if strong {
        Ok(())
    } else {
        Err(ApiError::new(
            422,
            "weak_password",
            format!(
                "password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters with at least one letter and one digit"
            ),
        ))
    }
}

/// A currency code: three upper-case letters (ISO 4217 shape), or 422 `validation_failed`.
pub fn currency(value: &str) -> Result<String, ApiError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value.to_string())
    } else {
        Err(ApiError::validation("preferred_currency must be three upper-case letters, e.g. USD"))
    }
}

/// A date of birth: `YYYY-MM-DD`, a real calendar date, not after today (UTC), or 422
/// `validation_failed`. Returned as the same text, which SQL casts to `DATE`.
pub fn birth_date(value: &str, now_micros: i64) -> Result<String, ApiError> {
    let invalid = || ApiError::validation("date_of_birth must be a past date in the form YYYY-MM-DD");
    let bytes = value.as_bytes();
    let shaped = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() });
    if !shaped {
        return Err(invalid());
    }
    // The shape check above makes these slices all digits.
    let number = |range: std::ops::Range<usize>| value[range].parse::<u32>().map_err(|_| invalid());
    let year = i32::try_from(number(0..4)?).map_err(|_| invalid())?;
    let date = NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?).ok_or_else(invalid)?;
    let today = DateTime::from_timestamp_micros(now_micros).ok_or_else(invalid)?.date_naive();
    if date > today {
        return Err(invalid());
    }
    Ok(value.to_string())
}

/// Hashes a password with argon2id (default parameters) into a PHC string; the salt comes
/// from the host's secure random generator.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::encode_b64(&micropay_sdk::random_bytes(16))
        .map_err(|err| ApiError::internal(&format!("salt encoding failed: {err}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| ApiError::internal(&format!("password hashing failed: {err}")))
}

/// Whether `password` matches a stored PHC hash.
pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash)
        .is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// Spends as long as [`verify_password`] for an email with no account, so the answer's timing
/// does not tell whether the email is registered.
pub fn verify_nothing(password: &str) {
    verify_password(password, DUMMY_PASSWORD_HASH);
}

/// Checks a login's `device_info`: absent, null or a JSON object whose text PostgreSQL's
/// `JSONB` accepts (no NUL characters), else 422 `validation_failed`.
pub fn device_info(value: Option<serde_json::Value>) -> Result<Option<serde_json::Value>, ApiError> {
    use serde_json::Value as Json;

    fn has_nul(value: &Json) -> bool {
        match value {
            Json::String(text) => text.contains('\0'),
            Json::Array(items) => items.iter().any(has_nul),
            Json::Object(map) => map.iter().any(|(key, item)| key.contains('\0') || has_nul(item)),
            _ => false,
        }
    }

    match value {
        None | Some(Json::Null) => Ok(None),
        Some(object @ Json::Object(_)) if !has_nul(&object) => Ok(Some(object)),
        Some(_) => Err(ApiError::validation("device_info must be a JSON object without NUL characters")),
    }
}

/// What tells a user's devices apart, hashed: the client's own `device_info.device_id` when it
/// sends one (an app's installation id), else its User-Agent. Stored only as this hash.
pub fn device_hash(device_info: Option<&serde_json::Value>, user_agent: Option<&str>) -> String {
    let device_id = device_info.and_then(|info| info.get("device_id")).and_then(|id| id.as_str());
    match (device_id, user_agent) {
        (Some(id), _) => sha256_hex(&format!("device:{id}")),
        (None, Some(agent)) => sha256_hex(&format!("agent:{agent}")),
        (None, None) => sha256_hex("unknown"),
    }
}

/// SHA-256 of `text`, as lower-case hex: how tokens and codes are stored.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A new session token: 32 random bytes as 64 hex characters.
pub fn new_session_token() -> String {
    hex::encode(micropay_sdk::random_bytes(32))
}

/// Whether `token` has the shape of a session token, so anything else is refused without a
/// query.
pub fn is_session_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Six random decimal digits, uniform: 32-bit draws at or above the largest multiple of a
/// million that fits are rejected, so no code is likelier than another.
fn new_code() -> String {
    const BOUND: u32 = u32::MAX - u32::MAX % 1_000_000;
    loop {
        let bytes = micropay_sdk::random_bytes(4);
        let draw = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if draw < BOUND {
            return format!("{:06}", draw % 1_000_000);
        }
    }
}

/// How a code is stored: bound to its user, so equal codes of two users differ.
fn code_hash(user_id: &str, code: &str) -> String {
    sha256_hex(&format!("{user_id}:{code}"))
}

/// Compares two hashes in time independent of where they differ.
fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts a request for a code sent to `address` on `channel`, or refuses it (429
/// `too_many_requests`) when the address had [`MAX_CODES_PER_HOUR`] in the last hour. Asked
/// for every request, whether or not the address belongs to an account, so that the answer
/// tells nothing of which do; a refusal is rolled back, so it does not count.
pub fn count_code_request(db: &Db, channel: Channel, address: &str) -> Result<(), ApiError> {
    let address_sha256 = sha256_hex(address);
    if sql::recent_code_requests(db, channel.as_str(), &address_sha256)? >= MAX_CODES_PER_HOUR {
        return Err(ApiError::new(
            429,
            "too_many_requests",
            format!("at most {MAX_CODES_PER_HOUR} codes an hour are sent to one address; try again later"),
        ));
    }
    sql::insert_code_request(db, channel.as_str(), &address_sha256)?;
    Ok(())
}

/// Issues a verification code for `channel`, replacing any outstanding one, and has it
/// delivered to `destination`: event `user.code_issued`, the code in its `secret` (the
/// notification service sends it; the audit trail keeps the event redacted).
pub fn issue_code(db: &Db, user_id: &str, channel: Channel, destination: &str) -> Result<(), ApiError> {
    sql::consume_open_codes(db, user_id, channel.as_str())?;
    let code = new_code();
    let expires_at = sql::insert_code(db, user_id, channel.as_str(), &code_hash(user_id, &code), CODE_TTL)?;
    let purpose = match channel {
        Channel::Email => CodePurpose::VerifyEmail,
        Channel::Phone => CodePurpose::VerifyPhone,
        Channel::Reset => CodePurpose::ResetPassword,
    };
    // A development host (`--dev-log-secrets`) also logs it; any other drops this line.
    let channel = channel.as_str();
    micropay_sdk::log_development_secret(&format!("verification code for {channel} of user {user_id}: {code}"));
    let issued = CodeIssued {
        user_id: user_id.to_string(),
        purpose,
        destination: destination.to_string(),
        expires_at,
        secret: CodeSecret { code },
    };
    let data = serde_json::to_value(&issued).expect("a contract serialises");
    micropay_sdk::events::publish("user.code_issued", user_id, &data)?;
    Ok(())
}

/// Checks a code against the user's outstanding code for `channel` and consumes it when it
/// matches. Every check counts as an attempt, so the caller must keep the count (commit on
/// error) when it refuses.
pub fn redeem_code(db: &Db, user_id: &str, channel: Channel, code: &str) -> Result<bool, ApiError> {
    let Some(open) = sql::open_code(db, user_id, channel.as_str())? else {
        return Ok(false);
    };
    let code_id = open.text("code_id");
    sql::count_code_attempt(db, &code_id)?;
    let accepted = open.bool("live")
        && open.int("attempts") < MAX_CODE_ATTEMPTS
        && same_hash(&open.text("code_hash"), &code_hash(user_id, code.trim()));
    if accepted {
        sql::consume_code(db, &code_id)?;
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(email("  Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in ["", "ann", "@example.com", "ann@example", "a@b@c.com", "ann@exa mple.com", "ann@.com"] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        assert!(phone("+14155550123").is_ok());
        for bad in ["14155550123", "+1234567", "+1234567890123456", "+1415555012a"] {
            assert!(phone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(check_password_strength("correct horse 1").is_ok());
        for weak in ["short1", "onlyletterslong", "123456789012"] {
            assert!(check_password_strength(weak).is_err(), "{weak}");
        }
    }

    #[test]
    fn dates() {
        let now = 1_800_000_000_000_000; // 2027-01-15
        assert!(birth_date("1990-02-28", now).is_ok());
        for bad in ["1990-02-30", "1990-2-28", "2030-01-01", "19900228xx"] {
            assert!(birth_date(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_hashes() {
        let salt = SaltString::encode_b64(&[7; 16]).unwrap();
        let hash = Argon2::default().hash_password(b"correct horse 1", &salt).unwrap().to_string();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse 1", &hash));
        assert!(!verify_password("correct horse 2", &hash));
        assert!(!verify_password("anything", "not a hash"));
        // The dummy must parse, or an unknown email would answer faster than a wrong password.
        assert!(PasswordHash::new(DUMMY_PASSWORD_HASH).is_ok());
    }

    #[test]
    fn hashes_and_tokens() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(same_hash("ab", "ab") && !same_hash("ab", "ac") && !same_hash("ab", "abc"));
        assert!(is_session_token(&"a1".repeat(32)));
        assert!(!is_session_token("a1") && !is_session_token(&"zz".repeat(32)));
    }

    #[test]
    fn devices_are_told_apart_by_their_id_then_their_agent() {
        let info = serde_json::json!({ "device_id": "install-1", "os": "ios" });
        assert_eq!(device_hash(Some(&info), Some("A")), device_hash(Some(&info), Some("B")));
        assert_ne!(device_hash(Some(&info), None), device_hash(None, Some("install-1")));
        assert_ne!(device_hash(None, Some("A")), device_hash(None, Some("B")));
        assert_eq!(device_hash(Some(&serde_json::json!({ "os": "ios" })), Some("A")), device_hash(None, Some("A")));
        assert_eq!(device_hash(None, None).len(), 64);
    }

    #[test]
    fn device_infos() {
        assert_eq!(device_info(None).unwrap(), None);
        assert_eq!(device_info(Some(serde_json::Value::Null)).unwrap(), None);
        assert!(device_info(Some(serde_json::json!({ "os": "linux" }))).unwrap().is_some());
        assert!(device_info(Some(serde_json::json!("linux"))).is_err());
        assert!(device_info(Some(serde_json::json!({ "os": "a\0b" }))).is_err());
    }

    #[test]
    fn uuids() {}
}
