//! The `pulse` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pulse::engines::EngineSummary;
use pulse::up::{Role, UpError};
use pulse_core::config::Config;
use pulse_server::CancellationToken;

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

/// Overrides of the engine keys; unset, the config decides (by default the
/// embedded engines).
#[derive(Args, Debug, Default)]
struct EngineArgs {
    /// Kafka bootstrap servers (bus.kafka_brokers), e.g. kafka-0:9092,kafka-1:9092.
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
    /// PostgreSQL/TimescaleDB URL (storage.database_url), e.g.
    /// postgres://pulse@db:5432/metrics. A password here is visible in the process
    /// list: prefer PULSE_STORAGE__DATABASE_URL for one.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Redis URL (cache.redis_url), e.g. redis://cache:6379. Prefer
    /// PULSE_CACHE__REDIS_URL for one with a password.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

impl EngineArgs {
    fn apply(self, config: &mut Config) {
        if let Some(brokers) = self.kafka {
            config.bus.kafka_brokers = Some(brokers);
        }
        if let Some(url) = self.database {
            config.storage.database_url = Some(url);
        }
        if let Some(url) = self.redis {
            config.cache.redis_url = Some(url);
        }
    }
}

/// What every single-role command takes.
#[derive(Args, Debug)]
struct RoleArgs {
    /// Config file (TOML or YAML); PULSE_<SECTION>__<KEY> variables override it.
    #[arg(long, short, env = "PULSE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    engines: EngineArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run gateway, processor and dashboard in one process: on embedded engines
    /// (nothing to install) unless Kafka, PostgreSQL or Redis are configured.
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
        #[command(flatten)]
        engines: EngineArgs,
    },
    /// Run the ingestion gateway alone (gateway.listen); needs Kafka (bus.kafka_brokers).
    Gateway(RoleArgs),
    /// Run the stream processor alone (health and metrics on processor.listen);
    /// needs Kafka and PostgreSQL (bus.kafka_brokers, storage.database_url).
    Processor(RoleArgs),
    /// Run the query API alone (dashboard.listen); needs PostgreSQL (storage.database_url).
    Dashboard(RoleArgs),
    /// Print the effective configuration (defaults, file, environment) as TOML,
    /// with tokens and passwords redacted.
    Config {
        #[arg(long, short, env = "PULSE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Measure sketch, aggregation and end-to-end throughput (BENCHMARKS.md):
    /// runs the `pulse-bench` binary next to this one with these arguments
    /// (`pulse bench --help` lists them).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run the Kubernetes operator: reconciles MetricPipelines and Dashboards
    /// (on the leader), serves /healthz, /readyz, /metrics and the sidecar
    /// injection webhook.
    Operator(OperatorArgs),
    /// Print the CustomResourceDefinitions of MetricPipeline and Dashboard as
    /// YAML (`pulse crds | kubectl apply -f -`).
    Crds {
        /// Write each CRD to `<dir>/<name>.yaml` instead (`--out-dir crds`
        /// regenerates the repository's copies).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Back the pipeline's PostgreSQL schema up to an S3-compatible bucket: one
    /// consistent snapshot, zstd-compressed, with a manifest. Credentials, region
    /// and endpoint come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION and AWS_ENDPOINT_URL.
    Backup {
        #[arg(long, short, env = "PULSE_CONFIG")]
        config: Option<PathBuf>,
        /// Where to: s3://BUCKET/PREFIX (the backup goes to PREFIX/<time>/).
        #[arg(long, value_name = "s3://BUCKET/PREFIX")]
        to: String,
        /// Then delete all but the newest N backups under PREFIX.
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        #[command(flatten)]
        engines: EngineArgs,
    },
    /// Restore a backup into the pipeline's schema (the newest under PREFIX
    /// when no NAME is given). Same AWS_* variables as `pulse backup`.
    Restore {
        #[arg(long, short, env = "PULSE_CONFIG")]
        config: Option<PathBuf>,
        /// What: s3://BUCKET/PREFIX or s3://BUCKET/PREFIX/NAME.
        #[arg(long, value_name = "s3://BUCKET/PREFIX[/NAME]")]
        from: String,
        /// Empty a schema that already holds data (in the restore's own
        /// transaction) instead of refusing.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        engines: EngineArgs,
    },
    /// Write the OpenAPI 3.1 document of every HTTP listener (gateway,
    /// dashboard, processor, operator, the sidecar's receivers and admin port),
    /// as each serves it at GET /openapi.json, to `<dir>/<listener>.json`
    /// (`--out-dir docs/openapi` regenerates the repository's copies).
    Openapi {
        #[arg(long, default_value = "docs/openapi")]
        out_dir: PathBuf,
    },
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
                engines,
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
                engines.apply(&mut config);
                config.validate().map_err(|e| e.to_string())?;
                up(config).await
            }
            Command::Gateway(args) => role(Role::Gateway, args).await,
            Command::Processor(args) => role(Role::Processor, args).await,
            Command::Dashboard(args) => role(Role::Dashboard, args).await,
            Command::Config { config } => {
                let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
                print!("{}", pulse::engines::redact_config(config).to_toml());
                Ok(())
            }
            Command::Bench { args } => bench(&args),
            Command::Crds { out_dir } => crds(out_dir.as_deref()),
            Command::Openapi { out_dir } => openapi(&out_dir),
            Command::Operator(args) => operator(args).await,
            Command::Backup {
                config,
                to,
                keep,
                engines,
            } => backup(config, engines, &to, keep).await,
            Command::Restore {
                config,
                from,
                replace,
                engines,
            } => restore(config, engines, &from, replace).await,
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

/// `pulse bench`: the benchmarks are a tool, not the product, so they live in
/// their own binary (`pulse-bench`, built by `cargo build --release -p
/// pulse-bench`); this runs the one beside `pulse` and waits for it.
fn bench(args: &[std::ffi::OsString]) -> Result<(), String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the pulse binary's directory: {e}"))?;
    let bench = exe.with_file_name(format!("pulse-bench{}", std::env::consts::EXE_SUFFIX));
    if !bench.is_file() {
        return Err(format!(
            "pulse bench runs the pulse-bench binary, which is not at {}: build it beside pulse \
             with `cargo build --release -p pulse -p pulse-bench`, or run \
             `cargo run --release -p pulse-bench -- <flags>`",
            bench.display()
        ));
    }
    let status = std::process::Command::new(&bench)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", bench.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} ended with {status}", bench.display()))
    }
}

