//! The sidecar's configuration: built-in defaults, then an optional TOML or YAML
//! file (`--config`), then `PULSE_SIDECAR_<KEY>` / `PULSE_SIDECAR_<SECTION>__<KEY>`
//! environment variables, then the flags (`--gateway`, `--token-file`).
//!
//! Every receiver listens on 127.0.0.1 by default: the sidecar serves the app of
//! its own pod, and nothing else should be able to write through it. The admin
//! endpoints listen on every interface, because the kubelet probes them on the
//! pod's address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pulse_core::Tags;
pub use pulse_core::config::ConfigError;
use pulse_core::config::layered;
use pulse_core::validate::Limits;
use serde::{Deserialize, Serialize};

/// Top-level configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base URL of the pipeline's gateway (`http://pulse-gateway.shop:9000`);
    /// batches go to `<gateway>/v1/metrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// File holding the pipeline's ingest token (a mounted Secret). Re-read when
    /// it changes, so a rotated Secret needs no restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Tags added to every point that does not already carry the key (the
    /// pod's identity, set by the injection webhook).
    pub tags: Tags,
    /// How long SIGTERM may take to deliver what the buffer holds.
    #[serde(with = "pulse_core::duration::as_label")]
    pub shutdown_grace: Duration,
    pub http: HttpConfig,
    pub statsd: StatsdConfig,
    pub otlp: OtlpConfig,
    pub prometheus: PrometheusConfig,
    pub admin: AdminConfig,
    pub batch: BatchConfig,
    pub buffer: BufferConfig,
    pub forward: ForwardConfig,
    /// The same point limits as the pipeline (`[limits]`), so a point the
    /// sidecar accepts is one the gateway accepts.
    pub limits: Limits,
    /// The HTTP edge of the receivers and the admin port (`[edge]`): header
    /// and body timeouts, connection cap, head sizes, and the decode budget
    /// both HTTP receivers share; the keys of the pipeline's `[http]`.
    pub edge: pulse_core::edge::HttpLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway: None,
            token_file: None,
            tags: Tags::new(),
            shutdown_grace: Duration::from_secs(10),
            http: HttpConfig::default(),
            statsd: StatsdConfig::default(),
            otlp: OtlpConfig::default(),
            prometheus: PrometheusConfig::default(),
            admin: AdminConfig::default(),
            batch: BatchConfig::default(),
            buffer: BufferConfig::default(),
            forward: ForwardConfig::default(),
            limits: Limits::default(),
            edge: pulse_core::edge::HttpLimits::default(),
        }
    }
}

/// The HTTP receiver: the gateway's contract on localhost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Largest request body as sent, in bytes.
    pub max_body_bytes: usize,
    /// Largest body after gzip/zstd decoding, in bytes.
    pub max_decompressed_bytes: usize,
    /// Most points one request may carry.
    pub max_points_per_request: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        // Smaller than the gateway's limits: the sidecar lives inside the app's
        // memory budget, and batches are the gateway's job, not the app's.
        HttpConfig {
            enabled: true,
            listen: addr("127.0.0.1:9091"),
            max_body_bytes: 4 << 20,
            max_decompressed_bytes: 16 << 20,
            max_points_per_request: 50_000,
        }
    }
}

/// The StatsD / DogStatsD receiver (UDP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsdConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// How often counters (summed), gauges (last value) and sets (distinct
    /// count) are turned into points.
    #[serde(with = "pulse_core::duration::as_label")]
    pub flush_interval: Duration,
    /// Most series (name + tags) of each kind held between two flushes; samples
    /// of further series are rejected (`too_many_series`) until the next flush.
    pub max_series: usize,
    /// Requested socket receive buffer, in bytes (the kernel caps it at
    /// `net.core.rmem_max`): room for bursts while the sidecar is busy.
    pub receive_buffer_bytes: usize,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            enabled: true,
            listen: addr("127.0.0.1:8125"),
            flush_interval: Duration::from_secs(10),
            max_series: 10_000,
            receive_buffer_bytes: 4 << 20,
        }
    }
}

