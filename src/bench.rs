//! `pulse bench`: PLACEHOLDER, being written.

/// Options of `pulse bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<(), String> {
    Err("not written yet".into())
}
