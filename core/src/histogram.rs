//! Cumulative bucket histograms (Prometheus classic histograms, OTLP
//! explicit-bucket histograms with cumulative temporality) turned into the
//! observations of one interval, so they can become the pipeline's mergeable
//! quantile sketch.
//!
//! A scrape or export carries counts since the process started. The
//! increments between two of them are what was observed in between; a count
//! that went down means the process restarted, and then, as Prometheus'
//! `increase()` does, the new counts are the increments since the restart.
//! The first observation of a series is only a baseline (what it counted
//! before is not in any window).
//!
//! **Error bound.** A bucket only says how many observations fell in
//! `(lower, upper]`, so each bucket's count is spread evenly over its range
//! (as Prometheus' `histogram_quantile` interpolates linearly). A quantile
//! answered from the sketch therefore lies in the same bucket as the true
//! quantile: it is off by at most that bucket's width, plus the sketch's own
//! 1 % relative error. The lowest bucket starts at 0 when its bound is
//! positive; observations in the `+Inf` bucket are placed at the highest
//! finite bound (both as `histogram_quantile` does).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::point::{MetricKind, Tags};
use crate::series::SeriesId;
use crate::sketch::Distribution;
use crate::validate::UncheckedPoint;

/// The cumulative counts of one histogram series at one instant: `counts[i]`
/// observations were `<= bounds[i]`. Bounds ascend; the last may be `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cumulative {
    pub bounds: Vec<f64>,
    pub counts: Vec<f64>,
    /// The sum of every observation so far, when the source sends it.
    pub sum: Option<f64>,
}

/// What was observed between two cumulative histograms.
#[derive(Debug, Clone, PartialEq)]
pub struct Increase {
    /// Observations per bucket: `(lower, upper, count)`.
    pub buckets: Vec<(f64, f64, u64)>,
    /// Their sum, when the source sends one.
    pub sum: Option<f64>,
}

impl Increase {
    /// How many observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.2).sum()
    }

    /// The observations as the pipeline's sketch (see the module's error
    /// bound), with their exact sum when the source sent one; `None` when
    /// there were none.
    pub fn distribution(&self) -> Option<Distribution> {
        let mut observations = Distribution::new();
        for &(lower, upper, count) in &self.buckets {
            spread(&mut observations, lower, upper, count);
        }
        if observations.count() == 0 {
            return None;
        }
        if let Some(sum) = self.sum {
            observations.set_sum(sum);
        }
        Some(observations)
    }
}

/// How many evenly spaced values stand for one bucket's observations.
const STEPS: u64 = 8;

/// Adds `count` observations spread evenly over `(lower, upper]`.
fn spread(observations: &mut Distribution, lower: f64, upper: f64, count: u64) {
    if count == 0 {
        return;
    }
    if lower == upper {
        observations.observe_n(upper, count);
        return;
    }
    let steps = count.min(STEPS);
    for step in 0..steps {
        // The remainder goes to the first steps, so the counts stay exact.
        let share = count / steps + u64::from(step < count % steps);
        let at = lower + (upper - lower) * (step as f64 + 0.5) / steps as f64;
        observations.observe_n(at, share);
    }
}

impl Cumulative {
    /// Checks the shape: as many counts as bounds, bounds ascending, counts
    /// finite, non-negative and not decreasing from bucket to bucket.
    pub fn check(&self) -> Result<(), String> {
        if self.bounds.is_empty() || self.bounds.len() != self.counts.len() {
            return Err(format!(
                "{} bucket counts for {} bounds",
                self.counts.len(),
                self.bounds.len()
            ));
        }
        if self
            .bounds
            .windows(2)
            .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
            || self.bounds.iter().any(|b| b.is_nan())
        {
            return Err("bucket bounds must ascend".into());
        }
        if self.counts.iter().any(|c| !c.is_finite() || *c < 0.0)
            || self.counts.windows(2).any(|w| w[1] < w[0])
        {
            return Err(
                "cumulative bucket counts must be finite, at least 0 and not decrease".into(),
            );
        }
        Ok(())
    }

