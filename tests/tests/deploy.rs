//! Deploys: a new version swapped in under load with no failed request, on every host within a
//! second; rollback; the store surviving restarts and `kill -9`; every check refusing while
//! the running version keeps serving; signed artifacts.
//!
//! The probe has two builds: `probe.wasm` answers `{"build":"first"}` on `/version`,
//! `probe_second.wasm` answers `{"build":"second"}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use micropay_tests::{Bus, HostOptions, TestHost, User, error_code, root, signed_in_user};
use serde_json::{Value, json};

/// How long a second host may take to serve a deployed version.
const CONVERGENCE: Duration = Duration::from_secs(1);

fn component(file: &str) -> Vec<u8> {
    std::fs::read(root().join("target/components").join(file)).unwrap()
}

fn probe_policy() -> String {
    std::fs::read_to_string(root().join("tests/policies/probe.toml")).unwrap()
}

/// The probe's policy with room for the swap test's clients: more instances, a longer queue.
fn roomy_probe_policy() -> String {
    probe_policy().replace("max_instances = 8", "max_instances = 32").replace("queue_ms = 20", "queue_ms = 2000")
}

/// `POST /admin/components/{name}/versions`.
async fn deploy(host: &TestHost, key: &str, name: &str, wasm: &[u8], policy: Option<&str>) -> (u16, Value) {
    let body = json!({ "wasm": BASE64.encode(wasm), "policy": policy, "note": "from the tests" });
    host.call("POST", &format!("/admin/components/{name}/versions"), Some(key), Some(body)).await
}

async fn build(host: &TestHost) -> String {
    let (status, body) = host.call("GET", "/v1/probe/version", None, None).await;
    assert_eq!(status, 200, "{body}");
    body["build"].as_str().unwrap().to_string()
}

/// Waits until `host` serves `expected` on `/v1/probe/version`; answers how long it took.
async fn until_serving(host: &TestHost, expected: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if build(host).await == expected {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{} did not serve the {expected} build within {within:?}", host.base_url);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn swaps_under_load_fail_no_request_and_reach_the_other_host_within_a_second_embedded() {
    swaps_under_load(Bus::Embedded).await
}

#[tokio::test]
async fn swaps_under_load_fail_no_request_and_reach_the_other_host_within_a_second_nats() {
    swaps_under_load(Bus::Nats).await
}

/// 16 clients call `/version` on the first host while 20 deploys alternate the two builds
/// there. Every answer is a 200; every request made wholly after a deploy returned and before
/// the next began is answered by the deployed build; the second host serves each deployed
/// build within a second.
async fn swaps_under_load(bus: Bus) {
    let first = TestHost::start_with(HostOptions::with_bus(bus)).await;
    let second = TestHost::start_with(first.options.clone()).await;
    let platform = first.admin_key("platform");
    let builds = [("probe.wasm", "first"), ("probe_second.wasm", "second")];
    let wasm = [component(builds[0].0), component(builds[1].0)];
    let (status, body) = deploy(&first, &platform, "probe", &wasm[0], Some(&roomy_probe_policy())).await;
    assert_eq!(status, 201, "{body}");
    until_serving(&second, "first", CONVERGENCE * 5).await;

    // Even: deploy number state/2 has returned and no other is under way; odd: one is.
    let state = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (state, stop, http, url) =
            (state.clone(), stop.clone(), first.http.clone(), first.url("/v1/probe/version"));
        clients.spawn(async move {
            let (mut answered, mut checked) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let before = state.load(Ordering::SeqCst);
                let response = http.get(&url).send().await.unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let after = state.load(Ordering::SeqCst);
                assert_eq!(status, 200, "a request failed during the deploys: {body}");
                answered += 1;
                if before == after && before % 2 == 0 {
                    let expected = ["first", "second"][(before / 2 % 2) as usize];
                    assert_eq!(body["build"], expected, "answered by the old version after the deploy returned");
                    checked += 1;
                }
            }
            (answered, checked)
        });
    }
    let mut convergence = Vec::new();
    for deploy_number in 1..=20u64 {
        let (file, name) = builds[(deploy_number % 2) as usize];
        state.fetch_add(1, Ordering::SeqCst);
        let (status, body) = deploy(&first, &platform, "probe", &wasm[(deploy_number % 2) as usize], None).await;
        assert_eq!(status, 201, "deploying {file}: {body}");
        state.fetch_add(1, Ordering::SeqCst);
        convergence.push(until_serving(&second, name, CONVERGENCE).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut checked) = (0, 0);
    while let Some(counts) = clients.join_next().await {
        let (a, c) = counts.unwrap();
        answered += a;
        checked += c;
    }
    assert!(checked > 100, "too few requests fell between deploys to check: {checked} of {answered}");
    convergence.sort();
    eprintln!("{answered} requests, {checked} checked; second host converged in at most {:?}", convergence.last());
    let (status, body) = first.call("GET", "/admin/components/probe/versions", Some(&platform), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["versions"][0]["version"], 22, "{body}");
    assert_eq!(body["versions"][0]["active"], true, "{body}");
}

