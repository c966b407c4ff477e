//! Mergeable aggregates: exact count, sum, min, max and last, plus a DDSketch
//! (1 % relative accuracy) for quantiles, and for counters what `increase`
//! and `rate` need (see [`crate::counter`]).
//!
//! An [`Aggregate`] is what a window holds while open and what the store keeps
//! once closed. Because every part merges exactly (and the sketch merges without
//! losing its accuracy guarantee), the dashboard can combine any set of series and
//! windows later: the p95 of all hosts is the p95 of the union, not a mean of p95s.

use std::fmt;
use std::str::FromStr;

use sketches_ddsketch::DDSketch;

use crate::TimestampMs;
use crate::counter;
use crate::point::{MetricKind, Point};
use crate::sketch::{Distribution, SketchError, decode_sketch, empty_sketch};

/// Running aggregate of the points of one window (or of a merge of windows).
#[derive(Clone)]
pub struct Aggregate {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// Value of the point with the highest timestamp.
    pub last: f64,
    pub last_ts: TimestampMs,
    /// The kind of the point that gave `last` (a series has one kind; if a
    /// client mixes them, the latest point's wins, whatever the merge order).
    pub kind: MetricKind,
    /// The value and time of the earliest value point (not histogram points):
    /// with `last`, the ends a counter's `increase` is measured between.
    pub first: f64,
    pub first_ts: TimestampMs,
    /// How much a cumulative counter grew from `first` to `last`, a drop
    /// counted as a reset to zero (as Prometheus does): the sum of
    /// [`counter::growth`] over consecutive points.
    pub increase: f64,
    sketch: DDSketch,
}

impl fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregate")
            .field("count", &self.count)
            .field("sum", &self.sum)
            .field("min", &self.min)
            .field("max", &self.max)
            .field("last", &self.last)
            .field("last_ts", &self.last_ts)
            .field("kind", &self.kind)
            .field("first", &self.first)
            .field("first_ts", &self.first_ts)
            .field("increase", &self.increase)
            .finish_non_exhaustive()
    }
}

impl Default for Aggregate {
    fn default() -> Self {
        Aggregate::new()
    }
}

/// A stored sketch could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("stored sketch is corrupt: {0}")]
pub struct SketchDecodeError(String);

/// Everything an aggregate is stored as (a store row, a checkpointed state),
/// for [`Aggregate::from_parts`].
#[derive(Debug, Clone, Copy)]
pub struct AggregateParts<'a> {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    pub last_ts: TimestampMs,
    pub kind: MetricKind,
    pub first: f64,
    pub first_ts: TimestampMs,
    pub increase: f64,
    /// DDSketch in DataDog's standard binary encoding.
    pub sketch: &'a [u8],
}

impl Aggregate {
    /// An empty aggregate.
    pub fn new() -> Aggregate {
        Aggregate {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: f64::NAN,
            last_ts: TimestampMs::MIN,
            kind: MetricKind::Gauge,
            first: 0.0,
            first_ts: TimestampMs::MIN,
            increase: 0.0,
            sketch: empty_sketch(),
        }
    }

    /// Adds one point of any kind: its value, or for a histogram point all
    /// of its observations.
    #[inline]
    pub fn add_point(&mut self, point: &Point) {
        match point.sketch.as_deref() {
            Some(observations) => {
                self.add_distribution(observations, point.timestamp_ms, point.kind)
            }
            None => self.add_value(point.value, point.timestamp_ms, point.kind),
        }
    }

    /// Adds one gauge value (what [`Aggregate::add_point`] does for a gauge point).
    #[inline]
    pub fn add(&mut self, value: f64, ts: TimestampMs) {
        self.add_value(value, ts, MetricKind::Gauge);
    }

    /// Adds one value point. `last` follows the rule of
    /// [`Aggregate::takes_last`]; the counter ends move outwards (a point
    /// inside them adds no growth, which is exact unless the counter reset
    /// right around it).
    #[inline]
    pub fn add_value(&mut self, value: f64, ts: TimestampMs, kind: MetricKind) {
        if self.first_ts == TimestampMs::MIN {
            (self.first, self.first_ts, self.increase) = (value, ts, 0.0);
        } else if ts > self.last_ts {
            self.increase += counter::growth(self.last, value);
        } else if ts < self.first_ts {
            self.increase += counter::growth(value, self.first);
            (self.first, self.first_ts) = (value, ts);
        }
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.take_last(ts, value, kind);
        self.sketch.add(value);
    }

