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
use crate::window::{Aggregator, RestoreError};

/// Longest pause between retries of a failing store or bus.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long shutdown keeps trying to commit the final checkpoint.
const SHUTDOWN_COMMIT_BUDGET: Duration = Duration::from_secs(10);
/// Most closed windows held for a cache that refused them.
const CACHE_BACKLOG: usize = 20_000;
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
    last_offsets: Vec<(u32, u64)>,
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
            let wait = next_checkpoint
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
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
                    self.commit(Some(&partitions), &shutdown).await;
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
            if Instant::now() >= next_checkpoint {
                let caught_up = self.report_progress().await;
                self.aggregator
                    .advance(now_ms(), Instant::now(), &caught_up);
                if !self.commit(None, &shutdown).await {
                    break;
                }
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
        if self.commit(None, &deadline).await {
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

    /// Commits a checkpoint, retrying until it lands or `stop` fires. Returns
    /// whether it landed. Nothing is ingested meanwhile, which is the
    /// backpressure: a store outage pauses the processor instead of losing data.
    async fn commit(&mut self, partitions: Option<&[u32]>, stop: &CancellationToken) -> bool {
        let checkpointed = self.aggregator.checkpoint(partitions);
        if checkpointed.commit.is_empty()
            && partitions.is_none()
            && checkpointed.offsets == self.last_offsets
        {
            self.update_cache(Vec::new()).await;
            return true;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.store.commit(&checkpointed.commit).await {
                Ok(()) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.commits.inc();
                    let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((since, _)) = status.failing.take() {
                        info!(
                            message = "Store commits succeed again.",
                            outage_secs = since.elapsed().as_secs()
                        );
                    }
                    break;
                }
                Err(error) => {
                    self.metrics.commit_failures.inc();
                    warn!(message = "Store refused a checkpoint; holding it and retrying.", %error, retry_in_ms = backoff.as_millis() as u64);
                    self.status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .failing
                        .get_or_insert_with(|| (Instant::now(), error.to_string()));
                    if sleep_or_shutdown(backoff, stop).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if partitions.is_none() {
            self.last_offsets = checkpointed.offsets.clone();
        }
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
        self.update_cache(commit.results).await;
        true
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
