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
use serde_json::{Map, json};

/// One dependency `/readyz` checks. `Ok(detail)` is ready; `Err(reason)` is not.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &str;
    async fn check(&self) -> Result<String, String>;
}

#[derive(Clone)]
struct OpsState {
    registry: Arc<Mutex<Registry>>,
    checks: Arc<Vec<Arc<dyn ReadinessCheck>>>,
}

/// The three operational endpoints, to merge into a role's router.
pub fn ops_router(registry: Arc<Mutex<Registry>>, checks: Vec<Arc<dyn ReadinessCheck>>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            registry,
            checks: Arc::new(checks),
        })
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let mut ready = true;
    let mut checks = Map::new();
    for check in state.checks.iter() {
        let (ok, detail) = match check.check().await {
            Ok(detail) => (true, detail),
            Err(reason) => (false, reason),
        };
        ready &= ok;
        checks.insert(
            check.name().to_string(),
            json!({"ok": ok, "detail": detail}),
        );
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks})),
    )
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut text = String::new();
    let encoded = {
        let registry = state.registry.lock().unwrap_or_else(|e| e.into_inner());
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
