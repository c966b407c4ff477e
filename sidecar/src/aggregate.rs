//! StatsD aggregation, as StatsD users expect it: per flush interval, counters
//! are summed (each sample scaled by its sample rate) into a delta counter
//! point, gauges keep their last value, sets count distinct members. Each
//! series that changed in the interval becomes one point at flush time.
//!
//! Timers, histograms and distributions become one histogram point per
//! series per flush: the interval's samples in the pipeline's mergeable
//! sketch (`pulse_core::Distribution`, DDSketch at 1 % relative accuracy,
//! exact count, sum, min and max). The processor merges sketches exactly, so
//! a window's quantiles across every pod are what they would be from every
//! sample, while the sidecar sends a few hundred bytes per series instead of
//! every sample (BENCHMARKS.md, "StatsD timers as sketches"). A percentile
//! computed here would not merge (the p95 of p95s is not a p95); a sketch
//! does. Their sample rate is not used to invent samples, so a window's
//! count is the count of samples sent.
//!
//! A DogStatsD line stamped with `|T` is the client's own value for that
//! instant: it is forwarded as its own point (a one-sample sketch for the
//! timer types), so it lands in the window of its timestamp.

use std::collections::{HashMap, HashSet};

use pulse_core::validate::UncheckedPoint;
use pulse_core::{Distribution, MetricKind, Tags, TimestampMs};

use crate::parse::Rejection;
use crate::parse::statsd::{Kind, Line, Values};

type SeriesKey = (String, Tags);

#[derive(Debug)]
struct GaugeState {
    value: f64,
    /// Changed since the last flush.
    touched: bool,
}

/// The state between two flushes; memory is bounded by `max_series` per kind.
#[derive(Debug)]
pub struct Aggregator {
    max_series: usize,
    counters: HashMap<SeriesKey, f64>,
    gauges: HashMap<SeriesKey, GaugeState>,
    sets: HashMap<SeriesKey, HashSet<String>>,
    /// The samples of timers, histograms and distributions of the interval.
    distributions: HashMap<SeriesKey, Distribution>,
    /// Stamped (`|T`) points, forwarded as they come.
    samples: Vec<UncheckedPoint>,
}

impl Aggregator {
    pub fn new(max_series: usize) -> Aggregator {
        Aggregator {
            max_series,
            counters: HashMap::new(),
            gauges: HashMap::new(),
            sets: HashMap::new(),
            distributions: HashMap::new(),
            samples: Vec::new(),
        }
    }

    /// Adds one line (its points are stamped at flush time, or with their
    /// own `|T` timestamp). Returns
    /// how many samples the line held (the points it stands for).
    pub fn add(&mut self, line: Line<'_>) -> Result<usize, Rejection> {
        let Line {
            name,
            kind,
            values,
            sample_rate,
            tags,
            timestamp_secs,
        } = line;
        let key = (name, tags);
        let full = |len: usize, known: bool| len >= self.max_series && !known;
        match (kind, values) {
            // DogStatsD: a stamped counter or gauge is the client's own
            // aggregate for that instant, forwarded as it is (as the Datadog
            // Agent does), so it lands in the window of its timestamp rather
            // than the one of the next flush.
            (Kind::Counter | Kind::Gauge, Values::Numbers(values)) if timestamp_secs.is_some() => {
                let (metric, tags) = key;
                let count = values.len();
                let point = match kind {
                    Kind::Counter => UncheckedPoint {
                        kind: MetricKind::DeltaCounter,
                        ..UncheckedPoint::gauge(
                            metric,
                            tags,
                            values.iter().map(|v| v / sample_rate).sum(),
                            timestamp_secs,
                        )
                    },
                    _ => UncheckedPoint::gauge(
                        metric,
                        tags,
                        *values.last().unwrap_or(&0.0),
                        timestamp_secs,
                    ),
                };
                self.samples.push(point);
                Ok(count)
            }
            (Kind::Counter, Values::Numbers(values)) => {
                if full(self.counters.len(), self.counters.contains_key(&key)) {
                    return Err(too_many_series(kind));
                }
                let sum: f64 = values.iter().map(|v| v / sample_rate).sum();
                *self.counters.entry(key).or_insert(0.0) += sum;
                Ok(values.len())
            }
            (Kind::Gauge, Values::Numbers(values)) => {
                let last = *values.last().unwrap_or(&0.0);
                self.set_gauge(key, |_| last).map(|()| values.len())
            }
            (Kind::Gauge, Values::GaugeDelta(delta)) => {
                self.set_gauge(key, |old| old + delta).map(|()| 1)
            }
            (Kind::Set, Values::Members(members)) => {
                if full(self.sets.len(), self.sets.contains_key(&key)) {
                    return Err(too_many_series(kind));
                }
                let set = self.sets.entry(key).or_default();
                // A set is bounded too: its members are what it holds.
                for member in &members {
                    if set.len() < self.max_series {
                        set.insert((*member).to_string());
                    }
                }
                Ok(members.len())
            }
            (_, Values::Numbers(values)) if values.iter().any(|v| !v.is_finite()) => Err(
                Rejection::new("invalid_value", "a sample is not a finite number"),
            ),
            (_, Values::Numbers(values)) if timestamp_secs.is_some() => {
                let (metric, tags) = key;
                let count = values.len();
                let observations = Distribution::of(&values);
                self.samples
                    .push(histogram_point(metric, tags, observations, timestamp_secs));
                Ok(count)
            }
            (_, Values::Numbers(values)) => {
                let known = self.distributions.contains_key(&key);
                if full(self.distributions.len(), known) {
                    return Err(too_many_series(kind));
                }
                let observations = self.distributions.entry(key).or_default();
                for value in &values {
                    observations.observe(*value);
                }
                Ok(values.len())
            }
            (kind, _) => Err(Rejection::malformed(format!(
                "values do not fit the type `{}`",
                kind.symbol()
            ))),
        }
    }

