//! `MetricPipeline`: one pipeline's Kafka topics, database schema, gateway and
//! processor, rendered into `pulse.toml` and Deployments by the operator.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use pulse_core::config::{CacheConfig, GatewayConfig, StorageConfig};
use pulse_core::duration::label;
use pulse_core::validate::Limits;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    AlertingSpec, AnomalySpec, BackupSpec, DURATION_PATTERN, DashboardsSpec, DeletionPolicy,
    GatewaySpec, PipelineHealth, PlacementSpec, ProcessorSpec, SecretKeyRef,
};

/// A window as the processor and the dashboard name it: `5m` for a tumbling
/// window, `10m/1m` for a sliding one (size/slide). Units s, m and h only, so the
/// API server's CEL can read them as durations.
const WINDOW_PATTERN: &str = "^[1-9][0-9]*(s|m|h)(/[1-9][0-9]*(s|m|h))?$";
/// Kafka bootstrap servers: `host:port` entries separated by commas, no spaces.
const BROKERS_PATTERN: &str = r"^[^\s,]+(,[^\s,]+)*$";

/// A real-time metrics pipeline: an ingestion gateway that writes to a Kafka
/// topic, a stream processor that aggregates it into windows, and the database
/// (and optional Redis) the results land in.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "pulse.dev",
    version = "v1alpha1",
    kind = "MetricPipeline",
    plural = "metricpipelines",
    shortname = "mp",
    namespaced,
    doc = "A Pulse metrics pipeline: Kafka topics, database schema, ingestion gateway and stream processor, made and kept by the pulse operator.",
    status = "MetricPipelineStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Points/s","type":"number","jsonPath":".status.health.pointsPerSecond"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.health.consumerLag"}"#,
    printcolumn = r#"{"name":"Last Window","type":"date","jsonPath":".status.health.lastWindowClosed"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".status.gatewayEndpoint","priority":1}"#,
    printcolumn = r#"{"name":"Windows","type":"string","jsonPath":".spec.windows"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 50").message(
        "metadata.name must be at most 50 characters: it prefixes the Services, Deployments and topics of the pipeline"
    ),
)]
#[x_kube(validation = Rule::new(
    "!has(self.processor.autoscaling) || !has(self.processor.autoscaling.minReplicas) || self.processor.autoscaling.minReplicas <= self.kafka.partitions"
).message(
    "processor.autoscaling.minReplicas must not exceed kafka.partitions: each processor consumes at least one partition"
))]
#[x_kube(validation = Rule::new("self.processor.replicas <= self.kafka.partitions").message(
    "processor.replicas must not exceed kafka.partitions: each processor consumes at least one partition, the rest would idle"
))]
#[x_kube(validation = Rule::new(
    "!has(self.anomaly) || !has(self.anomaly.rules) || self.anomaly.rules.all(r, !has(r.window) || r.window in self.windows)"
).message(Message::Expression(
    "'anomaly rule ' + self.anomaly.rules.filter(r, has(r.window) && !(r.window in self.windows))[0].name + ': window is not one of spec.windows (as written there)'".into()
)))]
#[x_kube(validation = Rule::new(
    "!has(self.anomaly) || !has(self.anomaly.rules) || self.anomaly.rules.all(r, !has(r.notify) || r.notify.all(n, has(self.alerting) && has(self.alerting.receivers) && self.alerting.receivers.exists(x, x.name == n)))"
).message(Message::Expression(
    "'anomaly rule ' + self.anomaly.rules.filter(r, has(r.notify) && r.notify.exists(n, !(has(self.alerting) && has(self.alerting.receivers) && self.alerting.receivers.exists(x, x.name == n))))[0].name + ': notify names a receiver not in spec.alerting.receivers'".into()
)))]
#[serde(rename_all = "camelCase")]
pub struct MetricPipelineSpec {
    /// The Kafka cluster and the pipeline's topics `pulse.<namespace>.<name>.points`
    /// and `.anomalies`, which the operator creates.
    pub kafka: KafkaSpec,
    /// The PostgreSQL or TimescaleDB database holding raw points and window
    /// results, in the schema `pulse_<namespace>_<name>_<hash>` the operator migrates.
    pub database: DatabaseSpec,
    /// Optional Redis holding the latest window results and the live channel,
    /// so dashboards answer from memory. Without it answers come from the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Event-time windows the processor computes: `5m` is a tumbling window,
    /// `10m/1m` a sliding window of 10 minutes starting every minute (the slide
    /// must divide the size). Dashboards refer to windows by these names.
    #[serde(default = "default_windows")]
    #[schemars(
        length(min = 1, max = 16),
        inner(length(max = 16), pattern(WINDOW_PATTERN))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(
        "self.all(w, !w.contains('/') || duration(w.split('/')[0]).getSeconds() % duration(w.split('/')[1]).getSeconds() == 0)"
    ).message("a sliding window's size must be a multiple of its slide, e.g. 10m/1m or 1h/5m"))]
    pub windows: Vec<String>,
    /// How far behind the newest event time a point may arrive and still be
    /// counted in its window; later points are counted as late.
    #[serde(default = "default_allowed_lateness")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub allowed_lateness: String,
    /// What a point and a request may look like; over a limit the gateway
    /// answers 400 or 413.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Bearer tokens for writing (gateway) and reading (dashboards). Without
    /// them the endpoints are open to anything that reaches the Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// The ingestion gateway Deployment.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// The stream processor Deployment; at most one replica per Kafka partition
    /// does work.
    #[serde(default)]
    pub processor: ProcessorSpec,
    /// The dashboard server Deployment, which serves every `Dashboard` of this
    /// pipeline (the web UI and the query API).
    #[serde(default)]
    pub dashboards: DashboardsSpec,
    /// Rules judged when a window closes (like `[[anomaly.rules]]` in pulse.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<AnomalySpec>,
    /// Receivers the rules notify (like `[[alerting.receivers]]` in pulse.toml);
    /// credentials come from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<AlertingSpec>,
    /// Container image of the pulse binary for this pipeline's pods; the
    /// operator's `--image` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Scheduled backups of the database schema to an S3-compatible bucket
    /// (a CronJob running `pulse backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// What deleting this resource does to the topics and the database schema:
    /// `Retain` (the default) keeps them, `Delete` drops them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The Kafka cluster and the pipeline's topics.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Bootstrap servers, comma-separated host:port (`kafka-0.kafka:9092,kafka-1.kafka:9092`).
    #[schemars(pattern(BROKERS_PATTERN))]
    pub brokers: String,
    /// Partitions of the points topic: the most processors that can share the
    /// work. Can only grow, as Kafka cannot remove partitions.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message(
        "kafka.partitions can only grow: Kafka cannot remove a topic's partitions"
    ))]
    pub partitions: i32,
    /// Copies of each partition on distinct brokers. Fixed once the topics exist.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "kafka.replicationFactor is fixed once the topics exist; create a new pipeline to change it"
    ))]
    pub replication_factor: i32,
    /// How long Kafka keeps points (the topics' `retention.ms`): the longest a
    /// processor may be down and still catch up without loss.
    #[serde(default = "default_topic_retention")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub retention: String,
    /// How long a processor that died without leaving its consumer group keeps
    /// its partitions before the others take them over. Within the brokers'
    /// `group.min.session.timeout.ms`..`group.max.session.timeout.ms`.
    #[serde(default = "default_session_timeout")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub session_timeout: String,
    /// TLS to the brokers (their certificate checked, and required to name the
    /// broker's host). The operator's own admin client uses it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTlsSpec>,
    /// SASL authentication to the brokers; PLAIN only together with `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslSpec>,
}

