//! The ingestion gateway: the HTTP front door of a pipeline.
//!
//! It takes points over HTTP (`POST /metrics`, the original single-point
//! contract, and `POST /v1/metrics`, compressed batches from the sidecar),
//! authenticates the writer, validates every point, and appends the valid ones to
//! the bus keyed by series id. It answers `202` only after the bus has made the
//! points durable, so a client that got `202` never needs to send them again, and
//! a client that got anything else may safely retry.
//!
//! Decoding and validation live in `pulse_core::codec::body`; this crate adds the
//! HTTP edge: limits, admission control, answers and metrics.

mod answer;
mod metrics;
mod openapi;
mod rate;
mod readiness;
mod receive;
mod series;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::post;
use prometheus_client::registry::Registry;
use pulse_core::config::{Config, GatewayConfig};
use pulse_core::validate::Limits;
use pulse_engine::bus::BusProducer;
use pulse_server::auth::{Tokens, require_bearer};
use pulse_server::edge::{BodyEdge, DecodeBudget};
use pulse_server::http_metrics::{HttpMetrics, track};
use tokio::sync::Semaphore;

pub use crate::openapi::openapi;

use crate::metrics::GatewayMetrics;
use crate::rate::RateLimits;
use crate::readiness::BusReadiness;
use crate::series::ActiveSeries;

/// What every ingest request of one gateway shares: the bus, the limits, the
/// admission permits, the writers' rate buckets, the active series and the
/// metrics.
pub struct Gateway {
    bus: Arc<dyn BusProducer>,
    settings: GatewayConfig,
    limits: Limits,
    /// Reading and decoding bodies within the limits and the decode budget.
    edge: BodyEdge,
    /// One permit per request being decoded or sent, so CPU and bus work stay
    /// bounded however many clients connect (memory is the budget's job).
    permits: Semaphore,
    rates: RateLimits,
    /// `None` without `gateway.max_active_series`.
    series: Option<ActiveSeries>,
    metrics: GatewayMetrics,
}

impl Gateway {
    /// Builds the gateway's router: the ingest routes (behind bearer auth when
    /// `gateway.tokens` is set), `/healthz`, `/readyz` (which asks the bus) and
    /// `/metrics`, with request latency tracked per route. Its metrics are
    /// registered in `registry`, which `/metrics` serves.
    ///
    /// The tokens are `gateway.tokens`; [`Gateway::router_with_tokens`] takes
    /// them from elsewhere (`pulse up` passes `gateway.tokens_file`'s).
    pub fn router(
        config: &Config,
        bus: Arc<dyn BusProducer>,
        registry: Arc<Mutex<Registry>>,
    ) -> Router {
        let tokens = Tokens::Fixed(Arc::new(config.gateway.tokens.clone()));
        Self::router_with_tokens(config, bus, registry, tokens)
    }

    /// [`Gateway::router`] with the writers' `tokens`.
    pub fn router_with_tokens(
        config: &Config,
        bus: Arc<dyn BusProducer>,
        registry: Arc<Mutex<Registry>>,
        tokens: Tokens,
    ) -> Router {
        let (metrics, http_metrics) = {
            let mut registry = pulse_core::sync::lock(&registry);
            (
                GatewayMetrics::register(&mut registry),
                HttpMetrics::register(&mut registry),
            )
        };
        let gateway = Arc::new(Gateway {
            bus: Arc::clone(&bus),
            settings: config.gateway.clone(),
            limits: config.limits.clone(),
            edge: BodyEdge {
                budget: DecodeBudget::new(config.http.max_decode_bytes),
                timeout: config.http.body_timeout,
                max_body_bytes: config.gateway.max_body_bytes,
                max_decompressed_bytes: config.gateway.max_decompressed_bytes,
            },
            permits: Semaphore::new(config.gateway.max_in_flight),
            rates: RateLimits::new(&config.gateway),
            series: ActiveSeries::new(&config.gateway),
            metrics,
        });
        // With no tokens configured `require_bearer` lets every request through,
        // so the layer is always present and there is one code path.
        // The handlers read the body themselves with the configured limit; axum's
        // `DefaultBodyLimit` only governs extractors such as `Bytes` and `Json`,
        // which these routes do not use.
        let ingest = Router::new()
            .route("/metrics", post(receive::receive))
            .route("/v1/metrics", post(receive::receive))
            .route_layer(from_fn_with_state(tokens, require_bearer))
            .with_state(gateway);
        ingest
            .merge(pulse_server::ops_router(
                registry,
                vec![Arc::new(BusReadiness(bus))],
            ))
            .merge(pulse_server::openapi::router(&openapi()))
            .route_layer(from_fn_with_state(http_metrics, track))
    }
}
