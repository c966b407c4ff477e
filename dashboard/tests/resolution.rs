//! `query_range`'s `max_points` and `step` against the embedded SQLite store:
//! a coarser answer equals the exact aggregation of the same points, and the
//! stored coarser window it reads equals the finer windows merged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use pulse_core::config::Config;
use pulse_core::{Aggregate, SeriesId, Tags, TimestampMs, WindowResult};
use pulse_dashboard::Dashboard;
use pulse_engine::cache::memory::MemoryCache;
use pulse_engine::store::sqlite::SqliteStore;
use pulse_engine::store::{Commit, Store};
use serde_json::Value;
use tower::ServiceExt;

const MIN: TimestampMs = 60_000;
/// 2024-07-17T00:00:00Z: a multiple of every window and step used here.
const FROM: TimestampMs = 1_721_174_400_000;
const HOURS: TimestampMs = 3;
const TO: TimestampMs = FROM + HOURS * 60 * MIN;
const HOSTS: [&str; 2] = ["web-01", "web-02"];

/// Point `i` of `host`: seven per minute, values spread over two decades.
fn points(host: usize) -> Vec<(TimestampMs, f64)> {
    (0..HOURS * 60 * 7)
        .map(|i| {
            let ts = FROM + i * MIN / 7 + host as TimestampMs;
            let value = 1.0 + ((i * 37 + host as i64 * 11) % 101) as f64 * (1.0 + (i % 3) as f64);
            (ts, value)
        })
        .collect()
}

/// Every window of `size` of every host, aggregated from the points directly
/// (as the processor does).
fn windows(label: &str, size: TimestampMs) -> Vec<WindowResult> {
    let mut out = Vec::new();
    for (h, name) in HOSTS.iter().enumerate() {
        let tags: Tags = [("host".to_string(), name.to_string())].into();
        let mut by_start: BTreeMap<TimestampMs, Aggregate> = BTreeMap::new();
        for (ts, value) in points(h) {
            by_start
                .entry(ts - ts.rem_euclid(size))
                .or_default()
                .add(value, ts);
        }
        out.extend(by_start.into_iter().map(|(start, agg)| WindowResult {
            series_id: SeriesId::of("cpu", &tags),
            metric: "cpu".into(),
            tags: tags.clone(),
            window: label.into(),
            start_ms: start,
            end_ms: start + size,
            agg,
        }));
    }
    out
}

