//! Windowed aggregation in memory: which points go into which open windows, when
//! windows close, and what a checkpoint must persist. Pure: no I/O, no clocks
//! except the `Instant`s handed in, so it is tested and benchmarked directly.

pub mod layout;
pub mod marks;
mod partition;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pulse_core::idempotency::BatchRef;
use pulse_core::{Point, SeriesId, TimestampMs, WindowResult, WindowSpec};
use pulse_engine::store::{Checkpoint, Commit, DeadLetter, LateCount};
use tracing::warn;

pub use layout::{Layout, LayoutError};
pub use marks::{Forgotten, MarkPolicy};
pub use partition::{Ingested, PartitionWindows, Restored};

/// How event times are judged against the watermark and the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How far behind the newest event time a point may arrive and still count.
    pub lateness_ms: i64,
    /// How far ahead of the wall clock an event time counts toward the
    /// watermark (see [`crate::watermark`]); `None`: no cap.
    pub max_skew_ms: Option<i64>,
    /// A late point updates its closed window if the window ended less than
    /// this before the partition's watermark; older ones are only counted.
    pub late_horizon_ms: i64,
    /// The wall clock as last told (`Aggregator::set_wall_clock`).
    pub wall_ms: Option<TimestampMs>,
}

impl Timing {
    /// The highest event time that counts toward a watermark right now.
    #[inline]
    pub fn ceiling(&self) -> Option<TimestampMs> {
        self.wall_ms
            .zip(self.max_skew_ms)
            .map(|(wall, skew)| wall.saturating_add(skew))
    }
}

/// The aggregation state of every partition assigned to this processor.
pub struct Aggregator {
    layout: Layout,
    timing: Timing,
    idle: Duration,
    marks: MarkPolicy,
    partitions: BTreeMap<u32, PartitionWindows>,
}

/// What one checkpoint hands to the store, plus what to announce after it landed.
pub struct Checkpointed {
    /// Its `results` are the windows that closed, then (from index `closed`
    /// on) the partials of late points for windows closed before.
    pub commit: Commit,
    pub closed: usize,
    /// Once landed: the windows the store merged (see `Store::commit`).
    pub merged: Vec<WindowResult>,
    /// Offsets to report to the bus once the commit is durable.
    pub offsets: Vec<(u32, u64)>,
    /// Which partition each of the first `closed` of `commit.results` comes
    /// from: (partition, how many), in the results' order. The judge keeps its
    /// state per partition and judges closed windows only, never late partials.
    pub result_partitions: Vec<(u32, usize)>,
    /// Batch keys this checkpoint forgot.
    pub forgotten: Forgotten,
}

/// Restoring a partition failed because stored state does not decode.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition}: checkpointed window state is unreadable: {message}")]
pub struct RestoreError {
    pub partition: u32,
    pub message: String,
}

impl Aggregator {
    pub fn new(
        windows: Vec<WindowSpec>,
        lateness: Duration,
        idle: Duration,
    ) -> Result<Aggregator, LayoutError> {
        Ok(Aggregator {
            layout: Layout::new(windows)?,
            timing: Timing {
                lateness_ms: lateness.as_millis() as i64,
                max_skew_ms: None,
                late_horizon_ms: i64::MAX,
                wall_ms: None,
            },
            idle,
            marks: MarkPolicy {
                horizon_ms: i64::MAX,
                max_spans: usize::MAX,
            },
            partitions: BTreeMap::new(),
        })
    }

    /// How long and how many batch marks each partition keeps (without
    /// this: every mark, forever).
    pub fn bound_marks(mut self, policy: MarkPolicy) -> Self {
        self.marks = policy;
        self
    }

    /// Caps event times at the wall clock plus `max_clock_skew` for the
    /// watermark, and lets late points update their closed windows only
    /// within `late_horizon` (without this: no cap, no horizon).
    pub fn bound_event_time(mut self, max_clock_skew: Duration, late_horizon: Duration) -> Self {
        self.timing.max_skew_ms = Some(duration_ms(max_clock_skew));
        self.timing.late_horizon_ms = duration_ms(late_horizon);
        self
    }

