//! The red team: a hostile component (the probe, whose `POST /sql` runs whatever SQL it is
//! given) tries every way we know to escape its database, forge events, exhaust what others
//! need, or keep state past its invocation; a hostile policy tries to take over who callers
//! are. Each attempt is refused or has no effect, a bystander on another service sees no error
//! throughout, and after a restart the service role is still what it was made.

use std::time::{Duration, Instant};

use micropay_tests::{Bystander, HostOptions, TestHost, error_code, signed_in_user, wait_until_none};
use serde_json::{Value, json};
use sqlx::{Connection, Row};

/// Runs `statements` through the probe, each in a savepoint of its own (or not), and returns
/// each one's outcome: `{"ok": true, "rows": [...]}` or `{"ok": false, "code", "message"}`.
async fn sql(host: &TestHost, statements: &[String], savepoints: bool) -> Vec<Value> {
    let body = json!({ "statements": statements, "savepoints": savepoints });
    let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer["results"].as_array().unwrap().clone()
}

/// The first value of the first row a statement returned.
fn scalar(result: &Value) -> &Value {
    assert_eq!(result["ok"], true, "{result}");
    &result["rows"][0][0]
}

/// Names the attacks need: the probe's database and role, the platform's role.
struct Names {
    database: String,
    role: String,
    platform: String,
}

impl Names {
    fn of(host: &TestHost) -> Self {
        Self {
            database: format!("{}micropay_probe_db", host.prefix),
            role: format!("{}micropay_probe", host.prefix),
            platform: format!("{}micropay_platform", host.prefix),
        }
    }
}

/// Statements the probe's role must not get away with, and the SQLSTATE each must fail with:
/// the classic catalogue for PostgreSQL, then the platform's own tables and functions (named
/// through dynamic SQL, since the host refuses a component's statement that names them).
fn catalogue(names: &Names) -> Vec<(&'static str, String, &'static str)> {
    let Names { database, role, platform } = names;
    // The host refuses a statement naming `micropay_platform.` outright; these reach
    // PostgreSQL through dynamic SQL, which spells the name only when it runs.
    let dynamic = |sql: &str| {
        let disguised = literal(&sql.replace("micropay_platform", "micropay_@platform"));
        format!("DO $$ BEGIN EXECUTE pg_catalog.replace({disguised}, '@', ''); END $$")
    };
    let forged_outbox = "INSERT INTO micropay_platform.outbox (event_id, topic, source, subject, data) \
                         VALUES (gen_random_uuid(), 'transaction.posted', 'transaction', 'k', '{}')";
    vec![
        (
            "alter own database",
            format!("ALTER DATABASE \"{database}\" SET search_path = probe_schema, pg_catalog"),
            "42501",
        ),
        ("own database's owner", format!("ALTER DATABASE \"{database}\" OWNER TO CURRENT_USER"), "42501"),
        ("superuser", "ALTER ROLE CURRENT_USER SUPERUSER".into(), "42501"),
        ("createrole", "ALTER ROLE CURRENT_USER CREATEROLE".into(), "42501"),
        ("createdb", "ALTER ROLE CURRENT_USER CREATEDB".into(), "42501"),
        ("bypassrls", "ALTER ROLE CURRENT_USER BYPASSRLS".into(), "42501"),
        ("replication", "ALTER ROLE CURRENT_USER REPLICATION".into(), "42501"),
        ("another role's password", format!("ALTER ROLE \"{platform}\" PASSWORD 'taken'"), "42501"),
        ("membership", format!("GRANT \"{platform}\" TO \"{role}\""), "42501"),
        ("set role platform", format!("SET ROLE \"{platform}\""), "42501"),
        ("set role postgres", "SET ROLE postgres".into(), "42501"),
        ("session authorization", "SET SESSION AUTHORIZATION postgres".into(), "42501"),
        ("create role", "CREATE ROLE red_team".into(), "42501"),
        ("create schema", "CREATE SCHEMA red_team".into(), "42501"),
        ("create in public", "CREATE TABLE public.red_team (x int)".into(), "42501"),
        ("temporary table", "CREATE TEMP TABLE red_team (x int)".into(), "42501"),
        ("dblink", "CREATE EXTENSION dblink".into(), "42501"),
        ("postgres_fdw", "CREATE EXTENSION postgres_fdw".into(), "42501"),
        ("a trusted extension", "CREATE EXTENSION pgcrypto".into(), "42501"),
        ("copy to program", "COPY (SELECT 1) TO PROGRAM 'id'".into(), "42501"),
        ("copy to file", "COPY (SELECT 1) TO '/tmp/micropay-red-team'".into(), "42501"),
        ("copy from file", "COPY probe_effects FROM '/etc/passwd'".into(), "42501"),
        ("read a file", "SELECT pg_read_file('PG_VERSION')".into(), "42501"),
        ("list a directory", "SELECT pg_ls_dir('.')".into(), "42501"),
        ("lo_import", "SELECT lo_import('/etc/passwd')".into(), "42501"),
        ("lo_export", "SELECT lo_export(1, '/tmp/micropay-red-team')".into(), "42501"),
        ("large object", "SELECT lo_create(0)".into(), "42501"),
        ("language c", "CREATE FUNCTION red_team() RETURNS int LANGUAGE c AS 'libc.so.6', 'getpid'".into(), "42501"),
        ("language internal", "CREATE FUNCTION red_team() RETURNS int LANGUAGE internal AS 'int4in'".into(), "42501"),
        ("cancel a backend", "SELECT pg_cancel_backend(pg_backend_pid())".into(), "42501"),
        ("terminate a backend", "SELECT pg_terminate_backend(1)".into(), "42501"),
        ("other sessions", "SELECT count(*) FROM pg_stat_activity".into(), "42501"),
        ("other sessions' statements", "SELECT count(*) FROM pg_stat_get_activity(NULL)".into(), "42501"),
        ("locks", "SELECT count(*) FROM pg_locks".into(), "42501"),
        ("roles", "SELECT count(*) FROM pg_roles".into(), "42501"),
        ("databases", "SELECT count(*) FROM pg_database".into(), "42501"),
        ("publication", "CREATE PUBLICATION red_team FOR ALL TABLES".into(), "42501"),
        (
            "subscription",
            "CREATE SUBSCRIPTION red_team CONNECTION 'dbname=postgres' PUBLICATION p WITH (connect = false)".into(),
            "42501",
        ),
        ("event trigger", "CREATE EVENT TRIGGER red_team ON ddl_command_start EXECUTE FUNCTION now()".into(), "42501"),
        ("load a library", "LOAD 'auto_explain'".into(), "42501"),
        ("replication role", "SELECT set_config('session_replication_role', 'replica', false)".into(), "42501"),
        ("name the platform", "SELECT count(*) FROM micropay_platform.outbox".into(), "MP000"),
        ("forge into the outbox", dynamic(forged_outbox), "42501"),
        (
            "forge through the outbox's function",
            dynamic(
                "SELECT micropay_platform.append_outbox('\\x00'::bytea, ARRAY[gen_random_uuid()], \
                 ARRAY['transaction.posted'], ARRAY['transaction'], ARRAY['k'], ARRAY['{}'::jsonb], ARRAY['t'])",
            ),
            "42501",
        ),
        (
            "forge through the inbox's function",
            dynamic(
                "SELECT micropay_platform.record_inbox('\\x00'::bytea, ARRAY[gen_random_uuid()], \
                 ARRAY['probe.x'], ARRAY['probe'])",
            ),
            "42501",
        ),
        (
            "write the inbox",
            dynamic(
                "INSERT INTO micropay_platform.inbox (event_id, topic, source) VALUES (gen_random_uuid(), 'x', 'y')",
            ),
            "42501",
        ),
        ("change the outbox", dynamic("UPDATE micropay_platform.outbox SET topic = 'transaction.posted'"), "42501"),
        ("empty the dead letters", dynamic("DELETE FROM micropay_platform.dead_letters"), "42501"),
        ("read the host key", dynamic("SELECT * FROM micropay_platform.host_key"), "42501"),
        (
            "shadow in the platform's schema",
            dynamic("CREATE FUNCTION micropay_platform.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT now()'"),
            "42501",
        ),
        ("drop the platform's schema", dynamic("DROP SCHEMA micropay_platform CASCADE"), "42501"),
    ]
}

