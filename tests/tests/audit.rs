//! The audit service: every event lands in a hash-chained trail that only administrators read,
//! `micropay audit verify` names the first record altered behind its back, and months older
//! than a year move to the archive without breaking the chains.

use std::time::{Duration, Instant};

use micropay_tests::{TestHost, error_code, signed_in_user};
use serde_json::Value;

async fn logs(host: &TestHost, key: &str, query: &str) -> Value {
    let (status, body) = host.call("GET", &format!("/v1/audit/logs?{query}"), Some(key), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until `query` lists `count` records.
async fn wait_for_logs(host: &TestHost, key: &str, query: &str, count: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let found = logs(host, key, query).await["logs"].as_array().unwrap().clone();
        if found.len() == count {
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{query}: {} records, not {count}", found.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn user_events_reach_the_trail_which_only_administrators_read() {
    let mut host = TestHost::start().await;
    let user = signed_in_user(&mut host).await;
    let key = host.admin_key("ops");

    // Signing up publishes user.registered, user.contact_changed and user.code_issued in one
    // unit of work; verifying, user.verified and user.contact_changed; logging in, user.logged_in.
    let records = wait_for_logs(&host, &key, &format!("entity_id={}", user.user_id), 6).await;
    let milestones = ["user.logged_in", "user.verified", "user.registered"];
    let types: Vec<&str> = records
        .iter()
        .map(|record| record["event_type"].as_str().unwrap())
        .filter(|topic| milestones.contains(topic))
        .collect();
    assert_eq!(types, milestones, "newest first");
    let registered = records.iter().find(|record| record["event_type"] == "user.registered").unwrap();
    assert_eq!(registered["service_name"], "user");
    assert_eq!(registered["entity_type"], "user");
    assert_eq!(registered["action"], "registered");
    assert_eq!(registered["user_id"].as_str(), Some(user.user_id.as_str()));
    assert_eq!(registered["row_hash"].as_str().map(str::len), Some(64));
    // The code's event is kept, its secret redacted.
    let issued = records.iter().find(|record| record["event_type"] == "user.code_issued").unwrap();
    assert_eq!(issued["new_values"]["secret"], "[redacted]", "{issued}");

    // Filters, and a cursor through the pages.
    let query = format!("user_id={}&event_type=user.verified&service=user&entity_type=user", user.user_id);
    assert_eq!(logs(&host, &key, &query).await["logs"].as_array().unwrap().len(), 1);
    let first = logs(&host, &key, &format!("user_id={}&limit=4", user.user_id)).await;
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let second = logs(&host, &key, &format!("user_id={}&limit=4&cursor={cursor}", user.user_id)).await;
    assert!(second["next_cursor"].is_null());
    let paged: Vec<&Value> =
        first["logs"].as_array().unwrap().iter().chain(second["logs"].as_array().unwrap()).collect();
    let ids = |records: &mut dyn Iterator<Item = &Value>| {
        records.map(|record| record["log_id"].to_string()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&mut paged.into_iter()), ids(&mut records.iter()), "the pages list every record once, in order");
    let future = logs(&host, &key, &format!("user_id={}&from=2999-01-01T00:00:00Z", user.user_id)).await;
    assert!(future["logs"].as_array().unwrap().is_empty());

    // Only administrators; bad filters are refused.
    let (status, body) = host.call("GET", "/v1/audit/logs", Some(&user.token), None).await;
    assert_eq!((status, error_code(&body)), (403, "admin_only"));
    let (status, body) = host.call("GET", "/v1/audit/logs", None, None).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    for query in ["user_id=not-a-uuid", "from=yesterday", "limit=0", "cursor=zz"] {
        let (status, body) = host.call("GET", &format!("/v1/audit/logs?{query}"), Some(&key), None).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
}

#[tokio::test]
async fn verify_names_the_record_altered_in_sql() {
    let host = TestHost::start().await;
    let key = host.admin_key("ops");
    let (status, _) = host.call("POST", "/v1/probe/publish-many?topic=probe.trail&count=40", None, None).await;
    assert_eq!(status, 201);
    let records = wait_for_logs(&host, &key, "event_type=probe.trail&limit=100", 40).await;

    let (ok, printed) = host.command(&key, &["audit", "verify"]);
    assert!(ok && printed.contains("intact"), "{printed}");

    let victim = records[17]["log_id"].as_str().unwrap().to_string();
    let mut audit_db = host.admin_db("audit").await;
    sqlx::query("UPDATE audit_logs SET new_values = '{\"n\": 1000000}' WHERE log_id = $1::uuid")
        .bind(&victim)
        .execute(&mut audit_db)
        .await
        .unwrap();
    let (ok, printed) = host.command(&key, &["audit", "verify"]);
    assert!(!ok, "{printed}");
    assert!(printed.contains(&victim) && printed.contains("content_altered"), "{printed}");
}

#[tokio::test]
async fn months_older_than_a_year_are_archived_and_still_verify() {
    let mut host = TestHost::start().await;
    let key = host.admin_key("platform");
    // The daily maintenance ran once at start, as the platform administrator.
    let line = host
        .wait_for_log("scheduled request done component=audit method=POST path=/maintenance", Duration::from_secs(10))
        .await;
    assert!(line.contains("status=200"), "{line}");

    // A record from two years ago, appended as the audit service itself would.
    let mut audit_db = host.admin_db("audit").await;
    sqlx::query(&format!("SET ROLE \"{}micropay_audit\"", host.prefix)).execute(&mut audit_db).await.unwrap();
    sqlx::query(
        "SELECT audit_append('b8d7c6a1-0000-4000-8000-000000000001', 'probe.old', 'probe', 'probe', 'old-key', \
         NULL, 'old', NULL, '{}'::jsonb, '{}'::jsonb, NULL, NULL, \
         (now() - interval '2 years')::timestamp, 3::smallint)",
    )
    .execute(&mut audit_db)
    .await
    .unwrap();

    let (ok, printed) = host.command(&key, &["audit", "archive"]);
    assert!(ok, "{printed}");
    let old_month = month_two_years_ago();
    assert!(printed.contains(&format!("audit_logs_{old_month}")), "{printed}");
    let archived: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs_archived WHERE event_type = 'probe.old'")
        .fetch_one(&mut audit_db)
        .await
        .unwrap();
    assert_eq!(archived, 1);
    let (ok, printed) = host.command(&key, &["audit", "verify"]);
    assert!(ok && printed.contains("intact"), "{printed}");
    assert_eq!(logs(&host, &key, "event_type=probe.old").await["logs"].as_array().unwrap().len(), 1);
}

/// `YYYY_MM` of the month two years before now (UTC), as partitions are named.
fn month_two_years_ago() -> String {
    let then = chrono::Utc::now().checked_sub_months(chrono::Months::new(24)).unwrap();
    then.format("%Y_%m").to_string()
}
