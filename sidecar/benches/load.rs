//! Resource use of the real `pulse-sidecar` binary, measured from the outside
//! with the kernel's own accounting: CPU is `utime + stime` of
//! `/proc/<pid>/stat` (every thread of the process), memory is `VmRSS` and
//! `VmHWM` of `/proc/<pid>/status`.
//!
//! ```sh
//! cargo bench -p pulse-sidecar --bench load                 # about 5 minutes once built
//! cargo bench -p pulse-sidecar --bench load -- --seconds 5 --runs 1  # shorter
//! ```
//!
//! The bench starts a fake gateway (it decodes and counts every point, and
//! answers 202) and the sidecar in front of it, measures the sidecar idle,
//! then drives its HTTP and StatsD receivers at 10k and 50k points/s for a
//! fixed time each, and prints a Markdown table. Load generator and gateway run
//! in this process, so their CPU is not the sidecar's.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use pulse_core::codec::body::{decode_content, parse_points};
use pulse_core::validate::Limits;

/// Series in the load: 10 metric names × 100 hosts.
const HOSTS: usize = 100;
const NAMES: usize = 10;
/// Points per HTTP request (NDJSON), lines per StatsD datagram.
const HTTP_BATCH: usize = 100;
const STATSD_LINES: usize = 20;
/// The pacing tick of the load generator.
const TICK: Duration = Duration::from_millis(10);

fn main() {
    let seconds = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(15u64);
    let runs = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(Duration::from_secs(seconds), runs));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn gateway(points: Arc<AtomicU64>) -> u16 {
    async fn ingest(
        State(points): State<Arc<AtomicU64>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        let encoding = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let decoded = decode_content(encoding, &body, 1 << 27).unwrap();
        let batch = parse_points(
            &decoded,
            &Limits::default(),
            1_000_000,
            pulse_core::now_ms(),
        )
        .unwrap();
        points.fetch_add(batch.points.len() as u64, Ordering::Relaxed);
        (StatusCode::ACCEPTED, "{}".into())
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/v1/metrics", post(ingest))
        .with_state(points);
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// CPU seconds (user + system) and memory (kB) of a process, from /proc.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_ticks: u64,
    rss_kb: u64,
    hwm_kb: u64,
}

fn sample(pid: u32) -> Sample {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses: state is the
    // first, utime the 12th and stime the 13th.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let cpu_ticks = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Sample {
        at: Instant::now(),
        cpu_ticks,
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU ticks per thread name (`/proc/<pid>/task/*/stat`), to see where the
/// time goes: the runtime thread (`pulse-sidecar`), the `buffer-writer`, and
/// tokio's blocking pool.
fn threads(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = rest[11].parse::<u64>().unwrap_or(0) + rest[12].parse::<u64>().unwrap_or(0);
        *out.entry(name).or_default() += ticks;
    }
    out
}

fn thread_split(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> String {
    let total: u64 = after
        .iter()
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0).min(*v))
        .sum();
    if total == 0 {
        return String::new();
    }
    let parts: Vec<String> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0).min(*v)))
        .filter(|(_, d)| *d > 0)
        .map(|(k, d)| format!("{k} {:.0}%", 100.0 * d as f64 / total as f64))
        .collect();
    format!("; CPU by thread: {}", parts.join(", "))
}

/// CPU use between two samples, in percent of one core.
fn cpu_percent(a: Sample, b: Sample, hz: f64) -> f64 {
    let cpu = (b.cpu_ticks - a.cpu_ticks) as f64 / hz;
    100.0 * cpu / (b.at - a.at).as_secs_f64()
}

struct Row {
    what: String,
    /// CPU of each run, % of one core.
    cpu: Vec<f64>,
    rss_mib: f64,
    hwm_mib: f64,
    note: String,
}

