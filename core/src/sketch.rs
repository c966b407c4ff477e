//! A distribution of observations carried by one point: the pipeline's
//! mergeable quantile sketch (DDSketch, 1 % relative accuracy, the same one
//! every window holds) with exact count, sum, min and max.
//!
//! Sources that already summarise observations (Prometheus and OTLP
//! histograms, StatsD timers flushed by the sidecar) send one
//! [`Distribution`] per series and interval instead of every sample: the
//! window merges its bins, so quantiles stay as accurate as if each sample had
//! been sent.
//!
//! On the wire the sketch travels in DataDog's standard DDSketch binary
//! encoding (the one the Java, Go and Python libraries read and write), base64
//! in JSON and raw bytes in the bus record.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

/// A new empty DDSketch of the one configuration every Pulse sketch uses.
pub(crate) fn empty_sketch() -> DDSketch {
    DDSketch::new(SketchConfig::defaults())
}

/// A stored or received sketch could not be read, or is not one Pulse can merge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SketchError(pub(crate) String);

/// Most observations one received sketch may hold (2^40, about 10^12), so
/// the bins of the sketches merged into one window cannot overflow.
pub const MAX_SKETCH_COUNT: u64 = 1 << 40;

/// Decodes DataDog's DDSketch encoding, refusing a sketch of another
/// configuration (relative accuracy, bin limit): its bins would not line up
/// with Pulse's, and a merge would mix them wrongly.
pub(crate) fn decode_sketch(bytes: &[u8]) -> Result<DDSketch, SketchError> {
    let sketch = DDSketch::from_java_bytes(bytes)
        .map_err(|e| SketchError(format!("not a DDSketch in DataDog's encoding: {e:?}")))?;
    if sketch.count() as u64 > MAX_SKETCH_COUNT {
        return Err(SketchError(format!(
            "the DDSketch holds {} observations, more than the {MAX_SKETCH_COUNT} one sketch may hold",
            sketch.count()
        )));
    }
    if empty_sketch().merge(&sketch).is_err() {
        return Err(SketchError(
            "the DDSketch uses another configuration than Pulse's (relative accuracy 0.01, 2048 bins, min 1e-9)"
                .into(),
        ));
    }
    Ok(sketch)
}

