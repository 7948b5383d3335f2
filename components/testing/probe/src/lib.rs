//! The probe: a component that misbehaves on request, to prove the host contains it.
//!
//! - `GET /ping` answers without touching the database (the invocation-cost benchmark).
//! - `GET /version` answers which build this is: `first`, or `second` when built with the
//!   `second-build` feature (`probe_second.wasm`), for the deploy tests.
//! - `GET /loop` never returns: the epoch deadline must cut it.
//! - `GET /trap` panics: the invocation fails with a 5xx, the host keeps serving.
//! - `POST /write-then-fail` writes a row and then answers 500: the write must be rolled back.
//! - `POST /write-then-trap` writes a row and then traps: the write must be rolled back.
//! - `POST /write` writes a row and succeeds.
//! - `GET /writes` counts the rows written.
//! - `GET /foreign` tries to read another service's tables and database from its own handle.
//! - `GET /catalog` asks PostgreSQL's catalog for the other databases.
//! - `POST /sql` runs the statements it is given, `{"statements": [...]}`, each in a savepoint
//!   of its own (unless `"savepoints": false`), then publishes an event on `"publish"` if the
//!   body names a topic, and answers how each went: the red team's hand.
//! - `GET /memory-bomb` allocates until something stops it.
//! - `GET /recurse` recurses without end.
//! - `GET /huge-response` answers 100 MB; `GET /big-response?kb=N` answers N KiB.
//! - `GET /call/{service}?path=/p` calls another service through the host.
//! - `GET /sleep?ms=N` holds its instance for N ms (without spinning).
//! - `POST /publish?topic=T[&key=K]` publishes an event (the body, if any, is its data);
//!   `POST /publish-then-fail?topic=T` publishes, then answers 500;
//!   `POST /publish-many?topic=T&count=N[&numbered=true]` publishes N events over 16 keys in
//!   one unit of work (with `numbered`, each on a topic of its own: `T0`, `T1`, ...).
//! - As a subscriber (`probe.*`), it records an effect row per event handled (in
//!   `probe_effects`, `migrations/probe/`), except that
//!   `probe.flaky` fails while the attempt is at most the data's `fail_times`, and
//!   `probe.poison` fails until `POST /fix-poison` was called. `GET /effects?topic=T` counts
//!   the effects.

use bindings::exports::micropay::platform::handler;
use bindings::exports::micropay::platform::subscriber::{self, Event};
use micropay_sdk::db::param;
use micropay_sdk::service::micropay::platform::http;
use micropay_sdk::{Access, ApiError, Context, Db, Response, Router, Service};

/// Bindings of the `subscribing-service` world, its imports mapped onto the sdk's.
mod bindings {
    micropay_sdk::world_bindings!("subscribing-service", "../../../wit");
}
use serde_json::json;

struct Probe;

impl Service for Probe {
    fn router() -> Router {
        Router::new()
            .get("/ping", "Answers pong without touching the database", Access::Public, ping)
            .get("/version", "Answers which build of the probe this is", Access::Public, version)
            .get("/loop", "Loops forever", Access::Public, spin)
            .get("/trap", "Panics", Access::Public, trap)
            .post("/write", "Writes one row", Access::Public, write)
            .post("/write-then-fail", "Writes one row, then answers 500", Access::Public, write_then_fail)
            .post("/write-then-trap", "Writes one row, then panics", Access::Public, write_then_trap)
            .get("/writes", "Counts the rows written", Access::Public, count_writes)
            .get("/foreign", "Tries to reach another service's data", Access::Public, foreign)
            .get("/whoami", "Shows the caller", Access::Authenticated, whoami)
            .get("/catalog", "Lists the server's databases", Access::Public, catalog)
            .post("/sql", "Runs the statements it is given", Access::Public, run_sql)
            .get("/memory-bomb", "Allocates without end", Access::Public, memory_bomb)
            .get("/recurse", "Recurses without end", Access::Public, recurse)
            .get("/huge-response", "Answers 100 MB", Access::Public, huge_response)
            .get("/big-response", "Answers ?kb= KiB", Access::Public, big_response)
            .get("/call/{service}", "Calls ?path= on another service", Access::Public, call)
            .get("/sleep", "Holds its instance for ?ms= milliseconds", Access::Public, sleep)
            .post("/publish", "Publishes an event on ?topic=", Access::Public, publish)
            .post(
                "/publish-then-fail",
                "Publishes an event on ?topic=, then answers 500",
                Access::Public,
                publish_then_fail,
            )
            .post("/publish-many", "Publishes ?count= events on ?topic=", Access::Public, publish_many)
            .post("/fix-poison", "Lets probe.poison events succeed from now on", Access::Public, fix_poison)
            .get("/effects", "Counts the events handled on ?topic=", Access::Public, count_effects)
    }
}