/// TLS to the Kafka brokers. Without `caSecretRef` the brokers' certificates
/// must chain to the image's trusted roots (a public CA).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTlsSpec {
    /// The Secret key holding the PEM CA that signed the brokers' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret (keys `tls.crt`, `tls.key`, as cert-manager
    /// writes them) holding this pipeline's client certificate, for brokers
    /// that require one (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_certificate_secret: Option<String>,
}

/// SASL authentication to the Kafka brokers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSaslSpec {
    pub mechanism: KafkaSaslMechanism,
    /// The user the brokers know this pipeline as.
    #[schemars(length(min = 1, max = 253))]
    pub username: String,
    /// The Secret key holding the user's password.
    pub password_secret_ref: SecretKeyRef,
}

/// The SASL mechanisms Pulse speaks to Kafka.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum KafkaSaslMechanism {
    /// The password as it is, so only with `tls`.
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// The database of raw points and window results.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// The Secret key holding the PostgreSQL URL
    /// (`postgres://user:password@host:5432/database`, TLS parameters such as
    /// `sslmode=verify-full` as `psql` reads them).
    pub url_secret_ref: SecretKeyRef,
    /// The Secret key holding the PEM CA of the database's certificate: the
    /// pods then verify it (`sslmode=verify-full` unless the URL says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// The Secret key holding the URL the dashboards read, e.g. a streaming
    /// replica's (`dashboard.database_url`). Without it they read the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_url_secret_ref: Option<SecretKeyRef>,
    /// How long raw points are kept.
    #[serde(default = "default_raw_retention")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub raw_retention: String,
    /// How long window results are kept.
    #[serde(default = "default_result_retention")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub result_retention: String,
    /// With TimescaleDB, chunks older than this are compressed. Keep it above
    /// the longest window plus the allowed lateness.
    #[serde(default = "default_compress_after")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub compress_after: String,
}

