//! `pulse-bench`: the measurements of BENCHMARKS.md as their own binary, so
//! the product binary holds the product. `pulse bench ARGS` runs this
//! binary with the same arguments.

use std::process::ExitCode;

use clap::Parser;
use pulse_bench::BenchArgs;

/// The product's allocator, so the figures are the product's (see `pulse`'s
/// main.rs and BENCHMARKS.md, window aggregation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure sketch, aggregation and end-to-end throughput; see BENCHMARKS.md.
#[derive(Parser)]
#[command(name = "pulse-bench", version)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
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
    match runtime.block_on(pulse_bench::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
