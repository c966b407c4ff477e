//! Kafka topics of a pipeline: what they should look like, a pure plan from
//! what the brokers report to what to do, and the engine that does it through
//! librdkafka's admin API.
//!
//! The plan is pure so the decisions that matter (never shrink, grow only,
//! keep retention in step) are tested without brokers; the engine is a thin
//! mapping of each step to one admin call and of librdkafka's error codes to
//! "Kafka is unreachable, retry" or "Kafka refused, fix the spec".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigEntry, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The topic config key the pipeline's retention sets.
pub const RETENTION_KEY: &str = "retention.ms";

/// How one topic of a pipeline should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_ms: i64,
}

/// How a topic is, as the brokers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub partitions: i32,
    /// `retention.ms` of the topic; `None` when the brokers did not report it.
    pub retention_ms: Option<i64>,
}

/// What to do to one topic to reach its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPlan {
    /// The topic does not exist.
    Create,
    /// The topic exists; grow it and/or set its retention.
    Update {
        grow_to: Option<i32>,
        retention_ms: Option<i64>,
    },
    /// The spec asks for fewer partitions than the topic has: Kafka cannot
    /// remove partitions, so nothing is changed and the status says so.
    RefuseDecrease { current: i32, desired: i32 },
    /// Nothing to do.
    UpToDate,
}

/// Decides what to do to a topic from its current state (`None`: it does not
/// exist) and its spec.
pub fn plan(current: Option<&TopicState>, desired: &TopicSpec) -> TopicPlan {
    let Some(current) = current else {
        return TopicPlan::Create;
    };
    if desired.partitions < current.partitions {
        return TopicPlan::RefuseDecrease {
            current: current.partitions,
            desired: desired.partitions,
        };
    }
    let grow_to = (desired.partitions > current.partitions).then_some(desired.partitions);
    let retention_ms =
        (current.retention_ms != Some(desired.retention_ms)).then_some(desired.retention_ms);
    if grow_to.is_none() && retention_ms.is_none() {
        TopicPlan::UpToDate
    } else {
        TopicPlan::Update {
            grow_to,
            retention_ms,
        }
    }
}

/// Why a topic admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicAdminError {
    /// The brokers did not answer: retried with backoff.
    #[error(
        "Kafka at {brokers} is unreachable while {operation}: {detail}; check that the brokers run and that \
         spec.kafka.brokers names them"
    )]
    Unavailable {
        brokers: String,
        operation: String,
        detail: String,
    },
    /// The brokers answered no: the spec or the cluster needs a change.
    #[error("Kafka at {brokers} refused {operation}: {detail}; {hint}")]
    Rejected {
        brokers: String,
        operation: String,
        detail: String,
        hint: String,
    },
}

impl TopicAdminError {
    /// A short CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TopicAdminError::Unavailable { .. } => "KafkaUnavailable",
            TopicAdminError::Rejected { .. } => "KafkaRejected",
        }
    }
}

/// Describe, create, grow and configure topics. One implementation talks to
/// Kafka ([`KafkaTopicAdmin`]); tests use fakes.
#[async_trait]
pub trait TopicAdmin: Send + Sync {
    /// The topic's partitions and retention, or `None` when it does not exist.
    async fn describe(
        &self,
        brokers: &str,
        topic: &str,
    ) -> Result<Option<TopicState>, TopicAdminError>;
    /// Creates the topic; one that already exists counts as created.
    async fn create(&self, brokers: &str, spec: &TopicSpec) -> Result<(), TopicAdminError>;
    /// Grows the topic to `partitions` in total.
    async fn grow_partitions(
        &self,
        brokers: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<(), TopicAdminError>;
    /// Sets the topic's `retention.ms`.
    async fn set_retention(
        &self,
        brokers: &str,
        topic: &str,
        retention_ms: i64,
    ) -> Result<(), TopicAdminError>;
    /// Deletes the topic; one that does not exist counts as deleted.
    async fn delete(&self, brokers: &str, topic: &str) -> Result<(), TopicAdminError>;
    /// The librdkafka security properties (TLS, SASL) of the cluster at
    /// `brokers`, from the pipeline's Secrets; the calls after it use them.
    /// Fakes that speak no Kafka ignore them.
    fn configure(&self, _brokers: &str, _properties: Vec<(String, String)>) {}
}

/// What [`ensure_topics`] left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicsOutcome {
    /// Every topic matches its spec.
    Ready,
    /// A topic has more partitions than asked; nothing was changed to it.
    DecreaseRefused {
        topic: String,
        current: i32,
        desired: i32,
    },
}

