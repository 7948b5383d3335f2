//! The operator's deploy commands: `micropay deploy`, `components`, `versions`, `rollback`,
//! `promote`, `undeploy` ask a running host's admin API; `keygen` and `sign` work on local files.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::Method;
use serde_json::{Value, json};

use super::signing::{self, Signature};
use crate::admin::client::{HostAddress, error_message};
use crate::policy::{Policy, Role};

/// `micropay deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The component file.
    pub file: PathBuf,
    /// The new version's policy; by default the active version's is kept.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The service; by default the policy's `component.name`, or the file's name without
    /// `.wasm`.
    #[arg(long)]
    pub name: Option<String>,
    /// Why this version, kept with it.
    #[arg(long)]
    pub note: Option<String>,
    /// The signature (`micropay sign`); by default `FILE.sig` when it exists.
    #[arg(long)]
    pub signature: Option<PathBuf>,
    /// Deploy it on trial for this share of callers (1 to 99), the active version serving the
    /// rest, until `micropay promote` or a rollback; the host rolls it back by itself when its
    /// error rate exceeds the active version's by `--canary-margin`.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=99))]
    pub canary: Option<i32>,
    /// How much higher the trial's error rate may be (0 to 1).
    #[arg(long, default_value_t = 0.05)]
    pub canary_margin: f64,
    /// A directory of the service's migrations (`NNNN_description.sql`): those its database
    /// has not applied are checked forward-only and applied before the swap.
    #[arg(long)]
    pub migrations: Option<PathBuf>,
    #[command(flatten)]
    pub host: HostAddress,
}

/// Deploys a component file; prints the version it became.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let policy = match &args.policy {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let name = match (&args.name, &args.policy) {
        (Some(name), _) => name.clone(),
        (None, Some(path)) => Policy::load(path)?.component.name,
        (None, None) => args
            .file
            .file_stem()
            .and_then(|stem| stem.to_str())
            .context("name the service with --name")?
            .replace('-', "_"),
    };
    let signature_path = args.signature.clone().unwrap_or_else(|| signing::signature_path(&args.file));
    let signature: Option<Signature> = match std::fs::read_to_string(&signature_path) {
        Ok(text) => Some(serde_json::from_str(&text).with_context(|| format!("reading {}", signature_path.display()))?),
        Err(_) if args.signature.is_none() => None,
        Err(err) => return Err(err).with_context(|| format!("reading {}", signature_path.display())),
    };
    let canary = args.canary.map(|percent| json!({ "percent": percent, "margin": args.canary_margin }));
    let migrations = match &args.migrations {
        Some(dir) => super::migrations::read_dir(dir)?,
        None => Vec::new(),
    };
    let body = json!({
        "wasm": BASE64.encode(&wasm), "policy": policy, "note": args.note, "signature": signature, "canary": canary,
        "migrations": migrations,
    });
    let path = format!("/admin/components/{name}/versions");
    let (status, answer) = args.host.send(Method::POST, &path, Some(&body)).await?;
    anyhow::ensure!(status == 201, "deploy of {name} refused: {}", error_message(status, &answer));
    match args.canary {
        Some(percent) => println!(
            "{name} version {} deployed on trial for {percent}% of callers ({})",
            answer["version"],
            short(&answer["digest"])
        ),
        None => println!("{name} version {} deployed and active ({})", answer["version"], short(&answer["digest"])),
    }
    Ok(())
}

/// Stops serving a service.
pub async fn undeploy(host: &HostAddress, name: &str) -> anyhow::Result<()> {
    let (status, body) = host.request(Method::POST, &format!("/admin/components/{name}/undeploy")).await?;
    anyhow::ensure!(status == 200, "undeploy of {name} refused: {}", error_message(status, &body));
    println!("{name} undeployed: no longer served (its versions and data are kept)");
    Ok(())
}

