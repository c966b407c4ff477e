//! The Kafka engine of the bus, on `rdkafka` (librdkafka).
//!
//! **Producer.** Idempotent, `acks=all`, lz4-compressed. A `send` returns `Ok`
//! only after the brokers acknowledged every record of the batch, which is what
//! lets the gateway answer 202 ("durable"). The partition of a record is chosen
//! here, not by librdkafka's partitioner: `series id % partition count`, the
//! same rule as [`pulse_core::SeriesId::partition`] and the embedded bus, so a
//! series lands on the same partition whichever engine or client wrote it. The
//! partition count is read from the topic's metadata once and then kept fixed:
//! adding partitions to a live topic would move series and break their order.
//!
//! **Consumer.** One member of a consumer group using the classic *eager*
//! rebalance protocol. librdkafka runs rebalance callbacks inside `poll`; ours
//! turn them into [`ConsumerEvent::Revoked`] / [`ConsumerEvent::Assigned`]
//! events that `next` hands out before any further record, so the processor
//! always learns of an assignment before it sees a record of it. Offsets are
//! never committed or stored automatically: the store holds the offsets that
//! count and `commit` only mirrors them to the group (for lag and for a
//! partition's first start).
//!
//! **Handing partitions over.** librdkafka's default revoke handling gives the
//! partitions up inside the callback, so the group could hand them to another
//! member before this processor has committed their windows, and the new owner
//! would resume from an older checkpoint (counting a stretch twice). Ours
//! defers that: the revoke only queues `Revoked`, and the partitions are given
//! up at the start of the `next` call after the one that handed the event out,
//! which the processor makes only once it has committed the revoked
//! partitions. librdkafka holds the rebalance until then. Closing the consumer
//! gives them up at once, as there is nothing left to commit.
//!
//! **Seeking.** `rd_kafka_seek` fails with "Local: Erroneous state" while a
//! partition is still starting to fetch, which is exactly when the processor
//! seeks (right after `Assigned`). So `seek` only records the wanted position
//! and the next `next` applies all pending positions with one `assign` that
//! names an explicit offset for every assigned partition (the sought one, or
//! the position after the last record handed out, or the committed offset if
//! none was). `assign` bumps librdkafka's per-partition op version, so records
//! fetched from the old positions are discarded, never delivered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use pulse_core::sync::lock;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::OnceCell;

use super::kafka_security::BrokerFailure;
use super::{BusConsumer, BusError, BusProducer, BusRecord, ConsumerEvent, OutgoingRecord};

/// Records the producer holds locally (queued or in flight) at most; a send
/// that would go beyond is refused with [`BusError::Full`] before anything of
/// it is queued. Larger than the gateway's largest request (100 000 points).
const QUEUE_MAX_MESSAGES: usize = 250_000;
/// Bytes (in KiB) the producer holds locally at most.
const QUEUE_MAX_KBYTES: usize = 256 * 1024;
/// How long librdkafka keeps retrying a record before failing its delivery.
/// Well under the gateway's request timeouts, so a broker outage becomes a 503
/// rather than a hanging request.
const DEFAULT_MESSAGE_TIMEOUT_MS: &str = "30000";
/// How long a send that raced another one into a full queue waits for room
/// for the rest of its batch (its first records are already queued, so giving
/// up at once would deliver half a batch).
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(5);
/// Metadata look-ups: the partition count at start and on first send.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// `ready` answers within this.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Watermark look-ups for `end_offsets`.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the consumer waits before fetching again once its local queue
/// holds `queued.min.messages` records (see `KafkaConsumer::with_overrides`).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// A synchronous commit that has not answered by then is reported as failed
/// (the commit is advisory; the processor goes on).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards librdkafka's log lines and global errors to `tracing`, tagged with
/// the role and the brokers so a line says which client it is about, and
/// keeps the last TLS or SASL refusal for the errors callers get.
#[derive(Clone)]
struct LogContext {
    role: &'static str,
    brokers: Arc<str>,
    failure: BrokerFailure,
}

