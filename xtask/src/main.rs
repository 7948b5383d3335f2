//! Project automation. `cargo xtask serve` and `cargo xtask test` set up whatever a fresh
//! machine lacks (the wasm toolchain, PostgreSQL, NATS for the bus tests), build the components
//! and the host, then serve or test.
//!
//! Components build for `wasm32-unknown-unknown` with Debian's Rust and a standard library
//! built from source (`-Zbuild-std`): rustup cannot add wasm targets on these machines. That
//! toolchain has its own cargo home and target directory, apart from the host's. A test
//! component written for the standard `wasm32-wasip2` target builds with the same toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Debian packages the build, the embedded database, the NATS bus tests and the notification
/// tests' SMTP server (OpenSSL) need.
const SYSTEM_PACKAGES: &[&str] =
    &["rustc-web", "cargo-web", "rust-web-src", "lld-19", "postgresql", "nats-server", "libssl-dev", "pkg-config"];

/// What the bench needs beside: an SMTP server for the notifications part (aiosmtpd's sink).
const BENCH_PACKAGES: &[&str] = &["python3-aiosmtpd"];

/// The machine's PostgreSQL, which the tests and the bench use.
const LOCAL_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const USAGE: &str = "usage: cargo xtask <setup | components | serve [ARGS...] | test [ARGS...] | bench [ARGS...]>";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root();
    match command.as_str() {
        "setup" => setup(),
        "components" => {
            setup()?;
            build_components(&root)
        }
        "serve" => {
            setup()?;
            build_components(&root)?;
            cargo(&root, &["run", "--release", "--package", "micropay", "--", "serve"], &rest)
        }
        "bench" => {
            setup()?;
            install(BENCH_PACKAGES)?;
            build_components(&root)?;
            ensure_test_postgres()?;
            ensure_test_nats(&root)?;
            let url = std::env::var("MICROPAY_DATABASE_URL").unwrap_or_else(|_| LOCAL_POSTGRES.to_string());
            let args = ["run", "--release", "--package", "micropay", "--", "bench", "--database-url", &url];
            let defaults =
                ["--database-prefix", "bench_", "--policies", "tests/policies,policies", "--data-dir", "target/bench"];
            cargo(&root, &[&args[..], &defaults[..]].concat(), &rest)
        }
        "test" => {
            setup()?;
            build_components(&root)?;
            ensure_test_postgres()?;
            ensure_test_nats(&root)?;
            // The whole workspace, as the tests build it: one feature set, so the test build
            // reuses this one instead of rebuilding wasmtime with other features.
            cargo(&root, &["build", "--workspace"], &[])?;
            cargo(&root, &["test", "--workspace"], &rest)?;
            // The components' own rules (validation, hashing) as native unit tests.
            let manifest = root.join("components/Cargo.toml");
            let native = root.join("target/components-native");
            let args = [
                "test",
                "--workspace",
                "--manifest-path",
                &manifest.to_string_lossy(),
                "--target-dir",
                &native.to_string_lossy(),
            ];
            cargo(&root, &args, &[])
        }
        _ => bail!("{USAGE}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Installs the Debian packages the build and the tests need that are missing.
fn setup() -> anyhow::Result<()> {
    install(SYSTEM_PACKAGES)
}

/// Installs those of `packages` that are missing.
fn install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|package| !installed(package)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
        .context("installing system packages (needs root and Debian's package archive)")
}

/// Whether dpkg reports `package` installed.
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// Builds every component crate for wasm and encodes each core module as a component into
/// `target/components/`.
fn build_components(root: &Path) -> anyhow::Result<()> {
    let target_dir = root.join("target/wasm");
    let mut build = wasm_build(root, &root.join("components"), "wasm32-unknown-unknown", &target_dir);
    // Debian's /usr/bin/rust-lld is a dangling link: name the linker.
    build.env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", "/usr/bin/wasm-ld-19");
    run(&mut build).context("building the components for wasm32-unknown-unknown")?;

    let out_dir = root.join("target/components");
    std::fs::create_dir_all(&out_dir)?;
    let release = target_dir.join("wasm32-unknown-unknown/release");
    for entry in std::fs::read_dir(&release).with_context(|| format!("reading {}", release.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "wasm") {
            let name = path.file_name().expect("a file").to_owned();
            encode_component(&path, &out_dir.join(name))?;
        }
    }
    build_wasip2_components(root)
}

/// Encodes the core module at `core` as a component at `out`.
fn encode_component(core: &Path, out: &Path) -> anyhow::Result<()> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .with_context(|| format!("encoding {} as a component", core.display()))?;
    std::fs::write(out, component).with_context(|| format!("writing {}", out.display()))
}

