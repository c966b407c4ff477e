//! `GET /api/v1/anomalies`: what the anomaly rules found, from the store, and
//! the anomalies a `query_range` answer carries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::Event;
use futures::stream::{BoxStream, StreamExt};
use pulse_core::anomaly::{AlertState, Anomaly};
use pulse_engine::store::AnomalyQuery;
use pulse_server::ApiError;
use serde::{Deserialize, Serialize};

use crate::api::{AppState, Params, store_error};
use crate::params::{LiveFilter, RangeParams, RangeRequest};
use pulse_engine::store::Store;

/// How often a live subscriber's anomaly feed looks at the store.
const LIVE_POLL: Duration = Duration::from_secs(2);

/// Most anomalies one answer holds (the newest are kept).
pub const MAX_ANOMALIES: usize = 10_000;

/// Raw parameters: `metric` (optional here), `from`, `to`, `tags` as for `query_range`, plus
/// optional `rule`, `window` and `state` (firing or resolved).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnomalyParams {
    /// Only this metric's anomalies (default every metric).
    #[param(example = "cpu_usage")]
    pub metric: Option<String>,
    /// Start of the range: Unix seconds or RFC 3339; default an hour before `to`.
    #[param(example = "2026-11-29T04:00:00Z")]
    pub from: Option<String>,
    /// End of the range: Unix seconds or RFC 3339; default now. At most 400 days after `from`.
    #[param(example = "2026-11-29T05:00:00Z")]
    pub to: Option<String>,
    /// Tag filter `key:value,key:value` (at most 32 keys, each once): only series with all of them.
    #[param(example = "env:prod,host:web-01")]
    pub tags: Option<String>,
    /// Only this rule's anomalies.
    #[param(example = "cpu_high")]
    pub rule: Option<String>,
    /// Only this window: a configured window label (`GET /api/v1/metrics` lists them); 400 `bad_window` otherwise.
    #[param(example = "1m")]
    pub window: Option<String>,
    /// Only anomalies in this state: `firing` or `resolved` (400 `bad_state` otherwise).
    #[param(example = "firing")]
    pub state: Option<String>,
}

/// The `GET /api/v1/anomalies` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnomaliesAnswer {
    /// The matching anomalies, at most 10 000 (the newest).
    #[schema(example = json!([{"id": "3f2a9c0d41b7e655", "rule": "cpu_high", "metric_name": "cpu_usage", "tags": {"host": "web-01"}, "window": "1m", "window_start_ms": 1764393600000_i64, "window_end_ms": 1764393660000_i64, "value": 97.5, "expected": 90.0, "score": 7.5, "state": "firing", "message": "cpu_usage avg 97.5 is above 90 (rule cpu_high)"}]))]
    pub anomalies: Vec<Anomaly>,
}

/// Parses the parameters into a store query (window and range checked as
/// `query_range` checks them).
pub fn query(state: &AppState, params: &AnomalyParams) -> Result<AnomalyQuery, ApiError> {
    // Without `metric`, every metric's anomalies (the UI's list of firing alerts).
    let metric = params.metric.clone().filter(|m| !m.trim().is_empty());
    let range = RangeRequest::parse(
        &RangeParams {
            metric: Some(metric.clone().unwrap_or_else(|| "*".into())),
            // Checked when given; otherwise any configured one passes (no
            // window filter is applied then).
            window: params
                .window
                .clone()
                .filter(|w| !w.is_empty())
                .or_else(|| state.windows.labels().first().cloned()),
            from: params.from.clone(),
            to: params.to.clone(),
            tags: params.tags.clone(),
            ..RangeParams::default()
        },
        &state.windows,
        pulse_core::now_ms(),
    )?;
    let alert_state =
        match params.state.as_deref() {
            None | Some("") => None,
            Some(text) => Some(AlertState::parse(text).ok_or_else(|| {
                ApiError::bad_request("bad_state", "`state` is firing or resolved")
            })?),
        };
    Ok(AnomalyQuery {
        metric: metric.map(|_| range.metric),
        rule: params.rule.clone().filter(|r| !r.trim().is_empty()),
        tags: range.tags,
        state: alert_state,
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        limit: MAX_ANOMALIES,
    })
}

