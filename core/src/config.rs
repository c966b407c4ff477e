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
use serde::{Deserialize, Serialize};

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
    /// Bearer tokens allowed to write. Empty: no authentication.
    pub tokens: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "0.0.0.0:9000".parse().expect("valid default address"),
            max_body_bytes: 10 << 20,
            max_decompressed_bytes: 64 << 20,
            max_points_per_request: 100_000,
            max_in_flight: 256,
            tokens: Vec::new(),
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
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            listen: "0.0.0.0:9100".parse().expect("valid default address"),
            windows: [60, 300, 900]
                .into_iter()
                .map(|s| WindowConfig::Tumbling(Duration::from_secs(s)))
                .collect(),
            allowed_lateness: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
            checkpoint_interval: Duration::from_secs(1),
            max_poll_records: 20_000,
        }
    }
}

/// The query API and web UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    pub listen: SocketAddr,
    /// Bearer tokens allowed to read. Empty: no authentication.
    pub read_tokens: Vec<String>,
    /// Most windows one `query_range` answer may hold.
    pub max_points_per_query: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            listen: "0.0.0.0:8080".parse().expect("valid default address"),
            read_tokens: Vec::new(),
            max_points_per_query: 20_000,
        }
    }
}

/// Where and how long data is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the embedded engines' files (`pulse up`).
    pub data_dir: PathBuf,
    /// How long raw points are kept.
    #[serde(with = "crate::duration::as_label")]
    pub raw_retention: Duration,
    /// How long window results are kept.
    #[serde(with = "crate::duration::as_label")]
    pub result_retention: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./pulse-data"),
            raw_retention: Duration::from_secs(7 * 86_400),
            result_retention: Duration::from_secs(90 * 86_400),
        }
    }
}

/// The bus between gateway and processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Partitions of the points topic; a series always lands on the same one.
    pub partitions: u32,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig { partitions: 4 }
    }
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
const SECTIONS: [&str; 7] = [
    "pipeline",
    "gateway",
    "processor",
    "dashboard",
    "limits",
    "storage",
    "bus",
];

impl Config {
    /// Loads defaults, then `file` (by extension: `.toml`, `.yaml`/`.yml`), then
    /// the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
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
        let env = Env::prefixed("PULSE_").split("__").filter(|key| {
            SECTIONS
                .iter()
                .any(|s| key.as_str().starts_with(&format!("{s}.")))
        });
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Load {
                path: origin,
                message: e.to_string(),
            })?;
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
        if self.pipeline.name.is_empty() || self.pipeline.namespace.is_empty() {
            return Err(invalid(
                "pipeline",
                "namespace and name must not be empty".into(),
            ));
        }
        Ok(())
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
}
