//! The user service end to end, over HTTP, on a real PostgreSQL.

use micropay_tests::{TestHost, error_code, signed_in_user, verification_code};
use serde_json::json;

#[tokio::test]
async fn sign_up_verify_log_in_profile_preferences_log_out() {
    let mut host = TestHost::start().await;
    let email = "Ada.Lovelace@Example.com";
    let password = "analytical engine 1843";

    let (status, user) = host
        .call("POST", "/v1/user/users", None, Some(json!({"email": email, "password": password, "first_name": "Ada"})))
        .await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(user["email"], "ada.lovelace@example.com");
    assert_eq!(user["status"], "PENDING_VERIFICATION");
    assert!(user.get("password_hash").is_none());
    let user_id = user["user_id"].as_str().unwrap().to_string();

    // Not verified yet: no session.
    let (status, body) =
        host.call("POST", "/v1/user/sessions", None, Some(json!({"email": email, "password": password}))).await;
    assert_eq!((status, error_code(&body)), (403, "email_not_verified"));

    let code = verification_code(&mut host, "EMAIL", &user_id).await;
    let (status, body) =
        host.call("POST", "/v1/user/verifications/email", None, Some(json!({"email": email, "code": "000000"}))).await;
    if code != "000000" {
        assert_eq!((status, error_code(&body)), (422, "invalid_code"));
    }
    let (status, verified) =
        host.call("POST", "/v1/user/verifications/email", None, Some(json!({"email": email, "code": code}))).await;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["status"], "ACTIVE");
    assert_eq!(verified["email_verified"], true);

    let (status, session) = host
        .call(
            "POST",
            "/v1/user/sessions",
            None,
            Some(json!({"email": email, "password": password, "device_info": {"os": "linux"}})),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    let token = session["token"].as_str().unwrap().to_string();

    // Only the token's hash is stored.
    let mut db = host.admin_db("user").await;
    let (stored,): (String,) = sqlx::query_as("SELECT token_hash FROM user_sessions WHERE user_id = $1::uuid")
        .bind(&user_id)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_ne!(stored, token);
    assert_eq!(stored.len(), 64);

    let (status, me) = host.call("GET", "/v1/user/me", Some(&token), None).await;
    assert_eq!((status, me["user_id"].as_str()), (200, Some(user_id.as_str())));
    assert!(me["last_login_at"].is_string());

    let (status, profile) = host.call("GET", "/v1/user/me/profile", Some(&token), None).await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!((profile["preferred_currency"].as_str(), profile["timezone"].as_str()), (Some("USD"), Some("UTC")));
    let (status, profile) = host
        .call(
            "PATCH",
            "/v1/user/me/profile",
            Some(&token),
            Some(json!({"city": "London", "date_of_birth": "1815-12-10"})),
        )
        .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!((profile["city"].as_str(), profile["date_of_birth"].as_str()), (Some("London"), Some("1815-12-10")));

    let (status, preferences) = host.call("GET", "/v1/user/me/preferences", Some(&token), None).await;
    assert_eq!((status, &preferences["marketing_emails_enabled"]), (200, &json!(false)));
    let (status, preferences) = host
        .call("PATCH", "/v1/user/me/preferences", Some(&token), Some(json!({"marketing_emails_enabled": true})))
        .await;
    assert_eq!((status, &preferences["marketing_emails_enabled"]), (200, &json!(true)));

    let (status, sessions) = host.call("GET", "/v1/user/sessions", Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);

    let (status, _) = host.call("DELETE", "/v1/user/sessions/current", Some(&token), None).await;
    assert_eq!(status, 204);
    let (status, body) = host.call("GET", "/v1/user/me", Some(&token), None).await;
    assert_eq!((status, error_code(&body)), (401, "invalid_token"));

    // Every step left an activity row.
    let activity: Vec<(String,)> =
        sqlx::query_as("SELECT activity_type FROM user_activity_logs WHERE user_id = $1::uuid ORDER BY created_at")
            .bind(&user_id)
            .fetch_all(&mut db)
            .await
            .unwrap();
    let kinds: Vec<&str> = activity.iter().map(|(kind,)| kind.as_str()).collect();
    for expected in ["SIGNED_UP", "EMAIL_VERIFIED", "LOGGED_IN", "PROFILE_UPDATED", "PREFERENCES_UPDATED", "LOGGED_OUT"]
    {
        assert!(kinds.contains(&expected), "no {expected} in {kinds:?}");
    }
}