impl LogContext {
    fn log_line(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        let (role, brokers) = (self.role, &*self.brokers);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", role, brokers, facility, "{line}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", role, brokers, facility, "{line}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", role, brokers, facility, "{line}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", role, brokers, facility, "{line}")
            }
        }
    }

    /// librdkafka's "global" errors (a broker went away, all brokers down) are
    /// transient: it reconnects by itself, so they are warnings.
    fn client_error(&self, error: &KafkaError, reason: &str) {
        self.failure.record(error.rdkafka_error_code(), reason);
        tracing::warn!(
            message = "Kafka client error; librdkafka retries by itself.",
            role = self.role,
            brokers = &*self.brokers,
            %error,
            reason
        );
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log_line(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client_error(&error, reason);
    }
}

/// The consumer's group-less offsets client uses no rebalance callbacks.
impl ConsumerContext for LogContext {}

/// Delivery reports go to the batch their record belongs to.
impl ProducerContext for LogContext {
    type DeliveryOpaque = Arc<BatchDelivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<BatchDelivery>) {
        if let Err((error, _)) = result {
            batch.failed(error.to_string());
        }
        batch.release();
    }
}

/// The acknowledgements of one `send`: one shared counter per batch instead of
/// a channel per record, which was a fifth of the gateway's producing cost.
///
/// `pending` starts at 1, a hold the sender releases once every record is
/// queued, so reports that arrive while it is still queueing never bring it to
/// zero early; whoever brings it to zero wakes the sender.
struct BatchDelivery {
    pending: AtomicUsize,
    failures: AtomicUsize,
    first_failure: Mutex<Option<String>>,
    done: tokio::sync::Notify,
}

impl BatchDelivery {
    fn new() -> Arc<BatchDelivery> {
        Arc::new(BatchDelivery {
            pending: AtomicUsize::new(1),
            failures: AtomicUsize::new(0),
            first_failure: Mutex::new(None),
            done: tokio::sync::Notify::new(),
        })
    }

    /// One more record is about to be queued.
    fn hold(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// A record was acknowledged, failed, or not queued after all; or the
    /// sender's own hold is given up.
    fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            // `notify_one` keeps the wake-up for a sender not waiting yet.
            self.done.notify_one();
        }
    }

    fn failed(&self, reason: String) {
        self.failures.fetch_add(1, Ordering::AcqRel);
        lock(&self.first_failure).get_or_insert(reason);
    }

    /// Gives up the sender's hold and waits for every queued record's report.
    /// Returns how many failed and why the first did.
    async fn all_reported(&self) -> Option<(usize, String)> {
        self.release();
        self.done.notified().await;
        let failures = self.failures.load(Ordering::Acquire);
        (failures > 0).then(|| {
            let reason = lock(&self.first_failure).clone().unwrap_or_default();
            (failures, reason)
        })
    }
}

/// Maps a librdkafka error to a [`BusError`]; `what` says what was being done
/// and where (topic, brokers, group).
fn bus_error(what: &str, error: &KafkaError) -> BusError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => return BusError::Full,
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidArgument) => {
            return BusError::Other(format!("{what}: {error}"));
        }
        _ => {}
    }
    match error {
        KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::Subscription(_)
        | KafkaError::Nul(_) => BusError::Other(format!("{what}: {error}")),
        _ => BusError::Unavailable(format!("{what}: {error}")),
    }
}

/// Topic names go to librdkafka as C strings; one with a NUL byte would panic
/// inside `rdkafka`, so it is refused up front.
fn check_name(kind: &str, name: &str) -> Result<(), BusError> {
    if name.is_empty() || name.contains('\0') {
        return Err(BusError::Other(format!(
            "invalid Kafka {kind} name {name:?}: it must be non-empty and contain no NUL byte"
        )));
    }
    Ok(())
}

fn join_error(what: &str, error: tokio::task::JoinError) -> BusError {
    BusError::Other(format!("{what}: the blocking task failed: {error}"))
}

/// The producing side of the bus on Kafka (the gateway's).
pub struct KafkaProducer {
    producer: Arc<ThreadedProducer<LogContext>>,
    /// The last TLS or SASL refusal, named in this producer's errors.
    failure: BrokerFailure,
    brokers: String,
    topic: String,
    /// Read once from the topic's metadata, then fixed (see the module doc).
    partitions: OnceCell<u32>,
}

