//! Checkpoint pipelining: a checkpoint is written to the store while the next
//! records are aggregated (about half of the processor's time otherwise), at
//! most one at a time and in order, under the owner claims that fence a
//! processor that lost its partitions.
//!
//! A checkpoint the store cannot take is retried with backoff until it lands,
//! and never dropped while it may still land: the offsets of later
//! checkpoints cover its records. The one exception is a checkpoint the store
//! refuses as stale ([`StoreError::Fenced`]): another processor took some of
//! its partitions and resumed from the store's older checkpoint, so writing
//! it would move offsets backwards and count records twice. It is dropped,
//! and the caller steps back ([`Settled::Fenced`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulse_core::backoff::Backoff;
use pulse_engine::store::{Claim, Store, StoreError};
use pulse_server::CancellationToken;
use tracing::{error, info, warn};

use crate::metrics::ProcessorMetrics;
use crate::run::sleep_or_shutdown;
use crate::status::{Status, lock};
use crate::window::Checkpointed;

/// First and longest pause between retries of a checkpoint the store refused.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_CAP: Duration = Duration::from_secs(5);

/// How waiting for the checkpoints ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// Nothing is left unwritten.
    Clear,
    /// `stop` fired while the store refused a checkpoint; it is kept for the
    /// next try.
    Held,
    /// The store refused a checkpoint because these partitions were taken by
    /// another processor since this one loaded them; it was dropped.
    Fenced(Vec<u32>),
    /// The write task failed unexpectedly (a panic in the store engine); its
    /// records are replayed from the bus after a restart.
    Failed,
}

/// The checkpoints of one processor on their way to the store.
pub struct Checkpoints {
    store: Arc<dyn Store>,
    status: Arc<Mutex<Status>>,
    metrics: ProcessorMetrics,
    /// The owner generation this processor holds on each of its partitions,
    /// sent with every commit for the store's fence.
    claims: BTreeMap<u32, u64>,
    /// Offsets of the last full checkpoint launched, to skip empty ones.
    last_offsets: Vec<(u32, u64)>,
    /// The checkpoint being written while ingestion goes on.
    in_flight: Option<tokio::task::JoinHandle<Landing>>,
    /// A checkpoint whose write was stopped; written before any later one.
    unlanded: Option<Checkpointed>,
}

impl Checkpoints {
    pub fn new(
        store: Arc<dyn Store>,
        status: Arc<Mutex<Status>>,
        metrics: ProcessorMetrics,
    ) -> Checkpoints {
        Checkpoints {
            store,
            status,
            metrics,
            claims: BTreeMap::new(),
            last_offsets: Vec::new(),
            in_flight: None,
            unlanded: None,
        }
    }

    /// Holds the claims the store gave with newly loaded partitions.
    pub fn claim(&mut self, claims: &[Claim]) {
        for c in claims {
            self.claims.insert(c.partition, c.generation);
        }
    }

    /// Forgets the claims of partitions given up.
    pub fn release(&mut self, partitions: &[u32]) {
        for p in partitions {
            self.claims.remove(p);
        }
    }

