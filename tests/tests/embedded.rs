//! `micropay serve` with no database URL: an embedded PostgreSQL under the data directory,
//! initialised on first start and reused (with its data) on the next.

use std::os::unix::fs::PermissionsExt;

use micropay_tests::{HostOptions, TestHost, signed_in_user};
use serde_json::json;

#[tokio::test]
async fn embedded_postgres_starts_empty_and_keeps_data_across_restarts() {
    let data_dir = std::env::temp_dir().join(format!("micropay-embedded-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data_dir).unwrap();
    // The server runs as the `postgres` account when the tests run as root: let it in.
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let options = || HostOptions {
        database_url: None,
        prefix: String::new(),
        data_dir: data_dir.clone(),
        cache_dir: data_dir.join("cache"),
        extra_args: Vec::new(),
        nats_url: None,
        ..HostOptions::on_test_server()
    };

    let mut host = TestHost::start_with(options()).await;
    assert!(data_dir.join("postgres/PG_VERSION").exists());
    let loaded = host.wait_for_log("component loaded", std::time::Duration::from_secs(5)).await;
    assert!(loaded.contains("from_cache=false"), "{loaded}");
    let user = signed_in_user(&mut host).await;
    host.stop();

    let mut host = TestHost::start_with(options()).await;
    // The restart deserialized the compiled components instead of compiling them again.
    let loaded = host.wait_for_log("component loaded", std::time::Duration::from_secs(5)).await;
    assert!(loaded.contains("from_cache=true"), "{loaded}");
    let (status, me) = host.call("GET", "/v1/user/me", Some(&user.token), None).await;
    assert_eq!(status, 200, "the session did not survive the restart: {me}");
    assert_eq!(me["email"].as_str(), Some(user.email.as_str()));
    let (status, _) = host
        .call("POST", "/v1/user/sessions", None, Some(json!({"email": user.email, "password": user.password})))
        .await;
    assert_eq!(status, 201);
    drop(host);
    std::fs::remove_dir_all(&data_dir).ok();
}
