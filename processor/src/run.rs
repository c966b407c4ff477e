//! The processor's I/O loop: bus in, store and cache out, with retries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use prometheus_client::registry::Registry;
use pulse_core::backoff::Backoff;
use pulse_core::codec::record::{decode_key, decode_record};
use pulse_core::config::{Config, ProcessorConfig, StorageConfig};
use pulse_core::now_ms;
use pulse_engine::bus::{BusConsumer, BusRecord, ConsumerEvent};
use pulse_engine::cache::Cache;
use pulse_engine::store::Store;
use pulse_server::checks::StoreReady;
use pulse_server::{CancellationToken, ReadinessCheck, ops_router};
use tracing::{debug, error, info, warn};

use crate::checkpoint::{Checkpoints, RETRY_CAP, RETRY_FIRST, Settled};
use crate::deliver::Deliverer;
use crate::judge::Judge;
use crate::metrics::{
    AnomalyMetrics, PartitionLabel, ProcessorMetrics, ReasonLabel, StateLabel, WindowLabel,
};
use crate::partial::{PARTIAL_EVERY, PartialPublisher};
use crate::status::{Status, StatusCheck, lock};
use crate::window::{Aggregator, Checkpointed, Forgotten, MarkPolicy, RestoreError};

/// How long shutdown keeps trying to commit the final checkpoint.
const SHUTDOWN_COMMIT_BUDGET: Duration = Duration::from_secs(10);
/// Most closed windows held for a cache that refused them.
const CACHE_BACKLOG: usize = 20_000;
/// How long a bus read waits at most while a checkpoint is being written.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(10);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Why the processor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

/// The stream processor of one pipeline.
pub struct Processor {
    config: ProcessorConfig,
    storage: StorageConfig,
    aggregator: Aggregator,
    consumer: Box<dyn BusConsumer>,
    store: Arc<dyn Store>,
    cache: Arc<dyn Cache>,
    metrics: ProcessorMetrics,
    status: Arc<Mutex<Status>>,
    registry: Arc<Mutex<Registry>>,
    checkpoints: Checkpoints,
    /// Reading is paused while a checkpoint waits for the store.
    paused: bool,
    /// Closed windows the cache has not taken yet.
    cache_backlog: Vec<pulse_core::WindowResult>,
    /// The anomaly rules, judging each checkpoint's results.
    judge: Judge,
    anomaly_metrics: AnomalyMetrics,
    /// Sends the anomaly outbox; started by `run`.
    deliverer: Option<Deliverer>,
    /// Lateness and idle timeout, which bound how long a partial is kept.
    partial_keep: (Duration, Duration),
}

/// The OpenAPI 3.1 document of the processor's health port (`processor.listen`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    pulse_server::openapi::ops_document(
        "Pulse processor",
        "Probes and metrics of the stream processor: `/readyz` reports the store, the bus and the \
         partitions it owns with their lag.",
    )
}

impl Processor {
    pub fn new(
        config: &Config,
        consumer: Box<dyn BusConsumer>,
        store: Arc<dyn Store>,
        cache: Arc<dyn Cache>,
        registry: Arc<Mutex<Registry>>,
    ) -> Result<Processor, ProcessorError> {
        let windows = config
            .window_specs()
            .map_err(|e| ProcessorError::Config(e.to_string()))?;
        let (metrics, anomaly_metrics) = {
            let mut registry = pulse_core::sync::lock(&registry);
            (
                ProcessorMetrics::register(&mut registry),
                AnomalyMetrics::register(&mut registry),
            )
        };
        let first_window = windows.first().map(|w| w.label.clone()).unwrap_or_default();
        let rules = pulse_core::anomaly::Rule::compile(&config.anomaly, &first_window)
            .map_err(ProcessorError::Config)?;
        let deliverer = Deliverer::new(
            &config.alerting,
            Arc::clone(&store),
            anomaly_metrics.clone(),
        )
        .map_err(ProcessorError::Config)?;
        let status: Arc<Mutex<Status>> = Arc::default();
        Ok(Processor {
            checkpoints: Checkpoints::new(Arc::clone(&store), Arc::clone(&status), metrics.clone()),
            paused: false,
            aggregator: Aggregator::new(
                windows,
                config.processor.allowed_lateness,
                config.processor.idle_timeout,
            )
            .map_err(|e| ProcessorError::Config(format!("processor.windows: {e}")))?
            .bound_event_time(config.processor.max_clock_skew, config.late_horizon())
            .bound_marks(MarkPolicy {
                horizon_ms: i64::try_from(config.batch_mark_horizon().as_millis())
                    .unwrap_or(i64::MAX),
                max_spans: config.processor.max_batch_marks,
            }),
            config: config.processor.clone(),
            storage: config.storage.clone(),
            consumer,
            store,
            cache,
            metrics,
            status,
            registry,
            cache_backlog: Vec::new(),
            judge: Judge::new(rules),
            anomaly_metrics,
            deliverer: Some(deliverer),
            partial_keep: (
                config.processor.allowed_lateness,
                config.processor.idle_timeout,
            ),
        })
    }