/// `GET /api/v1/anomalies`: what the anomaly rules found, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/anomalies",
    tag = "anomalies",
    params(AnomalyParams),
    responses(
        (status = 200, description = "The matching anomalies", body = AnomaliesAnswer),
        (status = 400, description = "A parameter is missing or wrong: `bad_query`, `bad_state`, `missing_param`, `bad_window`, `bad_tags`, `bad_aggs`, `bad_range`, `bad_group_by`, ... (`message` says which and why)", body = pulse_server::openapi::ErrorBody),
        (status = 500, description = "`store_error`: the store answered with something it could not have stored (a bug or corruption; see the logs)", body = pulse_server::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store does not answer; retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn anomalies(
    State(state): State<AppState>,
    Params(params): Params<AnomalyParams>,
) -> Result<Json<AnomaliesAnswer>, ApiError> {
    let q = query(&state, &params)?;
    let mut anomalies = state.store.anomalies(&q).await.map_err(store_error)?;
    if let Some(window) = params.window.as_deref().filter(|w| !w.is_empty()) {
        anomalies.retain(|a| a.window == window);
    }
    Ok(Json(AnomaliesAnswer { anomalies }))
}

/// The `anomaly` events of `/api/v1/live`: anomalies that fire or resolve
/// after the client connected, found by looking at the store every
/// [`LIVE_POLL`] (anomalies are written by the processor's commits, which
/// the dashboard only sees through the store). A store that fails is tried
/// again at the next poll.
pub(crate) fn live(
    store: Arc<dyn Store>,
    filter: LiveFilter,
) -> BoxStream<'static, Result<Event, axum::Error>> {
    struct Feed {
        store: Arc<dyn Store>,
        filter: LiveFilter,
        since_ms: i64,
        /// What was already sent, with its window start, forgotten once it
        /// falls out of the look-back (which bounds it).
        seen: HashMap<(String, AlertState), i64>,
        first: bool,
    }
    let feed = Feed {
        store,
        filter,
        since_ms: 0,
        seen: HashMap::new(),
        first: true,
    };
    futures::stream::unfold(feed, |mut feed| async move {
        loop {
            if !feed.first {
                tokio::time::sleep(LIVE_POLL).await;
            }
            // Windows a little older than now can still fire (a window closes
            // after its end plus the lateness): look back one day.
            feed.since_ms = pulse_core::now_ms() - 86_400_000;
            let since = feed.since_ms;
            feed.seen.retain(|_, start| *start >= since);
            let query = AnomalyQuery {
                metric: feed.filter.metric.clone(),
                from_ms: feed.since_ms,
                to_ms: i64::MAX,
                limit: MAX_ANOMALIES,
                ..AnomalyQuery::default()
            };
            let Ok(found) = feed.store.anomalies(&query).await else {
                feed.first = false;
                continue;
            };
            let fresh: Vec<Anomaly> = found
                .into_iter()
                .filter(|a| feed.filter.window.as_ref().is_none_or(|w| *w == a.window))
                .filter(|a| {
                    feed.seen
                        .insert((a.id.clone(), a.state), a.window_start_ms)
                        .is_none()
                })
                .collect();
            // What existed at connect time is history (query_range has it).
            if std::mem::take(&mut feed.first) || fresh.is_empty() {
                continue;
            }
            let events: Vec<Result<Event, axum::Error>> = fresh
                .iter()
                .map(|a| Event::default().event("anomaly").json_data(a))
                .collect();
            return Some((futures::stream::iter(events), feed));
        }
    })
    .flatten()
    .boxed()
}
