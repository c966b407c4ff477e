//! Open windows of one partition.
//!
//! This is the processor's per-point hot path, so ingesting a point into
//! windows that are already open allocates nothing: the series' name and tags
//! are compared once per point against one shared copy (not once per window),
//! and late points of a known metric are counted without copying its name.

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
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
    /// Which series owns this window; shared with the series' other windows.
    name: Arc<SeriesName>,
    agg: Aggregate,
    /// Changed since the last checkpoint.
    dirty: bool,
    /// Some state of it is in the store, so closing it must delete that.
    persisted: bool,
}

/// The full identity of a series, which its 64-bit id only stands for.
#[derive(Clone)]
struct SeriesName {
    metric: String,
    tags: Tags,
}

impl SeriesName {
    fn is(&self, metric: &str, tags: &Tags) -> bool {
        self.metric == metric && self.tags == *tags
    }
}

/// One shared [`SeriesName`] per series with open windows in the partition.
///
/// Invariant: two open windows have equal names exactly when they hold the
/// same `Arc`, so ingest detects a collision (same id, other name) with a
/// pointer comparison per window after one full comparison per point.
#[derive(Default)]
struct Names {
    first: FxHashMap<SeriesId, Arc<SeriesName>>,
    /// Further names under an id already in `first`: a 64-bit hash collision,
    /// kept apart so the two series are never merged. Almost always empty.
    others: Vec<(SeriesId, Arc<SeriesName>)>,
}

impl Names {
    /// The shared name of `id` that equals `metric` and `tags`, made from
    /// `make` if there is none yet.
    fn get(
        &mut self,
        id: SeriesId,
        metric: &str,
        tags: &Tags,
        make: impl FnOnce() -> SeriesName,
    ) -> Arc<SeriesName> {
        match self.first.entry(id) {
            Entry::Vacant(slot) => return Arc::clone(slot.insert(Arc::new(make()))),
            Entry::Occupied(slot) if slot.get().is(metric, tags) => return Arc::clone(slot.get()),
            Entry::Occupied(_) => {}
        }
        if let Some((_, name)) = self
            .others
            .iter()
            .find(|(other, name)| *other == id && name.is(metric, tags))
        {
            return Arc::clone(name);
        }
        let name = Arc::new(make());
        self.others.push((id, Arc::clone(&name)));
        name
    }