impl KafkaProducer {
    /// A producer of `topic` on `brokers` (a `bootstrap.servers` list).
    ///
    /// Reads the topic's partition count right away; if the brokers cannot be
    /// reached yet, that is logged and retried on the first `send` or `ready`,
    /// so a gateway can start before Kafka and report "not ready" meanwhile.
    /// Must be called within a Tokio runtime.
    pub async fn new(brokers: &str, topic: &str) -> Result<KafkaProducer, BusError> {
        Self::with_overrides(brokers, topic, &[]).await
    }

    /// Like [`KafkaProducer::new`], with extra librdkafka properties applied
    /// last (e.g. `message.timeout.ms`, security settings).
    pub async fn with_overrides(
        brokers: &str,
        topic: &str,
        overrides: &[(&str, &str)],
    ) -> Result<KafkaProducer, BusError> {
        check_name("topic", topic)?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "pulse-producer")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set(
                "queue.buffering.max.messages",
                QUEUE_MAX_MESSAGES.to_string(),
            )
            .set("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES.to_string())
            .set("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS)
            // Topics are made by the operator with the configured partition
            // count; a typo must not create one with the broker's defaults.
            .set("allow.auto.create.topics", "false");
        for (key, value) in overrides {
            config.set(*key, *value);
        }
        let context = LogContext {
            role: "producer",
            brokers: Arc::from(brokers),
            failure: BrokerFailure::default(),
        };
        let failure = context.failure.clone();
        let producer: ThreadedProducer<LogContext> =
            config.create_with_context(context).map_err(|e| {
                bus_error(
                    &format!("cannot create a Kafka producer for topic {topic} at {brokers}"),
                    &e,
                )
            })?;
        let this = KafkaProducer {
            producer: Arc::new(producer),
            failure,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partitions: OnceCell::new(),
        };
        match this.partition_count().await {
            Ok(partitions) => tracing::info!(
                message = "Kafka producer ready.",
                brokers,
                topic,
                partitions
            ),
            Err(error) => tracing::warn!(
                message = "Kafka producer cannot read the topic's metadata yet; will retry on first send.",
                brokers,
                topic,
                %error
            ),
        }
        Ok(this)
    }

    /// The topic's partition count, read once and then kept.
    pub async fn partition_count(&self) -> Result<u32, BusError> {
        self.partitions
            .get_or_try_init(|| self.fetch_partition_count(METADATA_TIMEOUT))
            .await
            .copied()
    }

    /// Asks the brokers how many partitions the topic has (blocking call, so on
    /// the blocking pool).
    async fn fetch_partition_count(&self, timeout: Duration) -> Result<u32, BusError> {
        let producer = Arc::clone(&self.producer);
        let topic = self.topic.clone();
        let what = self.failure.annotate(format!(
            "cannot read the metadata of topic {} from brokers {}",
            self.topic, self.brokers
        ));
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), timeout)
        })
        .await
        .map_err(|e| join_error(&what, e))?
        .map_err(|e| bus_error(&what, &e))?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.topic) else {
            return Err(BusError::Unavailable(format!(
                "{what}: the brokers did not describe it"
            )));
        };
        if let Some(error) = topic.error() {
            let code: RDKafkaErrorCode = error.into();
            return Err(BusError::Unavailable(format!("{what}: {code}")));
        }
        match u32::try_from(topic.partitions().len()) {
            Ok(0) | Err(_) => Err(BusError::Unavailable(format!(
                "{what}: the topic has no partitions"
            ))),
            Ok(n) => Ok(n),
        }
    }

    fn what(&self) -> String {
        self.failure.annotate(format!(
            "producing to topic {} at brokers {}",
            self.topic, self.brokers
        ))
    }
}