#[tokio::test]
async fn rollback_restores_the_previous_version_and_a_restarted_host_serves_the_active_one() {
    let mut host = TestHost::start().await;
    let ops = host.admin_key("ops");
    let second = root().join("target/components/probe_second.wasm");
    let second = second.to_str().unwrap();

    let (ok, printed) = host.command(&ops, &["deploy", second, "--name", "probe", "--note", "the second build"]);
    assert!(ok, "{printed}");
    assert!(printed.contains("probe version 2 deployed"), "{printed}");
    assert_eq!(build(&host).await, "second");

    let (ok, printed) = host.command(&ops, &["rollback", "probe"]);
    assert!(ok, "{printed}");
    assert!(printed.contains("rolled back to version 1"), "{printed}");
    assert_eq!(build(&host).await, "first");

    let (ok, printed) = host.command(&ops, &["rollback", "probe", "--to", "2"]);
    assert!(ok, "{printed}");
    assert_eq!(build(&host).await, "second");
    let (ok, printed) = host.command(&ops, &["versions", "probe"]);
    assert!(ok, "{printed}");
    assert!(printed.contains("* v2") && printed.contains("the second build"), "{printed}");
    let (ok, printed) = host.command(&ops, &["components"]);
    assert!(ok, "{printed}");
    let probe = printed.lines().find(|line| line.starts_with("probe ")).unwrap();
    assert!(probe.split_whitespace().nth(1) == Some("2"), "{printed}");

    // The files still say the first build: the store, not the files, decides after a restart.
    host.restart().await;
    assert_eq!(build(&host).await, "second");
    host.wait_for_log("version=2", Duration::from_secs(1)).await;
}

