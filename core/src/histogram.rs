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

use sketches_ddsketch::{Config, DDSketch};

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

    /// The observations as a sketch (see the module's error bound); `None`
    /// when there were none.
    pub fn sketch(&self) -> Option<DDSketch> {
        let mut sketch = DDSketch::new(Config::defaults());
        for &(lower, upper, count) in &self.buckets {
            spread(&mut sketch, lower, upper, count);
        }
        (sketch.count() > 0).then_some(sketch)
    }
}

/// How many evenly spaced values stand for one bucket's observations.
const STEPS: u64 = 8;

/// Adds `count` observations spread evenly over `(lower, upper]`.
fn spread(sketch: &mut DDSketch, lower: f64, upper: f64, count: u64) {
    if count == 0 {
        return;
    }
    if lower == upper {
        sketch.add_with_count(upper, count);
        return;
    }
    let steps = count.min(STEPS);
    for step in 0..steps {
        // The remainder goes to the first steps, so the counts stay exact.
        let share = count / steps + u64::from(step < count % steps);
        let at = lower + (upper - lower) * (step as f64 + 0.5) / steps as f64;
        sketch.add_with_count(at, share);
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
        if self.bounds.windows(2).any(|w| !(w[0] < w[1])) || self.bounds.iter().any(|b| b.is_nan())
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
        let sketch = increase.sketch().unwrap();
        assert_eq!(sketch.count(), 11);
        // p50 lies in (0.1, 0.5]: the bound the module promises.
        let p50 = sketch.quantile(0.5).unwrap().unwrap();
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

    #[test]
    fn the_p95_of_many_observations_stays_within_its_bucket() {
        let zero = state(&[0.0; 4], 0.0);
        // 900 fast requests, 80 at (0.5, 1], 20 slower: p95 is in (0.5, 1].
        let later = state(&[900.0, 900.0, 980.0, 1000.0], 500.0);
        let sketch = later.increase_since(Some(&zero)).unwrap().sketch().unwrap();
        let p95 = sketch.quantile(0.95).unwrap().unwrap();
        assert!((0.5 * 0.99..=1.0 * 1.01).contains(&p95), "{p95}");
    }
}