    /// The wall clock, in milliseconds since the epoch, that caps the event
    /// times counted toward watermarks from now on.
    pub fn set_wall_clock(&mut self, now_ms: TimestampMs) {
        self.timing.wall_ms = Some(now_ms);
    }

    /// The configured windows.
    pub fn windows(&self) -> &[WindowSpec] {
        self.layout.windows()
    }

    /// Takes over partitions, resuming from `checkpoint` (what the store holds for
    /// them). Returns the offset to continue reading each one from.
    pub fn assign(
        &mut self,
        partitions: &[u32],
        checkpoint: &Checkpoint,
        now: Instant,
    ) -> Result<Vec<(u32, u64)>, RestoreError> {
        let mut seeks = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let saved = checkpoint.partitions.iter().find(|c| c.partition == p);
            let open = checkpoint.open.iter().filter(|o| o.key.partition == p);
            let (mut windows, restored) =
                PartitionWindows::restore(p, saved, open, &self.layout, now)?;
            let marks = checkpoint.marks.iter().filter(|m| m.partition == p);
            windows.set_marks(
                marks::Marks::restore(marks).map_err(|message| RestoreError {
                    partition: p,
                    message,
                })?,
            );
            if restored.merged_away > 0 {
                warn!(
                    message = "Saved windows of definitions no longer configured were merged into the configured windows they fed.",
                    partition = p,
                    windows = restored.merged_away
                );
            }
            if restored.unresolved > 0 {
                warn!(
                    message = "Saved windows were due in a removed window definition whose onward targets are unknown; windows downstream of it miss their open part.",
                    partition = p,
                    windows = restored.unresolved
                );
            }
            seeks.push((p, windows.next_offset()));
            self.partitions.insert(p, windows);
        }
        Ok(seeks)
    }

    /// Drops partitions that were revoked (after their last checkpoint).
    pub fn revoke(&mut self, partitions: &[u32]) {
        for p in partitions {
            self.partitions.remove(p);
        }
    }

    /// Assigned partitions.
    pub fn assigned(&self) -> impl Iterator<Item = u32> + '_ {
        self.partitions.keys().copied()
    }

    /// Adds one decoded record. Records of unassigned partitions (in flight
    /// across a rebalance) are ignored: their new owner reads them again.
    /// `key` is the series id the record claims (its bus key), if any; see
    /// [`PartitionWindows::ingest`].
    #[inline]
    pub fn ingest(
        &mut self,
        partition: u32,
        offset: u64,
        key: Option<SeriesId>,
        point: Point,
        now: Instant,
    ) -> Ingested {
        match self.partitions.get_mut(&partition) {
            Some(p) => p.ingest(offset, key, point, &self.layout, &self.timing, now),
            None => Ingested::default(),
        }
    }

    /// Whether the record at `offset`, a point of a keyed batch at `batch`
    /// with event time `ts`, is new to its partition; a duplicate is passed
    /// over and must not be ingested (see [`marks`]).
    #[inline]
    pub fn admit(
        &mut self,
        partition: u32,
        offset: u64,
        batch: &BatchRef,
        ts: TimestampMs,
    ) -> bool {
        match self.partitions.get_mut(&partition) {
            Some(p) => p.admit(offset, batch, ts),
            // Not ours (in flight across a rebalance): `ingest` ignores it.
            None => true,
        }
    }

    /// Batch keys remembered, across partitions.
    pub fn batch_keys(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionWindows::batch_keys)
            .sum()
    }

    /// Moves past a record that could not be decoded, keeping it for the
    /// store's dead letters (it is counted and logged by the caller).
    pub fn dead_letter(&mut self, partition: u32, offset: u64, reason: String, payload: Vec<u8>) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.dead_letter(DeadLetter {
                partition,
                offset,
                reason,
                payload,
            });
        }
    }

    /// Lets idle partitions' watermarks follow the wall clock, then closes every
    /// window the watermarks have passed. Returns how many windows closed.
    ///
    /// Only partitions in `caught_up` (read to the end of the bus) may count as
    /// idle. A partition whose records wait unread, because the processor was
    /// held up by a store outage or is working through a backlog, has not gone
    /// quiet: moving its watermark to the wall clock would make the waiting
    /// records late.
    pub fn advance(&mut self, now_ms: TimestampMs, now: Instant, caught_up: &[u32]) -> usize {
        self.set_wall_clock(now_ms);
        let mut closed = 0;
        for (id, p) in self.partitions.iter_mut() {
            if caught_up.contains(id) {
                p.idle_advance(now_ms, now, self.idle, self.timing.lateness_ms);
            }
            closed += p.close_ready(&self.layout);
        }
        closed
    }

    /// Closes windows passed by the watermark, without consulting the wall clock.
    pub fn close_ready(&mut self) -> usize {
        self.partitions
            .values_mut()
            .map(|p| p.close_ready(&self.layout))
            .sum()
    }

    /// Everything to persist for `partitions` (all when `None`) since the last
    /// checkpoint: closed results, raw points, changed open windows, late counts
    /// and offsets. The caller writes it atomically, and only after the previous
    /// checkpoint landed; ingesting may go on meanwhile (`run.rs` aggregates the
    /// next records while one checkpoint is in flight), since what arrives after
    /// this call belongs to the next checkpoint.
    pub fn checkpoint(&mut self, partitions: Option<&[u32]>) -> Checkpointed {
        let mut commit = Commit::default();
        let mut offsets = Vec::new();
        let mut result_partitions = Vec::new();
        let mut late: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut partials = Vec::new();
        let mut forgotten = Forgotten::default();
        for (&id, p) in self.partitions.iter_mut() {
            if partitions.is_some_and(|only| !only.contains(&id)) {
                continue;
            }
            let before = commit.results.len();
            p.drain_into(&mut commit, &mut partials, &mut late, &self.layout);
            let f = p.drain_marks(&self.marks, &mut commit);
            forgotten.expired += f.expired;
            forgotten.evicted += f.evicted;
            result_partitions.push((id, commit.results.len() - before));
            offsets.push((id, p.next_offset()));
        }
        let closed = commit.results.len();
        commit.results.append(&mut partials);
        commit.late = late
            .into_iter()
            .map(|((metric, window), count)| LateCount {
                metric,
                window,
                count,
            })
            .collect();
        Checkpointed {
            commit,
            closed,
            merged: Vec::new(),
            offsets,
            result_partitions,
            forgotten,
        }
    }

    /// The open windows as they stand of series changed since the last call
    /// (every series when `all`), about `max` at most, and how many series
    /// were left for the next call. Never part of a checkpoint (see
    /// the partition's `partial` module).
    pub fn partials(&mut self, all: bool, max: usize) -> (Vec<WindowResult>, usize) {
        let mut out = Vec::new();
        let mut left = 0;
        for p in self.partitions.values_mut() {
            left += p.partials_into(all, max, &self.layout, &mut out);
        }
        (out, left)
    }

    /// Windows currently open, across partitions.
    pub fn open_windows(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionWindows::open_windows)
            .sum()
    }

    /// Per partition: next offset to read and current watermark.
    pub fn progress(&self) -> Vec<(u32, u64, Option<TimestampMs>)> {
        self.partitions
            .iter()
            .map(|(&id, p)| (id, p.next_offset(), p.watermark()))
            .collect()
    }
}

/// The windows of a landed commit as the store now holds them: `results`,
/// each key once, with those the store merged (`merged`, from
/// `Store::commit`) in place of the partials given. What the cache and the
/// live stream get, so they show whole windows, never a partial.
pub fn as_stored(results: Vec<WindowResult>, merged: Vec<WindowResult>) -> Vec<WindowResult> {
    let mut by_key: BTreeMap<(String, String, TimestampMs, SeriesId), WindowResult> = results
        .into_iter()
        .map(|r| {
            (
                (r.metric.clone(), r.window.clone(), r.start_ms, r.series_id),
                r,
            )
        })
        .collect();
    for r in merged {
        by_key.insert(
            (r.metric.clone(), r.window.clone(), r.start_ms, r.series_id),
            r,
        );
    }
    by_key.into_values().collect()
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
