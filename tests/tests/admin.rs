//! Admin API keys: created by `micropay admin-key create`, printed once, stored as hashes,
//! checked on every `/admin/...` route.

use micropay_tests::{HostOptions, TestHost, error_code, root, signed_in_user};

#[tokio::test]
async fn admin_routes_need_a_valid_admin_key() {
    let mut options = HostOptions::on_test_server();
    std::fs::create_dir_all(&options.data_dir).unwrap();
    let keys_file = options.data_dir.join("admin-keys.toml");
    let output = std::process::Command::new(root().join("target/debug/micropay"))
        .args(["admin-key", "create", "--role", "risk", "--admin-keys"])
        .arg(&keys_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let key = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("mpk_"), "{key}");
    let stored = std::fs::read_to_string(&keys_file).unwrap();
    assert!(!stored.contains(&key) && !stored.contains(key.rsplit('_').next().unwrap()), "the key is stored in clear");
    assert!(stored.contains("role = \"risk\""), "{stored}");

    options.extra_args = vec!["--admin-keys".into(), keys_file.display().to_string()];
    let mut host = TestHost::start_with(options).await;

    let (status, body) = host.call("GET", "/admin/whoami", Some(&key), None).await;
    assert_eq!((status, body["role"].as_str()), (200, Some("risk")), "{body}");
    let (status, body) = host.call("GET", "/admin/components", Some(&key), None).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"probe") && names.contains(&"user"), "{names:?}");

    let user = signed_in_user(&mut host).await;
    let last = if key.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &key[..key.len() - 1]);
    for credential in [None, Some("mpk_00000000_00"), Some(wrong.as_str()), Some(user.token.as_str())] {
        let (status, body) = host.call("GET", "/admin/components", credential, None).await;
        assert_eq!((status, error_code(&body)), (401, "invalid_admin_key"), "{credential:?}");
    }
}