#[tokio::test]
async fn every_refused_deploy_names_its_check_and_the_running_version_keeps_serving() {
    let host = TestHost::start().await;
    let (ops, risk, platform) = (host.admin_key("ops"), host.admin_key("risk"), host.admin_key("platform"));
    let probe = component("probe.wasm");
    let mut garbage = b"\0asm\x0d\0\x01\0".to_vec();
    garbage.extend_from_slice(&[0xff; 64]);
    let without_calls = probe_policy().replace("call = [\"probe\"]", "call = []");
    assert_ne!(without_calls, probe_policy());
    let more_memory = probe_policy().replace("memory_mb = 16", "memory_mb = 32");
    let other_name = probe_policy().replace("name = \"probe\"\nfile", "name = \"probe_two\"\nfile");
    // What is sent, by whom, and the refusal expected.
    type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<String>, u16, &'a str);
    let cases: [Case; 9] = [
        ("not wasm", &ops, b"hello".to_vec(), None, 422, "not_a_component"),
        ("a core module", &ops, b"\0asm\x01\0\0\0".to_vec(), None, 422, "not_a_component"),
        ("does not compile", &ops, garbage, None, 422, "does_not_compile"),
        ("another world", &ops, component("wasi_probe.wasm"), None, 422, "different_world"),
        ("imports beyond its policy", &ops, probe.clone(), Some(without_calls), 422, "imports_not_granted"),
        ("a role not in deploy.roles", &risk, component("probe_second.wasm"), None, 403, "role_not_allowed"),
        (
            "a grant without the platform role",
            &ops,
            probe.clone(),
            Some(more_memory.clone()),
            403,
            "grant_needs_platform",
        ),
        ("an invalid policy", &ops, probe.clone(), Some("[component]\nname = 1".into()), 422, "invalid_policy"),
        ("another service's policy", &ops, probe.clone(), Some(other_name), 422, "name_mismatch"),
    ];
    for (case, key, wasm, policy, status, code) in cases {
        let (answered, body) = deploy(&host, key, "probe", &wasm, policy.as_deref()).await;
        assert_eq!((answered, error_code(&body)), (status, code), "{case}: {body}");
        assert_eq!(build(&host).await, "first", "{case}");
    }
    let (status, body) = deploy(&host, &ops, "nothing", &probe, None).await;
    assert_eq!((status, error_code(&body)), (403, "new_service_needs_platform"), "{body}");
    let (status, body) = host.call("GET", "/admin/components/probe/versions", Some(&ops), None).await;
    assert_eq!((status, body["versions"].as_array().unwrap().len()), (200, 1), "nothing was stored: {body}");
    let refusals = host.metric(r#"micropay_deploys_total{component="probe",outcome="Refused"}"#).await;
    assert_eq!(refusals, 9.0, "every refusal is counted");
    // ... and in the audit trail, with its code and who tried.
    let started = Instant::now();
    let logs = loop {
        let path = "/v1/audit/logs?event_type=platform.component_refused&entity_id=probe&limit=50";
        let (status, body) = host.call("GET", path, Some(&ops), None).await;
        assert_eq!(status, 200, "{body}");
        if body["logs"].as_array().unwrap().len() == 9 {
            break body["logs"].as_array().unwrap().clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the refusals did not reach the audit trail: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(logs.iter().all(|log| log["service_name"] == "platform"), "{logs:?}");
    assert!(
        logs.iter().any(|log| log["new_values"]["code"] == "role_not_allowed" && log["new_values"]["role"] == "risk"),
        "{logs:?}"
    );

    // What ops may not grant, platform may; the deploy is in the audit trail too.
    let (status, body) = deploy(&host, &platform, "probe", &probe, Some(&more_memory)).await;
    assert_eq!(status, 201, "{body}");
    let path = "/v1/audit/logs?event_type=platform.component_deployed&entity_id=probe";
    let started = Instant::now();
    loop {
        let (_, body) = host.call("GET", path, Some(&ops), None).await;
        if body["logs"].as_array().is_some_and(|logs| logs.iter().any(|log| log["new_values"]["version"] == 2)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the deploy did not reach the audit trail: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What runs for the service follows the swap: a first scheduled job is made at once.
    let scheduled = format!("{more_memory}\n[[schedule]]\nmethod = \"POST\"\npath = \"/write\"\nevery_secs = 60\n");
    let (status, body) = deploy(&host, &platform, "probe", &probe, Some(&scheduled)).await;
    assert_eq!(status, 201, "{body}");
    host.wait_for_json("/v1/probe/writes", "count", json!(1), Duration::from_secs(5)).await;
    // The CLI says why in one line.
    let (ok, printed) = host.command(
        &ops,
        &["deploy", root().join("target/components/wasi_probe.wasm").to_str().unwrap(), "--name", "probe"],
    );
    assert!(!ok && printed.contains("422 different_world"), "{printed}");
    assert_eq!(printed.trim().lines().count(), 1, "{printed}");
}

#[tokio::test]
async fn only_components_signed_by_a_trusted_key_deploy_where_keys_are_trusted() {
    let options = HostOptions::on_test_server();
    std::fs::create_dir_all(&options.data_dir).unwrap();
    let key_file = options.data_dir.join("signing.key");
    let micropay = |args: &[&str]| {
        let output = std::process::Command::new(root().join("target/debug/micropay")).args(args).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let trusted = micropay(&["keygen", "--out", key_file.to_str().unwrap(), "--role", "ops"]);
    let other_key = options.data_dir.join("other.key");
    micropay(&["keygen", "--out", other_key.to_str().unwrap(), "--role", "ops"]);
    // The installation's first versions come from unsigned files; then the host trusts a key
    // (a host with trusted keys would refuse unsigned files it has not stored yet).
    let mut host = TestHost::start_with(options.clone()).await;
    host.options.extra_args = vec!["--trusted-keys".into(), trusted];
    host.restart().await;
    let ops = host.admin_key("ops");

    // Unsigned: refused.
    let (status, body) = deploy(&host, &ops, "probe", &component("probe_second.wasm"), None).await;
    assert_eq!((status, error_code(&body)), (422, "signature_missing"), "{body}");

    // Signed by a key the host does not trust: refused.
    let file = options.data_dir.join("probe_second.wasm");
    std::fs::write(&file, component("probe_second.wasm")).unwrap();
    micropay(&["sign", file.to_str().unwrap(), "--key", other_key.to_str().unwrap()]);
    let (ok, printed) = host.command(&ops, &["deploy", file.to_str().unwrap(), "--name", "probe"]);
    assert!(!ok && printed.contains("signature_untrusted"), "{printed}");

    // A signature of other bytes: refused.
    micropay(&["sign", file.to_str().unwrap(), "--key", key_file.to_str().unwrap()]);
    let signature = std::fs::read_to_string(options.data_dir.join("probe_second.wasm.sig")).unwrap();
    let tampered = options.data_dir.join("tampered.wasm");
    std::fs::write(&tampered, component("probe.wasm")).unwrap();
    std::fs::write(options.data_dir.join("tampered.wasm.sig"), &signature).unwrap();
    let (ok, printed) = host.command(&ops, &["deploy", tampered.to_str().unwrap(), "--name", "probe"]);
    assert!(!ok && printed.contains("does not match"), "{printed}");
    assert_eq!(build(&host).await, "first");

    // Signed by the trusted key: deployed, and the signer is on record.
    let (ok, printed) = host.command(&ops, &["deploy", file.to_str().unwrap(), "--name", "probe"]);
    assert!(ok, "{printed}");
    assert_eq!(build(&host).await, "second");
    let (_, body) = host.call("GET", "/admin/components/probe/versions", Some(&ops), None).await;
    assert!(body["versions"][0]["signed_by"].is_string(), "{body}");
}

#[tokio::test]
async fn a_host_killed_during_deploys_restarts_with_one_active_version() {
    let mut host = TestHost::start().await;
    let ops = host.admin_key("ops");
    let wasm = component("probe_second.wasm");
    for delay_ms in [0u64, 5, 20, 60] {
        let (http, url, key) = (host.http.clone(), host.url("/admin/components/probe/versions"), ops.clone());
        let body = json!({ "wasm": BASE64.encode(&wasm) });
        let deploying = tokio::spawn(async move { http.post(url).bearer_auth(key).json(&body).send().await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        host.kill();
        let _ = deploying.await;
        host.restart().await;
        let mut platform = host.admin_db("platform").await;
        let active: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM micropay_platform.active_versions WHERE component = 'probe'")
                .fetch_all(&mut platform)
                .await
                .unwrap();
        assert_eq!(active.len(), 1, "after a kill {delay_ms} ms into a deploy: {active:?}");
        let served = build(&host).await;
        let expected = if active[0].0 == 1 { "first" } else { "second" };
        assert_eq!(served, expected, "the restarted host serves the active version");
    }
}

#[tokio::test]
async fn a_watching_host_deploys_a_changed_file_within_a_second_and_refuses_a_broken_one() {
    let mut options = HostOptions::on_test_server();
    let (policies, components) = (options.data_dir.join("policies"), options.data_dir.join("components"));
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::create_dir_all(&components).unwrap();
    std::fs::write(policies.join("probe.toml"), probe_policy()).unwrap();
    std::fs::write(components.join("probe.wasm"), component("probe.wasm")).unwrap();
    options.policies = vec![policies.clone()];
    options.components_dir = components.clone();
    options.extra_args = vec!["--watch".into()];
    let mut host = TestHost::start_with(options).await;
    assert_eq!(build(&host).await, "first");

    // Written aside and renamed, as a build would leave it: never read half-written.
    let replace = |bytes: Vec<u8>| {
        let partial = components.join("probe.wasm.partial");
        std::fs::write(&partial, bytes).unwrap();
        std::fs::rename(&partial, components.join("probe.wasm")).unwrap();
    };
    replace(component("probe_second.wasm"));
    let took = until_serving(&host, "second", Duration::from_secs(1)).await;
    eprintln!("the changed file served after {took:?}");

    replace(b"\0asm\x0d\0\x01\0 not a component at all".to_vec());
    host.wait_for_log("watched change refused", Duration::from_secs(5)).await;
    assert_eq!(build(&host).await, "second");

    // A policy change is a deploy too.
    std::fs::write(policies.join("probe.toml"), probe_policy().replace("memory_mb = 16", "memory_mb = 24")).unwrap();
    replace(component("probe.wasm"));
    until_serving(&host, "first", Duration::from_secs(1)).await;
    let (_, body) = host.call("GET", "/admin/components/probe/versions", Some(&host.admin_key("ops")), None).await;
    assert_eq!(body["versions"][0]["deployed_by"], "watch", "{body}");
}

/// The builds the `users` are served, each asked `times` times: one build per user, always the
/// same.
async fn builds_by_user(host: &TestHost, users: &[User], times: usize) -> Vec<String> {
    let mut builds = Vec::new();
    for user in users {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..times {
            let (status, body) = host.call("GET", "/v1/probe/version", Some(&user.token), None).await;
            assert_eq!(status, 200, "{body}");
            seen.insert(body["build"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "a caller was served by both versions: {seen:?}");
        builds.extend(seen);
    }
    builds
}

#[tokio::test]
async fn a_canary_serves_its_share_of_callers_and_is_promoted_or_rolled_back_by_the_host() {
    let mut host = TestHost::start().await;
    let ops = host.admin_key("ops");
    let mut users = Vec::new();
    for _ in 0..12 {
        users.push(signed_in_user(&mut host).await);
    }
    let file = |name: &str| root().join("target/components").join(name).display().to_string();

    // A healthy canary: half the callers, each always on the same version; then promoted.
    let (ok, printed) =
        host.command(&ops, &["deploy", &file("probe_second.wasm"), "--name", "probe", "--canary", "50"]);
    assert!(ok, "{printed}");
    assert!(printed.contains("on trial for 50%"), "{printed}");
    let builds = builds_by_user(&host, &users, 3).await;
    assert!(builds.contains(&"first".to_string()) && builds.contains(&"second".to_string()), "{builds:?}");
    let anonymous = build(&host).await;
    for _ in 0..5 {
        assert_eq!(build(&host).await, anonymous, "an anonymous caller is kept on one version too (by address)");
    }
    let (ok, printed) = host.command(&ops, &["promote", "probe"]);
    assert!(ok, "{printed}");
    assert!(builds_by_user(&host, &users, 1).await.iter().all(|build| build == "second"));

    // A failing canary: its deadline is too short for /sleep?ms=150 (and long enough for the
    // deploy's own checks on a busy machine). The host rolls it back.
    let (status, body) = host
        .call(
            "POST",
            "/admin/components/probe/versions",
            Some(&ops),
            Some(json!({
                "wasm": BASE64.encode(component("probe.wasm")),
                "policy": probe_policy().replace("deadline_ms = 500", "deadline_ms = 50"),
                "canary": { "percent": 50, "margin": 0.05, "min_requests": 10 },
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let started = Instant::now();
    loop {
        let mut failed = 0;
        for user in &users {
            let (status, _) = host.call("GET", "/v1/probe/sleep?ms=150", Some(&user.token), None).await;
            failed += usize::from(status != 200);
        }
        if failed == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the failing canary still serves: {failed} failed");
    }
    host.wait_for_log("version on trial rolled back", Duration::from_secs(1)).await;
    let (_, body) = host.call("GET", "/admin/components", Some(&ops), None).await;
    let probe = body["components"].as_array().unwrap().iter().find(|c| c["name"] == "probe").unwrap().clone();
    assert_eq!((probe["version"].clone(), probe["canary"].clone()), (json!(2), Value::Null), "{probe}");
    let rolled_back = host.metric(r#"micropay_deploys_total{component="probe",outcome="CanaryRolledBack"}"#).await;
    assert_eq!(rolled_back, 1.0);
    let path = "/v1/audit/logs?event_type=platform.component_canary_rolled_back&entity_id=probe";
    let started = Instant::now();
    loop {
        let (_, body) = host.call("GET", path, Some(&ops), None).await;
        if let Some(log) = body["logs"].as_array().and_then(|logs| logs.first()) {
            assert_eq!(log["new_values"]["version"], 3, "{log}");
            assert!(log["new_values"]["reason"].as_str().unwrap().contains("errors in"), "{log}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the rollback did not reach the audit trail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_service_deployed_at_runtime_is_provisioned_and_served_on_every_host_and_undeployed_keeping_its_data() {
    // The new service's migrations beside the others'.
    let mut options = HostOptions::on_test_server();
    let migrations = options.data_dir.join("migrations");
    for service in std::fs::read_dir(root().join("migrations")).unwrap() {
        let service = service.unwrap().path();
        let name = service.file_name().unwrap().to_owned();
        for target in [migrations.join(&name), migrations.join(name.to_str().unwrap().replace("probe", "probe_two"))] {
            std::fs::create_dir_all(&target).unwrap();
            for file in std::fs::read_dir(&service).unwrap() {
                let file = file.unwrap().path();
                std::fs::copy(&file, target.join(file.file_name().unwrap())).unwrap();
            }
        }
    }
    options.migrations_dir = migrations;
    options.spare_services = 1;
    let first = TestHost::start_with(options).await;
    let second = TestHost::start_with(first.options.clone()).await;
    let (ops, platform) = (first.admin_key("ops"), first.admin_key("platform"));
    let policy = probe_policy()
        .replace("name = \"probe\"", "name = \"probe_two\"")
        .replace("call = [\"probe\"]", "call = [\"probe_two\"]");

    let (status, body) = deploy(&first, &ops, "probe_two", &component("probe.wasm"), Some(&policy)).await;
    assert_eq!((status, error_code(&body)), (403, "new_service_needs_platform"), "{body}");
    let (status, body) = deploy(&first, &platform, "probe_two", &component("probe.wasm"), None).await;
    assert_eq!((status, error_code(&body)), (422, "policy_required"), "{body}");
    let (status, body) = deploy(&first, &platform, "probe_two", &component("probe.wasm"), Some(&policy)).await;
    assert_eq!(status, 201, "{body}");

    // Served at once here, and within a second on the other host; its database migrated.
    let (status, body) = first.call("POST", "/v1/probe_two/write", None, None).await;
    assert_eq!(status, 201, "{body}");
    let started = Instant::now();
    while second.call("GET", "/v1/probe_two/ping", None, None).await.0 != 200 {
        assert!(started.elapsed() < CONVERGENCE, "the other host does not serve the new service");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.wait_for_json("/v1/probe_two/writes", "count", json!(1), Duration::from_secs(1)).await;
    let (_, openapi) = first.call("GET", "/openapi.json", None, None).await;
    assert!(openapi["paths"]["/v1/probe_two/ping"].is_object(), "not in /openapi.json");

    // Its events are relayed and delivered (to itself: it subscribes to probe.*).
    let (status, body) = first.call("POST", "/v1/probe_two/publish?topic=probe.two", None, None).await;
    assert_eq!(status, 201, "{body}");
    first.wait_for_json("/v1/probe_two/effects?topic=probe.two", "count", json!(1), Duration::from_secs(10)).await;

    // Undeployed: no longer served anywhere; its data stays, and a deploy serves it again.
    let (ok, printed) = first.command(&platform, &["undeploy", "probe_two"]);
    assert!(ok, "{printed}");
    let (status, _) = first.call("GET", "/v1/probe_two/ping", None, None).await;
    assert_eq!(status, 404);
    let started = Instant::now();
    while second.call("GET", "/v1/probe_two/ping", None, None).await.0 != 404 {
        assert!(started.elapsed() < CONVERGENCE, "the other host still serves the undeployed service");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = deploy(&first, &platform, "probe_two", &component("probe.wasm"), Some(&policy)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 2, "{body}");
    first.wait_for_json("/v1/probe_two/writes", "count", json!(1), Duration::from_secs(1)).await;
}

#[tokio::test]
async fn migrations_that_come_with_a_deploy_are_applied_before_the_swap_only_when_forward_only() {
    let mut host = TestHost::start().await;
    let ops = host.admin_key("ops");
    let dir = host.options.data_dir.join("probe-migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        root().join("migrations/probe/0001_create_probe_effects.sql"),
        dir.join("0001_create_probe_effects.sql"),
    )
    .unwrap();
    let second = root().join("target/components/probe_second.wasm").display().to_string();
    let deploy_with = |host: &TestHost| {
        host.command(&ops, &["deploy", &second, "--name", "probe", "--migrations", dir.to_str().unwrap()])
    };

    // Destructive: refused, nothing applied, the running version serves.
    std::fs::write(dir.join("0002_drop_effects.sql"), "DROP TABLE probe_effects;").unwrap();
    let (ok, printed) = deploy_with(&host);
    assert!(!ok && printed.contains("migration_not_forward_only"), "{printed}");
    assert_eq!(build(&host).await, "first");
    std::fs::remove_file(dir.join("0002_drop_effects.sql")).unwrap();

    // An applied migration changed: refused.
    std::fs::write(dir.join("0001_create_probe_effects.sql"), "CREATE TABLE probe_effects (id INT);").unwrap();
    let (ok, printed) = deploy_with(&host);
    assert!(!ok && printed.contains("migration_changed"), "{printed}");
    std::fs::copy(
        root().join("migrations/probe/0001_create_probe_effects.sql"),
        dir.join("0001_create_probe_effects.sql"),
    )
    .unwrap();

    // Additive: applied, then swapped.
    std::fs::write(dir.join("0002_create_probe_notes.sql"), "CREATE TABLE probe_notes (id BIGINT PRIMARY KEY);")
        .unwrap();
    let (ok, printed) = deploy_with(&host);
    assert!(ok, "{printed}");
    assert_eq!(build(&host).await, "second");
    let mut db = host.admin_db("probe").await;
    let notes: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('probe_schema.probe_notes')::text").fetch_one(&mut db).await.unwrap();
    assert!(notes.is_some(), "the deploy's migration was not applied");

    // A restart runs the host's own migrations beside the deployed one.
    host.restart().await;
    assert_eq!(build(&host).await, "second");
}
