//! Publishing the open windows' partials to the cache, at a bounded rate and
//! off the processor's loop: the loop hands a snapshot to a task only when the
//! task has finished the previous one, so a slow cache costs freshness, never
//! ingest. Partials go to the cache alone; the store and its exactly-once
//! accounting never see them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pulse_core::WindowResult;
use pulse_engine::cache::{Cache, Partial};
use tokio::sync::mpsc;
use tracing::warn;

use crate::metrics::ProcessorMetrics;
use crate::window::Aggregator;

/// How often the open windows' changes are published at most.
pub const PARTIAL_EVERY: Duration = Duration::from_millis(250);
/// Most partials per publication; the series beyond wait for the next one.
pub const MAX_PARTIALS: usize = 20_000;
/// How long after its window should have closed a partial is kept at most:
/// what a processor that died leaves behind is gone by then.
const PARTIAL_GRACE_MS: i64 = 10_000;

/// The processor's side: snapshots go to the publishing task.
pub struct PartialPublisher {
    sender: mpsc::Sender<Vec<Partial>>,
    /// Set by the task when the cache refused a publication, so the next
    /// snapshot holds every open window rather than only the changed ones.
    resend_all: Arc<AtomicBool>,
    /// How long past a window's end it may stay open: lateness plus idle.
    keep_ms: i64,
    metrics: ProcessorMetrics,
}

impl PartialPublisher {
    /// Starts the publishing task; it ends when the publisher is dropped.
    pub fn start(
        cache: Arc<dyn Cache>,
        lateness: Duration,
        idle: Duration,
        metrics: ProcessorMetrics,
    ) -> PartialPublisher {
        let (sender, receiver) = mpsc::channel(1);
        let resend_all = Arc::new(AtomicBool::new(false));
        tokio::spawn(publish(
            cache,
            receiver,
            Arc::clone(&resend_all),
            metrics.clone(),
        ));
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        PartialPublisher {
            sender,
            resend_all,
            keep_ms: ms(lateness)
                .saturating_add(ms(idle))
                .saturating_add(PARTIAL_GRACE_MS),
            metrics,
        }
    }

    /// Takes the changed open windows and hands them over, unless the task
    /// is still busy with the previous ones (they are taken next time).
    pub fn offer(&self, aggregator: &mut Aggregator) {
        let Ok(permit) = self.sender.try_reserve() else {
            return;
        };
        let all = self.resend_all.swap(false, Ordering::Relaxed);
        let (partials, deferred) = aggregator.partials(all, MAX_PARTIALS);
        if deferred > 0 {
            self.metrics.partials_deferred.inc_by(deferred as u64);
        }
        if partials.is_empty() {
            return;
        }
        permit.send(self.expiring(partials));
    }

    fn expiring(&self, results: Vec<WindowResult>) -> Vec<Partial> {
        results
            .into_iter()
            .map(|result| Partial {
                expires_ms: result.end_ms.saturating_add(self.keep_ms),
                result,
            })
            .collect()
    }
}

async fn publish(
    cache: Arc<dyn Cache>,
    mut receiver: mpsc::Receiver<Vec<Partial>>,
    resend_all: Arc<AtomicBool>,
    metrics: ProcessorMetrics,
) {
    while let Some(partials) = receiver.recv().await {
        match cache.put_partial(&partials).await {
            Ok(()) => {
                metrics.partials.inc_by(partials.len() as u64);
            }
            Err(error) => {
                metrics.partial_failures.inc();
                resend_all.store(true, Ordering::Relaxed);
                warn!(message = "Cannot publish the open windows' partials to the cache; answers with partial=true miss them until it is back.", %error, partials = partials.len());
            }
        }
    }
}
