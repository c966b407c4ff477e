//! From a [`Config`] to the engines the roles run on: the embedded ones (SQLite
//! log and store, in-process cache: what `pulse up` uses with nothing installed)
//! or the production ones (Kafka, PostgreSQL/TimescaleDB, Redis), one choice per
//! part:
//!
//! | part | production when set | otherwise |
//! |---|---|---|
//! | bus | `bus.kafka_brokers` | SQLite log `<storage.data_dir>/bus.db` |
//! | store | `storage.database_url` | SQLite `<storage.data_dir>/store.db` |
//! | cache | `cache.redis_url` | in-process map |
//!
//! A production engine that cannot be reached at start is not an error: the
//! role logs a warning naming the engine, its address (never a password) and
//! the config key, then retries with [`Backoff`] (from [`BACKOFF_FIRST`] to [`BACKOFF_CAP`])
//! until it connects or shutdown is requested. A deployment that starts before
//! its database therefore waits visibly instead of crash-looping. Errors that
//! waiting cannot fix (an invalid URL, a failing migration) end the start.

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pulse_core::backoff::Backoff;
use pulse_core::config::Config;
use pulse_engine::bus::embedded::SqliteBus;
use pulse_engine::bus::kafka::{KafkaConsumer, KafkaProducer};
use pulse_engine::bus::{BusConsumer, BusError, BusProducer};
use pulse_engine::cache::memory::MemoryCache;
use pulse_engine::cache::redis::{RedisCache, TlsFiles};
use pulse_engine::cache::{Cache, CacheError};
use pulse_engine::store::postgres::{PostgresStore, TimescalePolicies, claim_schema, owned_schema};
use pulse_engine::store::sqlite::SqliteStore;
use pulse_engine::store::{Store, StoreError};
use pulse_server::CancellationToken;
use tracing::{info, warn};

/// First pause after a failed connection attempt (half of it random).
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between two connection attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long the TCP probe before a connection attempt waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The roles a process runs: the same three the operator deploys.
pub use pulse_core::names::Component as Role;

/// Why the engines could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A role run alone was configured with an engine that only works inside
    /// `pulse up`.
    #[error(
        "`pulse {role}` runs alone, so it cannot use the embedded {part}: {why}. Set {key} \
         (or PULSE_{env}), or run every role together with `pulse up`"
    )]
    NeedsProduction {
        role: &'static str,
        part: &'static str,
        key: &'static str,
        env: String,
        why: &'static str,
    },
    #[error(
        "cannot create the data directory {path}: {source}; set storage.data_dir to a writable place"
    )]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{engine} at {address} ({key}): {message}")]
    Failed {
        engine: &'static str,
        address: String,
        key: &'static str,
        message: String,
    },
    #[error("embedded {part}: {message}")]
    Embedded { part: &'static str, message: String },
    #[error("shutdown requested while waiting for {0}")]
    Cancelled(String),
}

/// Which engine each part uses, in words, for the start banner and logs. `None`
/// for a part the process does not use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineSummary {
    pub bus: Option<String>,
    pub store: Option<String>,
    pub cache: Option<String>,
    /// The data directory, when an embedded engine keeps files there.
    pub data_dir: Option<PathBuf>,
}

impl EngineSummary {
    /// Whether every part in use runs on an embedded engine.
    pub fn all_embedded(&self) -> bool {
        [&self.bus, &self.store, &self.cache]
            .into_iter()
            .flatten()
            .all(|d| d.starts_with("embedded"))
    }
}

/// The engines of one process, for the roles it runs.
pub struct Engines {
    /// For the gateway.
    pub producer: Option<Arc<dyn BusProducer>>,
    /// For the processor (one member of the pipeline's consumer group).
    pub consumer: Option<Box<dyn BusConsumer>>,
    /// For the processor's alert delivery: the pipeline's `.anomalies` topic
    /// (Kafka only; the embedded bus has no topic outside Pulse to feed).
    pub anomaly_topic: Option<Arc<dyn BusProducer>>,
    /// For the processor (and the dashboard without `dashboard.database_url`).
    pub store: Option<Arc<dyn Store>>,
    /// For the dashboard: the store at `dashboard.database_url` (a read
    /// replica) when set, else the same as `store`.
    pub dashboard_store: Option<Arc<dyn Store>>,
    pub cache: Option<Arc<dyn Cache>>,
    pub summary: EngineSummary,
}

