//! The one writer of the buffer: a thread that appends records to the open
//! segment and seals it.
//!
//! Receivers hand it points and (usually) wait for the answer. Whatever queued
//! up while it was busy is written as one record — a group commit — so under
//! load many requests share one compression frame, one `write` and, with
//! `fsync = "always"`, one flush. Disk I/O and compression happen on this thread,
//! never on the runtime that serves the receivers.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_core::Point;
use tokio::sync::{mpsc, oneshot};

use super::segment::{self, Header};
use super::{Buffer, SegmentInfo};
use crate::config::{Compression, Fsync};
use crate::encode::{Compressor, ndjson};

/// Why points could not be buffered. The receiver answers 503 (HTTP, OTLP) or
/// counts them as dropped (StatsD, Prometheus).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the buffer directory cannot be written: {0}")]
    Io(String),
    #[error("the sidecar is shutting down")]
    Closed,
    #[error("the buffer did not take the points within {} s (a stalled disk?)", WRITE_TIMEOUT.as_secs())]
    Stalled,
}

/// How long a receiver waits for the writer before giving up (a 503 for HTTP
/// clients, which retry). Points queued meanwhile may still be written, so a
/// retry after this can duplicate them: at least once, as everywhere.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

enum Msg {
    Write {
        points: Vec<Point>,
        ack: Option<oneshot::Sender<Result<(), WriteError>>>,
    },
    /// Wakes the thread so it can seal a segment older than the linger.
    Tick,
    /// Seal the open segment now (shutdown).
    Seal(oneshot::Sender<()>),
}

/// What the writer needs to know.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub max_points: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub fsync: Fsync,
    pub compression: Compression,
}

/// The receivers' handle on the writer.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
}