    /// Adds the observations of a histogram point; its mean is the `last`.
    pub fn add_distribution(&mut self, d: &Distribution, ts: TimestampMs, kind: MetricKind) {
        if d.count() == 0 {
            return;
        }
        self.count += d.count();
        self.sum += d.sum();
        self.min = self.min.min(d.min());
        self.max = self.max.max(d.max());
        self.take_last(ts, d.mean(), kind);
        // Of Pulse's one configuration, checked when the sketch was decoded.
        let _ = self.sketch.merge(d.ddsketch());
    }

    #[inline]
    fn take_last(&mut self, ts: TimestampMs, value: f64, kind: MetricKind) {
        if self.takes_last(ts, value) {
            self.last = value;
            self.last_ts = ts;
            self.kind = kind;
        }
    }

    /// Whether a point `(ts, value)` replaces `last`: it is later, or as late
    /// and larger. Ties are broken by value, not by arrival, because a window's
    /// points may be aggregated in parts that are merged in any order (a
    /// window fed by another, late points merged into a stored window,
    /// partials of one series from two partitions); with this rule `last` is
    /// the same whatever the order of adds and merges.
    #[inline]
    fn takes_last(&self, ts: TimestampMs, value: f64) -> bool {
        ts > self.last_ts || (ts == self.last_ts && (value > self.last || self.last.is_nan()))
    }

    /// Merges `other` into `self`: every part exactly (the sketches' bins add
    /// up; `sum` up to the order of floating-point additions), so merging
    /// partial aggregates equals aggregating all their points at once.
    pub fn merge(&mut self, other: &Aggregate) {
        if other.count == 0 {
            return;
        }
        self.merge_counter(other);
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.take_last(other.last_ts, other.last, other.kind);
        // Both sketches are built from the same fixed configuration, so a merge
        // error cannot happen; if a foreign sketch ever slipped in, its quantiles are
        // dropped rather than mixed wrongly.
        let _ = self.sketch.merge(&other.sketch);
    }

    /// Joins the counter ends and growth of `other`, a part of the same
    /// series, into `self` (before `last` moves). Parts side by side in time
    /// (a window fed by the windows before it, a late point after the
    /// others) join exactly, the growth between them included; overlapping
    /// parts (points of one series from two partitions at once) keep the
    /// growth of the earlier part and the growth from its end to the later
    /// part's end, exact while the counter did not reset inside the overlap.
    fn merge_counter(&mut self, other: &Aggregate) {
        if other.first_ts == TimestampMs::MIN {
            return;
        }
        if self.first_ts == TimestampMs::MIN {
            (self.first, self.first_ts, self.increase) =
                (other.first, other.first_ts, other.increase);
            return;
        }
        let ends = |a: &Aggregate| counter::Ends {
            first: a.first,
            first_ts: a.first_ts,
            last: a.last,
            last_ts: a.last_ts,
            increase: a.increase,
        };
        let joined = counter::join(ends(self), ends(other));
        (self.first, self.first_ts, self.increase) =
            (joined.first, joined.first_ts, joined.increase);
    }

    /// `increase` over the window `[start_ms, end_ms)`: for a cumulative
    /// counter the growth extrapolated to the window's edges as Prometheus's
    /// `increase()` does (at least two points needed); for a delta counter
    /// the sum of its increments; for a histogram the number of
    /// observations; nothing for a gauge.
    pub fn increase_over(&self, start_ms: TimestampMs, end_ms: TimestampMs) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        match self.kind {
            MetricKind::Gauge => None,
            MetricKind::DeltaCounter => Some(self.sum),
            MetricKind::Histogram => Some(self.count as f64),
            MetricKind::Counter => counter::extrapolated_increase(
                counter::Ends {
                    first: self.first,
                    first_ts: self.first_ts,
                    last: self.last,
                    last_ts: self.last_ts,
                    increase: self.increase,
                },
                self.count,
                start_ms,
                end_ms,
            ),
        }
    }

    /// The value of one aggregation over the window `[start_ms, end_ms)`
    /// this aggregate covers; `None` when it has none.
    pub fn value_over(
        &self,
        kind: AggKind,
        start_ms: TimestampMs,
        end_ms: TimestampMs,
    ) -> Option<f64> {
        match kind {
            AggKind::Increase => self.increase_over(start_ms, end_ms),
            AggKind::Rate => self
                .increase_over(start_ms, end_ms)
                .map(|increase| counter::per_second(increase, start_ms, end_ms)),
            _ => self.value(kind),
        }
    }

    /// The value of one aggregation, or `None` for an empty aggregate, and
    /// for `increase` and `rate`, which need the window
    /// ([`Aggregate::value_over`]).
    pub fn value(&self, kind: AggKind) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        match kind {
            AggKind::Increase | AggKind::Rate => None,
            AggKind::Count => Some(self.count as f64),
            AggKind::Sum => Some(self.sum),
            AggKind::Min => Some(self.min),
            AggKind::Max => Some(self.max),
            AggKind::Avg => Some(self.sum / self.count as f64),
            AggKind::Last => Some(self.last),
            AggKind::Quantile(q) => self.sketch.quantile(q.fraction()).ok().flatten(),
        }
    }

    /// The sketch in DataDog's standard DDSketch binary encoding (the one the
    /// Java, Go and Python libraries read), so stored sketches are usable outside Pulse.
    pub fn sketch_bytes(&self) -> Vec<u8> {
        self.sketch.to_java_bytes()
    }

    /// What the aggregate is stored as; the sketch in
    /// [`Aggregate::sketch_bytes`]'s encoding is passed in, as the caller
    /// usually has it already.
    pub fn parts<'a>(&self, sketch: &'a [u8]) -> AggregateParts<'a> {
        AggregateParts {
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            last: self.last,
            last_ts: self.last_ts,
            kind: self.kind,
            first: self.first,
            first_ts: self.first_ts,
            increase: self.increase,
            sketch,
        }
    }

    /// Rebuilds an aggregate from its stored parts.
    pub fn from_parts(p: AggregateParts<'_>) -> Result<Aggregate, SketchDecodeError> {
        let sketch = if p.count == 0 {
            empty_sketch()
        } else {
            decode_sketch(p.sketch).map_err(|SketchError(e)| SketchDecodeError(e))?
        };
        Ok(Aggregate {
            count: p.count,
            sum: p.sum,
            min: p.min,
            max: p.max,
            last: p.last,
            last_ts: p.last_ts,
            kind: p.kind,
            first: p.first,
            first_ts: p.first_ts,
            increase: p.increase,
            sketch,
        })
    }
}

