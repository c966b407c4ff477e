//! The gateway's Prometheus metrics, all named `pulse_gateway_*`.
//!
//! Label values are a small fixed set (routes, outcomes, reject reasons, error
//! codes), never anything a client sends, so a hostile client cannot blow up the
//! number of series.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use pulse_core::validate::{PointError, RejectReason};
use pulse_engine::bus::BusError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BusErrorLabels {
    error: &'static str,
}

/// The gateway's metrics; every request updates them without locking.
pub(crate) struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    received_bytes: Counter,
    points_received: Counter,
    points_accepted: Counter,
    points_rejected: Family<ReasonLabels, Counter>,
    body_rejections: Family<CodeLabels, Counter>,
    bus_send_errors: Family<BusErrorLabels, Counter>,
    bus_send_duration: Histogram,
    active_series: Gauge,
}

impl GatewayMetrics {
    /// Creates the metrics and registers them under the `pulse_gateway` prefix.
    pub(crate) fn register(registry: &mut Registry) -> GatewayMetrics {
        let metrics = GatewayMetrics {
            requests: Family::default(),
            received_bytes: Counter::default(),
            points_received: Counter::default(),
            points_accepted: Counter::default(),
            points_rejected: Family::default(),
            body_rejections: Family::default(),
            bus_send_errors: Family::default(),
            bus_send_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            active_series: Gauge::default(),
        };
        // Every reason and bus error kind exists from the start at 0, so
        // `increase()` and alerts also see the first occurrence, not only the
        // ones after it.
        for reason in RejectReason::ALL {
            let _ = metrics.points_rejected.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        let kinds = [
            BusError::Full,
            BusError::Unavailable(String::new()),
            BusError::Other(String::new()),
        ];
        for error in &kinds {
            let _ = metrics.bus_send_errors.get_or_create(&BusErrorLabels {
                error: bus_error_kind(error),
            });
        }
        let registry = registry.sub_registry_with_prefix("pulse_gateway");
        registry.register(
            "requests",
            "Ingest requests by route and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "received_bytes",
            "Request body bytes received, as sent (before decompression)",
            metrics.received_bytes.clone(),
        );
        registry.register(
            "points_received",
            "Points found in request bodies, valid or not",
            metrics.points_received.clone(),
        );
        registry.register(
            "points_accepted",
            "Points made durable on the bus and acknowledged to the client",
            metrics.points_accepted.clone(),
        );
        registry.register(
            "points_rejected",
            "Points refused by validation or the active-series limit, by reason",
            metrics.points_rejected.clone(),
        );
        registry.register(
            "body_rejections",
            "Requests refused as a whole because of their body, by error code",
            metrics.body_rejections.clone(),
        );
        registry.register(
            "bus_send_errors",
            "Batches the bus refused, by error kind",
            metrics.bus_send_errors.clone(),
        );
        registry.register(
            "bus_send_duration_seconds",
            "Time for the bus to make one request's batch durable",
            metrics.bus_send_duration.clone(),
        );
        registry.register(
            "active_series",
            "Series this gateway counts as active (with gateway.max_active_series set)",
            metrics.active_series.clone(),
        );
        metrics
    }

    pub(crate) fn active_series(&self, count: usize) {
        self.active_series
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts one finished request.
    pub(crate) fn request(&self, route: &str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                outcome,
            })
            .inc();
    }

    pub(crate) fn body_received(&self, bytes: usize) {
        self.received_bytes.inc_by(bytes as u64);
    }

    pub(crate) fn body_rejected(&self, code: &'static str) {
        self.body_rejections
            .get_or_create(&CodeLabels { code })
            .inc();
    }

    /// Counts the points of a parsed body: `valid` good ones plus one per error.
    pub(crate) fn points_parsed(&self, valid: usize, errors: &[PointError]) {
        self.points_received.inc_by((valid + errors.len()) as u64);
        for error in errors {
            self.points_rejected
                .get_or_create(&ReasonLabels {
                    reason: error.reason.as_str(),
                })
                .inc();
        }
    }

    /// Records one bus send: its latency, and either the points it made durable
    /// or the kind of error it failed with.
    pub(crate) fn bus_sent(&self, elapsed: Duration, points: usize, result: &Result<(), BusError>) {
        self.bus_send_duration.observe(elapsed.as_secs_f64());
        match result {
            Ok(()) => {
                self.points_accepted.inc_by(points as u64);
            }
            Err(error) => {
                self.bus_send_errors
                    .get_or_create(&BusErrorLabels {
                        error: bus_error_kind(error),
                    })
                    .inc();
            }
        }
    }
}

/// The `error` label of the bus send errors counter.
fn bus_error_kind(error: &BusError) -> &'static str {
    match error {
        BusError::Full => "full",
        BusError::Unavailable(_) => "unavailable",
        BusError::Other(_) => "other",
    }
}