/// Observations summarised as one mergeable sketch plus exact count, sum,
/// min and max: the payload of a histogram point.
///
/// Build one with [`Distribution::observe`] / [`Distribution::observe_n`]
/// (a bucket of a histogram: its representative value, its count), then fix
/// the exact sum, min and max when the source knows them
/// ([`Distribution::set_sum`], [`Distribution::set_min_max`]).
#[derive(Clone)]
pub struct Distribution {
    sketch: DDSketch,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Distribution {
    fn default() -> Self {
        Distribution::new()
    }
}

impl fmt::Debug for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Distribution")
            .field("count", &self.count())
            .field("sum", &self.sum)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// Two distributions are equal when their summaries and sketch bins are.
impl PartialEq for Distribution {
    fn eq(&self, other: &Self) -> bool {
        self.sum.to_bits() == other.sum.to_bits()
            && self.min.to_bits() == other.min.to_bits()
            && self.max.to_bits() == other.max.to_bits()
            && self.sketch_bytes() == other.sketch_bytes()
    }
}

impl Distribution {
    /// No observations yet.
    pub fn new() -> Distribution {
        Distribution {
            sketch: empty_sketch(),
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// A distribution of these observations.
    pub fn of(values: &[f64]) -> Distribution {
        let mut d = Distribution::new();
        values.iter().for_each(|v| d.observe(*v));
        d
    }

    /// Adds one observation.
    pub fn observe(&mut self, value: f64) {
        self.observe_n(value, 1);
    }

    /// Adds `n` observations of `value` at once (a histogram bucket: its
    /// representative value and its count). `n == 0` adds nothing.
    pub fn observe_n(&mut self, value: f64, n: u64) {
        if n == 0 {
            return;
        }
        self.sketch.add_with_count(value, n);
        self.sum += value * n as f64;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Replaces the sum with the exact one the source knows (a histogram's
    /// `_sum`), instead of the sum of the representative values.
    pub fn set_sum(&mut self, sum: f64) {
        self.sum = sum;
    }

    /// Replaces min and max with the exact ones the source knows (OTLP's
    /// `min`/`max`).
    pub fn set_min_max(&mut self, min: f64, max: f64) {
        self.min = min;
        self.max = max;
    }

    /// Merges `other` in: bins add, so the result is the distribution of
    /// both sets of observations.
    pub fn merge(&mut self, other: &Distribution) {
        if other.count() == 0 {
            return;
        }
        // Both sketches are of Pulse's one configuration (checked on decode).
        let _ = self.sketch.merge(&other.sketch);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// How many observations it holds.
    pub fn count(&self) -> u64 {
        self.sketch.count() as u64
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn min(&self) -> f64 {
        self.min
    }

    pub fn max(&self) -> f64 {
        self.max
    }

    /// The mean of the observations (0 when there are none): the `value` a
    /// histogram point carries, e.g. in the raw-points table.
    pub fn mean(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            n => self.sum / n as f64,
        }
    }

    /// The quantile `q` in `[0, 1]` within the sketch's 1 % relative accuracy.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.quantile(q).ok().flatten()
    }

    /// The sketch in DataDog's standard binary encoding.
    pub fn sketch_bytes(&self) -> Vec<u8> {
        self.sketch.to_java_bytes()
    }

    /// The sketch, base64 (standard alphabet, padded), as JSON carries it.
    pub fn sketch_base64(&self) -> String {
        BASE64.encode(self.sketch_bytes())
    }

    /// Rebuilds a distribution from a sketch in DataDog's encoding and, when
    /// given, its exact sum, min and max (otherwise the sketch's own).
    pub fn from_sketch_bytes(
        bytes: &[u8],
        sum: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Result<Distribution, SketchError> {
        let sketch = decode_sketch(bytes)?;
        Ok(Distribution {
            sum: sum.or(sketch.sum()).unwrap_or(0.0),
            min: min.or(sketch.min()).unwrap_or(f64::INFINITY),
            max: max.or(sketch.max()).unwrap_or(f64::NEG_INFINITY),
            sketch,
        })
    }

    /// [`Distribution::from_sketch_bytes`] of a base64 sketch.
    pub fn from_sketch_base64(
        text: &str,
        sum: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Result<Distribution, SketchError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|e| SketchError(format!("`ddsketch` is not base64: {e}")))?;
        Distribution::from_sketch_bytes(&bytes, sum, min, max)
    }

    /// Why this distribution cannot be a point, if it cannot: no
    /// observations, a non-finite summary, or min above max.
    pub fn problem(&self) -> Option<String> {
        if self.count() == 0 {
            return Some("holds no observations; send nothing for an empty interval".into());
        }
        if !(self.sum.is_finite() && self.min.is_finite() && self.max.is_finite()) {
            return Some("sum, min and max must be finite numbers".into());
        }
        if self.min > self.max {
            return Some(format!("min {} is above max {}", self.min, self.max));
        }
        None
    }

    /// The sketch itself, for merging into a window's aggregate.
    pub(crate) fn ddsketch(&self) -> &DDSketch {
        &self.sketch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_and_buckets_give_the_same_distribution() {
        let mut a = Distribution::new();
        (0..5).for_each(|_| a.observe(0.25));
        let mut b = Distribution::new();
        b.observe_n(0.25, 5);
        assert_eq!(a, b);
        assert_eq!(
            (b.count(), b.sum(), b.min(), b.max()),
            (5, 1.25, 0.25, 0.25)
        );
    }

    #[test]
    fn the_wire_encoding_round_trips_with_exact_summaries() {
        let mut d = Distribution::of(&[0.1, 0.2, 0.4, 3.0]);
        d.set_sum(3.6999);
        let back = Distribution::from_sketch_base64(
            &d.sketch_base64(),
            Some(d.sum()),
            Some(d.min()),
            Some(d.max()),
        )
        .unwrap();
        assert_eq!(back, d);
        let own = Distribution::from_sketch_bytes(&d.sketch_bytes(), None, None, None).unwrap();
        assert_eq!((own.count(), own.min(), own.max()), (4, 0.1, 3.0));
    }

    #[test]
    fn garbage_and_foreign_configurations_are_refused() {
        assert!(Distribution::from_sketch_base64("!!", None, None, None).is_err());
        assert!(Distribution::from_sketch_bytes(&[0xff, 1], None, None, None).is_err());
        let mut foreign = DDSketch::new(SketchConfig::new(0.05, 2048, 1e-9));
        foreign.add(1.0);
        let error = Distribution::from_sketch_bytes(&foreign.to_java_bytes(), None, None, None)
            .unwrap_err();
        assert!(error.0.contains("another configuration"), "{error}");
    }

    #[test]
    fn empty_or_non_finite_distributions_are_problems() {
        assert!(Distribution::new().problem().is_some());
        let mut d = Distribution::of(&[1.0]);
        assert_eq!(d.problem(), None);
        d.set_sum(f64::NAN);
        assert!(d.problem().is_some());
    }
}
