//! Turning window results into answers: merging series, grouping, and the JSON
//! shapes of every endpoint. Pure, so the arithmetic of the API is tested without
//! a store, a cache or HTTP.
//!
//! Results are always combined with [`Combined`], never by averaging their
//! values: the p95 of three hosts is the p95 of the union of their points, and
//! a counter's `increase`, `rate` and `last` add up across its series.

use std::collections::{BTreeMap, BTreeSet};

use pulse_core::result::Combined;
use pulse_core::{AggKind, Tags, TimestampMs, WindowResult};
use pulse_engine::store::MetricInfo;
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

use crate::instant;
use crate::resolution::bucket;

/// Where an answer came from, reported in the body, the `X-Pulse-Source` header
/// and the query metrics, so a slow or stale answer can be traced to its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cache,
    Store,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Store => "store",
        }
    }
}

/// Aggregation values in the order they were asked for, as a JSON object
/// (`{"avg": 87.3, "p95": 93.2}`). An empty aggregate gives `null`s.
#[derive(Debug, Clone, PartialEq)]
pub struct AggValues(Vec<(AggKind, Option<f64>)>);

impl AggValues {
    /// The values of `kinds` across the combined series.
    pub fn of(combined: &Combined, kinds: &[AggKind]) -> AggValues {
        AggValues(kinds.iter().map(|&k| (k, combined.value(k))).collect())
    }

    /// The values of `kinds` of one series' window.
    pub fn of_one(result: &WindowResult, kinds: &[AggKind]) -> AggValues {
        AggValues(kinds.iter().map(|&k| (k, result.value(k))).collect())
    }
}

impl Serialize for AggValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Counts are whole numbers and read better as `3` than `3.0`.
        serializer.collect_map(self.0.iter().map(|(k, v)| {
            let value = match (k, v) {
                (AggKind::Count, Some(c)) => serde_json::Value::from(*c as u64),
                (_, v) => serde_json::Value::from(*v),
            };
            (k.to_string(), value)
        }))
    }
}

/// The `GET /dashboard` answer: the original contract plus window bounds (RFC 3339
/// for people, milliseconds for programs), the number of series merged and the source.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LatestAnswer {
    /// The metric asked for.
    #[schema(example = "cpu_usage")]
    pub metric_name: String,
    /// The window asked for (a configured window label).
    #[schema(example = "1m")]
    pub window: String,
    /// The aggregations asked for (`aggs`), merged across the series; `null`
    /// where an aggregate is empty.
    #[schema(value_type = HashMap<String, Option<f64>>, example = json!({"count": 12, "avg": 87.3, "p95": 93.2}))]
    pub aggregations: AggValues,
    /// Start of the window, RFC 3339 (null only past the year 9999).
    #[schema(example = "2026-11-29T05:20:00Z")]
    pub window_start: Option<String>,
    /// End of the window (exclusive), RFC 3339.
    #[schema(example = "2026-11-29T05:21:00Z")]
    pub window_end: Option<String>,
    /// Start of the window, Unix milliseconds.
    #[schema(value_type = i64, example = 1764393600000_i64)]
    pub window_start_ms: TimestampMs,
    /// End of the window (exclusive), Unix milliseconds.
    #[schema(value_type = i64, example = 1764393660000_i64)]
    pub window_end_ms: TimestampMs,
    /// How many series were merged.
    #[schema(example = 3)]
    pub series: usize,
    /// Where the answer came from (also in the `X-Pulse-Source` header).
    #[schema(inline, example = "cache")]
    pub source: Source,
    /// Present and `true` only when the window is still open (asked for with
    /// `partial=true`): what has arrived so far, and it will change.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(example = false)]
    pub partial: bool,
}

/// Merges the newest window among `results` across all their series. Only the
/// newest start counts: both engines answer one window, but should an older one
/// slip in, mixing it in would blend two windows into one number. `None` when
/// there is nothing to merge.
pub fn latest_answer(
    metric: &str,
    window: &str,
    results: &[WindowResult],
    aggs: &[AggKind],
    source: Source,
) -> Option<LatestAnswer> {
    let start = results.iter().map(|r| r.start_ms).max()?;
    let newest: Vec<&WindowResult> = results.iter().filter(|r| r.start_ms == start).collect();
    let end = newest.iter().map(|r| r.end_ms).max().unwrap_or(start);
    let merged = Combined::of(newest.iter().copied());
    Some(LatestAnswer {
        metric_name: metric.to_string(),
        window: window.to_string(),
        aggregations: AggValues::of(&merged, aggs),
        window_start: instant::rfc3339(start),
        window_end: instant::rfc3339(end),
        window_start_ms: start,
        window_end_ms: end,
        series: newest.len(),
        source,
        partial: false,
    })
}

