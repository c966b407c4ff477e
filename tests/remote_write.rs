//! A real Prometheus (Debian's `prometheus`) scrapes a target this test serves
//! and remote-writes to `pulse up`'s gateway (`POST /api/v1/write`); what a
//! Prometheus user would check is then asked of the dashboard: a counter's
//! increase over a window, and a classic histogram's p95 across two pods, as
//! one sketch metric under its base name.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use pulse_core::config::Config;
use serde_json::Value;

use common::get_json;

const BINARY: &str = "prometheus";

/// The windows under test: the histogram and counter are read from the 30 s
/// one, fed by 5 s windows.
const CONFIG_WINDOWS: &str = r#"["5s", "30s"]"#;

/// What the target serves: a counter and a classic histogram per pod.
#[derive(Clone)]
struct Target {
    jobs: f64,
    /// Cumulative counts per bucket bound of pod `a` and pod `b`, and sums.
    a: [f64; 5],
    b: [f64; 5],
    a_sum: f64,
    b_sum: f64,
}

/// Bucket bounds of `req_seconds`.
const BOUNDS: [&str; 5] = ["0.1", "0.25", "1", "2.5", "+Inf"];

impl Target {
    fn exposition(&self) -> String {
        let mut text = String::from("# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\n");
        text.push_str(&format!("jobs_total {}\n", self.jobs));
        text.push_str("# HELP req_seconds Request latency.\n# TYPE req_seconds histogram\n");
        for (pod, counts, sum) in [("a", &self.a, self.a_sum), ("b", &self.b, self.b_sum)] {
            for (le, count) in BOUNDS.iter().zip(counts) {
                text.push_str(&format!(
                    "req_seconds_bucket{{pod=\"{pod}\",le=\"{le}\"}} {count}\n"
                ));
            }
            text.push_str(&format!("req_seconds_sum{{pod=\"{pod}\"}} {sum}\n"));
            text.push_str(&format!(
                "req_seconds_count{{pod=\"{pod}\"}} {}\n",
                counts[4]
            ));
        }
        text
    }
}

fn installed() -> bool {
    let found = std::process::Command::new(BINARY)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        pulse_core::test_policy::skip_or_fail(
            &format!("{BINARY} is not installed"),
            "apt-get install -y prometheus",
        );
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The merged aggregations of the windows of `metric` (30 s) so far.
async fn windows(
    client: &reqwest::Client,
    dashboard: &str,
    metric: &str,
    aggs: &str,
) -> Vec<Value> {
    let from = pulse_core::now_ms() / 1000 - 600;
    let url = format!(
        "{dashboard}/api/v1/query_range?metric={metric}&window=30s&from={from}&aggs={aggs}"
    );
    let (status, body) = get_json(client, &url).await;
    if status != 200 {
        return Vec::new();
    }
    body["series"]
        .as_array()
        .and_then(|s| s.first())
        .and_then(|s| s["points"].as_array())
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_remote_writes_counters_and_histograms_that_query_as_such() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let toml = common::config_toml(dir.path(), "2s").replace(
        r#"windows = ["1m", "5m", "15m", { size = "10m", slide = "1m" }]"#,
        &format!("windows = {CONFIG_WINDOWS}"),
    );
    let running = pulse::up::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    let gateway = format!("http://{}", running.gateway);
    let dashboard = format!("http://{}", running.dashboard);
    let client = reqwest::Client::new();

    // The scrape target.
    let target = Arc::new(Mutex::new(Target {
        jobs: 100.0,
        a: [0.0; 5],
        b: [0.0; 5],
        a_sum: 0.0,
        b_sum: 0.0,
    }));
    let served = Arc::clone(&target);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let text = served.lock().unwrap().exposition();
            async move { text }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Prometheus, scraping every second and sending within a second.
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: app
    static_configs:
      - targets: ["{target_addr}"]
remote_write:
  - url: {gateway}/api/v1/write
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
    metadata_config:
      send_interval: 1s
"#
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut prometheus = common::PulseProcess::spawn_program(
        std::path::Path::new("/usr/bin/prometheus"),
        &[
            &format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ),
            &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            &format!("--web.listen-address={web}"),
        ],
    );

    // Baselines: the counter and both histograms are in Pulse once `jobs_total`
    // has two samples (a scrape's samples travel together).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = get_json(&client, &format!("{dashboard}/api/v1/metrics")).await;
        let seen = metrics.to_string();
        if seen.contains("jobs_total") && seen.contains("\"up\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never wrote to Pulse: {seen}\n{}",
            prometheus.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The change lands well inside one 30 s window: 8 s to 14 s after its start.
    loop {
        let into = pulse_core::now_ms() % 30_000;
        if (8_000..14_000).contains(&into) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    {
        let mut t = target.lock().unwrap();
        t.jobs += 50.0;
        // Pod a: 94 fast requests and 6 slow ones (its own p95 is > 1 s).
        t.a = [94.0, 94.0, 94.0, 100.0, 100.0];
        t.a_sum = 94.0 * 0.05 + 6.0 * 2.0;
        // Pod b: 100 requests in (0.1, 0.25].
        t.b = [0.0, 100.0, 100.0, 100.0, 100.0];
        t.b_sum = 100.0 * 0.2;
    }
    let window_start = pulse_core::now_ms() / 30_000 * 30_000;

    // The window closes; its answers are what a Prometheus user expects.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (histogram, counter) = loop {
        let found = |points: Vec<Value>| {
            points
                .into_iter()
                .find(|p| p["window_start_ms"].as_i64() == Some(window_start))
        };
        let histogram = found(windows(&client, &dashboard, "req_seconds", "p95,count,sum").await);
        let counter = found(windows(&client, &dashboard, "jobs_total", "increase,rate").await);
        if let (Some(h), Some(c)) = (&histogram, &counter) {
            break (h.clone(), c.clone());
        }
        assert!(
            Instant::now() < deadline,
            "the window at {window_start} never closed:\n{histogram:?}\n{counter:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let aggs = |p: &Value, name: &str| {
        p["aggregations"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("no {name} in {p}"))
    };
    // 200 observations of two pods merged: the p95 (rank 190) is in (0.1, 0.25],
    // within the bucket resolution and the sketch's 1 %; a mean of the pods'
    // own p95s would be above 0.5.
    assert_eq!(aggs(&histogram, "count"), 200.0, "{histogram}");
    let p95 = aggs(&histogram, "p95");
    assert!(
        (0.1..=0.25 * 1.01).contains(&p95),
        "p95 {p95} in {histogram}"
    );
    let sum = aggs(&histogram, "sum");
    assert!((sum - 36.7).abs() < 1e-9, "sum {sum} in {histogram}");
    // The counter grew by 50 inside the window; like Prometheus' increase(),
    // Pulse extrapolates from the first and last scrape to the window's edges
    // (1 s scrapes in 30 s: at most 30/27 of it, allowing missed scrapes).
    let increase = aggs(&counter, "increase");
    assert!(
        (50.0..=50.0 * 30.0 / 27.0).contains(&increase),
        "increase {increase} in {counter}"
    );
    let rate = aggs(&counter, "rate");
    assert!(
        (rate - increase / 30.0).abs() < 1e-9,
        "rate {rate} in {counter}"
    );

    prometheus.kill();
    running.stop().await.unwrap();
}