impl Writer {
    /// Starts the writer thread and its linger ticker (on the current runtime).
    pub fn start(
        buffer: Arc<Buffer>,
        config: WriterConfig,
        next_seq: u64,
    ) -> io::Result<(Writer, std::thread::JoinHandle<()>)> {
        // Enough to absorb a burst of requests while a write is in progress;
        // when full, receivers wait (backpressure) rather than grow memory.
        let (tx, rx) = mpsc::channel(256);
        let thread = SegmentWriter {
            compressor: Compressor::new(config.compression)?,
            buffer,
            config: config.clone(),
            next_seq,
            open: None,
            text: Vec::new(),
            payload: Vec::new(),
            record: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("buffer-writer".into())
            .spawn(move || thread.run(rx))?;
        let weak = tx.downgrade();
        let every =
            (config.linger / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                // Ends with the last writer handle, so the thread can finish.
                let Some(tx) = weak.upgrade() else { break };
                if tx.send(Msg::Tick).await.is_err() {
                    break;
                }
            }
        });
        Ok((Writer { tx }, handle))
    }

    /// Buffers `points` and returns once they are in the segment file.
    pub async fn write(&self, points: Vec<Point>) -> Result<(), WriteError> {
        if points.is_empty() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        let write = async {
            self.tx
                .send(Msg::Write {
                    points,
                    ack: Some(ack),
                })
                .await
                .map_err(|_| WriteError::Closed)?;
            done.await.unwrap_or(Err(WriteError::Closed))
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .unwrap_or(Err(WriteError::Stalled))
    }

    /// Seals the open segment, so everything written so far can be sent.
    pub async fn seal(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Seal(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// The messages taken for one write.
#[derive(Default)]
struct Group {
    points: Vec<Point>,
    acks: Vec<oneshot::Sender<Result<(), WriteError>>>,
    seals: Vec<oneshot::Sender<()>>,
}

impl Group {
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Write { points, ack } => {
                if self.points.is_empty() {
                    self.points = points;
                } else {
                    self.points.extend(points);
                }
                self.acks.extend(ack);
            }
            Msg::Tick => {}
            Msg::Seal(ack) => self.seals.push(ack),
        }
    }
}

struct OpenSegment {
    seq: u64,
    file: File,
    /// File length: header and intact records.
    bytes: u64,
    points: u64,
    /// NDJSON bytes before compression (what `batch.max_bytes` limits).
    raw_bytes: usize,
    opened: Instant,
    created_ms: i64,
}

struct SegmentWriter {
    buffer: Arc<Buffer>,
    config: WriterConfig,
    compressor: Compressor,
    next_seq: u64,
    open: Option<OpenSegment>,
    /// Reused buffers: NDJSON text, its compressed frame, and the record.
    text: Vec<u8>,
    payload: Vec<u8>,
    record: Vec<u8>,
}

impl SegmentWriter {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = Group::default();
            group.take(first);
            // Group commit: everything already queued goes into this write.
            while group.points.len() < self.config.max_points && group.seals.is_empty() {
                match rx.try_recv() {
                    Ok(msg) => group.take(msg),
                    Err(_) => break,
                }
            }
            let Group {
                points,
                acks,
                seals,
            } = group;
            let result = self.append(&points);
            for ack in acks {
                let _ = ack.send(result.clone());
            }
            let lingered = self
                .open
                .as_ref()
                .is_some_and(|open| open.opened.elapsed() >= self.config.linger)
                && !self.buffer.has_backlog();
            if lingered || !seals.is_empty() {
                self.seal();
            }
            for ack in seals {
                let _ = ack.send(());
            }
        }
        // Every handle is gone: leave nothing open.
        self.seal();
    }

    /// Appends `points`, as as many records and segments as the batch limits
    /// require.
    fn append(&mut self, points: &[Point]) -> Result<(), WriteError> {
        let mut rest = points;
        while !rest.is_empty() {
            if self.open.is_none() {
                self.open = Some(self.create().map_err(|e| self.failed(e))?);
            }
            let (room_points, room_bytes) = self.open.as_ref().map_or((0, 0), |open| {
                (
                    self.config.max_points.saturating_sub(open.points as usize),
                    self.config.max_bytes.saturating_sub(open.raw_bytes),
                )
            });
            // Encode point by point so a record never overshoots the byte
            // limit by more than one point (at least one always fits).
            self.text.clear();
            let mut taken = 0;
            let mut lines = 0;
            for point in rest {
                if taken >= room_points.max(1) || (taken > 0 && self.text.len() >= room_bytes) {
                    break;
                }
                lines += ndjson(std::slice::from_ref(point), &mut self.text);
                taken += 1;
            }
            rest = &rest[taken..];
            if lines > 0 {
                self.write_record(lines as u32)
                    .map_err(|e| self.failed(e))?;
            }
            let full = self.open.as_ref().is_some_and(|open| {
                open.points as usize >= self.config.max_points
                    || open.raw_bytes >= self.config.max_bytes
            });
            if full {
                self.seal();
            }
        }
        Ok(())
    }

    fn write_record(&mut self, points: u32) -> io::Result<()> {
        self.compressor
            .compress_into(&self.text, &mut self.payload)?;
        self.record.clear();
        segment::encode_record(points, &self.payload, &mut self.record);
        self.buffer.make_room(self.record.len() as u64);
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        if let Err(error) = open.file.write_all(&self.record) {
            // Cut a partial record off, so the file stays a clean sequence of
            // records; if even that fails, recovery will cut it at restart.
            let _ = open.file.set_len(open.bytes);
            return Err(error);
        }
        if self.config.fsync == Fsync::Always {
            open.file.sync_data()?;
        }
        open.bytes += self.record.len() as u64;
        open.points += u64::from(points);
        open.raw_bytes += self.text.len();
        self.buffer.open_changed(open.bytes, open.points, None);
        Ok(())
    }

    fn create(&mut self) -> io::Result<OpenSegment> {
        let seq = self.next_seq;
        let path = self.buffer.path(seq);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let created_ms = pulse_core::now_ms();
        let header = Header {
            codec: self.compressor.codec(),
            created_ms,
        };
        file.write_all(&header.encode())?;
        if self.config.fsync == Fsync::Always {
            file.sync_data()?;
            sync_dir(&path)?;
        }
        self.next_seq += 1;
        Ok(OpenSegment {
            seq,
            file,
            bytes: segment::HEADER_LEN as u64,
            points: 0,
            raw_bytes: 0,
            opened: Instant::now(),
            created_ms,
        })
    }

    /// Closes the open segment and hands it to the forwarder. A segment without
    /// records is removed instead.
    fn seal(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        let path = self.buffer.path(open.seq);
        if open.points == 0 {
            let _ = std::fs::remove_file(&path);
            self.buffer.open_changed(0, 0, None);
            return;
        }
        if self.config.fsync == Fsync::Seal
            && let Err(error) = open.file.sync_all().and_then(|()| sync_dir(&path))
        {
            tracing::warn!(message = "Cannot fsync a sealed segment.", segment = open.seq, %error);
        }
        self.buffer.push_sealed(SegmentInfo {
            seq: open.seq,
            bytes: open.bytes,
            points: open.points,
            created_ms: open.created_ms,
        });
    }

    /// Records a failed write: counted, logged, shown on `/readyz`.
    fn failed(&mut self, error: io::Error) -> WriteError {
        self.buffer.metrics.buffer_write_errors.inc();
        tracing::error!(message = "Cannot write to the buffer directory; points are refused until it works again.", %error);
        let (bytes, points) = self
            .open
            .as_ref()
            .map_or((0, 0), |open| (open.bytes, open.points));
        self.buffer
            .open_changed(bytes, points, Some(error.to_string()));
        WriteError::Io(error.to_string())
    }
}

