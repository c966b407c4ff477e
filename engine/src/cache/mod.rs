//! The cache: the latest closed window per series, and a live channel of newly
//! closed windows that feeds `/api/v1/live`.

use async_trait::async_trait;
use futures::stream::BoxStream;
use pulse_core::WindowResult;

pub mod memory;
pub mod redis;

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
}