    fn set_gauge(&mut self, key: SeriesKey, update: impl Fn(f64) -> f64) -> Result<(), Rejection> {
        if self.gauges.len() >= self.max_series && !self.gauges.contains_key(&key) {
            return Err(too_many_series(Kind::Gauge));
        }
        let state = self.gauges.entry(key).or_insert(GaugeState {
            value: 0.0,
            touched: false,
        });
        let value = update(state.value);
        if value.is_finite() {
            state.value = value;
            state.touched = true;
            Ok(())
        } else {
            Err(Rejection::new(
                "invalid_value",
                "the gauge would not be finite",
            ))
        }
    }

    /// Stamped points waiting to be forwarded.
    pub fn pending_samples(&self) -> usize {
        self.samples.len()
    }

    /// Takes the stamped points waiting to be forwarded.
    pub fn take_samples(&mut self) -> Vec<UncheckedPoint> {
        std::mem::take(&mut self.samples)
    }

    /// Ends an interval: one point per counter (a delta counter), set,
    /// changed gauge and timer series (a histogram), stamped `now_ms`.
    /// Gauges keep their value for later adjustments; when their table is
    /// full, those unchanged for a whole interval are forgotten.
    pub fn flush(&mut self, now_ms: TimestampMs) -> Vec<UncheckedPoint> {
        let timestamp_secs = Some(now_ms as f64 / 1000.0);
        let point = |(metric, tags): SeriesKey, value: f64| {
            UncheckedPoint::gauge(metric, tags, value, timestamp_secs)
        };
        let mut points =
            Vec::with_capacity(self.counters.len() + self.sets.len() + self.distributions.len());
        points.extend(self.counters.drain().map(|(key, sum)| UncheckedPoint {
            kind: MetricKind::DeltaCounter,
            ..point(key, sum)
        }));
        points.extend(
            self.distributions
                .drain()
                .map(|((metric, tags), d)| histogram_point(metric, tags, d, timestamp_secs)),
        );
        points.extend(
            self.sets
                .drain()
                .map(|(key, members)| point(key, members.len() as f64)),
        );
        if self.gauges.len() >= self.max_series {
            self.gauges.retain(|_, state| state.touched);
        }
        for (key, state) in &mut self.gauges {
            if state.touched {
                state.touched = false;
                points.push(point(key.clone(), state.value));
            }
        }
        points
    }
}

/// A point carrying the observations of a timer series.
fn histogram_point(
    metric: String,
    tags: Tags,
    observations: Distribution,
    timestamp_secs: Option<f64>,
) -> UncheckedPoint {
    UncheckedPoint {
        kind: MetricKind::Histogram,
        sketch: Some(Box::new(observations)),
        ..UncheckedPoint::gauge(metric, tags, 0.0, timestamp_secs)
    }
}