#[async_trait]
impl BusProducer for KafkaProducer {
    async fn send(&self, records: Vec<OutgoingRecord>) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        let partitions = u64::from(self.partition_count().await?);
        let in_flight = usize::try_from(self.producer.in_flight_count()).unwrap_or(0);
        if in_flight > 0 && in_flight + records.len() > QUEUE_MAX_MESSAGES {
            tracing::debug!(
                message = "Kafka producer queue is full; refusing a batch.",
                topic = %self.topic,
                in_flight,
                records = records.len()
            );
            return Err(BusError::Full);
        }
        let batch = BatchDelivery::new();
        let mut queued = 0usize;
        for record in &records {
            let key = record.key.to_be_bytes();
            // `key % partitions` < partitions <= u32::MAX, and librdkafka caps
            // partition counts far below i32::MAX.
            let partition = i32::try_from(record.key % partitions)
                .map_err(|_| BusError::Other(format!("{}: partition out of range", self.what())))?;
            let mut message = BaseRecord::with_opaque_to(&self.topic, Arc::clone(&batch))
                .partition(partition)
                .key(&key[..])
                .payload(&record.value[..]);
            let deadline = tokio::time::Instant::now() + QUEUE_FULL_WAIT;
            loop {
                batch.hold();
                match self.producer.send(message) {
                    Ok(()) => {
                        queued += 1;
                        break;
                    }
                    Err((error, returned)) => {
                        batch.release();
                        let KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) = error
                        else {
                            return Err(bus_error(&self.what(), &error));
                        };
                        // Nothing of this batch queued yet: refuse it whole.
                        if queued == 0 {
                            return Err(BusError::Full);
                        }
                        if tokio::time::Instant::now() >= deadline {
                            tracing::warn!(
                                message = "Kafka producer queue stayed full mid-batch; part of the batch may still be delivered.",
                                topic = %self.topic,
                                queued,
                                records = records.len()
                            );
                            return Err(BusError::Full);
                        }
                        message = returned;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        match batch.all_reported().await {
            None => Ok(()),
            Some((failed, reason)) => {
                tracing::warn!(
                    message = "Kafka brokers did not acknowledge records.",
                    brokers = %self.brokers,
                    topic = %self.topic,
                    failed,
                    records = queued,
                    %reason
                );
                Err(BusError::Unavailable(format!(
                    "{}: {failed} of {queued} records not acknowledged: {reason}",
                    self.what()
                )))
            }
        }
    }

    async fn ready(&self) -> Result<(), BusError> {
        let partitions = self.fetch_partition_count(READY_TIMEOUT).await?;
        match self.partitions.get() {
            None => {
                let _ = self.partitions.set(partitions);
            }
            Some(&kept) if kept != partitions => tracing::warn!(
                message = "The topic's partition count changed; keeping the one read at start so series keep their partition.",
                topic = %self.topic,
                kept,
                now = partitions
            ),
            Some(_) => {}
        }
        Ok(())
    }
}

/// State shared between the rebalance callbacks (run by librdkafka inside a
/// poll) and the consumer's methods.
#[derive(Default)]
struct Shared {
    /// Rebalance events not yet handed out by `next`.
    events: VecDeque<ConsumerEvent>,
    /// The partitions librdkafka currently has assigned to us.
    assigned: BTreeSet<u32>,
    /// Next offset after the last record handed out, per assigned partition.
    positions: BTreeMap<u32, u64>,
    /// Positions asked for by `seek`, applied by the next `next`.
    seeks: BTreeMap<u32, u64>,
    /// A revoke whose partitions are not given up yet (see the module doc).
    revoke_held: bool,
    /// `Revoked` was handed out while held: the next `next` gives them up.
    release_due: bool,
    /// The consumer is closing: revokes are not held.
    closing: bool,
    /// Records are not to be fetched (see [`BusConsumer::pause`]).
    paused: bool,
    /// The partitions librdkafka has paused; an `assign` (a rebalance, or
    /// applying seeks) starts its partitions unpaused, so it clears this.
    paused_in_kafka: BTreeSet<u32>,
}

/// The consumer's librdkafka context: logging plus rebalance bookkeeping.
struct GroupContext {
    log: LogContext,
    topic: String,
    group: String,
    shared: Arc<Mutex<Shared>>,
}

impl GroupContext {
    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<u32> {
        let mut partitions: Vec<u32> = list
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        partitions
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log_line(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.client_error(&error, reason);
    }
}

impl ConsumerContext for GroupContext {
    /// Like `rdkafka`'s default, except that a revoke of the eager protocol is
    /// held until the processor committed (see the module doc).
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let eager = !matches!(
            base_consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.pre_rebalance(base_consumer, &Rebalance::Assign(tpl));
                let assigned = if eager {
                    base_consumer.assign(tpl)
                } else {
                    base_consumer.incremental_assign(tpl)
                };
                self.post_rebalance(base_consumer, &Rebalance::Assign(tpl));
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(base_consumer, &Rebalance::Revoke(tpl));
                let mut shared = lock(&self.shared);
                if eager && !shared.closing {
                    shared.revoke_held = true;
                    return;
                }
                drop(shared);
                if eager {
                    base_consumer.unassign()
                } else {
                    base_consumer.incremental_unassign(tpl)
                }
            }
            other => {
                let error = KafkaError::Rebalance(other.into());
                self.pre_rebalance(base_consumer, &Rebalance::Error(error));
                base_consumer.unassign()
            }
        };
        if let Err(error) = outcome {
            tracing::warn!(
                message = "Kafka rejected an assignment change during a rebalance; the group will retry.",
                topic = %self.topic,
                group = %self.group,
                %error
            );
        }
    }

    /// Before librdkafka unassigns: forget the partitions (their positions and
    /// pending seeks belong to the old assignment) and queue `Revoked`. A
    /// rebalance error makes `rdkafka` drop the whole assignment, so it is
    /// reported as the revocation of everything this consumer had.
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut shared = lock(&self.shared);
        let partitions = match rebalance {
            Rebalance::Revoke(list) => self.partitions_of(list),
            Rebalance::Error(error) => {
                tracing::warn!(
                    message = "Kafka rebalance failed; the assignment is dropped and the group will retry.",
                    topic = %self.topic,
                    group = %self.group,
                    %error
                );
                shared.assigned.iter().copied().collect()
            }
            Rebalance::Assign(_) => return,
        };
        for p in &partitions {
            shared.assigned.remove(p);
            shared.positions.remove(p);
            shared.seeks.remove(p);
        }
        if !partitions.is_empty() {
            tracing::info!(
                message = "Kafka partitions revoked.",
                topic = %self.topic,
                group = %self.group,
                ?partitions
            );
            shared.events.push_back(ConsumerEvent::Revoked(partitions));
        }
    }

