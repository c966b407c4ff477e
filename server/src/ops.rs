//! `/healthz` (the process is alive), `/readyz` (its dependencies answer) and
//! `/metrics` (Prometheus / OpenMetrics text).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::openapi::{Health, Readiness, ReadinessEntry};

/// One dependency `/readyz` checks. `Ok(detail)` is ready; `Err(reason)` is not.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &str;
    async fn check(&self) -> Result<String, String>;
}

#[derive(Clone)]
pub(crate) struct OpsState {
    registry: Arc<Mutex<Registry>>,
    checks: Arc<Vec<Arc<dyn ReadinessCheck>>>,
}

/// The three operational endpoints, to merge into a role's router.
pub fn ops_router(registry: Arc<Mutex<Registry>>, checks: Vec<Arc<dyn ReadinessCheck>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            registry,
            checks: Arc::new(checks),
        })
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health))
)]
pub(crate) async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Readiness: asks every dependency of the role (bus, store, buffer, ...).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Every dependency answers", body = Readiness),
        (status = 503, description = "A dependency does not answer; `checks` says which and why", body = Readiness)
    )
)]
pub(crate) async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let mut ready = true;
    let mut checks = std::collections::BTreeMap::new();
    for check in state.checks.iter() {
        let (ok, detail) = match check.check().await {
            Ok(detail) => (true, detail),
            Err(reason) => (false, reason),
        };
        ready &= ok;
        checks.insert(check.name().to_string(), ReadinessEntry { ok, detail });
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            checks,
        }),
    )
}

/// The role's metrics in the OpenMetrics text format, for Prometheus.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every metric of the role (OpenMetrics text)", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String, example = "# TYPE pulse_gateway_points_received counter\npulse_gateway_points_received_total 42\n# EOF\n"),
    )
)]
pub(crate) async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut text = String::new();
    let encoded = {
        let registry = pulse_core::sync::lock(&state.registry);
        prometheus_client::encoding::text::encode(&mut text, &registry)
    };
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {e}"),
        ),
    }
}