/// Flags of `pulse operator` (the chart sets them; see the README's "Operator").
#[derive(Args, Debug)]
struct OperatorArgs {
    /// Plain HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// HTTPS address of the sidecar injection webhook (path /mutate-pods).
    #[arg(long, default_value = "0.0.0.0:8443")]
    webhook_listen: std::net::SocketAddr,
    /// Directory with the webhook's tls.crt and tls.key; the webhook is off without them.
    #[arg(long, default_value = "/etc/pulse/webhook-tls")]
    webhook_tls_dir: PathBuf,
    /// The pulse image the pipeline and dashboard Deployments run.
    #[arg(long, env = "PULSE_IMAGE", default_value = "")]
    image: String,
    /// The image of the injected sidecar.
    #[arg(long, env = "PULSE_SIDECAR_IMAGE", default_value = "")]
    sidecar_image: String,
    /// The sidecar's resources as JSON (a ResourceRequirements); small defaults when unset.
    #[arg(long, env = "PULSE_SIDECAR_RESOURCES")]
    sidecar_resources: Option<String>,
    /// sizeLimit of the sidecar's buffer emptyDir.
    #[arg(long, env = "PULSE_SIDECAR_BUFFER_SIZE_LIMIT", default_value = "256Mi")]
    sidecar_buffer_size_limit: String,
    /// Reconcile without holding the `pulse-operator` Lease (one replica only).
    #[arg(long)]
    no_leader_election: bool,
}

/// `pulse operator`.
async fn operator(args: OperatorArgs) -> Result<(), String> {
    pulse_server::telemetry::init();
    pulse_operator::run::run(pulse_operator::run::Options {
        listen: args.listen,
        webhook_listen: args.webhook_listen,
        webhook_tls_dir: args.webhook_tls_dir,
        image: args.image,
        sidecar_image: args.sidecar_image,
        sidecar_resources: args.sidecar_resources,
        sidecar_buffer_size_limit: args.sidecar_buffer_size_limit,
        leader_election: !args.no_leader_election,
    })
    .await
    .map_err(|e| e.to_string())
}