    /// Forgets `name` if the caller's handle is the only one outside this
    /// table, i.e. no open window uses it any more.
    fn release(&mut self, id: SeriesId, name: &Arc<SeriesName>) {
        if Arc::strong_count(name) > 2 {
            return;
        }
        if self.first.get(&id).is_some_and(|n| Arc::ptr_eq(n, name)) {
            self.first.remove(&id);
            // Keep every name of the id reachable through `first`.
            if let Some(at) = self.others.iter().position(|(other, _)| *other == id) {
                let (_, promoted) = self.others.swap_remove(at);
                self.first.insert(id, promoted);
            }
        } else {
            self.others
                .retain(|(other, n)| !(*other == id && Arc::ptr_eq(n, name)));
        }
    }
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
    names: Names,
    /// Open windows by end time, so closing touches only what is due.
    by_end: BTreeMap<TimestampMs, Vec<Key>>,
    /// Output since the last checkpoint.
    closed: Vec<WindowResult>,
    closed_persisted: Vec<OpenWindowKey>,
    raw: Vec<Point>,
    /// Late points per window definition (by index) and metric, keyed by
    /// metric alone so a known metric is counted without copying its name.
    late: Vec<FxHashMap<String, u64>>,
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
            names: Names::default(),
            by_end: BTreeMap::new(),
            closed: Vec::new(),
            closed_persisted: Vec::new(),
            raw: Vec::new(),
            late: Vec::new(),
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
            let name = p.names.get(key.0, &metric, &tags, || SeriesName {
                metric: metric.clone(),
                tags: tags.clone(),
            });
            p.by_end
                .entry(windows[index].end(key.2))
                .or_default()
                .push(key);
            p.open.insert(
                key,
                Open {
                    name,
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
        // Looked up at the first window the point can still go into, so a
        // point late everywhere leaves no trace in `names`.
        let mut name: Option<Arc<SeriesName>> = None;
        let mut outcome = Ingested::default();
        for (index, spec) in windows.iter().enumerate() {
            let mut skipped = false;
            for start in spec.starts(point.timestamp_ms) {
                let end = spec.end(start);
                if self.clock.is_closed(end) {
                    skipped = true;
                    continue;
                }
                let name = name.get_or_insert_with(|| {
                    self.names
                        .get(series, &point.metric, &point.tags, || SeriesName {
                            metric: point.metric.clone(),
                            tags: point.tags.clone(),
                        })
                });
                let key = (series, index as u16, start);
                let open = self.open.entry(key).or_insert_with(|| {
                    self.by_end.entry(end).or_default().push(key);
                    Open {
                        name: Arc::clone(name),
                        agg: Aggregate::new(),
                        dirty: true,
                        persisted: false,
                    }
                });
                if !Arc::ptr_eq(&open.name, name) {
                    outcome.collision = true;
                    continue;
                }
                open.agg.add(point.value, point.timestamp_ms);
                open.dirty = true;
                outcome.windows += 1;
            }
            if skipped {
                outcome.late += 1;
                if self.late.len() <= index {
                    self.late.resize_with(index + 1, FxHashMap::default);
                }
                let late = &mut self.late[index];
                match late.get_mut(point.metric.as_str()) {
                    Some(count) => *count += 1,
                    None => {
                        late.insert(point.metric.clone(), 1);
                    }
                }
            }
        }
        // A name no window took (the point collided everywhere) is not kept.
        if let Some(name) = name {
            self.names.release(series, &name);
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
        let mut closed = 0;
        while let Some(due) = self.by_end.first_entry() {
            if *due.key() > wm {
                break;
            }
            let (end, keys) = due.remove_entry();
            for key in keys {
                let Some(open) = self.open.remove(&key) else {
                    continue;
                };
                let (series_id, index, start_ms) = key;
                let spec = &windows[index as usize];
                if open.persisted {
                    self.closed_persisted.push(self.store_key(key, spec));
                }
                // The series' last open window takes the name; others copy it.
                self.names.release(series_id, &open.name);
                let SeriesName { metric, tags } =
                    Arc::try_unwrap(open.name).unwrap_or_else(|shared| SeriesName::clone(&shared));
                self.closed.push(WindowResult {
                    series_id,
                    metric,
                    tags,
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
                state: encode_state(&open.name.metric, &open.name.tags, &open.agg),
            });
            open.dirty = false;
            open.persisted = true;
        }
        for (spec, counts) in windows.iter().zip(&mut self.late) {
            for (metric, count) in counts.drain() {
                *late.entry((metric, spec.label.clone())).or_default() += count;
            }
        }
        commit.partitions.push(PartitionCheckpoint {
            partition: self.partition,
            next_offset: self.next_offset,
            max_event_ts: self.clock.max_event_ts,
            watermark: self.clock.watermark,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pulse_core::codec::state::encode_state;

    use super::*;

    fn tags(host: &str) -> Tags {
        [("host".to_string(), host.to_string())].into()
    }

    fn name(metric: &str, host: &str) -> SeriesName {
        SeriesName {
            metric: metric.into(),
            tags: tags(host),
        }
    }

    fn get(names: &mut Names, id: u64, metric: &str, host: &str) -> Arc<SeriesName> {
        names.get(SeriesId(id), metric, &tags(host), || name(metric, host))
    }

    #[test]
    fn one_shared_name_per_series_and_colliding_series_stay_apart() {
        let mut names = Names::default();
        let a = get(&mut names, 7, "cpu", "a");
        assert!(Arc::ptr_eq(&a, &get(&mut names, 7, "cpu", "a")));
        let b = get(&mut names, 7, "mem", "b");
        assert!(!Arc::ptr_eq(&a, &b), "same id, other series: never merged");
        assert!(Arc::ptr_eq(&b, &get(&mut names, 7, "mem", "b")));

        // `a` is released while `b` is still used: `b` stays the one name of
        // its series, and `a` comes back as a new one.
        names.release(SeriesId(7), &a);
        assert!(Arc::ptr_eq(&b, &get(&mut names, 7, "mem", "b")));
        let a2 = get(&mut names, 7, "cpu", "a");
        assert!(!Arc::ptr_eq(&a, &a2) && !Arc::ptr_eq(&a2, &b));

        // A name still held by someone else is kept.
        let held = Arc::clone(&b);
        names.release(SeriesId(7), &b);
        assert!(Arc::ptr_eq(&held, &get(&mut names, 7, "mem", "b")));
    }

    #[test]
    fn a_colliding_series_owns_the_windows_it_opens_and_names_are_dropped_on_close() {
        let windows = vec![WindowSpec::tumbling(Duration::from_secs(60)).unwrap()];
        let point = |ts_secs: i64| Point {
            metric: "cpu".into(),
            tags: tags("a"),
            value: 1.0,
            timestamp_ms: ts_secs * 1000,
        };
        let id = point(0).series_id();
        // Another series under the same id owns the window [0, 60).
        let mut other = Aggregate::new();
        other.add(5.0, 1_000);
        let planted = OpenWindowState {
            key: OpenWindowKey {
                partition: 0,
                series_id: id,
                window: "1m".into(),
                start_ms: 0,
            },
            state: encode_state("not_cpu", &Tags::new(), &other),
        };
        let now = Instant::now();
        let mut p =
            PartitionWindows::restore(0, None, [&planted].into_iter(), &windows, now).unwrap();
        let clash = p.ingest(0, point(10), &windows, 30_000, now);
        assert!(clash.collision && clash.windows == 0);
        assert_eq!(
            (p.names.first.len(), p.names.others.len()),
            (1, 0),
            "the colliding name is not kept"
        );
        // The window [60, 120) is new: this series opens and owns it.
        let own = p.ingest(1, point(70), &windows, 30_000, now);
        assert!(!own.collision && own.windows == 1);
        let own = p.ingest(2, point(80), &windows, 30_000, now);
        assert!(!own.collision && own.windows == 1);

        p.ingest(3, point(200), &windows, 30_000, now); // watermark 170 s
        assert_eq!(p.close_ready(&windows), 2);
        let mut commit = Commit::default();
        p.drain_into(&mut commit, &mut BTreeMap::new(), &windows);
        let got: Vec<_> = commit
            .results
            .iter()
            .map(|r| (r.metric.as_str(), r.start_ms, r.agg.count))
            .collect();
        assert_eq!(got, vec![("not_cpu", 0, 1), ("cpu", 60_000, 2)]);
        // Only the window [180, 240) is open, and only its series is named.
        assert_eq!(p.open_windows(), 1);
        assert_eq!((p.names.first.len(), p.names.others.len()), (1, 0));
        assert_eq!(p.names.first[&id].metric, "cpu");
    }
}