/// The `GET /api/v1/query_range` answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RangeAnswer {
    /// The metric asked for.
    #[schema(example = "cpu_usage")]
    pub metric_name: String,
    /// The window asked for.
    #[schema(example = "1m")]
    pub window: String,
    /// Start of the range, Unix milliseconds (inclusive).
    #[schema(value_type = i64, example = 1764390000000_i64)]
    pub from_ms: TimestampMs,
    /// End of the range, Unix milliseconds (exclusive).
    #[schema(value_type = i64, example = 1764393600000_i64)]
    pub to_ms: TimestampMs,
    /// The configured window whose stored results the points merge: `window`,
    /// or a coarser one holding the same points when `window` would give more
    /// than `max_points` points (e.g. `15m` for a day of `1m`).
    #[schema(example = "1m")]
    pub source_window: String,
    /// The width of each point in milliseconds: the windows starting in the
    /// same multiple of it (from the epoch) are merged into one point.
    #[schema(value_type = i64, example = 60000_i64)]
    pub step_ms: TimestampMs,
    /// One entry per combination of `group_by` values (one in all without `group_by`).
    #[schema(example = json!([{"tags": {"host": "web-01"}, "points": [{"window_start_ms": 1764393600000_i64, "window_end_ms": 1764393660000_i64, "aggregations": {"avg": 87.3}}]}]))]
    pub series: Vec<SeriesAnswer>,
    /// The store held more rows than `dashboard.max_points_per_query`: the newest
    /// windows are answered and the oldest are missing.
    #[schema(example = false)]
    pub truncated: bool,
    /// Anomalies the rules found on the matching series in the range and
    /// window (the UI marks them on the panel).
    #[schema(example = json!([]))]
    pub anomalies: Vec<pulse_core::anomaly::Anomaly>,
}

/// One group of series: the values of the `group_by` keys and its merged points.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SeriesAnswer {
    /// The group's values of the `group_by` keys (empty without `group_by`).
    #[schema(value_type = BTreeMap<String, String>, example = json!({"host": "web-01"}))]
    pub tags: Tags,
    /// Its windows, oldest first.
    #[schema(example = json!([{"window_start_ms": 1764393600000_i64, "window_end_ms": 1764393660000_i64, "aggregations": {"avg": 87.3}}]))]
    pub points: Vec<PointAnswer>,
}

/// One window of one group.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PointAnswer {
    /// Start of the window, Unix milliseconds.
    #[schema(value_type = i64, example = 1764393600000_i64)]
    pub window_start_ms: TimestampMs,
    /// End of the window (exclusive), Unix milliseconds.
    #[schema(value_type = i64, example = 1764393660000_i64)]
    pub window_end_ms: TimestampMs,
    /// The aggregations asked for, merged across the group's series.
    #[schema(value_type = HashMap<String, Option<f64>>, example = json!({"count": 12, "avg": 87.3, "p95": 93.2}))]
    pub aggregations: AggValues,
    /// Present and `true` only for a window still open (`partial=true`):
    /// what has arrived so far, and it will change.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(example = false)]
    pub partial: bool,
}

/// Groups `results` by the values of the `group_by` tag keys (a series without a
/// key groups under an empty value) and merges each group's results per point
/// of `step_ms` (see [`crate::resolution::bucket`]; a step equal to the
/// windows' slide keeps every window its own point). Without keys every series
/// lands in one group. Groups come ordered by their tag values, points by start.
///
/// A point's bounds are those of the windows it merged, so a point the range
/// cuts (its first or last) says what it covers. Series of one window start
/// combine as [`Combined`] says (a counter's increase, rate and last add up
/// across series); a point of several starts extends them in time
/// ([`Combined::extend_in_time`]: the rate over the whole point, the last
/// window's `last`).
pub fn group_series(
    results: Vec<WindowResult>,
    group_by: &[String],
    aggs: &[AggKind],
    step_ms: TimestampMs,
) -> Vec<SeriesAnswer> {
    // Group → point (bucket) → window start → the group's series at that start.
    type Windows = BTreeMap<TimestampMs, (TimestampMs, Combined)>;
    let mut groups: BTreeMap<Vec<String>, BTreeMap<TimestampMs, Windows>> = BTreeMap::new();
    for result in &results {
        let key: Vec<String> = group_by
            .iter()
            .map(|k| result.tags.get(k).cloned().unwrap_or_default())
            .collect();
        let (end, combined) = groups
            .entry(key)
            .or_default()
            .entry(bucket(result.start_ms, step_ms))
            .or_default()
            .entry(result.start_ms)
            .or_insert_with(|| (result.end_ms, Combined::default()));
        *end = (*end).max(result.end_ms);
        combined.add(result);
    }
    groups
        .into_iter()
        .map(|(values, points)| SeriesAnswer {
            tags: group_by.iter().cloned().zip(values).collect(),
            points: points
                .into_values()
                .filter_map(point_of_windows)
                .map(|(start, end, combined)| PointAnswer {
                    window_start_ms: start,
                    window_end_ms: end,
                    aggregations: AggValues::of(&combined, aggs),
                    partial: false,
                })
                .collect(),
        })
        .collect()
}

