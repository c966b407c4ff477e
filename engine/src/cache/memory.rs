//! The embedded cache: a map of the latest results plus a broadcast channel,
//! and the same pair for the open windows' partials.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use pulse_core::{SeriesId, TimestampMs, WindowResult};
use tokio::sync::broadcast;

use super::{Cache, CacheError, Partial};

/// The partials of one metric and window, by series and window start.
type Partials = HashMap<(SeriesId, TimestampMs), Partial>;

/// How many published windows a slow live subscriber may fall behind before it
/// skips ahead (it is told nothing else; the UI re-queries on reconnect).
const LIVE_BUFFER: usize = 4096;

/// In-process cache for `pulse up`.
pub struct MemoryCache {
    latest: Mutex<HashMap<(String, String), HashMap<SeriesId, WindowResult>>>,
    live: broadcast::Sender<WindowResult>,
    partials: Mutex<HashMap<(String, String), Partials>>,
    partial_live: broadcast::Sender<WindowResult>,
}

impl Default for MemoryCache {
    fn default() -> Self {
        MemoryCache {
            latest: Mutex::new(HashMap::new()),
            live: broadcast::channel(LIVE_BUFFER).0,
            partials: Mutex::new(HashMap::new()),
            partial_live: broadcast::channel(LIVE_BUFFER).0,
        }
    }
}

impl MemoryCache {
    pub fn new() -> MemoryCache {
        MemoryCache::default()
    }

    /// Drops the partials of windows that `results` close.
    fn close_partials(&self, results: &[WindowResult]) {
        let mut partials = pulse_core::sync::lock(&self.partials);
        for result in results {
            let key = (result.metric.clone(), result.window.clone());
            if let Some(open) = partials.get_mut(&key) {
                open.remove(&(result.series_id, result.start_ms));
                if open.is_empty() {
                    partials.remove(&key);
                }
            }
        }
    }
}

fn stream_of(sender: &broadcast::Sender<WindowResult>) -> BoxStream<'static, WindowResult> {
    tokio_stream::wrappers::BroadcastStream::new(sender.subscribe())
        .filter_map(|item| async move { item.ok() })
        .boxed()
}

#[async_trait]
impl Cache for MemoryCache {
    async fn put_latest(&self, results: &[WindowResult]) -> Result<(), CacheError> {
        self.close_partials(results);
        let mut latest = pulse_core::sync::lock(&self.latest);
        for result in results {
            let series = latest
                .entry((result.metric.clone(), result.window.clone()))
                .or_default();
            match series.get(&result.series_id) {
                Some(existing) if existing.start_ms > result.start_ms => {}
                _ => {
                    series.insert(result.series_id, result.clone());
                }
            }
        }
        Ok(())
    }

    async fn latest(
        &self,
        metric: &str,
        window: &str,
    ) -> Result<Option<Vec<WindowResult>>, CacheError> {
        let latest = pulse_core::sync::lock(&self.latest);
        let Some(series) = latest.get(&(metric.to_string(), window.to_string())) else {
            return Ok(None);
        };
        let newest = series.values().map(|r| r.start_ms).max();
        Ok(newest.map(|start| {
            series
                .values()
                .filter(|r| r.start_ms == start)
                .cloned()
                .collect()
        }))
    }

    async fn publish(&self, results: &[WindowResult]) -> Result<(), CacheError> {
        for result in results {
            // An error only means nobody listens right now.
            let _ = self.live.send(result.clone());
        }
        Ok(())
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, WindowResult>, CacheError> {
        Ok(stream_of(&self.live))
    }

    async fn put_partial(&self, given: &[Partial]) -> Result<(), CacheError> {
        let now = pulse_core::now_ms();
        {
            let mut partials = pulse_core::sync::lock(&self.partials);
            // Expired ones go when their metric is written again, so the map
            // holds no more than the open windows of the last expiry span.
            partials.retain(|_, open| {
                open.retain(|_, p| p.expires_ms > now);
                !open.is_empty()
            });
            for partial in given {
                let r = &partial.result;
                partials
                    .entry((r.metric.clone(), r.window.clone()))
                    .or_default()
                    .insert((r.series_id, r.start_ms), partial.clone());
            }
        }
        for partial in given {
            // An error only means nobody listens right now.
            let _ = self.partial_live.send(partial.result.clone());
        }
        Ok(())
    }

    async fn partials(
        &self,
        metric: &str,
        window: &str,
        now_ms: TimestampMs,
    ) -> Result<Vec<WindowResult>, CacheError> {
        let partials = pulse_core::sync::lock(&self.partials);
        Ok(partials
            .get(&(metric.to_string(), window.to_string()))
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|p| p.expires_ms > now_ms)
            .map(|p| p.result.clone())
            .collect())
    }

    async fn subscribe_partial(&self) -> Result<BoxStream<'static, WindowResult>, CacheError> {
        Ok(stream_of(&self.partial_live))
    }
}
