//! The gateway is ready when the bus takes writes: without it every ingest
//! request would end in 503, so a load balancer should send traffic elsewhere.

use std::sync::Arc;

use async_trait::async_trait;
use pulse_engine::bus::BusProducer;
use pulse_server::ReadinessCheck;

/// `/readyz` check that asks the bus whether it currently accepts writes.
pub(crate) struct BusReadiness(pub(crate) Arc<dyn BusProducer>);

#[async_trait]
impl ReadinessCheck for BusReadiness {
    fn name(&self) -> &str {
        "bus"
    }

    async fn check(&self) -> Result<String, String> {
        self.0
            .ready()
            .await
            .map(|()| "accepting writes".to_string())
            .map_err(|e| e.to_string())
    }
}