/// Makes a new directory entry durable.
fn sync_dir(path: &std::path::Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use pulse_core::Tags;

    use super::*;
    use crate::metrics::Metrics;

    fn points(n: usize, from: usize) -> Vec<Point> {
        (from..from + n)
            .map(|i| Point {
                metric: "m".into(),
                tags: Tags::from([("id".to_string(), i.to_string())]),
                value: i as f64,
                timestamp_ms: 1_721_199_945_000,
                kind: pulse_core::MetricKind::Gauge,
                sketch: None,
            })
            .collect()
    }

    fn config(max_points: usize) -> WriterConfig {
        WriterConfig {
            max_points,
            max_bytes: 1 << 20,
            linger: Duration::from_secs(3600),
            fsync: Fsync::None,
            compression: Compression::Zstd,
        }
    }

    #[tokio::test]
    async fn writes_split_into_segments_of_at_most_max_points_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let (buffer, next, _) = Buffer::open(dir.path(), 1 << 30, Arc::clone(&metrics)).unwrap();
        let (writer, thread) = Writer::start(Arc::clone(&buffer), config(100), next).unwrap();
        writer.write(points(250, 0)).await.unwrap();
        assert_eq!(buffer.depth(), (2, 250, buffer.depth().2));
        writer.seal().await;
        assert_eq!(buffer.depth().0, 3);
        drop(writer);
        thread.join().unwrap();

        let (reopened, next, recovery) = Buffer::open(dir.path(), 1 << 30, metrics).unwrap();
        assert_eq!((recovery.segments, recovery.points, next), (3, 250, 4));
        let first = reopened.take_next().unwrap();
        assert_eq!(first.points, 100);
        let batch = reopened.read(&first).unwrap();
        let body =
            pulse_core::codec::body::decode_content(Some("zstd"), &batch.body, 1 << 24).unwrap();
        let parsed = pulse_core::codec::body::parse_points(
            &body,
            &pulse_core::validate::Limits {
                max_past: Duration::from_secs(u32::MAX.into()),
                ..Default::default()
            },
            1000,
            1_721_199_945_000,
        )
        .unwrap();
        assert_eq!(parsed.into_points(), points(100, 0));
        reopened.ack(first.seq);
        assert_eq!(reopened.depth().0, 2);
    }

    #[tokio::test]
    async fn a_full_budget_drops_the_oldest_segment_not_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        // The size of one segment of 200 points, measured in a scratch buffer.
        let scratch = tempfile::tempdir().unwrap();
        let (probe, next, _) = Buffer::open(scratch.path(), 1 << 30, Arc::clone(&metrics)).unwrap();
        let (probe_writer, _probe_thread) =
            Writer::start(Arc::clone(&probe), config(200), next).unwrap();
        probe_writer.write(points(200, 0)).await.unwrap();
        // The budget counts whole 4 KiB blocks.
        let segment_bytes = probe.take_next().unwrap().bytes.next_multiple_of(4096);
        // Room for two and a half such segments.
        let budget = segment_bytes * 5 / 2;
        let (buffer, next, _) = Buffer::open(dir.path(), budget, Arc::clone(&metrics)).unwrap();
        let (writer, _thread) = Writer::start(Arc::clone(&buffer), config(200), next).unwrap();
        writer.write(points(200, 0)).await.unwrap();
        let in_flight = buffer.take_next().unwrap();
        for i in 1..6 {
            writer.write(points(200, i * 200)).await.unwrap();
        }
        let (segments, _, bytes) = buffer.depth();
        assert!(bytes <= budget + segment_bytes / 10, "{bytes} > {budget}");
        assert!(segments >= 1);
        let dropped = metrics
            .buffer_dropped_points
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: "buffer_full",
            })
            .get();
        assert!(dropped >= 200, "{dropped}");
        // The segment being sent was kept.
        assert!(buffer.path(in_flight.seq).exists());
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_at_reopening_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let (buffer, next, _) = Buffer::open(dir.path(), 1 << 30, Arc::clone(&metrics)).unwrap();
        let (writer, thread) = Writer::start(Arc::clone(&buffer), config(1000), next).unwrap();
        writer.write(points(10, 0)).await.unwrap();
        writer.write(points(10, 10)).await.unwrap();
        drop(writer);
        thread.join().unwrap();
        let path = buffer.path(1);
        let len = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of the second record.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        std::fs::write(dir.path().join("0000000000000009.seg"), b"garbage").unwrap();
        let (reopened, next, recovery) = Buffer::open(dir.path(), 1 << 30, metrics).unwrap();
        assert_eq!(recovery.segments, 1);
        assert_eq!(recovery.points, 10);
        assert_eq!(recovery.removed_files, 1);
        assert!(recovery.truncated_bytes > 0);
        assert_eq!(next, 10);
        assert_eq!(reopened.take_next().unwrap().points, 10);
    }
}