/// Refuses an engine choice that cannot work for `roles`: a role run alone
/// (a separate Deployment) shares nothing in-process with the others, so
///
/// * the gateway and the processor need Kafka: the embedded log is a file the
///   other role's process would never see;
/// * the processor and the dashboard need PostgreSQL: one would write an SQLite
///   file the other cannot read (and two processor replicas would each keep
///   their own, splitting the results).
///
/// The in-process cache is allowed (answers stay right, they come from the
/// store), with a warning from [`connect`].
pub fn check_roles(config: &Config, roles: &[Role]) -> Result<(), EngineError> {
    if roles.len() != 1 {
        return Ok(());
    }
    let role = roles[0];
    let needs = |part, key: &'static str, why| EngineError::NeedsProduction {
        role: role.as_str(),
        part,
        key,
        env: key.to_ascii_uppercase().replace('.', "__"),
        why,
    };
    if role.uses_bus() && config.bus.kafka_brokers.is_none() {
        return Err(needs(
            "bus",
            "bus.kafka_brokers",
            "the gateway and the processor only meet through Kafka when they run as separate processes",
        ));
    }
    if role.uses_store() && config.storage.database_url.is_none() {
        return Err(needs(
            "store",
            "storage.database_url",
            "the processor and the dashboard only share results through PostgreSQL when they run \
             as separate processes",
        ));
    }
    Ok(())
}