/// The Redis cache of the latest window results.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// The Secret key holding the Redis URL (`redis://host:6379`, `rediss://` for
    /// TLS), with the password (and ACL user) in it: `rediss://user:password@host:6380`.
    pub url_secret_ref: SecretKeyRef,
    /// With `rediss://`: the Secret key holding the PEM CA of Redis's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// With `rediss://`: a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) with a
    /// client certificate, for a Redis with `tls-auth-clients yes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_certificate_secret: Option<String>,
    /// How long a cached latest window lives after its last write. Keep it well
    /// above the longest window plus the allowed lateness.
    #[serde(default = "default_cache_ttl")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub ttl: String,
}

/// Bearer tokens, each Secret value holding one token or several separated by
/// newlines or commas.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Tokens the gateway accepts for writing (`Authorization: Bearer <token>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_tokens_secret_ref: Option<SecretKeyRef>,
    /// Tokens the dashboards' API accepts for reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_tokens_secret_ref: Option<SecretKeyRef>,
}

/// Limits on points and requests, enforced by the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("self.rateBurst == 0 || self.rateBurst >= self.maxPointsPerRequest").message(
    "rateBurst must be 0 or at least maxPointsPerRequest: a full request over the burst could never pass"
))]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest request body accepted as sent (compressed or not), in bytes.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_body_bytes: u32,
    /// Largest request body accepted after decompression, in bytes.
    #[serde(default = "default_max_decompressed_bytes")]
    #[schemars(range(min = 1024, max = 4294967295_u32))]
    pub max_decompressed_bytes: u32,
    /// Most points one request may carry.
    #[serde(default = "default_max_points_per_request")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_points_per_request: u32,
    /// Requests one gateway handles at once; past a short queue it answers 503.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_in_flight: u32,
    /// Points per second one writer (one ingest token; every client together
    /// without tokens) may send through each gateway replica; over it the
    /// gateway answers 429 with Retry-After. 0: no limit.
    #[serde(default)]
    pub rate_limit: u32,
    /// Points a writer may send at once beyond its rate after a quiet spell.
    /// 0: maxPointsPerRequest.
    #[serde(default)]
    pub rate_burst: u32,
    /// Most active series each gateway replica admits; points of a new series
    /// beyond it are refused (reason too_many_series) while known series keep
    /// flowing. 0: no limit.
    #[serde(default)]
    pub max_active_series: u32,
    /// How long after its last point a series stops counting as active.
    #[serde(default = "default_series_idle")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub series_idle: String,
    /// Longest metric name, in bytes.
    #[serde(default = "default_max_name_length")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_name_length: u32,
    /// Most tags one point may carry (the series cardinality a point can add).
    #[serde(default = "default_max_tags")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_tags: u32,
    /// Longest tag key, in bytes.
    #[serde(default = "default_max_tag_key_length")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_tag_key_length: u32,
    /// Longest tag value, in bytes.
    #[serde(default = "default_max_tag_value_length")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_tag_value_length: u32,
    /// Oldest timestamp accepted, relative to the gateway's clock.
    #[serde(default = "default_max_past")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_past: String,
    /// Furthest future timestamp accepted (clock skew allowance).
    #[serde(default = "default_max_future")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_future: String,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            max_body_bytes: default_max_body_bytes(),
            max_decompressed_bytes: default_max_decompressed_bytes(),
            max_points_per_request: default_max_points_per_request(),
            max_in_flight: default_max_in_flight(),
            rate_limit: 0,
            rate_burst: 0,
            max_active_series: 0,
            series_idle: default_series_idle(),
            max_name_length: default_max_name_length(),
            max_tags: default_max_tags(),
            max_tag_key_length: default_max_tag_key_length(),
            max_tag_value_length: default_max_tag_value_length(),
            max_past: default_max_past(),
            max_future: default_max_future(),
        }
    }
}

