//! End to end through `pulse up` (gateway → embedded bus → processor → store),
//! against the durable log alone: the same records appended straight to a fresh
//! `SqliteBus`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pulse_core::codec::record::encode_point;
use pulse_core::config::Config;
use pulse_core::{Point, now_ms};
use pulse_engine::bus::embedded::SqliteBus;
use pulse_engine::bus::{BusProducer, OutgoingRecord};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::data::{fleet, skewed};

/// Concurrent HTTP clients, and concurrent senders on the reference bus.
pub const CLIENTS: usize = 4;
/// How often the processor's counter is read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Longest pause honoured after a 429/503, so the number stays about throughput.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

pub struct E2eResult {
    pub points: usize,
    pub batch: usize,
    /// From the first POST until the processor's store commit covering every point landed.
    pub processed_rate: f64,
    /// From the first POST until the last 202.
    pub accepted_rate: f64,
    /// The same records through `SqliteBus::send` alone.
    pub bus_rate: f64,
    /// Requests answered 429/503 and sent again.
    pub retries: usize,
    /// CPU time of the whole process (clients included) over the wall time of
    /// the `pulse up` run, in cores.
    pub busy_cores: Option<f64>,
    /// Checkpoints the processor committed to the store, and their total time.
    pub commits: Option<u64>,
    pub commit_seconds: Option<f64>,
    /// Wall time of the `pulse up` run.
    pub seconds: f64,
}

/// A directory under the system temp dir, removed when dropped (also on errors).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<TempDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("pulse-bench-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// One batch of points in both forms the run sends: a request body (JSON
/// array) for the gateway and bus records for the reference.
pub(super) type Batch = (Vec<u8>, Vec<OutgoingRecord>);

/// The points of a run, a [`Batch`] per `batch` points. Points are made a
/// batch at a time, so the bench itself holds only the encoded forms while
/// `pulse up` runs.
pub(super) fn batches(points: usize, batch: usize, series: usize) -> Result<Vec<Batch>, String> {
    let fleet = fleet(series);
    // Spread over the last four minutes, in order.
    let start = now_ms() - 240_000;
    let point = |i: usize| {
        let s = &fleet[i % fleet.len()];
        Point {
            metric: s.metric.clone(),
            tags: s.tags.clone(),
            value: skewed(i as u64) * 10.0,
            timestamp_ms: start + (i as i64 * 180_000) / points as i64,
            kind: pulse_core::MetricKind::Gauge,
            sketch: None,
        }
    };
    let mut out = Vec::new();
    for from in (0..points).step_by(batch) {
        let chunk: Vec<Point> = (from..(from + batch).min(points)).map(point).collect();
        let array: Vec<Value> = chunk
            .iter()
            .map(|p| json!({"metric_name": p.metric, "value": p.value, "timestamp": p.timestamp_ms as f64 / 1000.0, "tags": p.tags}))
            .collect();
        let body =
            serde_json::to_vec(&array).map_err(|e| format!("encoding a request body: {e}"))?;
        let records = chunk
            .iter()
            .map(|p| OutgoingRecord {
                key: p.series_id().0,
                value: encode_point(p),
            })
            .collect();
        out.push((body, records));
    }
    Ok(out)
}

/// Runs the reference, then `pulse up`; `on_up_start` is called right before
/// `pulse up` starts (to reset the peak-memory mark).
pub async fn measure(
    points: usize,
    batch: usize,
    series: usize,
    on_up_start: impl FnOnce(),
) -> Result<E2eResult, String> {
    let (bodies, records): (Vec<_>, Vec<_>) = batches(points, batch, series)?.into_iter().unzip();
    let bus_rate = points as f64 / reference(records).await?.as_secs_f64();
    on_up_start();
    let up = through_up(bodies, points).await?;
    Ok(E2eResult {
        points,
        batch,
        processed_rate: points as f64 / up.processed.as_secs_f64(),
        accepted_rate: points as f64 / up.accepted.as_secs_f64(),
        bus_rate,
        retries: up.retries,
        busy_cores: up.busy_cores,
        commits: up.commits,
        commit_seconds: up.commit_seconds,
        seconds: up.processed.as_secs_f64(),
    })
}

/// Appends every batch to a fresh embedded bus from [`CLIENTS`] concurrent senders.
async fn reference(batches: Vec<Vec<OutgoingRecord>>) -> Result<Duration, String> {
    let dir = TempDir::new("bus")?;
    // As many partitions as `pulse up` gives its bus.
    let partitions = Config::default().bus.partitions;
    let bus = SqliteBus::open(&dir.path().join("bus.db"), partitions)
        .await
        .map_err(|e| format!("reference bus: {e}"))?;
    let queue = Arc::new(std::sync::Mutex::new(VecDeque::from(batches)));
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for _ in 0..CLIENTS {
        let (bus, queue) = (Arc::clone(&bus), Arc::clone(&queue));
        senders.spawn(async move {
            loop {
                let Some(batch) = queue
                    .lock()
                    .map_err(|_| "reference bus: queue poisoned".to_string())?
                    .pop_front()
                else {
                    return Ok::<(), String>(());
                };
                // With [`CLIENTS`] senders the bus queue (4096 sends deep) is never
                // full, so no copy is kept for a retry that cannot happen.
                bus.send(batch)
                    .await
                    .map_err(|e| format!("reference bus: send failed: {e}"))?;
            }
        });
    }
    while let Some(joined) = senders.join_next().await {
        joined.map_err(|e| format!("reference bus: a sender task failed: {e}"))??;
    }
    let elapsed = started.elapsed();
    drop(bus);
    Ok(elapsed)
}