impl handler::Guest for Probe {
    fn handle(request: http::Request) -> http::Response {
        Probe::router().handle(request)
    }

    fn routes() -> Vec<http::Route> {
        Probe::router().routes()
    }
}

impl subscriber::Guest for Probe {
    /// One event after the other: the probe's handler is about failures, not speed.
    fn handle_events(events: Vec<Event>) -> Result<(), String> {
        events.iter().try_for_each(handle_event)
    }
}

fn handle_event(event: &Event) -> Result<(), String> {
    let db = Db::open().map_err(|err| err.message)?;
    let data: serde_json::Value = serde_json::from_str(&event.data).map_err(|err| err.to_string())?;
    match event.topic.as_str() {
        "probe.flaky" if i64::from(event.attempt) <= data["fail_times"].as_i64().unwrap_or(0) => {
            return Err(format!("flaky failure on attempt {}", event.attempt));
        }
        "probe.poison" if !table_has_rows(&db, "probe_fixes")? => return Err("poison: cannot handle".into()),
        _ => {}
    }
    db.execute(
        "INSERT INTO probe_effects (event_id, topic, attempt) VALUES ($1, $2, $3)",
        &[param::text(&event.id), param::text(&event.topic), param::int(event.attempt.into())],
    )
    .map_err(|err| err.message)?;
    Ok(())
}

bindings::export!(Probe with_types_in bindings);

fn table_has_rows(db: &Db, table: &str) -> Result<bool, String> {
    let present = db
        .query_one("SELECT to_regclass($1) IS NOT NULL AS present", &[param::text(table)])
        .map_err(|err| err.message)?;
    if !present.bool("present") {
        return Ok(false);
    }
    let rows = db.query(&format!("SELECT 1 FROM {table} LIMIT 1"), &[]).map_err(|err| err.message)?;
    Ok(!rows.is_empty())
}

fn ping(_: &mut Context) -> Result<Response, ApiError> {
    Ok(Response::ok(&json!({ "pong": true })))
}

/// Which build of the probe this is: the deploy tests swap one for the other.
const BUILD: &str = if cfg!(feature = "second-build") { "second" } else { "first" };

fn version(_: &mut Context) -> Result<Response, ApiError> {
    Ok(Response::ok(&json!({ "build": BUILD })))
}