/// A quantile in per-mille, so `p95` and `p99.9` are exact and hashable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quantile(u16);

impl Quantile {
    /// The quantile as a fraction in `[0, 1]`.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

/// One aggregation a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Last,
    /// How much a counter grew in the window (see [`Aggregate::increase_over`]).
    Increase,
    /// [`AggKind::Increase`] per second of the window.
    Rate,
    Quantile(Quantile),
}

impl AggKind {
    /// What `GET /dashboard` reports when no `aggs=` is given.
    pub fn defaults() -> Vec<AggKind> {
        "count,sum,min,max,avg,last,p50,p90,p95,p99"
            .split(',')
            .map(|s| s.parse().expect("valid default aggregation"))
            .collect()
    }

    /// Parses a comma-separated list such as `avg,max,p95`.
    pub fn parse_list(text: &str) -> Result<Vec<AggKind>, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind: AggKind = part.parse()?;
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        if out.is_empty() {
            return Err("no aggregation named; use e.g. aggs=avg,max,p95".into());
        }
        Ok(out)
    }
}

impl FromStr for AggKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "count" => AggKind::Count,
            "sum" => AggKind::Sum,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "avg" | "mean" => AggKind::Avg,
            "last" => AggKind::Last,
            "increase" => AggKind::Increase,
            "rate" => AggKind::Rate,
            _ => {
                let bad = || {
                    format!(
                        "unknown aggregation `{s}`: use count, sum, min, max, avg, last, increase, rate or a quantile p0..p100 such as p95 or p99.9"
                    )
                };
                let number = s.strip_prefix('p').ok_or_else(bad)?;
                let q: f64 = number.parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&q) || (q * 10.0).fract() != 0.0 {
                    return Err(bad());
                }
                AggKind::Quantile(Quantile((q * 10.0) as u16))
            }
        })
    }
}