/// `wasm-component-ld`, the linker with which the standard `wasm32-wasip2` target makes a
/// component, pinned.
const WASM_COMPONENT_LD_VERSION: &str = "0.5.31";

/// Builds the test components written for the standard toolchain's component target,
/// `wasm32-wasip2` (plain `std` and `wit-bindgen`, as an outside team would), into
/// `target/components/`. The linker already makes them components.
///
/// Same Debian toolchain and cargo home as the wasm32-unknown-unknown build, with its own
/// target directory. The first run installs `wasm-component-ld` and unpacks Debian's
/// `wasi-libc` (the C library std links on WASI) into `target/tools/`; later runs reuse them.
fn build_wasip2_components(root: &Path) -> anyhow::Result<()> {
    const CRATES: &[(&str, &str)] =
        &[("testing/wasi-probe", "wasi_probe.wasm"), ("fraud-rules/night-owl", "night_owl.wasm")];

    let tools = root.join("target/tools");
    let linker = tools.join("bin/wasm-component-ld");
    if !linker.exists() {
        eprintln!("xtask: installing wasm-component-ld {WASM_COMPONENT_LD_VERSION}");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut install = Command::new(cargo);
        install
            // Unoptimised: it links two small test components, and builds in half the time.
            .args(["install", "wasm-component-ld", "--locked", "--debug", "--version", WASM_COMPONENT_LD_VERSION])
            .arg("--root")
            .arg(&tools);
        for var in HOST_BUILD_VARS {
            install.env_remove(var);
        }
        run(&mut install).context("installing wasm-component-ld")?;
    }

    let wasi_libc = tools.join("wasi-libc");
    let libc_dir = wasi_libc.join("usr/lib/wasm32-wasi");
    if !libc_dir.join("libc.a").exists() {
        unpack_wasi_libc(&tools, &wasi_libc)?;
    }

    let target_dir = root.join("target/wasip2");
    let out_dir = root.join("target/components");
    std::fs::create_dir_all(&out_dir)?;
    // Debian's wasi-libc is where std finds libc on WASI; wasm-component-ld runs Debian's
    // wasm-ld (its own search would find only the dangling /usr/bin/rust-lld).
    let rustflags = format!("-L native={} -C link-arg=--wasm-ld-path=/usr/bin/wasm-ld-19", libc_dir.display());
    for (dir, artifact) in CRATES {
        let mut build = wasm_build(root, &root.join("components").join(dir), "wasm32-wasip2", &target_dir);
        build.env("CARGO_TARGET_WASM32_WASIP2_LINKER", &linker).env("CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS", &rustflags);
        run(&mut build).with_context(|| format!("building components/{dir} for wasm32-wasip2"))?;
        let built = target_dir.join("wasm32-wasip2/release").join(artifact);
        std::fs::copy(&built, out_dir.join(artifact)).with_context(|| format!("copying {}", built.display()))?;
    }
    Ok(())
}

/// Variables that the calling cargo may set for its own build and that must not leak into
/// another build.
const HOST_BUILD_VARS: &[&str] = &[
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_MAKEFLAGS",
];

/// `cargo build --release` of the crate or workspace in `dir` for the wasm `target`, with
/// Debian's toolchain, a standard library built from source and the wasm cargo home.
fn wasm_build(root: &Path, dir: &Path, target: &str, target_dir: &Path) -> Command {
    let mut build = Command::new("/usr/bin/cargo");
    build
        .current_dir(dir)
        .args(["build", "--release", "--target", target, "-Zbuild-std=std,panic_abort"])
        .arg("--target-dir")
        .arg(target_dir);
    for var in ["CARGO", "RUSTUP_TOOLCHAIN"].iter().chain(HOST_BUILD_VARS) {
        build.env_remove(var);
    }
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    build
        .env("PATH", path)
        .env("RUSTC", "/usr/bin/rustc")
        .env("CARGO_HOME", root.join("target/wasm-cargo-home"))
        .env("RUSTC_BOOTSTRAP", "1");
    build
}

