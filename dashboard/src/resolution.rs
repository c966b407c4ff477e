//! How fine a `query_range` answer is: which stored window it reads and how
//! wide each of its points is. Pure, so the choice is tested without a store.
//!
//! A day of 1m windows is 1,440 points per series: more than a panel has
//! pixels, and for 100 series more rows than a query may read. Tumbling windows
//! are aligned to the epoch and the processor feeds the coarser ones from the
//! finer ones (1m → 5m → 15m), so a 5m window holds exactly the points of its
//! five 1m windows, and several consecutive windows merge exactly (sketches
//! included). The answer is then the same numbers a client would get by
//! merging the fine windows itself, read from far fewer rows.

use pulse_core::TimestampMs;
use pulse_core::window::WindowSpec;

/// What a range is answered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The configured window whose stored results are read.
    pub source: String,
    /// The width of each answered point: windows whose starts fall in the same
    /// multiple of it (counted from the epoch) are merged into one point.
    pub step_ms: TimestampMs,
}

/// Chooses the resolution of a range of `span_ms` over window `asked`, given
/// every configured window, at most `max_points` points per series and the
/// `step_ms` asked for, if any.
///
/// - A sliding window is answered as stored: its windows overlap, so merging
///   them would count points twice. A `step` is refused for it.
/// - Without `step`: the finest configured tumbling window that is a multiple
///   of `asked` and yields at most `max_points` points; past the coarsest one,
///   consecutive windows of the coarsest are merged.
/// - With `step` (a multiple of `asked`'s size): that width, or a coarser
///   multiple when `max_points` needs it, read from the coarsest window that
///   divides it.
pub fn choose(
    windows: &[WindowSpec],
    asked: &WindowSpec,
    span_ms: TimestampMs,
    max_points: usize,
    step_ms: Option<TimestampMs>,
) -> Result<Resolution, String> {
    let stored = || Resolution {
        source: asked.label.clone(),
        step_ms: asked.slide_ms,
    };
    if asked.size_ms != asked.slide_ms {
        return match step_ms {
            Some(_) => Err(format!(
                "`step` merges consecutive windows, but `{}` is a sliding window whose windows overlap; ask a tumbling window or leave `step` out",
                asked.label
            )),
            None => Ok(stored()),
        };
    }
    let size = asked.size_ms;
    if let Some(step) = step_ms.filter(|step| step % size != 0) {
        return Err(format!(
            "`step` ({step} ms) must be a multiple of the window `{}` ({size} ms)",
            asked.label
        ));
    }
    let max_points = TimestampMs::try_from(max_points.max(1)).unwrap_or(TimestampMs::MAX);
    let fits = ceil_div(span_ms, max_points).max(size);
    let needed = step_ms.unwrap_or(0).max(fits);
    // Tumbling windows made of whole windows of `asked`, finest first.
    let mut candidates: Vec<&WindowSpec> = windows
        .iter()
        .filter(|w| w.size_ms == w.slide_ms && w.size_ms % size == 0)
        .collect();
    candidates.sort_by_key(|w| w.size_ms);
    let coarsest = candidates.last().copied().unwrap_or(asked);
    let (source, step) = match step_ms {
        Some(asked_step) => {
            // Coarsened for `max_points`: to a multiple of the asked step and
            // of the coarsest window that fits, so few rows are read.
            let unit = match candidates.iter().rev().find(|w| w.size_ms <= needed) {
                Some(w) if needed > asked_step => lcm(asked_step, w.size_ms),
                _ => asked_step,
            };
            let step = ceil_div(needed, unit).saturating_mul(unit);
            let source = candidates
                .iter()
                .rev()
                .find(|w| step % w.size_ms == 0)
                .copied()
                .unwrap_or(asked);
            (source, step)
        }
        None => match candidates.iter().find(|w| w.size_ms >= needed) {
            Some(fine) => (*fine, fine.size_ms),
            None => {
                let step = ceil_div(needed, coarsest.size_ms).saturating_mul(coarsest.size_ms);
                (coarsest, step)
            }
        },
    };
    Ok(Resolution {
        source: source.label.clone(),
        step_ms: step,
    })
}

