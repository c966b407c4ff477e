//! The HTTP handlers of the query API: they parse (see [`crate::params`]), read
//! the cache or the store, and shape the answer (see [`crate::answer`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pulse_core::result::matches_tags;
use pulse_core::{TimestampMs, WindowResult};
use pulse_engine::cache::Cache;
use pulse_engine::store::{AnomalyQuery, ResultQuery, Store, StoreError};
use pulse_server::ApiError;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{error, warn};

use pulse_core::board::{Board, DEFAULT_BOARD};

use crate::answer::{self, LatestAnswer, MetricsAnswer, RangeAnswer, Source, TagsAnswer};
use crate::boards::{self, BoardList, BoardView, LiveBoards};
use crate::metrics::{DashboardMetrics, Endpoint};
use crate::params::{KnownWindows, LatestParams, LatestRequest, RangeParams, RangeRequest};
use crate::partial;
use crate::resolution::{self, Resolution};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    pub cache: Arc<dyn Cache>,
    pub windows: Arc<KnownWindows>,
    pub metrics: DashboardMetrics,
    pub max_points_per_query: usize,
    /// Named in the `no_data` answer, because "no window yet" usually means "wait".
    pub allowed_lateness: Duration,
    /// The configured dashboards (`[[dashboards]]` and the boards file), already validated.
    pub boards: LiveBoards,
}

/// `axum::extract::Query`, but a malformed query string is a 400 in the shared
/// error shape instead of axum's plain-text rejection.
pub(crate) struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| Params(params))
            .map_err(|rejection| ApiError::bad_request("bad_query", rejection.body_text()))
    }
}

const SOURCE_HEADER: HeaderName = HeaderName::from_static("x-pulse-source");

