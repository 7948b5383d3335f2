//! Secrets stay secret: no verification code, token, key or role password in any log line at
//! any level; codes cannot be asked for without end; the installation's secret does not depend
//! on how a host names the server; a request id a client chose cannot break anything.

use std::time::Duration;

use micropay_tests::{HostOptions, TestHost, error_code};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Connection;

/// Everything at trace level but the compiler's own chatter.
const EVERY_LEVEL: &str = "trace,cranelift_codegen=info,cranelift_frontend=info,regalloc2=info,\
                           wasmtime_cranelift=info,wasmtime=info,cranelift_entity=info";

/// The code whose SHA-256 (bound to the user, as the user service keeps it) is `hash`, found by
/// trying all of them: the test knows no other way to the codes, which is the point.
fn code_of(user_id: &str, hash: &str) -> String {
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|code| hex::encode(Sha256::digest(format!("{user_id}:{code}"))) == hash)
        .expect("a six-digit code")
}

/// The hashes of every code issued to `user_id`, oldest first.
async fn code_hashes(host: &TestHost, user_id: &str) -> Vec<String> {
    let mut db = host.admin_db("user").await;
    sqlx::query_scalar(
        "SELECT code_hash FROM user_verification_codes WHERE user_id = $1::uuid ORDER BY created_at, code_id",
    )
    .bind(user_id)
    .fetch_all(&mut db)
    .await
    .unwrap()
}

/// Whether `needle` stands in `log` as a token of its own (not inside a longer run of letters
/// and digits), leaving out each line's leading time stamp.
fn logged(log: &str, needle: &str) -> bool {
    log.lines().any(|line| {
        let line = line.split_once(' ').map_or(line, |(_, rest)| rest);
        line.match_indices(needle).any(|(at, _)| {
            let before = line[..at].chars().next_back();
            let after = line[at + needle.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_alphanumeric()) && !after.is_some_and(|c| c.is_ascii_alphanumeric())
        })
    })
}

#[tokio::test]
async fn a_whole_sign_up_logs_no_secret_at_any_level() {
    let host = TestHost::start_with(HostOptions {
        dev_log_secrets: false,
        log_filter: EVERY_LEVEL.into(),
        ..HostOptions::on_test_server()
    })
    .await;
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse 42 battery";
    let (status, body) =
        host.call("POST", "/v1/user/users", None, Some(json!({"email": email, "password": password}))).await;
    assert_eq!(status, 201, "{body}");
    let user_id = body["user_id"].as_str().unwrap().to_string();
    let (status, _) =
        host.call("POST", "/v1/user/verifications/email/resend", None, Some(json!({"email": email}))).await;
    assert_eq!(status, 202);
    let hashes = code_hashes(&host, &user_id).await;
    assert_eq!(hashes.len(), 2);
    let codes: Vec<String> = hashes.iter().map(|hash| code_of(&user_id, hash)).collect();
    let (status, body) =
        host.call("POST", "/v1/user/verifications/email", None, Some(json!({"email": email, "code": codes[1]}))).await;
    assert_eq!(status, 200, "{body}");
    let (status, session) =
        host.call("POST", "/v1/user/sessions", None, Some(json!({"email": email, "password": password}))).await;
    assert_eq!(status, 201, "{session}");
    let token = session["token"].as_str().unwrap();
    let (status, _) = host.call("GET", "/v1/user/me", Some(token), None).await;
    assert_eq!(status, 200);
    let key = host.admin_key("ops");
    let (status, _) = host.call("GET", "/admin/whoami", Some(&key), None).await;
    assert_eq!(status, 200);

    let log = host.log_text();
    assert!(log.contains("TRACE"), "the log is not at trace level");
    for code in &codes {
        assert!(!logged(&log, code), "a verification code ({code}) is in the log");
    }
    assert!(!log.contains("verification code for"), "a verification code's line is in the log");
    for (what, secret) in [("token", token), ("admin key", key.as_str()), ("password", password)] {
        assert!(!log.contains(secret), "the {what} is in the log");
    }
    assert_no_role_password_logged(&host, &log).await;
}

/// Neither the installation's secret nor any role password derived from it is in `log`.
async fn assert_no_role_password_logged(host: &TestHost, log: &str) {
    let secret = installation_secret(host).await;
    assert!(!log.contains(&secret), "the installation's secret is in the log");
    for service in ["platform", "user", "account", "transaction", "balance", "audit", "probe"] {
        let role = format!("{}micropay_{service}", host.prefix);
        let password = hex::encode(Sha256::digest(format!("micropay-role:{secret}:{role}")));
        assert!(!log.contains(&password), "the password of {role} is in the log");
    }
    assert!(!log.contains("PASSWORD '"), "a role's password is in the log");
}

