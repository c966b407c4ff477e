//! The sidecar's own Prometheus metrics, all named `pulse_sidecar_*`, served on
//! the admin port's `/metrics`.
//!
//! Label values come from small fixed sets (receiver names, reasons, outcomes),
//! never from what an app sends, so a misbehaving app cannot multiply series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The receivers, as the `receiver` label spells them.
pub const RECEIVERS: [&str; 4] = ["http", "statsd", "prometheus", "otlp"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    pub receiver: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub receiver: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Every metric of the sidecar; cheap to update from any task or thread.
pub struct Metrics {
    pub points_accepted: Family<ReceiverLabels, Counter>,
    pub points_rejected: Family<RejectLabels, Counter>,
    pub statsd_packets: Counter,
    pub scrapes: Family<OutcomeLabels, Counter>,

    pub buffer_segments: Gauge,
    pub buffer_points: Gauge,
    pub buffer_bytes: Gauge,
    pub buffer_dropped_points: Family<ReasonLabels, Counter>,
    pub buffer_write_errors: Counter,

    pub forward_requests: Family<OutcomeLabels, Counter>,
    pub forward_retries: Counter,
    pub forwarded_points: Counter,
    pub forward_request_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    pub forward_delay: Histogram,
    pub circuit_state: Gauge,
}

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            points_accepted: Family::default(),
            points_rejected: Family::default(),
            statsd_packets: Counter::default(),
            scrapes: Family::default(),
            buffer_segments: Gauge::default(),
            buffer_points: Gauge::default(),
            buffer_bytes: Gauge::default(),
            buffer_dropped_points: Family::default(),
            buffer_write_errors: Counter::default(),
            forward_requests: Family::default(),
            forward_retries: Counter::default(),
            forwarded_points: Counter::default(),
            forward_request_duration: Family::new_with_constructor(request_histogram),
            // From 50 ms (a healthy path with a short linger) to ~14 h of outage.
            forward_delay: Histogram::new(exponential_buckets(0.05, 2.0, 21)),
            circuit_state: Gauge::default(),
        };
        // Known label values exist from the start at 0, so `increase()` also
        // sees the first occurrence.
        for receiver in RECEIVERS {
            let _ = metrics
                .points_accepted
                .get_or_create(&ReceiverLabels { receiver });
        }
        for reason in [
            "buffer_full",
            "corrupt",
            "rejected_by_gateway",
            "write_failed",
        ] {
            let _ = metrics
                .buffer_dropped_points
                .get_or_create(&ReasonLabels { reason });
        }
        let r = registry.sub_registry_with_prefix("pulse_sidecar");
        r.register(
            "points_accepted",
            "Points taken by a receiver and written to the buffer",
            metrics.points_accepted.clone(),
        );
        r.register(
            "points_rejected",
            "Points (or lines, data points) a receiver refused, by reason",
            metrics.points_rejected.clone(),
        );
        r.register(
            "statsd_packets",
            "StatsD datagrams received",
            metrics.statsd_packets.clone(),
        );
        r.register(
            "scrapes",
            "Scrapes of the app's Prometheus endpoint, by outcome",
            metrics.scrapes.clone(),
        );
        r.register(
            "buffer_segments",
            "Closed batches waiting to be delivered (the queue depth)",
            metrics.buffer_segments.clone(),
        );
        r.register(
            "buffer_points",
            "Points in the buffer, delivered or not yet",
            metrics.buffer_points.clone(),
        );
        r.register(
            "buffer_bytes",
            "Disk space of the buffer's segment files, in whole 4 KiB blocks (what buffer.max_bytes limits)",
            metrics.buffer_bytes.clone(),
        );
        r.register(
            "buffer_dropped_points",
            "Points dropped from the buffer, by reason (buffer_full: the disk budget was reached and the oldest were dropped)",
            metrics.buffer_dropped_points.clone(),
        );
        r.register(
            "buffer_write_errors",
            "Failed writes to the buffer directory",
            metrics.buffer_write_errors.clone(),
        );
        r.register(
            "forward_requests",
            "Requests to the gateway, by outcome",
            metrics.forward_requests.clone(),
        );
        r.register(
            "forward_retries",
            "Batches sent again after a failed attempt",
            metrics.forward_retries.clone(),
        );
        r.register(
            "forwarded_points",
            "Points the gateway acknowledged",
            metrics.forwarded_points.clone(),
        );
        r.register(
            "forward_request_duration_seconds",
            "Time of one request to the gateway, by outcome",
            metrics.forward_request_duration.clone(),
        );
        r.register(
            "forward_delay_seconds",
            "Time from a batch's first point entering the buffer to the gateway's acknowledgement",
            metrics.forward_delay.clone(),
        );
        r.register(
            "circuit_state",
            "The gateway circuit breaker: 0 closed, 1 open, 2 half-open",
            metrics.circuit_state.clone(),
        );
        metrics
    }

    pub fn accepted(&self, receiver: &'static str, points: usize) {
        if points > 0 {
            self.points_accepted
                .get_or_create(&ReceiverLabels { receiver })
                .inc_by(points as u64);
        }
    }

    pub fn rejected(&self, receiver: &'static str, reason: &'static str, points: usize) {
        if points > 0 {
            self.points_rejected
                .get_or_create(&RejectLabels { receiver, reason })
                .inc_by(points as u64);
        }
    }

    pub fn dropped(&self, reason: &'static str, points: u64) {
        self.buffer_dropped_points
            .get_or_create(&ReasonLabels { reason })
            .inc_by(points);
    }
}
