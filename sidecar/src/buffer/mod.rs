//! The buffer between the receivers and the gateway: a directory of
//! append-only segment files, one segment per batch.
//!
//! - Every point a receiver accepts is appended to the open segment by the
//!   [`writer`] before the receiver answers, so an acknowledged point survives
//!   a crash or `kill -9` of the sidecar (see `Fsync` for node crashes).
//! - A segment is closed ("sealed") when it holds `batch.max_points` points or
//!   `batch.max_bytes` bytes, or is `batch.linger` old. Sealed segments are
//!   delivered oldest first, one request each, and deleted only after the
//!   gateway answered 2xx: delivery is at least once, and a duplicate needs a
//!   crash between the gateway's answer and the deletion.
//! - The directory has a byte budget. When a write would exceed it, the oldest
//!   sealed segments that are not being sent are deleted, and their points
//!   counted (`pulse_sidecar_buffer_dropped_points_total{reason="buffer_full"}`)
//!   and logged as a warning.
//! - On start every segment found is checked record by record; a torn tail
//!   (the last write of a crash) is cut off, and the rest is delivered.
//!
//! Memory holds only the metadata of segments and the batch being sent, so a
//! long outage costs disk, not memory.

pub mod segment;
pub mod writer;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::config::Compression;
use crate::metrics::Metrics;

pub use writer::{WriteError, Writer};

/// A sealed segment, as the buffer tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub seq: u64,
    pub bytes: u64,
    pub points: u64,
    pub created_ms: i64,
}

/// A segment read back for sending.
#[derive(Debug)]
pub struct Batch {
    pub seq: u64,
    /// The records' payloads end to end: a compressed request body.
    pub body: Vec<u8>,
    pub codec: Compression,
    pub points: u64,
    pub created_ms: i64,
}

#[derive(Debug, Default)]
struct State {
    sealed: VecDeque<SegmentInfo>,
    /// The segment being sent, which the budget must not delete.
    in_flight: Option<u64>,
    sealed_bytes: u64,
    sealed_points: u64,
    open_bytes: u64,
    open_points: u64,
    /// The last write failure, until a write succeeds again (for `/readyz`).
    write_error: Option<String>,
}

/// What recovery found in the directory at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub points: u64,
    /// Bytes cut off torn or corrupt segment tails.
    pub truncated_bytes: u64,
    /// Files that were not segments, or held no intact record, and were removed.
    pub removed_files: usize,
}

/// The shared side of the buffer: the queue of sealed segments.
pub struct Buffer {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    sealed_ready: Notify,
    metrics: Arc<Metrics>,
}

