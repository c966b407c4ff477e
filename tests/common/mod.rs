//! Shared by the end-to-end tests: a known stream of points, the aggregates it
//! must produce (computed here, independently of Pulse), and checks of what the
//! dashboard answers against them.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Points generated per run.
pub const POINTS: usize = 50_000;
/// Windows under test: the defaults plus a sliding one.
pub const WINDOWS: [(&str, i64, i64); 4] = [
    ("1m", 60_000, 60_000),
    ("5m", 300_000, 300_000),
    ("15m", 900_000, 900_000),
    ("10m/1m", 600_000, 60_000),
];
pub const AGGS: &str = "count,sum,min,max,avg,last,p50,p90,p95,p99";

/// The config of a test run: ephemeral ports, fast checkpoints, short idleness.
pub fn config_toml(data_dir: &std::path::Path, idle: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = ["1m", "5m", "15m", {{ size = "10m", slide = "1m" }}]
checkpoint_interval = "200ms"
idle_timeout = "{idle}"
[storage]
data_dir = "{}"
"#,
        data_dir.display()
    )
}

#[derive(Debug, Clone)]
pub struct TestPoint {
    pub metric: &'static str,
    pub host: String,
    pub value: f64,
    pub ts_ms: i64,
    /// Generated so far behind the stream that every window it falls into is
    /// closed on arrival, whatever partition its series lands on.
    pub late: bool,
}

impl TestPoint {
    pub fn json(&self) -> Value {
        let tags = if self.metric == "cpu_usage" {
            json!({"host": self.host, "env": "prod"})
        } else {
            json!({"host": self.host, "region": "eu"})
        };
        json!({"metric_name": self.metric, "value": self.value, "timestamp": self.ts_ms as f64 / 1000.0, "tags": tags})
    }
}

/// A deterministic stream over 7 series of two metrics spanning about an hour
/// that ended an hour ago: in-order points, points up to 20 s out of order
/// (never late: lateness is 30 s) and, after the first 25 minutes, points
/// 20 minutes behind the stream (late for every window).
pub fn stream() -> Vec<TestPoint> {
    let now = pulse_core::now_ms();
    let start = (now - 2 * 3_600_000) / 900_000 * 900_000;
    let series: Vec<(&str, String)> = (0..5)
        .map(|h| ("cpu_usage", format!("web-{h:02}")))
        .chain((0..2).map(|h| ("mem_used", format!("db-{h:02}"))))
        .collect();
    let mut state: u64 = 0x5eed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut points = Vec::with_capacity(POINTS);
    for i in 0..POINTS {
        let (metric, host) = &series[i % series.len()];
        let clock = start + i as i64 * 72;
        let roll = next() % 100;
        let (ts_ms, late) = if roll < 10 {
            (clock - (next() % 20_000) as i64, false)
        } else if roll < 12 && clock - start > 25 * 60_000 {
            (clock - 20 * 60_000 - (next() % 60_000) as i64, true)
        } else {
            (clock, false)
        };
        // Skewed positive values, multiples of 1/4 so every sum is exact in f64.
        let value = 1.0 + ((next() % 400) as f64 * 0.25) * if next() % 10 == 0 { 8.0 } else { 1.0 };
        points.push(TestPoint {
            metric,
            host: host.clone(),
            value,
            ts_ms,
            late,
        });
    }
    points
}

/// What one window of one series must hold.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub values: Vec<f64>,
    pub sum: f64,
    pub last: (i64, f64),
}

pub type Key = (&'static str, String, &'static str, i64); // metric, host, window, start

/// Aggregates the on-time points into every window they fall into.
pub fn expected(points: &[TestPoint]) -> BTreeMap<Key, Expected> {
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    for p in points.iter().filter(|p| !p.late) {
        for (label, size, slide) in WINDOWS {
            let newest = p.ts_ms.div_euclid(slide) * slide;
            for k in 0..size / slide {
                let e = out
                    .entry((p.metric, p.host.clone(), label, newest - k * slide))
                    .or_default();
                e.values.push(p.value);
                e.sum += p.value;
                if e.values.len() == 1 || p.ts_ms >= e.last.0 {
                    e.last = (p.ts_ms, p.value);
                }
            }
        }
    }
    out
}

pub fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

