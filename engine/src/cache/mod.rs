//! The cache: the latest closed window per series, and a live channel of newly
//! closed windows that feeds `/api/v1/live`; beside them, the windows still
//! open as the processor last published them (partials), for answers with
//! `partial=true` and the live stream's `partial` events.

use async_trait::async_trait;
use futures::stream::BoxStream;
use pulse_core::{TimestampMs, WindowResult};

pub mod memory;
pub mod redis;

/// An open window as it stands: what has arrived so far, never a result.
/// The cache forgets it at `expires_ms` (so a processor that died leaves no
/// partial behind for longer) or as soon as `put_latest` records the window
/// closed, whichever comes first.
#[derive(Debug, Clone)]
pub struct Partial {
    pub result: WindowResult,
    pub expires_ms: TimestampMs,
}

/// Cache failures. The dashboard treats every one as "cold": it answers from the
/// store instead and says so.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Cache: Send + Sync {
    /// Records `results` as the latest of their series, unless a newer window
    /// of that series is already cached.
    async fn put_latest(&self, results: &[WindowResult]) -> Result<(), CacheError>;

    /// The cached results of the newest window start of `metric`/`window`
    /// across series, or `None` when the cache knows nothing of it (cold).
    async fn latest(
        &self,
        metric: &str,
        window: &str,
    ) -> Result<Option<Vec<WindowResult>>, CacheError>;

    /// Announces newly closed windows to live subscribers.
    async fn publish(&self, results: &[WindowResult]) -> Result<(), CacheError>;

    /// Every window published from now on.
    async fn subscribe(&self) -> Result<BoxStream<'static, WindowResult>, CacheError>;

    /// Records open windows as they stand, each replacing the earlier state of
    /// the same (series, window, start), and announces them to partial
    /// subscribers. `put_latest` of the same window removes it.
    async fn put_partial(&self, partials: &[Partial]) -> Result<(), CacheError>;

    /// The open windows of `metric`/`window` that have not expired at `now_ms`.
    async fn partials(
        &self,
        metric: &str,
        window: &str,
        now_ms: TimestampMs,
    ) -> Result<Vec<WindowResult>, CacheError>;

    /// Every partial published from now on.
    async fn subscribe_partial(&self) -> Result<BoxStream<'static, WindowResult>, CacheError>;
}
