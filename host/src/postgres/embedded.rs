//! The embedded default: a private PostgreSQL cluster under the data directory, started from
//! the system's binaries, listening only on a unix socket inside its own data directory, durable
//! (fsync on), and stopped with the host.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

/// The superuser of the embedded cluster.
const SUPERUSER: &str = "postgres";

/// A running embedded cluster. Dropping it (or [`EmbeddedPostgres::stop`]) shuts it down.
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    child: Arc<Mutex<Option<Child>>>,
}

impl EmbeddedPostgres {
    /// Initialises the cluster in `data_dir` if it is new, then starts it and waits until it
    /// accepts connections.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let bin = find_binaries()?;
        let data_dir = std::path::absolute(data_dir).context("resolving the data directory")?;
        let account = ServerAccount::current()?;
        if !data_dir.join("PG_VERSION").exists() {
            init_cluster(&bin, &data_dir, &account)?;
        }
        let child = Arc::new(Mutex::new(None));
        spawn_server(&bin, &data_dir, &account, child.clone())?;
        let server = Self { data_dir, child };
        server.wait_until_ready().await?;
        Ok(server)
    }

    /// Admin connection options: the superuser over the private socket.
    pub fn admin_options(&self) -> PgConnectOptions {
        PgConnectOptions::new().socket(&self.data_dir).username(SUPERUSER).database("postgres")
    }

    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            match self.admin_options().connect().await {
                Ok(_) => return Ok(()),
                Err(err) if started.elapsed() > Duration::from_secs(60) => {
                    bail!("embedded PostgreSQL did not accept connections within 60 s: {err}")
                }
                Err(_) => {
                    if let Some(status) = self.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten())
                    {
                        bail!(
                            "embedded PostgreSQL exited at start ({status}); see {}/server.log",
                            self.data_dir.display()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
            }
        }
    }

    /// Fast shutdown: rolls back open transactions, flushes, and waits for the server to exit.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Locates `initdb` and `postgres`: `MICROPAY_PG_BIN`, then Debian's versioned directories
/// (newest first), then `pg_config --bindir`.
fn find_binaries() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("MICROPAY_PG_BIN").map(PathBuf::from) {
        if has_server(&dir) {
            return Ok(dir);
        }
        bail!("MICROPAY_PG_BIN={} holds no initdb and postgres", dir.display());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    bail!(
        "PostgreSQL server binaries not found: install them (Debian: `apt-get install postgresql`) or set MICROPAY_DATABASE_URL"
    )
}

/// The operating-system account the server runs as. PostgreSQL refuses to run as root, so a
/// root host runs it as the `postgres` account.
struct ServerAccount {
    ids: Option<(u32, u32)>,
}

impl ServerAccount {
    fn current() -> anyhow::Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(Self { ids: None });
        }
        let name = std::ffi::CString::new(SUPERUSER).expect("no NUL");
        // SAFETY: getpwnam returns a pointer to static storage or NULL; read at once.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if entry.is_null() {
            bail!(
                "running as root needs a `postgres` account to run PostgreSQL (Debian: `apt-get install postgresql`)"
            );
        }
        // SAFETY: non-null pointer from getpwnam, read before any other passwd call.
        let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        Ok(Self { ids: Some((uid, gid)) })
    }

    fn command(&self, program: PathBuf) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn own(&self, dir: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).with_context(|| format!("chown {}", dir.display()))?;
        }
        Ok(())
    }
}

fn init_cluster(bin: &Path, data_dir: &Path, account: &ServerAccount) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    account.own(data_dir)?;
    tracing::info!(data_dir = %data_dir.display(), "initialising the embedded PostgreSQL cluster");
    let output = account
        .command(bin.join("initdb"))
        .arg("-D")
        .arg(data_dir)
        .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-locale"])
        .output()
        .context("running initdb")?;
    if !output.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Starts `postgres` from a thread that lives as long as the server: the child is asked to
/// stop by PR_SET_PDEATHSIG when the host dies, and that signal fires when the spawning
/// *thread* exits, so the thread must not be a short-lived one.
fn spawn_server(
    bin: &Path,
    data_dir: &Path,
    account: &ServerAccount,
    slot: Arc<Mutex<Option<Child>>>,
) -> anyhow::Result<()> {
    let log = std::fs::File::create(data_dir.join("server.log")).context("creating server.log")?;
    let mut command = account.command(bin.join("postgres"));
    command
        .arg("-D")
        .arg(data_dir)
        .arg("-k")
        .arg(data_dir)
        .args(["-c", "listen_addresses=", "-c", "unix_socket_permissions=0700"])
        .args(["-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("embedded-postgres".into()).spawn(move || {
        match command.spawn() {
            Ok(child) => {
                *slot.lock().unwrap() = Some(child);
                let _ = sender.send(Ok(()));
                // Stay alive while the server runs (see the doc comment).
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let running =
                        slot.lock().unwrap().as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)));
                    if !running {
                        break;
                    }
                }
            }
            Err(err) => {
                let _ = sender.send(Err(err));
            }
        }
    })?;
    receiver.recv().context("embedded PostgreSQL thread")?.context("starting postgres")?;
    Ok(())
}
