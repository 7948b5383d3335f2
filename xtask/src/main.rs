//! Project automation. `cargo xtask serve` and `cargo xtask test` set up whatever a fresh
//! machine lacks (the wasm toolchain, PostgreSQL), build the components and the host, then
//! serve or test.
//!
//! Components build for `wasm32-unknown-unknown` with Debian's Rust and a standard library
//! built from source (`-Zbuild-std`): rustup cannot add wasm targets on these machines. That
//! toolchain has its own cargo home and target directory, apart from the host's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Debian packages the build and the embedded database need, with a file that shows each is
/// installed.
const SYSTEM_PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "/usr/bin/rustc"),
    ("cargo-web", "/usr/bin/cargo"),
    ("rust-web-src", "/usr/lib/rustlib/src/rust/library/Cargo.toml"),
    ("lld-19", "/usr/bin/wasm-ld-19"),
    ("postgresql", "/usr/lib/postgresql"),
];

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
            build_components(&root)?;
            cargo(&root, &["run", "--release", "--package", "micropay", "--", "bench"], &rest)
        }
        "test" => {
            setup()?;
            build_components(&root)?;
            ensure_test_postgres()?;
            cargo(&root, &["build", "--package", "micropay"], &[])?;
            cargo(&root, &["test", "--workspace"], &rest)
        }
        _ => bail!("{USAGE}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Installs the Debian packages that are missing.
fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> =
        SYSTEM_PACKAGES.iter().filter(|(_, marker)| !Path::new(marker).exists()).map(|(package, _)| *package).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
        .context("installing system packages (needs root and Debian's package archive)")
}

/// Builds every component crate for wasm and encodes each core module as a component into
/// `target/components/`.
fn build_components(root: &Path) -> anyhow::Result<()> {
    let target_dir = root.join("target/wasm");
    let mut build = Command::new("/usr/bin/cargo");
    build
        .current_dir(root.join("components"))
        .args(["build", "--release", "--target", "wasm32-unknown-unknown", "-Zbuild-std=std,panic_abort"])
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
    ] {
        build.env_remove(var);
    }
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    build
        .env("PATH", path)
        .env("RUSTC", "/usr/bin/rustc")
        .env("CARGO_HOME", root.join("target/wasm-cargo-home"))
        .env("RUSTC_BOOTSTRAP", "1")
        // Debian's /usr/bin/rust-lld is a dangling link: name the linker.
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", "/usr/bin/wasm-ld-19");
    run(&mut build).context("building the components for wasm32-unknown-unknown")?;

    let out_dir = root.join("target/components");
    std::fs::create_dir_all(&out_dir)?;
    let release = target_dir.join("wasm32-unknown-unknown/release");
    for entry in std::fs::read_dir(&release).with_context(|| format!("reading {}", release.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "wasm") {
            let core = std::fs::read(&path)?;
            let component = wit_component::ComponentEncoder::default()
                .module(&core)
                .and_then(|encoder| encoder.validate(true).encode())
                .with_context(|| format!("encoding {} as a component", path.display()))?;
            let name = path.file_name().expect("a file");
            std::fs::write(out_dir.join(name), component)?;
        }
    }
    Ok(())
}

/// The tests need a PostgreSQL server at `MICROPAY_TEST_DATABASE_URL` (default
/// 127.0.0.1:5432); start the machine's cluster if it is installed but stopped.
fn ensure_test_postgres() -> anyhow::Result<()> {
    if std::env::var_os("MICROPAY_TEST_DATABASE_URL").is_some()
        || std::net::TcpStream::connect("127.0.0.1:5432").is_ok()
    {
        return Ok(());
    }
    let versions =
        std::fs::read_dir("/etc/postgresql").context("no PostgreSQL at 127.0.0.1:5432 and no cluster to start")?;
    for version in versions.flatten() {
        let version = version.file_name().to_string_lossy().into_owned();
        eprintln!("xtask: starting the PostgreSQL {version} cluster");
        run(Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", &version, "main", "start"]))?;
    }
    Ok(())
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
