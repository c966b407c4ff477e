//! Open windows of one partition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pulse_core::codec::state::{decode_state, encode_state};
use pulse_core::{Aggregate, Point, SeriesId, Tags, TimestampMs, WindowResult, WindowSpec};
use pulse_engine::store::{Commit, OpenWindowKey, OpenWindowState, PartitionCheckpoint};
use rustc_hash::FxHashMap;

use super::RestoreError;
use crate::watermark::Clock;

/// An open window: identity `(series, window index, start)`.
type Key = (SeriesId, u16, TimestampMs);

struct Open {
    metric: String,
    tags: Tags,
    agg: Aggregate,
    /// Changed since the last checkpoint.
    dirty: bool,
    /// Some state of it is in the store, so closing it must delete that.
    persisted: bool,
}

/// What ingesting one point did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// Windows the point was added to.
    pub windows: usize,
    /// Window definitions for which the point arrived after its window closed.
    pub late: usize,
    /// The point's id matched an open window of a different name/tags.
    pub collision: bool,
}

/// Open windows, watermark and pending output of one partition.
pub struct PartitionWindows {
    partition: u32,
    next_offset: u64,
    clock: Clock,
    open: FxHashMap<Key, Open>,
    /// Open windows by end time, so closing touches only what is due.
    by_end: BTreeMap<TimestampMs, Vec<Key>>,
    /// Output since the last checkpoint.
    closed: Vec<WindowResult>,
    closed_persisted: Vec<OpenWindowKey>,
    raw: Vec<Point>,
    late: FxHashMap<(String, u16), u64>,
}

impl PartitionWindows {
    /// Rebuilds a partition from its checkpoint (or starts it fresh).
    pub fn restore<'a>(
        partition: u32,
        saved: Option<&PartitionCheckpoint>,
        open: impl Iterator<Item = &'a OpenWindowState>,
        windows: &[WindowSpec],
        now: Instant,
    ) -> Result<PartitionWindows, RestoreError> {
        let mut p = PartitionWindows {
            partition,
            next_offset: saved.map_or(0, |s| s.next_offset),
            clock: Clock::resume(
                saved.and_then(|s| s.max_event_ts),
                saved.and_then(|s| s.watermark),
                now,
            ),
            open: FxHashMap::default(),
            by_end: BTreeMap::new(),
            closed: Vec::new(),
            closed_persisted: Vec::new(),
            raw: Vec::new(),
            late: FxHashMap::default(),
        };
        for state in open {
            // A window whose definition was removed from the config since the
            // checkpoint cannot be continued; its state is dropped from the store
            // at the next checkpoint.
            let Some(index) = windows.iter().position(|w| w.label == state.key.window) else {
                p.closed_persisted.push(state.key.clone());
                continue;
            };
            let (metric, tags, agg) = decode_state(&state.state).map_err(|e| RestoreError {
                partition,
                message: e.to_string(),
            })?;
            let key = (state.key.series_id, index as u16, state.key.start_ms);
            p.by_end
                .entry(windows[index].end(key.2))
                .or_default()
                .push(key);
            p.open.insert(
                key,
                Open {
                    metric,
                    tags,
                    agg,
                    dirty: false,
                    persisted: true,
                },
            );
        }
        Ok(p)
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn watermark(&self) -> Option<TimestampMs> {
        self.clock.watermark
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    pub fn skip(&mut self, offset: u64) {
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// Adds a point to every open window of every definition it falls into.
    pub fn ingest(
        &mut self,
        offset: u64,
        point: Point,
        windows: &[WindowSpec],
        lateness_ms: i64,
        now: Instant,
    ) -> Ingested {
        self.next_offset = self.next_offset.max(offset + 1);
        let series = point.series_id();
        let mut outcome = Ingested::default();
        for (index, spec) in windows.iter().enumerate() {
            let mut skipped = false;
            for start in spec.starts(point.timestamp_ms) {
                let end = spec.end(start);
                if self.clock.is_closed(end) {
                    skipped = true;
                    continue;
                }
                let key = (series, index as u16, start);
                let open = self.open.entry(key).or_insert_with(|| {
                    self.by_end.entry(end).or_default().push(key);
                    Open {
                        metric: point.metric.clone(),
                        tags: point.tags.clone(),
                        agg: Aggregate::new(),
                        dirty: true,
                        persisted: false,
                    }
                });
                if open.metric != point.metric || open.tags != point.tags {
                    outcome.collision = true;
                    continue;
                }
                open.agg.add(point.value, point.timestamp_ms);
                open.dirty = true;
                outcome.windows += 1;
            }
            if skipped {
                outcome.late += 1;
                *self
                    .late
                    .entry((point.metric.clone(), index as u16))
                    .or_default() += 1;
            }
        }
        self.clock.observe(point.timestamp_ms, lateness_ms, now);
        self.raw.push(point);
        outcome
    }

    pub fn idle_advance(
        &mut self,
        now_ms: TimestampMs,
        now: Instant,
        idle: Duration,
        lateness_ms: i64,
    ) {
        self.clock.idle_advance(now_ms, now, idle, lateness_ms);
    }

    /// Moves every window the watermark has passed to the pending results.
    pub fn close_ready(&mut self, windows: &[WindowSpec]) -> usize {
        let Some(wm) = self.clock.watermark else {
            return 0;
        };
        let due: Vec<TimestampMs> = self.by_end.range(..=wm).map(|(end, _)| *end).collect();
        let mut closed = 0;
        for end in due {
            for key in self.by_end.remove(&end).unwrap_or_default() {
                let Some(open) = self.open.remove(&key) else {
                    continue;
                };
                let (series_id, index, start_ms) = key;
                let spec = &windows[index as usize];
                if open.persisted {
                    self.closed_persisted.push(self.store_key(key, spec));
                }
                self.closed.push(WindowResult {
                    series_id,
                    metric: open.metric,
                    tags: open.tags,
                    window: spec.label.clone(),
                    start_ms,
                    end_ms: end,
                    agg: open.agg,
                });
                closed += 1;
            }
        }
        closed
    }

    fn store_key(&self, (series_id, _, start_ms): Key, spec: &WindowSpec) -> OpenWindowKey {
        OpenWindowKey {
            partition: self.partition,
            series_id,
            window: spec.label.clone(),
            start_ms,
        }
    }

    /// Moves pending output into `commit` and marks open windows as saved.
    pub fn drain_into(
        &mut self,
        commit: &mut Commit,
        late: &mut BTreeMap<(String, String), u64>,
        windows: &[WindowSpec],
    ) {
        commit.results.append(&mut self.closed);
        commit.delete_open.append(&mut self.closed_persisted);
        commit.raw_points.append(&mut self.raw);
        for (&key, open) in self.open.iter_mut().filter(|(_, o)| o.dirty) {
            let spec = &windows[key.1 as usize];
            commit.upsert_open.push(OpenWindowState {
                key: OpenWindowKey {
                    partition: self.partition,
                    series_id: key.0,
                    window: spec.label.clone(),
                    start_ms: key.2,
                },
                state: encode_state(&open.metric, &open.tags, &open.agg),
            });
            open.dirty = false;
            open.persisted = true;
        }
        for ((metric, index), count) in self.late.drain() {
            *late
                .entry((metric, windows[index as usize].label.clone()))
                .or_default() += count;
        }
        commit.partitions.push(PartitionCheckpoint {
            partition: self.partition,
            next_offset: self.next_offset,
            max_event_ts: self.clock.max_event_ts,
            watermark: self.clock.watermark,
        });
    }
}