/// `GET /dashboard`: the latest closed window across the matching series.
///
/// The newest closed window of every matching series, merged: the p95 is the
/// p95 of the union of their points. Read from the cache, or from the store
/// when the cache is cold or down (`source`). With `partial=true`, the window
/// still open when it is newer, marked `"partial": true`: what has arrived so
/// far (the processor publishes it to the cache four times a second).
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "query",
    params(LatestParams),
    responses(
        (status = 200, description = "The newest closed window (or, with `partial=true`, the open one when newer), merged across the matching series", body = LatestAnswer, headers(("X-Pulse-Source" = String, description = "`cache` or `store`"))),
        (status = 400, description = "A parameter is missing or wrong: `bad_query`, `missing_param`, `bad_window`, `bad_tags`, `bad_aggs`, `bad_range`, `bad_group_by`, ... (`message` says which and why)", body = pulse_server::openapi::ErrorBody),
        (status = 404, description = "`no_data`: no closed window of the metric (with the tags) exists yet", body = pulse_server::openapi::ErrorBody),
        (status = 500, description = "`store_error`: the store answered with something it could not have stored (a bug or corruption; see the logs)", body = pulse_server::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store does not answer; retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn dashboard(
    State(state): State<AppState>,
    Params(params): Params<LatestParams>,
) -> Result<Response, ApiError> {
    let request = LatestRequest::parse(&params, &state.windows)?;
    let (mut results, mut source) = latest_results(&state, &request).await?;
    let mut open = Vec::new();
    if request.partial {
        let partials = partial::read(&state, &request.metric, &request.window, &request.tags).await;
        open = partial::still_open(partials, &results);
        if partial::newest_is_open(&results, &open) {
            source = Source::Cache;
        }
    }
    state.metrics.query(Endpoint::Dashboard, source);
    let is_partial = partial::newest_is_open(&results, &open);
    results.append(&mut open);
    let mut answer = answer::latest_answer(
        &request.metric,
        &request.window,
        &results,
        &request.aggs,
        source,
    )
    .ok_or_else(|| no_data(&request, state.allowed_lateness))?;
    answer.partial = is_partial;
    Ok((
        [(SOURCE_HEADER, HeaderValue::from_static(source.as_str()))],
        Json(answer),
    )
        .into_response())
}

/// The cache's results when it has any for the request's series; the store's
/// otherwise. A failing cache only costs latency, so it is logged and counted,
/// never surfaced to the client.
async fn latest_results(
    state: &AppState,
    request: &LatestRequest,
) -> Result<(Vec<WindowResult>, Source), ApiError> {
    match state.cache.latest(&request.metric, &request.window).await {
        Ok(Some(results)) => {
            let matching: Vec<WindowResult> = results
                .into_iter()
                .filter(|r| matches_tags(&r.tags, &request.tags))
                .collect();
            if !matching.is_empty() {
                return Ok((matching, Source::Cache));
            }
        }
        Ok(None) => {}
        Err(error) => {
            warn!(message = "Cache unavailable; answering from the store.", %error);
            state.metrics.cache_error();
        }
    }
    let query = ResultQuery {
        metric: request.metric.clone(),
        window: request.window.clone(),
        tags: request.tags.clone(),
        // `Store::latest` ignores the range and the limit.
        from_ms: TimestampMs::MIN,
        to_ms: TimestampMs::MAX,
        limit: usize::MAX,
    };
    let results = state.store.latest(&query).await.map_err(store_error)?;
    Ok((results, Source::Store))
}

fn no_data(request: &LatestRequest, allowed_lateness: Duration) -> ApiError {
    let filter = if request.tags.is_empty() {
        String::new()
    } else {
        let pairs: Vec<String> = request
            .tags
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        format!(" with tags {}", pairs.join(","))
    };
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_data",
        format!(
            "no closed `{}` window exists yet for metric `{}`{filter}; a window closes once its end plus the allowed lateness ({}s) has passed",
            request.window,
            request.metric,
            allowed_lateness.as_secs_f64()
        ),
    )
}

/// `GET /api/v1/query_range`: merged windows over a time range, optionally grouped.
///
/// One series per combination of the `group_by` values, merged across the
/// rest, with the anomalies found in the range. With `partial=true`, the
/// windows still open in the range too, their points marked `"partial": true`.
#[utoipa::path(
    get,
    path = "/api/v1/query_range",
    tag = "query",
    params(RangeParams),
    responses(
        (status = 200, description = "The windows of the range, per group, at most `max_points` per group (`source_window` and `step_ms` say how coarse)", body = RangeAnswer),
        (status = 400, description = "A parameter is missing or wrong: `bad_query`, `missing_param`, `bad_window`, `bad_tags`, `bad_aggs`, `bad_range`, `bad_group_by`, `bad_step`, `bad_max_points`, ... (`message` says which and why)", body = pulse_server::openapi::ErrorBody),
        (status = 500, description = "`store_error`: the store answered with something it could not have stored (a bug or corruption; see the logs)", body = pulse_server::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store does not answer; retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn query_range(
    State(state): State<AppState>,
    Params(params): Params<RangeParams>,
) -> Result<Json<RangeAnswer>, ApiError> {
    let request = RangeRequest::parse(&params, &state.windows, pulse_core::now_ms())?;
    let resolution = resolution_of(&state.windows, &request)?;
    let query = ResultQuery {
        metric: request.metric.clone(),
        window: resolution.source.clone(),
        tags: request.tags.clone(),
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        // One row more than allowed tells "exactly full" from "cut".
        limit: state.max_points_per_query.saturating_add(1),
    };
    let results = state.store.range(&query).await.map_err(store_error)?;
    state.metrics.query(Endpoint::QueryRange, Source::Store);
    let (mut results, truncated) = answer::trim_to_limit(results, state.max_points_per_query);
    let mut open = Vec::new();
    if request.partial {
        let mut partials =
            partial::read(&state, &request.metric, &resolution.source, &request.tags).await;
        partials.retain(|r| (request.from_ms..request.to_ms).contains(&r.start_ms));
        open = partial::still_open(partials, &results);
        results.extend(open.iter().cloned());
    }
    let mut anomalies = state
        .store
        .anomalies(&AnomalyQuery {
            metric: Some(request.metric.clone()),
            tags: request.tags.clone(),
            from_ms: request.from_ms,
            to_ms: request.to_ms,
            limit: crate::anomalies::MAX_ANOMALIES,
            ..AnomalyQuery::default()
        })
        .await
        .map_err(store_error)?;
    anomalies.retain(|a| a.window == request.window);
    let mut series = answer::group_series(
        results,
        &request.group_by,
        &request.aggs,
        resolution.step_ms,
    );
    partial::mark(&mut series, &open, &request.group_by);
    Ok(Json(RangeAnswer {
        anomalies,
        series,
        metric_name: request.metric,
        window: request.window,
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        source_window: resolution.source,
        step_ms: resolution.step_ms,
        truncated,
    }))
}

/// The stored window and point width of a range request (see [`resolution`]).
fn resolution_of(windows: &KnownWindows, request: &RangeRequest) -> Result<Resolution, ApiError> {
    // `RangeRequest::parse` resolved the label against these same windows.
    let asked = windows
        .specs()
        .iter()
        .find(|w| w.label == request.window)
        .ok_or_else(|| ApiError::bad_request("unknown_window", "the window is not configured"))?;
    resolution::choose(
        windows.specs(),
        asked,
        request.to_ms - request.from_ms,
        request.max_points,
        request.step_ms,
    )
    .map_err(|message| ApiError::bad_request("bad_step", message))
}

/// `GET /api/v1/tags`: the tag keys and values of the series a `query_range`
/// with the same parameters would read (`group_by` and `aggs` are ignored).
#[utoipa::path(
    get,
    path = "/api/v1/tags",
    tag = "query",
    params(RangeParams),
    responses(
        (status = 200, description = "The tag keys and values of the matching series", body = TagsAnswer),
        (status = 400, description = "A parameter is missing or wrong: `bad_query`, `missing_param`, `bad_window`, `bad_tags`, `bad_aggs`, `bad_range`, `bad_group_by`, ... (`message` says which and why)", body = pulse_server::openapi::ErrorBody),
        (status = 500, description = "`store_error`: the store answered with something it could not have stored (a bug or corruption; see the logs)", body = pulse_server::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store does not answer; retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn tags(
    State(state): State<AppState>,
    Params(params): Params<RangeParams>,
) -> Result<Json<TagsAnswer>, ApiError> {
    let request = RangeRequest::parse(&params, &state.windows, pulse_core::now_ms())?;
    let query = ResultQuery {
        metric: request.metric.clone(),
        window: request.window.clone(),
        tags: request.tags.clone(),
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        limit: state.max_points_per_query.saturating_add(1),
    };
    let results = state.store.range(&query).await.map_err(store_error)?;
    state.metrics.query(Endpoint::Tags, Source::Store);
    let truncated = results.len() > state.max_points_per_query;
    let (keys, series) = answer::tag_values(&results);
    Ok(Json(TagsAnswer {
        metric_name: request.metric,
        window: request.window,
        keys,
        series,
        truncated,
    }))
}

/// `GET /api/v1/dashboards`: the boards the UI can show, `default` first.
#[utoipa::path(
    get,
    path = "/api/v1/dashboards",
    tag = "dashboards",
    responses((status = 200, description = "Every board, `default` first", body = BoardList)),
    security((), ("bearer" = []))
)]
pub(crate) async fn dashboards(State(state): State<AppState>) -> Response {
    Json(boards::list(
        &state.boards.current(),
        state.windows.labels(),
    ))
    .into_response()
}

/// `GET /api/v1/dashboards/{name}`: one board's panels with their defaults
/// filled; `default` is made from the stored metrics.
#[utoipa::path(
    get,
    path = "/api/v1/dashboards/{name}",
    tag = "dashboards",
    params(("name" = String, Path, description = "The board's name (`default` is always there)", example = "default")),
    responses(
        (status = 200, description = "The board with every default filled in", body = BoardView),
        (status = 404, description = "`no_such_dashboard`: `details.dashboards` names the boards that exist", body = pulse_server::openapi::ErrorBody),
        (status = 500, description = "`store_error`: the store answered with something it could not have stored (a bug or corruption; see the logs)", body = pulse_server::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store does not answer; retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn dashboard_board(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let windows = state.windows.labels();
    if name == DEFAULT_BOARD {
        let metrics = state.store.metrics().await.map_err(store_error)?;
        state.metrics.query(Endpoint::Metrics, Source::Store);
        return Ok(Json(boards::default_view(&metrics, windows)).into_response());
    }
    let boards = state.boards.current();
    match boards.iter().find(|b| b.name == name) {
        Some(board) => Ok(Json(boards::view(board, windows)).into_response()),
        None => Err(no_such_board(&boards, &name)),
    }
}

/// 404 naming the boards that do exist.
pub(crate) fn no_such_board(boards: &[Board], name: &str) -> ApiError {
    let names: Vec<&str> = std::iter::once(DEFAULT_BOARD)
        .chain(boards.iter().map(|b| b.name.as_str()))
        .collect();
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_dashboard",
        format!(
            "no dashboard named `{name}`; configured: {}",
            names.join(", ")
        ),
    )
    .with_details(json!({ "dashboards": names }))
}

/// `GET /api/v1/metrics`: what can be queried.
#[utoipa::path(
    get,
    path = "/api/v1/metrics",
    tag = "query",
    responses(
        (status = 200, description = "The stored metrics and the configured windows", body = MetricsAnswer),
        (status = 500, description = "`store_error`: the store answered with something it could not have stored (a bug or corruption; see the logs)", body = pulse_server::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store does not answer; retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = state.store.metrics().await.map_err(store_error)?;
    state.metrics.query(Endpoint::Metrics, Source::Store);
    Ok(Json(MetricsAnswer {
        metrics,
        windows: state.windows.labels(),
    })
    .into_response())
}

/// `GET /` for API clients (no `Accept: text/html`): a small index of the API.
/// Browsers get the web UI at the same path (see [`crate::ui`]). It holds no
/// data, so it needs no token.
pub(crate) fn index() -> Json<Value> {
    Json(json!({
        "service": "pulse-dashboard",
        "ui": "open / or /d/<dashboard> in a browser",
        "endpoints": {
            "/dashboard": "latest closed window across series: metric, window, tags?, aggs?, partial?",
            "/api/v1/query_range": "merged windows over time: metric, window, from?, to?, tags?, group_by?, aggs?, max_points?, step?, partial?",
            "/api/v1/metrics": "stored metrics and configured windows",
            "/api/v1/live": "server-sent events of closed windows (and open ones with partial=true): metric?, window?, partial?",
            "/api/v1/anomalies": "anomalies the rules found: metric, from?, to?, rule?, tags?, window?, state?",
            "/api/v1/tags": "tag keys and values of the series in a range: metric, window, from?, to?, tags?",
            "/api/v1/dashboards": "the dashboards the UI shows; /api/v1/dashboards/<name> for one",
            "/healthz": "liveness",
            "/readyz": "readiness of the store",
            "/metrics": "Prometheus metrics",
        },
    }))
}

/// Unknown paths answer in the shared error shape like everything else.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; GET / lists the API")
}

/// A store failure: 503 with `Retry-After` when it is transient, 500 otherwise
/// (corrupt data is the server's fault, never the request's).
pub(crate) fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Unavailable(_) => {
            warn!(message = "Store unavailable.", %error);
            ApiError::unavailable("the store is unavailable; retry shortly", 1)
        }
        // `Fenced` only answers a processor's commit; a query never sees it.
        StoreError::Corrupt(_) | StoreError::Fenced { .. } | StoreError::Other(_) => {
            error!(message = "Store query failed.", %error);
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                "the store could not answer; see the dashboard's logs",
            )
        }
    }
}
