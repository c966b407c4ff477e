//! The dashboard's own Prometheus metrics, prefixed `pulse_dashboard_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::answer::Source;

/// The endpoints that read data, as the `endpoint` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Dashboard,
    QueryRange,
    Metrics,
    Tags,
}

impl Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Endpoint::Dashboard => "dashboard",
            Endpoint::QueryRange => "query_range",
            Endpoint::Metrics => "metrics",
            Endpoint::Tags => "tags",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    endpoint: &'static str,
    source: &'static str,
}

/// Counters and gauges the handlers update; cheap to clone (shared cells).
#[derive(Clone)]
pub struct DashboardMetrics {
    queries: Family<QueryLabels, Counter>,
    cache_errors: Counter,
    live_subscribers: Gauge,
}

impl DashboardMetrics {
    pub fn register(registry: &mut Registry) -> DashboardMetrics {
        let metrics = DashboardMetrics {
            queries: Family::default(),
            cache_errors: Counter::default(),
            live_subscribers: Gauge::default(),
        };
        registry.register(
            "pulse_dashboard_queries",
            "Queries answered, by endpoint and by the engine that answered (cache or store)",
            metrics.queries.clone(),
        );
        registry.register(
            "pulse_dashboard_cache_errors",
            "Cache lookups that failed and were answered from the store instead",
            metrics.cache_errors.clone(),
        );
        registry.register(
            "pulse_dashboard_live_subscribers",
            "Clients connected to /api/v1/live",
            metrics.live_subscribers.clone(),
        );
        metrics
    }

    pub fn query(&self, endpoint: Endpoint, source: Source) {
        self.queries
            .get_or_create(&QueryLabels {
                endpoint: endpoint.as_str(),
                source: source.as_str(),
            })
            .inc();
    }

    pub fn cache_error(&self) {
        self.cache_errors.inc();
    }

    /// Counts one live subscriber until the returned guard is dropped, which
    /// happens however the connection ends.
    pub fn live_subscriber(&self) -> SubscriberGuard {
        self.live_subscribers.inc();
        SubscriberGuard(self.live_subscribers.clone())
    }
}

/// Holds one count of `pulse_dashboard_live_subscribers`.
pub struct SubscriberGuard(Gauge);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn queries_are_counted_by_endpoint_and_source() {
        let mut registry = Registry::default();
        let metrics = DashboardMetrics::register(&mut registry);
        metrics.query(Endpoint::Dashboard, Source::Cache);
        metrics.query(Endpoint::QueryRange, Source::Store);
        metrics.cache_error();
        let text = encode(&registry);
        assert!(
            text.contains(
                "pulse_dashboard_queries_total{endpoint=\"dashboard\",source=\"cache\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("endpoint=\"query_range\",source=\"store\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pulse_dashboard_cache_errors_total 1"),
            "{text}"
        );
    }

    #[test]
    fn live_subscriber_gauge_falls_when_the_guard_drops() {
        let mut registry = Registry::default();
        let metrics = DashboardMetrics::register(&mut registry);
        let first = metrics.live_subscriber();
        let second = metrics.live_subscriber();
        assert!(encode(&registry).contains("pulse_dashboard_live_subscribers 2"));
        drop(first);
        drop(second);
        assert!(encode(&registry).contains("pulse_dashboard_live_subscribers 0"));
    }
}
