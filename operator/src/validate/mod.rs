//! Step one of a reconcile: a resource's spec becomes a validated value, the
//! only input of the pure builders (after the Stackable operators' `validate`).
//!
//! The schema already refuses most bad specs at `kubectl apply`; this step
//! re-checks what the builders rely on (an object may predate a CRD change),
//! parses durations and windows with core's own parsers, and renders the
//! `pulse_core::config::Config` the pods will read, proving it passes
//! `Config::validate()` and reads back unchanged before anything is applied.

use std::fmt;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use pulse_core::board::{Board, Boards, Panel, PanelKind, Threshold};
use pulse_core::config::{Config, PipelineConfig, WindowConfig};
use pulse_core::window::WindowSpec;

mod alerting;
mod roles;

pub use roles::{CpuScaling, LagScaling, Roles, Workload};

use crate::connections::Connections;
use crate::crd::{
    BackupSpec, Dashboard, DeletionPolicy, KafkaSpec, MetricPipeline, PanelKindSpec, PanelSpec,
    SecretKeyRef,
};

/// The longest pipeline or dashboard name: it prefixes Service names, which
/// are DNS labels of at most 63 characters (the CRDs' CEL rules say the same).
const MAX_NAME_LEN: usize = 50;

/// Where the dashboard server's pods find the boards of every `Dashboard` of
/// their pipeline (a ConfigMap volume, so a changed board reaches them without
/// a restart: the server re-reads the file when it changes).
pub const BOARDS_DIR: &str = "/etc/pulse/boards";
/// The key of the boards file in its ConfigMap.
pub const BOARDS_KEY: &str = "boards.toml";
const BOARDS_FILE: &str = "/etc/pulse/boards/boards.toml";

/// Where the pods keep what the embedded engines would write (an emptyDir: the
/// production engines write nothing there, but the root filesystem is read-only).
pub const DATA_DIR: &str = "/var/lib/pulse";

/// Why a spec cannot be turned into objects: the field at fault and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidSpec {
    #[error(
        "metadata.{field} is not set: the operator only builds objects for resources read from the API server"
    )]
    MissingMetadata { field: &'static str },
    #[error(
        "metadata.name `{name}`: {reason}; create the resource under a shorter DNS-1035 name (a-z, 0-9, `-`)"
    )]
    Name { name: String, reason: String },
    #[error(
        "spec.{field}: `{value}` is not a duration; write one like 30s, 5m, 1h or 7d ({reason})"
    )]
    Duration {
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "spec.windows: `{value}` is not a window ({reason}); write `5m` for a tumbling window or `10m/1m` (size/slide, the slide dividing the size) for a sliding one"
    )]
    Window { value: String, reason: String },
    #[error("spec.{field}: {value} is out of range; use {range}")]
    OutOfRange {
        field: String,
        value: i64,
        range: &'static str,
    },
    #[error(
        "spec.processor.replicas ({replicas}) exceeds spec.kafka.partitions ({partitions}): lower the replicas or raise the partitions"
    )]
    ReplicasOverPartitions { replicas: i32, partitions: i32 },
    #[error(
        "spec: the rendered pulse.toml is refused at `{key}`: {message}; fix the spec field that sets it"
    )]
    Config { key: String, message: String },
    #[error(
        "spec.pipeline is `{wanted}` but the pipeline given is `{given}`: the dashboard must be validated against the pipeline it names"
    )]
    WrongPipeline { wanted: String, given: String },
    #[error(
        "spec.anomaly.rules[{index}] ({rule}).window: `{window}` is not a window ({reason}); use one of spec.windows"
    )]
    RuleWindow {
        index: usize,
        rule: String,
        window: String,
        reason: String,
    },
    #[error("spec.panels: {0}")]
    Panel(String),
    #[error("spec.{0}")]
    KafkaAccess(String),
    #[error(
        "spec.panels[{index}].window `{window}` is not computed by pipeline `{pipeline}` (its windows: {available}); pick one of those or add it to the pipeline's spec.windows"
    )]
    UnknownWindow {
        index: usize,
        window: String,
        pipeline: String,
        available: String,
    },
}

/// A pipeline's name, checked to fit every object name derived from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipelineName(String);

/// A dashboard's name, checked to fit its objects and `/d/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DashboardName(String);

impl PipelineName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl DashboardName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PipelineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for DashboardName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pipeline's Kafka topics as the topic admin creates them.
#[derive(Debug, Clone, PartialEq)]
pub struct Topics {
    pub brokers: String,
    pub points: String,
    pub anomalies: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention: Duration,
}