/// `a / b` rounded up, for `a >= 0` and `b > 0` (signed `div_ceil` is unstable).
fn ceil_div(a: TimestampMs, b: TimestampMs) -> TimestampMs {
    a / b + TimestampMs::from(a % b != 0)
}

fn lcm(a: TimestampMs, b: TimestampMs) -> TimestampMs {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    (a / x.max(1)).saturating_mul(b)
}

/// The start of the point a window starting at `start_ms` belongs to.
pub fn bucket(start_ms: TimestampMs, step_ms: TimestampMs) -> TimestampMs {
    start_ms - start_ms.rem_euclid(step_ms.max(1))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIN: TimestampMs = 60_000;
    const HOUR: TimestampMs = 60 * MIN;

    fn windows() -> Vec<WindowSpec> {
        let m = |n: u64| Duration::from_secs(n * 60);
        vec![
            WindowSpec::tumbling(m(1)).unwrap(),
            WindowSpec::tumbling(m(5)).unwrap(),
            WindowSpec::tumbling(m(15)).unwrap(),
            WindowSpec::sliding(m(10), m(1)).unwrap(),
        ]
    }

    fn pick(
        asked: usize,
        span: TimestampMs,
        max: usize,
        step: Option<TimestampMs>,
    ) -> (String, TimestampMs) {
        let all = windows();
        let r = choose(&all, &all[asked], span, max, step).unwrap();
        (r.source, r.step_ms / MIN)
    }

    #[test]
    fn the_finest_window_that_fits_is_read() {
        assert_eq!(pick(0, HOUR, 240, None), ("1m".into(), 1));
        assert_eq!(pick(0, 6 * HOUR, 240, None), ("5m".into(), 5));
        assert_eq!(pick(0, 24 * HOUR, 240, None), ("15m".into(), 15));
        assert_eq!(pick(0, 24 * HOUR, 1440, None), ("1m".into(), 1));
        // A coarser window is never answered finer than asked.
        assert_eq!(pick(1, HOUR, 240, None), ("5m".into(), 5));
    }

    #[test]
    fn past_the_coarsest_window_its_windows_are_merged() {
        // A week in 240 points: 42 minutes each, rounded up to 3 × 15m.
        assert_eq!(pick(0, 7 * 24 * HOUR, 240, None), ("15m".into(), 45));
        assert_eq!(pick(0, 24 * HOUR, 1, None), ("15m".into(), 24 * 60));
    }

    #[test]
    fn a_step_is_kept_or_coarsened_and_read_from_the_coarsest_divisor() {
        assert_eq!(pick(0, HOUR, 240, Some(10 * MIN)), ("5m".into(), 10));
        assert_eq!(pick(0, HOUR, 240, Some(30 * MIN)), ("15m".into(), 30));
        assert_eq!(pick(0, HOUR, 240, Some(7 * MIN)), ("1m".into(), 7));
        // 24 h in at most 10 points needs 144 minutes: rounded up to 15m's
        // multiples, so 150-minute points from the 15m windows.
        assert_eq!(pick(0, 24 * HOUR, 10, Some(MIN)), ("15m".into(), 150));
        assert_eq!(pick(0, 24 * HOUR, 10, Some(20 * MIN)), ("15m".into(), 180));
    }

    #[test]
    fn bad_steps_and_sliding_windows_are_explained() {
        let all = windows();
        let err = choose(&all, &all[1], HOUR, 240, Some(7 * MIN)).unwrap_err();
        assert!(err.contains("multiple of the window `5m`"), "{err}");
        let err = choose(&all, &all[3], HOUR, 240, Some(10 * MIN)).unwrap_err();
        assert!(err.contains("sliding"), "{err}");
        // Without a step a sliding window is answered as stored.
        assert_eq!(
            choose(&all, &all[3], 24 * HOUR, 240, None).unwrap(),
            Resolution {
                source: "10m/1m".into(),
                step_ms: MIN
            }
        );
    }

    #[test]
    fn buckets_count_from_the_epoch() {
        assert_eq!(bucket(7 * MIN, 5 * MIN), 5 * MIN);
        assert_eq!(bucket(5 * MIN, 5 * MIN), 5 * MIN);
        assert_eq!(bucket(-MIN, 5 * MIN), -5 * MIN);
    }
}