fn too_many_series(kind: Kind) -> Rejection {
    Rejection::new(
        "too_many_series",
        format!(
            "more distinct `{}` series in one flush interval than statsd.max_series",
            kind.symbol()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::statsd::parse_line;

    const NOW: i64 = 1_721_199_945_000;

    fn feed(agg: &mut Aggregator, lines: &[&str]) {
        for line in lines {
            agg.add(parse_line(line).unwrap()).unwrap();
        }
    }

    fn values(points: &[UncheckedPoint], metric: &str) -> Vec<f64> {
        let mut values: Vec<f64> = points
            .iter()
            .filter(|p| p.metric == metric)
            .map(|p| p.value)
            .collect();
        values.sort_by(f64::total_cmp);
        values
    }

    #[test]
    fn counters_are_summed_with_their_sample_rate_per_series() {
        let mut agg = Aggregator::new(100);
        feed(
            &mut agg,
            &["hits:1|c", "hits:2|c", "hits:1|c|@0.1", "hits:5|c|#env:a"],
        );
        let points = agg.flush(NOW);
        assert_eq!(values(&points, "hits"), vec![5.0, 13.0]);
        assert!(
            points
                .iter()
                .all(|p| p.timestamp_secs == Some(NOW as f64 / 1000.0))
        );
        assert!(agg.flush(NOW).is_empty(), "an idle counter sends nothing");
    }

    #[test]
    fn gauges_keep_the_last_value_and_deltas_adjust_it() {
        let mut agg = Aggregator::new(100);
        feed(&mut agg, &["temp:10|g", "temp:12|g"]);
        assert_eq!(values(&agg.flush(NOW), "temp"), vec![12.0]);
        feed(&mut agg, &["temp:+3|g", "temp:-1|g"]);
        assert_eq!(values(&agg.flush(NOW), "temp"), vec![14.0]);
        assert!(
            agg.flush(NOW).is_empty(),
            "an unchanged gauge sends nothing"
        );
    }

    #[test]
    fn stamped_counters_and_gauges_keep_their_timestamp() {
        let mut agg = Aggregator::new(100);
        feed(
            &mut agg,
            &[
                "hits:2|c|@0.5|T1721199900",
                "temp:7:9|g|T1721199910",
                "hits:1|c",
            ],
        );
        let stamped = agg.take_samples();
        assert_eq!(values(&stamped, "hits"), vec![4.0]);
        assert_eq!(stamped[0].kind, MetricKind::DeltaCounter);
        assert_eq!(values(&stamped, "temp"), vec![9.0]);
        let at = |metric: &str| {
            stamped
                .iter()
                .find(|p| p.metric == metric)
                .unwrap()
                .timestamp_secs
        };
        assert_eq!(at("hits"), Some(1_721_199_900.0));
        assert_eq!(at("temp"), Some(1_721_199_910.0));
        assert_eq!(
            values(&agg.flush(NOW), "hits"),
            vec![1.0],
            "unstamped ones still aggregate"
        );
    }

    #[test]
    fn sets_count_distinct_members() {
        let mut agg = Aggregator::new(100);
        feed(&mut agg, &["users:alice|s", "users:bob|s", "users:alice|s"]);
        assert_eq!(values(&agg.flush(NOW), "users"), vec![2.0]);
    }

    #[test]
    fn timers_histograms_and_distributions_flush_one_sketch_per_series() {
        let mut agg = Aggregator::new(100);
        feed(
            &mut agg,
            &[
                "lat:10|ms|@0.5",
                "lat:20|ms",
                "size:1:2:3|d",
                "size:4|h",
                "q:7|h|T1721199900",
            ],
        );
        assert_eq!(agg.pending_samples(), 1, "only the stamped sample waits");
        let stamped = agg.take_samples();
        assert_eq!(stamped[0].timestamp_secs, Some(1_721_199_900.0));
        assert_eq!(stamped[0].kind, MetricKind::Histogram);
        let points = agg.flush(NOW);
        assert_eq!(points.len(), 2);
        let sketch = |metric: &str| {
            let point = points.iter().find(|p| p.metric == metric).unwrap();
            assert_eq!(point.kind, MetricKind::Histogram);
            point.sketch.clone().unwrap()
        };
        let lat = sketch("lat");
        assert_eq!(
            (lat.count(), lat.sum(), lat.min(), lat.max()),
            (2, 30.0, 10.0, 20.0)
        );
        assert_eq!(sketch("size").count(), 4);
        assert!(agg.flush(NOW).is_empty());
    }

    #[test]
    fn counters_flush_as_delta_counters() {
        let mut agg = Aggregator::new(100);
        feed(&mut agg, &["hits:1|c"]);
        assert_eq!(agg.flush(NOW)[0].kind, MetricKind::DeltaCounter);
    }

    #[test]
    fn series_beyond_the_limit_are_refused_until_the_next_flush() {
        let mut agg = Aggregator::new(2);
        feed(&mut agg, &["a:1|c", "b:1|c", "a:1|c"]);
        let refused = agg.add(parse_line("c:1|c").unwrap()).unwrap_err();
        assert_eq!(refused.reason, "too_many_series");
        agg.flush(NOW);
        feed(&mut agg, &["c:1|c"]);
        // Gauges: a full table forgets the ones unchanged for an interval.
        feed(&mut agg, &["g1:1|g", "g2:1|g"]);
        agg.flush(NOW);
        feed(&mut agg, &["g1:2|g"]);
        agg.flush(NOW);
        feed(&mut agg, &["g3:1|g"]);
        assert_eq!(values(&agg.flush(NOW), "g3"), vec![1.0]);
    }
}
