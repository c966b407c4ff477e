//! The one configuration schema of every Pulse role.
//!
//! Read from built-in defaults, then an optional TOML or YAML file, then
//! environment variables `PULSE_<SECTION>__<KEY>` (for example
//! `PULSE_GATEWAY__LISTEN=0.0.0.0:9001`). The operator renders the same schema into
//! a ConfigMap, so `pulse up` and a cluster deployment read identical files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml, Yaml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::names;
use crate::validate::Limits;
use crate::window::WindowSpec;

/// Top-level configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub pipeline: PipelineConfig,
    pub gateway: GatewayConfig,
    pub processor: ProcessorConfig,
    pub dashboard: DashboardConfig,
    pub limits: Limits,
    pub storage: StorageConfig,
    pub bus: BusConfig,
    pub cache: CacheConfig,
    /// Connection, request-head and decoding limits of every HTTP role.
    pub http: crate::edge::HttpLimits,
    /// Dashboards the UI serves at `/d/<name>` (`[[dashboards]]`); see `board`.
    pub dashboards: crate::board::Boards,
    /// Rules judged when windows close (`[[anomaly.rules]]`); see `anomaly`.
    pub anomaly: crate::anomaly::AnomalyConfig,
    /// Where anomalies are sent (`[[alerting.receivers]]`).
    pub alerting: crate::anomaly::AlertingConfig,
}

/// Which pipeline this process serves; names topics and schemas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub namespace: String,
    pub name: String,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            namespace: "local".into(),
            name: "default".into(),
        }
    }
}

/// The ingestion gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted as sent (compressed or not), in bytes.
    pub max_body_bytes: usize,
    /// Largest body accepted after decompression, in bytes.
    pub max_decompressed_bytes: usize,
    /// Most points one request may carry.
    pub max_points_per_request: usize,
    /// Requests handled at once; more wait, and past the queue get 503.
    pub max_in_flight: usize,
    /// Points per second one writer may send through one gateway replica: a
    /// writer is a bearer token, or every client together when there are no
    /// tokens. Over it, a request gets 429 with `Retry-After`. 0: no limit.
    pub rate_limit: u32,
    /// Points a writer may send at once beyond its rate, after a quiet spell.
    /// At least `max_points_per_request`, so a full request can always pass;
    /// 0: `max_points_per_request`.
    pub rate_burst: u32,
    /// Most active series one gateway replica admits. Points of a new series
    /// beyond it are refused one by one (`too_many_series`), while known
    /// series keep flowing. 0: no limit.
    pub max_active_series: usize,
    /// How long after its last point a series stops counting as active.
    #[serde(with = "crate::duration::as_label")]
    pub series_idle: Duration,
    /// Bearer tokens allowed to write. Empty: no authentication. Also one text
    /// of tokens separated by newlines or commas (see [`tokens_from_list_or_text`]).
    #[serde(deserialize_with = "tokens_from_list_or_text")]
    pub tokens: Vec<String>,
    /// A file of bearer tokens allowed to write (one per line, or separated
    /// by commas), re-read when it changes: a mounted Secret that rotates.
    /// Instead of `tokens`, not with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate (chain) and key to serve HTTPS with; both or neither.
    /// Re-read when the files change (a cert-manager renewal), no restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], names::GATEWAY_PORT)),
            max_body_bytes: 10 << 20,
            max_decompressed_bytes: 64 << 20,
            max_points_per_request: 100_000,
            max_in_flight: 256,
            rate_limit: 0,
            rate_burst: 0,
            max_active_series: 0,
            series_idle: Duration::from_secs(3600),
            tokens: Vec::new(),
            tokens_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// One window definition: `"5m"` for a tumbling window, or
/// `{ size = "10m", slide = "1m" }` for a sliding one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WindowConfig {
    Tumbling(#[serde(with = "crate::duration::as_label")] Duration),
    Sliding {
        #[serde(with = "crate::duration::as_label")]
        size: Duration,
        #[serde(with = "crate::duration::as_label")]
        slide: Duration,
    },
}

