//! Per-partition event-time watermark.
//!
//! Every series lives on one partition, so a window of a series can be closed by
//! its partition's watermark alone. That makes lateness a function of the
//! partition's record order only: a replay after a restart classifies every point
//! exactly as the first run did. Only idleness consults the wall clock.

use std::time::{Duration, Instant};

use pulse_core::TimestampMs;

/// Watermark state of one partition.
#[derive(Debug, Clone)]
pub struct Clock {
    /// Highest event time seen.
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

    /// Takes a point's event time into account.
    #[inline]
    pub fn observe(&mut self, ts: TimestampMs, lateness_ms: i64, now: Instant) {
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
        c.observe(100_000, 30_000, now);
        assert_eq!(c.watermark, Some(70_000));
        c.observe(50_000, 30_000, now);
        assert_eq!(
            c.watermark,
            Some(70_000),
            "an older point never moves it back"
        );
        assert!(c.is_closed(70_000) && !c.is_closed(70_001));
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