async fn bench(duration: Duration, runs: usize) {
    let hz = clock_ticks();
    let delivered = Arc::new(AtomicU64::new(0));
    let gateway_port = gateway(Arc::clone(&delivered)).await;
    let dir = tempfile::tempdir().unwrap();
    let (http_port, statsd_port, admin_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"http://127.0.0.1:{gateway_port}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[statsd]\nlisten = \"127.0.0.1:{statsd_port}\"\n[otlp]\nenabled = false\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[buffer]\ndir = \"{}\"\n",
            dir.path().join("buffer").display()
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_pulse-sidecar");
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; these numbers mean nothing (use cargo bench)");
    }
    let mut child = start(binary, &config, dir.path(), admin_port).await;
    let pid = child.id();
    let mut rows = Vec::new();

    // Idle: up, listening, nothing sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = sample(pid);
    tokio::time::sleep(duration.min(Duration::from_secs(10))).await;
    let b = sample(pid);
    rows.push(Row {
        what: "idle".into(),
        cpu: vec![cpu_percent(a, b, hz)],
        rss_mib: b.rss_kb as f64 / 1024.0,
        hwm_mib: b.hwm_kb as f64 / 1024.0,
        note: String::new(),
    });

    let client = reqwest::Client::new();
    for run in 1..=runs {
        eprintln!("run {run} of {runs}");
        for rate in [10_000u64, 50_000] {
            let before = delivered.load(Ordering::Relaxed);
            eprintln!("HTTP at {rate} points/s for {duration:?}");
            let (a, ta) = (sample(pid), threads(pid));
            let sent = http_load(&client, http_port, rate, duration).await;
            let (b, tb) = (sample(pid), threads(pid));
            wait_delivered(&delivered, before + sent).await;
            record(
                &mut rows,
                Row {
                    what: format!("HTTP, {}k points/s", rate / 1000),
                    cpu: vec![cpu_percent(a, b, hz)],
                    rss_mib: b.rss_kb as f64 / 1024.0,
                    hwm_mib: b.hwm_kb as f64 / 1024.0,
                    // The gateway also counts StatsD points of earlier loads
                    // that arrive meanwhile, hence "at least".
                    note: format!(
                        "{sent} points in requests of {HTTP_BATCH}; {}{}",
                        if delivered.load(Ordering::Relaxed) - before >= sent {
                            "all delivered"
                        } else {
                            "NOT all delivered within 30 s"
                        },
                        thread_split(&ta, &tb)
                    ),
                },
            );
        }
        for rate in [10_000u64, 50_000] {
            eprintln!("StatsD at {rate} lines/s for {duration:?}");
            let packets_before =
                metric(&client, admin_port, "pulse_sidecar_statsd_packets_total").await;
            let (a, ta) = (sample(pid), threads(pid));
            let (lines, datagrams) = statsd_load(statsd_port, rate, duration).await;
            let (b, tb) = (sample(pid), threads(pid));
            tokio::time::sleep(Duration::from_millis(500)).await;
            let received = metric(&client, admin_port, "pulse_sidecar_statsd_packets_total").await
                - packets_before;
            record(
                &mut rows,
                Row {
                    what: format!("StatsD, {}k lines/s", rate / 1000),
                    cpu: vec![cpu_percent(a, b, hz)],
                    rss_mib: b.rss_kb as f64 / 1024.0,
                    hwm_mib: b.hwm_kb as f64 / 1024.0,
                    note: format!(
                        "{lines} lines in {datagrams} datagrams of {STATSD_LINES}; {received:.0} datagrams received{}",
                        thread_split(&ta, &tb)
                    ),
                },
            );
        }
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();

    let size = std::fs::metadata(binary).map(|m| m.len()).unwrap_or(0);
    let per_point = buffered_bytes_per_point();
    println!(
        "| load | CPU, % of one core: median (min–max of {runs} runs) | VmRSS after (MiB) | VmHWM so far (MiB) | notes (last run) |"
    );
    println!("|---|---|---|---|---|");
    for mut row in rows {
        row.cpu.sort_by(f64::total_cmp);
        let median = row.cpu[row.cpu.len() / 2];
        let (min, max) = (row.cpu[0], row.cpu[row.cpu.len() - 1]);
        println!(
            "| {} | {median:.2} ({min:.2}–{max:.2}) | {:.1} | {:.1} | {} |",
            row.what, row.rss_mib, row.hwm_mib, row.note
        );
    }
    println!(
        "\nbinary {:.1} MiB ({binary}); {} s per load; CLK_TCK {hz}; {per_point:.1} buffer bytes per point of the HTTP load (zstd, batches of 10 000)",
        size as f64 / (1 << 20) as f64,
        duration.as_secs()
    );
}

/// A deterministic pseudo-random number (SplitMix64).
fn noise(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Disk (and wire) bytes per point: a full batch of the HTTP load's points as
/// NDJSON in one zstd frame, as the buffer writes it.
fn buffered_bytes_per_point() -> f64 {
    use pulse_sidecar::config::Compression;
    use pulse_sidecar::encode::{Compressor, ndjson};
    let points: Vec<pulse_core::Point> = (0..10_000u64)
        .map(|i| {
            let (metric, host) = line(i);
            pulse_core::Point {
                metric,
                tags: [
                    ("host".to_string(), host),
                    ("env".to_string(), "prod".to_string()),
                ]
                .into(),
                // Measured-looking values (random, 4 decimals) and timestamps
                // spread over the batch's second, as real traffic has.
                value: (noise(i) % 10_000_000) as f64 / 10_000.0,
                timestamp_ms: 1_721_199_945_000 + (noise(i ^ 0xabcd) % 1000) as i64,
                kind: pulse_core::MetricKind::Gauge,
                sketch: None,
            }
        })
        .collect();
    let mut text = Vec::new();
    ndjson(&points, &mut text);
    let frame = Compressor::new(Compression::Zstd)
        .unwrap()
        .compress(&text)
        .unwrap();
    frame.len() as f64 / points.len() as f64
}

/// Adds a run's row, or its CPU to the row of the same load.
fn record(rows: &mut Vec<Row>, row: Row) {
    match rows.iter_mut().find(|r| r.what == row.what) {
        Some(existing) => {
            existing.cpu.extend(row.cpu);
            existing.rss_mib = row.rss_mib;
            existing.hwm_mib = row.hwm_mib;
            existing.note = row.note;
        }
        None => rows.push(row),
    }
}

async fn start(binary: &str, config: &Path, dir: &Path, admin_port: u16) -> Child {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("sidecar.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    for _ in 0..400 {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the sidecar did not start");
}

async fn metric(client: &reqwest::Client, admin_port: u16, name: &str) -> f64 {
    let text = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_delivered(delivered: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn line(i: u64) -> (String, String) {
    let host = i as usize % HOSTS;
    let name = (i as usize / HOSTS) % NAMES;
    (format!("app.metric_{name}"), format!("web-{host:03}"))
}

/// Sends `rate` points/s for `duration`, paced every [`TICK`]; returns the
/// points acknowledged.
async fn http_load(client: &reqwest::Client, port: u16, rate: u64, duration: Duration) -> u64 {
    let url = format!("http://127.0.0.1:{port}/v1/metrics");
    let per_tick = rate * TICK.as_millis() as u64 / 1000 / HTTP_BATCH as u64;
    let start = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    let mut i = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while start.elapsed() < duration {
        ticker.tick().await;
        for _ in 0..per_tick.max(1) {
            let body: String = (0..HTTP_BATCH as u64)
                .map(|k| {
                    let (name, host) = line(i + k);
                    let value = (noise(i + k) % 10_000_000) as f64 / 10_000.0;
                    format!("{{\"metric_name\":\"{name}\",\"value\":{value},\"tags\":{{\"host\":\"{host}\",\"env\":\"prod\"}}}}\n")
                })
                .collect();
            i += HTTP_BATCH as u64;
            let request = client.post(&url).body(body).send();
            tasks.spawn(async move {
                request
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::ACCEPTED)
            });
        }
    }
    let mut ok = 0;
    while let Some(done) = tasks.join_next().await {
        if done.unwrap_or(false) {
            ok += HTTP_BATCH as u64;
        }
    }
    ok
}

/// Sends `rate` StatsD lines/s (half counters, a quarter gauges, a quarter
/// timers, with tags) for `duration`; returns lines and datagrams sent.
async fn statsd_load(port: u16, rate: u64, duration: Duration) -> (u64, u64) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    let per_tick = rate * TICK.as_millis() as u64 / 1000 / STATSD_LINES as u64;
    let start = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    let (mut i, mut datagrams) = (0u64, 0u64);
    while start.elapsed() < duration {
        ticker.tick().await;
        for _ in 0..per_tick.max(1) {
            let mut datagram = String::with_capacity(STATSD_LINES * 60);
            for k in 0..STATSD_LINES as u64 {
                let n = i + k;
                let (name, host) = line(n);
                let kind = match n % 4 {
                    0 | 1 => format!("{name}.count:1|c"),
                    2 => format!("{name}.level:{}|g", n % 100),
                    _ => format!("{name}.latency:{}.5|ms", n % 250),
                };
                datagram += &format!("{kind}|#host:{host},env:prod\n");
            }
            i += STATSD_LINES as u64;
            if socket.send(datagram.as_bytes()).is_ok() {
                datagrams += 1;
            }
        }
    }
    (i, datagrams)
}