/// Opens what `roles` need: the store and the cache first (at once), then the
/// bus, so a processor joins its consumer group only once it can commit.
/// Waits, with a warning per failed attempt, for production engines that
/// cannot be reached yet; returns [`EngineError::Cancelled`] if `shutdown` is
/// cancelled meanwhile.
pub async fn connect(
    config: &Config,
    roles: &[Role],
    shutdown: &CancellationToken,
) -> Result<Engines, EngineError> {
    check_roles(config, roles)?;
    let uses_bus = roles.iter().any(|r| r.uses_bus());
    let uses_store = roles.iter().any(|r| r.uses_store());
    let data_dir = &config.storage.data_dir;
    let embedded = (uses_bus && config.bus.kafka_brokers.is_none())
        || (uses_store && config.storage.database_url.is_none());
    if embedded {
        std::fs::create_dir_all(data_dir).map_err(|source| EngineError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
    }
    let mut engines = Engines {
        producer: None,
        consumer: None,
        anomaly_topic: None,
        store: None,
        dashboard_store: None,
        cache: None,
        summary: EngineSummary {
            data_dir: embedded.then(|| data_dir.clone()),
            ..EngineSummary::default()
        },
    };
    let read_url = config
        .dashboard
        .database_url
        .as_ref()
        .filter(|_| roles.contains(&Role::Dashboard));
    // With its own read URL the dashboard needs no access to the primary.
    let uses_primary = roles.contains(&Role::Processor) || (uses_store && read_url.is_none());
    if uses_store {
        let primary = async {
            match uses_primary {
                true => open_store(config, shutdown).await.map(Some),
                false => Ok(None),
            }
        };
        let read = async {
            match read_url {
                Some(url) => open_read_store(config, url, shutdown).await.map(Some),
                None => Ok(None),
            }
        };
        let (primary, read, (cache, cache_summary)) =
            tokio::try_join!(primary, read, open_cache(config, shutdown))?;
        let (store, primary_summary) = primary.unzip();
        let read_summary = read
            .as_ref()
            .map(|(_, summary)| format!("dashboard reads {summary}"));
        let store_summary = [primary_summary, read_summary]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        if roles.len() == 1 && config.cache.redis_url.is_none() {
            warn!(
                message = "cache.redis_url is not set, so this role's cache is in-process and not \
                           shared: dashboards answer from the store and /api/v1/live stays silent \
                           across processes. Set cache.redis_url to share one.",
                role = roles[0].as_str()
            );
        }
        engines.dashboard_store = read.map(|(read, _)| read).or_else(|| store.clone());
        engines.store = store;
        engines.cache = Some(cache);
        engines.summary.store = Some(store_summary);
        engines.summary.cache = Some(cache_summary);
    }
    if uses_bus {
        let want_producer = roles.contains(&Role::Gateway);
        let want_consumer = roles.contains(&Role::Processor);
        let (producer, consumer, summary) =
            open_bus(config, want_producer, want_consumer, shutdown).await?;
        engines.producer = producer;
        engines.consumer = consumer;
        engines.summary.bus = Some(summary);
        if want_consumer && let Some(brokers) = &config.bus.kafka_brokers {
            let topic = pulse_core::names::anomalies_topic(
                &config.pipeline.namespace,
                &config.pipeline.name,
            );
            let security = kafka_security(config);
            let producer =
                KafkaProducer::with_overrides(brokers, &topic, &property_refs(&security))
                    .await
                    .map_err(|e| EngineError::Failed {
                        engine: "Kafka",
                        address: brokers.clone(),
                        key: "bus.kafka_brokers",
                        message: format!("the anomalies topic {topic}: {e}"),
                    })?;
            engines.anomaly_topic = Some(Arc::new(producer));
        }
    }
    Ok(engines)
}

/// The librdkafka properties of `bus.tls*` and `bus.sasl_*`, the same for
/// every Kafka client of the process (they hold the SASL password: never log).
fn kafka_security(config: &Config) -> Vec<(&'static str, String)> {
    pulse_core::kafka_security::client_properties(&config.bus)
}

fn property_refs<'a>(properties: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    properties.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

type BusParts = (
    Option<Arc<dyn BusProducer>>,
    Option<Box<dyn BusConsumer>>,
    String,
);

async fn open_bus(
    config: &Config,
    want_producer: bool,
    want_consumer: bool,
    shutdown: &CancellationToken,
) -> Result<BusParts, EngineError> {
    let Some(brokers) = &config.bus.kafka_brokers else {
        let path = config.storage.data_dir.join("bus.db");
        let bus = SqliteBus::open(&path, config.bus.partitions)
            .await
            .map_err(|e| embedded("bus", &path, e))?;
        let summary = format!(
            "embedded log {} ({} partitions)",
            path.display(),
            bus.partitions()
        );
        info!(message = "Bus: embedded log.", path = %path.display(), partitions = bus.partitions());
        let consumer = want_consumer.then(|| Box::new(bus.consumer()) as Box<dyn BusConsumer>);
        let producer = want_producer.then_some(bus as Arc<dyn BusProducer>);
        return Ok((producer, consumer, summary));
    };
    let brokers: String = brokers
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",");
    let topic = config.points_topic();
    let group = config.consumer_group();
    let target = Target {
        engine: "Kafka",
        address: brokers.clone(),
        key: "bus.kafka_brokers",
    };
    let security = kafka_security(config);
    let producer = KafkaProducer::with_overrides(&brokers, &topic, &property_refs(&security))
        .await
        .map_err(|e| EngineError::Failed {
            engine: "Kafka",
            address: brokers.clone(),
            key: "bus.kafka_brokers",
            message: e.to_string(),
        })?;
    // The topic's metadata is the reachability check of both sides: it needs
    // the brokers, and tells a missing topic apart.
    let (producer_ref, topic_ref, brokers_ref) = (&producer, topic.as_str(), brokers.as_str());
    let check = move || async move {
        probe_any(brokers_ref, 9092)
            .await
            .map_err(BusError::Unavailable)?;
        producer_ref.partition_count().await.map_err(|e| match e {
            BusError::Unavailable(m) => BusError::Unavailable(format!(
                "{m}; check that the brokers run and that topic {topic_ref} exists (bus.topic)"
            )),
            other => other,
        })
    };
    let partitions = retry(
        &target,
        shutdown,
        is_permanent_bus,
        connect_backoff(),
        check,
    )
    .await?;
    if partitions != config.bus.partitions {
        warn!(
            message = "The Kafka topic's partition count differs from bus.partitions; the topic's is used.",
            topic,
            topic_partitions = partitions,
            bus_partitions = config.bus.partitions
        );
    }
    // A processor that died without leaving the group holds its partitions for
    // bus.session_timeout; heartbeats go three times per session (at most every
    // 3 s, Kafka's default).
    let session_ms = config.bus.session_timeout.as_millis();
    let heartbeat_ms = (session_ms / 3).clamp(1, 3_000).to_string();
    let session_ms = session_ms.to_string();
    let mut overrides = property_refs(&security);
    overrides.extend([
        ("session.timeout.ms", session_ms.as_str()),
        ("heartbeat.interval.ms", heartbeat_ms.as_str()),
    ]);
    let consumer = if want_consumer {
        let consumer = KafkaConsumer::with_overrides(&brokers, &topic, &group, &overrides);
        let consumer = consumer.map_err(|e| EngineError::Failed {
            engine: "Kafka",
            address: brokers.clone(),
            key: "bus.kafka_brokers",
            message: e.to_string(),
        })?;
        Some(Box::new(consumer) as Box<dyn BusConsumer>)
    } else {
        None
    };
    info!(
        message = "Bus: Kafka.",
        brokers,
        topic,
        partitions,
        group = if want_consumer { group.as_str() } else { "" }
    );
    let mut summary = format!("Kafka {brokers}, topic {topic} ({partitions} partitions)");
    if want_consumer {
        summary.push_str(&format!(", group {group}"));
    }
    let producer = want_producer.then(|| Arc::new(producer) as Arc<dyn BusProducer>);
    Ok((producer, consumer, summary))
}