/// One point of a range answer from its windows in time order (one, or
/// several when a coarse step merges them): its bounds and their values.
fn point_of_windows(
    windows: BTreeMap<TimestampMs, (TimestampMs, Combined)>,
) -> Option<(TimestampMs, TimestampMs, Combined)> {
    let mut windows = windows.into_iter();
    let (start, (mut end, mut combined)) = windows.next()?;
    for (_, (later_end, later)) in windows {
        end = end.max(later_end);
        combined.extend_in_time(&later, start, end);
    }
    Some((start, end, combined))
}

/// Cuts a range read to at most `limit` rows. The read asked the store for
/// `limit + 1` rows, so more than `limit` means the range did not fit. The store
/// keeps the newest rows when it cuts, so the oldest window start it returned may
/// lack some series, and its merged point would be silently wrong: that start is
/// dropped whole. Returns the rows kept and whether anything was cut.
pub fn trim_to_limit(mut results: Vec<WindowResult>, limit: usize) -> (Vec<WindowResult>, bool) {
    if results.len() <= limit {
        return (results, false);
    }
    if let Some(oldest) = results.iter().map(|r| r.start_ms).min() {
        results.retain(|r| r.start_ms != oldest);
    }
    (results, true)
}

/// One closed window as `/api/v1/live` sends it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LiveEvent<'a> {
    /// The window's metric.
    #[schema(value_type = String, example = "cpu_usage")]
    pub metric_name: &'a str,
    /// The window's label.
    #[schema(value_type = String, example = "1m")]
    pub window: &'a str,
    /// The series id in hex, because JSON numbers lose precision past 2^53.
    #[schema(example = "9f86d081884c7d65")]
    pub series_id: String,
    /// The series' tags.
    #[schema(value_type = BTreeMap<String, String>, example = json!({"host": "web-01"}))]
    pub tags: &'a Tags,
    /// Start of the window, Unix milliseconds.
    #[schema(value_type = i64, example = 1764393600000_i64)]
    pub window_start_ms: TimestampMs,
    /// End of the window (exclusive), Unix milliseconds.
    #[schema(value_type = i64, example = 1764393660000_i64)]
    pub window_end_ms: TimestampMs,
    /// The aggregations asked for (`aggs`, by default every one).
    #[schema(value_type = HashMap<String, Option<f64>>, example = json!({"count": 12, "avg": 87.3, "p95": 93.2}))]
    pub aggregations: AggValues,
}

pub fn live_event<'a>(result: &'a WindowResult, aggs: &[AggKind]) -> LiveEvent<'a> {
    LiveEvent {
        metric_name: &result.metric,
        window: &result.window,
        series_id: result.series_id.to_string(),
        tags: &result.tags,
        window_start_ms: result.start_ms,
        window_end_ms: result.end_ms,
        aggregations: AggValues::of_one(result, aggs),
    }
}

/// The `GET /api/v1/tags` answer: which tag keys and values the matching series
/// carry, for the UI's filter and group-by pickers.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TagsAnswer {
    /// The metric asked for.
    #[schema(example = "cpu_usage")]
    pub metric_name: String,
    /// The window asked for.
    #[schema(example = "1m")]
    pub window: String,
    /// Every key with its values, both sorted.
    #[schema(value_type = BTreeMap<String, Vec<String>>, example = json!({"host": ["web-01", "web-02"], "env": ["prod"]}))]
    pub keys: BTreeMap<String, BTreeSet<String>>,
    /// Distinct series seen.
    #[schema(example = 2)]
    pub series: usize,
    /// The range held more rows than `dashboard.max_points_per_query`, so series
    /// seen only in its oldest windows may be missing.
    #[schema(example = false)]
    pub truncated: bool,
}