    /// After librdkafka assigned (starting from the committed offsets): queue
    /// `Assigned`, which the processor answers with seeks to its checkpoints.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = self.partitions_of(list);
            let mut shared = lock(&self.shared);
            shared.paused_in_kafka.clear();
            shared.assigned.extend(partitions.iter().copied());
            if !partitions.is_empty() {
                tracing::info!(
                    message = "Kafka partitions assigned.",
                    topic = %self.topic,
                    group = %self.group,
                    ?partitions
                );
                shared.events.push_back(ConsumerEvent::Assigned(partitions));
            }
        }
    }
}

/// The consuming side of the bus on Kafka: one member of a consumer group.
///
/// Dropping it closes the consumer, which leaves the group at once (so the
/// partitions move to the other members without waiting for the session
/// timeout). The close blocks the dropping thread briefly.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// A client outside the group for `end_offsets`: the member's own broker
    /// connection carries its long-polling fetches, and a broker answers one
    /// connection's requests in order, so an offsets request there waits for
    /// the fetch in flight (up to `fetch.wait.max.ms`, 500 ms). Asked once
    /// per partition that made `end_offsets` take 10 s for 32 partitions of
    /// a caught-up consumer, stalling the processor (BENCHMARKS.md).
    offsets: Arc<BaseConsumer<LogContext>>,
    shared: Arc<Mutex<Shared>>,
    /// The last TLS or SASL refusal, named in this consumer's errors.
    failure: BrokerFailure,
    brokers: String,
    topic: String,
    group: String,
}

impl KafkaConsumer {
    /// A member of consumer group `group` reading `topic` from `brokers`.
    /// Must be called within a Tokio runtime.
    pub fn new(brokers: &str, topic: &str, group: &str) -> Result<KafkaConsumer, BusError> {
        Self::with_overrides(brokers, topic, group, &[])
    }

