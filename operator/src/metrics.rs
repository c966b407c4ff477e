//! The operator's Prometheus metrics: how many reconciles ran, how many failed
//! and why, and how long they took, per resource kind. Served on `/metrics`
//! by [`crate::run`].

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the per-kind series (`kind="MetricPipeline"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Labels of the failure series: the kind and the error's reason, the same
/// CamelCase word the status condition and the Event carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    kind: &'static str,
    reason: &'static str,
}

type DurationFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

/// Labels of the webhook series: what became of one admission request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What the sidecar injection webhook did with one pod, as the `outcome`
/// label of `pulse_operator_webhook_requests_total` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The sidecar was injected.
    Injected,
    /// The pod asked for a sidecar and did not get one (its pipeline is
    /// missing or unreadable, the request was malformed): a failure to page on.
    Failed,
    /// Nothing to do (no injection label, already injected): allowed as is.
    Ignored,
}

impl WebhookOutcome {
    const ALL: [WebhookOutcome; 3] = [
        WebhookOutcome::Injected,
        WebhookOutcome::Failed,
        WebhookOutcome::Ignored,
    ];

    fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Injected => "injected",
            WebhookOutcome::Failed => "failed",
            WebhookOutcome::Ignored => "ignored",
        }
    }
}

/// The operator's metrics, cheap to clone and share between controllers.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: DurationFamily,
    webhook: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pulse_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration: DurationFamily = Family::new_with_constructor(|| {
            // 5 ms .. ~20 s: a reconcile is a handful of API calls, more when
            // Kafka or the database is slow.
            Histogram::new(exponential_buckets(0.005, 2.0, 13))
        });
        registry.register(
            "reconciles",
            "Reconciles started, by resource kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by resource kind and reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by resource kind",
            duration.clone(),
        );
        let webhook = Family::<OutcomeLabels, Counter>::default();
        // Every outcome exists from the start at 0, so `increase()` and the
        // chart's alert also see the first failure.
        for outcome in WebhookOutcome::ALL {
            let _ = webhook.get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        registry.register(
            "webhook_requests",
            "Pods the sidecar injection webhook was asked about, by outcome (injected, failed, ignored)",
            webhook.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            reconciles,
            failures,
            duration,
            webhook,
        }
    }

    /// Counts a reconcile of `kind`; the returned timer records its duration
    /// when dropped, so every exit path is measured.
    pub fn reconcile(&self, kind: &'static str) -> ReconcileTimer {
        self.reconciles.get_or_create(&KindLabels { kind }).inc();
        ReconcileTimer {
            histogram: self.duration.get_or_create(&KindLabels { kind }).clone(),
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile of `kind` by its error's reason.
    pub fn failure(&self, kind: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { kind, reason })
            .inc();
    }

    /// Counts one admission request of the sidecar injection webhook.
    pub fn webhook(&self, outcome: WebhookOutcome) {
        self.webhook
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Records a reconcile's duration when dropped.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_failures_and_durations_are_rendered_by_kind_and_reason() {
        let metrics = Metrics::new();
        drop(metrics.reconcile("MetricPipeline"));
        drop(metrics.reconcile("MetricPipeline"));
        metrics.failure("MetricPipeline", "KafkaUnavailable");
        metrics.webhook(WebhookOutcome::Failed);
        let text = metrics.render();
        assert!(
            text.contains("pulse_operator_reconciles_total{kind=\"MetricPipeline\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "pulse_operator_reconcile_errors_total{kind=\"MetricPipeline\",reason=\"KafkaUnavailable\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "pulse_operator_reconcile_duration_seconds_count{kind=\"MetricPipeline\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("pulse_operator_webhook_requests_total{outcome=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pulse_operator_webhook_requests_total{outcome=\"injected\"} 0"),
            "{text}"
        );
    }
}
