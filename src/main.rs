//! The `pulse` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pulse_core::config::Config;

/// mimalloc instead of glibc malloc: the processor allocates and frees small
/// strings per point, and mimalloc's thread-local free lists make that about 45 %
/// faster (BENCHMARKS.md, window aggregation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pulse",
    version,
    about = "Real-time metrics: ingest, aggregate, store and query"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run gateway, processor and dashboard in one process on embedded engines.
    Up {
        /// Config file (TOML or YAML); PULSE_<SECTION>__<KEY> variables override it.
        #[arg(long, short, env = "PULSE_CONFIG")]
        config: Option<PathBuf>,
        /// Where the embedded engines keep their files (storage.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Gateway address (gateway.listen), e.g. 127.0.0.1:9000.
        #[arg(long)]
        gateway_listen: Option<std::net::SocketAddr>,
        /// Dashboard address (dashboard.listen), e.g. 127.0.0.1:8080.
        #[arg(long)]
        dashboard_listen: Option<std::net::SocketAddr>,
        /// Processor health/metrics address (processor.listen).
        #[arg(long)]
        processor_listen: Option<std::net::SocketAddr>,
    },
    /// Print the effective configuration (defaults, file, environment) as TOML.
    Config {
        #[arg(long, short, env = "PULSE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Measure sketch, aggregation and end-to-end throughput; see BENCHMARKS.md.
    Bench(pulse::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Up {
                config,
                data_dir,
                gateway_listen,
                dashboard_listen,
                processor_listen,
            } => {
                let mut config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
                if let Some(d) = data_dir {
                    config.storage.data_dir = d;
                }
                if let Some(a) = gateway_listen {
                    config.gateway.listen = a;
                }
                if let Some(a) = dashboard_listen {
                    config.dashboard.listen = a;
                }
                if let Some(a) = processor_listen {
                    config.processor.listen = a;
                }
                up(config).await
            }
            Command::Config { config } => {
                let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
                print!("{}", config.to_toml());
                Ok(())
            }
            Command::Bench(args) => pulse::bench::run(args).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn up(config: Config) -> Result<(), String> {
    pulse_server::telemetry::init();
    let windows: Vec<String> = config
        .window_specs()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|w| w.label)
        .collect();
    let lateness = pulse_core::duration::label(config.processor.allowed_lateness);
    let running = pulse::up::start(config).await.map_err(|e| e.to_string())?;
    println!(
        "Pulse is up on embedded engines; data in {}",
        running.data_dir.display()
    );
    println!(
        "  gateway    http://{}   POST /metrics, POST /v1/metrics",
        running.gateway
    );
    println!(
        "  dashboard  http://{}   GET /dashboard, /api/v1/query_range, /api/v1/metrics, /api/v1/live",
        running.dashboard
    );
    println!(
        "  processor  http://{}   /healthz, /readyz, /metrics",
        running.processor
    );
    println!(
        "  windows {}; allowed lateness {lateness}",
        windows.join(", ")
    );
    println!(
        "Try: curl -XPOST localhost:{}/metrics -d '{{\"metric_name\":\"cpu_usage\",\"value\":92.5,\"tags\":{{\"host\":\"web-01\"}}}}'",
        running.gateway.port()
    );
    println!("Press Ctrl-C to stop.");
    let token = running.shutdown_token();
    tokio::spawn(async move {
        pulse_server::shutdown_signal().await;
        println!("Stopping: committing open windows' progress...");
        token.cancel();
    });
    running.wait().await?;
    println!("Pulse stopped cleanly.");
    Ok(())
}