    /// Like [`KafkaConsumer::new`], with extra librdkafka properties applied
    /// last (e.g. `session.timeout.ms`, security settings). The assignment
    /// strategy must stay an eager one (`range`, `roundrobin`): seeks are
    /// applied with `assign`, which the cooperative protocol forbids.
    pub fn with_overrides(
        brokers: &str,
        topic: &str,
        group: &str,
        overrides: &[(&str, &str)],
    ) -> Result<KafkaConsumer, BusError> {
        check_name("topic", topic)?;
        check_name("group", group)?;
        let what =
            format!("cannot create a Kafka consumer of topic {topic} (group {group}) at {brokers}");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("client.id", "pulse-consumer")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "range,roundrobin")
            // Every partition's fetch queue is forwarded to the one consumer
            // queue, so `queued.min.messages` (100,000) caps the records
            // fetched ahead across all partitions, and each time it is reached
            // librdkafka postpones the next fetch by this long (default 1 s).
            // A processor drains 100,000 records in well under a second, so
            // the default made reading bursty: `pulse bench --only processor`
            // read in bursts with ~0.9 s stalls (see BENCHMARKS.md).
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
        for (key, value) in overrides {
            config.set(*key, *value);
        }
        let shared = Arc::new(Mutex::new(Shared::default()));
        let failure = BrokerFailure::default();
        let context = GroupContext {
            log: LogContext {
                role: "consumer",
                brokers: Arc::from(brokers),
                failure: failure.clone(),
            },
            topic: topic.to_owned(),
            group: group.to_owned(),
            shared: Arc::clone(&shared),
        };
        let mut offsets_config = config.clone();
        offsets_config
            .remove("group.id")
            .set("client.id", "pulse-consumer-offsets");
        let offsets: BaseConsumer<LogContext> = offsets_config
            .create_with_context(LogContext {
                role: "consumer",
                brokers: Arc::from(brokers),
                failure: failure.clone(),
            })
            .map_err(|e| bus_error(&what, &e))?;
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(context)
            .map_err(|e| bus_error(&what, &e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| bus_error(&what, &e))?;
        tracing::info!(
            message = "Kafka consumer joining its group.",
            brokers,
            topic,
            group
        );
        Ok(KafkaConsumer {
            consumer: Arc::new(consumer),
            offsets: Arc::new(offsets),
            shared,
            failure,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            group: group.to_owned(),
        })
    }

    fn what(&self, doing: &str) -> String {
        self.failure.annotate(format!(
            "{doing} topic {} (group {}) at brokers {}",
            self.topic, self.group, self.brokers
        ))
    }

    /// Applies pending seeks with one `assign` of the whole assignment at
    /// explicit offsets (see the module doc for why not `rd_kafka_seek`).
    fn apply_seeks(&self) -> Result<(), BusError> {
        let (list, applied) = {
            let shared = lock(&self.shared);
            if shared.seeks.is_empty() {
                return Ok(());
            }
            let mut list = TopicPartitionList::new();
            for &partition in &shared.assigned {
                let offset = match shared
                    .seeks
                    .get(&partition)
                    .or_else(|| shared.positions.get(&partition))
                {
                    Some(&offset) => Offset::Offset(i64::try_from(offset).map_err(|_| {
                        BusError::Other(format!("offset {offset} is beyond Kafka's range"))
                    })?),
                    None => Offset::Stored,
                };
                let p = i32::try_from(partition).map_err(|_| {
                    BusError::Other(format!("partition {partition} is beyond Kafka's range"))
                })?;
                list.add_partition_offset(&self.topic, p, offset)
                    .map_err(|e| bus_error(&self.what("seeking in"), &e))?;
            }
            (list, shared.seeks.clone())
        };
        self.consumer
            .assign(&list)
            .map_err(|e| bus_error(&self.what("seeking in"), &e))?;
        let mut shared = lock(&self.shared);
        shared.paused_in_kafka.clear();
        for (partition, offset) in applied {
            if shared.seeks.get(&partition) == Some(&offset) {
                shared.seeks.remove(&partition);
            }
            if shared.assigned.contains(&partition) {
                shared.positions.insert(partition, offset);
            }
        }
        tracing::debug!(
            message = "Kafka consumer positions applied.",
            topic = %self.topic,
            group = %self.group,
            list = ?list
        );
        Ok(())
    }

