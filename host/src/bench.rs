//! `micropay bench`.
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_: BenchArgs) -> anyhow::Result<()> {
    Ok(())
}