impl Buffer {
    /// Opens (creating) `dir`, recovers the segments in it, and returns the
    /// buffer and the sequence number of the next segment.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Arc<Buffer>, u64, Recovery)> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if let Some(seq) = segment_seq(&path) {
                found.push((seq, path));
            }
        }
        found.sort();
        let mut recovery = Recovery::default();
        let mut state = State::default();
        for (seq, path) in &found {
            match recover(path)? {
                Some((info, truncated)) => {
                    recovery.segments += 1;
                    recovery.points += info.points;
                    recovery.truncated_bytes += truncated;
                    state.sealed_bytes += allocated(info.bytes);
                    state.sealed_points += info.points;
                    state.sealed.push_back(SegmentInfo { seq: *seq, ..info });
                }
                None => {
                    std::fs::remove_file(path)?;
                    recovery.removed_files += 1;
                }
            }
        }
        let next_seq = found.last().map_or(1, |(seq, _)| seq + 1);
        let buffer = Arc::new(Buffer {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
            sealed_ready: Notify::new(),
            metrics,
        });
        buffer.update_gauges(&buffer.lock());
        Ok((buffer, next_seq, recovery))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        pulse_core::sync::lock(&self.state)
    }

    pub fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016x}.seg"))
    }

    /// The oldest sealed segment, marked as being sent; `None` when nothing is
    /// sealed or a segment is already out.
    pub fn take_next(&self) -> Option<SegmentInfo> {
        let mut state = self.lock();
        if state.in_flight.is_some() {
            return None;
        }
        let next = *state.sealed.front()?;
        state.in_flight = Some(next.seq);
        Some(next)
    }

    /// Whether closed segments are waiting (or being sent). While they are, the
    /// writer does not close the open segment on `batch.linger` alone: during
    /// an outage segments then fill up to a full batch instead of piling up as
    /// many small files.
    pub fn has_backlog(&self) -> bool {
        !self.lock().sealed.is_empty()
    }

    /// Resolves when a segment was sealed since the last call (or is waiting).
    pub async fn sealed(&self) {
        self.sealed_ready.notified().await;
    }

    /// Waits for a sealed segment and takes it (see [`Buffer::take_next`]).
    pub async fn next(&self) -> SegmentInfo {
        loop {
            if let Some(next) = self.take_next() {
                return next;
            }
            self.sealed_ready.notified().await;
        }
    }

    /// Reads a segment back. Records past a damaged one are dropped and
    /// counted (`corrupt`); the intact ones are sent.
    pub fn read(&self, info: &SegmentInfo) -> io::Result<Batch> {
        let bytes = std::fs::read(self.path(info.seq))?;
        let (header, scan) =
            segment::scan(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let points = scan.points();
        if let Some(why) = scan.stopped {
            let lost = info.points.saturating_sub(points);
            tracing::error!(
                message =
                    "A buffer segment is damaged; its intact records are sent, the rest dropped.",
                segment = info.seq,
                reason = why,
                dropped_points = lost
            );
            self.metrics.dropped("corrupt", lost);
        }
        let mut body = Vec::with_capacity(bytes.len());
        for record in &scan.records {
            body.extend_from_slice(record.payload);
        }
        Ok(Batch {
            seq: info.seq,
            body,
            codec: header.codec,
            points,
            created_ms: header.created_ms,
        })
    }

    /// The gateway took segment `seq` (or it can never be sent): delete it.
    pub fn ack(&self, seq: u64) {
        let mut state = self.lock();
        if state.in_flight == Some(seq) {
            state.in_flight = None;
        }
        if let Some(at) = state.sealed.iter().position(|s| s.seq == seq)
            && let Some(info) = state.sealed.remove(at)
        {
            state.sealed_bytes -= allocated(info.bytes);
            state.sealed_points -= info.points;
        }
        if let Err(error) = std::fs::remove_file(self.path(seq))
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(message = "Cannot delete a delivered segment; it may be sent again after a restart.", segment = seq, %error);
        }
        self.update_gauges(&state);
    }

    /// Sending segment `seq` failed; it stays first in line.
    pub fn release(&self, seq: u64) {
        let mut state = self.lock();
        if state.in_flight == Some(seq) {
            state.in_flight = None;
        }
    }

    /// Segments, points and bytes waiting (the open segment included).
    pub fn depth(&self) -> (usize, u64, u64) {
        let state = self.lock();
        (
            state.sealed.len(),
            state.sealed_points + state.open_points,
            state.sealed_bytes + state.open_bytes,
        )
    }

    /// The last write failure, while writes fail.
    pub fn write_error(&self) -> Option<String> {
        self.lock().write_error.clone()
    }

    /// Writer side: a segment was sealed.
    fn push_sealed(&self, info: SegmentInfo) {
        {
            let mut state = self.lock();
            state.open_bytes = 0;
            state.open_points = 0;
            state.sealed_bytes += allocated(info.bytes);
            state.sealed_points += info.points;
            state.sealed.push_back(info);
            self.update_gauges(&state);
        }
        self.sealed_ready.notify_one();
    }

    /// Writer side: the open segment grew (or a write failed: `error`).
    fn open_changed(&self, bytes: u64, points: u64, error: Option<String>) {
        let mut state = self.lock();
        state.open_bytes = allocated(bytes);
        state.open_points = points;
        state.write_error = error;
        self.update_gauges(&state);
    }

    /// Writer side: deletes the oldest segments not being sent until `needed`
    /// more bytes fit in the budget.
    fn make_room(&self, needed: u64) {
        let mut state = self.lock();
        while state.sealed_bytes + state.open_bytes + needed.next_multiple_of(BLOCK)
            > self.max_bytes
        {
            let in_flight = state.in_flight;
            let Some(at) = state.sealed.iter().position(|s| Some(s.seq) != in_flight) else {
                break;
            };
            let Some(victim) = state.sealed.remove(at) else {
                break;
            };
            state.sealed_bytes -= allocated(victim.bytes);
            state.sealed_points -= victim.points;
            if let Err(error) = std::fs::remove_file(self.path(victim.seq)) {
                tracing::warn!(message = "Cannot delete a dropped segment.", segment = victim.seq, %error);
            }
            self.metrics.dropped("buffer_full", victim.points);
            tracing::warn!(
                message = "Buffer is full (buffer.max_bytes): dropped the oldest points to make room. The gateway has been unreachable for too long, or the budget is too small.",
                dropped_points = victim.points,
                segment = victim.seq,
                max_bytes = self.max_bytes
            );
        }
        self.update_gauges(&state);
    }

    fn update_gauges(&self, state: &State) {
        self.metrics.buffer_segments.set(state.sealed.len() as i64);
        self.metrics
            .buffer_points
            .set((state.sealed_points + state.open_points) as i64);
        self.metrics
            .buffer_bytes
            .set((state.sealed_bytes + state.open_bytes) as i64);
    }
}

/// The filesystem's allocation unit, which the budget counts in: a small
/// segment still takes a whole block of the emptyDir.
const BLOCK: u64 = 4096;

/// Bytes a file of `len` bytes occupies on disk.
fn allocated(len: u64) -> u64 {
    len.next_multiple_of(BLOCK)
}

/// `0000000000000001.seg` → 1.
fn segment_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Checks one segment left by an earlier run: cuts a torn or damaged tail off,
/// and says what is left (`None`: nothing usable, remove the file).
fn recover(path: &Path) -> io::Result<Option<(SegmentInfo, u64)>> {
    let bytes = std::fs::read(path)?;
    let (header, scan) = match segment::scan(&bytes) {
        Ok(found) => found,
        Err(reason) => {
            tracing::warn!(message = "Removing a file that is not a readable segment.", path = %path.display(), %reason);
            return Ok(None);
        }
    };
    if scan.records.is_empty() {
        return Ok(None);
    }
    let truncated = (bytes.len() - scan.valid_len) as u64;
    if truncated > 0 {
        tracing::warn!(
            message = "Cut a torn tail off a buffer segment (a write interrupted by a crash); the records before it are kept.",
            path = %path.display(),
            bytes = truncated,
            reason = scan.stopped.unwrap_or("trailing bytes")
        );
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(scan.valid_len as u64)?;
    }
    Ok(Some((
        SegmentInfo {
            seq: 0,
            bytes: scan.valid_len as u64,
            points: scan.points(),
            created_ms: header.created_ms,
        },
        truncated,
    )))
}
