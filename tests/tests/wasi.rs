//! A component built with the standard `wasm32-wasip2` toolchain runs, and its policy, which
//! grants nothing, gives it nothing: no files, no sockets, no environment. Its stdout and
//! stderr reach the host's log under its name.

use std::time::Duration;

use micropay_tests::TestHost;

#[tokio::test]
async fn a_wasip2_component_runs_locked_down() {
    let mut host = TestHost::start().await;

    let (status, body) = host.call("GET", "/v1/wasi_probe/ping", None, None).await;
    assert_eq!((status, &body["pong"]), (200, &serde_json::json!(true)), "{body}");
    let line = host.wait_for_log("wasi probe says hello", Duration::from_secs(5)).await;
    assert!(line.contains("wasi_probe") && line.contains("stdout"), "{line}");
    let line = host.wait_for_log("wasi probe warns", Duration::from_secs(5)).await;
    assert!(line.contains("stderr"), "{line}");

    let (status, body) = host.call("GET", "/v1/wasi_probe/file", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["read"]["ok"], false, "{body}");
    assert_eq!(body["create"]["ok"], false, "{body}");
    assert!(!std::path::Path::new("/tmp/wasi-probe-was-here").exists());

    let (status, body) = host.call("GET", "/v1/wasi_probe/socket", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connect"]["ok"], false, "{body}");
    assert_eq!(body["bind"]["ok"], false, "{body}");

    let (status, body) = host.call("GET", "/v1/wasi_probe/env", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["vars"].as_u64(), body["args"].as_u64()), (Some(0), Some(0)), "{body}");
    assert!(body["home"].is_null(), "{body}");
}
