//! `pulse up`: the whole data path in one process on the embedded engines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use pulse_core::config::Config;
use pulse_dashboard::Dashboard;
use pulse_engine::bus::embedded::SqliteBus;
use pulse_engine::cache::Cache;
use pulse_engine::cache::memory::MemoryCache;
use pulse_engine::store::Store;
use pulse_engine::store::sqlite::SqliteStore;
use pulse_gateway::Gateway;
use pulse_processor::Processor;
use pulse_server::{CancellationToken, bind, serve};
use tokio::task::JoinSet;
use tracing::error;

/// Why `pulse up` could not start.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(
        "cannot create the data directory {path}: {source}; set storage.data_dir to a writable place"
    )]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("embedded bus: {0}")]
    Bus(#[from] pulse_engine::bus::BusError),
    #[error("embedded store: {0}")]
    Store(#[from] pulse_engine::store::StoreError),
    #[error(transparent)]
    Bind(#[from] pulse_server::serve::BindError),
    #[error("processor: {0}")]
    Processor(#[from] pulse_processor::ProcessorError),
}

/// A running `pulse up`: where it listens, and how to stop it.
pub struct Running {
    pub gateway: SocketAddr,
    pub dashboard: SocketAddr,
    pub processor: SocketAddr,
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), String>>,
}

/// Opens the embedded engines under `config.storage.data_dir`, binds the three
/// listeners and starts every role. Returns once all of them accept requests.
pub async fn start(config: Config) -> Result<Running, UpError> {
    let data_dir = config.storage.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| UpError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let bus = SqliteBus::open(&data_dir.join("bus.db"), config.bus.partitions).await?;
    let store = SqliteStore::open(&data_dir.join("store.db")).await?;
    store.migrate().await?;
    let store: Arc<dyn Store> = Arc::new(store);
    let cache: Arc<dyn Cache> = Arc::new(MemoryCache::new());

    // One registry per role: each answers its own /metrics, as separate
    // Deployments would, and the shared HTTP histogram is registered once each.
    let registry = || Arc::new(Mutex::new(Registry::default()));
    let gateway = Gateway::router(&config, bus.clone(), registry());
    let dashboard = Dashboard::router(&config, Arc::clone(&store), Arc::clone(&cache), registry());
    let processor = Processor::new(
        &config,
        Box::new(bus.consumer()),
        Arc::clone(&store),
        cache,
        registry(),
    )?;

    let gateway_listener = bind("gateway", config.gateway.listen, "gateway.listen").await?;
    let dashboard_listener = bind("dashboard", config.dashboard.listen, "dashboard.listen").await?;
    let processor_listener = bind("processor", config.processor.listen, "processor.listen").await?;
    let local =
        |l: &tokio::net::TcpListener| l.local_addr().expect("a bound listener has an address");
    let (gateway_addr, dashboard_addr, processor_addr) = (
        local(&gateway_listener),
        local(&dashboard_listener),
        local(&processor_listener),
    );

    let shutdown = CancellationToken::new();
    // The HTTP servers stop only after the processor has flushed, so /readyz and
    // /metrics stay answerable during shutdown; the gateway stops first.
    let servers_stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let serve_role = |name: &'static str, listener, router, stop: CancellationToken| async move {
        serve(listener, router, stop)
            .await
            .map_err(|e| format!("{name} server failed: {e}"))
    };
    tasks.spawn(serve_role(
        "gateway",
        gateway_listener,
        gateway,
        shutdown.clone(),
    ));
    tasks.spawn(serve_role(
        "dashboard",
        dashboard_listener,
        dashboard,
        servers_stop.clone(),
    ));
    tasks.spawn(serve_role(
        "processor",
        processor_listener,
        processor.router(),
        servers_stop.clone(),
    ));
    let processor_stop = shutdown.clone();
    tasks.spawn(async move {
        let outcome = processor
            .run(processor_stop)
            .await
            .map_err(|e| format!("processor failed: {e}"));
        servers_stop.cancel();
        outcome
    });
    Ok(Running {
        gateway: gateway_addr,
        dashboard: dashboard_addr,
        processor: processor_addr,
        data_dir,
        shutdown,
        tasks,
    })
}

impl Running {
    /// A token that stops everything when cancelled (wire it to Ctrl-C).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every role has stopped, on shutdown or because one failed
    /// (then the others are stopped too). Returns the first failure.
    pub async fn wait(mut self) -> Result<(), String> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = joined
                .map_err(|e| format!("a role task ended abnormally: {e}"))
                .and_then(|r| r);
            if let Err(e) = outcome {
                error!(message = "A role stopped with an error; stopping Pulse.", error = %e);
                self.shutdown.cancel();
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops gracefully: the gateway stops accepting, the processor commits
    /// its progress, then the remaining servers close.
    pub async fn stop(self) -> Result<(), String> {
        self.shutdown.cancel();
        self.wait().await
    }
}
