//! The test harness: starts the real `micropay` binary on its own databases (a fresh name
//! prefix per test on the PostgreSQL at `MICROPAY_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), talks to it over HTTP, reads its log, and
//! drops its databases afterwards. Tests run in parallel without sharing anything but the
//! compiled-component cache.

pub mod bank;
pub mod mail;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_path_buf()
}

/// The administrator URL of the test PostgreSQL server.
pub fn admin_url() -> String {
    std::env::var("MICROPAY_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The NATS server (with JetStream) of the bus tests.
pub fn nats_url() -> String {
    std::env::var("MICROPAY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The event bus backends; the bus tests run on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// In PostgreSQL (the default).
    Embedded,
    /// NATS JetStream at [`nats_url`].
    Nats,
}

/// How to start a host.
#[derive(Clone)]
pub struct HostOptions {
    /// `None` starts the embedded PostgreSQL in `data_dir`.
    pub database_url: Option<String>,
    pub prefix: String,
    pub data_dir: PathBuf,
    /// The compile cache; by default one shared by every test, so each component compiles once.
    pub cache_dir: PathBuf,
    pub extra_args: Vec<String>,
    /// NATS for the bus; none for the embedded bus.
    pub nats_url: Option<String>,
    /// Whether verification codes reach the log (`--dev-log-secrets`): tests sign users up
    /// with them.
    pub dev_log_secrets: bool,
    /// The most connections the host may open (`--db-connections`).
    pub db_connections: u32,
    /// The log filter (`RUST_LOG`).
    pub log_filter: String,
    /// The services' migrations.
    pub migrations_dir: PathBuf,
    /// The policies' directories.
    pub policies: Vec<PathBuf>,
    /// The components' directory.
    pub components_dir: PathBuf,
    /// Services deployed while it runs that its connection budget keeps room for
    /// (`--spare-services`): none but where a test deploys one, so that every pool keeps its
    /// share of the test budget.
    pub spare_services: u32,
}

impl HostOptions {
    /// A host on the test server with a fresh database prefix and the product's and the test
    /// components' policies.
    pub fn on_test_server() -> Self {
        let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let data_dir = std::env::temp_dir().join(format!("micropay-{prefix}"));
        Self {
            database_url: Some(admin_url()),
            prefix,
            data_dir,
            cache_dir: root().join("target/test-cache"),
            extra_args: Vec::new(),
            nats_url: None,
            dev_log_secrets: true,
            db_connections: DB_CONNECTIONS,
            log_filter: "info,sqlx=warn,sqlx::postgres::notice=off".into(),
            migrations_dir: root().join("migrations"),
            policies: vec![root().join("policies"), root().join("tests/policies")],
            components_dir: root().join("target/components"),
            spare_services: 0,
        }
    }

    /// [`HostOptions::on_test_server`] with the event bus on `bus`.
    pub fn with_bus(bus: Bus) -> Self {
        Self { nats_url: (bus == Bus::Nats).then(nats_url), ..Self::on_test_server() }
    }
}

/// The connections each test host may open: two tests run at once, a few with two hosts each,
/// on a server of 200 connections (`cargo xtask test` sees to it; pools open connections as they need them, so hosts rarely
/// hold their whole budget). Two per service pool for the nine service databases: a call
/// chain that comes back to a service (payment → transaction → payment) needs two.
pub const DB_CONNECTIONS: u32 = 38;

/// A running `micropay serve`.
pub struct TestHost {
    child: Child,
    pub base_url: String,
    pub prefix: String,
    database_url: Option<String>,
    /// How it was started, for [`TestHost::restart`].
    pub options: HostOptions,
    log: Arc<Mutex<Vec<String>>>,
    pub http: reqwest::Client,
}

impl TestHost {
    /// Starts a host on the test server.
    pub async fn start() -> Self {
        Self::start_with(HostOptions::on_test_server()).await
    }

    /// Starts a host and waits until it listens.
    pub async fn start_with(options: HostOptions) -> Self {
        let (child, log) = spawn(&options);
        let mut host = Self {
            child,
            base_url: String::new(),
            prefix: options.prefix.clone(),
            database_url: options.database_url.clone(),
            options,
            log,
            http: reqwest::Client::new(),
        };
        host.wait_until_listening().await;
        host
    }

    /// Starts the host again with [`TestHost::options`] (after [`TestHost::kill`] or
    /// [`TestHost::stop`]), on the same databases; the log starts afresh.
    pub async fn restart(&mut self) {
        self.kill();
        let (child, log) = spawn(&self.options);
        self.child = child;
        self.log = log;
        self.wait_until_listening().await;
    }

    async fn wait_until_listening(&mut self) {
        let line = self.wait_for_log("listening on http://", Duration::from_secs(120)).await;
        let address = line.split("listening on http://").nth(1).unwrap().split_whitespace().next().unwrap();
        self.base_url = format!("http://{address}");
    }

    /// Creates an admin API key with `role` (`ops`, `risk`, `platform`) in the host's keys file.
    pub fn admin_key(&self, role: &str) -> String {
        std::fs::create_dir_all(&self.options.data_dir).unwrap();
        let output = Command::new(root().join("target/debug/micropay"))
            .args(["admin-key", "create", "--role", role, "--admin-keys"])
            .arg(self.options.data_dir.join("admin-keys.toml"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// Runs `micropay args...` against this host with `key`; returns whether it succeeded and
    /// what it printed (stdout, then stderr).
    pub fn command(&self, key: &str, args: &[&str]) -> (bool, String) {
        let output = Command::new(root().join("target/debug/micropay"))
            .args(args)
            .env("MICROPAY_URL", &self.base_url)
            .env("MICROPAY_ADMIN_KEY", key)
            .output()
            .unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), printed)
    }
}

/// Starts `micropay serve` with `options`; its output is collected into the returned log.
fn spawn(options: &HostOptions) -> (Child, Arc<Mutex<Vec<String>>>) {
    let root = root();
    let binary = root.join("target/debug/micropay");
    assert!(binary.exists(), "{} is missing: run `cargo xtask test`", binary.display());
    let mut command = Command::new(binary);
    command
        .current_dir(&root)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&options.data_dir)
        .arg("--cache-dir")
        .arg(&options.cache_dir)
        .arg("--policies")
        .arg(options.policies.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(","))
        .arg("--components-dir")
        .arg(&options.components_dir)
        .arg("--migrations-dir")
        .arg(&options.migrations_dir)
        // Several hosts run at once on a server of 200 connections.
        .args(["--pool-min", "1", "--db-connections", &options.db_connections.to_string()])
        .args(["--spare-services", &options.spare_services.to_string()])
        .args(options.dev_log_secrets.then_some("--dev-log-secrets"))
        .args(&options.extra_args)
        .env_remove("MICROPAY_DATABASE_URL")
        .env_remove("MICROPAY_NATS_URL")
        .env("RUST_LOG", &options.log_filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = &options.database_url {
        command.args(["--database-url", url, "--database-prefix", &options.prefix]);
    }
    if let Some(url) = &options.nats_url {
        command.args(["--nats-url", url]);
    }
    let mut child = command.spawn().expect("starting micropay");
    let log = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    (child, log)
}

impl TestHost {
    /// The first log line containing `needle`, waiting up to `timeout` for it.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|line| line.contains(needle)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("micropay exited ({status}) before logging {needle:?}:\n{}", self.log_text());
            }
            assert!(started.elapsed() < timeout, "no log line with {needle:?} in {timeout:?}:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Sends a request and returns the status and the JSON body (`Null` when empty).
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let (status, _, json) = self.call_with(method, path, token, &[], body).await;
        (status, json)
    }

    /// [`TestHost::call`] with extra request headers; also returns the response's headers.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") };
        (status, headers, json)
    }

    /// A superuser connection to the database of `service` (for assertions only: the host
    /// itself never connects this way).
    pub async fn admin_db(&self, service: &str) -> PgConnection {
        let url = self.database_url.as_ref().expect("admin_db needs a test-server host");
        let base = url.rsplit_once('/').unwrap().0;
        let mut conn = PgConnection::connect(&format!("{base}/{}micropay_{service}_db", self.prefix)).await.unwrap();
        sqlx::query(&format!("SET search_path = {service}_schema")).execute(&mut conn).await.unwrap();
        conn
    }

    /// Stops the host with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the host with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- micropay log ---\n{}", self.log_text());
        }
        let (database_url, nats_url, prefix) =
            (self.database_url.clone(), self.options.nats_url.clone(), self.prefix.clone());
        // Drop runs inside the test's runtime: clean up from a thread with its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                if let Some(url) = database_url {
                    drop_databases(&url, &prefix).await;
                }
                if let Some(url) = nats_url {
                    drop_stream(&url, &prefix).await;
                }
            })
        })
        .join();
    }
}