/// Makes the version on trial the active one.
pub async fn promote(host: &HostAddress, name: &str) -> anyhow::Result<()> {
    let (status, body) = host.request(Method::POST, &format!("/admin/components/{name}/promote")).await?;
    anyhow::ensure!(status == 200, "promotion of {name} refused: {}", error_message(status, &body));
    println!("{name} version {} promoted: active", body["version"]);
    Ok(())
}

/// Lists every service with its active version.
pub async fn components(host: &HostAddress) -> anyhow::Result<()> {
    let (status, body) = host.request(Method::GET, "/admin/components").await?;
    anyhow::ensure!(status == 200, "{}", error_message(status, &body));
    println!(
        "{:<14} {:>7}  {:<14} {:<25} {:>9} {:>9} {:>7}",
        "NAME", "VERSION", "DEPLOYED BY", "DEPLOYED AT", "IN FLIGHT", "REQUESTS", "ERRORS"
    );
    for component in body["components"].as_array().into_iter().flatten() {
        let canary = &component["canary"];
        let trial = match canary.is_object() {
            true => format!(
                "v{} for {}%: {} requests, {} errors",
                canary["version"], canary["percent"], canary["requests"], canary["errors"]
            ),
            false => "-".into(),
        };
        println!(
            "{:<14} {:>7}  {:<14} {:<32} {:>9} {:>9} {:>7}  {trial}",
            component["name"].as_str().unwrap_or_default(),
            component["version"],
            component["deployed_by"].as_str().unwrap_or("-"),
            component["deployed_at"].as_str().unwrap_or("-"),
            component["in_flight"],
            component["requests"],
            component["errors"],
        );
    }
    Ok(())
}

/// Lists every stored version of a service.
pub async fn versions(host: &HostAddress, name: &str) -> anyhow::Result<()> {
    let (status, body) = host.request(Method::GET, &format!("/admin/components/{name}/versions")).await?;
    anyhow::ensure!(status == 200, "{}", error_message(status, &body));
    for version in body["versions"].as_array().into_iter().flatten() {
        let active = match (&version["active"], &version["canary"]) {
            (Value::Bool(true), _) => "*",
            (_, Value::Bool(true)) => "~",
            _ => " ",
        };
        let counts = match version.get("requests") {
            Some(requests) => format!("  {requests} requests, {} errors here", version["errors"]),
            None => String::new(),
        };
        println!(
            "{active} v{:<5} {}  by {} ({}) at {}{}{counts}",
            version["version"],
            short(&version["digest"]),
            version["deployed_by"].as_str().unwrap_or_default(),
            version["deployer_role"].as_str().unwrap_or("-"),
            version["deployed_at"].as_str().unwrap_or_default(),
            version["note"].as_str().map(|note| format!("  \"{note}\"")).unwrap_or_default(),
        );
    }
    Ok(())
}

/// Activates an earlier version of a service.
pub async fn rollback(host: &HostAddress, name: &str, to: Option<i64>) -> anyhow::Result<()> {
    let path = format!("/admin/components/{name}/rollback");
    let (status, body) = host.send(Method::POST, &path, Some(&json!({ "to": to }))).await?;
    anyhow::ensure!(status == 200, "rollback of {name} refused: {}", error_message(status, &body));
    println!("{name} rolled back to version {} ({})", body["version"], short(&body["digest"]));
    Ok(())
}

/// Makes a signing key.
pub fn keygen(path: &std::path::Path, roles: &[Role]) -> anyhow::Result<()> {
    let entry = signing::keygen(path, roles)?;
    println!("{entry}");
    eprintln!(
        "secret key written to {} (keep it with the signer); trust it on the hosts with the line above \
         in MICROPAY_TRUSTED_KEYS or the trusted keys file",
        path.display()
    );
    Ok(())
}

/// Signs a component file.
pub fn sign(file: &std::path::Path, key: &std::path::Path) -> anyhow::Result<()> {
    let path = signing::sign(file, key)?;
    println!("{}", path.display());
    Ok(())
}

fn short(digest: &Value) -> &str {
    digest.as_str().map(|digest| &digest[..digest.len().min(12)]).unwrap_or_default()
}