    /// What was observed since `previous` (the same series' last state), or
    /// `None` when `previous` is no baseline for it (none, or other bounds).
    pub fn increase_since(&self, previous: Option<&Cumulative>) -> Option<Increase> {
        let previous = previous.filter(|p| p.bounds == self.bounds)?;
        let reset = self
            .counts
            .iter()
            .zip(&previous.counts)
            .any(|(now, before)| now < before)
            || matches!((self.sum, previous.sum), (Some(now), Some(before)) if now < before && self.counts == previous.counts);
        let since = |now: f64, before: f64| if reset { now } else { now - before };
        let mut buckets = Vec::with_capacity(self.bounds.len());
        let mut below = 0.0;
        for (i, &upper) in self.bounds.iter().enumerate() {
            let cumulative = since(self.counts[i], previous.counts[i]);
            let count = (cumulative - below).max(0.0).round() as u64;
            below = cumulative.max(below);
            let lower = if i == 0 {
                upper.min(0.0)
            } else {
                self.bounds[i - 1]
            };
            let (lower, upper) = if upper.is_infinite() {
                // `+Inf`: the highest finite bound, as histogram_quantile does.
                (lower, lower)
            } else {
                (lower, upper)
            };
            buckets.push((lower, upper, count));
        }
        let sum = match (self.sum, previous.sum) {
            (Some(now), Some(before)) => Some(since(now, before)),
            _ => None,
        };
        Some(Increase { buckets, sum })
    }
}

/// One classic histogram of one series at one instant, put together from
/// its `_bucket{le}` points (and `_sum`).
#[derive(Debug, Clone, PartialEq)]
pub struct Classic {
    /// The base name (`req_seconds` of `req_seconds_bucket`).
    pub metric: String,
    /// The labels without `le`.
    pub tags: Tags,
    pub timestamp_secs: Option<f64>,
    pub state: Cumulative,
}

impl Classic {
    /// The series the histogram's increments belong to.
    pub fn series_id(&self) -> SeriesId {
        SeriesId::of(&self.metric, &self.tags)
    }
}

/// Takes the classic histograms out of `points` (each numbered by its place
/// in a request): the `_bucket` points with a numeric `le` tag, and the
/// `_sum` and `_count` points of the same base name, tags and time. A
/// histogram is taken only with its `+Inf` bucket, so a request cut between
/// two of its buckets leaves them as plain points of their own names. Each
/// histogram keeps the number of its `+Inf` bucket; they come out ordered
/// by series, then time, so increments can be taken in order.
pub fn take_classic(points: &mut Vec<(usize, UncheckedPoint)>) -> Vec<(usize, Classic)> {
    type Key = (String, Tags, Option<i64>);
    let at = |p: &UncheckedPoint| p.timestamp_secs.map(|s| (s * 1000.0).round() as i64);
    let mut buckets: BTreeMap<Key, (usize, Vec<(f64, f64)>)> = BTreeMap::new();
    for (index, point) in points.iter() {
        if let Some((base, tags, le)) = bucket_of(point) {
            let entry = buckets
                .entry((base, tags, at(point)))
                .or_insert((*index, Vec::new()));
            if le == f64::INFINITY {
                entry.0 = *index;
            }
            entry.1.push((le, point.value));
        }
    }
    buckets.retain(|_, (_, b)| b.iter().any(|(le, _)| *le == f64::INFINITY));
    if buckets.is_empty() {
        return Vec::new();
    }
    let bases: BTreeSet<String> = buckets.keys().map(|k| k.0.clone()).collect();
    let mut sums: HashMap<Key, f64> = HashMap::new();
    points.retain(|(_, point)| {
        if bucket_of(point).is_some_and(|(base, _, _)| bases.contains(&base)) {
            return false;
        }
        for suffix in ["_sum", "_count"] {
            if let Some(base) = point
                .metric
                .strip_suffix(suffix)
                .filter(|b| bases.contains(*b))
            {
                if suffix == "_sum" {
                    sums.insert(
                        (base.to_string(), point.tags.clone(), at(point)),
                        point.value,
                    );
                }
                return false;
            }
        }
        true
    });
    buckets
        .into_iter()
        .map(|(key, (index, mut pairs))| {
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let sum = sums.get(&key).copied();
            let (metric, tags, ms) = key;
            let classic = Classic {
                metric,
                tags,
                timestamp_secs: ms.map(|ms| ms as f64 / 1000.0),
                state: Cumulative {
                    bounds: pairs.iter().map(|p| p.0).collect(),
                    counts: pairs.iter().map(|p| p.1).collect(),
                    sum,
                },
            };
            (index, classic)
        })
        .collect()
}

/// `(base name, tags without le, le)` of a `_bucket` point.
fn bucket_of(point: &UncheckedPoint) -> Option<(String, Tags, f64)> {
    let base = point.metric.strip_suffix("_bucket")?;
    let le = point.tags.get("le")?.trim().parse::<f64>().ok()?;
    let mut tags = point.tags.clone();
    tags.remove("le");
    Some((base.to_string(), tags, le))
}

/// The last cumulative state of each histogram series, to take the next
/// one's increments from; at most `max` series (when full, those not seen
/// in the last `max / 2` updates are forgotten, and their next state is a
/// baseline again: one interval of theirs is not counted).
#[derive(Debug)]
pub struct Baselines {
    max: usize,
    states: HashMap<SeriesId, (Cumulative, u64)>,
    clock: u64,
    forgotten: u64,
}