/// Drops every database, then every role, named with `prefix` (roles own the databases).
async fn drop_databases(url: &str, prefix: &str) {
    let Ok(mut admin) = PgConnection::connect(url).await else { return };
    let pattern = format!("{}%", prefix.replace('_', "\\_"));
    for (list, drop) in [
        ("SELECT datname FROM pg_database WHERE datname LIKE $1", "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)"),
        ("SELECT rolname FROM pg_roles WHERE rolname LIKE $1", "DROP ROLE IF EXISTS \"{}\""),
    ] {
        let names: Vec<(String,)> = sqlx::query_as(list).bind(&pattern).fetch_all(&mut admin).await.unwrap_or_default();
        for (name,) in names {
            let _ = sqlx::query(&drop.replace("{}", &name)).execute(&mut admin).await;
        }
    }
}

/// Deletes the JetStream stream of the installation named `prefix` (and so its consumers).
async fn drop_stream(url: &str, prefix: &str) {
    let Ok(client) = async_nats::connect(url).await else { return };
    let _ = async_nats::jetstream::new(client).delete_stream(stream_name(prefix)).await;
}

/// The JetStream stream of the installation named `prefix`.
pub fn stream_name(prefix: &str) -> String {
    format!("{}MICROPAY_EVENTS", prefix.to_ascii_uppercase())
}