struct UpTimes {
    accepted: Duration,
    processed: Duration,
    retries: usize,
    busy_cores: Option<f64>,
    commits: Option<u64>,
    commit_seconds: Option<f64>,
}

async fn through_up(bodies: Vec<Vec<u8>>, points: usize) -> Result<UpTimes, String> {
    let dir = TempDir::new("up")?;
    let mut config = Config::default();
    let local = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    (
        config.gateway.listen,
        config.dashboard.listen,
        config.processor.listen,
    ) = (local, local, local);
    config.storage.data_dir = dir.path().to_path_buf();
    let running = pulse::up::start(config)
        .await
        .map_err(|e| format!("pulse up did not start: {e}"))?;
    let outcome = drive(&running, bodies, points).await;
    // Stop even when the measurement failed, so the data dir can go.
    let stopped = running
        .stop()
        .await
        .map_err(|e| format!("pulse up did not stop cleanly: {e}"));
    let times = outcome?;
    stopped?;
    Ok(times)
}

async fn drive(
    running: &pulse::up::Running,
    bodies: Vec<Vec<u8>>,
    points: usize,
) -> Result<UpTimes, String> {
    let url = format!("http://{}/v1/metrics", running.gateway);
    let metrics_url = format!("http://{}/metrics", running.processor);
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let (accepted, retries) = post_bodies(&url, bodies).await?;
    let accepted_after = started.elapsed();
    if accepted != points {
        return Err(format!(
            "the gateway accepted {accepted} of {points} points"
        ));
    }
    let client = reqwest::Client::new();
    let deadline = Duration::from_secs(60).max(Duration::from_millis(points as u64));
    let text = loop {
        let text = get_text(&client, &metrics_url).await?;
        let processed = parse_counter(&text, "pulse_processor_points_total")
            .ok_or_else(|| format!("{metrics_url} has no pulse_processor_points_total"))?;
        if processed >= points as u64 {
            break text;
        }
        if started.elapsed() > deadline {
            return Err(format!(
                "the processor aggregated only {processed} of {points} points within {} s",
                deadline.as_secs()
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    // Aggregated is not stored: the checkpoint that follows covers every point,
    // so wait for one more commit to land in the store.
    let commits_seen = parse_counter(&text, "pulse_processor_commits_total").unwrap_or(0);
    let text = loop {
        let text = get_text(&client, &metrics_url).await?;
        if parse_counter(&text, "pulse_processor_commits_total").unwrap_or(0) > commits_seen {
            break text;
        }
        if started.elapsed() > deadline {
            return Err(format!(
                "no store commit landed within {} s",
                deadline.as_secs()
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    let processed = started.elapsed();
    let busy_cores = cpu_before
        .zip(cpu_seconds())
        .map(|(before, after)| (after - before) / processed.as_secs_f64());
    Ok(UpTimes {
        accepted: accepted_after,
        processed,
        retries,
        busy_cores,
        commits: parse_counter(&text, "pulse_processor_commit_duration_seconds_count"),
        commit_seconds: parse_value(&text, "pulse_processor_commit_duration_seconds_sum"),
    })
}

/// User + system CPU time of this process so far, from /proc (Linux).
pub(super) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 of the line, in USER_HZ (100 on Linux).
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// POSTs every body (a JSON array of points) to `url` from [`CLIENTS`]
/// concurrent clients, each taking the next body not yet sent; returns once
/// every body was answered, with (points accepted, 429/503 retries).
pub(super) async fn post_bodies(url: &str, bodies: Vec<Vec<u8>>) -> Result<(usize, usize), String> {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let (url, bodies, next) = (url.to_string(), Arc::clone(&bodies), Arc::clone(&next));
        clients.spawn(post_all(url, bodies, next));
    }
    let (mut accepted, mut retries) = (0, 0);
    while let Some(joined) = clients.join_next().await {
        let (a, r) = joined.map_err(|e| format!("an HTTP client task failed: {e}"))??;
        accepted += a;
        retries += r;
    }
    Ok((accepted, retries))
}

/// Posts bodies until none are left; returns (points accepted, retries).
async fn post_all(
    url: String,
    bodies: Arc<Vec<Vec<u8>>>,
    next: Arc<AtomicUsize>,
) -> Result<(usize, usize), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let (mut accepted, mut retries) = (0, 0);
    while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
        loop {
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| format!("POST {url} failed: {e}"))?;
            let status = response.status();
            if status.as_u16() == 429 || status.as_u16() == 503 {
                retries += 1;
                let after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map_or(MAX_BACKOFF, Duration::from_secs);
                tokio::time::sleep(after.min(MAX_BACKOFF)).await;
                continue;
            }
            let text = response
                .text()
                .await
                .map_err(|e| format!("reading the answer of POST {url}: {e}"))?;
            if status.as_u16() != 202 {
                return Err(format!("POST {url} answered {status}: {text}"));
            }
            let answer: Value = serde_json::from_str(&text)
                .map_err(|e| format!("POST {url} answered {text}: {e}"))?;
            accepted += answer["accepted"].as_u64().unwrap_or(0) as usize;
            break;
        }
    }
    Ok((accepted, retries))
}

async fn get_text(client: &reqwest::Client, url: &str) -> Result<String, String> {
    client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url} failed: {e}"))?
        .text()
        .await
        .map_err(|e| format!("reading {url}: {e}"))
}

/// The value of an unlabelled sample in Prometheus text format.
pub fn parse_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok()
    })
}

/// The value of an unlabelled counter in Prometheus text format.
pub fn parse_counter(text: &str, name: &str) -> Option<u64> {
    parse_value(text, name).map(|v| v as u64)
}
