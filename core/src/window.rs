//! Event-time windows: which windows a timestamp falls into.
//!
//! Windows are aligned to the Unix epoch. A tumbling window is a sliding window
//! whose slide equals its size, so one type covers both: a point at `t` belongs to
//! every window `[s, s + size)` with `s` a multiple of `slide` and `s <= t < s + size`.

use std::time::Duration;

use crate::TimestampMs;
use crate::duration::label;

/// One configured window: its size, its slide, and the label it is known by
/// (`5m` for tumbling windows, `10m/1m` for sliding ones).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub slide_ms: i64,
    pub label: String,
}

/// Why a window definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window size must be at least 1s, got {0:?}")]
    TooSmall(Duration),
    #[error("window size must be at most 31d, got {0:?}")]
    TooLarge(Duration),
    #[error("window slide {slide:?} must be at least 1s and divide the size {size:?} exactly")]
    BadSlide { size: Duration, slide: Duration },
}

impl WindowSpec {
    /// A tumbling window of `size`.
    pub fn tumbling(size: Duration) -> Result<WindowSpec, WindowError> {
        WindowSpec::sliding(size, size)
    }

    /// A sliding window of `size` that starts a new window every `slide`.
    pub fn sliding(size: Duration, slide: Duration) -> Result<WindowSpec, WindowError> {
        if size < Duration::from_secs(1) {
            return Err(WindowError::TooSmall(size));
        }
        if size > Duration::from_secs(31 * 86_400) {
            return Err(WindowError::TooLarge(size));
        }
        let (size_ms, slide_ms) = (size.as_millis() as i64, slide.as_millis() as i64);
        if slide < Duration::from_secs(1) || size_ms % slide_ms != 0 {
            return Err(WindowError::BadSlide { size, slide });
        }
        let label = if size == slide {
            label(size)
        } else {
            format!("{}/{}", label(size), label(slide))
        };
        Ok(WindowSpec {
            size_ms,
            slide_ms,
            label,
        })
    }

    /// The default windows: tumbling 1m, 5m and 15m.
    pub fn defaults() -> Vec<WindowSpec> {
        [60, 300, 900]
            .into_iter()
            .map(|s| WindowSpec::tumbling(Duration::from_secs(s)).expect("valid default window"))
            .collect()
    }

    /// How many windows each point falls into.
    pub fn windows_per_point(&self) -> usize {
        (self.size_ms / self.slide_ms) as usize
    }

    /// Start times of every window containing `ts`, newest first.
    pub fn starts(&self, ts: TimestampMs) -> impl Iterator<Item = TimestampMs> + '_ {
        let newest = ts.div_euclid(self.slide_ms) * self.slide_ms;
        (0..self.size_ms / self.slide_ms).map(move |i| newest - i * self.slide_ms)
    }

    /// End (exclusive) of the window starting at `start`.
    pub fn end(&self, start: TimestampMs) -> TimestampMs {
        start + self.size_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn tumbling_window_is_aligned_to_the_epoch() {
        let w = WindowSpec::tumbling(secs(300)).unwrap();
        assert_eq!(w.label, "5m");
        let ts = 1_721_199_945_000;
        let starts: Vec<_> = w.starts(ts).collect();
        assert_eq!(starts, vec![1_721_199_900_000]);
        assert!(starts[0] <= ts && ts < w.end(starts[0]));
    }

    #[test]
    fn point_on_a_boundary_opens_the_next_window() {
        let w = WindowSpec::tumbling(secs(60)).unwrap();
        assert_eq!(w.starts(120_000).collect::<Vec<_>>(), vec![120_000]);
        assert_eq!(w.starts(119_999).collect::<Vec<_>>(), vec![60_000]);
    }

    #[test]
    fn negative_timestamps_floor_instead_of_truncating() {
        let w = WindowSpec::tumbling(secs(60)).unwrap();
        assert_eq!(w.starts(-1).collect::<Vec<_>>(), vec![-60_000]);
    }

    #[test]
    fn sliding_window_assigns_a_point_to_size_over_slide_windows() {
        let w = WindowSpec::sliding(secs(600), secs(60)).unwrap();
        assert_eq!(w.label, "10m/1m");
        let ts = 1_000_000_i64 * 60;
        let starts: Vec<_> = w.starts(ts + 5).collect();
        assert_eq!(starts.len(), 10);
        for s in starts {
            assert!(s <= ts + 5 && ts + 5 < w.end(s));
            assert_eq!(s % 60_000, 0);
        }
    }

    #[test]
    fn slide_must_divide_size() {
        assert!(matches!(
            WindowSpec::sliding(secs(600), secs(70)),
            Err(WindowError::BadSlide { .. })
        ));
        assert!(matches!(
            WindowSpec::tumbling(Duration::from_millis(10)),
            Err(WindowError::TooSmall(_))
        ));
    }
}
