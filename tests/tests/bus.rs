//! The event bus, end to end and on both backends: an event exists if and only if its work
//! committed, survives a crash before it was relayed, takes effect once however often it is
//! delivered, and a poison event is set aside while the others flow, to be replayed after a fix.

use std::time::Duration;

use micropay_tests::{Bus, HostOptions, TestHost, stream_name};
use serde_json::{Value, json};

/// How long an event may take from publication to its effect in these tests.
const WAIT: Duration = Duration::from_secs(30);

/// Runs each scenario once per backend: `scenario::embedded` and `scenario::nats`.
macro_rules! on_both_buses {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn embedded() {
                super::$scenario(micropay_tests::Bus::Embedded).await
            }
            #[tokio::test]
            async fn nats() {
                super::$scenario(micropay_tests::Bus::Nats).await
            }
        }
    )*};
}

on_both_buses!(
    work_that_fails_publishes_nothing,
    committed_events_survive_a_crash_before_the_relay,
    a_failing_handler_is_retried_until_one_effect,
    redelivered_events_take_effect_once,
    a_poison_event_is_set_aside_and_replayed_after_a_fix,
    two_hosts_share_the_work_and_handle_each_event_once,
    an_append_of_many_long_topics_is_delivered_and_the_bus_goes_on,
    a_subscriber_receives_only_its_topics_whatever_others_publish,
);

async fn publish(host: &TestHost, topic: &str, key: &str, data: Option<Value>) {
    let (status, body) = host.call("POST", &format!("/v1/probe/publish?topic={topic}&key={key}"), None, data).await;
    assert_eq!(status, 201, "{body}");
}

async fn effects(host: &TestHost, topic: &str) -> i64 {
    let (_, body) = host.call("GET", &format!("/v1/probe/effects?topic={topic}"), None, None).await;
    body["count"].as_i64().unwrap()
}

async fn wait_for_effects(host: &TestHost, topic: &str, count: i64) {
    host.wait_for_json(&format!("/v1/probe/effects?topic={topic}"), "count", json!(count), WAIT).await;
}

/// The audit records of `topic`, as an administrator sees them.
async fn audit_records(host: &TestHost, key: &str, topic: &str) -> Vec<Value> {
    let (status, body) = host.call("GET", &format!("/v1/audit/logs?event_type={topic}"), Some(key), None).await;
    assert_eq!(status, 200, "{body}");
    body["logs"].as_array().unwrap().clone()
}

