//! The processor's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabel {
    pub window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: String,
}

impl PartitionLabel {
    pub fn of(partition: u32) -> PartitionLabel {
        PartitionLabel {
            partition: partition.to_string(),
        }
    }
}

/// Counters and gauges the processor keeps, registered under `pulse_processor_`.
#[derive(Clone)]
pub struct ProcessorMetrics {
    pub points: Counter,
    pub late_points: Family<WindowLabel, Counter>,
    pub late_points_expired: Counter,
    pub windows_closed: Family<WindowLabel, Counter>,
    /// Wall-clock time (Unix seconds) of the last checkpoint that stored a
    /// closed window: what `kubectl get mp` shows as the last window closed.
    pub last_window_closed: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub undecodable_records: Counter,
    pub series_collisions: Counter,
    pub duplicate_points: Counter,
    pub batch_marks_forgotten: Family<ReasonLabel, Counter>,
    pub batch_keys: Gauge,
    pub open_windows: Gauge,
    pub bus_lag: Family<PartitionLabel, Gauge>,
    pub watermark_seconds: Family<PartitionLabel, Gauge>,
    pub commits: Counter,
    pub commit_failures: Counter,
    pub fenced_commits: Counter,
    pub commit_seconds: Histogram,
    pub cache_failures: Counter,
    pub partials: Counter,
    pub partial_failures: Counter,
    pub partials_deferred: Counter,
}

impl ProcessorMetrics {
    pub fn register(registry: &mut Registry) -> ProcessorMetrics {
        let m = ProcessorMetrics {
            points: Counter::default(),
            late_points: Family::default(),
            late_points_expired: Counter::default(),
            windows_closed: Family::default(),
            last_window_closed: Gauge::default(),
            undecodable_records: Counter::default(),
            series_collisions: Counter::default(),
            duplicate_points: Counter::default(),
            batch_marks_forgotten: Family::default(),
            batch_keys: Gauge::default(),
            open_windows: Gauge::default(),
            bus_lag: Family::default(),
            watermark_seconds: Family::default(),
            commits: Counter::default(),
            commit_failures: Counter::default(),
            fenced_commits: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            cache_failures: Counter::default(),
            partials: Counter::default(),
            partial_failures: Counter::default(),
            partials_deferred: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("pulse_processor");
        r.register("points", "Points aggregated", m.points.clone());
        r.register(
            "late_points",
            "Points that arrived after their window closed, by window",
            m.late_points.clone(),
        );
        r.register(
            "duplicate_points",
            "Points of keyed batches sent again (Idempotency-Key) that were dropped \
             because their partition had taken them before",
            m.duplicate_points.clone(),
        );
        r.register(
            "batch_marks_forgotten",
            "Batch keys a partition stopped remembering: reason=\"expired\" past the horizon, \
             reason=\"evicted\" early to stay within processor.max_batch_marks (a resend of \
             those batches would be counted again)",
            m.batch_marks_forgotten.clone(),
        );
        r.register(
            "batch_keys",
            "Batch keys (Idempotency-Key) the processor's partitions remember",
            m.batch_keys.clone(),
        );
        r.register(
            "late_points_expired",
            "Late points whose window closed more than processor.late_horizon before: \
             added to no window, one count per window definition",
            m.late_points_expired.clone(),
        );
        r.register(
            "windows_closed",
            "Windows closed and stored, by window",
            m.windows_closed.clone(),
        );
        r.register(
            "last_window_closed_timestamp_seconds",
            "When (Unix seconds, wall clock) a checkpoint last stored a closed window; 0 before the first",
            m.last_window_closed.clone(),
        );
        r.register(
            "undecodable_records",
            "Bus records skipped because they do not decode (dead letters)",
            m.undecodable_records.clone(),
        );
        r.register(
            "series_collisions",
            "Points whose series id belongs to another series",
            m.series_collisions.clone(),
        );
        r.register(
            "open_windows",
            "Windows currently open",
            m.open_windows.clone(),
        );
        r.register(
            "bus_lag_records",
            "Records written to the bus but not yet processed, by partition",
            m.bus_lag.clone(),
        );
        r.register(
            "watermark_seconds",
            "Event-time watermark, by partition",
            m.watermark_seconds.clone(),
        );
        r.register(
            "commits",
            "Checkpoints committed to the store",
            m.commits.clone(),
        );
        r.register(
            "commit_failures",
            "Checkpoint attempts the store refused (retried)",
            m.commit_failures.clone(),
        );
        r.register(
            "fenced_commits",
            "Checkpoints the store refused because another processor took their partitions since (dropped, replayed by the new owner)",
            m.fenced_commits.clone(),
        );
        r.register(
            "commit_duration_seconds",
            "Time to commit one checkpoint",
            m.commit_seconds.clone(),
        );
        r.register(
            "cache_failures",
            "Cache updates that failed (the store stays authoritative)",
            m.cache_failures.clone(),
        );
        r.register(
            "partials",
            "Open windows' partials published to the cache (never stored)",
            m.partials.clone(),
        );
        r.register(
            "partial_failures",
            "Partial publications the cache refused (every open window is sent again next time)",
            m.partial_failures.clone(),
        );
        r.register(
            "partials_deferred",
            "Series whose partials waited for a later publication (more than processor's per-publication bound changed)",
            m.partials_deferred.clone(),
        );
        m
    }
}

impl ProcessorMetrics {
    /// Stops exporting the per-partition gauges of partitions this processor
    /// gave up: their last values would hide the new owner's real lag.
    pub fn forget_partitions(&self, partitions: &[u32]) {
        for &p in partitions {
            let label = PartitionLabel::of(p);
            self.bus_lag.remove(&label);
            self.watermark_seconds.remove(&label);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    pub receiver: String,
    /// sent, failed (retried later) or unknown_receiver (kept).
    pub outcome: String,
}

/// The anomaly rules' and the delivery loop's counters, under `pulse_processor_anomaly_`.
#[derive(Clone, Default)]
pub struct AnomalyMetrics {
    pub evaluations: Counter,
    pub anomalies: Family<StateLabel, Counter>,
    pub deliveries: Family<DeliveryLabel, Counter>,
}

impl AnomalyMetrics {
    pub fn register(registry: &mut Registry) -> AnomalyMetrics {
        let m = AnomalyMetrics::default();
        let r = registry.sub_registry_with_prefix("pulse_processor_anomaly");
        r.register(
            "evaluations",
            "Closed windows judged by an anomaly rule (one per rule and series)",
            m.evaluations.clone(),
        );
        r.register(
            "anomalies",
            "Alerts that fired or resolved, by state",
            m.anomalies.clone(),
        );
        r.register(
            "deliveries",
            "Alert delivery attempts, by receiver and outcome",
            m.deliveries.clone(),
        );
        m
    }
}