/// Everything the builders and the reconciler need of a `MetricPipeline`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedPipeline {
    pub namespace: String,
    pub name: PipelineName,
    /// Controller owner reference to the `MetricPipeline`, for every object built.
    pub owner: OwnerReference,
    /// The `pulse.toml` every role of the pipeline reads (no secrets in it).
    pub config: Config,
    /// `config` rendered, exactly as the ConfigMap holds it.
    pub config_toml: String,
    pub windows: Vec<WindowSpec>,
    pub topics: Topics,
    /// How the pods and the operator's admin client reach Kafka (TLS, SASL).
    pub kafka: KafkaSpec,
    /// The other Secrets the pods mount or read (CAs, read URL, token files).
    pub connections: Connections,
    pub database_url_secret: SecretKeyRef,
    pub redis_url_secret: Option<SecretKeyRef>,
    /// The receivers' Secret keys, by the variable the processor reads each
    /// from (`alerting.receivers[].url_env` / `routing_key_env` in `config`).
    pub receiver_secrets: Vec<(String, SecretKeyRef)>,
    /// The gateway, processor and dashboard server Deployments, their
    /// autoscalers and Ingresses.
    pub roles: Roles,
    /// The spec's image; the operator's `--image` when `None`.
    pub image: Option<String>,
    pub deletion_policy: DeletionPolicy,
    /// Scheduled backups (a CronJob), if asked for.
    pub backup: Option<BackupSpec>,
}

/// A `Dashboard` checked against its pipeline: the board the pipeline's
/// dashboard server serves at `/d/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedDashboard {
    pub namespace: String,
    pub name: DashboardName,
    pub pipeline: PipelineName,
    /// The board as core's model has it (checked by `Boards::new`).
    pub board: Board,
}

/// Checks a `MetricPipeline` and renders its config.
pub fn validate_pipeline(pipeline: &MetricPipeline) -> Result<ValidatedPipeline, InvalidSpec> {
    let (namespace, owner) = stored_metadata(pipeline)?;
    let name = PipelineName(check_name(&pipeline.name_any())?);
    let spec = &pipeline.spec;

    let partitions = in_range(
        "kafka.partitions",
        spec.kafka.partitions,
        1,
        1024,
        "1 to 1024",
    )?;
    let replication_factor = in_range(
        "kafka.replicationFactor",
        spec.kafka.replication_factor,
        1,
        32,
        "1 to 32",
    )?;
    let mut config = Config {
        pipeline: PipelineConfig {
            namespace: namespace.clone(),
            name: name.0.clone(),
        },
        ..Config::default()
    };
    config.bus.kafka_brokers = Some(spec.kafka.brokers.clone());
    config.bus.partitions = partitions.unsigned_abs();
    config.bus.session_timeout = duration("kafka.sessionTimeout", &spec.kafka.session_timeout)?;
    crate::kafka_access::check(&spec.kafka).map_err(InvalidSpec::KafkaAccess)?;
    crate::kafka_access::render(&spec.kafka, &mut config.bus);
    let connections = Connections::of(spec);
    connections.render(&mut config);
    config.processor.windows = spec
        .windows
        .iter()
        .map(|w| window(w))
        .collect::<Result<_, _>>()?;
    config.processor.allowed_lateness = duration("allowedLateness", &spec.allowed_lateness)?;
    config.storage.data_dir = DATA_DIR.into();
    config.storage.raw_retention = duration("database.rawRetention", &spec.database.raw_retention)?;
    config.storage.result_retention =
        duration("database.resultRetention", &spec.database.result_retention)?;
    config.storage.compress_after =
        duration("database.compressAfter", &spec.database.compress_after)?;
    if let Some(redis) = &spec.redis {
        config.cache.ttl = duration("redis.ttl", &redis.ttl)?;
    }
    let limits = &spec.limits;
    config.gateway.max_body_bytes = to_usize(limits.max_body_bytes);
    config.gateway.max_decompressed_bytes = to_usize(limits.max_decompressed_bytes);
    config.gateway.max_points_per_request = to_usize(limits.max_points_per_request);
    config.gateway.max_in_flight = to_usize(limits.max_in_flight);
    config.gateway.rate_limit = limits.rate_limit;
    config.gateway.rate_burst = limits.rate_burst;
    config.gateway.max_active_series = to_usize(limits.max_active_series);
    config.gateway.series_idle = duration("limits.seriesIdle", &limits.series_idle)?;
    config.limits.max_name_len = to_usize(limits.max_name_length);
    config.limits.max_tags = to_usize(limits.max_tags);
    config.limits.max_tag_key_len = to_usize(limits.max_tag_key_length);
    config.limits.max_tag_value_len = to_usize(limits.max_tag_value_length);
    config.limits.max_past = duration("limits.maxPast", &limits.max_past)?;
    config.limits.max_future = duration("limits.maxFuture", &limits.max_future)?;
    config.dashboard.boards_file = Some(BOARDS_FILE.into());
    let receiver_secrets = alerting::render(spec, &mut config)?;

    let config_toml = render(&config)?;
    let windows = config.window_specs().map_err(config_error)?;
    let topics = Topics {
        brokers: spec.kafka.brokers.clone(),
        points: config.points_topic(),
        anomalies: pulse_core::names::anomalies_topic(&namespace, name.as_str()),
        partitions,
        replication_factor,
        retention: duration("kafka.retention", &spec.kafka.retention)?,
    };
    let roles = roles::roles(
        spec,
        partitions,
        config.consumer_group(),
        topics.points.clone(),
    )?;
    Ok(ValidatedPipeline {
        namespace,
        name,
        owner,
        config,
        config_toml,
        windows,
        topics,
        kafka: spec.kafka.clone(),
        connections,
        database_url_secret: spec.database.url_secret_ref.clone(),
        redis_url_secret: spec.redis.as_ref().map(|r| r.url_secret_ref.clone()),
        receiver_secrets,
        roles,
        image: spec.image.clone(),
        deletion_policy: spec.deletion_policy,
        backup: spec.backup.clone(),
    })
}