/// Brings every topic to its spec: describe, [`plan`], then the admin calls
/// the plan asks for. A refused decrease is an outcome, not an error, so it
/// becomes a condition instead of an error loop.
pub async fn ensure_topics(
    admin: &dyn TopicAdmin,
    brokers: &str,
    topics: &[TopicSpec],
) -> Result<TopicsOutcome, TopicAdminError> {
    let mut outcome = TopicsOutcome::Ready;
    for spec in topics {
        let current = admin.describe(brokers, &spec.name).await?;
        match plan(current.as_ref(), spec) {
            TopicPlan::Create => admin.create(brokers, spec).await?,
            TopicPlan::Update {
                grow_to,
                retention_ms,
            } => {
                if let Some(partitions) = grow_to {
                    admin
                        .grow_partitions(brokers, &spec.name, partitions)
                        .await?;
                }
                if let Some(retention_ms) = retention_ms {
                    admin
                        .set_retention(brokers, &spec.name, retention_ms)
                        .await?;
                }
            }
            TopicPlan::RefuseDecrease { current, desired } => {
                outcome = TopicsOutcome::DecreaseRefused {
                    topic: spec.name.clone(),
                    current,
                    desired,
                };
            }
            TopicPlan::UpToDate => {}
        }
    }
    Ok(outcome)
}

/// How long one admin request may take before the brokers count as unreachable.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// [`TopicAdmin`] on librdkafka's admin client, one client per broker list
/// (pipelines may name different clusters), made on first use and kept
/// until its security properties change (a rotated Secret).
#[derive(Default)]
pub struct KafkaTopicAdmin {
    clients: Mutex<HashMap<String, Arc<AdminClient<DefaultClientContext>>>>,
    /// The security properties per broker list, as last configured.
    security: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl KafkaTopicAdmin {
    pub fn new() -> KafkaTopicAdmin {
        KafkaTopicAdmin::default()
    }

    fn client(
        &self,
        brokers: &str,
    ) -> Result<Arc<AdminClient<DefaultClientContext>>, TopicAdminError> {
        let mut clients = pulse_core::sync::lock(&self.clients);
        if let Some(client) = clients.get(brokers) {
            return Ok(client.clone());
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            // Describing a missing topic must not create it with the brokers'
            // defaults (librdkafka's producer-side default is true).
            .set("allow.auto.create.topics", "false")
            .set("socket.timeout.ms", ADMIN_TIMEOUT.as_millis().to_string());
        let security = self
            .security
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, value) in security.get(brokers).into_iter().flatten() {
            config.set(key, value);
        }
        let client: AdminClient<DefaultClientContext> = config
            .create()
            .map_err(|e| map_error(brokers, "creating an admin client", &e))?;
        let client = Arc::new(client);
        clients.insert(brokers.to_string(), client.clone());
        Ok(client)
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT))
    }
}

#[async_trait]
impl TopicAdmin for KafkaTopicAdmin {
    async fn describe(
        &self,
        brokers: &str,
        topic: &str,
    ) -> Result<Option<TopicState>, TopicAdminError> {
        let client = self.client(brokers)?;
        let Some(partitions) = partitions_of(&client, brokers, topic).await? else {
            return Ok(None);
        };
        let retention_ms = retention_of(&client, brokers, topic).await?;
        Ok(Some(TopicState {
            partitions,
            retention_ms,
        }))
    }