/// The distinct tag keys and values among `results`, and how many series they
/// came from.
pub fn tag_values(results: &[WindowResult]) -> (BTreeMap<String, BTreeSet<String>>, usize) {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut series = BTreeSet::new();
    for result in results {
        if !series.insert(result.series_id) {
            continue;
        }
        for (key, value) in &result.tags {
            keys.entry(key.clone()).or_default().insert(value.clone());
        }
    }
    (keys, series.len())
}

/// The `GET /api/v1/metrics` answer: stored metrics and the windows one may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MetricsAnswer<'a> {
    /// Every stored metric, by name.
    #[schema(example = json!([{"name": "cpu_usage", "series": 3, "last_window_end_ms": 1764393660000_i64}]))]
    pub metrics: Vec<MetricInfo>,
    /// The configured window labels, the values `window` takes.
    #[schema(value_type = Vec<String>, example = json!(["1m", "5m", "15m"]))]
    pub windows: &'a [String],
}

#[cfg(test)]
mod tests {
    use pulse_core::{Aggregate, SeriesId};
    use serde_json::json;

    use super::*;

    fn result(host: Option<&str>, start_ms: TimestampMs, values: &[f64]) -> WindowResult {
        let tags: Tags = host
            .map(|h| [("host".to_string(), h.to_string())].into())
            .unwrap_or_default();
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

    fn kinds(text: &str) -> Vec<AggKind> {
        AggKind::parse_list(text).unwrap()
    }

    impl AggValues {
        fn get(&self, kind: AggKind) -> Option<f64> {
            self.0
                .iter()
                .find(|(k, _)| *k == kind)
                .and_then(|(_, v)| *v)
        }
    }

    #[test]
    fn latest_merges_series_of_the_newest_window_only() {
        let results = [
            result(Some("a"), 60_000, &[1.0, 2.0]),
            result(Some("b"), 60_000, &[10.0]),
            result(Some("a"), 0, &[1000.0]),
        ];
        let answer = latest_answer(
            "cpu",
            "1m",
            &results,
            &kinds("count,max,avg"),
            Source::Store,
        )
        .unwrap();
        assert_eq!(answer.series, 2);
        assert_eq!(
            (answer.window_start_ms, answer.window_end_ms),
            (60_000, 120_000)
        );
        assert_eq!(answer.aggregations.get(AggKind::Count), Some(3.0));
        assert_eq!(answer.aggregations.get(AggKind::Max), Some(10.0));
        assert_eq!(answer.aggregations.get(AggKind::Avg), Some(13.0 / 3.0));
        assert_eq!(answer.window_start.as_deref(), Some("1970-01-01T00:01:00Z"));
        assert!(latest_answer("cpu", "1m", &[], &kinds("avg"), Source::Cache).is_none());
    }

    #[test]
    fn answers_serialize_aggregations_in_the_order_asked() {
        let answer = latest_answer(
            "cpu",
            "1m",
            &[result(None, 0, &[4.0])],
            &kinds("p50,avg,count"),
            Source::Cache,
        )
        .unwrap();
        let text = serde_json::to_string(&answer).unwrap();
        let p50 = text.find("\"p50\"").unwrap();
        let avg = text.find("\"avg\"").unwrap();
        assert!(p50 < avg, "{text}");
        let value = serde_json::to_value(&answer).unwrap();
        assert_eq!(value["source"], "cache");
        assert_eq!(
            value["aggregations"]["count"],
            json!(1),
            "counts are integers"
        );
        assert_eq!(value["window_end"], "1970-01-01T00:01:00Z");
    }

    #[test]
    fn empty_aggregate_values_are_null() {
        let empty = AggValues::of(&Combined::default(), &kinds("avg,p95"));
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            json!({"avg": null, "p95": null})
        );
    }

    #[test]
    fn group_by_gives_one_series_per_value_with_points_in_start_order() {
        let results = [
            result(Some("b"), 60_000, &[3.0]),
            result(Some("a"), 60_000, &[2.0]),
            result(None, 0, &[5.0]),
            result(Some("a"), 0, &[1.0]),
        ];
        let series = group_series(
            results.to_vec(),
            &["host".to_string()],
            &kinds("sum"),
            60_000,
        );
        let hosts: Vec<_> = series.iter().map(|s| s.tags["host"].as_str()).collect();
        assert_eq!(hosts, ["", "a", "b"]);
        let a = &series[1];
        let starts: Vec<_> = a.points.iter().map(|p| p.window_start_ms).collect();
        assert_eq!(starts, [0, 60_000]);
        assert_eq!(a.points[1].aggregations.get(AggKind::Sum), Some(2.0));
    }

