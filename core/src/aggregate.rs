//! Mergeable aggregates: exact count, sum, min, max and last, plus a DDSketch
//! (1 % relative accuracy) for quantiles.
//!
//! An [`Aggregate`] is what a window holds while open and what the store keeps
//! once closed. Because every part merges exactly (and the sketch merges without
//! losing its accuracy guarantee), the dashboard can combine any set of series and
//! windows later: the p95 of all hosts is the p95 of the union, not a mean of p95s.

use std::fmt;
use std::str::FromStr;

use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::TimestampMs;

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
            sketch: DDSketch::new(SketchConfig::defaults()),
        }
    }

    /// Adds one point. `last` follows the rule of [`Aggregate::takes_last`].
    #[inline]
    pub fn add(&mut self, value: f64, ts: TimestampMs) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if self.takes_last(ts, value) {
            self.last = value;
            self.last_ts = ts;
        }
        self.sketch.add(value);
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
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if self.takes_last(other.last_ts, other.last) {
            self.last = other.last;
            self.last_ts = other.last_ts;
        }
        // Both sketches are built from the same fixed configuration, so a merge
        // error cannot happen; if a foreign sketch ever slipped in, its quantiles are
        // dropped rather than mixed wrongly.
        let _ = self.sketch.merge(&other.sketch);
    }

    /// The value of one aggregation, or `None` for an empty aggregate.
    pub fn value(&self, kind: AggKind) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        match kind {
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

    /// Rebuilds an aggregate from its stored parts.
    pub fn from_parts(
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
        last: f64,
        last_ts: TimestampMs,
        sketch: &[u8],
    ) -> Result<Aggregate, SketchDecodeError> {
        let sketch = if count == 0 {
            DDSketch::new(SketchConfig::defaults())
        } else {
            DDSketch::from_java_bytes(sketch).map_err(|e| SketchDecodeError(format!("{e:?}")))?
        };
        Ok(Aggregate {
            count,
            sum,
            min,
            max,
            last,
            last_ts,
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
            _ => {
                let bad = || {
                    format!(
                        "unknown aggregation `{s}`: use count, sum, min, max, avg, last or a quantile p0..p100 such as p95 or p99.9"
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
        let b =
            Aggregate::from_parts(a.count, a.sum, a.min, a.max, a.last, a.last_ts, &bytes).unwrap();
        for q in ["p50", "p99", "max", "avg"] {
            let kind = q.parse().unwrap();
            assert_eq!(a.value(kind), b.value(kind), "{q}");
        }
    }

    #[test]
    fn corrupt_sketch_bytes_are_an_error_not_a_panic() {
        for bytes in [&[][..], &[0xff; 3][..], &[2, 9, 9, 9, 9, 9, 9, 9, 9, 9][..]] {
            let _ = Aggregate::from_parts(3, 1.0, 0.0, 1.0, 1.0, 0, bytes);
        }
        assert!(Aggregate::from_parts(3, 1.0, 0.0, 1.0, 1.0, 0, &[]).is_err());
    }

    #[test]
    fn empty_aggregate_has_no_values() {
        assert_eq!(Aggregate::new().value(AggKind::Max), None);
    }

    #[test]
    fn aggregation_names_parse_and_print() {
        for name in [
            "count", "sum", "min", "max", "avg", "last", "p50", "p99.9", "p0", "p100",
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