#[allow(clippy::empty_loop)]
fn spin(_: &mut Context) -> Result<Response, ApiError> {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn trap(_: &mut Context) -> Result<Response, ApiError> {
    panic!("the probe was asked to trap")
}

fn insert_row(ctx: &mut Context) -> Result<(), ApiError> {
    let db = ctx.db()?;
    db.execute("CREATE TABLE IF NOT EXISTS probe_writes (id BIGSERIAL PRIMARY KEY, note TEXT)", &[])?;
    db.execute("INSERT INTO probe_writes (note) VALUES ($1)", &[param::text("written")])?;
    Ok(())
}

fn write(ctx: &mut Context) -> Result<Response, ApiError> {
    insert_row(ctx)?;
    Ok(Response::created(&json!({ "written": true })))
}

fn write_then_fail(ctx: &mut Context) -> Result<Response, ApiError> {
    insert_row(ctx)?;
    Err(ApiError::new(500, "probe_failure", "failed after writing"))
}

fn write_then_trap(ctx: &mut Context) -> Result<Response, ApiError> {
    insert_row(ctx)?;
    panic!("trapped after writing")
}

fn count_writes(ctx: &mut Context) -> Result<Response, ApiError> {
    let db = ctx.db()?;
    let exists = db.query_one("SELECT to_regclass('probe_writes') IS NOT NULL AS present", &[])?;
    let count =
        if exists.bool("present") { db.query_one("SELECT count(*) AS n FROM probe_writes", &[])?.int("n") } else { 0 };
    Ok(Response::ok(&json!({ "count": count })))
}

/// Every way a component might try to reach the user service's data; each must fail.
fn foreign(ctx: &mut Context) -> Result<Response, ApiError> {
    let db = ctx.db()?;
    let attempts = [
        ("own_handle_users", "SELECT count(*) AS n FROM users"),
        ("qualified_users", "SELECT count(*) AS n FROM user_schema.users"),
        ("cross_database", "SELECT count(*) AS n FROM micropay_user_db.user_schema.users"),
        ("dblink", "CREATE EXTENSION dblink"),
        ("read_file", "SELECT pg_read_file('PG_VERSION') AS n"),
    ];
    let mut outcome = serde_json::Map::new();
    for (name, sql) in attempts {
        // Each attempt in its own savepoint: a failed statement aborts only that attempt.
        db.execute("SAVEPOINT attempt", &[])?;
        let result = match db.query(sql, &[]) {
            Ok(_) => json!({ "reached": true }),
            Err(err) => json!({ "reached": false, "code": err.code, "message": err.message }),
        };
        db.execute("ROLLBACK TO SAVEPOINT attempt", &[])?;
        outcome.insert(name.to_string(), result);
    }
    Ok(Response::ok(&outcome))
}

fn whoami(ctx: &mut Context) -> Result<Response, ApiError> {
    let caller = ctx.caller()?;
    Ok(Response::ok(&json!({ "user_id": caller.user_id, "session_id": caller.session_id })))
}

fn catalog(ctx: &mut Context) -> Result<Response, ApiError> {
    let db = ctx.db()?;
    // In a savepoint: a refused statement aborts only it, and the unit can still commit.
    db.execute("SAVEPOINT attempt", &[])?;
    let answer = match db.query("SELECT datname FROM pg_database", &[]) {
        Ok(rows) => json!({ "reached": true, "databases": rows.len() }),
        Err(err) => json!({ "reached": false, "code": err.code }),
    };
    db.execute("ROLLBACK TO SAVEPOINT attempt", &[])?;
    Ok(Response::ok(&answer))
}

/// Runs each statement of the body and reports its outcome: rows (each a list of values as
/// text) or the error's SQLSTATE and message.
fn run_sql(ctx: &mut Context) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    struct Body {
        statements: Vec<String>,
        #[serde(default = "yes")]
        savepoints: bool,
        /// A topic to publish an event on in the same unit of work, after the statements.
        #[serde(default)]
        publish: Option<String>,
    }
    fn yes() -> bool {
        true
    }
    let body: Body = ctx.json()?;
    let db = ctx.db()?;
    let mut results = Vec::new();
    for sql in &body.statements {
        if body.savepoints {
            db.execute("SAVEPOINT attempt", &[])?;
        }
        let result = match db.query(sql, &[]) {
            Ok(rows) => {
                let rows: Vec<Vec<serde_json::Value>> =
                    rows.iter().map(|row| row.values().iter().map(value_json).collect()).collect();
                json!({ "ok": true, "rows": rows })
            }
            Err(err) => json!({ "ok": false, "code": err.code, "message": err.message }),
        };
        if body.savepoints {
            db.execute("ROLLBACK TO SAVEPOINT attempt", &[])?;
            db.execute("RELEASE SAVEPOINT attempt", &[])?;
        }
        results.push(result);
    }
    if let Some(topic) = &body.publish {
        micropay_sdk::events::publish(topic, "probe-key", &json!({ "after_sql": true }))
            .map_err(|err| ApiError::new(400, "publish_refused", format!("{err:?}")))?;
    }
    Ok(Response::ok(&json!({ "results": results })))
}

fn value_json(value: &micropay_sdk::db::Value) -> serde_json::Value {
    use micropay_sdk::db::Value;
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Boolean(b) => json!(b),
        Value::Integer(i) => json!(i),
        Value::Decimal(text) | Value::Text(text) | Value::Uuid(text) | Value::Json(text) => json!(text),
        Value::Timestamp(micros) => json!(micros),
        Value::Bytes(bytes) => json!(bytes.len()),
    }
}

fn memory_bomb(_: &mut Context) -> Result<Response, ApiError> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
    }
}