async fn wait_for_audit(host: &TestHost, key: &str, topic: &str, count: usize) {
    let started = std::time::Instant::now();
    while audit_records(host, key, topic).await.len() != count {
        assert!(started.elapsed() < WAIT, "{topic} never had {count} audit records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn work_that_fails_publishes_nothing(bus: Bus) {
    let host = TestHost::start_with(HostOptions::with_bus(bus)).await;
    let key = host.admin_key("ops");
    let (status, _) = host.call("POST", "/v1/probe/publish-then-fail?topic=probe.lost", None, None).await;
    assert_eq!(status, 500);
    publish(&host, "probe.marker", "probe-key", None).await;

    // The marker has the same key, so it is delivered after anything published before it.
    wait_for_effects(&host, "probe.marker", 1).await;
    wait_for_audit(&host, &key, "probe.marker", 1).await;
    assert_eq!(effects(&host, "probe.lost").await, 0);
    assert!(audit_records(&host, &key, "probe.lost").await.is_empty());
}

async fn committed_events_survive_a_crash_before_the_relay(bus: Bus) {
    let mut options = HostOptions::with_bus(bus);
    options.extra_args = vec!["--relay".into(), "false".into()];
    let mut host = TestHost::start_with(options).await;
    publish(&host, "probe.crash", "crash-key", None).await;

    let mut probe_db = host.admin_db("probe").await;
    let unrelayed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM micropay_platform.outbox WHERE relayed_at IS NULL AND topic = 'probe.crash'",
    )
    .fetch_one(&mut probe_db)
    .await
    .unwrap();
    assert_eq!(unrelayed, 1);
    assert_eq!(effects(&host, "probe.crash").await, 0);

    host.kill();
    host.options.extra_args.clear();
    host.restart().await;
    wait_for_effects(&host, "probe.crash", 1).await;
}

async fn a_failing_handler_is_retried_until_one_effect(bus: Bus) {
    let host = TestHost::start_with(HostOptions::with_bus(bus)).await;
    publish(&host, "probe.flaky", "flaky-key", Some(json!({ "fail_times": 2 }))).await;
    wait_for_effects(&host, "probe.flaky", 1).await;

    let mut probe_db = host.admin_db("probe").await;
    let attempts: Vec<i64> = sqlx::query_scalar("SELECT attempt FROM probe_effects WHERE topic = 'probe.flaky'")
        .fetch_all(&mut probe_db)
        .await
        .unwrap();
    assert_eq!(attempts, [3], "one effect, from the third attempt");
    let failed = host.metric(r#"micropay_bus_deliveries_total{subscriber="probe",outcome="Failed"}"#).await;
    assert_eq!(failed, 2.0);
}

async fn redelivered_events_take_effect_once(bus: Bus) {
    let mut host = TestHost::start_with(HostOptions::with_bus(bus)).await;
    let key = host.admin_key("ops");
    publish(&host, "probe.once", "once-key", None).await;
    wait_for_effects(&host, "probe.once", 1).await;
    wait_for_audit(&host, &key, "probe.once", 1).await;

    // The bus forgets how far every subscriber got: everything is delivered again.
    host.stop();
    match bus {
        Bus::Embedded => {
            let mut bus_db = host.admin_db("bus").await;
            sqlx::query("UPDATE public.positions SET sequence = 0").execute(&mut bus_db).await.unwrap();
        }
        Bus::Nats => {
            let client = async_nats::connect(micropay_tests::nats_url()).await.unwrap();
            let stream = async_nats::jetstream::new(client).get_stream(stream_name(&host.prefix)).await.unwrap();
            for subscriber in ["probe", "audit"] {
                for partition in 0..8 {
                    let _ = stream.delete_consumer(&format!("{}{subscriber}_p{partition}", host.prefix)).await;
                }
            }
        }
    }
    host.restart().await;
    publish(&host, "probe.after_rewind", "once-key", None).await;
    wait_for_effects(&host, "probe.after_rewind", 1).await;
    wait_for_audit(&host, &key, "probe.after_rewind", 1).await;

    assert_eq!(effects(&host, "probe.once").await, 1);
    assert_eq!(audit_records(&host, &key, "probe.once").await.len(), 1);
    for subscriber in ["probe", "audit"] {
        let series = format!(r#"micropay_bus_deliveries_total{{subscriber="{subscriber}",outcome="AlreadyHandled"}}"#);
        assert!(host.metric(&series).await >= 1.0, "{subscriber} saw no redelivery");
    }
}

async fn a_poison_event_is_set_aside_and_replayed_after_a_fix(bus: Bus) {
    let host = TestHost::start_with(HostOptions::with_bus(bus)).await;
    let key = host.admin_key("ops");
    publish(&host, "probe.poison", "poisoned-key", None).await;
    publish(&host, "probe.behind", "poisoned-key", None).await;
    publish(&host, "probe.elsewhere", "other-key", None).await;

    // The others flow: the poison's own key after its last attempt, other keys at once.
    wait_for_effects(&host, "probe.elsewhere", 1).await;
    wait_for_effects(&host, "probe.behind", 1).await;
    assert_eq!(effects(&host, "probe.poison").await, 0);

    let (ok, listed) = host.command(&key, &["events", "dead-letters"]);
    assert!(ok, "{listed}");
    assert!(listed.contains("probe.poison") && listed.contains("poison: cannot handle"), "{listed}");
    let event_id = listed.split_whitespace().next().unwrap().to_string();

    let (ok, replayed) = host.command(&key, &["events", "replay", &event_id]);
    assert!(!ok && replayed.contains("failed"), "a replay before the fix fails again: {replayed}");

    let (status, _) = host.call("POST", "/v1/probe/fix-poison", None, None).await;
    assert_eq!(status, 200);
    let (ok, replayed) = host.command(&key, &["events", "replay", &event_id]);
    assert!(ok && replayed.contains("probe: handled"), "{replayed}");
    assert_eq!(effects(&host, "probe.poison").await, 1);
    let (ok, listed) = host.command(&key, &["events", "dead-letters"]);
    assert!(ok && listed.contains("no dead letters"), "{listed}");
    // The audit service handled the poison event the first time: it was never its poison.
    assert_eq!(audit_records(&host, &key, "probe.poison").await.len(), 1);
}

async fn two_hosts_share_the_work_and_handle_each_event_once(bus: Bus) {
    let first = TestHost::start_with(HostOptions::with_bus(bus)).await;
    let second = TestHost::start_with(first.options.clone()).await;
    let hosts = [&first, &second];

    // Each takes half of each subscriber's partitions.
    let started = std::time::Instant::now();
    for host in hosts {
        while host.metric(r#"micropay_bus_partitions_owned{subscriber="probe"}"#).await != 4.0
            || host.metric(r#"micropay_bus_partitions_owned{subscriber="audit"}"#).await != 4.0
        {
            assert!(started.elapsed() < WAIT, "the partitions were not shared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for host in hosts {
        let (status, body) = host.call("POST", "/v1/probe/publish-many?topic=probe.shared&count=100", None, None).await;
        assert_eq!(status, 201, "{body}");
    }
    wait_for_effects(&first, "probe.shared", 200).await;

    let mut handled = 0.0;
    for host in hosts {
        handled += host.metric(r#"micropay_bus_deliveries_total{subscriber="probe",outcome="Handled"}"#).await;
        let again = host.metric(r#"micropay_bus_deliveries_total{subscriber="probe",outcome="AlreadyHandled"}"#).await;
        assert_eq!(again, 0.0, "no event was handed to the handler twice");
    }
    assert_eq!(handled, 200.0, "each event handled once, by one host or the other");
    for host in hosts {
        for subscriber in ["probe", "audit"] {
            let series = format!(r#"micropay_bus_batch_rollbacks_total{{subscriber="{subscriber}"}}"#);
            assert_eq!(host.metric(&series).await, 0.0, "{subscriber}: no handler failed, so no batch was rolled back");
        }
    }
    assert!(
        first.metric("micropay_bus_deliveries_total{subscriber=\"probe\",outcome=\"Handled\"}").await > 0.0
            && second.metric("micropay_bus_deliveries_total{subscriber=\"probe\",outcome=\"Handled\"}").await > 0.0,
        "both hosts took part"
    );
}

/// A publisher may append a batch of events on many topics at once, each up to 200 characters:
/// more than a notification can name (`NOTIFY` takes 8,000 bytes). The append is made all the
/// same, its events delivered, and the events after it too.
async fn an_append_of_many_long_topics_is_delivered_and_the_bus_goes_on(bus: Bus) {
    let host = TestHost::start_with(HostOptions::with_bus(bus)).await;
    let long = format!("probe.{}", "x".repeat(190));
    let publish_many = format!("/v1/probe/publish-many?topic={long}&count=100&numbered=true");
    let (status, body) = host.call("POST", &publish_many, None, None).await;
    assert_eq!(status, 201, "{body}");
    for n in [0, 57, 99] {
        wait_for_effects(&host, &format!("{long}{n}"), 1).await;
    }
    publish(&host, "probe.after", "key", None).await;
    wait_for_effects(&host, "probe.after", 1).await;
}

/// A publisher names its topics as it likes within its grant; a subscriber still receives only
/// the topics its policy names. Here the probe subscribes to `probe.a_b.*` only: `_` is a letter
/// of the topic, not a wildcard (the embedded bus matches prefixes with `LIKE`), and topics
/// that differ from it there, or extend its last word, or lie outside its subscription, are
/// passed over. They are published under the same key, so in one partition, before the
/// probe's own: once that is handled, every one of them has been looked at.
async fn a_subscriber_receives_only_its_topics_whatever_others_publish(bus: Bus) {
    let mut options = HostOptions::with_bus(bus);
    let policies = options.data_dir.join("narrow-probe");
    std::fs::create_dir_all(&policies).unwrap();
    let probe = std::fs::read_to_string(micropay_tests::root().join("tests/policies/probe.toml")).unwrap();
    let narrowed = probe.replace("subscribe = [\"probe.*\"]", "subscribe = [\"probe.a_b.*\"]");
    assert_ne!(narrowed, probe, "the probe's policy names its subscription as expected");
    std::fs::write(policies.join("probe.toml"), narrowed).unwrap();
    options.policies = vec![micropay_tests::root().join("policies"), policies];
    let host = TestHost::start_with(options).await;

    let others = ["probe.axb.one", "probe.a_bc.two", "probe.a.b.three", "bench.a_b.four", "probe.other"];
    for topic in others {
        publish(&host, topic, "one-key", None).await;
    }
    publish(&host, "probe.a_b.mine", "one-key", None).await;
    wait_for_effects(&host, "probe.a_b.mine", 1).await;
    for topic in others {
        assert_eq!(effects(&host, topic).await, 0, "{topic} reached a subscriber of probe.a_b.*");
    }
}

/// The embedded bus's append lock (`bus::locks::APPEND` in the host).
const APPEND_LOCK: i32 = 0x4d50_0002;

/// An append to the embedded bus takes its sequence numbers only once it holds the append lock,
/// which it keeps until it commits: so events commit in the order of their sequence numbers,
/// and a reader that has seen one never later finds a smaller one committed. Here the lock is
/// held from outside while the probe publishes: one more append comes to wait for it (the
/// probe's, unless another publisher's happens to come first), the sequence has not moved (a
/// sequence moves at once, committed or not), and once the lock is released the probe's event
/// goes through with a number above any taken while it waited.
#[tokio::test]
async fn an_embedded_append_takes_its_sequence_numbers_under_the_append_lock() {
    let host = TestHost::start_with(HostOptions::with_bus(Bus::Embedded)).await;
    publish(&host, "probe.before", "key", None).await;
    wait_for_effects(&host, "probe.before", 1).await;

    let mut holder = host.admin_db("bus").await;
    let mut observer = host.admin_db("bus").await;
    sqlx::query("SELECT pg_advisory_lock($1, 0)").bind(APPEND_LOCK).execute(&mut holder).await.unwrap();
    let last_sequence = "SELECT last_value FROM public.events_sequence_seq";
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'";
    let before: i64 = sqlx::query_scalar(last_sequence).fetch_one(&mut observer).await.unwrap();
    let waiting_before: i64 = sqlx::query_scalar(waiting).fetch_one(&mut observer).await.unwrap();
    publish(&host, "probe.held", "key", None).await;
    let started = std::time::Instant::now();
    while sqlx::query_scalar::<_, i64>(waiting).fetch_one(&mut observer).await.unwrap() == waiting_before {
        assert!(started.elapsed() < WAIT, "no append came to wait for the held lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during: i64 = sqlx::query_scalar(last_sequence).fetch_one(&mut observer).await.unwrap();
    assert_eq!(during, before, "an append took sequence numbers before it held the lock");
    assert_eq!(effects(&host, "probe.held").await, 0, "an event was delivered past the held lock");

    sqlx::query("SELECT pg_advisory_unlock($1, 0)").bind(APPEND_LOCK).execute(&mut holder).await.unwrap();
    wait_for_effects(&host, "probe.held", 1).await;
    let held: i64 = sqlx::query_scalar("SELECT sequence FROM public.events WHERE topic = 'probe.held'")
        .fetch_one(&mut observer)
        .await
        .unwrap();
    assert!(held > during, "the probe's event took its number ({held}) before the lock was released ({during})");
}
