//! The admin endpoints: `/healthz`, `/readyz` and `/metrics`, from the shared
//! `pulse_server::ops_router`.
//!
//! Ready means the sidecar can take points: its listeners are bound (it only
//! serves after that) and the buffer directory takes writes. An unreachable
//! gateway does *not* make it unready — the buffer exists for exactly that, and
//! an unready sidecar would take its whole pod out of service. The gateway's
//! circuit is reported as a detail instead.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pulse_server::ReadinessCheck;

use crate::buffer::Buffer;
use crate::forward::Circuit;

/// Not ready while writes to the buffer directory fail.
pub struct BufferCheck(pub Arc<Buffer>);

#[async_trait]
impl ReadinessCheck for BufferCheck {
    fn name(&self) -> &str {
        "buffer"
    }

    async fn check(&self) -> Result<String, String> {
        if let Some(error) = self.0.write_error() {
            return Err(format!("cannot write to the buffer directory: {error}"));
        }
        let (segments, points, bytes) = self.0.depth();
        Ok(format!(
            "{points} points waiting ({segments} closed batches, {bytes} bytes on disk)"
        ))
    }
}

/// Reports the gateway's circuit; always ready.
pub struct GatewayCheck(pub Arc<Mutex<(Circuit, u32)>>);

#[async_trait]
impl ReadinessCheck for GatewayCheck {
    fn name(&self) -> &str {
        "gateway"
    }

    async fn check(&self) -> Result<String, String> {
        let (circuit, failures) = *pulse_core::sync::lock(&self.0);
        Ok(match circuit {
            Circuit::Closed if failures == 0 => "delivering".to_string(),
            Circuit::Closed => format!("retrying after {failures} failed attempts; buffering"),
            Circuit::Open => format!("circuit open after {failures} failed attempts; buffering"),
            Circuit::HalfOpen => "circuit half-open: probing the gateway; buffering".to_string(),
        })
    }
}
