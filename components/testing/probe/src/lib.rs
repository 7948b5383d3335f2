//! The probe: a component that misbehaves on request, to prove the host contains it.
//!
//! - `GET /ping` answers without touching the database (the invocation-cost benchmark).
//! - `GET /loop` never returns: the epoch deadline must cut it.
//! - `GET /trap` panics: the invocation fails with a 5xx, the host keeps serving.
//! - `POST /write-then-fail` writes a row and then answers 500: the write must be rolled back.
//! - `POST /write-then-trap` writes a row and then traps: the write must be rolled back.
//! - `POST /write` writes a row and succeeds.
//! - `GET /writes` counts the rows written.
//! - `GET /foreign` tries to read another service's tables and database from its own handle.
//! - `GET /catalog` asks PostgreSQL's catalog for the other databases.
//! - `GET /memory-bomb` allocates until something stops it.
//! - `GET /recurse` recurses without end.
//! - `GET /huge-response` answers 100 MB; `GET /big-response?kb=N` answers N KiB.
//! - `GET /call/{service}?path=/p` calls another service through the host.
//! - `GET /sleep?ms=N` holds its instance for N ms (without spinning).
//! - `POST /publish?topic=T` publishes an event; `POST /publish-then-fail?topic=T` publishes,
//!   then answers 500.

use micropay_sdk::db::param;
use micropay_sdk::{Access, ApiError, Context, Response, Router, Service};
use serde_json::json;

struct Probe;

impl Service for Probe {
    fn router() -> Router {
        Router::new()
            .get("/ping", "Answers pong without touching the database", Access::Public, ping)
            .get("/loop", "Loops forever", Access::Public, spin)
            .get("/trap", "Panics", Access::Public, trap)
            .post("/write", "Writes one row", Access::Public, write)
            .post("/write-then-fail", "Writes one row, then answers 500", Access::Public, write_then_fail)
            .post("/write-then-trap", "Writes one row, then panics", Access::Public, write_then_trap)
            .get("/writes", "Counts the rows written", Access::Public, count_writes)
            .get("/foreign", "Tries to reach another service's data", Access::Public, foreign)
            .get("/whoami", "Shows the caller", Access::Authenticated, whoami)
            .get("/catalog", "Lists the server's databases", Access::Public, catalog)
            .get("/memory-bomb", "Allocates without end", Access::Public, memory_bomb)
            .get("/recurse", "Recurses without end", Access::Public, recurse)
            .get("/huge-response", "Answers 100 MB", Access::Public, huge_response)
            .get("/big-response", "Answers ?kb= KiB", Access::Public, big_response)
            .get("/call/{service}", "Calls ?path= on another service", Access::Public, call)
            .get("/sleep", "Holds its instance for ?ms= milliseconds", Access::Public, sleep)
            .post("/publish", "Publishes an event on ?topic=", Access::Public, publish)
            .post("/publish-then-fail", "Publishes an event on ?topic=, then answers 500", Access::Public, publish_then_fail)
    }
}

micropay_sdk::export_service!(Probe);

fn ping(_: &mut Context) -> Result<Response, ApiError> {
    Ok(Response::ok(&json!({ "pong": true })))
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
    match db.query("SELECT datname FROM pg_database", &[]) {
        Ok(rows) => Ok(Response::ok(&json!({ "reached": true, "databases": rows.len() }))),
        Err(err) => Ok(Response::ok(&json!({ "reached": false, "code": err.code }))),
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
    match micropay_sdk::events::publish(&topic, "probe-key", &json!({ "probe": true })) {
        Ok(event_id) => Ok(Response::created(&json!({ "event_id": event_id }))),
        Err(micropay_sdk::events::PublishError::NotGranted(message)) => Err(ApiError::forbidden("not_granted", message)),
        Err(err) => Err(ApiError::new(400, "publish_refused", format!("{err:?}"))),
    }
}

fn publish_then_fail(ctx: &mut Context) -> Result<Response, ApiError> {
    publish(ctx)?;
    Err(ApiError::new(500, "probe_failure", "failed after publishing"))
}
