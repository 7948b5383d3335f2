//! The host's own endpoints.

use micropay_tests::TestHost;

#[tokio::test]
async fn health_readiness_metrics_openapi_and_request_ids() {
    let host = TestHost::start().await;
    for path in ["/healthz", "/readyz"] {
        let response = host.http.get(host.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers().contains_key("x-request-id"));
    }

    // A request id the client sends is kept.
    let response = host.http.get(host.url("/v1/probe/ping")).header("x-request-id", "req-123").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-123");

    let metrics = host.http.get(host.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("micropay_invocations_total{component=\"probe\",version=\"1\",outcome=\"Ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("micropay_invocation_seconds_bucket"), "{metrics}");

    let (status, document) = host.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/user/users", "post"),
        ("/v1/user/sessions/{session_id}", "delete"),
        ("/v1/user/me/preferences", "patch"),
        ("/v1/probe/ping", "get"),
        ("/healthz", "get"),
    ] {
        assert!(paths.get(path).and_then(|item| item.get(method)).is_some(), "{method} {path} missing");
    }
    assert!(paths["/v1/user/me"]["get"]["security"].is_array(), "authenticated routes declare bearer security");
}