fn recurse(ctx: &mut Context) -> Result<Response, ApiError> {
    fn deeper(n: u64) -> u64 {
        // Never true: the recursion only ends when the stack does.
        if std::hint::black_box(n) == u64::MAX {
            return n;
        }
        std::hint::black_box(deeper(n + 1)) + 1
    }
    let _ = ctx;
    Ok(Response::ok(&json!({ "depth": deeper(0) })))
}

fn huge_response(_: &mut Context) -> Result<Response, ApiError> {
    Ok(Response { status: 200, headers: Vec::new(), body: vec![b'x'; 100 << 20] })
}

fn big_response(ctx: &mut Context) -> Result<Response, ApiError> {
    let kb: usize = ctx.query("kb").and_then(|kb| kb.parse().ok()).unwrap_or(1);
    Ok(Response::ok(&json!({ "filler": "x".repeat(kb << 10) })))
}

fn call(ctx: &mut Context) -> Result<Response, ApiError> {
    let path = ctx.query("path").unwrap_or_else(|| "/".into());
    match micropay_sdk::services::call(ctx.param("service"), "GET", &path, None) {
        Ok(response) => {
            let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
            Ok(Response::ok(&json!({ "status": response.status, "body": body })))
        }
        Err(micropay_sdk::services::CallError::NotGranted(message)) => Err(ApiError::forbidden("not_granted", message)),
        Err(err) => Err(ApiError::new(502, "call_failed", format!("{err:?}"))),
    }
}

fn sleep(ctx: &mut Context) -> Result<Response, ApiError> {
    let ms: i64 = ctx.query("ms").and_then(|ms| ms.parse().ok()).unwrap_or(100);
    // pg_sleep holds the instance without burning fuel or tripping the epoch deadline early.
    ctx.db()?.execute("SELECT pg_sleep($1::bigint / 1000.0)", &[param::int(ms)])?;
    Ok(Response::ok(&json!({ "slept_ms": ms })))
}

fn publish(ctx: &mut Context) -> Result<Response, ApiError> {
    let topic = ctx.query("topic").unwrap_or_default();
    let key = ctx.query("key").unwrap_or_else(|| "probe-key".to_string());
    let data = if ctx.body().is_empty() { json!({ "probe": true }) } else { ctx.json()? };
    match micropay_sdk::events::publish(&topic, &key, &data) {
        Ok(event_id) => Ok(Response::created(&json!({ "event_id": event_id }))),
        Err(micropay_sdk::events::PublishError::NotGranted(message)) => {
            Err(ApiError::forbidden("not_granted", message))
        }
        Err(err) => Err(ApiError::new(400, "publish_refused", format!("{err:?}"))),
    }
}

fn publish_then_fail(ctx: &mut Context) -> Result<Response, ApiError> {
    publish(ctx)?;
    Err(ApiError::new(500, "probe_failure", "failed after publishing"))
}

fn publish_many(ctx: &mut Context) -> Result<Response, ApiError> {
    let topic = ctx.query("topic").unwrap_or_default();
    let count: u32 = ctx.query("count").and_then(|n| n.parse().ok()).unwrap_or(1);
    let numbered = ctx.query("numbered").as_deref() == Some("true");
    for i in 0..count {
        let topic = if numbered { format!("{topic}{i}") } else { topic.clone() };
        micropay_sdk::events::publish(&topic, &format!("key-{}", i % 16), &json!({ "n": i }))?;
    }
    Ok(Response::created(&json!({ "published": count })))
}

fn fix_poison(ctx: &mut Context) -> Result<Response, ApiError> {
    let db = ctx.db()?;
    db.execute("CREATE TABLE IF NOT EXISTS probe_fixes (fixed BOOLEAN)", &[])?;
    db.execute("INSERT INTO probe_fixes VALUES (true)", &[])?;
    Ok(Response::ok(&json!({ "fixed": true })))
}

fn count_effects(ctx: &mut Context) -> Result<Response, ApiError> {
    let topic = ctx.query("topic").unwrap_or_default();
    let count =
        ctx.db()?.query_one("SELECT count(*) AS n FROM probe_effects WHERE topic = $1", &[param::text(&topic)])?;
    Ok(Response::ok(&json!({ "count": count.int("n") })))
}