    /// Sends anomalies also to the pipeline's `.anomalies` topic (Kafka).
    pub fn with_anomaly_topic(mut self, topic: Arc<dyn pulse_engine::bus::BusProducer>) -> Self {
        self.deliverer = self.deliverer.map(|d| d.with_topic(topic));
        self
    }

    /// `/healthz`, `/readyz` (store reachable, commits succeeding) and `/metrics`.
    pub fn router(&self) -> Router {
        let checks: Vec<Arc<dyn ReadinessCheck>> = vec![
            Arc::new(StoreReady(Arc::clone(&self.store))),
            Arc::new(StatusCheck(Arc::clone(&self.status))),
        ];
        ops_router(Arc::clone(&self.registry), checks)
            .merge(pulse_server::openapi::router(&openapi()))
    }

    /// Runs until `shutdown`, then commits what it holds so a restart resumes
    /// without loss or double counting.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        let retention = tokio::spawn(retention_loop(
            Arc::clone(&self.store),
            self.storage.clone(),
            shutdown.clone(),
        ));
        let delivery = self.deliverer.take().map(|deliverer| {
            let status = Arc::clone(&self.status);
            let assigned = move || lock(&status).owned();
            tokio::spawn(deliverer.run(assigned, shutdown.clone()))
        });
        let interval = self.config.checkpoint_interval;
        let mut next_checkpoint = Instant::now() + interval;
        let partials = PartialPublisher::start(
            Arc::clone(&self.cache),
            self.partial_keep.0,
            self.partial_keep.1,
            self.metrics.clone(),
        );
        let mut next_partial = Instant::now() + PARTIAL_EVERY;
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
        loop {
            // While a checkpoint is being written, look for its end often, so
            // its windows reach the cache soon after it lands. (The bus read is
            // never raced against the write: a `next` dropped midway could
            // lose the records it had taken.)
            let longest = if self.checkpoints.busy() {
                IN_FLIGHT_POLL
            } else {
                Duration::from_millis(250)
            };
            let wait = next_checkpoint
                .min(next_partial)
                .saturating_duration_since(Instant::now())
                .min(longest);
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                event = self.consumer.next(self.config.max_poll_records, wait) => event,
            };
            match event {
                Ok(ConsumerEvent::Assigned(partitions)) => {
                    if !self.assign(&partitions, &shutdown).await? {
                        break;
                    }
                }
                Ok(ConsumerEvent::Revoked(partitions)) => {
                    info!(
                        message = "Partitions revoked; committing their progress.",
                        ?partitions
                    );
                    self.aggregator.close_ready();
                    if !self.commit_now(Some(&partitions), &shutdown).await? {
                        break;
                    }
                    self.give_up(&partitions);
                }
                Ok(ConsumerEvent::Records(records)) => self.ingest(records),
                Ok(ConsumerEvent::Idle) => {}
                Err(error) => {
                    let pause = backoff.fail();
                    warn!(message = "Cannot read from the bus; retrying.", %error, retry_in_ms = pause.as_millis() as u64);
                    if sleep_or_shutdown(pause, &shutdown).await {
                        break;
                    }
                    continue;
                }
            }
            backoff.reset();
            if Instant::now() >= next_partial {
                partials.offer(&mut self.aggregator);
                next_partial = Instant::now() + PARTIAL_EVERY;
            }
            if self.checkpoints.finished() && !self.settle(&shutdown).await? {
                break;
            }
            if Instant::now() >= next_checkpoint {
                if self.checkpoints.busy() {
                    // The store has not taken the previous checkpoint yet
                    // (slow, or down): read nothing more until it has, which
                    // is the backpressure, but keep polling, so the bus
                    // group keeps this processor and its partitions.
                    self.pause(true).await;
                    continue;
                }
                self.pause(false).await;
                let caught_up = self.report_progress().await;
                self.aggregator
                    .advance(now_ms(), Instant::now(), &caught_up);
                if !self.settle(&shutdown).await? {
                    break;
                }
                self.launch(None, &shutdown);
                next_checkpoint = Instant::now() + interval;
            }
        }
        self.aggregator.close_ready();
        let deadline = CancellationToken::new();
        let timer = {
            let deadline = deadline.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SHUTDOWN_COMMIT_BUDGET).await;
                deadline.cancel();
            })
        };
        if self.commit_now(None, &deadline).await.unwrap_or(false) {
            info!(message = "Processor stopped after committing its progress.");
        } else {
            error!(
                message = "Processor stopped without committing its latest progress; it will be replayed from the bus on restart, nothing is lost."
            );
        }
        timer.abort();
        retention.abort();
        if let Some(delivery) = delivery {
            delivery.abort();
        }
        Ok(())
    }

    /// Loads the checkpoints of new partitions (retrying while the store is
    /// down) and seeks the consumer to them. Returns false on shutdown.
    async fn assign(
        &mut self,
        partitions: &[u32],
        shutdown: &CancellationToken,
    ) -> Result<bool, ProcessorError> {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
        let (checkpoint, detectors) = loop {
            let loaded = async {
                Ok::<_, pulse_engine::store::StoreError>((
                    self.store.load_checkpoint(partitions).await?,
                    self.store.load_detectors(partitions).await?,
                ))
            };
            match loaded.await {
                Ok(c) => break c,
                Err(error) => {
                    let pause = backoff.fail();
                    warn!(message = "Cannot load checkpoints from the store; retrying.", %error, ?partitions, retry_in_ms = pause.as_millis() as u64);
                    if sleep_or_shutdown(pause, shutdown).await {
                        return Ok(false);
                    }
                }
            }
        };
        let seeks = self
            .aggregator
            .assign(partitions, &checkpoint, Instant::now())?;
        self.checkpoints.claim(&checkpoint.claims);
        let unreadable = self.judge.restore(&detectors);
        if unreadable > 0 {
            warn!(
                message = "Some stored anomaly detector states do not decode; those series start their history afresh.",
                ?partitions,
                unreadable
            );
        }
        for &(partition, offset) in &seeks {
            let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
            while let Err(error) = self.consumer.seek(partition, offset).await {
                let pause = backoff.fail();
                warn!(message = "Cannot seek the bus consumer; retrying.", %error, partition, offset, retry_in_ms = pause.as_millis() as u64);
                if sleep_or_shutdown(pause, shutdown).await {
                    return Ok(false);
                }
            }
        }
        info!(
            message = "Partitions assigned; resuming from the stored checkpoints.",
            ?seeks,
            open_windows = checkpoint.open.len()
        );
        self.set_assigned();
        Ok(true)
    }

    fn set_assigned(&self) {
        lock(&self.status).set_owned(self.aggregator.assigned());
    }

    /// Drops partitions this processor no longer owns: their windows, their
    /// claims, and their gauges (a stale lag would hide the new owner's).
    fn give_up(&mut self, partitions: &[u32]) {
        self.aggregator.revoke(partitions);
        self.judge.revoke(partitions);
        self.checkpoints.release(partitions);
        self.metrics.forget_partitions(partitions);
        self.set_assigned();
    }

    /// After the store fenced a checkpoint: another processor owns `fenced`
    /// now and resumed them from the store. The refused checkpoint also held
    /// progress of the other partitions, so every partition's windows are
    /// dropped and the ones still owned are loaded again from the store
    /// (their records are read again from there). The fenced ones wait for
    /// the bus to assign them again, if it ever does. Returns false on
    /// shutdown.
    async fn step_back(
        &mut self,
        fenced: &[u32],
        shutdown: &CancellationToken,
    ) -> Result<bool, ProcessorError> {
        let held: Vec<u32> = self.aggregator.assigned().collect();
        let keep: Vec<u32> = held
            .iter()
            .copied()
            .filter(|p| !fenced.contains(p))
            .collect();
        warn!(
            message = "Stepping back from partitions another processor took; reloading the others from the store.",
            ?fenced,
            reloading = ?keep
        );
        self.give_up(&held);
        if keep.is_empty() {
            return Ok(true);
        }
        self.assign(&keep, shutdown).await
    }

    /// Pauses or resumes reading from the bus (which keeps polling).
    async fn pause(&mut self, paused: bool) {
        if self.paused == paused {
            return;
        }
        match self.consumer.pause(paused).await {
            Ok(()) => {
                self.paused = paused;
                if paused {
                    info!(
                        message = "Holding back reading until the store takes the previous checkpoint; still polling, so the bus group keeps this processor."
                    );
                } else {
                    info!(message = "Reading again: the store took the held checkpoint.");
                }
            }
            Err(error) => {
                warn!(message = "Cannot pause or resume the bus consumer; will try again.", %error, paused);
            }
        }
    }

    fn ingest(&mut self, records: Vec<BusRecord>) {
        let now = Instant::now();
        self.aggregator.set_wall_clock(now_ms());
        let mut expired = 0;
        let mut duplicates = 0;
        for record in records {
            match decode_record(&record.value) {
                Ok((point, Some(batch)))
                    if !self.aggregator.admit(
                        record.partition,
                        record.offset,
                        &batch,
                        point.timestamp_ms,
                    ) =>
                {
                    duplicates += 1;
                }
                Ok((point, _)) => {
                    let outcome = self.aggregator.ingest(
                        record.partition,
                        record.offset,
                        decode_key(&record.key).ok(),
                        point,
                        now,
                    );
                    self.metrics.points.inc();
                    expired += outcome.expired as u64;
                    if outcome.collision {
                        self.metrics.series_collisions.inc();
                        warn!(
                            message = "Series id collision: a point's id belongs to another series; it was not merged.",
                            partition = record.partition,
                            offset = record.offset
                        );
                    }
                }
                Err(error) => {
                    self.metrics.undecodable_records.inc();
                    warn!(message = "A bus record does not decode; it goes to the store's dead letters and processing goes on.", %error, partition = record.partition, offset = record.offset);
                    self.aggregator.dead_letter(
                        record.partition,
                        record.offset,
                        error.to_string(),
                        record.value,
                    );
                }
            }
        }
        if duplicates > 0 {
            self.metrics.duplicate_points.inc_by(duplicates);
            info!(
                message = "Points of a batch sent again (same Idempotency-Key) were dropped: they were taken before.",
                points = duplicates
            );
        }
        if expired > 0 {
            self.metrics.late_points_expired.inc_by(expired);
            warn!(
                message = "Late points arrived after processor.late_horizon: counted late and stored raw, but added to no window.",
                windows = expired
            );
        }
        self.aggregator.close_ready();
    }

    /// Counts the batch keys a checkpoint forgot; one forgotten early is a
    /// batch whose resend would be counted again, so it is logged.
    fn count_forgotten(&self, forgotten: Forgotten) {
        for (reason, n) in [
            ("expired", forgotten.expired),
            ("evicted", forgotten.evicted),
        ] {
            if n > 0 {
                self.metrics
                    .batch_marks_forgotten
                    .get_or_create(&ReasonLabel { reason })
                    .inc_by(n as u64);
            }
        }
        if forgotten.evicted > 0 {
            warn!(
                message = "Batch keys were forgotten before their horizon to stay within processor.max_batch_marks; a resend of those batches would be counted again.",
                keys = forgotten.evicted
            );
        }
        self.metrics
            .batch_keys
            .set(self.aggregator.batch_keys() as i64);
    }

    /// Takes a checkpoint of `partitions` (all when `None`) and starts
    /// writing it (see [`Checkpoints::launch`]).
    fn launch(&mut self, partitions: Option<&[u32]>, stop: &CancellationToken) {
        let mut checkpointed = self.aggregator.checkpoint(partitions);
        self.count_forgotten(checkpointed.forgotten);
        let judged = self.judge.judge(&mut checkpointed);
        self.anomaly_metrics.evaluations.inc_by(judged.evaluations);
        for (state, n) in [("firing", judged.fired), ("resolved", judged.resolved)] {
            if n > 0 {
                self.anomaly_metrics
                    .anomalies
                    .get_or_create(&StateLabel {
                        state: state.into(),
                    })
                    .inc_by(n);
            }
        }
        self.checkpoints
            .launch(checkpointed, partitions.is_none(), stop);
    }

    /// Waits for the checkpoints on their way (see [`Checkpoints::settle`])
    /// and follows up on what landed. Returns whether nothing is left
    /// unwritten; after a fence, whether the step back went through.
    async fn settle(&mut self, stop: &CancellationToken) -> Result<bool, ProcessorError> {
        let (landed, settled) = self.checkpoints.settle(stop).await;
        for checkpointed in landed {
            self.landed(checkpointed).await;
        }
        match settled {
            Settled::Clear => {
                self.update_cache().await;
                Ok(true)
            }
            Settled::Held | Settled::Failed => Ok(false),
            Settled::Fenced(partitions) => self.step_back(&partitions, stop).await,
        }
    }

    /// Writes a checkpoint now and waits for it: the previous one first.
    async fn commit_now(
        &mut self,
        partitions: Option<&[u32]>,
        stop: &CancellationToken,
    ) -> Result<bool, ProcessorError> {
        if !self.settle(stop).await? {
            return Ok(false);
        }
        self.launch(partitions, stop);
        self.settle(stop).await
    }

    /// What follows a checkpoint in the store: metrics, the bus's offsets, the cache.
    async fn landed(&mut self, checkpointed: Checkpointed) {
        let commit = checkpointed.commit;
        if checkpointed.closed > 0 {
            self.metrics
                .last_window_closed
                .set(pulse_core::now_ms() as f64 / 1000.0);
        }
        for result in &commit.results[..checkpointed.closed] {
            self.metrics
                .windows_closed
                .get_or_create(&WindowLabel {
                    window: result.window.clone(),
                })
                .inc();
        }
        for late in &commit.late {
            self.metrics
                .late_points
                .get_or_create(&WindowLabel {
                    window: late.window.clone(),
                })
                .inc_by(late.count);
        }
        self.metrics
            .open_windows
            .set(self.aggregator.open_windows() as i64);
        if let Err(error) = self.consumer.commit(&checkpointed.offsets).await {
            warn!(message = "Cannot report offsets to the bus (the store holds the authoritative ones).", %error);
        }
        self.cache_backlog.extend(crate::window::as_stored(
            commit.results,
            checkpointed.merged,
        ));
    }

    /// Puts the windows that landed (gathered in `cache_backlog` by
    /// [`Self::landed`]) into the cache and announces them. What the
    /// cache refuses (Redis down, or reconnecting: its first command after an
    /// outage fails) is kept and sent again with the next checkpoint's windows,
    /// the newest [`CACHE_BACKLOG`] of them, so the latest windows reach the
    /// cache once it is back even if no further window closes.
    async fn update_cache(&mut self) {
        if self.cache_backlog.is_empty() {
            return;
        }
        let excess = self.cache_backlog.len().saturating_sub(CACHE_BACKLOG);
        self.cache_backlog.drain(..excess);
        let cached = async {
            self.cache.put_latest(&self.cache_backlog).await?;
            self.cache.publish(&self.cache_backlog).await
        };
        match cached.await {
            Ok(()) => self.cache_backlog.clear(),
            Err(error) => {
                self.metrics.cache_failures.inc();
                warn!(message = "Cannot update the cache; the dashboard answers from the store meanwhile, and the windows are sent again with the next checkpoint.", %error, windows = self.cache_backlog.len());
            }
        }
    }

    /// Publishes lag and watermarks, and returns the partitions read to the
    /// end of the bus: only those may count as idle. None of them (an empty
    /// list) when the bus cannot say.
    async fn report_progress(&mut self) -> Vec<u32> {
        let ends = match self.consumer.end_offsets().await {
            Ok(ends) => ends,
            Err(error) => {
                debug!(message = "Cannot read the bus's end offsets; no partition counts as idle meanwhile.", %error);
                return Vec::new();
            }
        };
        let mut caught_up = Vec::new();
        let mut status = lock(&self.status);
        for (partition, next, watermark) in self.aggregator.progress() {
            let label = PartitionLabel::of(partition);
            if let Some(wm) = watermark {
                self.metrics
                    .watermark_seconds
                    .get_or_create(&label)
                    .set(wm / 1000);
            }
            let Some(&(_, end)) = ends.iter().find(|(p, _)| *p == partition) else {
                continue;
            };
            let lag = end.saturating_sub(next);
            if lag == 0 {
                caught_up.push(partition);
            }
            status.set_lag(partition, lag);
            self.metrics.bus_lag.get_or_create(&label).set(lag as i64);
        }
        caught_up
    }
}

/// Sleeps `d`; returns true if `stop` fired first.
pub(crate) async fn sleep_or_shutdown(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// Deletes raw points, results, resolved anomalies and delivered outbox rows
/// past their retention (`Store::enforce_retention`), now and periodically.
async fn retention_loop(
    store: Arc<dyn Store>,
    storage: StorageConfig,
    shutdown: CancellationToken,
) {
    loop {
        let now = now_ms();
        let raw_before = now - storage.raw_retention.as_millis() as i64;
        let results_before = now - storage.result_retention.as_millis() as i64;
        match store.enforce_retention(raw_before, results_before).await {
            Ok(report)
                if report.raw_points + report.results + report.anomalies + report.deliveries
                    > 0 =>
            {
                info!(
                    message = "Retention removed old data.",
                    raw_points = report.raw_points,
                    results = report.results,
                    anomalies = report.anomalies,
                    deliveries = report.deliveries
                );
            }
            Ok(_) => {}
            Err(error) => warn!(message = "Retention pass failed; will retry.", %error),
        }
        if sleep_or_shutdown(RETENTION_EVERY, &shutdown).await {
            return;
        }
    }
}
