//! The open windows of a partition as they stand (partials), for the cache's
//! `partial=true` answers. Read-only over the windows except for the flag
//! that says what changed since the last look: a partial is never part of
//! a checkpoint, so publishing one cannot change what is stored or counted.
//!
//! A window fed by another definition (5m fed by 1m) holds only its closed
//! feeders' data; its partial adds the open feeders' so far, so a 5m partial
//! is everything of those 5 minutes that has arrived.

use std::collections::BTreeMap;
use std::sync::Arc;

use pulse_core::{Aggregate, SeriesId, WindowResult};
use rustc_hash::{FxHashMap, FxHashSet};

use super::{Key, Layout, PartitionWindows, SeriesName};
use crate::window::layout::indices;

impl PartitionWindows {
    /// Appends to `out` the partials of every series with a window changed
    /// since the last call (every series when `all`), all its open windows,
    /// until `out` holds `max`. Series left out stay marked and come next
    /// time. Returns how many series were left out.
    pub fn partials_into(
        &mut self,
        all: bool,
        max: usize,
        layout: &Layout,
        out: &mut Vec<WindowResult>,
    ) -> usize {
        let changed: FxHashSet<SeriesId> = self
            .open
            .iter()
            .filter(|(_, o)| all || o.fresh)
            .map(|(k, _)| k.0)
            .collect();
        if changed.is_empty() {
            return 0;
        }
        // Every open window of those series, feeders before what they feed.
        let mut queue: BTreeMap<(SeriesId, usize, i64, u16), ()> = BTreeMap::new();
        let mut combined: FxHashMap<Key, (Arc<SeriesName>, Aggregate)> = FxHashMap::default();
        for (&key, open) in self.open.iter().filter(|(k, _)| changed.contains(&k.0)) {
            queue.insert(rank_key(key, layout), ());
            combined.insert(key, (Arc::clone(&open.name), open.agg.clone()));
        }
        let mut done: FxHashSet<SeriesId> = FxHashSet::default();
        let mut left_out: FxHashSet<SeriesId> = FxHashSet::default();
        while let Some(((series, _, start, index), ())) = queue.pop_first() {
            let key = (series, index, start);
            let Some((name, agg)) = combined.get(&key).cloned() else {
                continue;
            };
            if !done.contains(&series) && out.len() >= max {
                left_out.insert(series);
            }
            let feeds = self
                .open
                .get(&key)
                .map_or(layout.feeds(usize::from(index)), |o| o.feeds);
            for target in indices(feeds) {
                let spec = layout.spec(target);
                for target_start in spec.starts(start) {
                    let target_key = (series, target as u16, target_start);
                    let entry = combined.entry(target_key).or_insert_with(|| {
                        queue.insert(rank_key(target_key, layout), ());
                        (Arc::clone(&name), Aggregate::new())
                    });
                    // A window of another series under the same id (a 64-bit
                    // collision) is never merged, as in `forward`.
                    if Arc::ptr_eq(&entry.0, &name) {
                        entry.1.merge(&agg);
                    }
                }
            }
            if left_out.contains(&series) {
                continue;
            }
            done.insert(series);
            let spec = layout.spec(usize::from(index));
            out.push(WindowResult {
                series_id: series,
                metric: name.metric.clone(),
                tags: name.tags.clone(),
                window: spec.label.clone(),
                start_ms: start,
                end_ms: spec.end(start),
                agg,
            });
        }
        for (key, open) in self.open.iter_mut() {
            if done.contains(&key.0) {
                open.fresh = false;
            }
        }
        left_out.len()
    }
}

/// Orders windows by series, then feeders before what they feed.
fn rank_key((series, index, start): Key, layout: &Layout) -> (SeriesId, usize, i64, u16) {
    (series, layout.rank(usize::from(index)), start, index)
}
