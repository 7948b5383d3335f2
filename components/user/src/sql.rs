//! The user service's SQL, against the tables of `migrations/user/`.
//!
//! Timestamps are set with the database's `now()` (UTC for the service's role), so one unit of
//! work stamps every row it writes with the same instant.

use micropay_sdk::db::DbError;
use micropay_sdk::db::param::{int, json, opt_text, text, uuid};
use micropay_sdk::{Db, Row, Value};

use crate::domain::Activity;

/// The unique constraint on `users.email` (PostgreSQL's default name).
pub const EMAIL_KEY: &str = "users_email_key";
/// The unique constraint on `users.phone_number` (PostgreSQL's default name).
pub const PHONE_KEY: &str = "users_phone_number_key";

/// The columns of a user as the API shows it. The flags are nullable in the schema; NULL
/// means not verified.
macro_rules! user_columns {
    () => {
        "user_id, email, phone_number, first_name, last_name, status, \
         COALESCE(email_verified, FALSE) AS email_verified, \
         COALESCE(phone_verified, FALSE) AS phone_verified, \
         kyc_status, created_at, updated_at, last_login_at"
    };
}

/// The columns of a profile; the date comes back as text, since dates are exchanged as text.
macro_rules! profile_columns {
    () => {
        "profile_id, user_id, to_char(date_of_birth, 'YYYY-MM-DD') AS date_of_birth, \
         address_line1, address_line2, city, state, country, postal_code, \
         preferred_currency, timezone, language, created_at, updated_at"
    };
}

/// The columns of a preferences row.
macro_rules! preferences_columns {
    () => {
        "preference_id, user_id, email_notifications_enabled, sms_notifications_enabled, \
         push_notifications_enabled, marketing_emails_enabled, two_factor_enabled, \
         created_at, updated_at"
    };
}

// ---- users ----

/// Inserts a new user and returns it.
pub fn insert_user(
    db: &Db,
    email: &str,
    phone_number: Option<&str>,
    password_hash: &str,
    first_name: Option<&str>,
    last_name: Option<&str>,
) -> Result<Row, DbError> {
    db.query_one(
        concat!(
            "INSERT INTO users (email, phone_number, password_hash, first_name, last_name) \
             VALUES ($1, $2, $3, $4, $5) RETURNING ",
            user_columns!()
        ),
        &[text(email), opt_text(phone_number), text(password_hash), opt_text(first_name), opt_text(last_name)],
    )
}

/// Creates a new user's profile and preferences with the schema's defaults.
pub fn insert_user_settings(db: &Db, user_id: &str) -> Result<(), DbError> {
    db.execute("INSERT INTO user_profiles (user_id) VALUES ($1)", &[uuid(user_id)])?;
    db.execute("INSERT INTO user_preferences (user_id) VALUES ($1)", &[uuid(user_id)])?;
    Ok(())
}

/// A user that is not deleted, by email, with its password hash.
pub fn find_user_by_email(db: &Db, email: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", user_columns!(), ", password_hash FROM users WHERE email = $1 AND deleted_at IS NULL"),
        &[text(email)],
    )
}

/// A user that is not deleted, by id, with its password hash.
pub fn find_user(db: &Db, user_id: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        concat!("SELECT ", user_columns!(), ", password_hash FROM users WHERE user_id = $1 AND deleted_at IS NULL"),
        &[uuid(user_id)],
    )
}

/// Marks the email verified and activates an account that was waiting for it.
pub fn mark_email_verified(db: &Db, user_id: &str) -> Result<Row, DbError> {
    db.query_one(
        concat!(
            "UPDATE users SET email_verified = TRUE, updated_at = now(), \
             status = CASE WHEN status = 'PENDING_VERIFICATION' THEN 'ACTIVE' ELSE status END \
             WHERE user_id = $1 RETURNING ",
            user_columns!()
        ),
        &[uuid(user_id)],
    )
}

/// Marks the phone number verified.
pub fn mark_phone_verified(db: &Db, user_id: &str) -> Result<Row, DbError> {
    db.query_one(
        concat!(
            "UPDATE users SET phone_verified = TRUE, updated_at = now() WHERE user_id = $1 RETURNING ",
            user_columns!()
        ),
        &[uuid(user_id)],
    )
}

