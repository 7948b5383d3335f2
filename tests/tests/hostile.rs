//! Hostile components: each misbehaviour is contained (the invocation fails with the right
//! status and a JSON error, nothing is written), counted in the metrics, and the host keeps
//! serving everyone else throughout.

use std::sync::Arc;

use micropay_tests::{Bystander, TestHost, error_code, signed_in_user};

/// Reads `micropay_invocations_total{component="probe",version="1",outcome="..."}`.
async fn invocations(host: &TestHost, outcome: &str) -> f64 {
    let metrics = host.http.get(host.url("/metrics")).send().await.unwrap().text().await.unwrap();
    metrics
        .lines()
        .find(|line| {
            line.starts_with("micropay_invocations_total")
                && line.contains("component=\"probe\"")
                && line.contains(&format!("outcome=\"{outcome}\""))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn every_misbehaviour_is_contained_and_counted() {
    // Room for the probe's eight instances to wait their turn on three connections (its
    // sleeps hold one each), within the test server's connections: one host alone.
    let options = micropay_tests::HostOptions { db_connections: 48, ..micropay_tests::HostOptions::on_test_server() };
    let mut host = TestHost::start_with(options).await;
    let user = signed_in_user(&mut host).await;
    let host = Arc::new(host);
    // Load on another component for the whole test.
    let bystander = Bystander::start(&host, &user);

    for (path, status, code, outcome) in [
        ("/v1/probe/memory-bomb", 500, "resource_limit", "Memory"),
        ("/v1/probe/recurse", 500, "resource_limit", "Stack"),
        ("/v1/probe/huge-response", 500, "resource_limit", "Memory"),
        ("/v1/probe/big-response?kb=2048", 502, "response_too_large", "ResponseTooLarge"),
        ("/v1/probe/trap", 500, "component_failed", "Trap"),
        ("/v1/probe/loop", 504, "deadline_exceeded", "Deadline"),
        ("/v1/probe/call/user?path=/me", 403, "not_granted", "Ok"),
    ] {
        let before = invocations(&host, outcome).await;
        let (got, body) = host.call("GET", path, None, None).await;
        assert_eq!((got, error_code(&body)), (status, code), "{path}: {body}");
        assert!(invocations(&host, outcome).await > before, "{path} not counted as {outcome}");
    }

    // A granted call works and carries the caller.
    let (status, body) = host.call("GET", "/v1/probe/call/probe?path=/whoami", Some(&user.token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body"]["user_id"].as_str(), Some(user.user_id.as_str()));

    // SQL aimed at the catalog to find other databases is refused.
    let (status, body) = host.call("GET", "/v1/probe/catalog", None, None).await;
    assert_eq!(status, 200);
    assert_eq!((body["reached"].as_bool(), body["code"].as_str()), (Some(false), Some("42501")), "{body}");

    // Nothing a failed invocation did was written.
    let (_, body) = host.call("GET", "/v1/probe/writes", None, None).await;
    assert_eq!(body["count"].as_i64(), Some(0));

    // The concurrency cap: 8 instances, then a short queue, then 429 with Retry-After.
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                let response = host.http.get(host.url("/v1/probe/sleep?ms=150")).send().await.unwrap();
                (response.status().as_u16(), response.headers().get("retry-after").is_some())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let busy = answers.iter().filter(|(status, _)| *status == 429).count();
    assert!(answers.iter().all(|(status, _)| *status == 200 || *status == 429), "{answers:?}");
    assert!(busy > 0 && busy < 24, "expected some 429s: {answers:?}");
    assert!(answers.iter().filter(|(status, _)| *status == 429).all(|(_, retry)| *retry), "429 without Retry-After");
    assert!(invocations(&host, "Busy").await >= busy as f64);

    bystander.finish().await;

    let log = host.log_text();
    assert!(log.contains("invocation failed") && log.contains("component=probe") && log.contains("version="), "{log}");
    assert!(log.contains("service call refused: not granted"), "refused call not logged");
}

#[tokio::test]
async fn fuel_cuts_a_loop_when_the_policy_meters_it() {
    let mut options = micropay_tests::HostOptions::on_test_server();
    let policies = options.data_dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("metered.toml"),
        "[component]\nname = \"metered\"\nfile = \"probe.wasm\"\n[database]\nname = \"metered\"\n\
         [services]\ncall = [\"probe\"]\n[events]\npublish = [\"probe.*\"]\n[limits]\ndeadline_ms = 5000\nfuel = 5000000\n",
    )
    .unwrap();
    options.extra_args = vec!["--policies".into(), policies.display().to_string()];
    let host = TestHost::start_with(options).await;

    // Out of fuel long before its 5 s deadline.
    let started = std::time::Instant::now();
    let (status, body) = host.call("GET", "/v1/metered/loop", None, None).await;
    assert_eq!((status, error_code(&body)), (500, "resource_limit"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "{:?}", started.elapsed());
    let metrics = host.http.get(host.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("micropay_invocations_total{component=\"metered\",version=\"1\",outcome=\"Fuel\"} 1"),
        "{metrics}"
    );

    // Ordinary work fits in the budget.
    let (status, _) = host.call("GET", "/v1/metered/ping", None, None).await;
    assert_eq!(status, 200);
}