    async fn create(&self, brokers: &str, spec: &TopicSpec) -> Result<(), TopicAdminError> {
        let client = self.client(brokers)?;
        let operation = format!(
            "creating topic {} ({} partitions, replication factor {})",
            spec.name, spec.partitions, spec.replication_factor
        );
        let retention = spec.retention_ms.to_string();
        let topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication_factor),
        )
        .set(RETENTION_KEY, &retention);
        let results = client
            .create_topics([&topic], &Self::options())
            .await
            .map_err(|e| map_error(brokers, &operation, &e))?;
        refusal(
            results,
            &[RDKafkaErrorCode::TopicAlreadyExists],
            brokers,
            &operation,
        )
    }

    async fn grow_partitions(
        &self,
        brokers: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<(), TopicAdminError> {
        let client = self.client(brokers)?;
        let operation = format!("growing topic {topic} to {partitions} partitions");
        let total = usize::try_from(partitions).unwrap_or(0);
        let request = NewPartitions::new(topic, total);
        let results = client
            .create_partitions([&request], &Self::options())
            .await
            .map_err(|e| map_error(brokers, &operation, &e))?;
        refusal(results, &[], brokers, &operation)
    }

    async fn set_retention(
        &self,
        brokers: &str,
        topic: &str,
        retention_ms: i64,
    ) -> Result<(), TopicAdminError> {
        let client = self.client(brokers)?;
        let operation = format!("setting {RETENTION_KEY}={retention_ms} on topic {topic}");
        // AlterConfigs replaces the topic's whole dynamic config, so the
        // overrides others set (cleanup.policy, compression.type, …) are read
        // first and sent back beside the new retention.
        let current = topic_config(&client, brokers, topic).await?;
        let entries = retention_update(&current, retention_ms).map_err(|name| {
            TopicAdminError::Rejected {
                brokers: brokers.to_string(),
                operation: operation.clone(),
                detail: format!("the topic overrides the sensitive config {name}, whose value Kafka does not reveal"),
                hint: format!(
                    "setting {RETENTION_KEY} would erase {name}; set {RETENTION_KEY} on the topic by hand"
                ),
            }
        })?;
        let request = entries.iter().fold(
            AlterConfig::new(ResourceSpecifier::Topic(topic)),
            |request, (key, value)| request.set(key, value),
        );
        let results = client
            .alter_configs([&request], &Self::options())
            .await
            .map_err(|e| map_error(brokers, &operation, &e))?;
        refusal(results, &[], brokers, &operation)
    }

    async fn delete(&self, brokers: &str, topic: &str) -> Result<(), TopicAdminError> {
        let client = self.client(brokers)?;
        let operation = format!("deleting topic {topic}");
        let results = client
            .delete_topics(&[topic], &Self::options())
            .await
            .map_err(|e| map_error(brokers, &operation, &e))?;
        refusal(
            results,
            &[RDKafkaErrorCode::UnknownTopicOrPartition],
            brokers,
            &operation,
        )
    }

    fn configure(&self, brokers: &str, properties: Vec<(String, String)>) {
        // The same lock order as `client`.
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut security = self
            .security
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if security.get(brokers) != Some(&properties) {
            // The next call makes a client with the new settings.
            clients.remove(brokers);
            security.insert(brokers.to_string(), properties);
        }
    }
}

/// The topic's partition count from the brokers' metadata; `None` when it
/// does not exist (or is still being created or deleted).
async fn partitions_of(
    client: &Arc<AdminClient<DefaultClientContext>>,
    brokers: &str,
    topic: &str,
) -> Result<Option<i32>, TopicAdminError> {
    let operation = format!("describing topic {topic}");
    let name = topic.to_string();
    let client = client.clone();
    // fetch_metadata blocks, so it runs on the blocking pool.
    let metadata = tokio::task::spawn_blocking(move || {
        client.inner().fetch_metadata(Some(&name), ADMIN_TIMEOUT)
    })
    .await
    .map_err(|e| TopicAdminError::Unavailable {
        brokers: brokers.to_string(),
        operation: operation.clone(),
        detail: format!("the metadata request did not finish: {e}"),
    })?
    .map_err(|e| map_error(brokers, &operation, &e))?;
    let Some(described) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if let Some(error) = described.error() {
        let code = RDKafkaErrorCode::from(error);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            return Ok(None);
        }
        return Err(map_code(brokers, &operation, code));
    }
    match i32::try_from(described.partitions().len()) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Ok(Some(i32::MAX)),
    }
}

/// The topic's `retention.ms` as the brokers report it; `None` when they do
/// not (then the plan sets it, which is idempotent).
async fn retention_of(
    client: &AdminClient<DefaultClientContext>,
    brokers: &str,
    topic: &str,
) -> Result<Option<i64>, TopicAdminError> {
    Ok(topic_config(client, brokers, topic)
        .await?
        .iter()
        .find(|entry| entry.name == RETENTION_KEY)
        .and_then(|entry| entry.value.as_deref())
        .and_then(|value| value.parse().ok()))
}

/// Every config entry of the topic, as DescribeConfigs reports it.
async fn topic_config(
    client: &AdminClient<DefaultClientContext>,
    brokers: &str,
    topic: &str,
) -> Result<Vec<ConfigEntry>, TopicAdminError> {
    let operation = format!("reading the config of topic {topic}");
    let results = client
        .describe_configs(
            [&ResourceSpecifier::Topic(topic)],
            &KafkaTopicAdmin::options(),
        )
        .await
        .map_err(|e| map_error(brokers, &operation, &e))?;
    match results.into_iter().next() {
        Some(Ok(resource)) => Ok(resource.entries),
        Some(Err(code)) => Err(map_code(brokers, &operation, code)),
        None => Ok(Vec::new()),
    }
}