/// The stream processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub listen: SocketAddr,
    pub windows: Vec<WindowConfig>,
    /// How far behind the newest event time a point may arrive and still count.
    #[serde(with = "crate::duration::as_label")]
    pub allowed_lateness: Duration,
    /// After this long without records, a partition's watermark follows the wall
    /// clock, so windows close even when traffic stops.
    #[serde(with = "crate::duration::as_label")]
    pub idle_timeout: Duration,
    /// How often progress (closed windows, open window state, offsets) is committed.
    #[serde(with = "crate::duration::as_label")]
    pub checkpoint_interval: Duration,
    /// Most records taken from the bus in one poll.
    pub max_poll_records: usize,
    /// How far ahead of this processor's clock an event time counts toward
    /// its partition's watermark. A point stamped further ahead is still
    /// aggregated into its own window, but cannot make the current points of
    /// every other series late.
    #[serde(with = "crate::duration::as_label")]
    pub max_clock_skew: Duration,
    /// How long after its window closed a late point still updates that
    /// window's stored result (measured from the partition's watermark).
    /// Never less than `limits.max_past` (see [`Config::late_horizon`]);
    /// older late points are counted and kept raw only.
    #[serde(with = "crate::duration::as_label")]
    pub late_horizon: Duration,
    /// Most idempotency spans (about one per keyed request per partition)
    /// each partition remembers; past it the oldest batches are forgotten
    /// first and a resend of them would be counted again (see
    /// [`Config::batch_mark_horizon`] for how long marks are kept).
    pub max_batch_marks: usize,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], names::PROCESSOR_PORT)),
            windows: [60, 300, 900]
                .into_iter()
                .map(|s| WindowConfig::Tumbling(Duration::from_secs(s)))
                .collect(),
            allowed_lateness: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
            checkpoint_interval: Duration::from_secs(1),
            max_poll_records: 20_000,
            max_clock_skew: Duration::from_secs(5),
            late_horizon: Duration::from_secs(24 * 3600),
            max_batch_marks: 100_000,
        }
    }
}

/// The query API and web UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    pub listen: SocketAddr,
    /// Bearer tokens allowed to read. Empty: no authentication. Also one text
    /// of tokens separated by newlines or commas.
    #[serde(deserialize_with = "tokens_from_list_or_text")]
    pub read_tokens: Vec<String>,
    /// A file of bearer tokens allowed to read, re-read when it changes.
    /// Instead of `read_tokens`, not with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_tokens_file: Option<PathBuf>,
    /// Most windows one `query_range` answer may hold.
    pub max_points_per_query: usize,
    /// A file of more boards (`[[dashboards]]` tables, as in this file),
    /// re-read when it changes, so boards come and go without a restart (the
    /// operator mounts every `Dashboard` of a pipeline there). Served with the
    /// `[[dashboards]]` above; a name in both is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boards_file: Option<PathBuf>,
    /// PostgreSQL URL the dashboard reads from, e.g. a streaming replica
    /// (same form and TLS parameters as `storage.database_url`). Unset or
    /// empty: `storage.database_url`. The dashboard never writes through it.
    #[serde(
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub database_url: Option<String>,
    /// PEM certificate (chain) and key to serve HTTPS with; both or neither.
    /// Re-read when the files change (a cert-manager renewal), no restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], names::DASHBOARD_PORT)),
            read_tokens: Vec::new(),
            read_tokens_file: None,
            max_points_per_query: 20_000,
            boards_file: None,
            database_url: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// Where and how long data is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the embedded engines' files (`pulse up`).
    pub data_dir: PathBuf,
    /// PostgreSQL or TimescaleDB URL (`postgres://user:password@host:5432/db`).
    /// The pipeline's tables live in its own schema ([`names::schema`]).
    /// Unset or empty: the embedded SQLite store in `data_dir`.
    #[serde(
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub database_url: Option<String>,
    /// How long raw points are kept.
    #[serde(with = "crate::duration::as_label")]
    pub raw_retention: Duration,
    /// How long window results are kept.
    #[serde(with = "crate::duration::as_label")]
    pub result_retention: Duration,
    /// With TimescaleDB: chunks older than this are compressed (a policy
    /// installed at start). Keep it above the longest window plus the allowed
    /// lateness, so results are written before their chunk is compressed.
    #[serde(with = "crate::duration::as_label")]
    pub compress_after: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./pulse-data"),
            database_url: None,
            raw_retention: Duration::from_secs(7 * 86_400),
            result_retention: Duration::from_secs(90 * 86_400),
            compress_after: Duration::from_secs(2 * 86_400),
        }
    }
}

