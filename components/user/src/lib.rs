//! The user service: sign-up, email and phone verification, profiles, preferences, sessions,
//! and the platform's authenticator, which turns a bearer token into a caller for every other
//! component.
//!
//! - `lib.rs`: the bindings of the `identity-service` world, the exports and the route table.
//! - [`routes`]: the endpoints.
//! - [`domain`]: the rules (validation, password hashing, tokens and verification codes).
//! - [`sql`]: the statements.

mod domain;
mod routes;
mod sql;

/// Bindings of the `identity-service` world, its imports mapped onto the sdk's.
mod bindings {
    micropay_sdk::world_bindings!("identity-service", "../../wit");
}

use bindings::exports::micropay::platform::{authenticator, handler};
use micropay_sdk::service::micropay::platform::http;
use micropay_sdk::{Access, Caller, Router};

struct UserService;

impl handler::Guest for UserService {
    fn handle(request: http::Request) -> http::Response {
        router().handle(request)
    }

    fn routes() -> Vec<http::Route> {
        router().routes()
    }
}

impl authenticator::Guest for UserService {
    fn authenticate(token: String) -> Option<Caller> {
        routes::authenticate(&token)
    }
}

bindings::export!(UserService with_types_in bindings);

/// The endpoints, mounted by the host under `/v1/user`.
fn router() -> Router {
    use Access::{Authenticated, Public};
    use routes::*;

    Router::new()
        .post("/users", "Signs up: creates an account and emails a verification code", Public, sign_up)
        .post("/verifications/email", "Verifies the email address with its code", Public, verify_email)
        .post("/verifications/email/resend", "Sends a new email verification code", Public, resend_email_code)
        .post("/password-resets", "Sends a code to choose a new password", Public, request_password_reset)
        .post("/password-resets/confirm", "Sets a new password with its code", Public, confirm_password_reset)
        .post("/sessions", "Logs in and issues a bearer token", Public, log_in)
        .get("/sessions", "Lists the caller's active sessions", Authenticated, list_sessions)
        // Before `/sessions/{session_id}`, which would match `current` too.
        .delete("/sessions/current", "Logs out: ends the caller's session", Authenticated, log_out)
        .delete("/sessions/{session_id}", "Revokes one of the caller's sessions", Authenticated, revoke_session)
        .get("/me", "Shows the caller's account", Authenticated, get_me)
        .patch("/me", "Changes the caller's names or phone number", Authenticated, update_me)
        .delete("/me", "Deletes the caller's account", Authenticated, delete_me)
        .post("/me/password", "Changes the caller's password", Authenticated, change_password)
        .post("/me/phone/verification", "Sends a phone verification code", Authenticated, request_phone_code)
        .post("/me/phone/verify", "Verifies the caller's phone number with its code", Authenticated, verify_phone)
        .get("/me/profile", "Shows the caller's profile", Authenticated, get_profile)
        .patch("/me/profile", "Changes the caller's profile", Authenticated, update_profile)
        .get("/me/preferences", "Shows the caller's preferences", Authenticated, get_preferences)
        .patch("/me/preferences", "Changes the caller's preferences", Authenticated, update_preferences)
        .get("/me/activity", "Lists the caller's account activity, newest first", Authenticated, list_activity)
}
