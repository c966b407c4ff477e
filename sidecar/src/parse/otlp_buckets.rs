//! OTLP histogram data points as bucket counts: explicit-bucket histograms
//! by their bounds, exponential histograms by the bounds their scale gives
//! (`base = 2^(2^-scale)`, bucket `i` is `(base^i, base^(i+1)]`), so both
//! become the pipeline's sketch through `pulse_core::histogram`, and a
//! quantile stays within the bucket of the true one (an exponential
//! histogram's own resolution) plus the sketch's 1 %.

use opentelemetry_proto::tonic::metrics::v1::{ExponentialHistogramDataPoint, HistogramDataPoint};
use pulse_core::histogram::Cumulative;

/// More buckets than any SDK writes (the default exponential histogram
/// keeps 160): a bigger point is refused rather than expanded.
const MAX_BUCKETS: usize = 4_096;

/// An explicit-bucket point as cumulative counts (`+Inf` last).
pub fn explicit(dp: &HistogramDataPoint) -> Result<Cumulative, String> {
    if dp.bucket_counts.len() != dp.explicit_bounds.len() + 1 {
        return Err(format!(
            "{} bucket counts for {} bounds",
            dp.bucket_counts.len(),
            dp.explicit_bounds.len()
        ));
    }
    let bounds = dp.explicit_bounds.iter().copied().chain([f64::INFINITY]);
    checked(bounds.zip(dp.bucket_counts.iter().copied()), dp.sum)
}

/// An exponential point as cumulative counts: its negative buckets, the
/// zero bucket, its positive buckets, each bucket's lower edge given as a
/// bound of its own so no count is spread below its bucket.
pub fn exponential(dp: &ExponentialHistogramDataPoint) -> Result<Cumulative, String> {
    let base = 2f64.powf(2f64.powi(-dp.scale.clamp(-10, 20)));
    let edge = |index: i64| base.powf(index as f64);
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    if let Some(negative) = &dp.negative {
        let offset = i64::from(negative.offset);
        let len = negative.bucket_counts.len() as i64;
        buckets.push((-edge(offset + len), 0));
        // Bucket i holds [-(base^(i+1)), -(base^i)): most negative first.
        for (k, count) in negative.bucket_counts.iter().enumerate().rev() {
            buckets.push((-edge(offset + k as i64), *count));
        }
    }
    // The zero bucket is [-threshold, threshold] (a point when it is 0).
    let zero = dp.zero_threshold.max(0.0);
    buckets.push((
        if zero > 0.0 {
            -zero
        } else {
            -f64::MIN_POSITIVE
        },
        0,
    ));
    buckets.push((zero, dp.zero_count));
    if let Some(positive) = &dp.positive {
        let offset = i64::from(positive.offset);
        if edge(offset) > dp.zero_threshold.max(0.0) {
            buckets.push((edge(offset), 0));
        }
        for (k, count) in positive.bucket_counts.iter().enumerate() {
            buckets.push((edge(offset + k as i64 + 1), *count));
        }
    }
    buckets.push((f64::INFINITY, 0));
    checked(buckets.into_iter(), dp.sum)
}

/// Per-bucket counts made cumulative, within [`MAX_BUCKETS`] and checked.
fn checked(
    buckets: impl Iterator<Item = (f64, u64)>,
    sum: Option<f64>,
) -> Result<Cumulative, String> {
    let mut state = Cumulative {
        bounds: Vec::new(),
        counts: Vec::new(),
        sum,
    };
    let mut total = 0u64;
    for (bound, count) in buckets {
        if state.bounds.len() == MAX_BUCKETS {
            return Err(format!("more than {MAX_BUCKETS} buckets"));
        }
        total = total.saturating_add(count);
        state.bounds.push(bound);
        state.counts.push(total as f64);
    }
    state.check()?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;

    use super::*;

    #[test]
    fn explicit_buckets_become_cumulative_counts() {
        let dp = HistogramDataPoint {
            explicit_bounds: vec![1.0, 5.0],
            bucket_counts: vec![2, 0, 3],
            sum: Some(20.0),
            ..Default::default()
        };
        let state = explicit(&dp).unwrap();
        assert_eq!(state.bounds, [1.0, 5.0, f64::INFINITY]);
        assert_eq!(state.counts, [2.0, 2.0, 5.0]);
        let bad = HistogramDataPoint {
            bucket_counts: vec![1],
            ..dp
        };
        assert!(explicit(&bad).is_err());
    }

    #[test]
    fn exponential_buckets_keep_their_scale_and_a_quantile_stays_in_its_bucket() {
        // Scale 3: base 2^(1/8). 90 observations in bucket 8 = (2, 2.18],
        // 10 in bucket 16 = (4, 4.36]; 5 at zero and 5 negative in bucket 0.
        let mut counts = vec![0u64; 9];
        counts[0] = 90;
        counts[8] = 10;
        let dp = ExponentialHistogramDataPoint {
            scale: 3,
            zero_count: 5,
            positive: Some(Buckets {
                offset: 8,
                bucket_counts: counts,
            }),
            negative: Some(Buckets {
                offset: 0,
                bucket_counts: vec![5],
            }),
            ..Default::default()
        };
        let state = exponential(&dp).unwrap();
        let zero = Cumulative {
            counts: vec![0.0; state.counts.len()],
            ..state.clone()
        };
        let observations = state
            .increase_since(Some(&zero))
            .unwrap()
            .distribution()
            .unwrap();
        assert_eq!(observations.count(), 110);
        let base = 2f64.powf(1.0 / 8.0);
        let p50 = observations.quantile(0.5).unwrap();
        assert!((2.0 * 0.99..=2.0 * base * 1.01).contains(&p50), "{p50}");
        let p99 = observations.quantile(0.99).unwrap();
        assert!((4.0 * 0.99..=4.0 * base * 1.01).contains(&p99), "{p99}");
        let p1 = observations.quantile(0.01).unwrap();
        assert!((-base * 1.01..=-0.99).contains(&p1), "{p1}");
    }
}