/// Checks a `Dashboard` against the (validated) pipeline it names.
pub fn validate_dashboard(
    dashboard: &Dashboard,
    pipeline: &ValidatedPipeline,
) -> Result<ValidatedDashboard, InvalidSpec> {
    let (namespace, _owner) = stored_metadata(dashboard)?;
    let name = DashboardName(check_name(&dashboard.name_any())?);
    let spec = &dashboard.spec;
    if spec.pipeline != pipeline.name.as_str() || namespace != pipeline.namespace {
        return Err(InvalidSpec::WrongPipeline {
            wanted: format!("{namespace}/{}", spec.pipeline),
            given: format!("{}/{}", pipeline.namespace, pipeline.name),
        });
    }
    let panels = spec
        .panels
        .iter()
        .enumerate()
        .map(|(index, panel)| board_panel(index, panel, pipeline))
        .collect::<Result<Vec<_>, _>>()?;
    let board = Board {
        name: name.0.clone(),
        title: spec.title.clone(),
        panels,
    };
    // Checked alone here (name, aggregations, colours), with the others when
    // the pipeline's boards file is built.
    Boards::new(vec![board.clone()]).map_err(|e| InvalidSpec::Panel(e.to_string()))?;
    Ok(ValidatedDashboard {
        namespace,
        name,
        pipeline: pipeline.name.clone(),
        board,
    })
}