    /// Whether a checkpoint is being written.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether the checkpoint being written is done (landed or not), so
    /// [`settle`](Self::settle) returns at once.
    pub fn finished(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Starts writing `checkpointed`, so the next records are aggregated
    /// meanwhile. A full checkpoint (`full`: of every partition) that holds
    /// nothing new is skipped. Callers [`settle`](Self::settle) the previous
    /// one first, which keeps the commits in order.
    pub fn launch(&mut self, mut checkpointed: Checkpointed, full: bool, stop: &CancellationToken) {
        debug_assert!(self.in_flight.is_none() && self.unlanded.is_none());
        if checkpointed.commit.is_empty() && full && checkpointed.offsets == self.last_offsets {
            return;
        }
        if full {
            self.last_offsets = checkpointed.offsets.clone();
        }
        checkpointed.commit.claims = checkpointed
            .offsets
            .iter()
            .filter_map(|&(partition, _)| {
                let generation = *self.claims.get(&partition)?;
                Some(Claim {
                    partition,
                    generation,
                })
            })
            .collect();
        self.in_flight = Some(tokio::spawn(land(
            Arc::clone(&self.store),
            checkpointed,
            stop.clone(),
            Arc::clone(&self.status),
            self.metrics.clone(),
        )));
    }

    /// Waits for the checkpoint in flight (and retries one that did not land
    /// before) until it is in the store, `stop` fires, or the store fences
    /// it. Returns the checkpoints that landed, in order, and how it ended.
    pub async fn settle(&mut self, stop: &CancellationToken) -> (Vec<Checkpointed>, Settled) {
        let mut landed = Vec::new();
        if let Some(task) = self.in_flight.take() {
            match task.await {
                Ok(Landing::Landed(checkpointed)) => landed.push(checkpointed),
                Ok(Landing::Stopped(checkpointed)) => self.unlanded = Some(checkpointed),
                Ok(Landing::Fenced(partitions)) => return (landed, self.fenced(partitions)),
                Err(error) => {
                    error!(message = "Writing a checkpoint failed unexpectedly; stopping so a restart replays it.", %error);
                    return (landed, Settled::Failed);
                }
            }
        }
        if let Some(checkpointed) = self.unlanded.take() {
            let landing = land(
                Arc::clone(&self.store),
                checkpointed,
                stop.clone(),
                Arc::clone(&self.status),
                self.metrics.clone(),
            );
            match landing.await {
                Landing::Landed(checkpointed) => landed.push(checkpointed),
                Landing::Stopped(checkpointed) => {
                    self.unlanded = Some(checkpointed);
                    return (landed, Settled::Held);
                }
                Landing::Fenced(partitions) => return (landed, self.fenced(partitions)),
            }
        }
        (landed, Settled::Clear)
    }

    fn fenced(&mut self, partitions: Vec<u32>) -> Settled {
        self.last_offsets.clear();
        Settled::Fenced(partitions)
    }
}

/// How a checkpoint's write ended.
enum Landing {
    /// In the store.
    Landed(Checkpointed),
    /// Not written: `stop` fired while the store refused it.
    Stopped(Checkpointed),
    /// Refused for good: these partitions have a newer owner.
    Fenced(Vec<u32>),
}

/// Writes a checkpoint, retrying with backoff until it lands, `stop` fires or
/// the store fences it. Nothing is lost while it retries: the checkpoint is
/// handed back unless it is fenced.
async fn land(
    store: Arc<dyn Store>,
    mut checkpointed: Checkpointed,
    stop: CancellationToken,
    status: Arc<Mutex<Status>>,
    metrics: ProcessorMetrics,
) -> Landing {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
    loop {
        let started = Instant::now();
        let outcome = store.commit(&checkpointed.commit).await;
        if matches!(outcome, Ok(_) | Err(StoreError::Fenced { .. })) {
            answered(&status);
        }
        match outcome {
            Ok(merged) => {
                metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.commits.inc();
                checkpointed.merged = merged;
                return Landing::Landed(checkpointed);
            }
            Err(StoreError::Fenced { partitions }) => {
                metrics.fenced_commits.inc();
                warn!(
                    message = "The store refused a checkpoint: another processor took some of its partitions since this one loaded them. It is dropped (the new owner replays its records) and this processor steps back.",
                    ?partitions,
                    records_offsets = ?checkpointed.offsets
                );
                return Landing::Fenced(partitions);
            }
            Err(error) => {
                metrics.commit_failures.inc();
                let pause = backoff.fail();
                warn!(message = "Store refused a checkpoint; holding it and retrying.", %error, retry_in_ms = pause.as_millis() as u64);
                lock(&status).commit_failed(error.to_string());
                if sleep_or_shutdown(pause, &stop).await {
                    return Landing::Stopped(checkpointed);
                }
            }
        }
    }
}

/// The store took or judged a commit: commits are not failing any more.
fn answered(status: &Mutex<Status>) {
    if let Some(since) = lock(status).commit_succeeded() {
        info!(
            message = "Store commits succeed again.",
            outage_secs = since.elapsed().as_secs()
        );
    }
}
