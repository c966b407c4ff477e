//! Windows of random points checked through the dashboard's API: what the
//! event-time tests (late points, fast clocks, growing partitions) compare.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{AGGS, Expected, Key, TestPoint, check_aggregations, get_json};

/// `n` points of `hosts` series of `cpu_usage`, stamped in `[from_ms, to_ms)`
/// in random order, values multiples of 1/4 (every sum exact in f64).
pub fn random_points(
    n: usize,
    hosts: usize,
    from_ms: i64,
    to_ms: i64,
    seed: u64,
) -> Vec<TestPoint> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    (0..n)
        .map(|i| TestPoint {
            metric: "cpu_usage",
            host: format!("web-{:03}", i % hosts),
            value: 1.0 + (next() % 400) as f64 * 0.25,
            ts_ms: from_ms + (next() % (to_ms - from_ms) as u64) as i64,
            late: false,
        })
        .collect()
}

/// Per (host, window, start): the values of the window, their sum and the
/// value at the highest timestamp (the largest on a tie).
pub fn windows_of(
    points: &[TestPoint],
    windows: &[(&'static str, i64)],
) -> BTreeMap<Key, Expected> {
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    for p in points {
        for &(label, size) in windows {
            let start = p.ts_ms.div_euclid(size) * size;
            let e = out
                .entry((p.metric, p.host.clone(), label, start))
                .or_default();
            e.values.push(p.value);
            e.sum += p.value;
            if e.values.len() == 1 || (p.ts_ms, p.value) > e.last {
                e.last = (p.ts_ms, p.value);
            }
        }
    }
    out
}

/// The windows the dashboard answers for `cpu_usage` from `from_ms` on:
/// (host, window, start) → the answered aggregations.
pub async fn answered(
    client: &reqwest::Client,
    dashboard: &str,
    windows: &[(&'static str, i64)],
    from_ms: i64,
) -> BTreeMap<Key, serde_json::Value> {
    let mut out = BTreeMap::new();
    for &(label, _) in windows {
        let url = format!(
            "{dashboard}/api/v1/query_range?metric=cpu_usage&window={label}&from={}&to={}&group_by=host&aggs={AGGS}",
            from_ms / 1000,
            pulse_core::now_ms() / 1000 + 1
        );
        let (status, body) = get_json(client, &url).await;
        assert_eq!(status, 200, "{body}");
        for series in body["series"].as_array().into_iter().flatten() {
            let host = series["tags"]["host"]
                .as_str()
                .expect("by host")
                .to_string();
            for point in series["points"].as_array().expect("points") {
                let start = point["window_start_ms"].as_i64().expect("start");
                out.insert(
                    ("cpu_usage", host.clone(), label, start),
                    point["aggregations"].clone(),
                );
            }
        }
    }
    out
}

/// Waits until every window of `expected` is answered with its full count,
/// then checks each against its values: count, sum, min, max, last exactly,
/// quantiles within the sketch's 1 %.
pub async fn check_windows(
    client: &reqwest::Client,
    dashboard: &str,
    expected: &BTreeMap<Key, Expected>,
    windows: &[(&'static str, i64)],
    timeout: Duration,
) {
    let from_ms = expected.keys().map(|k| k.3).min().expect("windows");
    let deadline = Instant::now() + timeout;
    loop {
        let got = answered(client, dashboard, windows, from_ms).await;
        let complete = expected.iter().all(|(key, e)| {
            got.get(key)
                .is_some_and(|a| a["count"].as_f64() == Some(e.values.len() as f64))
        });
        if complete || Instant::now() > deadline {
            for (key, e) in expected {
                let what = format!("{key:?}");
                let got = got
                    .get(key)
                    .unwrap_or_else(|| panic!("{what}: no such window answered"));
                check_aggregations(&what, got, &e.values, e.sum, Some(e.last.1));
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn metrics_text(client: &reqwest::Client, processor: &str) -> String {
    client
        .get(format!("{processor}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the counter `line_start` in an OpenMetrics text, 0 if absent.
pub fn counter(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}