    /// Makes librdkafka's paused partitions match what `pause` asked for:
    /// every assigned partition while paused, none otherwise. A paused
    /// partition's fetched records are discarded, and a resumed one fetches
    /// on from the last record handed out.
    fn apply_pause(&self) -> Result<(), BusError> {
        let (pause, resume) = {
            let shared = lock(&self.shared);
            let target: BTreeSet<u32> = if shared.paused {
                shared.assigned.clone()
            } else {
                BTreeSet::new()
            };
            let pause: Vec<u32> = target
                .difference(&shared.paused_in_kafka)
                .copied()
                .collect();
            let resume: Vec<u32> = shared
                .paused_in_kafka
                .difference(&target)
                .copied()
                .collect();
            (pause, resume)
        };
        let what = self.what("pausing or resuming");
        let list = |partitions: &[u32]| -> Result<TopicPartitionList, BusError> {
            let mut list = TopicPartitionList::new();
            for &partition in partitions {
                let p = i32::try_from(partition).map_err(|_| {
                    BusError::Other(format!("partition {partition} is beyond Kafka's range"))
                })?;
                list.add_partition(&self.topic, p);
            }
            Ok(list)
        };
        if !pause.is_empty() {
            self.consumer
                .pause(&list(&pause)?)
                .map_err(|e| bus_error(&what, &e))?;
        }
        if !resume.is_empty() {
            self.consumer
                .resume(&list(&resume)?)
                .map_err(|e| bus_error(&what, &e))?;
        }
        let mut shared = lock(&self.shared);
        shared.paused_in_kafka.extend(pause);
        for p in resume {
            shared.paused_in_kafka.remove(&p);
        }
        Ok(())
    }

    /// The next queued rebalance event; handing out a held revoke makes the
    /// following `next` give the partitions up.
    fn pop_event(&self) -> Option<ConsumerEvent> {
        let mut shared = lock(&self.shared);
        let event = shared.events.pop_front()?;
        if matches!(event, ConsumerEvent::Revoked(_)) && shared.revoke_held {
            shared.release_due = true;
        }
        Some(event)
    }

    /// Gives up held partitions once the processor had their `Revoked` (and
    /// so committed them): librdkafka then completes the rebalance.
    fn release_revoked(&self) -> Result<(), BusError> {
        {
            let mut shared = lock(&self.shared);
            if !shared.release_due {
                return Ok(());
            }
            shared.release_due = false;
            shared.revoke_held = false;
        }
        self.consumer
            .unassign()
            .map_err(|e| bus_error(&self.what("giving up revoked partitions of"), &e))
    }

    /// Turns a fetched message into a record and advances the partition's
    /// position. `None` for a message with impossible coordinates.
    fn take(&self, message: &BorrowedMessage<'_>) -> Option<BusRecord> {
        let (Ok(partition), Ok(offset)) = (
            u32::try_from(message.partition()),
            u64::try_from(message.offset()),
        ) else {
            tracing::warn!(
                message = "Skipping a Kafka message with an invalid partition or offset.",
                topic = %self.topic,
                partition = message.partition(),
                offset = message.offset()
            );
            return None;
        };
        lock(&self.shared).positions.insert(partition, offset + 1);
        Some(BusRecord {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
            value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        })
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // The close itself (leave the group, after a final revoke callback)
        // runs in `rdkafka`'s drop of the last handle to the consumer; it must
        // not wait for a held revoke that no `next` will release.
        let held = {
            let mut shared = lock(&self.shared);
            shared.closing = true;
            std::mem::take(&mut shared.revoke_held)
        };
        if held && let Err(error) = self.consumer.unassign() {
            tracing::warn!(
                message = "Cannot give up revoked Kafka partitions while closing.",
                topic = %self.topic,
                %error
            );
        }
        tracing::info!(
            message = "Kafka consumer leaving its group.",
            topic = %self.topic,
            group = %self.group
        );
    }
}

