//! Deploys under load: how long a deploy takes to answer, how long from its answer to the first
//! request served by the new version, and what a storm of deploys does to the requests' p99
//! against the same load without deploys, in one run.
//!
//! The deploys alternate the probe's two builds (`probe.wasm`, `probe_second.wasm`), made by
//! the platform role in the host's process, as `POST /admin/components/probe/versions` makes
//! them; requests go through the gateway over HTTP.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{LoadRun, Summary, load, spawn_server};
use crate::admin::keys::Admin;
use crate::deploy::{DeployRequest, Deployer};
use crate::gateway;
use crate::platform::Platform;
use crate::policy::Role;

/// How often the storm deploys.
const STORM_EVERY: Duration = Duration::from_millis(100);

/// What the run measured.
pub struct DeployRun {
    pub deploys: usize,
    /// From the deploy's call to its answer.
    pub answered: Summary,
    /// From the deploy's answer to the first answer of the new version.
    pub first_request: Summary,
    pub without: LoadRun,
    pub storm: LoadRun,
    pub storm_deploys: usize,
}

impl std::fmt::Display for DeployRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  deploy answered in: {}", self.answered)?;
        writeln!(f, "  deploy answered → first request served by the new version: {}", self.first_request)?;
        writeln!(f, "  requests without deploys: {}", self.without)?;
        writeln!(
            f,
            "  requests during {} deploys (one every {} ms): {}",
            self.storm_deploys,
            STORM_EVERY.as_millis(),
            self.storm
        )?;
        write!(
            f,
            "  p99 during the storm / without: {:.2}",
            self.storm.p99.as_secs_f64() / self.without.p99.as_secs_f64().max(1e-9)
        )
    }
}

/// Runs the measurements on `platform` (which it serves and then shuts down).
pub async fn run(
    platform: Platform,
    components: &Path,
    body_limit: usize,
    deploys: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<DeployRun> {
    let builds = [std::fs::read(components.join("probe.wasm"))?, std::fs::read(components.join("probe_second.wasm"))?];
    let probe = platform.registry().get("probe").context("the deploy bench needs the probe (tests/policies)")?;
    // Room for the load's connections, granted by the platform role (once: the bench's
    // databases, and so the active policy, outlive a run).
    let active = probe.active().policy.clone();
    let roomy = (active.limits.max_instances < 64).then(|| {
        active
            .text
            .replace("max_instances = 8\n", "max_instances = 64\n")
            .replace("queue_ms = 20\n", "queue_ms = 2000\n")
    });
    let deployer = platform.deployer.clone();
    let (router, _state) = gateway::router(platform, body_limit, std::env::temp_dir().join("micropay-bench-keys.toml"));
    let address = spawn_server(router).await?;
    let http = reqwest::Client::new();
    deploy(&deployer, &builds[1], roomy).await?;
    deploy(&deployer, &builds[0], None).await?;

    let (mut answered, mut first_request) = (Vec::new(), Vec::new());
    for number in 0..deploys {
        let (build, expected) = [(&builds[1], "second"), (&builds[0], "first")][number % 2];
        let started = Instant::now();
        deploy(&deployer, build, None).await?;
        let returned = Instant::now();
        answered.push(returned - started);
        loop {
            let body: serde_json::Value =
                http.get(format!("http://{address}/v1/probe/version")).send().await?.json().await?;
            if body["build"] == expected {
                break;
            }
            anyhow::ensure!(returned.elapsed() < Duration::from_secs(10), "the new version never answered");
        }
        first_request.push(returned.elapsed());
    }

    let duration = Duration::from_secs(seconds);
    let without = load(address, connections, duration).await?;
    let storm_task = {
        let (deployer, builds) = (deployer.clone(), builds.clone());
        tokio::spawn(async move {
            let until = Instant::now() + duration;
            let mut made = 0;
            while Instant::now() < until {
                deploy(&deployer, &builds[made % 2], None).await?;
                made += 1;
                tokio::time::sleep(STORM_EVERY).await;
            }
            anyhow::Ok(made)
        })
    };
    let storm = load(address, connections, duration).await?;
    let storm_deploys = storm_task.await??;
    Ok(DeployRun {
        deploys,
        answered: Summary::of(&mut answered),
        first_request: Summary::of(&mut first_request),
        without,
        storm,
        storm_deploys,
    })
}

async fn deploy(deployer: &Deployer, wasm: &[u8], policy: Option<String>) -> anyhow::Result<()> {
    let admin = Admin { key_id: "bench".into(), role: Role::Platform };
    let request = DeployRequest {
        name: "probe".into(),
        wasm: wasm.to_vec(),
        policy,
        note: Some("bench".into()),
        signature: None,
        canary: None,
        migrations: Vec::new(),
    };
    deployer.deploy(&admin, request).await.map_err(|err| anyhow::anyhow!("deploy refused: {err}"))?;
    Ok(())
}
