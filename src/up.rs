//! Starting Pulse's roles: all three in one process (`pulse up`, [`start`]) or
//! one alone (`pulse gateway|processor|dashboard`, [`start_role`]), on the
//! engines the configuration selects (see [`crate::engines`]). Both go through
//! the same steps: listen, open the engines, build the role routers, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use pulse_core::config::Config;
use pulse_dashboard::Dashboard;
use pulse_engine::store::Store;
use pulse_gateway::Gateway;
use pulse_processor::Processor;
use pulse_server::auth::Tokens;
use pulse_server::{CancellationToken, CertFiles, ServerTls, bind, serve};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::error;

pub use crate::engines::Role;
use crate::engines::{self, EngineError, EngineSummary};

/// Why Pulse could not start.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Bind(#[from] pulse_server::serve::BindError),
    #[error("processor: {0}")]
    Processor(#[from] pulse_processor::ProcessorError),
    #[error("cannot serve HTTPS: {0}")]
    Tls(#[from] pulse_server::reload::FileError),
}

impl UpError {
    /// Whether the start was abandoned because shutdown was requested while
    /// waiting for an engine (not a failure).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, UpError::Engine(EngineError::Cancelled(_)))
    }
}

/// A running `pulse up`: where it listens, and how to stop it.
pub struct Running {
    pub gateway: SocketAddr,
    pub dashboard: SocketAddr,
    pub processor: SocketAddr,
    /// `storage.data_dir` (used by the embedded engines only).
    pub data_dir: PathBuf,
    /// Which engine each part runs on.
    pub engines: EngineSummary,
    tasks: Tasks,
}

/// One role running alone (`pulse gateway|processor|dashboard`).
pub struct RunningRole {
    pub role: Role,
    /// Its HTTP listener (the processor's serves /healthz, /readyz, /metrics).
    pub addr: SocketAddr,
    pub engines: EngineSummary,
    tasks: Tasks,
}

/// Starts every role in this process on the engines the config selects (by
/// default the embedded ones under `config.storage.data_dir`). Returns once
/// all of them accept requests.
pub async fn start(config: Config) -> Result<Running, UpError> {
    start_until(config, CancellationToken::new()).await
}

/// Like [`start`], stopping when `shutdown` is cancelled, including while it
/// still waits for an engine that cannot be reached yet (then it returns an
/// error for which [`UpError::is_cancelled`] holds).
pub async fn start_until(config: Config, shutdown: CancellationToken) -> Result<Running, UpError> {
    let launched = launch(&config, &Role::ALL, shutdown).await?;
    Ok(Running {
        gateway: launched.addr(Role::Gateway),
        dashboard: launched.addr(Role::Dashboard),
        processor: launched.addr(Role::Processor),
        data_dir: config.storage.data_dir.clone(),
        engines: launched.engines,
        tasks: launched.tasks,
    })
}

/// Starts `role` alone, as its own Deployment would run it: its listener (with
/// `/healthz`, `/readyz`, `/metrics`) and its work. It needs the shared
/// production engines (see [`engines::check_roles`]); stops when `shutdown` is
/// cancelled.
pub async fn start_role(
    config: Config,
    role: Role,
    shutdown: CancellationToken,
) -> Result<RunningRole, UpError> {
    let launched = launch(&config, &[role], shutdown).await?;
    Ok(RunningRole {
        role,
        addr: launched.addr(role),
        engines: launched.engines,
        tasks: launched.tasks,
    })
}

impl Running {
    /// A token that stops everything when cancelled (wire it to Ctrl-C).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.shutdown.clone()
    }

    /// Waits until every role has stopped, on shutdown or because one failed
    /// (then the others are stopped too). Returns the first failure.
    pub async fn wait(self) -> Result<(), String> {
        self.tasks.wait().await
    }

    /// Stops gracefully: the gateway stops accepting, the processor commits
    /// its progress, then the remaining servers close.
    pub async fn stop(self) -> Result<(), String> {
        self.tasks.shutdown.cancel();
        self.tasks.wait().await
    }
}

impl RunningRole {
    /// A token that stops the role when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.shutdown.clone()
    }

    /// Waits until the role has stopped; returns its failure, if any.
    pub async fn wait(self) -> Result<(), String> {
        self.tasks.wait().await
    }

    /// Stops gracefully (the processor commits its progress first).
    pub async fn stop(self) -> Result<(), String> {
        self.tasks.shutdown.cancel();
        self.tasks.wait().await
    }
}

/// What [`launch`] started.
struct Launched {
    addrs: Vec<(Role, SocketAddr)>,
    engines: EngineSummary,
    tasks: Tasks,
}

impl Launched {
    fn addr(&self, role: Role) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, a)| *a)
            .expect("launch binds a listener for every role it starts")
    }
}

/// The tasks of the running roles, and the token that stops them.
struct Tasks {
    shutdown: CancellationToken,
    set: JoinSet<Result<(), String>>,
}

