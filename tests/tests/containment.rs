//! A component that loops, traps or fails is contained: that invocation fails with a JSON
//! error, its writes are rolled back, the metrics count it, and the host keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use micropay_tests::{TestHost, error_code};

#[tokio::test]
async fn loops_and_traps_fail_alone() {
    let host = Arc::new(TestHost::start().await);

    // Background load on a healthy endpoint for the whole test.
    let stop = Arc::new(AtomicUsize::new(0));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let background = {
        let (host, stop, served, failed) = (host.clone(), stop.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            while stop.load(Ordering::Relaxed) == 0 {
                let (status, body) = host.call("GET", "/v1/probe/ping", None, None).await;
                if status == 200 && body["pong"] == true {
                    served.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let started = Instant::now();
    let (status, body) = host.call("GET", "/v1/probe/loop", None, None).await;
    let elapsed = started.elapsed();
    assert_eq!((status, error_code(&body)), (504, "deadline_exceeded"));
    assert!(elapsed < Duration::from_secs(5), "the loop ran {elapsed:?}; its deadline is 500 ms");

    let (status, body) = host.call("GET", "/v1/probe/trap", None, None).await;
    assert_eq!((status, error_code(&body)), (500, "component_failed"));

    // Both at once, twice over, with the healthy load still going.
    let calls: Vec<_> = ["/v1/probe/loop", "/v1/probe/trap", "/v1/probe/loop", "/v1/probe/trap"]
        .into_iter()
        .map(|path| {
            let host = host.clone();
            tokio::spawn(async move { host.call("GET", path, None, None).await.0 })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap() >= 500);
    }

    // Writes of a failed invocation are rolled back, whether it answered 500 or trapped.
    for path in ["/v1/probe/write-then-fail", "/v1/probe/write-then-trap"] {
        let (status, _) = host.call("POST", path, None, None).await;
        assert_eq!(status, 500, "{path}");
    }
    let (status, body) = host.call("GET", "/v1/probe/writes", None, None).await;
    assert_eq!((status, body["count"].as_i64()), (200, Some(0)));
    let (status, _) = host.call("POST", "/v1/probe/write", None, None).await;
    assert_eq!(status, 201);
    let (_, body) = host.call("GET", "/v1/probe/writes", None, None).await;
    assert_eq!(body["count"].as_i64(), Some(1));

    stop.store(1, Ordering::Relaxed);
    background.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "healthy requests failed while others trapped");
    assert!(served.load(Ordering::Relaxed) > 10, "the host hardly served anything else");

    let metrics = host.http.get(host.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for (outcome, at_least) in [("Deadline", 3), ("Trap", 4)] {
        let line = metrics
            .lines()
            .find(|line| {
                line.starts_with("micropay_invocations_total") && line.contains("\"probe\"") && line.contains(outcome)
            })
            .unwrap_or_else(|| panic!("no {outcome} count in\n{metrics}"));
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= at_least as f64, "{line}");
    }
}
