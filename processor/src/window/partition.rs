//! Open windows of one partition.
//!
//! This is the processor's per-point hot path, so ingesting a point into a
//! window that is already open allocates nothing and touches one window per
//! chain of definitions (see [`super::layout`]): the series' name and tags are
//! compared once against the window's shared copy, and late points of a known
//! metric are counted without copying its name.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_core::codec::state::{decode_state, encode_state};
use pulse_core::idempotency::BatchRef;
use pulse_core::{Aggregate, Point, SeriesId, Tags, TimestampMs, WindowResult, WindowSpec};
use pulse_engine::store::{
    Commit, DeadLetter, OpenWindowKey, OpenWindowState, PartitionCheckpoint, RawPoint, SeriesRow,
};
use rustc_hash::{FxHashMap, FxHashSet};

use super::layout::{Layout, MAX_WINDOWS, indices};
use super::marks::{Forgotten, MarkPolicy, Marks};
use super::{RestoreError, Timing};
use crate::watermark::Clock;

/// An open window: identity `(series, window index, start)`.
type Key = (SeriesId, u16, TimestampMs);

struct Open {
    /// Which series owns this window; shared with the series' other windows.
    name: Arc<SeriesName>,
    agg: Aggregate,
    /// Definitions this window is merged into when it closes, as a mask: the
    /// layout's, or for a window restored from a checkpoint taken under
    /// another window list, what that checkpoint recorded, so no window's
    /// data is ever merged anywhere twice or not at all.
    feeds: u64,
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

/// A point's series id, as the record claimed it or once confirmed.
#[derive(Debug, Clone, Copy)]
enum Series {
    Claimed(SeriesId),
    Known(SeriesId),
}

impl Series {
    fn id(self) -> SeriesId {
        match self {
            Series::Claimed(id) | Series::Known(id) => id,
        }
    }
}

/// Where [`PartitionWindows::place`] put a point.
struct Placed {
    series: Series,
    outcome: Ingested,
    /// Definitions for which the point came after its window closed.
    late: u64,
    /// The point opened a window, so its series is named in this checkpoint.
    opened: bool,
}

/// What [`PartitionWindows::add_late`] did with a late point.
#[derive(Default)]
struct Late {
    /// A window of the point was beyond the horizon.
    expired: bool,
    /// Another series under the same id has a late partial of that window.
    collision: bool,
}

/// What ingesting one point did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// Windows the point was added to (open ones; not the late partials).
    pub windows: usize,
    /// Window definitions for which the point arrived after its window closed.
    pub late: usize,
    /// Of those, definitions whose closed window ended more than the late
    /// horizon before the watermark: the point reached no window there.
    pub expired: usize,
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
    /// Open windows whose `feeds` differ from the layout's (restored from a
    /// checkpoint taken under another window list). While there are any,
    /// ingest looks up the real `feeds` of the windows a point flows through.
    unusual_feeds: usize,
    /// Output since the last checkpoint.
    closed: Vec<WindowResult>,
    closed_persisted: Vec<OpenWindowKey>,
    raw: Vec<RawPoint>,
    /// The names of the series in `raw`, each once per checkpoint.
    series: Vec<SeriesRow>,
    named: FxHashSet<SeriesId>,
    dead_letters: Vec<DeadLetter>,
    /// Late points per window definition (by index) and metric, keyed by
    /// metric alone so a known metric is counted without copying its name.
    late: Vec<FxHashMap<String, u64>>,
    /// Late points of closed windows since the last checkpoint, aggregated
    /// per window, for the store to merge into the stored results.
    late_partials: FxHashMap<Key, LatePartial>,
    /// The keyed batches' points taken, to drop them when sent again.
    marks: Marks,
}

/// The late points of one closed window of one series.
struct LatePartial {
    name: SeriesName,
    agg: Aggregate,
}

/// What restoring a partition could not carry over exactly.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Saved windows of definitions no longer configured, merged into the
    /// configured windows they fed.
    pub merged_away: usize,
    /// Saved windows whose data was due in a definition that is no longer
    /// configured and whose own onward targets are unknown: that part is lost
    /// for the windows downstream of the removed definition.
    pub unresolved: usize,
}