#[tokio::test]
async fn expired_session_wrong_password_duplicate_email() {
    let mut host = TestHost::start().await;
    let user = signed_in_user(&mut host).await;

    // An expired session is refused.
    let mut db = host.admin_db("user").await;
    sqlx::query("UPDATE user_sessions SET expires_at = now() - interval '1 minute' WHERE user_id = $1::uuid")
        .bind(&user.user_id)
        .execute(&mut db)
        .await
        .unwrap();
    let (status, body) = host.call("GET", "/v1/user/me", Some(&user.token), None).await;
    assert_eq!((status, error_code(&body)), (401, "invalid_token"));

    // A wrong password is refused, and the attempt is recorded.
    let (status, body) = host
        .call("POST", "/v1/user/sessions", None, Some(json!({"email": user.email, "password": "not the password 1"})))
        .await;
    assert_eq!((status, error_code(&body)), (401, "invalid_credentials"));
    let (failed,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM user_activity_logs WHERE user_id = $1::uuid AND activity_type = 'LOGIN_FAILED'",
    )
    .bind(&user.user_id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(failed, 1);

    // An unknown email gets the same answer.
    let (status, body) = host
        .call(
            "POST",
            "/v1/user/sessions",
            None,
            Some(json!({"email": "nobody@example.com", "password": "whatever 12345"})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (401, "invalid_credentials"));

    // The same email twice, in any case.
    let (status, body) = host
        .call(
            "POST",
            "/v1/user/users",
            None,
            Some(json!({"email": user.email.to_uppercase(), "password": user.password})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "email_taken"));
    let (users,): (i64,) = sqlx::query_as("SELECT count(*) FROM users").fetch_one(&mut db).await.unwrap();
    assert_eq!(users, 1);
}

#[tokio::test]
async fn password_change_sessions_and_soft_delete() {
    let mut host = TestHost::start().await;
    let user = signed_in_user(&mut host).await;
    let (status, second) = host
        .call("POST", "/v1/user/sessions", None, Some(json!({"email": user.email, "password": user.password})))
        .await;
    assert_eq!(status, 201);
    let second_token = second["token"].as_str().unwrap();

    // Revoking another user's (or an unknown) session is a 404.
    let (status, _) =
        host.call("DELETE", &format!("/v1/user/sessions/{}", uuid::Uuid::new_v4()), Some(&user.token), None).await;
    assert_eq!(status, 404);

    // A password change ends every other session.
    let (status, body) = host
        .call(
            "POST",
            "/v1/user/me/password",
            Some(&user.token),
            Some(json!({"current_password": "wrong one 123", "new_password": "another long one 99"})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (403, "invalid_password"));
    let (status, _) = host
        .call(
            "POST",
            "/v1/user/me/password",
            Some(&user.token),
            Some(json!({"current_password": user.password, "new_password": "another long one 99"})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = host.call("GET", "/v1/user/me", Some(second_token), None).await;
    assert_eq!(status, 401);
    let (status, _) = host.call("GET", "/v1/user/me", Some(&user.token), None).await;
    assert_eq!(status, 200);
    let (status, _) = host
        .call("POST", "/v1/user/sessions", None, Some(json!({"email": user.email, "password": "another long one 99"})))
        .await;
    assert_eq!(status, 201);

    // Soft delete: the row stays, marked; sessions end; no more log-ins.
    let (status, _) = host.call("DELETE", "/v1/user/me", Some(&user.token), None).await;
    assert_eq!(status, 204);
    let (status, _) = host.call("GET", "/v1/user/me", Some(&user.token), None).await;
    assert_eq!(status, 401);
    let (status, _) = host
        .call("POST", "/v1/user/sessions", None, Some(json!({"email": user.email, "password": "another long one 99"})))
        .await;
    assert_eq!(status, 401);
    let mut db = host.admin_db("user").await;
    let (deleted,): (bool,) = sqlx::query_as("SELECT deleted_at IS NOT NULL FROM users WHERE user_id = $1::uuid")
        .bind(&user.user_id)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(deleted);
}

#[tokio::test]
async fn phone_verification() {
    let mut host = TestHost::start().await;
    let user = signed_in_user(&mut host).await;

    let (status, body) = host.call("POST", "/v1/user/me/phone/verification", Some(&user.token), None).await;
    assert_eq!((status, error_code(&body)), (409, "no_phone"));
    let (status, me) =
        host.call("PATCH", "/v1/user/me", Some(&user.token), Some(json!({"phone_number": "+447700900123"}))).await;
    assert_eq!((status, me["phone_verified"].as_bool()), (200, Some(false)), "{me}");

    let (status, _) = host.call("POST", "/v1/user/me/phone/verification", Some(&user.token), None).await;
    assert_eq!(status, 202);
    let code = verification_code(&mut host, "PHONE", &user.user_id).await;
    let (status, me) =
        host.call("POST", "/v1/user/me/phone/verify", Some(&user.token), Some(json!({"code": code}))).await;
    assert_eq!((status, me["phone_verified"].as_bool()), (200, Some(true)), "{me}");

    // Another account cannot take the number.
    let other = signed_in_user(&mut host).await;
    let (status, body) =
        host.call("PATCH", "/v1/user/me", Some(&other.token), Some(json!({"phone_number": "+447700900123"}))).await;
    assert_eq!((status, error_code(&body)), (409, "phone_taken"));
}

/// A request's token is resolved once and then cached by the host for a few seconds: ending
/// the session (logout, revocation, a password change) must still refuse it at once, on the
/// host that ended it and on every other.
#[tokio::test]
async fn an_ended_session_is_refused_at_once_on_every_host() {
    let mut first = TestHost::start().await;
    let second = TestHost::start_with(first.options.clone()).await;
    let user = signed_in_user(&mut first).await;
    let login = json!({"email": user.email, "password": user.password});
    let (_, other) = first.call("POST", "/v1/user/sessions", None, Some(login.clone())).await;
    let other_token = other["token"].as_str().unwrap().to_string();
    let (_, third) = first.call("POST", "/v1/user/sessions", None, Some(login)).await;
    let (third_token, third_session) = (third["token"].as_str().unwrap(), third["session_id"].as_str().unwrap());

    // Every token resolved, and so cached, on both hosts.
    for host in [&first, &second] {
        for token in [user.token.as_str(), &other_token, third_token] {
            assert_eq!(host.call("GET", "/v1/user/me", Some(token), None).await.0, 200);
        }
    }
    // The identity provider's own unit of work resolves no token while cached: no session's
    // last activity moves.
    let mut db = first.admin_db("user").await;
    let activity = "SELECT max(last_activity_at)::text FROM user_sessions WHERE user_id = $1::uuid";
    let before: String = sqlx::query_scalar(activity).bind(&user.user_id).fetch_one(&mut db).await.unwrap();
    for _ in 0..5 {
        assert_eq!(second.call("GET", "/v1/user/me", Some(&user.token), None).await.0, 200);
    }
    let after: String = sqlx::query_scalar(activity).bind(&user.user_id).fetch_one(&mut db).await.unwrap();
    assert_eq!(before, after);

    // Revoked on the first host: refused there at once, and on the second as soon as it hears.
    let path = format!("/v1/user/sessions/{third_session}");
    assert_eq!(first.call("DELETE", &path, Some(&user.token), None).await.0, 204);
    assert_eq!(first.call("GET", "/v1/user/me", Some(third_token), None).await.0, 401);
    refused_soon(&second, third_token).await;

    // A password change on the second host ends the other sessions everywhere.
    let change = json!({"current_password": user.password, "new_password": "another long one 99"});
    assert_eq!(second.call("POST", "/v1/user/me/password", Some(&user.token), Some(change)).await.0, 204);
    assert_eq!(second.call("GET", "/v1/user/me", Some(&other_token), None).await.0, 401);
    refused_soon(&first, &other_token).await;
    assert_eq!(first.call("GET", "/v1/user/me", Some(&user.token), None).await.0, 200);

    // Logged out on the first: refused on both.
    assert_eq!(first.call("DELETE", "/v1/user/sessions/current", Some(&user.token), None).await.0, 204);
    assert_eq!(first.call("GET", "/v1/user/me", Some(&user.token), None).await.0, 401);
    refused_soon(&second, &user.token).await;
}

/// Asserts that `host` refuses `token` within half a second: far sooner than its cache of
/// resolved tokens would lapse by itself.
async fn refused_soon(host: &TestHost, token: &str) {
    let started = std::time::Instant::now();
    loop {
        let (status, _) = host.call("GET", "/v1/user/me", Some(token), None).await;
        if status == 401 {
            return;
        }
        assert_eq!(status, 200);
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "the ended session still works");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
