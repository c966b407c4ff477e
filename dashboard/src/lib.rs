//! `pulse-dashboard`: the query API over the window results the processor writes.
//!
//! | endpoint | answers |
//! |---|---|
//! | `GET /dashboard?metric=&window=[&tags=][&aggs=]` | the latest closed window merged across series (cache first, store as fallback) |
//! | `GET /api/v1/query_range?metric=&window=[&from=][&to=][&tags=][&group_by=][&aggs=]` | merged windows over a range, per group |
//! | `GET /api/v1/metrics` | stored metrics and configured windows |
//! | `GET /api/v1/live[?metric=][&window=]` | server-sent events of newly closed windows |
//! | `GET /api/v1/tags?metric=&window=[&from=][&to=][&tags=]` | tag keys and values of the series in a range |
//! | `GET /api/v1/dashboards[/{name}]` | the dashboards of the UI and their panels |
//! | `GET /`, `GET /d/{name}`, `GET /assets/*` | the web UI (`ui`); `/` is a JSON index for non-browsers |
//! | `/healthz`, `/readyz`, `/metrics`, `/openapi.json` | operations, and this API as an OpenAPI 3.1 document |
//!
//! Series are always combined by merging their aggregates, so every quantile is the
//! quantile of the union of the points. Parsing (`params`), merging and shaping
//! (`answer`) are pure modules; `api` and `live` only wire them to engines.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use prometheus_client::registry::Registry;
use pulse_core::config::Config;
use pulse_engine::cache::Cache;
use pulse_engine::store::Store;
use pulse_server::auth::{Tokens, require_bearer};
use pulse_server::http_metrics::{HttpMetrics, track};
use pulse_server::{ReadinessCheck, ops_router};

mod anomalies;
mod answer;
mod api;
mod boards;
mod instant;
mod live;
mod metrics;
mod openapi;
mod params;
mod ui;

pub use openapi::openapi;

use api::AppState;
use metrics::DashboardMetrics;
use params::KnownWindows;

/// The dashboard role.
pub struct Dashboard;

impl Dashboard {
    /// Router with the API + /healthz /readyz /metrics, metrics registered in `registry`.
    ///
    /// When `dashboard.read_tokens` is non-empty every API route needs one of them
    /// as a bearer token; the operational endpoints and the UI's pages and assets
    /// (which hold no data) stay open, so probes and scrapers need no secret.
    ///
    /// The tokens are `dashboard.read_tokens`; [`Dashboard::router_with_tokens`]
    /// takes them from elsewhere (`pulse up` passes `dashboard.read_tokens_file`'s).
    pub fn router(
        config: &Config,
        store: Arc<dyn Store>,
        cache: Arc<dyn Cache>,
        registry: Arc<Mutex<Registry>>,
    ) -> Router {
        let tokens = Tokens::Fixed(Arc::new(config.dashboard.read_tokens.clone()));
        Self::router_with_tokens(config, store, cache, registry, tokens)
    }

    /// [`Dashboard::router`] with the readers' `tokens`.
    pub fn router_with_tokens(
        config: &Config,
        store: Arc<dyn Store>,
        cache: Arc<dyn Cache>,
        registry: Arc<Mutex<Registry>>,
        tokens: Tokens,
    ) -> Router {
        let (metrics, http_metrics) = {
            let mut registry = pulse_core::sync::lock(&registry);
            (
                DashboardMetrics::register(&mut registry),
                HttpMetrics::register(&mut registry),
            )
        };
        let state = AppState {
            store: Arc::clone(&store),
            cache,
            windows: Arc::new(KnownWindows::from_config(config)),
            metrics,
            max_points_per_query: config.dashboard.max_points_per_query,
            allowed_lateness: config.processor.allowed_lateness,
            boards: Arc::new(config.dashboards.as_slice().to_vec()),
        };
        for problem in pulse_core::board::check_windows(&state.boards, state.windows.labels()) {
            tracing::warn!(message = "A dashboard panel asks for a window that is not computed; it will show the error.", %problem);
        }
        let api = Router::new()
            .route("/dashboard", get(api::dashboard))
            .route("/api/v1/query_range", get(api::query_range))
            .route("/api/v1/metrics", get(api::metrics))
            .route("/api/v1/live", get(live::live))
            .route("/api/v1/tags", get(api::tags))
            .route("/api/v1/anomalies", get(anomalies::anomalies))
            .route("/api/v1/dashboards", get(api::dashboards))
            .route("/api/v1/dashboards/{name}", get(api::dashboard_board))
            .route_layer(from_fn_with_state(tokens, require_bearer))
            .with_state(state.clone());
        // The pages and assets hold no data, so they stay open like the probes.
        let ui = Router::new()
            .route("/", get(ui::root))
            .route("/d/{name}", get(ui::board))
            .route("/assets/{*path}", get(ui::asset))
            .with_state(state);
        let checks: Vec<Arc<dyn ReadinessCheck>> =
            vec![Arc::new(pulse_server::checks::StoreReady(store))];
        Router::new()
            .merge(ui)
            .merge(api)
            .merge(ops_router(registry, checks))
            .merge(pulse_server::openapi::router(&openapi()))
            .route_layer(from_fn_with_state(http_metrics, track))
            .fallback(api::not_found)
    }
}
