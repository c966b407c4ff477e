//! Counter math: growth across resets, joining the growth of two parts of a
//! series, and Prometheus's extrapolation of a window's growth to its edges.
//!
//! A cumulative counter only grows, except when the process that counts
//! restarts: then it starts again from zero, so a drop from 120 to 5 means
//! 5 more (not 115 fewer), the rule Prometheus's `increase()` and `rate()`
//! apply.

use crate::TimestampMs;

/// How much a counter grew from `from` to the next value `to`: the
/// difference, or after a reset (a drop) `to` itself.
#[inline]
pub fn growth(from: f64, to: f64) -> f64 {
    if to >= from { to - from } else { to }
}

/// The earliest and latest value points of a part of one series, and the
/// growth between them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ends {
    pub first: f64,
    pub first_ts: TimestampMs,
    pub last: f64,
    pub last_ts: TimestampMs,
    pub increase: f64,
}

/// The ends and growth of two parts of one series together.
///
/// Parts side by side in time join exactly, the growth from one's last
/// point to the other's first included. For parts that overlap, the growth
/// is the earlier part's plus the growth from its last point to the later
/// part's last (none when the later part ends inside the earlier one): exact
/// while the counter did not reset inside the overlap.
pub fn join(a: Ends, b: Ends) -> Ends {
    let (early, late) = if (a.first_ts, a.first) <= (b.first_ts, b.first) {
        (a, b)
    } else {
        (b, a)
    };
    let increase = if late.first_ts > early.last_ts {
        early.increase + growth(early.last, late.first) + late.increase
    } else if late.last_ts > early.last_ts {
        early.increase + growth(early.last, late.last)
    } else {
        early.increase
    };
    let (last, last_ts) = if late.last_ts > early.last_ts {
        (late.last, late.last_ts)
    } else {
        (early.last, early.last_ts)
    };
    Ends {
        first: early.first,
        first_ts: early.first_ts,
        last,
        last_ts,
        increase,
    }
}

/// The growth of a cumulative counter over the window `[start_ms, end_ms)`,
/// extrapolated from its first and last points to the window's edges the way
/// Prometheus's `increase()` does (`extrapolatedRate` in its engine): towards
/// an edge by the distance to it when that is under 1.1 average intervals
/// between points, else by half an interval, and never below the time the
/// counter would have been zero. `None` with fewer than two points.
pub fn extrapolated_increase(
    ends: Ends,
    points: u64,
    start_ms: TimestampMs,
    end_ms: TimestampMs,
) -> Option<f64> {
    if points < 2 || ends.last_ts <= ends.first_ts {
        return None;
    }
    let seconds = |ms: TimestampMs| ms as f64 / 1000.0;
    let sampled = seconds(ends.last_ts - ends.first_ts);
    let average = sampled / (points - 1) as f64;
    let mut to_start = seconds(ends.first_ts - start_ms).max(0.0);
    let to_end = seconds(end_ms - ends.last_ts).max(0.0);
    if ends.increase > 0.0 && ends.first >= 0.0 {
        to_start = to_start.min(sampled * (ends.first / ends.increase));
    }
    let threshold = average * 1.1;
    let extend = |gap: f64| if gap < threshold { gap } else { average / 2.0 };
    let interval = sampled + extend(to_start) + extend(to_end);
    Some(ends.increase * interval / sampled)
}

/// `increase` per second of the window `[start_ms, end_ms)`.
pub fn per_second(increase: f64, start_ms: TimestampMs, end_ms: TimestampMs) -> f64 {
    increase / ((end_ms - start_ms) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(points: &[(TimestampMs, f64)]) -> Ends {
        let increase = points.windows(2).map(|w| growth(w[0].1, w[1].1)).sum();
        Ends {
            first: points[0].1,
            first_ts: points[0].0,
            last: points[points.len() - 1].1,
            last_ts: points[points.len() - 1].0,
            increase,
        }
    }

    #[test]
    fn a_drop_is_a_reset_to_zero() {
        assert_eq!(growth(10.0, 25.0), 15.0);
        assert_eq!(growth(120.0, 5.0), 5.0);
    }

    #[test]
    fn side_by_side_parts_join_exactly_in_either_order() {
        let all = [(0, 10.0), (15, 20.0), (30, 5.0), (45, 15.0)];
        let whole = ends(&all);
        let (a, b) = (ends(&all[..2]), ends(&all[2..]));
        assert_eq!(join(a, b), whole);
        assert_eq!(join(b, a), whole);
        assert_eq!(whole.increase, 25.0);
    }

    #[test]
    fn an_inner_part_adds_nothing_and_an_overlap_joins_by_its_end() {
        let outer = ends(&[(0, 10.0), (60, 70.0)]);
        assert_eq!(join(outer, ends(&[(30, 40.0)])).increase, 60.0);
        let later = ends(&[(30, 40.0), (90, 100.0)]);
        assert_eq!(join(outer, later).increase, 90.0);
    }

    #[test]
    fn extrapolation_follows_prometheus() {
        // Points every 15 s from the window's start: the 15 s after the last
        // point is within 1.1 intervals, so the growth of 45 s is scaled to 60 s.
        let e = ends(&[(0, 10.0), (15_000, 20.0), (30_000, 5.0), (45_000, 15.0)]);
        let increase = extrapolated_increase(e, 4, 0, 60_000).unwrap();
        assert!((increase - 25.0 * 60.0 / 45.0).abs() < 1e-9, "{increase}");
        assert!((per_second(increase, 0, 60_000) - 25.0 / 45.0).abs() < 1e-12);
        // A counter that started near the window's start is not extrapolated
        // below zero: from 2 to 12 in 10 s, it was zero 2 s before.
        let e = ends(&[(20_000, 2.0), (30_000, 12.0)]);
        let increase = extrapolated_increase(e, 2, 0, 60_000).unwrap();
        // to_start min(20 s, 2 s) = 2 s, to_end 30 s > 11 s: half an interval.
        assert!((increase - 10.0 * 17.0 / 10.0).abs() < 1e-9, "{increase}");
        assert_eq!(extrapolated_increase(ends(&[(0, 1.0)]), 1, 0, 60_000), None);
    }
}