impl Baselines {
    pub fn new(max: usize) -> Baselines {
        Baselines {
            max: max.max(2),
            states: HashMap::new(),
            clock: 0,
            forgotten: 0,
        }
    }

    /// The last state of a series.
    pub fn get(&self, id: SeriesId) -> Option<&Cumulative> {
        self.states.get(&id).map(|(state, _)| state)
    }

    /// Keeps `state` as the series' last one.
    pub fn set(&mut self, id: SeriesId, state: Cumulative) {
        self.clock += 1;
        if self.states.len() >= self.max && !self.states.contains_key(&id) {
            let before = self.states.len();
            let recent = self.clock.saturating_sub(self.max as u64 / 2);
            self.states.retain(|_, (_, seen)| *seen >= recent);
            self.forgotten += (before - self.states.len()) as u64;
        }
        self.states.insert(id, (state, self.clock));
    }

    /// Series forgotten for room so far.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

/// A histogram's number, the histogram and its increments.
pub type Taken<'a> = (usize, &'a Classic, Increase);

/// The increments of a run of histograms (ordered by series, then time, as
/// [`take_classic`] gives them) against `baselines`, without changing them:
/// the states to keep come back beside, to be [`Baselines::set`] once the
/// increments are safely taken (a refused request sent again then finds the
/// same baselines). A histogram with no baseline, or no observation since
/// its baseline, gives no increments.
pub fn increments<'a>(
    histograms: &'a [(usize, Classic)],
    baselines: &Baselines,
) -> (Vec<Taken<'a>>, Vec<(SeriesId, Cumulative)>) {
    let mut pending: HashMap<SeriesId, &Cumulative> = HashMap::new();
    let mut out = Vec::new();
    for (index, classic) in histograms {
        let id = classic.series_id();
        if classic.state.check().is_ok() {
            let previous = pending.get(&id).copied().or_else(|| baselines.get(id));
            if let Some(increase) = classic.state.increase_since(previous)
                && increase.count() > 0
            {
                out.push((*index, classic, increase));
            }
            pending.insert(id, &classic.state);
        }
    }
    let keep = pending.into_iter().map(|(id, s)| (id, s.clone())).collect();
    (out, keep)
}