async fn installation_secret(host: &TestHost) -> String {
    let url = micropay_tests::admin_url();
    let server = url.rsplit_once('/').unwrap().0;
    let mut db = sqlx::PgConnection::connect(&format!("{server}/{}micropay_platform_db", host.prefix)).await.unwrap();
    sqlx::query_scalar("SELECT role_secret FROM public.installation").fetch_one(&mut db).await.unwrap()
}

#[tokio::test]
async fn codes_are_sent_at_most_five_times_an_hour_to_an_address_known_or_not() {
    let host = TestHost::start().await;
    let known = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let (status, body) = host
        .call("POST", "/v1/user/users", None, Some(json!({"email": known, "password": "correct horse 42 battery"})))
        .await;
    assert_eq!(status, 201, "{body}");
    let unknown = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    // The sign-up sent the first code to the known address: four more are allowed, as they
    // are to an address no account has; then both are refused alike.
    for (email, allowed) in [(&known, 4), (&unknown, 5)] {
        for _ in 0..allowed {
            let (status, body) =
                host.call("POST", "/v1/user/verifications/email/resend", None, Some(json!({"email": email}))).await;
            assert_eq!(status, 202, "{body}");
        }
        let (status, body) =
            host.call("POST", "/v1/user/verifications/email/resend", None, Some(json!({"email": email}))).await;
        assert_eq!((status, error_code(&body)), (429, "too_many_requests"), "{body}");
    }
}

#[tokio::test]
async fn role_passwords_do_not_depend_on_how_the_server_is_named() {
    // Passwords stored as MD5 (the host's administrator session asks for it through the URL),
    // so that the same password is stored the same way twice (SCRAM salts it afresh).
    let url = format!("{}?options=-c%20password_encryption%3Dmd5", micropay_tests::admin_url());
    let mut host = TestHost::start_with(HostOptions {
        database_url: Some(url.clone()),
        log_filter: EVERY_LEVEL.into(),
        ..HostOptions::on_test_server()
    })
    .await;
    let role = format!("{}micropay_user", host.prefix);
    let password_of = |role: String| async move {
        let mut admin = sqlx::PgConnection::connect(&micropay_tests::admin_url()).await.unwrap();
        sqlx::query_scalar::<_, Option<String>>("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut admin)
            .await
            .unwrap()
    };
    let before = password_of(role.clone()).await;
    assert!(before.as_deref().is_some_and(|stored| stored.starts_with("md5")), "{before:?}");
    assert_no_role_password_logged(&host, &host.log_text()).await;

    // The same server, spelled otherwise.
    let respelled = url.replace("127.0.0.1", "localhost");
    assert_ne!(url, respelled, "the test server's URL names no 127.0.0.1 to spell otherwise");
    host.options.database_url = Some(respelled);
    host.restart().await;
    assert_eq!(password_of(role).await, before, "a host spelling the URL otherwise changed the role's password");
    assert_no_role_password_logged(&host, &host.log_text()).await;
}

#[tokio::test]
async fn a_request_id_the_client_chose_is_kept_only_when_fit() {
    let host = TestHost::start().await;
    let publish = |id: Vec<u8>| {
        let request = host.http.post(host.url("/v1/probe/publish?topic=probe.request_id"));
        request.header("x-request-id", reqwest::header::HeaderValue::from_bytes(&id).unwrap()).send()
    };
    let fit = "r".repeat(100);
    let response = publish(fit.clone().into_bytes()).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], fit.as_str());
    for unfit in ["r".repeat(101).into_bytes(), b"tab\there".to_vec(), "caf\u{e9}".as_bytes().to_vec()] {
        let response = publish(unfit.clone()).await.unwrap();
        assert_eq!(response.status(), 201, "{:?}", String::from_utf8_lossy(&unfit));
        let replaced = response.headers()["x-request-id"].to_str().unwrap();
        assert!(replaced.len() <= 100 && replaced.as_bytes() != unfit.as_slice(), "{replaced}");
    }
    // Every event carries a fit trace id.
    host.wait_for_json("/v1/probe/effects?topic=probe.request_id", "count", json!(4), Duration::from_secs(30)).await;
}