/// The full set of topic overrides to send with a non-incremental
/// AlterConfigs that sets `retention.ms`: the topic's own overrides as they
/// are, and the new retention. Fails with the name of an override Kafka hides
/// (a sensitive value), which the request would otherwise erase.
fn retention_update(
    current: &[ConfigEntry],
    retention_ms: i64,
) -> Result<Vec<(String, String)>, String> {
    let mut entries = Vec::new();
    for entry in current {
        if entry.source != ConfigSource::DynamicTopic || entry.name == RETENTION_KEY {
            continue;
        }
        match &entry.value {
            Some(value) => entries.push((entry.name.clone(), value.clone())),
            None => return Err(entry.name.clone()),
        }
    }
    entries.push((RETENTION_KEY.to_string(), retention_ms.to_string()));
    Ok(entries)
}

/// The first per-resource refusal of an admin request's results, mapped;
/// codes in `tolerated` (the wanted state already holds) are not refusals.
fn refusal<T, R>(
    results: Vec<Result<T, (R, RDKafkaErrorCode)>>,
    tolerated: &[RDKafkaErrorCode],
    brokers: &str,
    operation: &str,
) -> Result<(), TopicAdminError> {
    match results.into_iter().find_map(|result| {
        result
            .err()
            .map(|(_, code)| code)
            .filter(|code| !tolerated.contains(code))
    }) {
        Some(code) => Err(map_code(brokers, operation, code)),
        None => Ok(()),
    }
}

/// Maps a librdkafka error of a whole request.
fn map_error(brokers: &str, operation: &str, error: &KafkaError) -> TopicAdminError {
    let code = match error {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(code) => map_code(brokers, operation, code),
        // Errors without a code are local: a bad client config or a
        // cancelled request; both clear up only by retrying or a fixed spec.
        None => TopicAdminError::Unavailable {
            brokers: brokers.to_string(),
            operation: operation.to_string(),
            detail: error.to_string(),
        },
    }
}

