//! Per-partition event-time watermark.
//!
//! Every series lives on one partition (while the topic's partition count does
//! not change), so a window of a series can be closed by its partition's
//! watermark alone: the highest event time seen minus the allowed lateness.
//!
//! **A fast clock cannot make everyone late.** An event time counts toward the
//! watermark only up to the processor's wall clock plus `max_clock_skew`: one
//! client stamping points minutes ahead would otherwise move the watermark
//! minutes ahead, and every current point of every other series of the
//! partition would then be late. The future point itself is still aggregated
//! into its window, which closes once the clock (not the point) gets there.
//!
//! **Why the wall clock may decide lateness.** Lateness depends on the record
//! order and on the wall clock (the skew cap above, and idleness, after which
//! the watermark follows the clock), so a replay after a crash may classify a
//! point differently from the first run. That never doubles or loses anything:
//! - What the store holds was classified once: a commit writes, in one
//!   transaction, the results, the late partials, the open windows' state
//!   *and* the watermark and offsets they cover. A replay starts from that
//!   state and reads only records whose first classification was never
//!   committed (a crash drops it whole).
//! - Either classification ends in the same stored windows: a point on time
//!   goes into its open window, which is written when it closes; a late point
//!   (within the horizon, `processor.late_horizon`) goes into a partial of its
//!   closed window, which the store merges into the stored result in the same
//!   transaction (see `pulse_engine::store`). Aggregates merge exactly and
//!   `last` breaks ties by value, so the order of the parts does not matter.
//! - Only the late counts (`late_points`) and points beyond the horizon
//!   depend on the classification, and each is committed with the offsets of
//!   the records it counts, so each point is counted once.

use std::time::{Duration, Instant};

use pulse_core::TimestampMs;

/// Watermark state of one partition.
#[derive(Debug, Clone)]
pub struct Clock {
    /// Highest event time counted toward the watermark: the highest seen,
    /// each capped at the wall clock plus the skew allowance when it was seen.
    pub max_event_ts: Option<TimestampMs>,
    /// Windows ending at or before this are closed; never moves backwards.
    pub watermark: Option<TimestampMs>,
    /// When the partition last delivered a record (processing time).
    last_activity: Instant,
}

impl Clock {
    /// A clock resumed from a checkpoint (or fresh, with `None`s).
    pub fn resume(
        max_event_ts: Option<TimestampMs>,
        watermark: Option<TimestampMs>,
        now: Instant,
    ) -> Clock {
        Clock {
            max_event_ts,
            watermark,
            last_activity: now,
        }
    }

    /// Whether a window ending at `end` is already closed.
    #[inline]
    pub fn is_closed(&self, end: TimestampMs) -> bool {
        self.watermark.is_some_and(|wm| end <= wm)
    }

    /// Takes a point's event time into account, up to `ceiling` (the wall
    /// clock plus the skew allowance; `None`: no cap).
    #[inline]
    pub fn observe(
        &mut self,
        ts: TimestampMs,
        ceiling: Option<TimestampMs>,
        lateness_ms: i64,
        now: Instant,
    ) {
        let ts = ceiling.map_or(ts, |c| ts.min(c));
        let max = self.max_event_ts.map_or(ts, |m| m.max(ts));
        self.max_event_ts = Some(max);
        self.advance_to(max - lateness_ms);
        self.last_activity = now;
    }

    /// After `idle` without records, the watermark follows the wall clock
    /// (`now_ms − lateness`), so windows close even when traffic stops.
    /// Returns whether the watermark moved.
    pub fn idle_advance(
        &mut self,
        now_ms: TimestampMs,
        now: Instant,
        idle: Duration,
        lateness_ms: i64,
    ) -> bool {
        if now.duration_since(self.last_activity) < idle {
            return false;
        }
        let before = self.watermark;
        self.advance_to(now_ms - lateness_ms);
        before != self.watermark
    }

    fn advance_to(&mut self, candidate: TimestampMs) {
        self.watermark = Some(self.watermark.map_or(candidate, |wm| wm.max(candidate)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_trails_the_highest_event_time_by_the_lateness() {
        let now = Instant::now();
        let mut c = Clock::resume(None, None, now);
        assert!(
            !c.is_closed(i64::MIN + 1),
            "nothing is closed before any point"
        );
        c.observe(100_000, None, 30_000, now);
        assert_eq!(c.watermark, Some(70_000));
        c.observe(50_000, None, 30_000, now);
        assert_eq!(
            c.watermark,
            Some(70_000),
            "an older point never moves it back"
        );
        assert!(c.is_closed(70_000) && !c.is_closed(70_001));
    }

    #[test]
    fn an_event_time_counts_only_up_to_the_wall_clock_plus_the_skew() {
        let now = Instant::now();
        let mut c = Clock::resume(None, None, now);
        // Wall clock 1 000 s, skew 5 s: a point 540 s ahead counts as 1 005 s.
        c.observe(1_540_000, Some(1_005_000), 30_000, now);
        assert_eq!(c.max_event_ts, Some(1_005_000));
        assert_eq!(c.watermark, Some(975_000));
        assert!(
            !c.is_closed(1_000_000),
            "the current minute is still open for the other series"
        );
        // A point within the allowance counts as it is.
        c.observe(1_003_000, Some(1_005_000), 30_000, now);
        assert_eq!(c.max_event_ts, Some(1_005_000));
        // Once the clock gets there, the point's time counts in full.
        c.observe(1_540_000, Some(1_545_000), 30_000, now);
        assert_eq!(c.watermark, Some(1_510_000));
    }

    #[test]
    fn idle_partition_follows_the_wall_clock_only_after_the_timeout() {
        let start = Instant::now();
        let mut c = Clock::resume(Some(1_000), Some(0), start);
        let idle = Duration::from_secs(10);
        assert!(!c.idle_advance(500_000, start + Duration::from_secs(9), idle, 30_000));
        assert_eq!(c.watermark, Some(0));
        assert!(c.idle_advance(500_000, start + Duration::from_secs(10), idle, 30_000));
        assert_eq!(c.watermark, Some(470_000));
        assert!(
            !c.idle_advance(400_000, start + Duration::from_secs(11), idle, 30_000),
            "never backwards"
        );
    }
}