async fn open_store(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(Arc<dyn Store>, String), EngineError> {
    let Some(url) = &config.storage.database_url else {
        let path = config.storage.data_dir.join("store.db");
        let store = SqliteStore::open(&path)
            .await
            .map_err(|e| embedded("store", &path, e))?;
        store
            .migrate()
            .await
            .map_err(|e| embedded("store", &path, e))?;
        info!(message = "Store: embedded SQLite.", path = %path.display());
        return Ok((
            Arc::new(store),
            format!("embedded SQLite {}", path.display()),
        ));
    };
    let target = Target {
        engine: "PostgreSQL",
        address: url_endpoint(url, 5432),
        key: "storage.database_url",
    };
    let (pipeline, address) = (&config.pipeline, target.address.as_str());
    let open = move || async move {
        probe(address).await.map_err(StoreError::Unavailable)?;
        // The pipeline's own schema, or the one an earlier release gave it.
        let schema = claim_schema(url, &pipeline.namespace, &pipeline.name).await?;
        let store = PostgresStore::connect(url, &schema)
            .await?
            .with_timescale_policies(TimescalePolicies {
                raw_retention: config.storage.raw_retention,
                result_retention: config.storage.result_retention,
                compress_after: config.storage.compress_after,
            });
        store.migrate().await?;
        Ok::<_, StoreError>(store)
    };
    let store = retry(
        &target,
        shutdown,
        is_permanent_store,
        connect_backoff(),
        open,
    )
    .await?;
    Ok(opened(store, &target, url, "Store: PostgreSQL."))
}

/// The dashboard's store at `dashboard.database_url`: read only (no schema
/// claim, no migration, which a replica would refuse), so it waits until the
/// pipeline's schema has reached it from the primary.
async fn open_read_store(
    config: &Config,
    url: &str,
    shutdown: &CancellationToken,
) -> Result<(Arc<dyn Store>, String), EngineError> {
    let target = Target {
        engine: "PostgreSQL",
        address: url_endpoint(url, 5432),
        key: "dashboard.database_url",
    };
    let (pipeline, address) = (&config.pipeline, target.address.as_str());
    let open = move || async move {
        probe(address).await.map_err(StoreError::Unavailable)?;
        let schema = owned_schema(url, &pipeline.namespace, &pipeline.name)
            .await?
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "no schema of pipeline {}/{} there yet: a processor creates it on \
                     storage.database_url and replication brings it here",
                    pipeline.namespace, pipeline.name
                ))
            })?;
        PostgresStore::connect(url, &schema).await
    };
    let store = retry(
        &target,
        shutdown,
        is_permanent_store,
        connect_backoff(),
        open,
    )
    .await?;
    Ok(opened(
        store,
        &target,
        url,
        "Dashboard store: PostgreSQL (read URL).",
    ))
}