/// The OTLP metrics receivers: OTLP/HTTP on `listen`, OTLP/gRPC on
/// `grpc_listen`, both on when `enabled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    /// Resource attributes kept as tags. The others (SDK version, process id,
    /// host details) would multiply series without helping a query.
    pub resource_attributes: Vec<String>,
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: true,
            listen: addr("127.0.0.1:4318"),
            grpc_listen: addr("127.0.0.1:4317"),
            resource_attributes: [
                "service.name",
                "service.namespace",
                "service.version",
                "deployment.environment",
            ]
            .map(String::from)
            .to_vec(),
            max_body_bytes: 4 << 20,
            max_decompressed_bytes: 16 << 20,
        }
    }
}

/// Scraping the app's own Prometheus endpoint. Off until a port is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// The app's metrics port on 127.0.0.1; unset: no scraping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub path: String,
    #[serde(with = "pulse_core::duration::as_label")]
    pub interval: Duration,
    #[serde(with = "pulse_core::duration::as_label")]
    pub timeout: Duration,
    /// Largest exposition accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            port: None,
            path: "/metrics".into(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            max_body_bytes: 16 << 20,
        }
    }
}

/// `/healthz`, `/readyz` and `/metrics` of the sidecar itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: addr("0.0.0.0:9092"),
        }
    }
}

/// When a batch (one buffer segment, one request to the gateway) is closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Most points per batch.
    pub max_points: usize,
    /// Most bytes per batch, as NDJSON before compression.
    pub max_bytes: usize,
    /// Longest a point waits for its batch to fill before the batch is sent.
    #[serde(with = "pulse_core::duration::as_label")]
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_points: 10_000,
            max_bytes: 4 << 20,
            linger: Duration::from_secs(1),
        }
    }
}

/// How much `fsync` the buffer does; see the README's "Sidecar" section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Never: the data survives a crash or kill of the sidecar (it is in the
    /// kernel's page cache), not a crash of the node.
    None,
    /// Each segment when it is closed, and the directory: a node crash loses at
    /// most the open segment.
    Seal,
    /// Before every acknowledgement: nothing acknowledged is ever lost; costs a
    /// disk flush per write.
    Always,
}

/// The on-disk buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// Directory of the segment files (an emptyDir in Kubernetes).
    pub dir: PathBuf,
    /// Disk budget; past it the oldest segments are dropped (and counted).
    pub max_bytes: u64,
    pub fsync: Fsync,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            dir: PathBuf::from("./pulse-sidecar-buffer"),
            max_bytes: 256 << 20,
            fsync: Fsync::None,
        }
    }
}

/// The compression of the buffer's records and of the requests to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Gzip,
}

/// Talking to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    pub compression: Compression,
    /// Longest one request may take, connection included.
    #[serde(with = "pulse_core::duration::as_label")]
    pub timeout: Duration,
    /// First retry delay; it doubles per failure, half of each random.
    #[serde(with = "pulse_core::duration::as_label")]
    pub backoff_min: Duration,
    /// Longest retry delay.
    #[serde(with = "pulse_core::duration::as_label")]
    pub backoff_max: Duration,
    /// Consecutive failures that open the circuit.
    pub breaker_failures: u32,
    /// How long an open circuit waits before one probe request; doubles while
    /// probes fail, up to `backoff_max`.
    #[serde(with = "pulse_core::duration::as_label")]
    pub breaker_cooldown: Duration,
    /// The gateway's `max_points_per_request` (the pipeline's
    /// `limits.maxPointsPerRequest`; the injection webhook sets it): no batch
    /// is sent with more points.
    pub max_points_per_request: usize,
    /// The gateway's `max_decompressed_bytes` (`limits.maxDecompressedBytes`):
    /// no batch is written with more NDJSON bytes (but for one point).
    pub max_decompressed_bytes: usize,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            compression: Compression::Zstd,
            timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            max_points_per_request: 100_000,
            max_decompressed_bytes: 64 << 20,
        }
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("valid default address")
}

