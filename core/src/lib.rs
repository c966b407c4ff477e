//! Pulse's pure core: the metric model, series identity, validation, wire codecs,
//! configuration types, and the window and sketch math shared by every role.
//!
//! Nothing in this crate touches the network or a database, so all of it is tested
//! directly and reused unchanged by the gateway, processor, dashboard, sidecar and
//! operator.

pub mod aggregate;
pub mod anomaly;
pub mod auth;
pub mod backoff;
pub mod board;
pub mod codec;
pub mod config;
pub mod counter;
pub mod duration;
pub mod edge;
pub mod histogram;
pub mod idempotency;
pub mod kafka_security;
pub mod names;
pub mod point;
pub mod result;
pub mod series;
pub mod sketch;
pub mod sync;
pub mod test_policy;
pub mod validate;
pub mod window;

pub use aggregate::{AggKind, Aggregate, AggregateParts};
pub use point::{MetricKind, Point, Tags};
pub use result::WindowResult;
pub use series::SeriesId;
pub use sketch::Distribution;
pub use window::WindowSpec;

/// Milliseconds since the Unix epoch, the one time unit used inside Pulse.
pub type TimestampMs = i64;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> TimestampMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