struct Fixture {
    router: axum::Router,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("pulse.db"))
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        let mut results = windows("1m", MIN);
        results.extend(windows("5m", 5 * MIN));
        results.extend(windows("15m", 15 * MIN));
        store
            .commit(&Commit {
                results,
                ..Default::default()
            })
            .await
            .unwrap();
        let router = Dashboard::router(
            &Config::default(),
            store,
            Arc::new(MemoryCache::new()),
            Arc::new(Mutex::new(Registry::default())),
        );
        Fixture { router, _dir: dir }
    }

    async fn get(&self, query: &str) -> (StatusCode, Value) {
        let uri = format!(
            "/api/v1/query_range?metric=cpu&from={}&to={}&group_by=host&{query}",
            FROM / 1000,
            TO / 1000
        );
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

/// The exact count, sum, min, max and p95 (with the rank convention DDSketch
/// uses) of the points of `host` in `[start, end)`.
fn exact(host: usize, start: TimestampMs, end: TimestampMs) -> (f64, f64, f64, f64, f64) {
    let mut values: Vec<f64> = points(host)
        .into_iter()
        .filter(|(ts, _)| (start..end).contains(ts))
        .map(|(_, v)| v)
        .collect();
    values.sort_by(f64::total_cmp);
    let p95 = values[(0.95 * (values.len() - 1) as f64).floor() as usize];
    (
        values.len() as f64,
        values.iter().sum(),
        values[0],
        values[values.len() - 1],
        p95,
    )
}

/// Checks every point of `answer` against the exact aggregation of its span.
fn check_exact(answer: &Value, step: TimestampMs) {
    let series = answer["series"].as_array().unwrap();
    assert_eq!(series.len(), HOSTS.len());
    for (h, s) in series.iter().enumerate() {
        assert_eq!(s["tags"]["host"], HOSTS[h]);
        let points = s["points"].as_array().unwrap();
        // Points count from the epoch; the range cuts the first and the last.
        let first = FROM - FROM.rem_euclid(step);
        let whole = (TO - first) / step;
        let count = whole + TimestampMs::from(first + whole * step < TO);
        assert_eq!(points.len() as TimestampMs, count);
        for (i, p) in points.iter().enumerate() {
            let bucket = first + i as TimestampMs * step;
            let (start, end) = (bucket.max(FROM), (bucket + step).min(TO));
            assert_eq!(p["window_start_ms"].as_i64(), Some(start));
            assert_eq!(p["window_end_ms"].as_i64(), Some(end));
            let (count, sum, min, max, p95) = exact(h, start, end);
            let a = &p["aggregations"];
            assert_eq!(a["count"].as_f64(), Some(count), "{start}");
            assert!(
                (a["sum"].as_f64().unwrap() - sum).abs() < 1e-6 * sum,
                "{start}"
            );
            assert_eq!(
                (a["min"].as_f64(), a["max"].as_f64()),
                (Some(min), Some(max))
            );
            let got = a["p95"].as_f64().unwrap();
            assert!(
                (got - p95).abs() <= 0.01 * p95,
                "p95 {got} against {p95} at {start}"
            );
        }
    }
}

const AGGS: &str = "aggs=count,sum,min,max,p95";

#[tokio::test]
async fn max_points_reads_the_finest_window_that_fits_and_says_so() {
    let f = Fixture::new().await;
    // By default every window: 3 hours of 1m is 180 points per host.
    let (status, fine) = f.get(&format!("window=1m&{AGGS}")).await;
    assert_eq!(status, StatusCode::OK, "{fine}");
    assert_eq!(
        (fine["source_window"].as_str(), fine["step_ms"].as_i64()),
        (Some("1m"), Some(MIN))
    );
    check_exact(&fine, MIN);
    // In 40 points: 4.5 minutes each, so the 5m windows.
    let (_, five) = f.get(&format!("window=1m&max_points=40&{AGGS}")).await;
    assert_eq!(
        (five["source_window"].as_str(), five["step_ms"].as_i64()),
        (Some("5m"), Some(5 * MIN))
    );
    assert_eq!(five["window"], "1m");
    check_exact(&five, 5 * MIN);
    // Past the coarsest window (15m), its windows are merged: 2 points of 90 minutes.
    let (_, merged) = f.get(&format!("window=1m&max_points=2&{AGGS}")).await;
    assert_eq!(
        (merged["source_window"].as_str(), merged["step_ms"].as_i64()),
        (Some("15m"), Some(90 * MIN))
    );
    check_exact(&merged, 90 * MIN);
}

#[tokio::test]
async fn a_coarser_source_answers_what_the_window_itself_answers() {
    let f = Fixture::new().await;
    let (_, via_max_points) = f.get(&format!("window=1m&max_points=12&{AGGS}")).await;
    let (_, stored) = f.get(&format!("window=15m&{AGGS}")).await;
    assert_eq!(via_max_points["source_window"], "15m");
    assert_eq!(via_max_points["series"], stored["series"]);
    // Merging the 1m windows by `step` gives the same numbers as reading the
    // 5m windows (the p95 within the sketch's 1 %: the merged sketches are equal).
    let (_, from_fine) = f
        .get(&format!("window=1m&step=5m&max_points=1000&{AGGS}"))
        .await;
    let (_, from_five) = f.get(&format!("window=5m&max_points=1000&{AGGS}")).await;
    assert_eq!(from_fine["source_window"], "5m");
    assert_eq!(from_fine["series"], from_five["series"]);
}

#[tokio::test]
async fn a_step_merges_consecutive_windows_exactly() {
    let f = Fixture::new().await;
    // 7 minutes is no configured window: the 1m windows merged by seven.
    let (status, seven) = f.get(&format!("window=1m&step=7m&{AGGS}")).await;
    assert_eq!(status, StatusCode::OK, "{seven}");
    assert_eq!(
        (seven["source_window"].as_str(), seven["step_ms"].as_i64()),
        (Some("1m"), Some(7 * MIN))
    );
    // FROM is 2 minutes into a 7-minute point: the first point says it covers 5.
    check_exact(&seven, 7 * MIN);
    let (_, half_hour) = f.get(&format!("window=1m&step=30m&{AGGS}")).await;
    assert_eq!(half_hour["source_window"], "15m");
    check_exact(&half_hour, 30 * MIN);
}

#[tokio::test]
async fn bad_steps_and_max_points_are_400s_that_say_why() {
    let f = Fixture::new().await;
    for (query, code, says) in [
        (
            "window=5m&step=7m",
            "bad_step",
            "multiple of the window `5m`",
        ),
        ("window=1m&step=soon", "bad_step", "not a duration"),
        ("window=1m&step=500ms", "bad_step", "outside 1s to 400d"),
        ("window=1m&max_points=0", "bad_max_points", "1 to 10000"),
        ("window=1m&max_points=many", "bad_max_points", "1 to 10000"),
    ] {
        let (status, body) = f.get(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{query}: {message}");
    }
}
