//! `partial=true`: the windows still open, as the processor last published
//! them to the cache, merged into answers beside the closed windows. Pure
//! apart from [`read`], so what counts as partial is tested without HTTP.
//!
//! A window may be closed for one series and open for another (their
//! partitions' watermarks differ), so a point merges both; it is partial when
//! any of its series' windows is. A partial whose window is closed already
//! (the cache lags the store by one update) is left out: the closed window
//! holds all of it.

use std::collections::BTreeSet;

use pulse_core::result::matches_tags;
use pulse_core::{SeriesId, Tags, TimestampMs, WindowResult};
use tracing::warn;

use crate::answer::SeriesAnswer;
use crate::api::AppState;

/// The open windows of `metric`/`window` whose series match `tags`. A failing
/// cache means no partials (logged and counted); the closed windows still answer.
pub(crate) async fn read(
    state: &AppState,
    metric: &str,
    window: &str,
    tags: &Tags,
) -> Vec<WindowResult> {
    match state
        .cache
        .partials(metric, window, pulse_core::now_ms())
        .await
    {
        Ok(mut partials) => {
            partials.retain(|r| matches_tags(&r.tags, tags));
            partials
        }
        Err(error) => {
            warn!(message = "Cache unavailable; answering without the open windows.", %error);
            state.metrics.cache_error();
            Vec::new()
        }
    }
}

/// The `partials` whose window is not among `closed`.
pub fn still_open(partials: Vec<WindowResult>, closed: &[WindowResult]) -> Vec<WindowResult> {
    let closed: BTreeSet<(SeriesId, TimestampMs)> =
        closed.iter().map(|r| (r.series_id, r.start_ms)).collect();
    partials
        .into_iter()
        .filter(|r| !closed.contains(&(r.series_id, r.start_ms)))
        .collect()
}

/// Whether the newest window start among `closed` and `open` is one of the
/// open ones: the `/dashboard` answer over both is then partial.
pub fn newest_is_open(closed: &[WindowResult], open: &[WindowResult]) -> bool {
    let newest = |rs: &[WindowResult]| rs.iter().map(|r| r.start_ms).max();
    match (newest(closed), newest(open)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(c), Some(o)) => o >= c,
    }
}

/// Marks the points of `series` (grouped by `group_by`) that an open window
/// of `open` contributed to: a point is partial when an open window of its
/// group starts within its bounds (a coarse point merges several windows).
pub fn mark(series: &mut [SeriesAnswer], open: &[WindowResult], group_by: &[String]) {
    let starts: BTreeSet<(Vec<&str>, TimestampMs)> = open
        .iter()
        .map(|r| {
            let group = group_by
                .iter()
                .map(|k| r.tags.get(k).map_or("", String::as_str))
                .collect();
            (group, r.start_ms)
        })
        .collect();
    for group in series {
        let values: Vec<&str> = group_by
            .iter()
            .map(|k| group.tags.get(k).map_or("", String::as_str))
            .collect();
        for point in &mut group.points {
            let from = (values.clone(), point.window_start_ms);
            let to = (values.clone(), point.window_end_ms);
            if starts.range(from..to).next().is_some() {
                point.partial = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use pulse_core::{AggKind, Aggregate};

    use super::*;
    use crate::answer::group_series;

    fn result(host: &str, start_ms: TimestampMs, values: &[f64]) -> WindowResult {
        let tags: Tags = [("host".to_string(), host.to_string())].into();
        let mut agg = Aggregate::new();
        for v in values {
            agg.add(*v, start_ms);
        }
        WindowResult {
            series_id: SeriesId::of("cpu", &tags),
            metric: "cpu".into(),
            tags,
            window: "1m".into(),
            start_ms,
            end_ms: start_ms + 60_000,
            agg,
        }
    }

    #[test]
    fn a_partial_of_a_closed_window_is_left_out() {
        let closed = [result("a", 0, &[1.0])];
        let open = still_open(
            vec![
                result("a", 0, &[1.0]),
                result("a", 60_000, &[2.0]),
                result("b", 0, &[3.0]),
            ],
            &closed,
        );
        let kept: Vec<(&str, TimestampMs)> = open
            .iter()
            .map(|r| (r.tags["host"].as_str(), r.start_ms))
            .collect();
        assert_eq!(kept, [("a", 60_000), ("b", 0)]);
    }

    #[test]
    fn the_newest_window_is_open_only_when_an_open_one_is_at_least_as_new() {
        let closed = [result("a", 60_000, &[1.0])];
        assert!(!newest_is_open(&closed, &[]));
        assert!(!newest_is_open(&closed, &[result("b", 0, &[1.0])]));
        assert!(newest_is_open(&closed, &[result("b", 60_000, &[1.0])]));
        assert!(newest_is_open(&[], &[result("b", 0, &[1.0])]));
    }

    #[test]
    fn points_with_an_open_part_are_marked_per_group() {
        let closed = [result("a", 0, &[1.0]), result("b", 60_000, &[5.0])];
        let open = [result("a", 60_000, &[2.0, 4.0])];
        let all: Vec<WindowResult> = closed.iter().chain(&open).cloned().collect();
        let group_by = ["host".to_string()];
        let mut series = group_series(
            all.clone(),
            &group_by,
            &[AggKind::Max, AggKind::Count],
            60_000,
        );
        mark(&mut series, &open, &group_by);
        let marked: Vec<(&str, TimestampMs, bool)> = series
            .iter()
            .flat_map(|s| {
                s.points
                    .iter()
                    .map(move |p| (s.tags["host"].as_str(), p.window_start_ms, p.partial))
            })
            .collect();
        assert_eq!(
            marked,
            [("a", 0, false), ("a", 60_000, true), ("b", 60_000, false)]
        );
        // Without group_by, the window closed for `b` and open for `a` is one partial point.
        let mut merged = group_series(all.clone(), &[], &[AggKind::Max], 60_000);
        mark(&mut merged, &open, &[]);
        let points: Vec<(TimestampMs, bool)> = merged[0]
            .points
            .iter()
            .map(|p| (p.window_start_ms, p.partial))
            .collect();
        assert_eq!(points, [(0, false), (60_000, true)]);
        // A coarse point holds the open window: it is partial as a whole.
        let mut coarse = group_series(all, &[], &[AggKind::Max], 120_000);
        mark(&mut coarse, &open, &[]);
        let points: Vec<(TimestampMs, bool)> = coarse[0]
            .points
            .iter()
            .map(|p| (p.window_start_ms, p.partial))
            .collect();
        assert_eq!(points, [(0, true)]);
    }
}