/// A quoted SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The trap the issue describes: functions in the component's schema that shadow what the
/// host's privileged connections call unqualified, each leaving a mark when called and trying
/// to make the probe's role a superuser; and the role's own `search_path` pointed at them.
fn shadowing_trap(names: &Names) -> Vec<String> {
    let role = &names.role;
    let trap = |signature: &str, returns: &str, value: &str| {
        format!(
            "CREATE FUNCTION probe_schema.{signature} RETURNS {returns} LANGUAGE plpgsql AS $$ BEGIN \
               INSERT INTO probe_schema.red_team_marks VALUES (session_user, {}); \
               BEGIN EXECUTE 'ALTER ROLE \"{role}\" SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END; \
               RETURN {value}; END $$",
            literal(signature)
        )
    };
    vec![
        "CREATE TABLE probe_schema.red_team_marks (called_by TEXT, trap TEXT)".into(),
        trap("pg_try_advisory_xact_lock(integer, integer)", "boolean", "true"),
        trap("pg_try_advisory_lock(integer, integer)", "boolean", "true"),
        trap("pg_advisory_unlock(integer, integer)", "boolean", "true"),
        trap("pg_advisory_xact_lock(integer, integer)", "boolean", "true"),
        trap("now()", "timestamptz", "pg_catalog.now()"),
        trap("make_interval(secs double precision)", "interval", "'1 second'::interval"),
        trap("sha256(bytea)", "bytea", "'\\x00'::bytea"),
        format!("ALTER ROLE \"{role}\" SET search_path = probe_schema, pg_catalog"),
    ]
}