/// The config of `pulse backup`/`pulse restore`.
fn load_config(config: Option<PathBuf>, engines: EngineArgs) -> Result<Config, String> {
    let mut config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    engines.apply(&mut config);
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// `pulse backup`.
async fn backup(
    config: Option<PathBuf>,
    engines: EngineArgs,
    to: &str,
    keep: Option<usize>,
) -> Result<(), String> {
    let config = load_config(config, engines)?;
    let (manifest, pruned) = pulse::backup::backup(&config, to, keep).await?;
    let rows: u64 = manifest.tables.iter().map(|t| t.tally.rows).sum();
    println!(
        "backup {} of schema {}: {} tables, {rows} rows",
        manifest.name,
        manifest.schema,
        manifest.tables.len()
    );
    for name in pruned {
        println!("pruned backup {name}");
    }
    Ok(())
}

/// `pulse restore`.
async fn restore(
    config: Option<PathBuf>,
    engines: EngineArgs,
    from: &str,
    replace: bool,
) -> Result<(), String> {
    let config = load_config(config, engines)?;
    let manifest = pulse::backup::restore(&config, from, replace).await?;
    let rows: u64 = manifest.tables.iter().map(|t| t.tally.rows).sum();
    println!(
        "restored backup {} ({} of {}/{}, taken {}): {} tables, {rows} rows",
        manifest.name,
        manifest.schema,
        manifest.namespace,
        manifest.pipeline,
        manifest.created_at,
        manifest.tables.len()
    );
    Ok(())
}

/// `pulse crds`: both CRDs to stdout as one YAML stream, or one file each.
fn crds(out_dir: Option<&std::path::Path>) -> Result<(), String> {
    let crds = pulse_operator::crd::crds_yaml().map_err(|e| e.to_string())?;
    match out_dir {
        None => {
            for crd in crds {
                print!("---\n{}", crd.yaml);
            }
        }
        Some(dir) => {
            for crd in crds {
                let path = dir.join(format!("{}.yaml", crd.name));
                std::fs::write(&path, crd.yaml)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// `pulse openapi`: every listener's OpenAPI document, one file each.
fn openapi(out_dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    for (name, doc) in pulse::openapi::documents() {
        let path = out_dir.join(name);
        std::fs::write(&path, pulse::openapi::text(&doc))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Starts logging and a token that Ctrl-C or SIGTERM cancels, so a start that
/// still waits for an engine can be interrupted too.
fn prepare(stopping: &'static str) -> CancellationToken {
    pulse_server::telemetry::init();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        pulse_server::shutdown_signal().await;
        println!("{stopping}");
        token.cancel();
    });
    shutdown
}

/// What a start abandoned on Ctrl-C becomes: a clean stop, not an error.
fn started<T>(outcome: Result<T, UpError>) -> Result<Option<T>, String> {
    match outcome {
        Ok(running) => Ok(Some(running)),
        Err(e) if e.is_cancelled() => {
            println!("Stopped before starting: {e}.");
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The engine lines of the banner.
fn print_engines(engines: &EngineSummary) {
    for (part, description) in [
        ("bus", &engines.bus),
        ("store", &engines.store),
        ("cache", &engines.cache),
    ] {
        if let Some(description) = description {
            println!("  {part:<10} {description}");
        }
    }
}

async fn up(config: Config) -> Result<(), String> {
    let shutdown = prepare("Stopping: committing open windows' progress...");
    let windows: Vec<String> = config
        .window_specs()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|w| w.label)
        .collect();
    let lateness = pulse_core::duration::label(config.processor.allowed_lateness);
    let https = https_roles(&config);
    let Some(running) = started(pulse::up::start_until(config, shutdown).await)? else {
        return Ok(());
    };
    match (&running.engines.data_dir, running.engines.all_embedded()) {
        (Some(dir), true) => println!("Pulse is up on embedded engines; data in {}", dir.display()),
        (Some(dir), false) => println!(
            "Pulse is up; the embedded engines keep their data in {}",
            dir.display()
        ),
        (None, _) => println!("Pulse is up"),
    }
    for (role, addr) in [
        (Role::Gateway, running.gateway),
        (Role::Dashboard, running.dashboard),
        (Role::Processor, running.processor),
    ] {
        print_listener(&https, role, addr);
    }
    print_engines(&running.engines);
    println!(
        "  windows {}; allowed lateness {lateness}",
        windows.join(", ")
    );
    println!(
        "Try: curl -XPOST localhost:{}/metrics -d '{{\"metric_name\":\"cpu_usage\",\"value\":92.5,\"tags\":{{\"host\":\"web-01\"}}}}'",
        running.gateway.port()
    );
    println!("Press Ctrl-C to stop.");
    running.wait().await?;
    println!("Pulse stopped cleanly.");
    Ok(())
}

/// One line of the start-up banner: a role, where it listens (`https://`
/// when `https` holds the role), what it serves.
fn print_listener(https: &[Role], role: Role, addr: std::net::SocketAddr) {
    let scheme = if https.contains(&role) {
        "https"
    } else {
        "http"
    };
    println!(
        "  {:<10} {scheme}://{addr}   {}",
        role.as_str(),
        role.routes()
    );
}

/// The roles that serve HTTPS under `config`.
fn https_roles(config: &Config) -> Vec<Role> {
    [
        (Role::Gateway, &config.gateway.tls_cert_file),
        (Role::Dashboard, &config.dashboard.tls_cert_file),
    ]
    .into_iter()
    .filter(|(_, cert)| cert.is_some())
    .map(|(role, _)| role)
    .collect()
}

/// `pulse gateway|processor|dashboard`: one role alone.
async fn role(role: Role, args: RoleArgs) -> Result<(), String> {
    let mut config = Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    args.engines.apply(&mut config);
    config.validate().map_err(|e| e.to_string())?;
    // Refuse an impossible engine choice before anything else happens.
    pulse::engines::check_roles(&config, &[role]).map_err(|e| e.to_string())?;
    let stopping = match role {
        Role::Processor => "Stopping: committing open windows' progress...",
        Role::Gateway | Role::Dashboard => "Stopping: finishing the requests in flight...",
    };
    let shutdown = prepare(stopping);
    let https = https_roles(&config);
    let Some(running) = started(pulse::up::start_role(config, role, shutdown).await)? else {
        return Ok(());
    };
    let name = role.as_str();
    println!("Pulse {name} is up");
    print_listener(&https, role, running.addr);
    print_engines(&running.engines);
    println!("Press Ctrl-C to stop.");
    running.wait().await?;
    println!("Pulse {name} stopped cleanly.");
    Ok(())
}
