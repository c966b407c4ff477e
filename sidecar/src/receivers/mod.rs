//! The ways an app hands points to the sidecar. Each receiver does only I/O
//! and bookkeeping; parsing is in `crate::parse`, and every receiver ends in
//! [`Intake`]: validation with the pipeline's limits, the pod's tags, the
//! buffer, and the accepted/rejected counters.

pub mod http;
pub mod otlp;
pub mod otlp_grpc;
pub mod prometheus;
pub mod statsd;

use std::sync::Arc;
use std::time::Duration;

use pulse_core::validate::{Limits, PointError, UncheckedPoint, validate};
use pulse_core::{Point, Tags, TimestampMs};

use pulse_server::edge::DecodeBudget;

use crate::buffer::{WriteError, Writer};
use crate::metrics::Metrics;

/// What every receiver shares.
pub struct Intake {
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Added to points that lack the key (`tags` in the config).
    pub static_tags: Tags,
    /// The bytes the HTTP receivers' bodies may hold together (`edge.max_decode_bytes`).
    pub budget: DecodeBudget,
    /// How long a client may take to send a body (`edge.body_timeout`).
    pub body_timeout: Duration,
}

impl Intake {
    /// Validates points, adding the pod's tags first so the limits see the
    /// point as the gateway will. Counts the rejected ones under `receiver`.
    pub fn admit(
        &self,
        receiver: &'static str,
        points: Vec<UncheckedPoint>,
        now_ms: TimestampMs,
    ) -> (Vec<Point>, Vec<PointError>) {
        let mut valid = Vec::with_capacity(points.len());
        let mut errors = Vec::new();
        for (index, mut point) in points.into_iter().enumerate() {
            self.add_static_tags(&mut point.tags);
            match validate(index, point, &self.limits, now_ms) {
                Ok(point) => valid.push(point),
                Err(error) => {
                    self.metrics.rejected(receiver, error.reason.as_str(), 1);
                    errors.push(error);
                }
            }
        }
        (valid, errors)
    }

    /// Adds the configured tags a point does not carry, within the tag limit.
    pub fn add_static_tags(&self, tags: &mut Tags) {
        for (key, value) in &self.static_tags {
            if tags.len() >= self.limits.max_tags {
                break;
            }
            if !tags.contains_key(key) {
                tags.insert(key.clone(), value.clone());
            }
        }
    }

    /// Buffers valid points; counts them as accepted, or as rejected with
    /// reason `buffer_unavailable` when the buffer cannot take them.
    pub async fn write(
        &self,
        receiver: &'static str,
        points: Vec<Point>,
    ) -> Result<usize, WriteError> {
        let count = points.len();
        match self.writer.write(points).await {
            Ok(()) => {
                self.metrics.accepted(receiver, count);
                Ok(count)
            }
            Err(error) => {
                self.metrics.rejected(receiver, "buffer_unavailable", count);
                Err(error)
            }
        }
    }
}

/// Shared by the receivers' tests: an intake over a buffer in a temporary
/// directory.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::Intake;
    use crate::buffer::Buffer;
    use crate::buffer::writer::{Writer, WriterConfig};
    use crate::config::{Compression, Fsync};
    use crate::metrics::Metrics;

    pub struct Fixture {
        pub intake: Arc<Intake>,
        pub buffer: Arc<Buffer>,
        pub _dir: tempfile::TempDir,
    }

    pub fn intake() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let (buffer, next, _) = Buffer::open(dir.path(), 1 << 30, Arc::clone(&metrics)).unwrap();
        let (writer, _thread) = Writer::start(
            Arc::clone(&buffer),
            WriterConfig {
                max_points: 10_000,
                max_bytes: 1 << 20,
                linger: Duration::from_secs(3600),
                fsync: Fsync::None,
                compression: Compression::Zstd,
            },
            next,
        )
        .unwrap();
        Fixture {
            intake: Arc::new(Intake {
                writer,
                metrics,
                limits: Default::default(),
                static_tags: [("pod".to_string(), "web-1".to_string())].into(),
                budget: pulse_server::edge::DecodeBudget::new(64 << 20),
                body_timeout: Duration::from_secs(5),
            }),
            buffer,
            _dir: dir,
        }
    }
}