/// The bus between gateway and processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Partitions of the points topic; a series always lands on the same one.
    /// With Kafka the topic's own partition count is used (the operator creates
    /// the topic with this one).
    pub partitions: u32,
    /// Kafka bootstrap servers, comma-separated (`kafka-0:9092,kafka-1:9092`).
    /// Unset or empty: the embedded log in `storage.data_dir`, which only works
    /// inside `pulse up`.
    #[serde(
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub kafka_brokers: Option<String>,
    /// The Kafka topic of the points. Unset or empty:
    /// `pulse.<namespace>.<pipeline>.points` (see [`Config::points_topic`]).
    #[serde(
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic: Option<String>,
    /// Kafka consumer group session timeout: how long a processor that died
    /// without leaving the group (killed, or cut off) keeps its partitions
    /// before the brokers hand them to the other members. Must lie within the
    /// brokers' `group.min.session.timeout.ms`..`group.max.session.timeout.ms`.
    #[serde(with = "crate::duration::as_label")]
    pub session_timeout: Duration,
    /// TLS to the brokers, their certificate checked against `tls_ca_file`
    /// (or the system's roots) and required to name the broker's host.
    pub tls: bool,
    /// PEM file of the CA that signed the brokers' certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key (mTLS); both or neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// SASL authentication to the brokers; see [`crate::kafka_security`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<crate::kafka_security::SaslMechanism>,
    #[serde(
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub sasl_username: Option<String>,
    /// A secret: `pulse config` shows it as `***`, errors never carry it.
    #[serde(
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub sasl_password: Option<String>,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            partitions: 4,
            kafka_brokers: None,
            topic: None,
            session_timeout: Duration::from_secs(10),
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

/// The cache of the latest closed windows and the live channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Redis URL (`redis://[user:password@]host:6379[/db]`, `rediss://` for TLS,
    /// `unix:///path`). Keys live under [`names::cache_prefix`]. Unset or
    /// empty: an in-process cache, which only the processes of one `pulse up`
    /// share.
    #[serde(
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub redis_url: Option<String>,
    /// How long a cached latest window lives after its last write (Redis). Keep
    /// it well above the longest window plus `processor.allowed_lateness`, or
    /// that window's answers come from the store between two closings.
    #[serde(with = "crate::duration::as_label")]
    pub ttl: Duration,
    /// PEM file of the CA that signed Redis's certificate (`rediss://`).
    /// Unset: the system's trusted roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for a Redis that asks for one
    /// (`tls-auth-clients yes`); both or neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_url: None,
            ttl: Duration::from_secs(3600),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// An optional string where empty (or blank) means unset, so a deployment can
/// pass `PULSE_STORAGE__DATABASE_URL=""` from an optional secret.
fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    Ok(value.filter(|v| !v.trim().is_empty()))
}

/// Tokens as a list, or as one text holding them separated by newlines, commas
/// or spaces: how a Kubernetes Secret's value reaches a pod through one
/// environment variable (`PULSE_GATEWAY__TOKENS` from a `secretKeyRef`), where
/// a trailing newline is common. Tokens never hold whitespace or commas.
///
/// A text that names no token is refused rather than read as "no
/// authentication": it is what an empty or truncated Secret looks like, and
/// failing closed beats a gateway that silently accepts everyone. Running
/// without tokens is done by leaving the key out (or an explicit `[]`).
fn tokens_from_list_or_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        Text(String),
        // The environment provider reads an all-digit value as a number.
        Number(u64),
        List(Vec<String>),
    }
    Ok(match ListOrText::deserialize(d)? {
        ListOrText::Text(text) => {
            crate::auth::tokens_from_text(&text).map_err(serde::de::Error::custom)?
        }
        ListOrText::Number(n) => vec![n.to_string()],
        ListOrText::List(list) => list,
    })
}

/// The layering every Pulse binary's configuration follows: `T`'s defaults,
/// then `file` (YAML for `.yaml`/`.yml`, TOML otherwise), then the environment
/// variables `<prefix><KEY>` and `<prefix><KEY>__<FIELD>` whose top-level key
/// is one of `keys`, so unrelated variables sharing the prefix are ignored.
pub fn layered<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    prefix: &str,
    keys: &'static [&'static str],
) -> Result<T, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    let origin = file.map_or_else(
        || "(defaults and environment)".to_string(),
        |p| p.display().to_string(),
    );
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::Load {
                path: origin,
                message: "no such file".into(),
            });
        }
        figment = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") | Some("yml") => figment.merge(Yaml::file(path)),
            _ => figment.merge(Toml::file(path)),
        };
    }
    // The filter sees keys as written (`GATEWAY.LISTEN`): figment lowercases
    // them only afterwards, so the key is compared ignoring case.
    let env = Env::prefixed(prefix).split("__").filter(|key| {
        let top = key.as_str().split('.').next().unwrap_or_default();
        keys.iter().any(|k| k.eq_ignore_ascii_case(top))
    });
    figment.merge(env).extract().map_err(|e| ConfigError::Load {
        path: origin,
        message: e.to_string(),
    })
}

