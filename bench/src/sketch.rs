//! Sketch inserts against the exact alternative (keep every value, sort, index).

use std::hint::black_box;
use std::time::Instant;

use pulse_core::{AggKind, Aggregate};

use super::data::skewed_values;
use super::median;

/// The quantiles both sides read at the end.
const QUANTILES: [(&str, f64); 4] = [("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99)];

/// Median rates over `runs` of `n` values, plus how the two sides compare.
pub struct SketchResult {
    pub values: usize,
    pub sketch_rate: f64,
    pub exact_rate: f64,
    /// Largest relative error of the sketch's quantiles against the exact ones.
    pub max_relative_error: f64,
    /// Encoded sketch size against the 8 bytes per value the exact way keeps.
    pub sketch_bytes: usize,
}

pub fn measure(n: usize, runs: usize) -> Result<SketchResult, String> {
    let values = skewed_values(n);
    let kinds: Vec<AggKind> = QUANTILES
        .iter()
        .map(|(label, _)| label.parse())
        .collect::<Result<_, _>>()?;
    let (mut sketch_rates, mut exact_rates) = (Vec::new(), Vec::new());
    let (mut estimates, mut exact) = (Vec::new(), Vec::new());
    let mut sketch_bytes = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let mut agg = Aggregate::new();
        for (i, &v) in values.iter().enumerate() {
            agg.add(black_box(v), i as i64);
        }
        estimates = kinds
            .iter()
            .map(|&k| agg.value(k).unwrap_or(f64::NAN))
            .collect();
        sketch_rates.push(n as f64 / started.elapsed().as_secs_f64());
        sketch_bytes = black_box(&agg).sketch_bytes().len();

        let started = Instant::now();
        let mut kept = Vec::new();
        for &v in &values {
            kept.push(black_box(v));
        }
        kept.sort_unstable_by(f64::total_cmp);
        exact = QUANTILES
            .iter()
            .map(|&(_, q)| nearest_rank(&kept, q))
            .collect();
        exact_rates.push(n as f64 / started.elapsed().as_secs_f64());
        black_box(&kept);
    }
    let max_relative_error = estimates
        .iter()
        .zip(&exact)
        .map(|(e, x)| ((e - x) / x).abs())
        .fold(0.0, f64::max);
    Ok(SketchResult {
        values: n,
        sketch_rate: median(&mut sketch_rates),
        exact_rate: median(&mut exact_rates),
        max_relative_error,
        sketch_bytes,
    })
}

/// The exact quantile `q` with the rank convention DDSketch uses.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len().saturating_sub(1) as f64).floor() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}