/// Logs the PostgreSQL store a role opened (the URL without its password) and
/// gives the banner's line for it.
fn opened(
    store: PostgresStore,
    target: &Target,
    url: &str,
    what: &'static str,
) -> (Arc<dyn Store>, String) {
    let (mode, schema) = (store.mode(), store.schema());
    info!(
        message = what,
        address = %target.address,
        url = %redact_url(url),
        schema,
        mode
    );
    let summary = format!("PostgreSQL {}, schema {schema} ({mode})", target.address);
    (Arc::new(store), summary)
}

async fn open_cache(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(Arc<dyn Cache>, String), EngineError> {
    let Some(url) = &config.cache.redis_url else {
        info!(message = "Cache: in-process memory.");
        return Ok((
            Arc::new(MemoryCache::new()),
            "embedded in-process memory".to_string(),
        ));
    };
    let prefix = config.cache_prefix();
    let ttl = config.cache.ttl;
    let target = Target {
        engine: "Redis",
        address: url_endpoint(url, 6379),
        key: "cache.redis_url",
    };
    let longest = config
        .window_specs()
        .ok()
        .and_then(|w| w.iter().map(|w| w.size_ms).max())
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    if ttl <= longest + config.processor.allowed_lateness {
        warn!(
            message = "cache.ttl is not above the longest window plus the allowed lateness; that \
                       window's latest answers will come from the store between closings.",
            ttl = %pulse_core::duration::label(ttl),
            longest_window = %pulse_core::duration::label(longest)
        );
    }
    let never_permanent = |_: &CacheError| false;
    let tls = &TlsFiles {
        ca_file: config.cache.tls_ca_file.clone(),
        cert_file: config.cache.tls_cert_file.clone(),
        key_file: config.cache.tls_key_file.clone(),
    };
    let (prefix_ref, address) = (prefix.as_str(), target.address.as_str());
    let open = move || async move {
        probe(address).await.map_err(CacheError::Unavailable)?;
        RedisCache::connect_tls(url, prefix_ref, ttl, tls).await
    };
    let cache = retry(&target, shutdown, never_permanent, connect_backoff(), open).await?;
    info!(
        message = "Cache: Redis.",
        address = %target.address,
        prefix,
        ttl = %pulse_core::duration::label(ttl)
    );
    let summary = format!(
        "Redis {}, prefix {prefix}, ttl {}",
        target.address,
        pulse_core::duration::label(ttl)
    );
    Ok((Arc::new(cache), summary))
}

/// Whether something accepts TCP connections at `address` (`host:port`),
/// within [`PROBE_TIMEOUT`]. Clients take longer to give up (sqlx's pool
/// retries for 10 s) and say less ("pool timed out"); this names the cause
/// ("connection refused", "failed to lookup address") at once. An address that
/// is no `host:port` (a Unix socket URL) is left to the client.
async fn probe(address: &str) -> Result<(), String> {
    if address.contains("://") {
        return Ok(());
    }
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect to {address}: {e}")),
        Err(_) => Err(format!(
            "no answer from {address} within {}",
            pulse_core::duration::label(PROBE_TIMEOUT)
        )),
    }
}