/// A configuration that could not be loaded, with what, where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    Load { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// Top-level sections, so unrelated `PULSE_*` variables (PulseAudio sets
/// `PULSE_SERVER`) are not mistaken for configuration.
const SECTIONS: [&str; 11] = [
    "http",
    "anomaly",
    "alerting",
    "pipeline",
    "gateway",
    "processor",
    "dashboard",
    "limits",
    "storage",
    "bus",
    "cache",
];

impl Config {
    /// Loads defaults, then `file`, then `PULSE_<SECTION>__<KEY>` variables
    /// (see [`layered`]), and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = layered(file, "PULSE_", &SECTIONS)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a config from TOML text (tests, and the operator's rendered ConfigMap).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load {
                path: "(inline TOML)".into(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let windows = self.window_specs()?;
        if windows.is_empty() {
            return Err(invalid(
                "processor.windows",
                "at least one window is required, e.g. [\"1m\"]".into(),
            ));
        }
        for (i, w) in windows.iter().enumerate() {
            if windows[..i].iter().any(|o| o.label == w.label) {
                return Err(invalid(
                    "processor.windows",
                    format!("window `{}` is listed twice", w.label),
                ));
            }
        }
        if self.bus.partitions == 0 || self.bus.partitions > 1024 {
            return Err(invalid(
                "bus.partitions",
                format!("must be 1 to 1024, got {}", self.bus.partitions),
            ));
        }
        if self.processor.checkpoint_interval < Duration::from_millis(10) {
            return Err(invalid(
                "processor.checkpoint_interval",
                "must be at least 10ms".into(),
            ));
        }
        if let Some((key, message)) = self.http.problem() {
            return Err(invalid(key, message.into()));
        }
        if self.processor.max_poll_records == 0 {
            return Err(invalid(
                "processor.max_poll_records",
                "must be at least 1".into(),
            ));
        }
        if self.gateway.max_points_per_request == 0 || self.gateway.max_in_flight == 0 {
            return Err(invalid(
                "gateway",
                "max_points_per_request and max_in_flight must be at least 1".into(),
            ));
        }
        let burst = self.gateway.rate_burst as usize;
        if self.gateway.rate_limit > 0 && burst != 0 && burst < self.gateway.max_points_per_request
        {
            return Err(invalid(
                "gateway.rate_burst",
                format!(
                    "{burst} is below gateway.max_points_per_request ({}), so a full request \
                     could never pass; raise it, or set 0 to use max_points_per_request",
                    self.gateway.max_points_per_request
                ),
            ));
        }
        if self.gateway.max_active_series > 0 && self.gateway.series_idle.is_zero() {
            return Err(invalid(
                "gateway.series_idle",
                "must be longer than 0 when gateway.max_active_series is set".into(),
            ));
        }
        for (key, tokens) in [
            ("gateway.tokens", &self.gateway.tokens),
            ("dashboard.read_tokens", &self.dashboard.read_tokens),
        ] {
            if tokens
                .iter()
                .any(|t| t.trim().is_empty() || t.contains(char::is_whitespace))
            {
                return Err(invalid(
                    key,
                    "tokens must be non-empty and contain no whitespace".into(),
                ));
            }
        }
        for (key, tokens, file) in [
            (
                "gateway.tokens_file",
                &self.gateway.tokens,
                &self.gateway.tokens_file,
            ),
            (
                "dashboard.read_tokens_file",
                &self.dashboard.read_tokens,
                &self.dashboard.read_tokens_file,
            ),
        ] {
            if file.is_some() && !tokens.is_empty() {
                return Err(invalid(
                    key,
                    "tokens come from the file or from the list, not both: put every token in \
                     the file"
                        .into(),
                ));
            }
        }
        for (section, cert, key) in [
            (
                "gateway",
                &self.gateway.tls_cert_file,
                &self.gateway.tls_key_file,
            ),
            (
                "dashboard",
                &self.dashboard.tls_cert_file,
                &self.dashboard.tls_key_file,
            ),
        ] {
            if cert.is_some() != key.is_some() {
                return Err(invalid(
                    &format!("{section}.tls_cert_file"),
                    format!(
                        "{section}.tls_cert_file and {section}.tls_key_file go together: set \
                         both to serve HTTPS, or neither"
                    ),
                ));
            }
        }
        if self.pipeline.name.is_empty() || self.pipeline.namespace.is_empty() {
            return Err(invalid(
                "pipeline",
                "namespace and name must not be empty".into(),
            ));
        }
        let labels: Vec<String> = windows.into_iter().map(|w| w.label).collect();
        crate::anomaly::rule::validate(&self.anomaly, &self.alerting, &labels)?;
        self.validate_engines()
    }