#[tokio::test]
async fn sql_escapes_are_refused_and_leave_nothing_behind() {
    let mut host = TestHost::start().await;
    let user = signed_in_user(&mut host).await;
    let names = Names::of(&host);
    let bystander = Bystander::start(&host, &user);

    let attacks = catalogue(&names);
    let statements: Vec<String> = attacks.iter().map(|(_, sql, _)| sql.clone()).collect();
    let results = sql(&host, &statements, true).await;
    for ((attack, statement, code), result) in attacks.iter().zip(&results) {
        assert_eq!(result["ok"], false, "{attack} was not refused: {statement}: {result}");
        assert_eq!(result["code"], *code, "{attack}: {statement}: {result}");
    }
    // What cannot run in a transaction, tried after ending the unit's own transaction: the
    // invocation stops at the COMMIT, and says its work may or may not have been kept.
    for statement in ["CREATE DATABASE red_team", "ALTER SYSTEM SET work_mem = '1GB'"] {
        let body = json!({ "statements": ["COMMIT", statement], "savepoints": false });
        let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
        assert_eq!((status, error_code(&answer)), (503, "commit_outcome_unknown"), "{statement}: {answer}");
    }
    let mut server = sqlx::PgConnection::connect(&micropay_tests::admin_url()).await.unwrap();
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = 'red_team'")
        .fetch_one(&mut server)
        .await
        .unwrap();
    assert_eq!(created, 0);

    // The driver is never led to ask the session's catalog about a type (which a component can
    // make lie: its own `=` on its search path, or its own statement under the driver's name
    // for that question; a lie once sent the driver's lookup into a stack overflow that took
    // the host down). A type that is not built in is simply not carried.
    let lure = [
        "CREATE TYPE red_team_kind AS ENUM ('a')",
        "CREATE FUNCTION red_team_eq(oid, oid) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        "CREATE OPERATOR probe_schema.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = red_team_eq)",
        "SET search_path = probe_schema, pg_catalog",
        "SELECT 'a'::red_team_kind AS lured",
        "SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE statement LIKE '%pg_' || 'type%'",
    ]
    .map(String::from);
    let results = sql(&host, &lure, false).await;
    assert_eq!((&results[4]["ok"], &results[4]["code"]), (&json!(false), &json!("MP000")), "{results:?}");
    assert_eq!(*scalar(&results[5]), json!(0), "the driver asked the session's catalog: {results:?}");

    // The shadowing trap is laid (creating in its own schema, and setting its own role's
    // defaults, PostgreSQL allows any role), then the host's own connections are put to work
    // on the probe's database: its relay, its deliveries, its dead letters.
    for result in sql(&host, &shadowing_trap(&names), false).await {
        assert_eq!(result["ok"], true, "{result}");
    }
    for topic in ["probe.bait", "probe.poison"] {
        let (status, body) = host.call("POST", &format!("/v1/probe/publish?topic={topic}"), None, None).await;
        assert_eq!(status, 201, "{body}");
    }
    host.wait_for_json("/v1/probe/effects?topic=probe.bait", "count", json!(1), Duration::from_secs(30)).await;
    let key = host.admin_key("ops");
    let started = Instant::now();
    while host.call("GET", "/admin/events/dead-letters", Some(&key), None).await.1["dead_letters"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(started.elapsed() < Duration::from_secs(30), "probe.poison never reached the dead letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bystander.finish().await;

    // Whatever a row of the outbox says of its source, an event leaves with its publisher's.
    let mut probe_db = host.admin_db("probe").await;
    sqlx::query(
        "INSERT INTO micropay_platform.outbox (event_id, topic, source, subject, data) \
         VALUES (gen_random_uuid(), 'probe.stamped', 'transaction', 'stamped-key', '{}')",
    )
    .execute(&mut probe_db)
    .await
    .unwrap();
    drop(probe_db);

    // An installation provisioned before these rules let the service role own its database,
    // and so set its settings: that is what a component could have done to it then.
    let mut probe_db = host.admin_db("probe").await;
    for statement in [
        format!("ALTER DATABASE \"{}\" OWNER TO \"{}\"", names.database, names.role),
        format!("ALTER DATABASE \"{}\" SET search_path = probe_schema, pg_catalog", names.database),
    ] {
        sqlx::query(&statement).execute(&mut probe_db).await.unwrap();
    }
    drop(probe_db);

    // After a restart (which provisions again) nothing of it holds.
    host.restart().await;
    let bystander = Bystander::start(&host, &user);
    let (status, body) = host.call("POST", "/v1/probe/publish?topic=probe.after", None, None).await;
    assert_eq!(status, 201, "{body}");
    host.wait_for_json("/v1/probe/effects?topic=probe.after", "count", json!(1), Duration::from_secs(30)).await;
    bystander.finish().await;

    let mut probe_db = host.admin_db("probe").await;
    let marks: Vec<(String, String)> = sqlx::query_as("SELECT called_by, trap FROM probe_schema.red_team_marks")
        .fetch_all(&mut probe_db)
        .await
        .unwrap();
    assert!(marks.is_empty(), "the host called the component's functions: {marks:?}");
    assert_role_is_as_made(&names, &mut probe_db).await;

    // No forged event reached anyone: the probe's outbox holds only what its policy grants,
    // the balance service applied nothing, the audit trail has no posting.
    let topics: Vec<String> = sqlx::query_scalar("SELECT DISTINCT topic FROM micropay_platform.outbox")
        .fetch_all(&mut probe_db)
        .await
        .unwrap();
    assert!(topics.iter().all(|topic| topic.starts_with("probe.")), "{topics:?}");
    let mut balance_db = host.admin_db("balance").await;
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM balance_events").fetch_one(&mut balance_db).await.unwrap();
    assert_eq!(applied, 0, "the balance service applied a forged posting");
    let (status, body) = host.call("GET", "/v1/audit/logs?event_type=transaction.posted", Some(&key), None).await;
    assert_eq!((status, body["logs"].as_array().map(Vec::len)), (200, Some(0)), "{body}");
    // What reached the audit trail from the probe names the probe as its source (the audit
    // service records it in its own time, after the probe's subscriber handled it).
    for topic in ["probe.after", "probe.stamped"] {
        let started = Instant::now();
        let recorded = loop {
            let (_, body) = host.call("GET", &format!("/v1/audit/logs?event_type={topic}"), Some(&key), None).await;
            if body["logs"].as_array().is_some_and(|logs| !logs.is_empty()) {
                break body;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{topic} never reached the audit trail");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(recorded["logs"][0]["service_name"], "probe", "{topic}: {recorded}");
    }
}

/// The probe's role is what provisioning made it: no attribute but LOGIN, a member of no role,
/// not the owner of its database, no CREATE or TEMP there, owning nothing outside its schema
/// (and the TOAST tables of its own tables);
/// and the platform's schema is the platform role's alone.
async fn assert_role_is_as_made(names: &Names, probe_db: &mut sqlx::PgConnection) {
    let role = sqlx::query(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication, \
                (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) AS memberships, \
                has_database_privilege(r.oid, $2, 'CREATE') AS may_create, \
                has_database_privilege(r.oid, $2, 'TEMP') AS may_temp, \
                (SELECT d.datdba = r.oid FROM pg_database d WHERE d.datname = $2) AS owns_database \
         FROM pg_roles r WHERE rolname = $1",
    )
    .bind(&names.role)
    .bind(&names.database)
    .fetch_one(&mut *probe_db)
    .await
    .unwrap();
    for attribute in [
        "rolsuper",
        "rolcreaterole",
        "rolcreatedb",
        "rolbypassrls",
        "rolreplication",
        "may_create",
        "may_temp",
        "owns_database",
    ] {
        assert!(!role.get::<bool, _>(attribute), "the probe's role has {attribute}");
    }
    assert_eq!(role.get::<i64, _>("memberships"), 0, "the probe's role is a member of a role");
    let foreign: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = $1) \
           AND n.nspname NOT IN ('probe_schema', 'pg_toast') \
         UNION ALL SELECT n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.proowner = (SELECT oid FROM pg_roles WHERE rolname = $1) AND n.nspname <> 'probe_schema' \
         UNION ALL SELECT nspname FROM pg_namespace \
         WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = $1) AND nspname <> 'probe_schema' \
         UNION ALL SELECT 'micropay_platform.' || c.relname FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'micropay_platform' AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = $2)",
    )
    .bind(&names.role)
    .bind(&names.platform)
    .fetch_all(&mut *probe_db)
    .await
    .unwrap();
    assert!(foreign.is_empty(), "owned where it should not: {foreign:?}");
    // The only setting left is the host's own (a bound on temporary files, which only a
    // superuser may set or change).
    let settings: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setrole = (SELECT oid FROM pg_roles WHERE rolname = $1) \
         OR setdatabase = (SELECT oid FROM pg_database WHERE datname = $2)",
    )
    .bind(&names.role)
    .bind(&names.database)
    .fetch_all(&mut *probe_db)
    .await
    .unwrap();
    assert_eq!(settings, ["temp_file_limit=1GB"], "settings a component set for its role or database survived");
}

