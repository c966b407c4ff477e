//! Shared by the end-to-end tests: a known stream of points, the aggregates it
//! must produce (computed here, independently of Pulse), and checks of what the
//! dashboard answers against them.

#![allow(dead_code)] // each test binary uses a different part

pub mod hostile;
pub mod proxy;
pub mod tools;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod windows;
#[allow(unused_imports)] // each test binary uses a different part
pub use windows::*;

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

/// Aggregates every point into every window it falls into: on-time points
/// through the open windows, late ones merged into their closed windows
/// (they are within `processor.late_horizon`). `last` is the value at the
/// highest timestamp, the largest on a tie.
pub fn expected(points: &[TestPoint]) -> BTreeMap<Key, Expected> {
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    for p in points {
        for (label, size, slide) in WINDOWS {
            let newest = p.ts_ms.div_euclid(slide) * slide;
            for k in 0..size / slide {
                let e = out
                    .entry((p.metric, p.host.clone(), label, newest - k * slide))
                    .or_default();
                e.values.push(p.value);
                e.sum += p.value;
                if e.values.len() == 1
                    || p.ts_ms > e.last.0
                    || (p.ts_ms == e.last.0 && p.value > e.last.1)
                {
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
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
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

/// The URL of a service a test needs (PostgreSQL, Redis): `$env`, or `default`.
/// `None`, after a skip notice, when nothing answers there; with `CI` set an
/// unreachable service fails the test instead. The same policy as the engine
/// conformance suites, for every end-to-end test that needs a service.
pub fn service_url_or_skip(
    service: &str,
    env: &str,
    default: &str,
    default_port: u16,
) -> Option<String> {
    use std::net::{TcpStream, ToSocketAddrs};

    let url = std::env::var(env).unwrap_or_else(|_| default.into());
    let address = pulse::engines::url_endpoint(&url, default_port);
    if address.contains("://") {
        // A Unix socket: nothing to probe cheaply; let the test find out.
        return Some(url);
    }
    let reachable = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    if reachable {
        return Some(url);
    }
    pulse_core::test_policy::skip_or_fail(
        &format!("{service} is unreachable at {address}"),
        &format!("start {service} there or point {env} at one"),
    );
    None
}

/// The test PostgreSQL (`PULSE_TEST_DATABASE_URL`), or `None` after a skip notice.
pub fn test_database_url() -> Option<String> {
    service_url_or_skip(
        "PostgreSQL",
        "PULSE_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/test",
        5432,
    )
}

/// The test Redis (`PULSE_TEST_REDIS_URL`), or `None` after a skip notice.
pub fn test_redis_url() -> Option<String> {
    service_url_or_skip(
        "Redis",
        "PULSE_TEST_REDIS_URL",
        "redis://127.0.0.1:6379",
        6379,
    )
}

/// The real `pulse` binary as a child process; its stdout and stderr lines
/// are collected as they come (so it never blocks on a full pipe). Killed when
/// dropped, so a failing test leaves nothing running.
pub struct PulseProcess {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl PulseProcess {
    pub fn spawn(args: &[&str]) -> PulseProcess {
        Self::spawn_program(std::path::Path::new(env!("CARGO_BIN_EXE_pulse")), args)
    }

    /// Like [`spawn`](Self::spawn), for another program (the sidecar).
    pub fn spawn_program(program: &std::path::Path, args: &[&str]) -> PulseProcess {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()));
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = std::sync::Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        };
        collect(Box::new(stdout));
        collect(Box::new(stderr));
        PulseProcess { child, lines }
    }

    /// Everything printed so far, one line each.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The lines printed so far that `matches` accepts.
    pub fn lines_matching(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| matches(l))
            .cloned()
            .collect()
    }

    /// Waits until at least `count` printed lines satisfy `matches`; panics
    /// with the output after `timeout` or if the process exits first.
    pub fn wait_for_lines(
        &mut self,
        what: &str,
        count: usize,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.lines_matching(&matches);
            if found.len() >= count {
                return found;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200)); // let the readers finish
                panic!("pulse exited ({status}) before {what}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address printed on the banner line of `role` (`  gateway  http://...`).
    pub fn banner_url(&mut self, role: &str, timeout: Duration) -> String {
        let line = self.wait_for_lines(&format!("the {role} banner line"), 1, timeout, |l| {
            l.trim_start()
                .strip_prefix(role)
                .is_some_and(|rest| rest.trim_start().starts_with("http://"))
        });
        let rest = line[0].trim_start().strip_prefix(role).unwrap();
        rest.split_whitespace().next().unwrap().to_string()
    }

    /// The process id (to read its `/proc` entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGKILL (no chance to flush or leave anything) and reaps the process.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pulse did not stop within {timeout:?} of SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PulseProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- Exact expectations for the production-engine crash tests (kill, rebalance) ----

/// A window definition of those tests: label, size and slide in ms.
pub type WindowDef = (&'static str, i64, i64);

/// `["1m", "5m", { size = "10m", slide = "1m" }]`: 1m feeds both others.
pub const CHAIN_WINDOWS: [WindowDef; 3] = [
    ("1m", 60_000, 60_000),
    ("5m", 300_000, 300_000),
    ("10m/1m", 600_000, 60_000),
];

/// `n` points of 16 series (two metrics) over 30 minutes of event time that
/// began `start_ms`: one point per 9 ms of stream clock on average (whatever
/// `n`, the span stays 30 minutes), 10 % of them up to 10 s out of order
/// (never late with an allowed lateness of 30 s), and after the first 22
/// minutes 0.5 % of them 20 to 21 minutes behind the stream, late for every
/// window. Values are multiples of 1/4, so every sum is exact in f64. The
/// second element says which points are late by construction.
pub fn crash_stream(n: usize, start_ms: i64, seed: u64) -> (Vec<pulse_core::Point>, Vec<bool>) {
    let series: Vec<(&str, String)> = (0..8)
        .map(|h| ("crash_cpu", format!("web-{h:02}")))
        .chain((0..8).map(|h| ("crash_mem", format!("db-{h:02}"))))
        .collect();
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let span = 30 * 60_000;
    let (mut points, mut late) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (metric, host) = &series[i % series.len()];
        let clock = start_ms + (i as i64 * span) / n as i64;
        let roll = next() % 1000;
        let (ts, is_late) = if roll < 100 {
            (clock - (next() % 10_000) as i64, false)
        } else if roll < 105 && clock - start_ms > 22 * 60_000 {
            (clock - 20 * 60_000 - (next() % 60_000) as i64, true)
        } else {
            (clock, false)
        };
        let value = 1.0 + ((next() % 400) as f64 * 0.25) * if next() % 10 == 0 { 8.0 } else { 1.0 };
        points.push(pulse_core::Point {
            metric: (*metric).to_string(),
            tags: [("host".to_string(), host.clone())].into(),
            value,
            timestamp_ms: ts,
            kind: pulse_core::MetricKind::Gauge,
            sketch: None,
        });
        late.push(is_late);
    }
    (points, late)
}

/// Sends `points` through a Kafka producer in the real record format (key =
/// series id), in order, `batch` records per send.
pub async fn send_points(
    producer: &pulse_engine::bus::kafka::KafkaProducer,
    points: &[pulse_core::Point],
    batch: usize,
) {
    use pulse_engine::bus::{BusProducer, OutgoingRecord};
    for chunk in points.chunks(batch) {
        let records = chunk
            .iter()
            .map(|p| OutgoingRecord {
                key: p.series_id().0,
                value: pulse_core::codec::record::encode_point(p),
            })
            .collect();
        producer
            .send(records)
            .await
            .expect("the mock Kafka takes the batch");
    }
}

/// (metric, series id, window label, window start) → the aggregate of its points.
pub type ExactWindows = BTreeMap<(String, u64, &'static str, i64), pulse_core::Aggregate>;

/// Adds `p` to every window of `windows` it falls into, as an uninterrupted
/// run would (the pipeline's own aggregate and sketch code).
pub fn add_to_windows(out: &mut ExactWindows, p: &pulse_core::Point, windows: &[WindowDef]) {
    let id = p.series_id().0;
    for &(label, size, slide) in windows {
        let newest = p.timestamp_ms.div_euclid(slide) * slide;
        for k in 0..size / slide {
            out.entry((p.metric.clone(), id, label, newest - k * slide))
                .or_default()
                .add(p.value, p.timestamp_ms);
        }
    }
}

/// What the store must hold after the points went through the processor.
#[derive(Debug, Default)]
pub struct ExactResults {
    /// Every point that counts in each window, added in bus order.
    pub windows: ExactWindows,
    /// (metric, window label) → points late for that definition.
    pub late: BTreeMap<(String, &'static str), u64>,
}

/// Computes, independently of the processor, what `points` (in the order they
/// were sent) must produce: per partition (series id mod `partitions`) a
/// watermark trailing the highest event time by `lateness_ms`; a point counts
/// in every window of `windows` it falls into (a late one is merged into its
/// closed window), and is late for a definition with a window already closed. Checks that exactly
/// the points `late_by_design` says are late, for every definition, so the
/// outcome cannot depend on where a processor was stopped.
pub fn exact_results(
    points: &[pulse_core::Point],
    late_by_design: &[bool],
    partitions: u64,
    lateness_ms: i64,
    windows: &[WindowDef],
) -> ExactResults {
    let mut out = ExactResults::default();
    let mut max_ts: BTreeMap<u64, i64> = BTreeMap::new();
    for (p, &designed) in points.iter().zip(late_by_design) {
        let id = p.series_id().0;
        let partition = id % partitions;
        let watermark = max_ts.get(&partition).map(|m| m - lateness_ms);
        let ts = p.timestamp_ms;
        add_to_windows(&mut out.windows, p, windows);
        let mut late_for = 0;
        for &(label, size, slide) in windows {
            // The oldest window of the point is the first to close.
            let oldest = ts.div_euclid(slide) * slide - (size / slide - 1) * slide;
            if watermark.is_some_and(|wm| oldest + size <= wm) {
                late_for += 1;
                *out.late.entry((p.metric.clone(), label)).or_default() += 1;
            }
        }
        let expected = if designed { windows.len() } else { 0 };
        assert_eq!(
            late_for,
            expected,
            "a point ({p:?}) is late for {late_for} of {} window definitions: the stream is ambiguous",
            windows.len()
        );
        let max = max_ts.entry(partition).or_insert(ts);
        *max = (*max).max(ts);
    }
    out
}

/// Compares every window result and late count in `store` with `exact`:
/// see [`check_windows_exact`], plus the late counts per metric and window.
/// Returns how many windows were checked.
pub async fn check_exact(
    store: &dyn pulse_engine::store::Store,
    exact: &ExactResults,
    windows: &[WindowDef],
) -> usize {
    let checked = check_windows_exact(store, &exact.windows, windows).await;
    let metrics: std::collections::BTreeSet<&str> =
        exact.windows.keys().map(|k| k.0.as_str()).collect();
    for &metric in &metrics {
        let got: BTreeMap<String, u64> = store
            .late_counts(metric)
            .await
            .expect("the store answers")
            .into_iter()
            .filter(|l| l.count > 0)
            .map(|l| (l.window, l.count))
            .collect();
        let want: BTreeMap<String, u64> = exact
            .late
            .iter()
            .filter(|(k, _)| k.0 == metric)
            .map(|(k, &c)| (k.1.to_string(), c))
            .collect();
        assert_eq!(got, want, "late points of {metric}, per window");
    }
    checked
}

/// Compares every window result in `store` with `exact`: no window missing,
/// none extra, none twice; count, sum, min, max and last exactly, and the
/// quantiles p1 to p99 exactly (the sketch's bins add up, so a merged sketch
/// equals the sketch of an uninterrupted run). Returns how many windows were
/// checked.
pub async fn check_windows_exact(
    store: &dyn pulse_engine::store::Store,
    exact: &ExactWindows,
    windows: &[WindowDef],
) -> usize {
    use pulse_core::AggKind;
    use pulse_engine::store::ResultQuery;

    let metrics: std::collections::BTreeSet<&str> = exact.keys().map(|k| k.0.as_str()).collect();
    let quantiles: Vec<(String, AggKind)> = (1..100)
        .map(|p| {
            (
                format!("p{p}"),
                format!("p{p}").parse().expect("a quantile"),
            )
        })
        .collect();
    let mut stored = BTreeMap::new();
    for &metric in &metrics {
        for &(label, _, _) in windows {
            let results = store
                .range(&ResultQuery {
                    metric: metric.to_string(),
                    window: label.to_string(),
                    tags: pulse_core::Tags::new(),
                    from_ms: i64::MIN,
                    to_ms: i64::MAX,
                    limit: 1_000_000,
                })
                .await
                .expect("the store answers");
            for r in results {
                let key = (r.metric.clone(), r.series_id.0, label, r.start_ms);
                assert!(
                    stored.insert(key.clone(), r.agg).is_none(),
                    "{key:?} stored twice"
                );
            }
        }
    }
    let missing: Vec<_> = exact.keys().filter(|k| !stored.contains_key(*k)).collect();
    let extra: Vec<_> = stored.keys().filter(|k| !exact.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} windows missing from the store (first {:?}), {} not expected (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    for (key, want) in exact {
        let got = &stored[key];
        let what = format!("{key:?}");
        assert_eq!(
            got.count, want.count,
            "{what}: count (nothing lost, nothing twice)"
        );
        assert_eq!(got.sum, want.sum, "{what}: sum");
        assert_eq!(got.min, want.min, "{what}: min");
        assert_eq!(got.max, want.max, "{what}: max");
        assert_eq!(
            (got.last_ts, got.last),
            (want.last_ts, want.last),
            "{what}: last"
        );
        for (name, kind) in &quantiles {
            assert_eq!(got.value(*kind), want.value(*kind), "{what}: {name}");
        }
    }
    exact.len()
}

/// librdkafka's mock Kafka cluster (one broker, in this test process) with
/// `topic`. Unlike `MockCluster::new`'s, its consumer groups form at once:
/// the mock otherwise waits 3 s for more members before a group's first
/// assignment, longer than the short `session.timeout.ms` of the crash tests,
/// so the waiting member would time out of the group it is joining.
pub struct MockKafka {
    /// The client that owns the cluster; the cluster lives as long as it.
    holder: rdkafka::producer::BaseProducer,
}

impl MockKafka {
    pub fn start(topic: &str, partitions: i32) -> MockKafka {
        use rdkafka::producer::Producer;
        let holder: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .create()
            .expect("the mock Kafka cluster starts");
        holder
            .client()
            .mock_cluster()
            .expect("a mock cluster")
            .create_topic(topic, partitions, 1)
            .expect("the mock creates the topic");
        // SAFETY: the pointer is the live cluster `holder` owns; the call only
        // sets a default, under the cluster's lock.
        #[allow(unsafe_code)]
        unsafe {
            let raw = rdkafka::bindings::rd_kafka_handle_mock_cluster(holder.client().native_ptr());
            assert!(!raw.is_null());
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(raw, 0);
        }
        MockKafka { holder }
    }

    pub fn bootstrap_servers(&self) -> String {
        use rdkafka::producer::Producer;
        self.holder
            .client()
            .mock_cluster()
            .expect("a mock cluster")
            .bootstrap_servers()
    }
}

/// A pipeline of one test's own: a unique name, its schema and Kafka topic,
/// and the brokers of a mock Kafka cluster serving that topic.
pub struct FreshPipeline {
    pub name: String,
    pub schema: String,
    pub topic: String,
    pub brokers: String,
}

/// Runs `body` on a fresh pipeline (`<prefix>-<pid>-<nanos>`, a [`MockKafka`]
/// with `partitions` partitions) as a task, then drops the pipeline's schema
/// from `database` even when the body failed, and re-raises the body's panic.
pub async fn on_fresh_pipeline<F, Fut>(database: &str, prefix: &str, partitions: i32, body: F)
where
    F: FnOnce(FreshPipeline) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("{prefix}-{}-{nanos}", std::process::id());
    let schema = pulse_core::names::schema("test", &name);
    let topic = format!("pulse.test.{name}.points");
    let kafka = MockKafka::start(&topic, partitions);
    let pipeline = FreshPipeline {
        name,
        schema: schema.clone(),
        topic,
        brokers: kafka.bootstrap_servers(),
    };
    let outcome = tokio::spawn(body(pipeline)).await;
    drop(kafka);
    let pool = sqlx::PgPool::connect(database).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