#[async_trait]
impl BusConsumer for KafkaConsumer {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<ConsumerEvent, BusError> {
        self.release_revoked()?;
        if let Some(event) = self.pop_event() {
            return Ok(event);
        }
        self.apply_seeks()?;
        self.apply_pause()?;
        let mut stream = self.consumer.stream();
        let shared = Arc::clone(&self.shared);
        // Wait for the first message, but stop as soon as a rebalance callback
        // queued an event: records after it must not overtake it.
        let first = tokio::time::timeout(
            wait,
            poll_fn(|cx| match stream.poll_next_unpin(cx) {
                Poll::Ready(item) => Poll::Ready(item),
                Poll::Pending if !lock(&shared).events.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }),
        )
        .await;
        let mut records = Vec::new();
        match first {
            Err(_) | Ok(None) => {}
            Ok(Some(Err(error))) => return Err(bus_error(&self.what("reading"), &error)),
            Ok(Some(Ok(message))) => records.extend(self.take(&message)),
        }
        // Then take what is already fetched, without waiting.
        while !records.is_empty() && records.len() < max && lock(&shared).events.is_empty() {
            match stream.next().now_or_never() {
                Some(Some(Ok(message))) => records.extend(self.take(&message)),
                Some(Some(Err(error))) => {
                    tracing::warn!(
                        message = "Kafka consumer error after a batch; returning the batch first.",
                        topic = %self.topic,
                        group = %self.group,
                        %error
                    );
                    break;
                }
                Some(None) | None => break,
            }
        }
        if !records.is_empty() {
            return Ok(ConsumerEvent::Records(records));
        }
        Ok(self.pop_event().unwrap_or(ConsumerEvent::Idle))
    }

    /// Records the position; the next `next` applies it. A partition not
    /// assigned (any more) is ignored: its `Revoked` event is on its way, and
    /// failing would make the processor retry a seek that can never succeed.
    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        let mut shared = lock(&self.shared);
        if shared.assigned.contains(&partition) {
            shared.seeks.insert(partition, offset);
        } else {
            tracing::debug!(
                message = "Ignoring a seek on a partition not assigned to this consumer.",
                topic = %self.topic,
                partition,
                offset
            );
        }
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), BusError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let what = self.what("committing offsets of");
        let mut list = TopicPartitionList::new();
        for &(partition, next) in offsets {
            let (Ok(p), Ok(o)) = (i32::try_from(partition), i64::try_from(next)) else {
                return Err(BusError::Other(format!(
                    "{what}: partition {partition} or offset {next} is beyond Kafka's range"
                )));
            };
            list.add_partition_offset(&self.topic, p, Offset::Offset(o))
                .map_err(|e| bus_error(&what, &e))?;
        }
        let consumer = Arc::clone(&self.consumer);
        let task = tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync));
        match tokio::time::timeout(COMMIT_TIMEOUT, task).await {
            Err(_elapsed) => Err(BusError::Unavailable(format!(
                "{what}: no answer within {COMMIT_TIMEOUT:?}"
            ))),
            Ok(joined) => joined
                .map_err(|e| join_error(&what, e))?
                .map_err(|e| bus_error(&what, &e)),
        }
    }

    async fn pause(&mut self, paused: bool) -> Result<(), BusError> {
        lock(&self.shared).paused = paused;
        Ok(())
    }

    async fn end_offsets(&self) -> Result<Vec<(u32, u64)>, BusError> {
        let assigned: Vec<u32> = lock(&self.shared).assigned.iter().copied().collect();
        if assigned.is_empty() {
            return Ok(Vec::new());
        }
        let what = self.what("reading the end offsets of");
        let offsets = Arc::clone(&self.offsets);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            // One ListOffsets request per leader for every partition: the
            // "offset" of each entry is the timestamp asked for, and -1
            // (`Offset::End`) asks for the end of the log.
            let mut list = TopicPartitionList::new();
            for &partition in &assigned {
                let p = i32::try_from(partition).map_err(|_| {
                    BusError::Other(format!("partition {partition} is beyond Kafka's range"))
                })?;
                list.add_partition_offset(&topic, p, Offset::End)
                    .map_err(|e| bus_error(&what, &e))?;
            }
            let found = offsets
                .offsets_for_times(list, WATERMARK_TIMEOUT)
                .map_err(|e| bus_error(&what, &e))?;
            let mut ends = Vec::with_capacity(assigned.len());
            for element in found.elements_for_topic(&topic) {
                let partition = u32::try_from(element.partition()).unwrap_or(0);
                element
                    .error()
                    .map_err(|e| bus_error(&format!("{what} (partition {partition})"), &e))?;
                let Offset::Offset(end) = element.offset() else {
                    return Err(BusError::Unavailable(format!(
                        "{what} (partition {partition}): no end offset but {:?}",
                        element.offset()
                    )));
                };
                ends.push((partition, u64::try_from(end).unwrap_or(0)));
            }
            ends.sort_unstable();
            Ok(ends)
        })
        .await
        .map_err(|e| join_error("reading end offsets", e))?
    }
}
