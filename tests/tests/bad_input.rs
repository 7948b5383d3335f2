//! Bad input: a 4xx with the platform's JSON error, and nothing written.

use micropay_tests::{TestHost, error_code};
use serde_json::json;

async fn user_rows(host: &TestHost) -> i64 {
    let mut db = host.admin_db("user").await;
    let (users,): (i64,) = sqlx::query_as("SELECT count(*) FROM users").fetch_one(&mut db).await.unwrap();
    let (activity,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM user_activity_logs").fetch_one(&mut db).await.unwrap();
    users + activity
}

async fn raw_exchange(host: &TestHost, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host.base_url.trim_start_matches("http://")).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let host = TestHost::start().await;
    let url = host.url("/v1/user/users");
    let raw = |body: &'static str, content_type: &'static str| {
        host.http.post(&url).header("content-type", content_type).body(body).send()
    };

    let cases: Vec<(&str, reqwest::Response, u16, &str)> = vec![
        ("malformed JSON", raw("{\"email\": ", "application/json").await.unwrap(), 400, "malformed_json"),
        (
            "unknown field",
            raw(r#"{"email":"a@example.com","password":"long enough pass 1","admin":true}"#, "application/json")
                .await
                .unwrap(),
            400,
            "invalid_request",
        ),
        (
            "bad email",
            raw(r#"{"email":"not-an-email","password":"long enough pass 1"}"#, "application/json").await.unwrap(),
            422,
            "invalid_email",
        ),
        (
            "weak password",
            raw(r#"{"email":"b@example.com","password":"short"}"#, "application/json").await.unwrap(),
            422,
            "weak_password",
        ),
        (
            "wrong content type",
            raw(r#"{"email":"c@example.com","password":"long enough pass 1"}"#, "text/plain").await.unwrap(),
            415,
            "unsupported_media_type",
        ),
        ("unknown route", host.http.get(host.url("/v1/user/nowhere")).send().await.unwrap(), 404, "not_found"),
        ("unknown service", host.http.get(host.url("/v1/nosuch/thing")).send().await.unwrap(), 404, "not_found"),
        ("undecodable service", host.http.get(host.url("/v1/%FF%FE/x")).send().await.unwrap(), 404, "not_found"),
        ("unknown host route", host.http.get(host.url("/nowhere")).send().await.unwrap(), 404, "not_found"),
        ("wrong method", host.http.put(host.url("/v1/user/users")).send().await.unwrap(), 405, "method_not_allowed"),
        (
            "not a bearer token",
            host.http.get(host.url("/v1/user/me")).header("authorization", "Basic abc").send().await.unwrap(),
            401,
            "invalid_token",
        ),
        ("no token", host.http.get(host.url("/v1/user/me")).send().await.unwrap(), 401, "unauthenticated"),
    ];
    for (what, response, status, code) in cases {
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert!(response.headers().contains_key("x-request-id"), "{what}: no request id");
        let body: serde_json::Value = response.json().await.unwrap_or_else(|err| panic!("{what}: not JSON: {err}"));
        assert_eq!(error_code(&body), code, "{what}: {body}");
    }
    // Oversized: refused from its declared length, before the body is read (a client that
    // keeps writing sees the connection closed, so this one sends the head only).
    let head = "POST /v1/user/users HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 2000000\r\n\r\n{";
    let answer = raw_exchange(&host, head).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");

    assert_eq!(user_rows(&host).await, 0, "a refused request wrote rows");

    // And a good request after all that still works.
    let (status, body) = host
        .call(
            "POST",
            "/v1/user/users",
            None,
            Some(json!({"email": "ok@example.com", "password": "long enough pass 1"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}