/// Checks one answered aggregation map against the values of a window.
pub fn check_aggregations(what: &str, got: &Value, values: &[f64], sum: f64, last: Option<f64>) {
    let n = values.len() as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let num = |name: &str| {
        got[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: no {name} in {got}"))
    };
    assert_eq!(num("count"), n, "{what}: count");
    assert_eq!(num("sum"), sum, "{what}: sum");
    assert_eq!(num("min"), min, "{what}: min");
    assert_eq!(num("max"), max, "{what}: max");
    assert!(
        (num("avg") - sum / n).abs() <= 1e-9 * (sum / n).abs(),
        "{what}: avg"
    );
    if let Some(last) = last {
        assert_eq!(num("last"), last, "{what}: last");
    }
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)] {
        let exact = exact_quantile(values, q);
        let error = (num(name) - exact).abs() / exact;
        assert!(
            error <= 0.010_001,
            "{what}: {name} {} vs exact {exact} ({:.3}% off)",
            num(name),
            error * 100.0
        );
    }
}

/// Posts `points` to the gateway as JSON arrays of `batch`, asserting 202s.
pub async fn post(client: &reqwest::Client, gateway: &str, points: &[TestPoint], batch: usize) {
    for chunk in points.chunks(batch) {
        let body = Value::Array(chunk.iter().map(TestPoint::json).collect());
        let response = client
            .post(format!("{gateway}/v1/metrics"))
            .json(&body)
            .send()
            .await
            .expect("gateway answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(status, 202, "gateway refused a batch: {text}");
    }
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until the dashboard holds every expected window (all closed), or fails.
pub async fn wait_for_all_windows(
    client: &reqwest::Client,
    dashboard: &str,
    expected: &BTreeMap<Key, Expected>,
    from_ms: i64,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = expected.len();
    loop {
        let mut got = 0;
        for metric in ["cpu_usage", "mem_used"] {
            for (label, _, _) in WINDOWS {
                let url = format!(
                    "{dashboard}/api/v1/query_range?metric={metric}&window={label}&from={}&to={}&group_by=host&aggs=count",
                    from_ms / 1000,
                    pulse_core::now_ms() / 1000 + 1
                );
                let (_, body) = get_json(client, &url).await;
                got += body["series"].as_array().map_or(0, |s| {
                    s.iter()
                        .map(|s| s["points"].as_array().map_or(0, Vec::len))
                        .sum()
                });
            }
        }
        if got >= want {
            assert_eq!(got, want, "more windows than the input can produce");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {want} windows closed within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Checks every window of every series the dashboard returns, then the merged
/// latest window per metric, against the independent computation.
pub async fn check_dashboard(
    client: &reqwest::Client,
    dashboard: &str,
    expected: &BTreeMap<Key, Expected>,
    from_ms: i64,
) {
    let mut checked = 0;
    for metric in ["cpu_usage", "mem_used"] {
        for (label, _, _) in WINDOWS {
            let url = format!(
                "{dashboard}/api/v1/query_range?metric={metric}&window={label}&from={}&to={}&group_by=host&aggs={AGGS}",
                from_ms / 1000,
                pulse_core::now_ms() / 1000 + 1
            );
            let (status, body) = get_json(client, &url).await;
            assert_eq!(status, 200, "{body}");
            for series in body["series"].as_array().expect("series") {
                let host = series["tags"]["host"]
                    .as_str()
                    .expect("grouped by host")
                    .to_string();
                for point in series["points"].as_array().expect("points") {
                    let start = point["window_start_ms"].as_i64().expect("start");
                    let e = expected
                        .get(&(metric, host.clone(), label, start))
                        .unwrap_or_else(|| {
                            panic!("unexpected window {metric} {host} {label} {start}")
                        });
                    check_aggregations(
                        &format!("{metric}/{host}/{label}/{start}"),
                        &point["aggregations"],
                        &e.values,
                        e.sum,
                        Some(e.last.1),
                    );
                    checked += 1;
                }
            }

            // GET /dashboard: the newest window across all hosts, merged.
            let newest = expected
                .keys()
                .filter(|k| k.0 == metric && k.2 == label)
                .map(|k| k.3)
                .max()
                .expect("windows");
            let (status, body) = get_json(
                client,
                &format!("{dashboard}/dashboard?metric={metric}&window={label}&aggs={AGGS}"),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body["window_start_ms"].as_i64(),
                Some(newest),
                "{metric}/{label}: newest window"
            );
            let parts: Vec<&Expected> = expected
                .iter()
                .filter(|(k, _)| k.0 == metric && k.2 == label && k.3 == newest)
                .map(|(_, e)| e)
                .collect();
            let values: Vec<f64> = parts
                .iter()
                .flat_map(|e| e.values.iter().copied())
                .collect();
            let sum = parts.iter().flat_map(|e| e.values.iter()).sum::<f64>();
            assert_eq!(body["series"].as_u64(), Some(parts.len() as u64));
            check_aggregations(
                &format!("/dashboard {metric}/{label}"),
                &body["aggregations"],
                &values,
                sum,
                None,
            );
        }
    }
    assert_eq!(
        checked,
        expected.len(),
        "every expected window was returned and checked"
    );
}