/// Stamps a successful login and returns the user.
pub fn record_login(db: &Db, user_id: &str) -> Result<Row, DbError> {
    db.query_one(
        concat!("UPDATE users SET last_login_at = now() WHERE user_id = $1 RETURNING ", user_columns!()),
        &[uuid(user_id)],
    )
}

/// Records that `user_id` logged in from the device `device_hash` and says whether that is a
/// new device: one the user never logged in from, while they have logged in from another
/// (their first device is not news). One statement: the count is read as the unit of work
/// found the table, before the upsert.
pub fn seen_device(db: &Db, user_id: &str, device_hash: &str) -> Result<bool, DbError> {
    let row = db.query_one(
        "WITH before AS (              SELECT count(*) AS devices, count(*) FILTER (WHERE device_hash = $2) AS this              FROM user_devices WHERE user_id = $1          ), seen AS (              INSERT INTO user_devices (user_id, device_hash) VALUES ($1, $2)              ON CONFLICT (user_id, device_hash) DO UPDATE SET last_seen_at = now()          )          SELECT devices > 0 AND this = 0 AS new_device FROM before",
        &[uuid(user_id), text(device_hash)],
    )?;
    Ok(row.bool("new_device"))
}

/// Replaces the password hash.
pub fn set_password_hash(db: &Db, user_id: &str, password_hash: &str) -> Result<(), DbError> {
    db.execute(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE user_id = $1",
        &[uuid(user_id), text(password_hash)],
    )?;
    Ok(())
}

/// Soft-deletes a user: the row stays (activity logs refer to it) but is never found again.
pub fn soft_delete_user(db: &Db, user_id: &str) -> Result<(), DbError> {
    db.execute(
        "UPDATE users SET deleted_at = now(), status = 'DELETED', updated_at = now() WHERE user_id = $1",
        &[uuid(user_id)],
    )?;
    Ok(())
}

// ---- profiles and preferences ----

/// The user's profile.
pub fn find_profile(db: &Db, user_id: &str) -> Result<Row, DbError> {
    db.query_one(concat!("SELECT ", profile_columns!(), " FROM user_profiles WHERE user_id = $1"), &[uuid(user_id)])
}

/// The user's preferences.
pub fn find_preferences(db: &Db, user_id: &str) -> Result<Row, DbError> {
    db.query_one(
        concat!("SELECT ", preferences_columns!(), " FROM user_preferences WHERE user_id = $1"),
        &[uuid(user_id)],
    )
}

/// A partial update of one user's row in one table: only the columns a request names are set,
/// and `updated_at` always is.
pub struct Patch {
    table: &'static str,
    returning: &'static str,
    assignments: Vec<String>,
    params: Vec<Value>,
}

impl Patch {
    fn new(table: &'static str, returning: &'static str) -> Self {
        Self { table, returning, assignments: Vec::new(), params: Vec::new() }
    }

    /// An update of `users`, returning the user.
    pub fn user() -> Self {
        Self::new("users", user_columns!())
    }

    /// An update of `user_profiles`, returning the profile.
    pub fn profile() -> Self {
        Self::new("user_profiles", profile_columns!())
    }

    /// An update of `user_preferences`, returning the preferences.
    pub fn preferences() -> Self {
        Self::new("user_preferences", preferences_columns!())
    }

    /// Sets `column` (a name from this module's callers, never from input) to `value`.
    pub fn set(&mut self, column: &'static str, value: Value) {
        self.set_cast(column, "", value);
    }

    /// Sets `column` to `value` cast in SQL (`"::date"` for a date sent as text).
    pub fn set_cast(&mut self, column: &'static str, cast: &'static str, value: Value) {
        self.params.push(value);
        self.assignments.push(format!("{column} = ${}{cast}", self.params.len()));
    }

    /// Runs the update for `user_id` and returns the row as it is now.
    pub fn apply(mut self, db: &Db, user_id: &str) -> Result<Row, DbError> {
        self.assignments.push("updated_at = now()".to_string());
        self.params.push(uuid(user_id));
        let sql = format!(
            "UPDATE {} SET {} WHERE user_id = ${} RETURNING {}",
            self.table,
            self.assignments.join(", "),
            self.params.len(),
            self.returning
        );
        db.query_one(&sql, &self.params)
    }
}