/// Replaces the classic histograms among `points` by one histogram point
/// per series and instant, holding what was observed since `baselines` (a
/// point keeps the number of its `+Inf` bucket). Returns the states to keep
/// as baselines once the points are taken (see [`increments`]).
pub fn classic_to_histograms(
    points: &mut Vec<(usize, UncheckedPoint)>,
    baselines: &Baselines,
) -> Vec<(SeriesId, Cumulative)> {
    let histograms = take_classic(points);
    let (increments, keep) = increments(&histograms, baselines);
    for (index, classic, increase) in increments {
        if let Some(observations) = increase.distribution() {
            let point = UncheckedPoint {
                kind: MetricKind::Histogram,
                sketch: Some(Box::new(observations)),
                ..UncheckedPoint::gauge(
                    classic.metric.clone(),
                    classic.tags.clone(),
                    0.0,
                    classic.timestamp_secs,
                )
            };
            points.push((index, point));
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(counts: &[f64], sum: f64) -> Cumulative {
        Cumulative {
            bounds: vec![0.1, 0.5, 1.0, f64::INFINITY],
            counts: counts.to_vec(),
            sum: Some(sum),
        }
    }

    #[test]
    fn the_first_state_is_a_baseline_and_later_ones_increments() {
        let first = state(&[1.0, 3.0, 4.0, 4.0], 2.0);
        assert_eq!(first.increase_since(None), None);
        let second = state(&[1.0, 13.0, 14.0, 15.0], 9.0);
        let increase = second.increase_since(Some(&first)).unwrap();
        assert_eq!(
            increase.buckets,
            [(0.0, 0.1, 0), (0.1, 0.5, 10), (0.5, 1.0, 0), (1.0, 1.0, 1)]
        );
        assert_eq!((increase.count(), increase.sum), (11, Some(7.0)));
        let sketch = increase.distribution().unwrap();
        assert_eq!((sketch.count(), sketch.sum()), (11, 7.0));
        // p50 lies in (0.1, 0.5]: the bound the module promises.
        let p50 = sketch.quantile(0.5).unwrap();
        assert!((0.1..=0.5 * 1.01).contains(&p50), "{p50}");
    }

    #[test]
    fn a_count_going_down_is_a_restart_and_the_new_counts_are_the_increase() {
        let before = state(&[5.0, 10.0, 10.0, 10.0], 4.0);
        let restarted = state(&[0.0, 2.0, 3.0, 3.0], 1.5);
        let increase = restarted.increase_since(Some(&before)).unwrap();
        assert_eq!(increase.count(), 3);
        assert_eq!(increase.sum, Some(1.5));
    }

    #[test]
    fn other_bounds_are_no_baseline_and_bad_shapes_are_named() {
        let a = state(&[1.0, 1.0, 1.0, 1.0], 1.0);
        let mut b = a.clone();
        b.bounds[0] = 0.2;
        assert_eq!(b.increase_since(Some(&a)), None);
        assert!(
            Cumulative {
                counts: vec![1.0],
                ..a.clone()
            }
            .check()
            .is_err()
        );
        assert!(state(&[2.0, 1.0, 1.0, 1.0], 0.0).check().is_err());
        assert!(a.check().is_ok());
    }

    fn unchecked(metric: &str, tags: &[(&str, &str)], value: f64) -> UncheckedPoint {
        UncheckedPoint::gauge(
            metric,
            tags.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
            Some(100.0),
        )
    }

    #[test]
    fn classic_histograms_are_put_together_from_their_bucket_points() {
        let mut points: Vec<(usize, UncheckedPoint)> = [
            unchecked("lat_bucket", &[("le", "0.5"), ("pod", "a")], 3.0),
            unchecked("lat_bucket", &[("le", "+Inf"), ("pod", "a")], 5.0),
            unchecked("lat_bucket", &[("le", "1.0"), ("pod", "a")], 4.0),
            unchecked("lat_sum", &[("pod", "a")], 2.5),
            unchecked("lat_count", &[("pod", "a")], 5.0),
            // No +Inf bucket: not a whole histogram, left as it is.
            unchecked("cut_bucket", &[("le", "1")], 1.0),
            unchecked("up", &[], 1.0),
        ]
        .into_iter()
        .enumerate()
        .collect();
        let histograms = take_classic(&mut points);
        assert_eq!(histograms.len(), 1);
        let (index, h) = &histograms[0];
        assert_eq!((*index, h.metric.as_str()), (1, "lat"));
        assert_eq!(h.tags.len(), 1);
        assert_eq!(h.timestamp_secs, Some(100.0));
        assert_eq!(h.state.bounds, [0.5, 1.0, f64::INFINITY]);
        assert_eq!(h.state.counts, [3.0, 4.0, 5.0]);
        assert_eq!(h.state.sum, Some(2.5));
        let left: Vec<&str> = points.iter().map(|(_, p)| p.metric.as_str()).collect();
        assert_eq!(left, ["cut_bucket", "up"]);
    }

    #[test]
    fn increments_follow_a_series_through_a_run_and_baselines_change_only_when_kept() {
        let classic = |counts: &[f64]| Classic {
            metric: "lat".into(),
            tags: Tags::new(),
            timestamp_secs: None,
            state: state(counts, 0.0),
        };
        let run = vec![
            (0, classic(&[1.0, 1.0, 1.0, 1.0])),
            (1, classic(&[1.0, 3.0, 3.0, 3.0])),
        ];
        let mut baselines = Baselines::new(10);
        let (out, keep) = increments(&run, &baselines);
        assert_eq!(out.len(), 1, "the first state is a baseline");
        assert_eq!((out[0].0, out[0].2.count()), (1, 2));
        assert!(baselines.get(run[0].1.series_id()).is_none());
        for (id, state) in keep {
            baselines.set(id, state);
        }
        let next = vec![(0, classic(&[1.0, 3.0, 3.0, 7.0]))];
        let (out, _) = increments(&next, &baselines);
        assert_eq!(out[0].2.count(), 4);
    }

    #[test]
    fn baselines_stay_bounded_and_count_what_they_forget() {
        let mut baselines = Baselines::new(4);
        for n in 0..100u64 {
            baselines.set(SeriesId(n), state(&[0.0; 4], 0.0));
        }
        assert!(baselines.states.len() <= 4);
        assert!(baselines.forgotten() >= 96);
        assert!(baselines.get(SeriesId(99)).is_some());
    }

    #[test]
    fn the_p95_of_many_observations_stays_within_its_bucket() {
        let zero = state(&[0.0; 4], 0.0);
        // 900 fast requests, 80 at (0.5, 1], 20 slower: p95 is in (0.5, 1].
        let later = state(&[900.0, 900.0, 980.0, 1000.0], 500.0);
        let sketch = later
            .increase_since(Some(&zero))
            .unwrap()
            .distribution()
            .unwrap();
        let p95 = sketch.quantile(0.95).unwrap();
        assert!((0.5 * 0.99..=1.0 * 1.01).contains(&p95), "{p95}");
    }
}