#[tokio::test]
async fn resources_are_bounded_and_nothing_outlives_an_invocation() {
    // `hog` is the probe under a policy of its own: what its queries may return is small.
    let mut host = TestHost::start_with(with_policy(
        "hog",
        "[component]\nname = \"hog\"\nfile = \"probe.wasm\"\n[database]\nname = \"hog\"\n\
         [services]\ncall = [\"hog\"]\n[events]\npublish = [\"probe.*\"]\n\
         [limits]\ndeadline_ms = 30000\nmax_query_rows = 1000\nmax_query_mb = 8\n",
    ))
    .await;
    let user = signed_in_user(&mut host).await;
    let names = Names::of(&host);
    let bystander = Bystander::start(&host, &user);

    // Rows too large to hold (4 × 4 GB before the first bound): each invocation is cut at its
    // bound, and the host's memory stays far from what the rows would take: a row over 64 MiB
    // is refused before it is read.
    let huge = vec!["SELECT repeat('x', 200000000) FROM generate_series(1, 20)".to_string()];
    let calls = (0..4).map(|_| host.call("POST", "/v1/hog/sql", None, Some(json!({ "statements": huge }))));
    for (status, body) in futures_util::future::join_all(calls).await {
        assert_eq!((status, error_code(&body)), (500, "resource_limit"), "{body}");
    }
    let peak = std::fs::read_to_string(format!("/proc/{}/status", host.pid())).unwrap();
    let peak_kb: u64 = peak
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(peak_kb < 512 << 10, "the host's memory peaked at {peak_kb} kB");
    // Too many rows, likewise; as many as the policy allows are fine.
    let many = vec!["SELECT g FROM generate_series(1, 1001) g".to_string()];
    let (status, body) = host.call("POST", "/v1/hog/sql", None, Some(json!({ "statements": many }))).await;
    assert_eq!((status, error_code(&body)), (500, "resource_limit"), "{body}");
    let enough = vec!["SELECT g FROM generate_series(1, 1000) g".to_string()];
    let (status, body) = host.call("POST", "/v1/hog/sql", None, Some(json!({ "statements": enough }))).await;
    assert_eq!(status, 200, "{body}");

    // A statement still running at the deadline (500 ms) is cut, on the server too, even when
    // the component turned its statement timeout off.
    let started = Instant::now();
    let sleep = vec!["SET statement_timeout = 0".to_string(), "SELECT pg_sleep(30)".to_string()];
    let (status, body) =
        host.call("POST", "/v1/probe/sql", None, Some(json!({ "statements": sleep, "savepoints": false }))).await;
    assert_eq!((status, error_code(&body)), (504, "deadline_exceeded"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    let mut admin = host.admin_db("probe").await;
    assert_no_statement_like(&mut admin, &names.role, "%pg_sleep(30)%").await;

    // Session state set by one invocation is gone for the next on the same connection, set by
    // its statements or by its commit's deferred triggers.
    let dirty = [
        "SET idle_in_transaction_session_timeout = 0",
        "SET search_path = public",
        "SET red_team.flag = 'dirty'",
        "SELECT pg_advisory_lock(4242)",
        "DECLARE red_team CURSOR WITH HOLD FOR SELECT 1",
        "LISTEN red_team",
        "SET plan_cache_mode = force_generic_plan",
        "SELECT pg_backend_pid()",
    ]
    .map(String::from);
    let pid = scalar(&sql(&host, &dirty, false).await[7]).clone();
    assert_clean_when_reused(&host, &mut admin, pid).await;
    let at_commit = [
        "CREATE TABLE red_team_dirt (id int)",
        "CREATE FUNCTION red_team_dirt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           PERFORM set_config('idle_in_transaction_session_timeout', '0', false); \
           PERFORM set_config('search_path', 'public', false); \
           PERFORM set_config('red_team.flag', 'dirty', false); \
           PERFORM pg_advisory_lock(4242); EXECUTE 'LISTEN red_team'; RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER red_team_dirt AFTER INSERT ON red_team_dirt DEFERRABLE INITIALLY DEFERRED \
         FOR EACH ROW EXECUTE FUNCTION red_team_dirt()",
    ]
    .map(String::from);
    for result in sql(&host, &at_commit, false).await {
        assert_eq!(result["ok"], true, "{result}");
    }
    let dirt = ["INSERT INTO red_team_dirt VALUES (1)", "SELECT pg_backend_pid()"].map(String::from);
    let pid = scalar(&sql(&host, &dirt, false).await[1]).clone();
    assert_clean_when_reused(&host, &mut admin, pid).await;

    // A result the driver does not read as rows (COPY ... TO STDOUT) is no way to keep a
    // connection streaming: the invocation is cut, and its statement ended on the server.
    let copy = [
        "SET statement_timeout = 0".to_string(),
        "COPY (SELECT g, repeat('x', 100) FROM generate_series(1, 1000000000000) g) TO STDOUT".to_string(),
    ];
    let (status, body) =
        host.call("POST", "/v1/probe/sql", None, Some(json!({ "statements": copy, "savepoints": false }))).await;
    assert!([503, 504].contains(&status), "{status} {body}");
    error_code(&body);
    assert_no_statement_like(&mut admin, &names.role, "%TO STDOUT%").await;

    // A connection on which the component prepared a statement of its own is not reused.
    let prepared = ["PREPARE red_team AS SELECT 1", "SELECT pg_backend_pid()"].map(String::from);
    let prepared_pid = scalar(&sql(&host, &prepared, false).await[1]).as_i64().unwrap();
    let alive = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {prepared_pid}");
    let what = "connection with a prepared statement lives on";
    wait_until_none(&mut admin, &alive, Duration::from_secs(5), what).await;

    // However hard the probe holds its connections (those that find none free in time miss
    // their deadline, or have their statement cut by the server at it, which the probe answers
    // as its own error), the host stays within its budget, and the bystander is served.
    let holders = (0..8).map(|_| host.call("GET", "/v1/probe/sleep?ms=400", None, None));
    let (answers, open) = tokio::join!(futures_util::future::join_all(holders), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pattern = format!("{}%", host.prefix.replace('_', "\\_"));
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE usename LIKE $1")
            .bind(pattern)
            .fetch_one(&mut admin)
            .await
            .unwrap()
    });
    assert!(answers.iter().any(|(status, _)| *status == 200), "{answers:?}");
    assert!(open <= i64::from(micropay_tests::DB_CONNECTIONS), "{open} connections open");
    bystander.finish().await;
}

/// Waits until no backend of `role` runs a statement like `pattern`: one cut off was ended.
async fn assert_no_statement_like(admin: &mut sqlx::PgConnection, role: &str, pattern: &str) {
    let started = Instant::now();
    loop {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND query LIKE $2")
                .bind(role)
                .bind(pattern)
                .fetch_one(&mut *admin)
                .await
                .unwrap();
        if running == 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{pattern} still runs on the server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Once the connection of backend `pid` is used again, nothing the last unit on it did to the
/// session is left: its settings are the host's, no cursor is held, nothing listened to, and
/// its session advisory lock 4242 is free.
async fn assert_clean_when_reused(host: &TestHost, admin: &mut sqlx::PgConnection, pid: Value) {
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4242)").fetch_one(&mut *admin).await.unwrap();
    assert!(free, "the session advisory lock outlived its invocation");
    sqlx::query("SELECT pg_advisory_unlock(4242)").execute(&mut *admin).await.unwrap();
    let check = [
        "SELECT pg_backend_pid()",
        "SELECT current_setting('idle_in_transaction_session_timeout') || ' ' || current_setting('search_path') \
         || ' ' || coalesce(current_setting('red_team.flag', true), '')",
        "SELECT (SELECT count(*) FROM pg_cursors WHERE is_holdable) + (SELECT count(*) FROM pg_listening_channels())",
        "SELECT current_setting('plan_cache_mode')",
    ]
    .map(String::from);
    let started = Instant::now();
    loop {
        let results = sql(host, &check, true).await;
        if *scalar(&results[0]) == pid {
            assert_eq!(*scalar(&results[1]), json!("1min probe_schema "), "{results:?}");
            assert_eq!(*scalar(&results[2]), json!(0), "{results:?}");
            assert_eq!(*scalar(&results[3]), json!("auto"), "the host's plan mode for services: {results:?}");
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the dirty connection never came back");
    }
}

#[tokio::test]
async fn an_answer_says_what_became_of_the_work() {
    let host = TestHost::start().await;
    let mut probe_db = host.admin_db("probe").await;
    // Commits that take `slow_commits.seconds`: a deferred trigger sleeps.
    let setup = [
        "CREATE TABLE slow_commits (id int, seconds float8)",
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(NEW.seconds); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON slow_commits DEFERRABLE INITIALLY DEFERRED \
         FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    ]
    .map(String::from);
    for result in sql(&host, &setup, false).await {
        assert_eq!(result["ok"], true, "{result}");
    }
    let committed = |id: i32| sqlx::query_scalar::<_, i64>("SELECT count(*) FROM slow_commits WHERE id = $1").bind(id);

    // Work of 0.35 s, then a commit of 0.35 s: the probe's 500 ms deadline passes while the
    // commit is under way, which finishes, and the answer says so.
    let started = Instant::now();
    let body = json!({ "statements": ["SELECT pg_sleep(0.35)", "INSERT INTO slow_commits VALUES (1, 0.35)"], "savepoints": false });
    let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
    assert!(started.elapsed() > Duration::from_millis(700), "the work did not take its time: {status} {answer}");
    assert_eq!(status, 200, "the commit under way at the deadline finished: {answer}");
    assert_eq!(committed(1).fetch_one(&mut probe_db).await.unwrap(), 1);

    // A commit that would run for ten minutes is cancelled on the server at its own bound (the
    // deadline again): nothing was written, and the answer says so.
    let started = Instant::now();
    let body = json!({ "statements": ["INSERT INTO slow_commits VALUES (2, 600)"], "savepoints": false });
    let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
    assert_eq!((status, error_code(&answer)), (503, "commit_failed"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_eq!(committed(2).fetch_one(&mut probe_db).await.unwrap(), 0);
    assert_no_statement_like(&mut probe_db, &Names::of(&host).role, "%slow_commits%").await;

    // The same in a unit that publishes, whose commit's bound is set where its outbox is
    // written, after the component turned its own statement timeout off: cancelled at the
    // bound, and neither the row nor the event kept. The same unit with a quick commit keeps
    // both.
    let outbox = |topic: &'static str| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM micropay_platform.outbox WHERE topic = $1").bind(topic)
    };
    let started = Instant::now();
    let statements = ["SET statement_timeout = 0", "INSERT INTO slow_commits VALUES (5, 600)"];
    let body = json!({ "statements": statements, "savepoints": false, "publish": "probe.slow_commit" });
    let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
    assert_eq!((status, error_code(&answer)), (503, "commit_failed"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_eq!(committed(5).fetch_one(&mut probe_db).await.unwrap(), 0);
    assert_eq!(outbox("probe.slow_commit").fetch_one(&mut probe_db).await.unwrap(), 0);
    assert_no_statement_like(&mut probe_db, &Names::of(&host).role, "%slow_commits%").await;
    let statements = ["SET statement_timeout = 0", "INSERT INTO slow_commits VALUES (6, 0)"];
    let body = json!({ "statements": statements, "savepoints": false, "publish": "probe.quick_commit" });
    let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(committed(6).fetch_one(&mut probe_db).await.unwrap(), 1);
    assert_eq!(outbox("probe.quick_commit").fetch_one(&mut probe_db).await.unwrap(), 1);

    // A component that answers success after a statement failed (and PostgreSQL aborted its
    // transaction) is not answered as if its work were kept: it was not.
    let body = json!({ "statements": ["INSERT INTO slow_commits VALUES (3, 0)", "SELECT 1 / 0"], "savepoints": false });
    let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
    assert_eq!((status, error_code(&answer)), (503, "commit_failed"), "{answer}");
    assert_eq!(committed(3).fetch_one(&mut probe_db).await.unwrap(), 0);

    // A component that commits its unit's transaction itself is stopped there: what it did may
    // have been kept (here it was), and the answer says it does not know.
    let body =
        json!({ "statements": ["INSERT INTO slow_commits VALUES (4, 0)", "COMMIT", "SELECT 1"], "savepoints": false });
    let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
    assert_eq!((status, error_code(&answer)), (503, "commit_outcome_unknown"), "{answer}");
    assert_eq!(committed(4).fetch_one(&mut probe_db).await.unwrap(), 1);

    // The connections all this left are fit for the next invocations.
    for _ in 0..5 {
        assert_eq!(host.call("GET", "/v1/probe/writes", None, None).await.0, 200);
    }
}

#[tokio::test]
async fn the_first_statement_begins_the_unit_and_fails_inside_it() {
    // A unit's BEGIN and statement timeout go with its first statement, in its round trip:
    // whatever that statement is, it runs inside the unit's transaction, under the time left,
    // and its failure aborts the unit as a later statement's would.
    let host = TestHost::start().await;
    let mut probe_db = host.admin_db("probe").await;
    for result in sql(&host, &["CREATE TABLE firsts (id int)".into()], false).await {
        assert_eq!(result["ok"], true, "{result}");
    }
    let kept = |id: i32| sqlx::query_scalar::<_, i64>("SELECT count(*) FROM firsts WHERE id = $1").bind(id);

    // Under the time left, in one transaction with what follows.
    let statements = ["SHOW statement_timeout", "SELECT txid_current()::text", "SELECT txid_current()::text"];
    let results = sql(&host, &statements.map(String::from), false).await;
    assert_ne!(scalar(&results[0]), "0", "the first statement ran without the unit's timeout");
    assert_eq!(scalar(&results[1]), scalar(&results[2]), "the first statement ran in a transaction of its own");

    // A first statement that fails to parse, or fails to run (the first time with the BEGIN
    // ahead of its Parse, then again and again prepared, with the BEGIN ahead of its Bind),
    // aborts the unit: the row written after it is not kept, though the component answers
    // success.
    for (id, first) in [(1, "SELEC 1"), (2, "SELECT 1 / 0"), (3, "SELECT 1 / 0"), (4, "SELECT 1 / 0")] {
        let body = json!({ "statements": [first, format!("INSERT INTO firsts VALUES ({id})")], "savepoints": false });
        let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
        assert_eq!((status, error_code(&answer)), (503, "commit_failed"), "{first}: {answer}");
        assert_eq!(kept(id).fetch_one(&mut probe_db).await.unwrap(), 0, "{first}");
    }

    // A first statement that ends the transaction stops the component there: nothing after it
    // runs.
    let body = json!({ "statements": ["COMMIT", "INSERT INTO firsts VALUES (5)"], "savepoints": false });
    let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
    assert_eq!((status, error_code(&answer)), (503, "commit_outcome_unknown"), "{answer}");
    assert_eq!(kept(5).fetch_one(&mut probe_db).await.unwrap(), 0);

    // So does a COMMIT that opens a new transaction at once (`AND CHAIN`, `END AND CHAIN`):
    // the session is in a transaction again, but what came before it was committed.
    for (chain, id) in [("COMMIT AND CHAIN", 20), ("END AND CHAIN", 22)] {
        let statements = [
            format!("INSERT INTO firsts VALUES ({id})"),
            chain.to_string(),
            format!("INSERT INTO firsts VALUES ({})", id + 1),
        ];
        let body = json!({ "statements": statements, "savepoints": false });
        let (status, answer) = host.call("POST", "/v1/probe/sql", None, Some(body)).await;
        assert_eq!((status, error_code(&answer)), (503, "commit_outcome_unknown"), "{chain}: {answer}");
        assert_eq!(kept(id + 1).fetch_one(&mut probe_db).await.unwrap(), 0, "{chain}");
    }

    // And the connections are fit for the next units.
    for id in 6..10 {
        let body = json!({ "statements": [format!("INSERT INTO firsts VALUES ({id})")], "savepoints": false });
        assert_eq!(host.call("POST", "/v1/probe/sql", None, Some(body)).await.0, 200);
        assert_eq!(kept(id).fetch_one(&mut probe_db).await.unwrap(), 1);
    }
}

#[tokio::test]
async fn a_session_the_server_ended_in_the_pool_is_not_handed_to_a_unit() {
    // A pooled connection whose backend was ended while it waited there is dropped, not given
    // to the next unit (whose BEGIN now goes with its first statement), once it has waited long
    // enough to be checked before it is handed out: a session that answered within the last
    // second is taken as alive without a round trip (`RECENTLY_READY`,
    // vendor/sqlx-postgres/PATCHES.md).
    let host = TestHost::start().await;
    let role = Names::of(&host).role;
    let mut admin = host.admin_db("probe").await;
    for round in 0..3 {
        for _ in 0..4 {
            assert_eq!(host.call("POST", "/v1/probe/write", None, None).await.0, 201, "round {round}");
        }
        let ended: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE usename = $1")
            .bind(&role)
            .fetch_all(&mut admin)
            .await
            .unwrap();
        sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
            .bind(&ended)
            .execute(&mut admin)
            .await
            .unwrap();
        assert!(!ended.is_empty(), "round {round}: no session of the probe's to end");
        let started = Instant::now();
        let alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY ($1)";
        while sqlx::query_scalar::<_, i64>(alive).bind(&ended).fetch_one(&mut admin).await.unwrap() > 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "round {round}: the ended sessions linger");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Idle past `RECENTLY_READY` since their last answer.
        tokio::time::sleep(Duration::from_millis(1_200).saturating_sub(started.elapsed())).await;
        for _ in 0..4 {
            let (status, answer) = host.call("POST", "/v1/probe/write", None, None).await;
            assert_eq!(status, 201, "round {round}: a unit was given a session the server had ended: {answer}");
        }
    }
}

#[tokio::test]
async fn a_role_default_cannot_time_out_the_sessions_waiting_in_the_pool() {
    // A component may set its own role's defaults, and `idle_session_timeout` would end its
    // sessions while they wait in the pool, where one that answered within the last second is
    // handed out unchecked: the host pins it off at start-up, where no role default reaches.
    let host = TestHost::start().await;
    let role = Names::of(&host).role;
    let set = format!("ALTER ROLE \"{role}\" SET idle_session_timeout = '20ms'");
    assert_eq!(sql(&host, &[set], false).await[0]["ok"], true);
    // Every session opened before it is closed: one the component prepared statements on is
    // not reused, so the next units open sessions of their own, with the role's defaults.
    for _ in 0..40 {
        let results = sql(&host, &["PREPARE red_team_fresh AS SELECT 1".to_string()], false).await;
        assert_eq!(results[0]["ok"], true, "{results:?}");
    }
    let results = sql(&host, &["SHOW idle_session_timeout".to_string()], false).await;
    assert_eq!(*scalar(&results[0]), json!("0"), "{results:?}");
    // Sessions left idle past the role's 20 ms (and within the second) serve the next units.
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, answer) = host.call("POST", "/v1/probe/write", None, None).await;
        assert_eq!(status, 201, "round {round}: {answer}");
    }
}

#[tokio::test]
async fn the_identity_provider_and_databases_are_the_policies_to_give() {
    // A second identity provider, or a second claim on a database, stops the host at start.
    for (name, policy, refusal) in [
        (
            "impostor",
            "[component]\nname = \"impostor\"\nfile = \"user.wasm\"\nidentity_provider = true\n\
             [database]\nname = \"impostor\"\n",
            "there can be only one",
        ),
        (
            "squatter",
            "[component]\nname = \"squatter\"\nfile = \"probe.wasm\"\n[database]\nname = \"user\"\n",
            "is already user's",
        ),
    ] {
        let printed = refused_at_start(&with_policy(name, policy));
        assert!(printed.contains(refusal), "{name}: {printed}");
    }

    // A component that exports `authenticator` without being named the provider is never
    // asked: its users' tokens are nobody's. (It is the user service's code on a database of
    // its own, with the same migrations.)
    let mut options = with_policy(
        "lookalike",
        "[component]\nname = \"lookalike\"\nfile = \"user.wasm\"\n[database]\nname = \"lookalike\"\n\
         [events]\npublish = [\"user.*\"]\n",
    );
    let migrations = options.data_dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    for entry in std::fs::read_dir(&options.migrations_dir).unwrap() {
        let path = entry.unwrap().path();
        std::os::unix::fs::symlink(&path, migrations.join(path.file_name().unwrap())).unwrap();
    }
    std::os::unix::fs::symlink(options.migrations_dir.join("user"), migrations.join("lookalike")).unwrap();
    options.migrations_dir = migrations;
    let mut host = TestHost::start_with(options).await;
    let real = signed_in_user(&mut host).await;
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse 42 battery";
    let signed_up =
        host.call("POST", "/v1/lookalike/users", None, Some(json!({"email": email, "password": password}))).await;
    assert_eq!(signed_up.0, 201, "{}", signed_up.1);
    let user_id = signed_up.1["user_id"].as_str().unwrap().to_string();
    let code = micropay_tests::verification_code(&mut host, "EMAIL", &user_id).await;
    let verified =
        host.call("POST", "/v1/lookalike/verifications/email", None, Some(json!({"email": email, "code": code}))).await;
    assert_eq!(verified.0, 200, "{}", verified.1);
    let (status, session) =
        host.call("POST", "/v1/lookalike/sessions", None, Some(json!({"email": email, "password": password}))).await;
    assert_eq!(status, 201, "{session}");
    let lookalike_token = session["token"].as_str().unwrap();
    for _ in 0..5 {
        let (status, body) = host.call("GET", "/v1/probe/whoami", Some(lookalike_token), None).await;
        assert_eq!((status, error_code(&body)), (401, "invalid_token"), "{body}");
        let (status, body) = host.call("GET", "/v1/probe/whoami", Some(&real.token), None).await;
        assert_eq!((status, body["user_id"].as_str()), (200, Some(real.user_id.as_str())), "{body}");
    }
}

/// Host options with one more policy, `{name}.toml`, in a directory of its own.
fn with_policy(name: &str, policy: &str) -> HostOptions {
    let mut options = HostOptions::on_test_server();
    let policies = options.data_dir.join("extra-policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join(format!("{name}.toml")), policy).unwrap();
    options.extra_args = vec!["--policies".into(), policies.display().to_string()];
    options
}

/// Starts a host that must refuse to start; returns what it printed.
fn refused_at_start(options: &HostOptions) -> String {
    let mut child = std::process::Command::new(micropay_tests::root().join("target/debug/micropay"))
        .current_dir(micropay_tests::root())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &micropay_tests::admin_url()])
        .args(["--database-prefix", &options.prefix, "--data-dir"])
        .arg(&options.data_dir)
        .arg("--policies")
        .arg(micropay_tests::root().join("policies"))
        .args(&options.extra_args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            panic!("the host started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}