    #[test]
    fn without_group_by_all_series_merge_per_window() {
        let results = [
            result(Some("a"), 0, &[1.0]),
            result(Some("b"), 0, &[3.0]),
            result(Some("a"), 60_000, &[7.0]),
        ];
        let series = group_series(results.to_vec(), &[], &kinds("count,avg"), 60_000);
        assert_eq!(series.len(), 1);
        assert!(series[0].tags.is_empty());
        let first = &series[0].points[0].aggregations;
        assert_eq!(
            (first.get(AggKind::Count), first.get(AggKind::Avg)),
            (Some(2.0), Some(2.0))
        );
        assert_eq!(series[0].points.len(), 2);
        assert!(group_series(Vec::new(), &[], &kinds("avg"), 60_000).is_empty());
    }

    #[test]
    fn a_step_merges_the_windows_of_each_point_and_keeps_their_bounds() {
        let results = [0, 60_000, 120_000, 180_000]
            .iter()
            .enumerate()
            .map(|(i, start)| result(Some("a"), *start, &[i as f64, 10.0 * i as f64]))
            .collect();
        let series = group_series(results, &[], &kinds("count,max,p0,p100"), 120_000);
        let points = &series[0].points;
        assert_eq!(points.len(), 2);
        let bounds: Vec<_> = points
            .iter()
            .map(|p| (p.window_start_ms, p.window_end_ms))
            .collect();
        assert_eq!(bounds, [(0, 120_000), (120_000, 240_000)]);
        let second = &points[1].aggregations;
        assert_eq!(second.get(AggKind::Count), Some(4.0));
        assert_eq!(second.get(AggKind::Max), Some(30.0));
        // The sketches merged too: the extremes of {2, 20} and {3, 30} are
        // the quantiles p0 and p100 of their union (within 1 %).
        let q = |k: &str| second.get(kinds(k)[0]).unwrap();
        assert!((q("p0") - 2.0).abs() <= 0.02, "{}", q("p0"));
        assert!((q("p100") - 30.0).abs() <= 0.3, "{}", q("p100"));
    }

    #[test]
    fn trimming_drops_the_possibly_partial_oldest_window() {
        let rows = |starts: &[TimestampMs]| -> Vec<WindowResult> {
            starts
                .iter()
                .map(|s| result(Some("a"), *s, &[1.0]))
                .collect()
        };
        let (kept, truncated) = trim_to_limit(rows(&[0, 60_000, 60_000]), 3);
        assert_eq!((kept.len(), truncated), (3, false));
        let (kept, truncated) = trim_to_limit(rows(&[0, 0, 60_000, 60_000]), 3);
        assert!(truncated);
        assert!(kept.iter().all(|r| r.start_ms == 60_000));
        assert_eq!(kept.len(), 2);
        let (kept, truncated) = trim_to_limit(rows(&[0]), 0);
        assert_eq!((kept.len(), truncated), (0, true));
    }

    #[test]
    fn tag_values_lists_each_key_and_value_once_and_counts_series() {
        let mut env = result(Some("b"), 0, &[1.0]);
        env.tags.insert("env".into(), "prod".into());
        env.series_id = SeriesId::of("cpu", &env.tags);
        let results = [
            result(Some("b"), 0, &[1.0]),
            result(Some("a"), 0, &[1.0]),
            result(Some("a"), 60_000, &[2.0]),
            result(None, 0, &[3.0]),
            env,
        ];
        let (keys, series) = tag_values(&results);
        assert_eq!(series, 4);
        assert_eq!(
            serde_json::to_value(&keys).unwrap(),
            json!({"env": ["prod"], "host": ["a", "b"]})
        );
        assert_eq!(tag_values(&[]), (BTreeMap::new(), 0));
    }

    #[test]
    fn live_events_carry_the_series_id_in_hex() {
        let r = result(Some("a"), 0, &[2.0]);
        let event = serde_json::to_value(live_event(&r, &kinds("max"))).unwrap();
        assert_eq!(event["series_id"], r.series_id.to_string());
        assert_eq!(event["series_id"].as_str().unwrap().len(), 16);
        assert_eq!(event["tags"], json!({"host": "a"}));
        assert_eq!(event["aggregations"], json!({"max": 2.0}));
    }
}