impl Tasks {
    async fn wait(mut self) -> Result<(), String> {
        let mut first_error = None;
        while let Some(joined) = self.set.join_next().await {
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
}

/// What the HTTP roles serve HTTPS with and whose tokens they accept, read
/// from the files the config names and followed as they change.
struct Security {
    roles: Vec<(Role, Option<ServerTls>, Tokens)>,
}

impl Security {
    fn load(
        config: &Config,
        roles: &[Role],
        shutdown: &CancellationToken,
    ) -> Result<Security, UpError> {
        let mut loaded = Vec::with_capacity(roles.len());
        for &role in roles {
            let (cert, key, tokens) = match role {
                Role::Gateway => (
                    &config.gateway.tls_cert_file,
                    &config.gateway.tls_key_file,
                    Tokens::configured(
                        &config.gateway.tokens,
                        config.gateway.tokens_file.as_deref(),
                        "gateway.tokens_file",
                    )?,
                ),
                Role::Dashboard => (
                    &config.dashboard.tls_cert_file,
                    &config.dashboard.tls_key_file,
                    Tokens::configured(
                        &config.dashboard.read_tokens,
                        config.dashboard.read_tokens_file.as_deref(),
                        "dashboard.read_tokens_file",
                    )?,
                ),
                Role::Processor => (&None, &None, Tokens::default()),
            };
            tokens.watch(shutdown.clone());
            let tls = match (cert, key) {
                (Some(cert_file), Some(key_file)) => {
                    let tls = ServerTls::load(CertFiles {
                        cert_file: cert_file.clone(),
                        key_file: key_file.clone(),
                        section: role.as_str(),
                    })?;
                    tls.watch(shutdown.clone());
                    Some(tls)
                }
                _ => None,
            };
            loaded.push((role, tls, tokens));
        }
        Ok(Security { roles: loaded })
    }

    fn tls(&self, role: Role) -> Option<ServerTls> {
        self.roles
            .iter()
            .find(|(r, _, _)| *r == role)
            .and_then(|(_, tls, _)| tls.clone())
    }

    fn tokens(&self, role: Role) -> Tokens {
        self.roles
            .iter()
            .find(|(r, _, _)| *r == role)
            .map(|(_, _, tokens)| tokens.clone())
            .unwrap_or_default()
    }
}

/// The steps every way of running Pulse shares: refuse an impossible engine
/// choice, bind the roles' listeners (so a taken port shows at once, not after
/// waiting for a database), open the engines, then serve each role.
async fn launch(
    config: &Config,
    roles: &[Role],
    shutdown: CancellationToken,
) -> Result<Launched, UpError> {
    engines::check_roles(config, roles)?;
    // Certificates and token files load before anything binds or connects:
    // a wrong file shows at once, naming its key.
    let security = Security::load(config, roles, &shutdown)?;
    let mut listeners: Vec<(Role, TcpListener)> = Vec::with_capacity(roles.len());
    for &role in roles {
        let (addr, key) = match role {
            Role::Gateway => (config.gateway.listen, "gateway.listen"),
            Role::Processor => (config.processor.listen, "processor.listen"),
            Role::Dashboard => (config.dashboard.listen, "dashboard.listen"),
        };
        listeners.push((role, bind(role.as_str(), addr, key).await?));
    }
    let mut engines = engines::connect(config, roles, &shutdown).await?;

    // One registry per role: each answers its own /metrics, as separate
    // Deployments would, and the shared HTTP histogram is registered once each.
    let registry = || Arc::new(Mutex::new(Registry::default()));
    // The HTTP servers next to a processor stop only after it has flushed, so
    // /readyz and /metrics stay answerable during shutdown; the gateway stops
    // first.
    let servers_stop = if roles.contains(&Role::Processor) {
        CancellationToken::new()
    } else {
        shutdown.clone()
    };
    let store_and_cache = |store: &Option<Arc<dyn Store>>| {
        store
            .clone()
            .zip(engines.cache.clone())
            .expect("the engines of the processor and the dashboard include a store and a cache")
    };
    let mut routers = Vec::with_capacity(roles.len());
    let mut processor = None;
    for (role, listener) in listeners {
        let (router, stop) = match role {
            Role::Gateway => {
                let producer = engines
                    .producer
                    .clone()
                    .expect("the gateway's engines include a bus producer");
                let tokens = security.tokens(role);
                let router = Gateway::router_with_tokens(config, producer, registry(), tokens);
                (router, shutdown.clone())
            }
            Role::Dashboard => {
                let (store, cache) = store_and_cache(&engines.dashboard_store);
                let tokens = security.tokens(role);
                let router =
                    Dashboard::router_with_tokens(config, store, cache, registry(), tokens);
                (router, servers_stop.clone())
            }
            Role::Processor => {
                let (store, cache) = store_and_cache(&engines.store);
                let consumer = engines
                    .consumer
                    .take()
                    .expect("the processor's engines include a bus consumer");
                let mut built = Processor::new(config, consumer, store, cache, registry())?;
                if let Some(topic) = engines.anomaly_topic.take() {
                    built = built.with_anomaly_topic(topic);
                }
                let router = built.router();
                processor = Some(built);
                (router, servers_stop.clone())
            }
        };
        routers.push((role, listener, router, stop));
    }

    let mut set = JoinSet::new();
    let mut addrs = Vec::with_capacity(routers.len());
    for (role, listener, router, stop) in routers {
        addrs.push((
            role,
            listener
                .local_addr()
                .expect("a bound listener has an address"),
        ));
        let edge = config.http.clone();
        let tls = security.tls(role);
        set.spawn(async move {
            serve(listener, router, stop, edge, tls)
                .await
                .map_err(|e| format!("{} server failed: {e}", role.as_str()))
        });
    }
    if let Some(processor) = processor {
        let processor_stop = shutdown.clone();
        set.spawn(async move {
            let outcome = processor
                .run(processor_stop)
                .await
                .map_err(|e| format!("processor failed: {e}"));
            servers_stop.cancel();
            outcome
        });
    }
    Ok(Launched {
        addrs,
        engines: engines.summary,
        tasks: Tasks { shutdown, set },
    })
}
