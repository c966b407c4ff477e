//! Readiness checks more than one role needs.

use std::sync::Arc;

use async_trait::async_trait;
use pulse_engine::store::Store;

use crate::ReadinessCheck;

/// Ready while the store answers. The processor cannot commit and the dashboard
/// cannot answer without it; the cache is optional by design and not checked.
pub struct StoreReady(pub Arc<dyn Store>);

#[async_trait]
impl ReadinessCheck for StoreReady {
    fn name(&self) -> &str {
        "store"
    }

    async fn check(&self) -> Result<String, String> {
        self.0.ready().await.map_err(|e| e.to_string())
    }
}
