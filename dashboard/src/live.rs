//! `GET /api/v1/live`: closed windows pushed as server-sent events.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{BoxStream, Stream, StreamExt};
use pulse_core::{AggKind, WindowResult};
use pulse_server::ApiError;

use crate::answer::live_event;
use crate::api::{AppState, Params};
use crate::metrics::SubscriberGuard;
use crate::params::{LiveFilter, LiveParams};

/// Comments sent while no window closes, so proxies keep the connection open and
/// clients notice a dead one.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Streams every newly closed window that passes the optional metric and window
/// filters, with all default aggregations.
pub(crate) async fn live(
    State(state): State<AppState>,
    Params(params): Params<LiveParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, axum::Error>>>, ApiError> {
    let filter = LiveFilter::parse(&params, &state.windows)?;
    let updates = state.cache.subscribe().await.map_err(|error| {
        tracing::warn!(message = "Cannot subscribe to live updates.", %error);
        ApiError::unavailable("live updates are unavailable right now; retry shortly", 5)
    })?;
    let subscription = Subscription {
        updates,
        _guard: state.metrics.live_subscriber(),
    };
    let aggs = AggKind::defaults();
    let anomalies = crate::anomalies::live(state.store.clone(), filter.clone());
    let windows = subscription
        .filter(move |result| std::future::ready(filter.matches(result)))
        .map(move |result| {
            Event::default()
                .event("window")
                .json_data(live_event(&result, &aggs))
        });
    let events = futures::stream::select(windows, anomalies);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
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