/// [`probe`] for a Kafka bootstrap list: fine when any broker answers.
async fn probe_any(brokers: &str, default_port: u16) -> Result<(), String> {
    let mut errors = Vec::new();
    for broker in brokers.split(',').map(str::trim) {
        // `SSL://host:9093` names a protocol; the address follows it.
        let address = broker.rsplit_once("://").map_or(broker, |(_, a)| a);
        let address = if address.contains(':') {
            address.to_string()
        } else {
            format!("{address}:{default_port}")
        };
        match probe(&address).await {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

fn embedded(part: &'static str, path: &Path, error: impl Display) -> EngineError {
    EngineError::Embedded {
        part,
        message: format!("{}: {error}", path.display()),
    }
}

fn is_permanent_store(e: &StoreError) -> bool {
    !matches!(e, StoreError::Unavailable(_))
}

fn is_permanent_bus(e: &BusError) -> bool {
    matches!(e, BusError::Other(_))
}

/// What a connection attempt is about, for messages.
struct Target {
    engine: &'static str,
    /// Where, without credentials.
    address: String,
    /// The config key that sets it.
    key: &'static str,
}

/// Runs `attempt` until it succeeds, fails permanently, or `shutdown` is
/// cancelled; waits as `backoff` says between attempts, with a warning
/// each time.
async fn retry<T, E, F, Fut>(
    target: &Target,
    shutdown: &CancellationToken,
    permanent: impl Fn(&E) -> bool,
    mut backoff: Backoff,
    mut attempt: F,
) -> Result<T, EngineError>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let (engine, address, key) = (target.engine, target.address.as_str(), target.key);
    let cancelled = || EngineError::Cancelled(format!("{engine} at {address} ({key})"));
    loop {
        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Err(cancelled()),
            outcome = attempt() => outcome,
        };
        let error = match outcome {
            Ok(value) => {
                if backoff.failures() > 0 {
                    info!(
                        engine,
                        address,
                        key,
                        failed_attempts = backoff.failures(),
                        "Connected to {engine} at {address} ({key})."
                    );
                }
                return Ok(value);
            }
            Err(error) if permanent(&error) => {
                return Err(EngineError::Failed {
                    engine,
                    address: address.to_string(),
                    key,
                    message: error.to_string(),
                });
            }
            Err(error) => error,
        };
        let pause = backoff.fail();
        let wait = format!("{:.1}s", pause.as_secs_f64());
        warn!(
            engine,
            address,
            key,
            attempt = backoff.failures(),
            retry_in = %wait,
            %error,
            "Cannot reach {engine} at {address} ({key}); retrying in {wait}."
        );
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Err(cancelled()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// The backoff of a connection to an engine at start.
fn connect_backoff() -> Backoff {
    Backoff::new(BACKOFF_FIRST, BACKOFF_CAP)
}

/// `config` with its secrets hidden, for `pulse config`: each bearer token
/// and the Kafka SASL password become `***` (the tokens' number still shows),
/// and the passwords of the database and Redis URLs are redacted as in the logs.
pub fn redact_config(mut config: Config) -> Config {
    for token in config
        .gateway
        .tokens
        .iter_mut()
        .chain(config.dashboard.read_tokens.iter_mut())
    {
        *token = "***".to_string();
    }
    if let Some(password) = &mut config.bus.sasl_password {
        *password = "***".to_string();
    }
    for url in [
        &mut config.storage.database_url,
        &mut config.cache.redis_url,
    ]
    .into_iter()
    .flatten()
    {
        *url = redact_url(url);
    }
    config
}

/// `url` with its password (in the user part, or a `password=` query
/// parameter) replaced by `***`, for logs and banners. Text that is not a URL
/// comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query
                .split_once('#')
                .map_or((query, None), |(q, f)| (q, Some(f)));
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn is_secret_param(name: &str) -> bool {
    ["password", "pass", "pwd", "secret", "token", "sslpassword"]
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s))
}

/// Where `url` points, as `host:port` (with `default_port` when it names
/// none), for messages: no user, no password, no database. A URL without a
/// host (a Unix socket) comes back redacted whole.
pub fn url_endpoint(url: &str, default_port: u16) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return redact_url(url);
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return redact_url(url);
    }
    // An IPv6 literal is bracketed: `[::1]:5432`.
    let has_port = match host_port.rfind(']') {
        Some(end) => host_port[end..].contains(':'),
        None => host_port.contains(':'),
    };
    if has_port {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_printed_config_hides_tokens_and_passwords() {
        let mut config = Config::default();
        config.gateway.tokens = vec!["write-secret".into()];
        config.dashboard.read_tokens = vec!["read-secret".into(), "other".into()];
        config.storage.database_url = Some("postgres://pulse:db-secret@db:5432/pulse".into());
        config.cache.redis_url = Some("redis://:cache-secret@redis:6379".into());
        config.bus.sasl_password = Some("kafka-secret".into());
        let text = redact_config(config).to_toml();
        for secret in [
            "write-secret",
            "read-secret",
            "other",
            "db-secret",
            "cache-secret",
            "kafka-secret",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("postgres://pulse:***@db:5432/pulse"),
            "{text}"
        );
    }
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        for (url, redacted) in [
            (
                "postgres://pulse:s3cr:et@db:5432/metrics",
                "postgres://pulse:***@db:5432/metrics",
            ),
            ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
            ("redis://user@cache", "redis://user@cache"),
            ("postgres://db/x", "postgres://db/x"),
            (
                "postgres://u@db/x?sslmode=require&password=p@ss&x=1",
                "postgres://u@db/x?sslmode=require&password=***&x=1",
            ),
            (
                "postgres://u:p@db/x?password=q#frag",
                "postgres://u:***@db/x?password=***#frag",
            ),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn endpoints_name_host_and_port_only() {
        for (url, port, endpoint) in [
            (
                "postgres://u:pw@127.0.0.1:5999/test",
                5432,
                "127.0.0.1:5999",
            ),
            ("postgresql://db.internal/metrics", 5432, "db.internal:5432"),
            ("redis://:pw@cache", 6379, "cache:6379"),
            ("redis://[::1]:6380/2", 6379, "[::1]:6380"),
            ("redis://[::1]/2", 6379, "[::1]:6379"),
            ("postgres://u:pw@db?sslmode=require", 5432, "db:5432"),
            ("unix:///run/redis.sock", 6379, "unix:///run/redis.sock"),
            (
                "postgres:///db?host=/run/pg&password=x",
                5432,
                "postgres:///db?host=/run/pg&password=***",
            ),
        ] {
            assert_eq!(url_endpoint(url, port), endpoint, "{url}");
        }
    }

    #[test]
    fn roles_run_alone_need_the_shared_engines() {
        let embedded = Config::default();
        check_roles(&embedded, &Role::ALL).unwrap();
        for (role, key) in [
            (Role::Gateway, "bus.kafka_brokers"),
            (Role::Processor, "bus.kafka_brokers"),
            (Role::Dashboard, "storage.database_url"),
        ] {
            let err = check_roles(&embedded, &[role]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(role.as_str()), "{err}");
            assert!(err.contains("pulse up"), "{err}");
        }
        let mut kafka = Config::default();
        kafka.bus.kafka_brokers = Some("k:9092".into());
        check_roles(&kafka, &[Role::Gateway]).unwrap();
        let err = check_roles(&kafka, &[Role::Processor]).unwrap_err();
        assert!(
            err.to_string().contains("PULSE_STORAGE__DATABASE_URL"),
            "{err}"
        );
        kafka.storage.database_url = Some("postgres://db/x".into());
        check_roles(&kafka, &[Role::Processor]).unwrap();
        check_roles(&kafka, &[Role::Dashboard]).unwrap();
    }

    #[test]
    fn summaries_tell_embedded_from_production() {
        let mut summary = EngineSummary {
            bus: Some("embedded log x".into()),
            store: Some("embedded SQLite y".into()),
            cache: None,
            data_dir: None,
        };
        assert!(summary.all_embedded());
        summary.cache = Some("Redis cache:6379".into());
        assert!(!summary.all_embedded());
    }

    #[tokio::test]
    async fn probes_tell_listening_from_closed_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        probe(&open).await.unwrap();
        let err = probe(&closed).await.unwrap_err();
        assert!(err.contains(&closed), "{err}");
        probe("unix:///run/redis.sock").await.unwrap();
        probe_any(&format!("{closed}, PLAINTEXT://{open}"), 9092)
            .await
            .unwrap();
        let err = probe_any(&closed, 9092).await.unwrap_err();
        assert!(err.contains(&closed), "{err}");
    }

    #[tokio::test]
    async fn retry_backs_off_until_success_and_stops_on_shutdown() {
        let target = Target {
            engine: "PostgreSQL",
            address: "db:5432".into(),
            key: "storage.database_url",
        };
        let shutdown = CancellationToken::new();
        let short = || Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        let mut calls = 0;
        let value = retry(
            &target,
            &shutdown,
            |_: &String| false,
            short(),
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 4 {
                        Err(format!("down {n}"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(value, 4);

        let fatal = |e: &String| e == "fatal";
        let mut attempts = 0;
        let err = retry(&target, &shutdown, fatal, short(), || {
            attempts += 1;
            async { Err::<(), _>("fatal".to_string()) }
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("storage.database_url"), "{err}");
        assert_eq!(attempts, 1, "a permanent error is not retried");

        let canceller = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            canceller.cancel();
        });
        let err = retry(
            &target,
            &shutdown,
            |_: &String| false,
            short(),
            || async { Err::<(), _>("down".to_string()) },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, EngineError::Cancelled(_)), "{err}");
    }
}