/// Maps one librdkafka error code: transport trouble is retried, anything the
/// brokers decided is a refusal with a hint at what to change.
fn map_code(brokers: &str, operation: &str, code: RDKafkaErrorCode) -> TopicAdminError {
    let rejected = |hint: &str| TopicAdminError::Rejected {
        brokers: brokers.to_string(),
        operation: operation.to_string(),
        detail: code.to_string(),
        hint: hint.to_string(),
    };
    match code {
        RDKafkaErrorCode::InvalidReplicationFactor => rejected(
            "spec.kafka.replicationFactor must not exceed the number of brokers in the cluster",
        ),
        RDKafkaErrorCode::InvalidPartitions => {
            rejected("spec.kafka.partitions must be at least 1 and may only grow")
        }
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => rejected(
            "grant the operator's Kafka principal the right to create, alter and describe these topics",
        ),
        RDKafkaErrorCode::PolicyViolation | RDKafkaErrorCode::InvalidConfig => rejected(
            "the brokers' topic policy refuses this spec; compare spec.kafka with the cluster's limits",
        ),
        RDKafkaErrorCode::InvalidTopic => rejected(
            "the topic name is not valid in Kafka; use a shorter namespace or pipeline name",
        ),
        // A Kafka-compatible broker without (legacy) AlterConfigs: retrying
        // would report the brokers unreachable forever.
        RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::InvalidRequest => rejected(
            "the brokers do not support this admin request (a Kafka-compatible broker may lack \
             AlterConfigs); do it by hand, e.g. set the topic's retention.ms to spec.kafka.retention",
        ),
        RDKafkaErrorCode::SaslAuthenticationFailed => rejected(
            "the brokers refused spec.kafka.sasl's user and password (not shown); fix the Secret \
             spec.kafka.sasl.passwordSecretRef names, or the user",
        ),
        RDKafkaErrorCode::TopicDeletionDisabled => rejected(
            "the brokers have delete.topic.enable=false; delete the topics by hand or keep them \
             with deletionPolicy Retain",
        ),
        _ => TopicAdminError::Unavailable {
            brokers: brokers.to_string(),
            operation: operation.to_string(),
            detail: code.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    fn spec(partitions: i32) -> TopicSpec {
        TopicSpec {
            name: "pulse.shop.checkout.points".into(),
            partitions,
            replication_factor: 3,
            retention_ms: 86_400_000,
        }
    }

    fn state(partitions: i32, retention_ms: Option<i64>) -> TopicState {
        TopicState {
            partitions,
            retention_ms,
        }
    }

    #[test]
    fn missing_topic_is_created() {
        assert_eq!(plan(None, &spec(6)), TopicPlan::Create);
    }

    #[test]
    fn matching_topic_needs_nothing() {
        assert_eq!(
            plan(Some(&state(6, Some(86_400_000))), &spec(6)),
            TopicPlan::UpToDate
        );
    }

    #[test]
    fn more_partitions_grow_the_topic() {
        assert_eq!(
            plan(Some(&state(6, Some(86_400_000))), &spec(12)),
            TopicPlan::Update {
                grow_to: Some(12),
                retention_ms: None
            }
        );
    }

    #[test]
    fn changed_or_unknown_retention_is_set() {
        let update = TopicPlan::Update {
            grow_to: None,
            retention_ms: Some(86_400_000),
        };
        assert_eq!(plan(Some(&state(6, Some(1000))), &spec(6)), update);
        assert_eq!(plan(Some(&state(6, None)), &spec(6)), update);
    }

    #[test]
    fn fewer_partitions_are_refused_not_applied() {
        assert_eq!(
            plan(Some(&state(12, Some(1000))), &spec(6)),
            TopicPlan::RefuseDecrease {
                current: 12,
                desired: 6
            }
        );
    }

    fn entry(name: &str, value: Option<&str>, source: ConfigSource) -> ConfigEntry {
        ConfigEntry {
            name: name.to_string(),
            value: value.map(str::to_string),
            is_default: source == ConfigSource::Default,
            source,
            is_read_only: false,
            is_sensitive: value.is_none(),
        }
    }

    #[test]
    fn a_retention_update_keeps_the_topics_own_overrides_and_nothing_else() {
        let current = [
            entry(
                "cleanup.policy",
                Some("compact,delete"),
                ConfigSource::DynamicTopic,
            ),
            entry(RETENTION_KEY, Some("1000"), ConfigSource::DynamicTopic),
            entry("compression.type", Some("zstd"), ConfigSource::DynamicTopic),
            entry("segment.bytes", Some("1073741824"), ConfigSource::Default),
            entry("min.insync.replicas", Some("2"), ConfigSource::StaticBroker),
        ];
        assert_eq!(
            retention_update(&current, 60_000).unwrap(),
            [
                ("cleanup.policy".to_string(), "compact,delete".to_string()),
                ("compression.type".to_string(), "zstd".to_string()),
                (RETENTION_KEY.to_string(), "60000".to_string()),
            ]
        );
        assert_eq!(
            retention_update(&[], 5).unwrap(),
            [(RETENTION_KEY.to_string(), "5".to_string())]
        );
    }

    #[test]
    fn a_hidden_override_is_named_instead_of_erased() {
        let current = [
            entry("cleanup.policy", Some("delete"), ConfigSource::DynamicTopic),
            entry("some.secret", None, ConfigSource::DynamicTopic),
        ];
        assert_eq!(retention_update(&current, 5).unwrap_err(), "some.secret");
    }

    #[test]
    fn transport_errors_are_retried_and_refusals_say_what_to_fix() {
        let down = map_code("k:9092", "creating", RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(down.reason(), "KafkaUnavailable");
        let timeout = map_error(
            "k:9092",
            "describing",
            &KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut),
        );
        assert_eq!(timeout.reason(), "KafkaUnavailable");
        let refused = map_code(
            "k:9092",
            "creating",
            RDKafkaErrorCode::InvalidReplicationFactor,
        );
        assert_eq!(refused.reason(), "KafkaRejected");
        assert!(
            refused.to_string().contains("replicationFactor"),
            "{refused}"
        );
        let denied = map_code(
            "k:9092",
            "creating",
            RDKafkaErrorCode::TopicAuthorizationFailed,
        );
        assert_eq!(denied.reason(), "KafkaRejected");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_reads_partitions_from_the_brokers_and_misses_unknown_topics() {
        let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock cluster");
        cluster
            .create_topic("pulse.shop.checkout.points", 4, 1)
            .expect("mock topic");
        let brokers = cluster.bootstrap_servers();
        let admin = KafkaTopicAdmin::new();
        // The mock cluster answers metadata but not DescribeConfigs, so the
        // partition count is read alone here.
        let client = admin.client(&brokers).expect("admin client");
        let partitions = partitions_of(&client, &brokers, "pulse.shop.checkout.points").await;
        assert_eq!(partitions, Ok(Some(4)));
        let missing = admin.describe(&brokers, "pulse.shop.nothing.points").await;
        assert_eq!(missing, Ok(None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn describe_against_no_brokers_is_unavailable() {
        let admin = KafkaTopicAdmin::new();
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let error = admin
            .describe("127.0.0.1:1", "pulse.shop.checkout.points")
            .await
            .expect_err("no brokers");
        assert_eq!(error.reason(), "KafkaUnavailable", "{error}");
        assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    }
}
