//! `pulse-sidecar --gateway URL [--token-file PATH] [--config FILE]`.
//!
//! One thread runs every receiver and the forwarder (a current-thread tokio
//! runtime: the sidecar's work is I/O, and one thread keeps its CPU and memory
//! small and predictable); the buffer writer has its own thread so disk writes
//! and compression never stall a receiver, and at most two blocking threads
//! parse large bodies and read segments.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pulse_sidecar::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "pulse-sidecar",
    version,
    about = "Pulse sidecar: takes the app's metrics on localhost and forwards them to the pipeline's gateway without losing them"
)]
struct Cli {
    /// Base URL of the pipeline's gateway (`gateway` in the config, PULSE_SIDECAR_GATEWAY).
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// File holding the ingest token; re-read when it changes (`token_file`).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// TOML or YAML config file (also PULSE_SIDECAR_CONFIG).
    #[arg(long, value_name = "FILE", env = "PULSE_SIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the disk buffer (`buffer.dir`).
    #[arg(long, value_name = "DIR")]
    buffer_dir: Option<PathBuf>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    pulse_server::telemetry::init();
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(message = "Invalid configuration.", %error);
            eprintln!("pulse-sidecar: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&config).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pulse-sidecar: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pulse_sidecar::app::run(
        config,
        pulse_server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(message = "pulse-sidecar cannot start.", %error);
            eprintln!("pulse-sidecar: {error}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(gateway) = &cli.gateway {
        config.gateway = Some(gateway.clone());
    }
    if let Some(path) = &cli.token_file {
        config.token_file = Some(path.clone());
    }
    if let Some(dir) = &cli.buffer_dir {
        config.buffer.dir = dir.clone();
    }
    config.validate()?;
    Ok(config)
}
