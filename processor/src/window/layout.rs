//! Which window definitions feed which.
//!
//! Adding a point to every window it falls into costs one sketch insert (a
//! logarithm) and one hash lookup per window: three per point with the default
//! 1m, 5m and 15m windows. But a 5m window is exactly the union of five 1m
//! windows, and every aggregate merges exactly (counts, min, max, last, sketch
//! bins). So a point goes into its 1m window only; when that closes it is
//! merged into its 5m window, which is merged into its 15m window when it
//! closes. The per-point work is then that of one window, whatever the number
//! of definitions, and sliding windows (a point in `size / slide` of them) are
//! fed whole tumbling windows instead of single points.
//!
//! A definition `f` can feed `d` when `f` is tumbling and its size divides
//! `d`'s slide: then every window of `d` is a union of whole windows of `f`,
//! and each window of `f` ends no later than the windows of `d` it lies in, so
//! it always closes first. Each definition is fed by the largest such `f`, so
//! the definitions form chains (1m → 5m → 15m). A point goes directly into a
//! window of `d` only when `d` has no feeder, or when the feeder's window for
//! the point has already closed (the point is late there but not for `d`).

use pulse_core::WindowSpec;

/// The most window definitions a processor takes: sets of them are `u64` masks.
pub const MAX_WINDOWS: usize = 64;

/// The configured window definitions and how they feed each other.
#[derive(Debug, Clone)]
pub struct Layout {
    windows: Vec<WindowSpec>,
    /// Per definition: the one that feeds it, if any.
    feeder: Vec<Option<usize>>,
    /// Per definition: the definitions it feeds, as a mask of indices.
    feeds: Vec<u64>,
    /// Definition indices, each after its feeder.
    order: Vec<usize>,
}

/// A window configuration the processor cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("at most {MAX_WINDOWS} window definitions are supported, got {0}")]
    TooMany(usize),
    #[error("window `{0}` is defined twice")]
    Duplicate(String),
}

impl Layout {
    pub fn new(windows: Vec<WindowSpec>) -> Result<Layout, LayoutError> {
        if windows.len() > MAX_WINDOWS {
            return Err(LayoutError::TooMany(windows.len()));
        }
        for (i, w) in windows.iter().enumerate() {
            if windows[..i].iter().any(|v| v.label == w.label) {
                return Err(LayoutError::Duplicate(w.label.clone()));
            }
        }
        let feeder: Vec<Option<usize>> = windows
            .iter()
            .map(|d| {
                windows
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| {
                        f.size_ms == f.slide_ms
                            && f.size_ms < d.size_ms
                            && d.slide_ms % f.size_ms == 0
                    })
                    .max_by_key(|(_, f)| f.size_ms)
                    .map(|(i, _)| i)
            })
            .collect();
        let mut feeds = vec![0u64; windows.len()];
        for (d, f) in feeder.iter().enumerate() {
            if let Some(f) = f {
                feeds[*f] |= 1 << d;
            }
        }
        // A feeder is strictly smaller than what it feeds, so by size is in order.
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.sort_by_key(|&i| windows[i].size_ms);
        Ok(Layout {
            windows,
            feeder,
            feeds,
            order,
        })
    }

    pub fn windows(&self) -> &[WindowSpec] {
        &self.windows
    }

    pub fn spec(&self, index: usize) -> &WindowSpec {
        &self.windows[index]
    }

    /// The definition feeding `index`, if any.
    pub fn feeder(&self, index: usize) -> Option<usize> {
        self.feeder[index]
    }

    /// The definitions `index` feeds, as a mask.
    pub fn feeds(&self, index: usize) -> u64 {
        self.feeds[index]
    }

    /// Definition indices with every feeder before what it feeds.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Where a definition stands in [`Layout::order`].
    pub fn rank(&self, index: usize) -> usize {
        self.order.iter().position(|&i| i == index).unwrap_or(index)
    }

    /// The index of the definition labelled `label`.
    pub fn index_of(&self, label: &str) -> Option<usize> {
        self.windows.iter().position(|w| w.label == label)
    }

    /// The labels of the definitions in `mask`.
    pub fn labels(&self, mask: u64) -> impl Iterator<Item = &str> + '_ {
        indices(mask).map(|i| self.windows[i].label.as_str())
    }
}

/// The indices set in `mask`, lowest first.
pub fn indices(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tumbling(secs: u64) -> WindowSpec {
        WindowSpec::tumbling(Duration::from_secs(secs)).unwrap()
    }

    fn sliding(size: u64, slide: u64) -> WindowSpec {
        WindowSpec::sliding(Duration::from_secs(size), Duration::from_secs(slide)).unwrap()
    }

    #[test]
    fn defaults_form_one_chain() {
        let layout = Layout::new(WindowSpec::defaults()).unwrap();
        assert_eq!(
            (layout.feeder(0), layout.feeder(1), layout.feeder(2)),
            (None, Some(0), Some(1))
        );
        assert_eq!(
            (layout.feeds(0), layout.feeds(1), layout.feeds(2)),
            (2, 4, 0)
        );
        assert_eq!(layout.order(), [0, 1, 2]);
    }

    #[test]
    fn each_definition_takes_its_largest_tumbling_divisor() {
        // 15m, 1m, 3m, 2m, 10m/1m, 7m; listed out of order on purpose.
        let layout = Layout::new(vec![
            tumbling(900),
            tumbling(60),
            tumbling(180),
            tumbling(120),
            sliding(600, 60),
            tumbling(420),
        ])
        .unwrap();
        assert_eq!(layout.feeder(0), Some(2), "15m is fed by 3m, not 1m");
        assert_eq!(layout.feeder(2), Some(1), "3m by 1m");
        assert_eq!(layout.feeder(3), Some(1), "2m by 1m");
        assert_eq!(
            layout.feeder(4),
            Some(1),
            "a sliding window by the tumbling window of its slide"
        );
        assert_eq!(layout.feeder(5), Some(1), "7m by 1m");
        assert_eq!(layout.feeder(1), None);
        assert_eq!(
            layout.labels(layout.feeds(1)).collect::<Vec<_>>(),
            ["3m", "2m", "10m/1m", "7m"]
        );
        for (d, f) in (0..6).filter_map(|d| layout.feeder(d).map(|f| (d, f))) {
            assert!(layout.rank(f) < layout.rank(d), "{f} is ordered before {d}");
        }
    }

    #[test]
    fn sliding_windows_never_feed_and_odd_sizes_stand_alone() {
        let layout = Layout::new(vec![sliding(120, 60), tumbling(240), tumbling(90)]).unwrap();
        assert_eq!(
            layout.feeder(1),
            None,
            "a sliding window would double count"
        );
        assert_eq!(layout.feeder(2), None, "nothing divides 90s");
        assert_eq!(layout.feeder(0), None);
    }

    #[test]
    fn duplicate_and_too_many_definitions_are_refused() {
        assert_eq!(
            Layout::new(vec![tumbling(60), tumbling(60)]).unwrap_err(),
            LayoutError::Duplicate("1m".into())
        );
        let many = (1..=65).map(tumbling).collect();
        assert_eq!(Layout::new(many).unwrap_err(), LayoutError::TooMany(65));
    }

    #[test]
    fn mask_indices_come_out_lowest_first() {
        assert_eq!(indices(0b1010_0001).collect::<Vec<_>>(), [0, 5, 7]);
        assert_eq!(indices(0).count(), 0);
    }
}