impl fmt::Display for AggKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggKind::Count => f.write_str("count"),
            AggKind::Sum => f.write_str("sum"),
            AggKind::Min => f.write_str("min"),
            AggKind::Max => f.write_str("max"),
            AggKind::Avg => f.write_str("avg"),
            AggKind::Last => f.write_str("last"),
            AggKind::Increase => f.write_str("increase"),
            AggKind::Rate => f.write_str("rate"),
            AggKind::Quantile(Quantile(pm)) if pm % 10 == 0 => write!(f, "p{}", pm / 10),
            AggKind::Quantile(Quantile(pm)) => write!(f, "p{}.{}", pm / 10, pm % 10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank quantile of exact data, with the rank convention DDSketch uses.
    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    /// A deterministic, heavily right-skewed sample (Pareto-like latencies).
    fn skewed(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((state >> 11) as f64 / (1u64 << 53) as f64).max(1e-12);
                1.0 / u.powf(1.0 / 1.2)
            })
            .collect()
    }

    #[test]
    fn p95_is_within_one_percent_of_exact_on_skewed_data() {
        let data = skewed(100_000, 7);
        let mut agg = Aggregate::new();
        for (i, v) in data.iter().enumerate() {
            agg.add(*v, i as i64);
        }
        let mut sorted = data.clone();
        sorted.sort_by(f64::total_cmp);
        for q in ["p50", "p90", "p95", "p99"] {
            let kind: AggKind = q.parse().unwrap();
            let AggKind::Quantile(quantile) = kind else {
                unreachable!()
            };
            let exact = exact_quantile(&sorted, quantile.fraction());
            let estimate = agg.value(kind).unwrap();
            let error = (estimate - exact).abs() / exact;
            assert!(
                error <= 0.01,
                "{q}: estimate {estimate} exact {exact} error {error}"
            );
        }
    }

    #[test]
    fn merged_sketch_gives_the_quantile_of_the_union_not_a_mean_of_quantiles() {
        let low: Vec<f64> = (1..=1000).map(f64::from).collect();
        let high: Vec<f64> = (1..=100).map(|v| 10_000.0 + f64::from(v)).collect();
        let (mut a, mut b) = (Aggregate::new(), Aggregate::new());
        low.iter().for_each(|v| a.add(*v, 0));
        high.iter().for_each(|v| b.add(*v, 0));
        a.merge(&b);
        let mut all: Vec<f64> = low.iter().chain(&high).copied().collect();
        all.sort_by(f64::total_cmp);
        let exact = exact_quantile(&all, 0.95);
        let p95 = a.value("p95".parse().unwrap()).unwrap();
        assert!(
            (p95 - exact).abs() / exact <= 0.01,
            "p95 {p95} exact {exact}"
        );
        assert_eq!(a.count, 1100);
        assert_eq!(a.max, 10_100.0);
    }

    #[test]
    fn exact_fields_merge_exactly_and_last_follows_time() {
        let mut a = Aggregate::new();
        a.add(2.0, 10);
        a.add(-4.0, 5);
        let mut b = Aggregate::new();
        b.add(8.5, 20);
        a.merge(&b);
        assert_eq!((a.count, a.sum, a.min, a.max), (3, 6.5, -4.0, 8.5));
        assert_eq!((a.last, a.last_ts), (8.5, 20));
        assert_eq!(a.value(AggKind::Avg), Some(6.5 / 3.0));
    }

    #[test]
    fn last_on_a_tied_timestamp_does_not_depend_on_order_or_merging() {
        let points = [(3.0, 50), (9.0, 50), (1.0, 40), (4.0, 50)];
        let mut forward = Aggregate::new();
        points.iter().for_each(|&(v, ts)| forward.add(v, ts));
        let mut backward = Aggregate::new();
        points.iter().rev().for_each(|&(v, ts)| backward.add(v, ts));
        let mut merged = Aggregate::new();
        for &(v, ts) in &points {
            let mut one = Aggregate::new();
            one.add(v, ts);
            merged.merge(&one);
        }
        for agg in [&forward, &backward, &merged] {
            assert_eq!((agg.last_ts, agg.last), (50, 9.0));
        }
    }

    #[test]
    fn stored_parts_round_trip() {
        let mut a = Aggregate::new();
        for v in skewed(5000, 3) {
            a.add(v, 1);
        }
        let bytes = a.sketch_bytes();
        let b = Aggregate::from_parts(a.parts(&bytes)).unwrap();
        for q in ["p50", "p99", "max", "avg"] {
            let kind = q.parse().unwrap();
            assert_eq!(a.value(kind), b.value(kind), "{q}");
        }
    }

    #[test]
    fn corrupt_sketch_bytes_are_an_error_not_a_panic() {
        let mut three = Aggregate::new();
        (0..3).for_each(|i| three.add(f64::from(i), 0));
        for bytes in [&[][..], &[0xff; 3][..], &[2, 9, 9, 9, 9, 9, 9, 9, 9, 9][..]] {
            let _ = Aggregate::from_parts(three.parts(bytes));
        }
        assert!(Aggregate::from_parts(three.parts(&[])).is_err());
    }

    #[test]
    fn empty_aggregate_has_no_values() {
        assert_eq!(Aggregate::new().value(AggKind::Max), None);
    }

    #[test]
    fn aggregation_names_parse_and_print() {
        for name in [
            "count", "sum", "min", "max", "avg", "last", "increase", "rate", "p50", "p99.9", "p0",
            "p100",
        ] {
            assert_eq!(name.parse::<AggKind>().unwrap().to_string(), name);
        }
        for bad in ["p101", "p", "median", "p9.99", "P95"] {
            assert!(bad.parse::<AggKind>().is_err(), "{bad}");
        }
        assert_eq!(AggKind::parse_list("avg, max,avg").unwrap().len(), 2);
        assert!(AggKind::parse_list(" , ").is_err());
    }
}