/// Replicas, resources and placement of one Deployment (gateway, processor,
/// dashboards).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// Pods to run. Two or more keep the role up through a node drain (each
    /// role has a PodDisruptionBudget of one unavailable pod).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1024))]
    pub replicas: i32,
    /// CPU and memory requests and limits of the container; modest defaults
    /// (requests 100m CPU and 128Mi, limit 512Mi) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Affinity, spread, tolerations, node selector, priority, pod metadata
    /// and ServiceAccount annotations.
    #[serde(flatten)]
    pub placement: PlacementSpec,
}

impl Default for RoleSpec {
    fn default() -> Self {
        RoleSpec {
            replicas: default_replicas(),
            resources: None,
            placement: PlacementSpec::default(),
        }
    }
}

/// What the operator last saw of the pipeline.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricPipelineStatus {
    /// `TopicsReady`, `SchemaReady`, `GatewayReady`, `ProcessorReady` and
    /// `Ready` (all of them), each with the reason when not `True`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// In-cluster URL of the gateway, where sidecars and apps send points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_endpoint: Option<String>,
    /// Throughput, consumer lag and the last window closed, from the
    /// processors' metrics (kept by the operator's health watch, once a
    /// minute, under its own field manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<PipelineHealth>,
}

fn default_windows() -> Vec<String> {
    ["1m", "5m", "15m"].map(String::from).to_vec()
}

fn default_allowed_lateness() -> String {
    "30s".into()
}

fn default_partitions() -> i32 {
    6
}

fn default_replication_factor() -> i32 {
    3
}

fn default_topic_retention() -> String {
    "7d".into()
}

fn default_session_timeout() -> String {
    label(pulse_core::config::BusConfig::default().session_timeout)
}

fn default_raw_retention() -> String {
    label(StorageConfig::default().raw_retention)
}

fn default_result_retention() -> String {
    label(StorageConfig::default().result_retention)
}

fn default_compress_after() -> String {
    label(StorageConfig::default().compress_after)
}

fn default_cache_ttl() -> String {
    label(CacheConfig::default().ttl)
}

fn default_replicas() -> i32 {
    2
}

/// The limits' defaults are core's, so a spec without `limits` renders the
/// same `pulse.toml` as `pulse up` uses.
fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn default_max_body_bytes() -> u32 {
    saturating_u32(GatewayConfig::default().max_body_bytes)
}

fn default_max_decompressed_bytes() -> u32 {
    saturating_u32(GatewayConfig::default().max_decompressed_bytes)
}

fn default_max_points_per_request() -> u32 {
    saturating_u32(GatewayConfig::default().max_points_per_request)
}

fn default_max_in_flight() -> u32 {
    saturating_u32(GatewayConfig::default().max_in_flight)
}

fn default_series_idle() -> String {
    label(GatewayConfig::default().series_idle)
}

fn default_max_name_length() -> u32 {
    saturating_u32(Limits::default().max_name_len)
}

fn default_max_tags() -> u32 {
    saturating_u32(Limits::default().max_tags)
}

fn default_max_tag_key_length() -> u32 {
    saturating_u32(Limits::default().max_tag_key_len)
}

fn default_max_tag_value_length() -> u32 {
    saturating_u32(Limits::default().max_tag_value_len)
}

fn default_max_past() -> String {
    label(Limits::default().max_past)
}

fn default_max_future() -> String {
    label(Limits::default().max_future)
}
