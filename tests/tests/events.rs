//! Publishing: events go to the publisher's outbox inside its unit of work, so an event exists
//! if and only if the work committed; topics are checked against the policy.

use micropay_tests::{TestHost, error_code, signed_in_user};
use serde_json::json;
use sqlx::Connection;

async fn outbox(host: &TestHost, service: &str) -> Vec<(String, String, String, serde_json::Value, Option<String>)> {
    let mut db = host.admin_db(service).await;
    sqlx::query_as("SELECT topic, source, subject, data, trace_id FROM micropay_platform.outbox ORDER BY sequence")
        .fetch_all(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn user_events_are_published_with_the_work_that_caused_them() {
    let mut host = TestHost::start().await;
    let user = signed_in_user(&mut host).await;
    let (status, _) = host
        .call("POST", "/v1/user/sessions", None, Some(json!({"email": user.email, "password": "wrong password 1"})))
        .await;
    assert_eq!(status, 401);

    let events = outbox(&host, "user").await;
    let topics: Vec<&str> = events.iter().map(|event| event.0.as_str()).collect();
    let expected = [
        "user.registered",
        "user.contact_changed",
        "user.code_issued",
        "user.verified",
        "user.contact_changed",
        "user.logged_in",
        "user.login_failed",
    ];
    assert_eq!(topics, expected);
    for (_, source, subject, data, trace_id) in &events {
        assert_eq!((source.as_str(), subject.as_str()), ("user", user.user_id.as_str()));
        assert_eq!(data["user_id"].as_str(), Some(user.user_id.as_str()));
        assert!(trace_id.as_deref().is_some_and(|id| !id.is_empty()));
    }

    // A refused sign-up (duplicate email) published nothing.
    let (status, _) =
        host.call("POST", "/v1/user/users", None, Some(json!({"email": user.email, "password": user.password}))).await;
    assert_eq!(status, 409);
    assert_eq!(outbox(&host, "user").await.len(), events.len());
}

#[tokio::test]
async fn publishing_is_transactional_and_policy_checked() {
    let host = TestHost::start().await;

    let response = host.http.post(host.url("/v1/probe/publish?topic=probe.pinged")).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();

    // Published, then failed: rolled back with the rest of the work.
    let (status, _) = host.call("POST", "/v1/probe/publish-then-fail?topic=probe.lost", None, None).await;
    assert_eq!(status, 500);

    // Not granted, or not a topic: refused, nothing written.
    let (status, body) = host.call("POST", "/v1/probe/publish?topic=user.registered", None, None).await;
    assert_eq!((status, error_code(&body)), (403, "not_granted"));
    let (status, body) = host.call("POST", "/v1/probe/publish?topic=Not%20A%20Topic", None, None).await;
    assert_eq!((status, error_code(&body)), (400, "publish_refused"));

    let events = outbox(&host, "probe").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (topic, source, subject, data, trace_id) = &events[0];
    assert_eq!((topic.as_str(), source.as_str(), subject.as_str()), ("probe.pinged", "probe", "probe-key"));
    assert_eq!(data, &json!({ "probe": true }));
    assert_eq!(trace_id.as_deref(), Some(request_id.as_str()));

    let metrics = host.http.get(host.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("micropay_refused_publishes_total{component=\"probe\"} 1"), "{metrics}");
    assert!(host.log_text().contains("publish refused: not granted"));

    // The service's own role may append to its outbox but not read or change it.
    let url = micropay_tests::admin_url();
    let server = url.split('@').nth(1).unwrap().rsplit_once('/').unwrap().0;
    let own = format!("postgres://{}micropay_probe@{server}/{}micropay_probe_db", host.prefix, host.prefix);
    let mut conn = sqlx::PgConnection::connect(&own).await.unwrap();
    for sql in ["SELECT count(*) FROM micropay_platform.outbox", "DELETE FROM micropay_platform.outbox"] {
        let err = sqlx::query(sql).execute(&mut conn).await.expect_err(sql);
        assert_eq!(err.as_database_error().and_then(|db| db.code()).as_deref(), Some("42501"), "{sql}: {err}");
    }
}
