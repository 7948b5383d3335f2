//! Policies are checked before anything runs: a bad policy file, or a component asking for a
//! capability its policy does not grant, stops `micropay serve` with a message that names the
//! file and the field.

use std::process::Command;

use micropay_tests::root;

/// Runs `micropay serve` with one policy directory holding `policy` and returns its stderr.
fn serve_with_policy(policy: &str) -> String {
    let dir = std::env::temp_dir().join(format!("micropay-policy-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("broken.toml"), policy).unwrap();
    let output = Command::new(root().join("target/debug/micropay"))
        .current_dir(root())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &micropay_tests::admin_url()])
        .args(["--database-prefix", &format!("p{}_", &uuid::Uuid::new_v4().simple().to_string()[..8])])
        .arg("--policies")
        .arg(&dir)
        .arg("--components-dir")
        .arg(root().join("target/components"))
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(!output.status.success(), "micropay served with a bad policy");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn invalid_policies_stop_the_host_with_a_clear_message() {
    for (policy, expected) in [
        ("[component]\nname = \"probe\"\nfile = \"probe.wasm\"\n[limits]\ndeadline_ms = \"fast\"\n", "deadline_ms"),
        ("[component]\nname = \"probe\"\nfile = \"probe.wasm\"\nnetwork = true\n", "network"),
        ("[component]\nname = \"Probe!\"\nfile = \"probe.wasm\"\n", "component.name"),
        ("[component]\nname = \"probe\"\nfile = \"probe.wasm\"\n[limits]\nmemory_mb = 100000\n", "limits.memory_mb"),
        (
            "[component]\nname = \"probe\"\nfile = \"probe.wasm\"\n[events]\npublish = [\"Not A Topic\"]\n",
            "events.publish",
        ),
    ] {
        let stderr = serve_with_policy(policy);
        assert!(stderr.contains("broken.toml"), "no file name in: {stderr}");
        assert!(stderr.contains(expected), "no {expected} in: {stderr}");
    }
}

#[test]
fn a_component_asking_for_more_than_its_policy_grants_is_refused() {
    // The probe imports the database and services capabilities; this policy grants neither.
    let stderr = serve_with_policy("[component]\nname = \"probe\"\nfile = \"probe.wasm\"\n");
    assert!(stderr.contains("refusing component probe"), "{stderr}");
    assert!(stderr.contains("micropay:platform/database"), "{stderr}");
    assert!(stderr.contains("broken.toml"), "{stderr}");
}
