//! The embedded cache: a map of the latest results plus a broadcast channel.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use pulse_core::{SeriesId, WindowResult};
use tokio::sync::broadcast;

use super::{Cache, CacheError};

/// How many published windows a slow live subscriber may fall behind before it
/// skips ahead (it is told nothing else; the UI re-queries on reconnect).
const LIVE_BUFFER: usize = 4096;

/// In-process cache for `pulse up`.
pub struct MemoryCache {
    latest: Mutex<HashMap<(String, String), HashMap<SeriesId, WindowResult>>>,
    live: broadcast::Sender<WindowResult>,
}

impl Default for MemoryCache {
    fn default() -> Self {
        MemoryCache {
            latest: Mutex::new(HashMap::new()),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }
}

impl MemoryCache {
    pub fn new() -> MemoryCache {
        MemoryCache::default()
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn put_latest(&self, results: &[WindowResult]) -> Result<(), CacheError> {
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
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.live.subscribe())
            .filter_map(|item| async move { item.ok() });
        Ok(stream.boxed())
    }
}