    /// Checks the connection keys of the production engines.
    fn validate_engines(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        if let Some(brokers) = &self.bus.kafka_brokers {
            let bad = brokers
                .split(',')
                .map(str::trim)
                .find(|b| b.is_empty() || b.contains(char::is_whitespace));
            if let Some(bad) = bad {
                return Err(invalid(
                    "bus.kafka_brokers",
                    format!(
                        "`{brokers}` is not a comma-separated list of host:port ({bad:?} is not one), \
                         e.g. \"kafka-0:9092,kafka-1:9092\""
                    ),
                ));
            }
            let topic = self.points_topic();
            if let Err(why) = check_topic(&topic) {
                let how = if self.bus.topic.is_some() {
                    ""
                } else {
                    " (derived from pipeline.namespace and pipeline.name; set bus.topic)"
                };
                return Err(invalid(
                    "bus.topic",
                    format!("`{topic}` is not a valid Kafka topic{how}: {why}"),
                ));
            }
        } else if let Some(topic) = &self.bus.topic {
            check_topic(topic).map_err(|why| invalid("bus.topic", format!("`{topic}` {why}")))?;
        }
        crate::kafka_security::validate(&self.bus)?;
        for (key, url) in [
            ("storage.database_url", &self.storage.database_url),
            ("dashboard.database_url", &self.dashboard.database_url),
        ] {
            if let Some(url) = url
                && !has_scheme(url, &["postgres", "postgresql"])
            {
                return Err(invalid(
                    key,
                    "must be a PostgreSQL URL such as postgres://user:password@host:5432/database\
                     [?sslmode=verify-full&sslrootcert=/path/ca.crt]"
                        .into(),
                ));
            }
        }
        if self.dashboard.database_url.is_some() && self.storage.database_url.is_none() {
            return Err(invalid(
                "dashboard.database_url",
                "a read URL for the dashboard needs storage.database_url too: the processor \
                 writes to PostgreSQL and the dashboard reads a replica of it"
                    .into(),
            ));
        }
        if let Some(url) = &self.cache.redis_url
            && !has_scheme(url, &["redis", "rediss", "unix", "redis+unix"])
        {
            return Err(invalid(
                "cache.redis_url",
                "must be a Redis URL such as redis://host:6379 (rediss:// for TLS, unix:///path)"
                    .into(),
            ));
        }
        let cache_tls = [
            ("cache.tls_ca_file", &self.cache.tls_ca_file),
            ("cache.tls_cert_file", &self.cache.tls_cert_file),
            ("cache.tls_key_file", &self.cache.tls_key_file),
        ];
        // Without a Redis URL the keys are unused: a pipeline's roles share one
        // file, and only those given the URL (processor, dashboard) use Redis.
        if let Some((key, _)) = cache_tls.iter().find(|(_, file)| file.is_some())
            && let Some(url) = &self.cache.redis_url
            && !url.starts_with("rediss://")
        {
            return Err(invalid(
                key,
                "is only used with a rediss:// cache.redis_url (Redis over TLS)".into(),
            ));
        }
        if self.cache.tls_cert_file.is_some() != self.cache.tls_key_file.is_some() {
            return Err(invalid(
                "cache.tls_cert_file",
                "cache.tls_cert_file and cache.tls_key_file go together (a client certificate \
                 and its key)"
                    .into(),
            ));
        }
        if self.cache.ttl < Duration::from_secs(1) {
            return Err(invalid("cache.ttl", "must be at least 1s".into()));
        }
        let session = self.bus.session_timeout;
        if session < Duration::from_secs(1) || session > Duration::from_secs(3600) {
            return Err(invalid(
                "bus.session_timeout",
                "must be 1s to 1h (and within the brokers' group session timeout range)".into(),
            ));
        }
        Ok(())
    }