/// Top-level keys read from the environment, so unrelated `PULSE_SIDECAR*`
/// variables are not mistaken for configuration. `tags` is read apart by
/// [`env_tags`]: figment parses every variable's value, so a tag value such as
/// `123` or `true` (a namespace, a pod name) would become a number or a bool
/// and fail to load.
const KEYS: [&str; 12] = [
    "gateway",
    "token_file",
    "shutdown_grace",
    "http",
    "statsd",
    "otlp",
    "prometheus",
    "admin",
    "batch",
    "buffer",
    "forward",
    "limits",
];

/// The tags of `PULSE_SIDECAR_TAGS__<KEY>=<value>` variables, values kept
/// verbatim, keys lowercased like every other variable's.
fn env_tags(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix("PULSE_SIDECAR_TAGS__")?;
            (!key.is_empty()).then(|| (key.to_lowercase(), value))
        })
        .collect()
}

impl Config {
    /// Loads defaults, then `file`, then `PULSE_SIDECAR_*` variables (see
    /// [`layered`]). Call [`Config::validate`] after applying the flags.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config = layered(file, "PULSE_SIDECAR_", &KEYS)?;
        config.tags.extend(env_tags(std::env::vars()));
        Ok(config)
    }

    /// Checks what serde cannot: a usable gateway URL and sizes that fit
    /// together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                message,
            })
        };
        match self.gateway.as_deref() {
            None | Some("") => {
                return invalid(
                    "gateway",
                    "is required: pass --gateway http://<gateway>:9000 (or PULSE_SIDECAR_GATEWAY)"
                        .into(),
                );
            }
            Some(url) if !url.starts_with("http://") => {
                return invalid(
                    "gateway",
                    format!(
                        "`{url}` must be an http:// URL (this build has no TLS client; inside the cluster use the gateway Service, or a mesh for TLS)"
                    ),
                );
            }
            Some(_) => {}
        }
        if self.batch.max_points == 0 || self.batch.max_bytes == 0 {
            return invalid(
                "batch.max_points",
                "batch.max_points and batch.max_bytes must be above 0".into(),
            );
        }
        if self.forward.max_points_per_request == 0 || self.forward.max_decompressed_bytes == 0 {
            return invalid(
                "forward.max_points_per_request",
                "forward.max_points_per_request and forward.max_decompressed_bytes (the gateway's \
                 limits) must be above 0"
                    .into(),
            );
        }
        if (self.batch.max_bytes as u64).saturating_mul(4) > self.buffer.max_bytes {
            return invalid(
                "buffer.max_bytes",
                format!(
                    "{} bytes is less than 4 batches of batch.max_bytes ({}); raise it or lower batch.max_bytes",
                    self.buffer.max_bytes, self.batch.max_bytes
                ),
            );
        }
        if self.batch.linger.is_zero() || self.statsd.flush_interval.is_zero() {
            return invalid(
                "batch.linger",
                "batch.linger and statsd.flush_interval must be above 0".into(),
            );
        }
        if self.forward.backoff_min.is_zero() || self.forward.backoff_min > self.forward.backoff_max
        {
            return invalid(
                "forward.backoff_min",
                "must be above 0 and at most forward.backoff_max".into(),
            );
        }
        if self.forward.breaker_failures == 0 {
            return invalid("forward.breaker_failures", "must be at least 1".into());
        }
        if self.prometheus.port.is_some() && self.prometheus.interval.is_zero() {
            return invalid("prometheus.interval", "must be above 0".into());
        }
        if !self.prometheus.path.starts_with('/') {
            return invalid(
                "prometheus.path",
                format!("`{}` must start with `/`", self.prometheus.path),
            );
        }
        Ok(())
    }

    /// The URL batches are posted to: `<gateway>/v1/metrics`, unless the
    /// configured URL already names that path.
    /// When the writer closes a batch: `batch.max_points` / `batch.max_bytes`,
    /// lowered to the gateway's limits, so batches fit one request.
    pub fn batch_limits(&self) -> (usize, usize) {
        (
            self.batch
                .max_points
                .min(self.forward.max_points_per_request),
            self.batch
                .max_bytes
                .min(self.forward.max_decompressed_bytes),
        )
    }

    /// The most NDJSON bytes a segment may decompress to when the forwarder
    /// cuts it: a batch of an earlier run (at most 16 MiB, one HTTP receiver
    /// request, unless `batch.max_bytes` is larger) plus one point's line.
    pub fn max_segment_text(&self) -> usize {
        self.batch.max_bytes.max(16 << 20) + (1 << 20)
    }

    pub fn ingest_url(&self) -> String {
        let base = self.gateway.as_deref().unwrap_or_default();
        if base.trim_end_matches('/').ends_with("/v1/metrics") {
            base.to_string()
        } else {
            format!("{}/v1/metrics", base.trim_end_matches('/'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_from_the_environment_stay_strings() {
        let vars = [
            ("PULSE_SIDECAR_TAGS__NAMESPACE", "123"),
            ("PULSE_SIDECAR_TAGS__POD", "true"),
            ("PULSE_SIDECAR_TAGS__Build", "007"),
            ("PULSE_SIDECAR_TAGS__", "no key"),
            ("PULSE_SIDECAR_GATEWAY", "http://gateway:9000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            env_tags(vars),
            [("namespace", "123"), ("pod", "true"), ("build", "007")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    fn with_gateway() -> Config {
        Config {
            gateway: Some("http://gw:9000".into()),
            ..Config::default()
        }
    }

    #[test]
    fn defaults_listen_on_localhost_and_need_a_gateway() {
        let config = Config::default();
        assert!(config.http.listen.ip().is_loopback());
        assert!(config.statsd.listen.ip().is_loopback());
        assert!(config.otlp.listen.ip().is_loopback());
        assert_eq!(
            (
                config.http.listen.port(),
                config.statsd.listen.port(),
                config.otlp.listen.port(),
                config.admin.listen.port()
            ),
            (9091, 8125, 4318, 9092)
        );
        // The operator's injected container declares these ports (pulse_core::names).
        use pulse_core::names;
        assert_eq!(
            (
                names::SIDECAR_HTTP_PORT,
                names::SIDECAR_STATSD_PORT,
                names::SIDECAR_OTLP_PORT,
                names::SIDECAR_ADMIN_PORT
            ),
            (9091, 8125, 4318, 9092)
        );
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "gateway"
        ));
        with_gateway().validate().unwrap();
    }

    #[test]
    fn ingest_url_appends_the_batch_route_once() {
        let mut config = with_gateway();
        assert_eq!(config.ingest_url(), "http://gw:9000/v1/metrics");
        config.gateway = Some("http://gw:9000/".into());
        assert_eq!(config.ingest_url(), "http://gw:9000/v1/metrics");
        config.gateway = Some("http://gw:9000/v1/metrics".into());
        assert_eq!(config.ingest_url(), "http://gw:9000/v1/metrics");
    }

    #[test]
    fn https_and_a_buffer_smaller_than_four_batches_are_refused() {
        let mut config = with_gateway();
        config.gateway = Some("https://gw".into());
        assert!(config.validate().is_err());
        let mut config = with_gateway();
        config.buffer.max_bytes = config.batch.max_bytes as u64;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "buffer.max_bytes"
        ));
    }

    #[test]
    fn a_file_sets_keys_and_misspelt_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.toml");
        std::fs::write(
            &path,
            "gateway = \"http://gw:9000\"\ntags = { pod = \"web-1\" }\n[statsd]\nflush_interval = \"5s\"\n[buffer]\nfsync = \"seal\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.statsd.flush_interval, Duration::from_secs(5));
        assert_eq!(config.buffer.fsync, Fsync::Seal);
        assert_eq!(config.tags["pod"], "web-1");
        std::fs::write(&path, "[statsd]\nflush_intervall = \"5s\"\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("flush_intervall"), "{error}");
    }
}
