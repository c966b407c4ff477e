//! Request-latency histograms per route, method and status class.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

/// `pulse_http_request_duration_seconds{method,route,status}`.
#[derive(Clone)]
pub struct HttpMetrics {
    durations: Family<RequestLabels, Histogram>,
}

impl HttpMetrics {
    /// Creates the histogram family and registers it in `registry`.
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let durations = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "pulse_http_request_duration_seconds",
            "Time to answer HTTP requests, by route, method and status",
            durations.clone(),
        );
        HttpMetrics { durations }
    }
}

/// Axum middleware (use with `axum::middleware::from_fn_with_state`).
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics
        .durations
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .observe(started.elapsed().as_secs_f64());
    response
}