/// A panel as core's board model has it, its window named as the processor
/// labels it (`60s` becomes `1m`) and checked to be one the pipeline computes.
fn board_panel(
    index: usize,
    panel: &PanelSpec,
    pipeline: &ValidatedPipeline,
) -> Result<Panel, InvalidSpec> {
    let window = match &panel.window {
        None => None,
        Some(text) => {
            let label = window(text)
                .ok()
                .and_then(|w| window_spec(&w).ok())
                .map_or_else(|| text.clone(), |w| w.label);
            if !pipeline.windows.iter().any(|w| w.label == label) {
                return Err(InvalidSpec::UnknownWindow {
                    index,
                    window: text.clone(),
                    pipeline: pipeline.name.to_string(),
                    available: pipeline
                        .windows
                        .iter()
                        .map(|w| w.label.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Some(label)
        }
    };
    Ok(Panel {
        title: panel.title.clone(),
        kind: match panel.kind {
            PanelKindSpec::Line => PanelKind::Line,
            PanelKindSpec::Stat => PanelKind::Stat,
            PanelKindSpec::Table => PanelKind::Table,
        },
        metric: panel.metric.clone(),
        window,
        aggs: panel.aggs.clone(),
        tags: panel.tags.clone(),
        group_by: panel.group_by.clone(),
        thresholds: panel
            .thresholds
            .iter()
            .map(|t| Threshold {
                value: t.value,
                color: t.color.clone(),
            })
            .collect(),
    })
}

/// The namespace and a controller owner reference, which only a resource read
/// from the API server has (a uid).
fn stored_metadata<K: Resource<DynamicType = ()>>(
    resource: &K,
) -> Result<(String, OwnerReference), InvalidSpec> {
    let namespace = resource
        .meta()
        .namespace
        .clone()
        .ok_or(InvalidSpec::MissingMetadata { field: "namespace" })?;
    if resource.meta().name.is_none() {
        return Err(InvalidSpec::MissingMetadata { field: "name" });
    }
    let owner = resource
        .controller_owner_ref(&())
        .ok_or(InvalidSpec::MissingMetadata { field: "uid" })?;
    Ok((namespace, owner))
}

/// A name that fits the derived object names: a DNS-1035 label of at most
/// [`MAX_NAME_LEN`] characters.
fn check_name(name: &str) -> Result<String, InvalidSpec> {
    let bad = |reason: String| InvalidSpec::Name {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad(format!("must be 1 to {MAX_NAME_LEN} characters long")));
    }
    let lower_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !name.starts_with(|c: char| c.is_ascii_lowercase())
        || !name.ends_with(lower_alnum)
        || !name.chars().all(|c| lower_alnum(c) || c == '-')
    {
        return Err(bad(
            "must start with a letter, end with a letter or digit, and hold only a-z, 0-9 and `-`"
                .into(),
        ));
    }
    Ok(name.to_string())
}

fn in_range(
    field: &str,
    value: i32,
    min: i32,
    max: i32,
    range: &'static str,
) -> Result<i32, InvalidSpec> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(InvalidSpec::OutOfRange {
            field: field.into(),
            value: value.into(),
            range,
        })
    }
}

fn duration(field: &str, text: &str) -> Result<Duration, InvalidSpec> {
    pulse_core::duration::parse(text).map_err(|reason| InvalidSpec::Duration {
        field: field.into(),
        value: text.into(),
        reason,
    })
}

/// `5m` or `10m/1m` (size/slide) as core's window config.
fn window(text: &str) -> Result<WindowConfig, InvalidSpec> {
    let bad = |reason: String| InvalidSpec::Window {
        value: text.into(),
        reason,
    };
    let config = match text.split_once('/') {
        None => WindowConfig::Tumbling(pulse_core::duration::parse(text).map_err(bad)?),
        Some((size, slide)) => WindowConfig::Sliding {
            size: pulse_core::duration::parse(size).map_err(bad)?,
            slide: pulse_core::duration::parse(slide).map_err(bad)?,
        },
    };
    window_spec(&config).map_err(|e| bad(e.to_string()))?;
    Ok(config)
}

fn window_spec(config: &WindowConfig) -> Result<WindowSpec, pulse_core::window::WindowError> {
    match *config {
        WindowConfig::Tumbling(size) => WindowSpec::tumbling(size),
        WindowConfig::Sliding { size, slide } => WindowSpec::sliding(size, slide),
    }
}

/// The label core gives the window `text` (`60s` is `1m`), or why it is none.
fn window_label(text: &str) -> Result<String, String> {
    match window(text) {
        Ok(config) => window_spec(&config)
            .map(|w| w.label)
            .map_err(|e| e.to_string()),
        Err(InvalidSpec::Window { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

fn to_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn config_error(e: pulse_core::config::ConfigError) -> InvalidSpec {
    match e {
        pulse_core::config::ConfigError::Invalid { key, message } => {
            InvalidSpec::Config { key, message }
        }
        pulse_core::config::ConfigError::Load { path, message } => {
            InvalidSpec::Config { key: path, message }
        }
    }
}

/// Validates `config` and renders it, proving the pods will read back exactly
/// this config (a config that does not round-trip is refused here, not in a
/// crash-looping pod).
fn render(config: &Config) -> Result<String, InvalidSpec> {
    config.validate().map_err(config_error)?;
    let text = config.to_toml();
    let read_back = Config::from_toml(&text).map_err(config_error)?;
    if &read_back != config {
        return Err(InvalidSpec::Config {
            key: "(whole file)".into(),
            message: "the rendered pulse.toml does not read back as rendered; this is a bug in the operator, please report it".into(),
        });
    }
    Ok(text)
}