impl TestHost {
    /// The sum of the `/metrics` samples whose line starts with `series` (a name with
    /// optional labels, e.g. `micropay_bus_deliveries_total{subscriber="probe",outcome="Handled"}`).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits up to `timeout` until `GET path` answers a JSON body whose `field` is `expected`;
    /// panics with the last body otherwise.
    pub async fn wait_for_json(&self, path: &str, field: &str, expected: Value, timeout: Duration) {
        self.wait_for_json_as(path, None, field, expected, timeout).await
    }

    /// [`TestHost::wait_for_json`] with a bearer token.
    pub async fn wait_for_json_as(
        &self,
        path: &str,
        token: Option<&str>,
        field: &str,
        expected: Value,
        timeout: Duration,
    ) {
        let started = Instant::now();
        loop {
            let (_, body) = self.call("GET", path, token, None).await;
            if body[field] == expected {
                return;
            }
            assert!(started.elapsed() < timeout, "GET {path}: {field} is not {expected} after {timeout:?}: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A signed-up, verified user with a live session.
pub struct User {
    pub user_id: String,
    pub email: String,
    pub password: String,
    pub token: String,
}

/// The verification code the user service logged for `user_id` on `channel`.
pub async fn verification_code(host: &mut TestHost, channel: &str, user_id: &str) -> String {
    let line = host
        .wait_for_log(&format!("verification code for {channel} of user {user_id}: "), Duration::from_secs(10))
        .await;
    let after = line.split(&format!("of user {user_id}: ")).nth(1).unwrap();
    after.chars().take(6).collect()
}

/// Signs up, verifies the email and logs in.
pub async fn signed_in_user(host: &mut TestHost) -> User {
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse 42 battery".to_string();
    let (status, body) = host
        .call("POST", "/v1/user/users", None, Some(serde_json::json!({"email": email, "password": password})))
        .await;
    assert_eq!(status, 201, "{body}");
    let user_id = body["user_id"].as_str().unwrap().to_string();
    let code = verification_code(host, "EMAIL", &user_id).await;
    let (status, body) = host
        .call("POST", "/v1/user/verifications/email", None, Some(serde_json::json!({"email": email, "code": code})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = host
        .call("POST", "/v1/user/sessions", None, Some(serde_json::json!({"email": email, "password": password})))
        .await;
    assert_eq!(status, 201, "{body}");
    User { user_id, email, password, token: body["token"].as_str().unwrap().to_string() }
}

/// Traffic on a service other than the one under attack, kept up from [`Bystander::start`] to
/// [`Bystander::finish`]: whatever the attack, it must see no error.
pub struct Bystander {
    stop: Arc<std::sync::atomic::AtomicBool>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

/// Requests a bystander serves at the least before it stops.
const BYSTANDER_REQUESTS: usize = 6;

impl Bystander {
    /// `user` reading their preferences from the user service, again and again.
    pub fn start(host: &TestHost, user: &User) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (http, url, token) = (host.http.clone(), host.url("/v1/user/me/preferences"), user.token.clone());
        let (stopped, counted) = (stop.clone(), served.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stopped.load(Relaxed) {
                match http.get(&url).bearer_auth(&token).send().await {
                    Ok(response) if response.status() == 200 => {
                        counted.fetch_add(1, Relaxed);
                    }
                    Ok(response) => {
                        failures.push(format!("{}: {}", response.status(), response.text().await.unwrap_or_default()))
                    }
                    Err(err) => failures.push(err.to_string()),
                }
            }
            failures
        });
        Self { stop, served, task }
    }

    /// Stops (once it has served a few requests, however quick what it watched was), and
    /// asserts that every request was served.
    pub async fn finish(self) {
        use std::sync::atomic::Ordering::Relaxed;
        let started = Instant::now();
        while self.served.load(Relaxed) < BYSTANDER_REQUESTS && !self.task.is_finished() {
            assert!(started.elapsed() < Duration::from_secs(10), "the bystander hardly ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Relaxed);
        let failures = self.task.await.unwrap();
        assert!(failures.is_empty(), "the bystander saw {} errors: {failures:?}", failures.len());
    }
}

/// Asserts the platform's error shape and returns the code.
pub fn error_code(body: &Value) -> &str {
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(body["error"]["message"].is_string(), "error without message: {body}");
    code
}

/// Polls `count` (a query answering one `count(*)`) on `db` until it answers zero; panics
/// naming `what` and the last count when `timeout` passes first.
pub async fn wait_until_none(db: &mut PgConnection, count: &str, timeout: Duration, what: &str) {
    let started = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar(count).fetch_one(&mut *db).await.unwrap();
        if left == 0 {
            return;
        }
        assert!(started.elapsed() < timeout, "{left} {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