/// Unpacks Debian's `wasi-libc` package into `dest` without installing it.
fn unpack_wasi_libc(tools: &Path, dest: &Path) -> anyhow::Result<()> {
    eprintln!("xtask: unpacking Debian's wasi-libc into {}", dest.display());
    // Download and unpack beside `dest`, then rename: an interrupted run leaves no half of it.
    let work = tools.join("wasi-libc.partial");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let download = || run(Command::new("apt-get").args(["download", "-qq", "wasi-libc"]).current_dir(&work));
    if download().is_err() {
        // A machine whose package lists were never fetched (or were cleaned) knows no wasi-libc.
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        download().context("downloading Debian's wasi-libc")?;
    }
    let deb = std::fs::read_dir(&work)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download left no wasi-libc package")?;
    let unpacked = work.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    if dest.exists() {
        std::fs::remove_dir_all(dest)?;
    }
    std::fs::rename(&unpacked, dest)?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// Connections the test server must accept: two tests run at once, some with two hosts, each
/// host up to `DB_CONNECTIONS` of `tests/src/lib.rs` (38).
const TEST_MAX_CONNECTIONS: u32 = 200;

/// The tests need a PostgreSQL server at `MICROPAY_TEST_DATABASE_URL` (default
/// 127.0.0.1:5432); start the machine's cluster if it is installed but stopped, and let it
/// accept [`TEST_MAX_CONNECTIONS`] (Debian's default is 100).
fn ensure_test_postgres() -> anyhow::Result<()> {
    if std::env::var_os("MICROPAY_TEST_DATABASE_URL").is_some() {
        return Ok(());
    }
    let running = std::net::TcpStream::connect("127.0.0.1:5432").is_ok();
    let clusters: Vec<String> = match std::fs::read_dir("/etc/postgresql") {
        Ok(versions) => versions.flatten().map(|version| version.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) if running => return Ok(()),
        Err(err) => return Err(err).context("no PostgreSQL at 127.0.0.1:5432 and no cluster to start"),
    };
    let cluster = |action: &str, version: &str| {
        run(Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", version, "main", action]))
    };
    if !running {
        for version in &clusters {
            eprintln!("xtask: starting the PostgreSQL {version} cluster");
            cluster("start", version)?;
        }
    }
    let psql = |sql: &str| -> anyhow::Result<String> {
        let output = Command::new("psql").args(["-h", "127.0.0.1", "-U", "postgres", "-Atc", sql]).output()?;
        anyhow::ensure!(output.status.success(), "psql: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let accepted: u32 = psql("SHOW max_connections")?.parse().context("reading max_connections")?;
    if accepted < TEST_MAX_CONNECTIONS {
        eprintln!("xtask: letting PostgreSQL accept {TEST_MAX_CONNECTIONS} connections (it accepts {accepted})");
        psql(&format!("ALTER SYSTEM SET max_connections = {TEST_MAX_CONNECTIONS}"))?;
        for version in &clusters {
            cluster("restart", version)?;
        }
    }
    Ok(())
}

/// The NATS server of the bus tests and bench (`MICROPAY_TEST_NATS_URL`, or the machine's at
/// 127.0.0.1:4222); started with JetStream (its store under `target/nats`) when none listens.
fn ensure_test_nats(root: &Path) -> anyhow::Result<()> {
    if std::env::var_os("MICROPAY_TEST_NATS_URL").is_some() || std::net::TcpStream::connect("127.0.0.1:4222").is_ok() {
        return Ok(());
    }
    eprintln!("xtask: starting nats-server with JetStream on 127.0.0.1:4222");
    let store = root.join("target/nats");
    std::fs::create_dir_all(&store)?;
    let log = std::fs::File::create(store.join("nats-server.log"))?;
    // Left running after the tests, as the machine's own server would be.
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", "4222", "-sd"])
        .arg(&store)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting nats-server")?;
    for _ in 0..100 {
        if std::net::TcpStream::connect("127.0.0.1:4222").is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("nats-server did not listen on 127.0.0.1:4222 within 10 s (see {})", store.join("nats-server.log").display())
}

fn cargo(root: &Path, args: &[&str], rest: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(root).args(args).args(rest))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