// ---- verification codes ----

/// Consumes the user's outstanding codes for a channel, so only the newest one is valid.
pub fn consume_open_codes(db: &Db, user_id: &str, channel: &str) -> Result<(), DbError> {
    db.execute(
        "UPDATE user_verification_codes SET consumed_at = now() \
         WHERE user_id = $1 AND channel = $2 AND consumed_at IS NULL",
        &[uuid(user_id), text(channel)],
    )?;
    Ok(())
}

/// Counts the code requests for an address in the last hour, after taking the address's turn
/// (concurrent requests for one address count one by one) and forgetting older ones.
pub fn recent_code_requests(db: &Db, channel: &str, address_sha256: &str) -> Result<i64, DbError> {
    db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[text(address_sha256)])?;
    db.execute(
        "DELETE FROM user_code_requests \
         WHERE channel = $1 AND address_sha256 = $2 AND requested_at < now() - interval '1 hour'",
        &[text(channel), text(address_sha256)],
    )?;
    let row = db.query_one(
        "SELECT count(*) AS n FROM user_code_requests WHERE channel = $1 AND address_sha256 = $2",
        &[text(channel), text(address_sha256)],
    )?;
    Ok(row.int("n"))
}

/// Records a code request for an address.
pub fn insert_code_request(db: &Db, channel: &str, address_sha256: &str) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO user_code_requests (channel, address_sha256) VALUES ($1, $2)",
        &[text(channel), text(address_sha256)],
    )?;
    Ok(())
}

/// Stores a new code's hash, valid for `ttl` (an SQL interval such as `15 minutes`), and
/// returns when it expires (RFC 3339).
pub fn insert_code(db: &Db, user_id: &str, channel: &str, code_hash: &str, ttl: &str) -> Result<String, DbError> {
    let row = db.query_one(
        "INSERT INTO user_verification_codes (user_id, channel, code_hash, expires_at) \
         VALUES ($1, $2, $3, now() + $4::interval) RETURNING expires_at",
        &[uuid(user_id), text(channel), text(code_hash), text(ttl)],
    )?;
    Ok(row.rfc3339("expires_at"))
}

/// How to reach a user and what they agreed to receive (event `user.contact_changed`).
pub fn contact(db: &Db, user_id: &str) -> Result<Row, DbError> {
    db.query_one(
        "SELECT u.user_id, u.email, u.phone_number, \
                COALESCE(u.email_verified, FALSE) AS email_verified, \
                COALESCE(u.phone_verified, FALSE) AS phone_verified, \
                COALESCE(p.email_notifications_enabled, TRUE) AS email_notifications_enabled, \
                COALESCE(p.sms_notifications_enabled, TRUE) AS sms_notifications_enabled, \
                COALESCE(p.push_notifications_enabled, TRUE) AS push_notifications_enabled \
         FROM users u LEFT JOIN user_preferences p USING (user_id) WHERE u.user_id = $1",
        &[uuid(user_id)],
    )
}

/// The user's outstanding code for a channel, locked so concurrent guesses count one by one;
/// `live` tells whether it has not expired.
pub fn open_code(db: &Db, user_id: &str, channel: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        "SELECT code_id, code_hash, attempts, expires_at > now() AS live FROM user_verification_codes \
         WHERE user_id = $1 AND channel = $2 AND consumed_at IS NULL \
         ORDER BY created_at DESC LIMIT 1 FOR UPDATE",
        &[uuid(user_id), text(channel)],
    )
}

/// Counts one guess against a code.
pub fn count_code_attempt(db: &Db, code_id: &str) -> Result<(), DbError> {
    db.execute("UPDATE user_verification_codes SET attempts = attempts + 1 WHERE code_id = $1", &[uuid(code_id)])?;
    Ok(())
}

/// Marks a code used.
pub fn consume_code(db: &Db, code_id: &str) -> Result<(), DbError> {
    db.execute("UPDATE user_verification_codes SET consumed_at = now() WHERE code_id = $1", &[uuid(code_id)])?;
    Ok(())
}

