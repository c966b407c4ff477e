//! HTTP plumbing shared by every Pulse role: JSON errors, bearer auth, the
//! `/healthz`, `/readyz` and `/metrics` endpoints, request-latency metrics,
//! logging setup and graceful serving.

pub mod auth;
#[cfg(feature = "engine")]
pub mod checks;
pub mod edge;
pub mod error;
pub mod http_metrics;
pub mod ingest;
pub mod openapi;
pub mod ops;
pub mod reload;
pub mod serve;
pub mod telemetry;
pub mod tls;

pub use error::ApiError;
pub use ops::{ReadinessCheck, ops_router};
pub use serve::{Stopping, bind, serve, shutdown_signal};
pub use tls::{CertFiles, ServerTls};
pub use tokio_util::sync::CancellationToken;