impl PartitionWindows {
    /// Rebuilds a partition from its checkpoint (or starts it fresh).
    pub fn restore<'a>(
        partition: u32,
        saved: Option<&PartitionCheckpoint>,
        states: impl Iterator<Item = &'a OpenWindowState>,
        layout: &Layout,
        now: Instant,
    ) -> Result<(PartitionWindows, Restored), RestoreError> {
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
            unusual_feeds: 0,
            closed: Vec::new(),
            closed_persisted: Vec::new(),
            raw: Vec::new(),
            series: Vec::new(),
            named: FxHashSet::default(),
            dead_letters: Vec::new(),
            late: Vec::new(),
            late_partials: FxHashMap::default(),
            marks: Marks::default(),
        };
        let mut decoded = Vec::new();
        for state in states {
            let window = decode_state(&state.state).map_err(|e| RestoreError {
                partition,
                message: e.to_string(),
            })?;
            decoded.push((&state.key, window));
        }
        // Where the windows of removed definitions sent their data: every
        // window of a definition records the same targets, so one is enough.
        let redirect: HashMap<&str, &[String]> = decoded
            .iter()
            .filter(|(key, _)| layout.index_of(&key.window).is_none())
            .map(|(key, w)| (key.window.as_str(), w.feeds.as_slice()))
            .collect();
        let mut restored = Restored::default();
        let mut removed = Vec::new();
        for (key, window) in &decoded {
            let (feeds, complete) = resolve(&window.feeds, layout, &redirect);
            restored.unresolved += usize::from(!complete);
            let Some(index) = layout.index_of(&key.window) else {
                removed.push((*key, window, feeds));
                continue;
            };
            let name = p
                .names
                .get(key.series_id, &window.metric, &window.tags, || SeriesName {
                    metric: window.metric.clone(),
                    tags: window.tags.clone(),
                });
            let k = (key.series_id, index as u16, key.start_ms);
            p.by_end
                .entry(layout.spec(index).end(key.start_ms))
                .or_default()
                .push(k);
            p.unusual_feeds += usize::from(feeds != layout.feeds(index));
            p.open.insert(
                k,
                Open {
                    name,
                    agg: window.agg.clone(),
                    feeds,
                    dirty: false,
                    persisted: true,
                },
            );
        }
        // A window whose definition was removed cannot close as itself; its
        // data goes on to where it was due, and its saved state is deleted.
        for (key, window, feeds) in removed {
            let name = p
                .names
                .get(key.series_id, &window.metric, &window.tags, || SeriesName {
                    metric: window.metric.clone(),
                    tags: window.tags.clone(),
                });
            p.forward(
                key.series_id,
                key.start_ms,
                &name,
                &window.agg,
                feeds,
                layout,
            );
            p.names.release(key.series_id, &name);
            p.closed_persisted.push(key.clone());
            restored.merged_away += 1;
        }
        Ok((p, restored))
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

    /// Resumes the batch marks a checkpoint saved.
    pub fn set_marks(&mut self, marks: Marks) {
        self.marks = marks;
    }

    /// Whether the record at `offset`, the point of a keyed batch at `batch`
    /// with event time `ts`, is new here. A point taken before is passed
    /// over (the caller counts it) and must not be ingested.
    #[inline]
    pub fn admit(&mut self, offset: u64, batch: &BatchRef, ts: TimestampMs) -> bool {
        if self.marks.take(batch, ts) {
            return true;
        }
        self.next_offset = self.next_offset.max(offset + 1);
        false
    }

    /// Prunes the batch marks and moves their changes into `commit`.
    pub fn drain_marks(&mut self, policy: &MarkPolicy, commit: &mut Commit) -> Forgotten {
        self.marks
            .checkpoint(self.partition, self.clock.watermark, policy, commit)
    }

    /// Batch keys remembered.
    pub fn batch_keys(&self) -> usize {
        self.marks.keys()
    }

    pub fn dead_letter(&mut self, letter: DeadLetter) {
        self.next_offset = self.next_offset.max(letter.offset + 1);
        self.dead_letters.push(letter);
    }

    /// Adds a point to the windows it falls into: directly to those not fed
    /// by another window that took the point, and through the feeding window
    /// to the rest (see [`super::layout`]).
    ///
    /// `claimed` is the series id the record was keyed with, which spares
    /// hashing the name per point. It is trusted only once confirmed: a point
    /// whose name equals that of an open window under the id has that id (the
    /// window's name was hashed when it opened); otherwise the id is computed,
    /// and a wrong key only costs the hash.
    pub fn ingest(
        &mut self,
        offset: u64,
        claimed: Option<SeriesId>,
        point: Point,
        layout: &Layout,
        timing: &Timing,
        now: Instant,
    ) -> Ingested {
        self.next_offset = self.next_offset.max(offset + 1);
        let mut series = match claimed {
            Some(id) => Series::Claimed(id),
            None => Series::Known(point.series_id()),
        };
        let placed = loop {
            match self.place(series, &point, layout) {
                Some(placed) => break placed,
                None => series = Series::Known(point.series_id()),
            }
        };
        let ts = point.timestamp_ms;
        // A point that reached no open window still needs a confirmed id for
        // its raw row and its late partials.
        let id = match placed.series {
            Series::Known(id) => id,
            Series::Claimed(_) => point.series_id(),
        };
        let mut outcome = placed.outcome;
        for index in indices(placed.late) {
            self.count_late(index, &point.metric);
            let late = self.add_late(id, index, &point, layout, timing.late_horizon_ms);
            outcome.expired += usize::from(late.expired);
            outcome.collision |= late.collision;
        }
        self.clock
            .observe(ts, timing.ceiling(), timing.lateness_ms, now);
        self.raw.push(RawPoint {
            series_id: id,
            timestamp_ms: ts,
            value: point.value,
        });
        // A series is named with the window it opens; a point that reached
        // only open windows has a name in the store already.
        if placed.opened || (placed.outcome.windows == 0 && self.named.insert(id)) {
            self.series.push(SeriesRow {
                series_id: id,
                metric: point.metric,
                tags: point.tags,
            });
        }
        outcome
    }

    /// Adds a point that came after its window of definition `index` closed
    /// to that window's late partial (each window, for a sliding definition),
    /// unless the window ended `horizon_ms` or more before the watermark.
    fn add_late(
        &mut self,
        id: SeriesId,
        index: usize,
        point: &Point,
        layout: &Layout,
        horizon_ms: i64,
    ) -> Late {
        let mut late = Late::default();
        let Some(watermark) = self.clock.watermark else {
            return late;
        };
        let spec = layout.spec(index);
        for start in spec.starts(point.timestamp_ms) {
            let end = spec.end(start);
            if !self.clock.is_closed(end) {
                continue;
            }
            if end <= watermark.saturating_sub(horizon_ms) {
                late.expired = true;
                continue;
            }
            let partial = self
                .late_partials
                .entry((id, index as u16, start))
                .or_insert_with(|| LatePartial {
                    name: SeriesName {
                        metric: point.metric.clone(),
                        tags: point.tags.clone(),
                    },
                    agg: Aggregate::new(),
                });
            if partial.name.is(&point.metric, &point.tags) {
                partial.agg.add_point(point);
            } else {
                late.collision = true;
            }
        }
        late
    }

    /// The window part of [`PartitionWindows::ingest`] for the point as
    /// `series`. `None` when the claimed id turned out not to be the point's,
    /// before anything was changed.
    fn place(&mut self, mut series: Series, point: &Point, layout: &Layout) -> Option<Placed> {
        let ts = point.timestamp_ms;
        let mut placed = Placed {
            series,
            outcome: Ingested::default(),
            late: 0,
            opened: false,
        };
        // Definitions the point reaches through a window it went into.
        let mut reached = 0u64;
        for &index in layout.order() {
            let spec = layout.spec(index);
            let through_feeder = reached & (1 << index) != 0;
            for start in spec.starts(ts) {
                let end = spec.end(start);
                if self.clock.is_closed(end) {
                    placed.late |= 1 << index;
                    continue;
                }
                let key = (series.id(), index as u16, start);
                if through_feeder {
                    reached |= self.feeds_of(key, layout);
                    placed.outcome.windows += 1;
                    continue;
                }
                let entry = self.open.entry(key);
                let same_name = match &entry {
                    Entry::Occupied(slot) => slot.get().name.is(&point.metric, &point.tags),
                    Entry::Vacant(_) => false,
                };
                // Sharing a name with the open window confirms a claimed id;
                // anything else is checked against the name's own hash.
                if !same_name
                    && matches!(series, Series::Claimed(_))
                    && point.series_id() != series.id()
                {
                    return None;
                }
                series = Series::Known(series.id());
                match entry {
                    Entry::Occupied(_) if !same_name => {
                        placed.outcome.collision = true;
                        continue;
                    }
                    Entry::Occupied(slot) => {
                        let open = slot.into_mut();
                        open.agg.add_point(point);
                        open.dirty = true;
                        reached |= open.feeds;
                    }
                    Entry::Vacant(slot) => {
                        let name = self.names.get(series.id(), &point.metric, &point.tags, || {
                            SeriesName {
                                metric: point.metric.clone(),
                                tags: point.tags.clone(),
                            }
                        });
                        let mut agg = Aggregate::new();
                        agg.add_point(point);
                        slot.insert(Open {
                            name,
                            agg,
                            feeds: layout.feeds(index),
                            dirty: true,
                            persisted: false,
                        });
                        self.by_end.entry(end).or_default().push(key);
                        reached |= layout.feeds(index);
                        placed.opened = true;
                    }
                }
                placed.outcome.windows += 1;
            }
        }
        placed.outcome.late = placed.late.count_ones() as usize;
        placed.series = series;
        Some(placed)
    }

    /// The definitions the open window `key` (or, if it is not open yet, the
    /// one that will be opened for it) passes its data on to.
    #[inline]
    fn feeds_of(&self, key: Key, layout: &Layout) -> u64 {
        let of_layout = layout.feeds(usize::from(key.1));
        if self.unusual_feeds == 0 {
            return of_layout;
        }
        self.open.get(&key).map_or(of_layout, |open| open.feeds)
    }

    fn count_late(&mut self, index: usize, metric: &str) {
        if self.late.len() <= index {
            self.late.resize_with(index + 1, FxHashMap::default);
        }
        let late = &mut self.late[index];
        match late.get_mut(metric) {
            Some(count) => *count += 1,
            None => {
                late.insert(metric.to_string(), 1);
            }
        }
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

    /// Moves every window the watermark has passed to the pending results,
    /// merging each into the windows it feeds first.
    pub fn close_ready(&mut self, layout: &Layout) -> usize {
        let Some(wm) = self.clock.watermark else {
            return 0;
        };
        let mut closed = 0;
        // Windows fed here that end at `end` are pushed under it again, so the
        // loop comes back for them.
        while let Some(due) = self.by_end.first_entry() {
            if *due.key() > wm {
                break;
            }
            let (end, mut keys) = due.remove_entry();
            keys.sort_by_key(|k| layout.rank(usize::from(k.1)));
            for key in keys {
                let Some(open) = self.open.remove(&key) else {
                    continue;
                };
                let (series_id, index, start_ms) = key;
                let index = usize::from(index);
                if open.feeds != layout.feeds(index) {
                    self.unusual_feeds -= 1;
                }
                self.forward(
                    series_id, start_ms, &open.name, &open.agg, open.feeds, layout,
                );
                let spec = layout.spec(index);
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

    /// Merges the aggregate of a window of `series` starting at `start` into
    /// the windows of the definitions in `feeds` that contain it, opening
    /// them if needed.
    fn forward(
        &mut self,
        series: SeriesId,
        start: TimestampMs,
        name: &Arc<SeriesName>,
        agg: &Aggregate,
        feeds: u64,
        layout: &Layout,
    ) {
        for target in indices(feeds) {
            let spec = layout.spec(target);
            for target_start in spec.starts(start) {
                let key = (series, target as u16, target_start);
                let open = self.open.entry(key).or_insert_with(|| {
                    self.by_end
                        .entry(spec.end(target_start))
                        .or_default()
                        .push(key);
                    Open {
                        name: Arc::clone(name),
                        agg: Aggregate::new(),
                        feeds: layout.feeds(target),
                        dirty: true,
                        persisted: false,
                    }
                });
                // Another series under the same id owns that window (a 64-bit
                // collision, counted when its points arrived): never merged.
                if Arc::ptr_eq(&open.name, name) {
                    open.agg.merge(agg);
                    open.dirty = true;
                }
            }
        }
    }

    fn store_key(&self, (series_id, _, start_ms): Key, spec: &WindowSpec) -> OpenWindowKey {
        OpenWindowKey {
            partition: self.partition,
            series_id,
            window: spec.label.clone(),
            start_ms,
        }
    }

    /// Moves pending output into `commit` (late partials into `partials`)
    /// and marks open windows as saved.
    pub fn drain_into(
        &mut self,
        commit: &mut Commit,
        partials: &mut Vec<WindowResult>,
        late: &mut BTreeMap<(String, String), u64>,
        layout: &Layout,
    ) {
        commit.results.append(&mut self.closed);
        commit.delete_open.append(&mut self.closed_persisted);
        commit.raw_points.append(&mut self.raw);
        commit.series.append(&mut self.series);
        commit.dead_letters.append(&mut self.dead_letters);
        self.named.clear();
        for (&key, open) in self.open.iter_mut().filter(|(_, o)| o.dirty) {
            let feeds: Vec<&str> = layout.labels(open.feeds).collect();
            commit.upsert_open.push(OpenWindowState {
                key: OpenWindowKey {
                    partition: self.partition,
                    series_id: key.0,
                    window: layout.spec(usize::from(key.1)).label.clone(),
                    start_ms: key.2,
                },
                state: encode_state(&open.name.metric, &open.name.tags, &open.agg, &feeds),
            });
            open.dirty = false;
            open.persisted = true;
        }
        for ((series_id, index, start_ms), partial) in self.late_partials.drain() {
            let spec = layout.spec(usize::from(index));
            partials.push(WindowResult {
                series_id,
                metric: partial.name.metric,
                tags: partial.name.tags,
                window: spec.label.clone(),
                start_ms,
                end_ms: spec.end(start_ms),
                agg: partial.agg,
            });
        }
        for (spec, counts) in layout.windows().iter().zip(&mut self.late) {
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

/// The configured definitions a saved window's data is due in: its recorded
/// targets, with each removed definition replaced by the targets its own
/// saved windows recorded. Also says whether every target was found.
fn resolve(labels: &[String], layout: &Layout, redirect: &HashMap<&str, &[String]>) -> (u64, bool) {
    let mut mask = 0;
    let mut complete = true;
    let mut pending: Vec<(&str, usize)> = labels.iter().map(|l| (l.as_str(), 0)).collect();
    while let Some((label, depth)) = pending.pop() {
        if let Some(index) = layout.index_of(label) {
            mask |= 1 << index;
        } else if let Some(next) = redirect.get(label).filter(|_| depth < MAX_WINDOWS) {
            pending.extend(next.iter().map(|l| (l.as_str(), depth + 1)));
        } else {
            complete = false;
        }
    }
    (mask, complete)
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
        let windows =
            Layout::new(vec![WindowSpec::tumbling(Duration::from_secs(60)).unwrap()]).unwrap();
        let point = |ts_secs: i64| Point {
            metric: "cpu".into(),
            tags: tags("a"),
            value: 1.0,
            timestamp_ms: ts_secs * 1000,
            kind: pulse_core::MetricKind::Gauge,
            sketch: None,
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
            state: encode_state("not_cpu", &Tags::new(), &other, &[]),
        };
        let now = Instant::now();
        let timing = Timing {
            lateness_ms: 30_000,
            max_skew_ms: None,
            late_horizon_ms: i64::MAX,
            wall_ms: None,
        };
        let mut p = PartitionWindows::restore(0, None, [&planted].into_iter(), &windows, now)
            .unwrap()
            .0;
        let clash = p.ingest(0, None, point(10), &windows, &timing, now);
        assert!(clash.collision && clash.windows == 0);
        assert_eq!(
            (p.names.first.len(), p.names.others.len()),
            (1, 0),
            "the colliding name is not kept"
        );
        // The window [60, 120) is new: this series opens and owns it.
        let own = p.ingest(1, None, point(70), &windows, &timing, now);
        assert!(!own.collision && own.windows == 1);
        let own = p.ingest(2, None, point(80), &windows, &timing, now);
        assert!(!own.collision && own.windows == 1);

        p.ingest(3, None, point(200), &windows, &timing, now); // watermark 170 s
        assert_eq!(p.close_ready(&windows), 2);
        let mut commit = Commit::default();
        p.drain_into(&mut commit, &mut Vec::new(), &mut BTreeMap::new(), &windows);
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