    /// The late horizon in force: `processor.late_horizon`, but at least
    /// `limits.max_past`, so a point the gateway accepted reaches its windows
    /// however late it is read (a sidecar's backlog after an outage).
    pub fn late_horizon(&self) -> Duration {
        self.processor.late_horizon.max(self.limits.max_past)
    }

    /// How long a partition remembers a keyed batch, measured from the newest
    /// point it took under the key to the partition's watermark: as long as
    /// the gateway could still accept a resend of those points (they are at
    /// most `limits.max_past` old then, stamped up to `limits.max_future`
    /// ahead, with `processor.max_clock_skew` for the clocks in between).
    pub fn batch_mark_horizon(&self) -> Duration {
        self.limits.max_past + self.limits.max_future + self.processor.max_clock_skew
    }

    /// The Kafka topic of the points: `bus.topic`, or by default
    /// [`names::points_topic`].
    pub fn points_topic(&self) -> String {
        self.bus
            .topic
            .clone()
            .unwrap_or_else(|| names::points_topic(&self.pipeline.namespace, &self.pipeline.name))
    }

    /// The Kafka consumer group of the pipeline's processors ([`names::consumer_group`]).
    pub fn consumer_group(&self) -> String {
        names::consumer_group(&self.pipeline.namespace, &self.pipeline.name)
    }

    /// The prefix of every Redis key of the pipeline ([`names::cache_prefix`]).
    pub fn cache_prefix(&self) -> String {
        names::cache_prefix(&self.pipeline.namespace, &self.pipeline.name)
    }

    /// The PostgreSQL schema of the pipeline ([`names::schema`]; the store may
    /// keep an earlier release's, see `names::legacy_schema`).
    pub fn schema(&self) -> String {
        names::schema(&self.pipeline.namespace, &self.pipeline.name)
    }

    /// The configured windows as specs, in configuration order.
    pub fn window_specs(&self) -> Result<Vec<WindowSpec>, ConfigError> {
        self.processor
            .windows
            .iter()
            .map(|w| match *w {
                WindowConfig::Tumbling(size) => WindowSpec::tumbling(size),
                WindowConfig::Sliding { size, slide } => WindowSpec::sliding(size, slide),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| ConfigError::Invalid {
                key: "processor.windows".into(),
                message: e.to_string(),
            })
    }

    /// The effective configuration as TOML (`pulse config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

/// Kafka's rules for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err("must be 1 to 249 characters long".into());
    }
    if topic == "." || topic == ".." {
        return Err("must not be `.` or `..`".into());
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "may hold only letters, digits, `.`, `_` and `-`, not {c:?}"
        ));
    }
    Ok(())
}

