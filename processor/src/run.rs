//! The processor's I/O loop: bus in, store and cache out, with retries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use prometheus_client::registry::Registry;
use pulse_core::codec::record::{decode_key, decode_point};
use pulse_core::config::{Config, ProcessorConfig, StorageConfig};
use pulse_core::now_ms;
use pulse_engine::bus::{BusConsumer, BusRecord, ConsumerEvent};
use pulse_engine::cache::Cache;
use pulse_engine::store::Store;
use pulse_server::checks::StoreReady;
use pulse_server::{CancellationToken, ReadinessCheck, ops_router};
use tracing::{debug, error, info, warn};

use crate::metrics::{PartitionLabel, ProcessorMetrics, WindowLabel};
use crate::window::{Aggregator, Checkpointed, RestoreError};

/// Longest pause between retries of a failing store or bus.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
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

/// What `/readyz` reports about the processor itself.
#[derive(Default)]
struct Status {
    assigned: Vec<u32>,
    lag: u64,
    failing: Option<(Instant, String)>,
}

struct StatusCheck(Arc<Mutex<Status>>);

#[async_trait]
impl ReadinessCheck for StatusCheck {
    fn name(&self) -> &str {
        "processor"
    }

    async fn check(&self) -> Result<String, String> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &s.failing {
            Some((since, reason)) => Err(format!(
                "degraded: store commits failing for {}s ({reason}); progress is held and retried, nothing is lost",
                since.elapsed().as_secs()
            )),
            None => Ok(format!(
                "partitions {:?}, lag {} records",
                s.assigned, s.lag
            )),
        }
    }
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
    /// Offsets of the last checkpoint launched, to skip empty ones.
    last_offsets: Vec<(u32, u64)>,
    /// The checkpoint being written while ingestion goes on.
    in_flight: Option<tokio::task::JoinHandle<Landing>>,
    /// A checkpoint whose write was stopped; written before any later one.
    unlanded: Option<Checkpointed>,
    /// Closed windows the cache has not taken yet.
    cache_backlog: Vec<pulse_core::WindowResult>,
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
        let metrics =
            ProcessorMetrics::register(&mut registry.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(Processor {
            aggregator: Aggregator::new(
                windows,
                config.processor.allowed_lateness,
                config.processor.idle_timeout,
            )
            .map_err(|e| ProcessorError::Config(format!("processor.windows: {e}")))?,
            config: config.processor.clone(),
            storage: config.storage.clone(),
            consumer,
            store,
            cache,
            metrics,
            status: Arc::default(),
            registry,
            last_offsets: Vec::new(),
            in_flight: None,
            unlanded: None,
            cache_backlog: Vec::new(),
        })
    }

    /// `/healthz`, `/readyz` (store reachable, commits succeeding) and `/metrics`.
    pub fn router(&self) -> Router {
        let checks: Vec<Arc<dyn ReadinessCheck>> = vec![
            Arc::new(StoreReady(Arc::clone(&self.store))),
            Arc::new(StatusCheck(Arc::clone(&self.status))),
        ];
        ops_router(Arc::clone(&self.registry), checks)
    }

    /// Runs until `shutdown`, then commits what it holds so a restart resumes
    /// without loss or double counting.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        let retention = tokio::spawn(retention_loop(
            Arc::clone(&self.store),
            self.storage.clone(),
            shutdown.clone(),
        ));
        let interval = self.config.checkpoint_interval;
        let mut next_checkpoint = Instant::now() + interval;
        let mut backoff = Duration::from_millis(100);
        loop {
            // While a checkpoint is being written, look for its end often, so
            // its windows reach the cache soon after it lands. (The bus read is
            // never raced against the write: a `next` dropped midway could
            // lose the records it had taken.)
            let longest = match self.in_flight {
                Some(_) => IN_FLIGHT_POLL,
                None => Duration::from_millis(250),
            };
            let wait = next_checkpoint
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
                    if !self.commit_now(Some(&partitions), &shutdown).await {
                        break;
                    }
                    self.aggregator.revoke(&partitions);
                    self.set_assigned();
                }
                Ok(ConsumerEvent::Records(records)) => self.ingest(records),
                Ok(ConsumerEvent::Idle) => {}
                Err(error) => {
                    warn!(message = "Cannot read from the bus; retrying.", %error, retry_in_ms = backoff.as_millis() as u64);
                    if sleep_or_shutdown(backoff, &shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            backoff = Duration::from_millis(100);
            if self.in_flight.as_ref().is_some_and(|t| t.is_finished())
                && !self.settle(&shutdown).await
            {
                break;
            }
            if Instant::now() >= next_checkpoint {
                let caught_up = self.report_progress().await;
                self.aggregator
                    .advance(now_ms(), Instant::now(), &caught_up);
                if !self.settle(&shutdown).await {
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
        if self.commit_now(None, &deadline).await {
            info!(message = "Processor stopped after committing its progress.");
        } else {
            error!(
                message = "Processor stopped without committing its latest progress; it will be replayed from the bus on restart, nothing is lost."
            );
        }
        timer.abort();
        retention.abort();
        Ok(())
    }

    /// Loads the checkpoints of new partitions (retrying while the store is
    /// down) and seeks the consumer to them. Returns false on shutdown.
    async fn assign(
        &mut self,
        partitions: &[u32],
        shutdown: &CancellationToken,
    ) -> Result<bool, ProcessorError> {
        let mut backoff = Duration::from_millis(100);
        let checkpoint = loop {
            match self.store.load_checkpoint(partitions).await {
                Ok(c) => break c,
                Err(error) => {
                    warn!(message = "Cannot load checkpoints from the store; retrying.", %error, ?partitions);
                    if sleep_or_shutdown(backoff, shutdown).await {
                        return Ok(false);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let seeks = self
            .aggregator
            .assign(partitions, &checkpoint, Instant::now())?;
        for &(partition, offset) in &seeks {
            while let Err(error) = self.consumer.seek(partition, offset).await {
                warn!(message = "Cannot seek the bus consumer; retrying.", %error, partition, offset);
                if sleep_or_shutdown(Duration::from_secs(1), shutdown).await {
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
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .assigned = self.aggregator.assigned().collect();
    }

    fn ingest(&mut self, records: Vec<BusRecord>) {
        let now = Instant::now();
        for record in records {
            match decode_point(&record.value) {
                Ok(point) => {
                    let outcome = self.aggregator.ingest(
                        record.partition,
                        record.offset,
                        decode_key(&record.key).ok(),
                        point,
                        now,
                    );
                    self.metrics.points.inc();
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
        self.aggregator.close_ready();
    }

    /// Takes a checkpoint and starts writing it to the store, so the next
    /// records are aggregated while it is written (about half of the
    /// processor's time otherwise). At most one checkpoint is in flight:
    /// callers [`settle`](Self::settle) the previous one first, which keeps the
    /// commits in order and makes a failing store stop ingestion one
    /// checkpoint later, which is the backpressure.
    fn launch(&mut self, partitions: Option<&[u32]>, stop: &CancellationToken) {
        debug_assert!(self.in_flight.is_none() && self.unlanded.is_none());
        let checkpointed = self.aggregator.checkpoint(partitions);
        if checkpointed.commit.is_empty()
            && partitions.is_none()
            && checkpointed.offsets == self.last_offsets
        {
            return;
        }
        if partitions.is_none() {
            self.last_offsets = checkpointed.offsets.clone();
        }
        self.in_flight = Some(tokio::spawn(land(
            Arc::clone(&self.store),
            checkpointed,
            stop.clone(),
            Arc::clone(&self.status),
            self.metrics.clone(),
        )));
    }

    /// Waits for the checkpoint in flight (and retries one that did not land
    /// before) until it is in the store or `stop` fires. Returns whether
    /// nothing is left unwritten; a checkpoint that did not land is kept, never
    /// dropped, since the offsets of later ones cover its records.
    async fn settle(&mut self, stop: &CancellationToken) -> bool {
        if let Some(task) = self.in_flight.take()
            && !self.take_landing(task.await).await
        {
            return false;
        }
        if let Some(checkpointed) = self.unlanded.take() {
            let landing = land(
                Arc::clone(&self.store),
                checkpointed,
                stop.clone(),
                Arc::clone(&self.status),
                self.metrics.clone(),
            );
            if !self.take_landing(Ok(landing.await)).await || self.unlanded.is_some() {
                return false;
            }
        }
        self.update_cache(Vec::new()).await;
        true
    }

    /// Takes the end of a checkpoint's write: once in the store, its offsets go
    /// to the bus and its windows to the cache; one that did not land is kept
    /// for the next try. False only when the write task itself failed.
    async fn take_landing(&mut self, outcome: Result<Landing, tokio::task::JoinError>) -> bool {
        match outcome {
            Ok(Landing::Landed(checkpointed)) => {
                self.landed(checkpointed).await;
                true
            }
            Ok(Landing::Stopped(checkpointed)) => {
                self.unlanded = Some(checkpointed);
                true
            }
            Err(error) => {
                // Only a panic in the store engine gets here; the checkpoint's
                // records are replayed from the bus after a restart.
                error!(message = "Writing a checkpoint failed unexpectedly; stopping so a restart replays it.", %error);
                false
            }
        }
    }

    /// Writes a checkpoint now and waits for it: the previous one first.
    async fn commit_now(&mut self, partitions: Option<&[u32]>, stop: &CancellationToken) -> bool {
        if !self.settle(stop).await {
            return false;
        }
        self.launch(partitions, stop);
        self.settle(stop).await
    }

    /// What follows a checkpoint in the store: metrics, the bus's offsets, the cache.
    async fn landed(&mut self, checkpointed: Checkpointed) {
        let commit = checkpointed.commit;
        for result in &commit.results {
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
        self.cache_backlog.extend(commit.results);
    }

    /// Puts newly closed windows into the cache and announces them. What the
    /// cache refuses (Redis down, or reconnecting: its first command after an
    /// outage fails) is kept and sent again with the next checkpoint's windows,
    /// the newest [`CACHE_BACKLOG`] of them, so the latest windows reach the
    /// cache once it is back even if no further window closes.
    async fn update_cache(&mut self, results: Vec<pulse_core::WindowResult>) {
        self.cache_backlog.extend(results);
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
    /// end of the bus: only those may count as idle. None when the bus cannot
    /// say.
    async fn report_progress(&mut self) -> Vec<u32> {
        let ends = match self.consumer.end_offsets().await {
            Ok(ends) => ends,
            Err(error) => {
                debug!(message = "Cannot read the bus's end offsets; no partition counts as idle meanwhile.", %error);
                return Vec::new();
            }
        };
        let mut caught_up = Vec::new();
        let mut total = 0;
        for (partition, next, watermark) in self.aggregator.progress() {
            let label = PartitionLabel {
                partition: partition.to_string(),
            };
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
            total += lag;
            self.metrics.bus_lag.get_or_create(&label).set(lag as i64);
        }
        self.status.lock().unwrap_or_else(|e| e.into_inner()).lag = total;
        caught_up
    }
}

/// How a checkpoint's write ended.
enum Landing {
    /// In the store.
    Landed(Checkpointed),
    /// Not written: `stop` fired while the store refused it.
    Stopped(Checkpointed),
}

/// Writes a checkpoint, retrying with backoff until it lands or `stop` fires.
/// Nothing is lost while it retries: the checkpoint is handed back either way.
async fn land(
    store: Arc<dyn Store>,
    checkpointed: Checkpointed,
    stop: CancellationToken,
    status: Arc<Mutex<Status>>,
    metrics: ProcessorMetrics,
) -> Landing {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match store.commit(&checkpointed.commit).await {
            Ok(()) => {
                metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.commits.inc();
                let mut status = status.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((since, _)) = status.failing.take() {
                    info!(
                        message = "Store commits succeed again.",
                        outage_secs = since.elapsed().as_secs()
                    );
                }
                return Landing::Landed(checkpointed);
            }
            Err(error) => {
                metrics.commit_failures.inc();
                warn!(message = "Store refused a checkpoint; holding it and retrying.", %error, retry_in_ms = backoff.as_millis() as u64);
                status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failing
                    .get_or_insert_with(|| (Instant::now(), error.to_string()));
                if sleep_or_shutdown(backoff, &stop).await {
                    return Landing::Stopped(checkpointed);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Sleeps `d`; returns true if `stop` fired first.
async fn sleep_or_shutdown(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// Deletes raw points and results past their retention, now and periodically.
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
            Ok(report) if report.raw_points + report.results > 0 => {
                info!(
                    message = "Retention removed old data.",
                    raw_points = report.raw_points,
                    results = report.results
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
