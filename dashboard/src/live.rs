//! `GET /api/v1/live`: closed windows pushed as server-sent events.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{BoxStream, Stream, StreamExt};
use pulse_core::{AggKind, WindowResult};
use pulse_server::{ApiError, Stopping};

use crate::answer::live_event;
use crate::api::{AppState, Params};
use crate::metrics::SubscriberGuard;
use crate::params::{LiveFilter, LiveParams};

/// Comments sent while no window closes, so proxies keep the connection open and
/// clients notice a dead one.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Streams every newly closed window that passes the optional metric and window
/// filters, with all default aggregations.
///
/// Server-sent events: a `window` event (data: `LiveEvent`) per newly closed
/// window of a series, and again when late points update it; an `anomaly`
/// event (data: `Anomaly`) when an anomaly fires or resolves; with
/// `partial=true`, a `partial` event (data: `LiveEvent`) per open window as it
/// stands, at most four a second per window (never stored, superseded by its
/// `window` event). A comment every 15 s keeps the connection open. The stream
/// ends only when the server stops.
#[utoipa::path(
    get,
    path = "/api/v1/live",
    tag = "query",
    params(LiveParams),
    responses(
        (status = 200, description = "The event stream (`window` and `partial` events carry a `LiveEvent`, `anomaly` events an `Anomaly`)", content_type = "text/event-stream", body = String, example = "event: window\ndata: {\"metric_name\":\"cpu_usage\",\"window\":\"1m\",\"series_id\":\"9f86d081884c7d65\",\"tags\":{\"host\":\"web-01\"},\"window_start_ms\":1764393600000,\"window_end_ms\":1764393660000,\"aggregations\":{\"avg\":87.3}}\n\n"),
        (status = 400, description = "A parameter is missing or wrong: `bad_query`, `missing_param`, `bad_window`, `bad_tags`, `bad_aggs`, `bad_range`, `bad_group_by`, ... (`message` says which and why)", body = pulse_server::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: live updates cannot be subscribed to right now; retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn live(
    State(state): State<AppState>,
    Params(params): Params<LiveParams>,
    stopping: Option<Extension<Stopping>>,
) -> Result<Sse<impl Stream<Item = Result<Event, axum::Error>>>, ApiError> {
    let filter = LiveFilter::parse(&params, &state.windows)?;
    let updates = state.cache.subscribe().await.map_err(|error| {
        tracing::warn!(message = "Cannot subscribe to live updates.", %error);
        ApiError::unavailable("live updates are unavailable right now; retry shortly", 5)
    })?;
    let partials = if filter.partial {
        state.cache.subscribe_partial().await.map_err(|error| {
            tracing::warn!(message = "Cannot subscribe to partial updates.", %error);
            ApiError::unavailable("live updates are unavailable right now; retry shortly", 5)
        })?
    } else {
        futures::stream::empty().boxed()
    };
    let subscription = Subscription {
        updates,
        _guard: state.metrics.live_subscriber(),
    };
    let anomalies = crate::anomalies::live(state.store.clone(), filter.clone());
    let windows = events(subscription.boxed(), filter.clone(), "window");
    let partials = events(partials, filter, "partial");
    // Ends when the server stops, so a graceful stop need not wait for the client.
    let stopped = stopping.map(|Extension(s)| s).unwrap_or_default().stopped();
    let events = futures::stream::select(futures::stream::select(windows, partials), anomalies)
        .take_until(stopped);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The windows of `updates` that pass `filter`, as events named `name`.
fn events(
    updates: BoxStream<'static, WindowResult>,
    filter: LiveFilter,
    name: &'static str,
) -> impl Stream<Item = Result<Event, axum::Error>> {
    let aggs = AggKind::defaults();
    updates
        .filter(move |result| std::future::ready(filter.matches(result)))
        .map(move |result| {
            Event::default()
                .event(name)
                .json_data(live_event(&result, &aggs))
        })
}

/// The cache's live stream, counted as a subscriber for as long as the client
/// stays: axum drops the stream when the connection closes, and the guard with it.
struct Subscription {
    updates: BoxStream<'static, WindowResult>,
    _guard: SubscriberGuard,
}

impl Stream for Subscription {
    type Item = WindowResult;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WindowResult>> {
        self.updates.poll_next_unpin(cx)
    }
}