/// Whether `url` starts with one of `schemes` followed by `://` (case-insensitive).
fn has_scheme(url: &str, schemes: &[&str]) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_use_the_documented_ports() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.gateway.listen.port(), 9000);
        assert_eq!(c.dashboard.listen.port(), 8080);
        let labels: Vec<_> = c
            .window_specs()
            .unwrap()
            .into_iter()
            .map(|w| w.label)
            .collect();
        assert_eq!(labels, ["1m", "5m", "15m"]);
    }

    #[test]
    fn toml_sets_sliding_windows_and_limits() {
        let c = Config::from_toml(
            r#"
            [processor]
            windows = ["1m", { size = "10m", slide = "1m" }]
            allowed_lateness = "45s"
            [limits]
            max_tags = 8
            "#,
        )
        .unwrap();
        let labels: Vec<_> = c
            .window_specs()
            .unwrap()
            .into_iter()
            .map(|w| w.label)
            .collect();
        assert_eq!(labels, ["1m", "10m/1m"]);
        assert_eq!(c.processor.allowed_lateness, Duration::from_secs(45));
        assert_eq!(c.limits.max_tags, 8);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = Config::from_toml("[processor]\nwindows = [{ size = \"10m\", slide = \"7m\" }]")
            .unwrap_err();
        assert!(err.to_string().contains("processor.windows"), "{err}");
        let err = Config::from_toml("[gateway]\nlisten = \"nowhere\"").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::from_toml("[gatway]\nlisten = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.to_string().contains("gatway"), "{err}");
        assert!(Config::from_toml("[bus]\npartitions = 0").is_err());
        assert!(Config::from_toml("[processor]\nwindows = [\"1m\", \"60s\"]").is_err());
        // A burst below a full request would refuse that request forever.
        let err = Config::from_toml(
            "[gateway]\nrate_limit = 1000\nrate_burst = 10\nmax_points_per_request = 50",
        )
        .unwrap_err();
        assert!(err.to_string().contains("gateway.rate_burst"), "{err}");
        Config::from_toml("[gateway]\nrate_limit = 1000\nmax_points_per_request = 50").unwrap();
    }

    #[test]
    fn yaml_file_and_environment_override_defaults() {
        let dir = std::env::temp_dir().join(format!("pulse-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pulse.yaml");
        std::fs::write(
            &path,
            "dashboard:\n  listen: 127.0.0.1:18080\nbus:\n  partitions: 2\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.dashboard.listen.port(), 18080);
        assert_eq!(c.bus.partitions, 2);
        assert!(Config::load(Some(&dir.join("missing.toml"))).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn engines_default_to_embedded_and_names_follow_the_pipeline() {
        let c = Config::default();
        assert_eq!(c.bus.kafka_brokers, None);
        assert_eq!(c.storage.database_url, None);
        assert_eq!(c.cache.redis_url, None);
        assert_eq!(c.cache.ttl, Duration::from_secs(3600));
        assert_eq!(c.points_topic(), "pulse.local.default.points");
        assert_eq!(c.consumer_group(), "pulse-local-default");
        assert_eq!(c.cache_prefix(), "pulse:local:default");
        // Unset keys are left out of `pulse config`, and what it prints loads back.
        let text = c.to_toml();
        assert!(
            text.contains("[cache]") && text.contains("ttl = \"1h\""),
            "{text}"
        );
        assert!(!text.contains("database_url"), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), c);

        let c = Config::from_toml("[pipeline]\nnamespace = \"prod\"\nname = \"web\"").unwrap();
        assert_eq!(c.points_topic(), "pulse.prod.web.points");
        assert_eq!(c.consumer_group(), "pulse-prod-web");
        assert_eq!(c.cache_prefix(), "pulse:prod:web");
    }

    #[test]
    fn toml_file_sets_the_engine_keys() {
        let dir = std::env::temp_dir().join(format!("pulse-engines-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pulse.toml");
        std::fs::write(
            &path,
            r#"
            [bus]
            kafka_brokers = "kafka-0:9092, kafka-1:9092"
            topic = "points.custom"
            [storage]
            database_url = "postgres://pulse:secret@db:5432/metrics"
            [cache]
            redis_url = "redis://cache:6379/2"
            ttl = "2h"
            "#,
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            c.bus.kafka_brokers.as_deref(),
            Some("kafka-0:9092, kafka-1:9092")
        );
        assert_eq!(c.points_topic(), "points.custom");
        assert_eq!(
            c.storage.database_url.as_deref(),
            Some("postgres://pulse:secret@db:5432/metrics")
        );
        assert_eq!(c.cache.redis_url.as_deref(), Some("redis://cache:6379/2"));
        assert_eq!(c.cache.ttl, Duration::from_secs(7200));
    }

    #[test]
    fn tokens_are_a_list_or_one_text_of_lines_or_commas() {
        let c = Config::from_toml(
            "[gateway]\ntokens = \"a-1\\nb-2, c-3\\n\"\n[dashboard]\nread_tokens = [\"r-1\"]",
        )
        .unwrap();
        assert_eq!(c.gateway.tokens, ["a-1", "b-2", "c-3"]);
        assert_eq!(c.dashboard.read_tokens, ["r-1"]);
        // An empty text (an empty Secret) fails closed instead of turning
        // authentication off; an explicit empty list is a choice.
        let err = Config::from_toml("[gateway]\ntokens = \"\\n\"").unwrap_err();
        assert!(err.to_string().contains("holds no token"), "{err}");
        let c = Config::from_toml("[gateway]\ntokens = []").unwrap();
        assert!(c.gateway.tokens.is_empty());
    }

    #[test]
    fn empty_connection_strings_mean_unset() {
        let c = Config::from_toml(
            "[bus]\nkafka_brokers = \"\"\n[storage]\ndatabase_url = \" \"\n[cache]\nredis_url = \"\"",
        )
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn bad_engine_keys_name_the_key() {
        for (toml, key) in [
            (
                "[bus]\nkafka_brokers = \"a:9092,,b:9092\"",
                "bus.kafka_brokers",
            ),
            (
                "[bus]\nkafka_brokers = \"a:9092 b:9092\"",
                "bus.kafka_brokers",
            ),
            ("[bus]\ntopic = \"no spaces\"", "bus.topic"),
            ("[bus]\ntopic = \"..\"", "bus.topic"),
            (
                "[storage]\ndatabase_url = \"mysql://db/x\"",
                "storage.database_url",
            ),
            (
                "[storage]\ndatabase_url = \"db:5432\"",
                "storage.database_url",
            ),
            (
                "[storage]\ndatabase_url = \"postgres://db/x\"\n[dashboard]\ndatabase_url = \"db:5432\"",
                "dashboard.database_url",
            ),
            (
                "[dashboard]\ndatabase_url = \"postgres://replica/x\"",
                "dashboard.database_url",
            ),
            (
                "[cache]\nredis_url = \"http://cache:6379\"",
                "cache.redis_url",
            ),
            ("[cache]\nttl = \"500ms\"", "cache.ttl"),
            (
                "[cache]\nredis_url = \"redis://cache\"\ntls_ca_file = \"/ca.crt\"",
                "cache.tls_ca_file",
            ),
            (
                "[cache]\nredis_url = \"rediss://cache\"\ntls_cert_file = \"/c.crt\"",
                "cache.tls_cert_file",
            ),
            ("[cache]\nttl = \"soon\"", "ttl"),
            ("[cache]\nredis = \"redis://cache\"", "redis"),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?}: {err}");
        }
        // A derived topic is valid whatever the pipeline's name (`names`
        // hashes what Kafka's alphabet cannot hold).
        let c = Config::from_toml("[bus]\nkafka_brokers = \"k:9092\"\n[pipeline]\nname = \"a/b\"")
            .unwrap();
        assert!(
            check_topic(&c.points_topic()).is_ok(),
            "{}",
            c.points_topic()
        );
    }

    /// The environment overrides the file for the new keys (and `cache` is a
    /// recognised section). Setting variables in this process would race the
    /// other tests, so the check runs in a child test process.
    #[test]
    fn environment_overrides_the_engine_keys() {
        let name = concat!(module_path!(), "::environment_overrides_the_engine_keys");
        let name = name.split_once("::").map_or(name, |(_, rest)| rest);
        if let Some(path) = std::env::var_os("PULSE_TEST_CONFIG_CHILD") {
            let c = Config::load(Some(Path::new(&path))).unwrap();
            assert_eq!(c.bus.kafka_brokers.as_deref(), Some("env-kafka:9092"));
            assert_eq!(c.points_topic(), "env.topic");
            assert_eq!(
                c.storage.database_url.as_deref(),
                Some("postgres://env@db:5432/pulse")
            );
            assert_eq!(c.cache.redis_url.as_deref(), Some("redis://env-cache:6379"));
            assert_eq!(c.cache.ttl, Duration::from_secs(300));
            assert_eq!(c.gateway.listen.port(), 9001);
            assert_eq!(c.gateway.tokens, ["ingest-1", "ingest-2"]);
            assert_eq!(c.dashboard.read_tokens, ["123456"]);
            return;
        }
        let dir = std::env::temp_dir().join(format!("pulse-env-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pulse.toml");
        std::fs::write(
            &path,
            "[bus]\nkafka_brokers = \"file-kafka:9092\"\n[cache]\nredis_url = \"redis://file:6379\"\nttl = \"2h\"\n",
        )
        .unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env("PULSE_TEST_CONFIG_CHILD", &path)
            .env("PULSE_BUS__KAFKA_BROKERS", "env-kafka:9092")
            .env("PULSE_BUS__TOPIC", "env.topic")
            .env(
                "PULSE_STORAGE__DATABASE_URL",
                "postgres://env@db:5432/pulse",
            )
            .env("PULSE_CACHE__REDIS_URL", "redis://env-cache:6379")
            .env("PULSE_CACHE__TTL", "5m")
            .env("PULSE_GATEWAY__LISTEN", "127.0.0.1:9001")
            // Token Secrets as the operator passes them: one value, one
            // token per line, trailing newline; and an all-digit token.
            .env("PULSE_GATEWAY__TOKENS", "ingest-1\ningest-2\n")
            .env("PULSE_DASHBOARD__READ_TOKENS", "123456")
            // PulseAudio's variable is not configuration.
            .env("PULSE_SERVER", "unix:/run/pulse/native")
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "child test failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