// ---- sessions ----

/// A new session's request details.
pub struct NewSession<'a> {
    pub user_id: &'a str,
    pub token_hash: &'a str,
    pub device_info: Option<&'a serde_json::Value>,
    pub ip_address: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// How long the session lasts, as an SQL interval such as `24 hours`.
    pub ttl: &'a str,
}

/// Stores a session and returns its `session_id` and `expires_at`.
pub fn insert_session(db: &Db, session: &NewSession) -> Result<Row, DbError> {
    db.query_one(
        "INSERT INTO user_sessions (user_id, token_hash, device_info, ip_address, user_agent, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + $6::interval) RETURNING session_id, expires_at",
        &[
            uuid(session.user_id),
            text(session.token_hash),
            session.device_info.map_or(Value::Null, json),
            opt_text(session.ip_address),
            opt_text(session.user_agent),
            text(session.ttl),
        ],
    )
}

/// The user's unexpired sessions, newest first.
pub fn list_sessions(db: &Db, user_id: &str) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT session_id, device_info, ip_address, user_agent, created_at, last_activity_at, expires_at \
         FROM user_sessions WHERE user_id = $1 AND expires_at > now() \
         ORDER BY created_at DESC, session_id",
        &[uuid(user_id)],
    )
}

/// Deletes one of the user's sessions; returns how many rows went (0 or 1).
pub fn delete_session(db: &Db, user_id: &str, session_id: &str) -> Result<u64, DbError> {
    db.execute("DELETE FROM user_sessions WHERE session_id = $1 AND user_id = $2", &[uuid(session_id), uuid(user_id)])
}

/// Deletes all the user's sessions but `keep`; returns how many went.
pub fn delete_other_sessions(db: &Db, user_id: &str, keep: &str) -> Result<u64, DbError> {
    db.execute("DELETE FROM user_sessions WHERE user_id = $1 AND session_id <> $2", &[uuid(user_id), uuid(keep)])
}

/// Deletes all the user's sessions.
pub fn delete_sessions(db: &Db, user_id: &str) -> Result<u64, DbError> {
    db.execute("DELETE FROM user_sessions WHERE user_id = $1", &[uuid(user_id)])
}

/// The unexpired session of a live user with this token hash: `session_id`, `user_id`.
pub fn find_session_by_token(db: &Db, token_hash: &str) -> Result<Option<Row>, DbError> {
    db.query_opt(
        "SELECT s.session_id, s.user_id FROM user_sessions s JOIN users u ON u.user_id = s.user_id \
         WHERE s.token_hash = $1 AND s.expires_at > now() AND u.deleted_at IS NULL",
        &[text(token_hash)],
    )
}

/// Records activity on a session, at most once a minute so authentication stays a read in the
/// common case.
pub fn touch_session(db: &Db, session_id: &str) -> Result<(), DbError> {
    db.execute(
        "UPDATE user_sessions SET last_activity_at = now() \
         WHERE session_id = $1 AND last_activity_at < now() - interval '60 seconds'",
        &[uuid(session_id)],
    )?;
    Ok(())
}

// ---- activity ----

/// Appends a row to the user's activity log.
pub fn log_activity(
    db: &Db,
    user_id: &str,
    activity: Activity,
    metadata: Option<&serde_json::Value>,
    ip_address: Option<&str>,
) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO user_activity_logs (user_id, activity_type, activity_description, metadata, ip_address) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            uuid(user_id),
            text(activity.as_str()),
            text(activity.description()),
            metadata.map_or(Value::Null, json),
            opt_text(ip_address),
        ],
    )?;
    Ok(())
}

/// The user's latest activity rows, newest first.
pub fn list_activity(db: &Db, user_id: &str, limit: i64) -> Result<Vec<Row>, DbError> {
    db.query(
        "SELECT log_id, activity_type, activity_description, metadata, ip_address, created_at \
         FROM user_activity_logs WHERE user_id = $1 ORDER BY created_at DESC, log_id LIMIT $2",
        &[uuid(user_id), int(limit)],
    )
}
