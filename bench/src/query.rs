//! `pulse bench --only query`: the query API at dashboard scale, on the
//! embedded SQLite store and on PostgreSQL.
//!
//! - A day of results of 100 series of one metric (tags `host`, `region`,
//!   `env`; 1m, 5m and 15m windows of 60 values each, the 5m and 15m merged
//!   from the 1m as the processor's chains make them) is committed through
//!   `Store::commit`, then `pulse up` serves it.
//! - `query_range` grouped by host with `avg,p95` over the last 1 h, 6 h and
//!   24 h (default `max_points`), one request at a time over loopback HTTP:
//!   p50/p99 of the time to the whole answer. Reference, same run: the same
//!   rows (the window the answer says it read) fetched with a plain SQL query.
//! - `/dashboard` from the cache at a fixed 1,000 requests/s (open loop: each
//!   request's latency counts from when it was due, so a stall is not hidden).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_core::config::Config;
use pulse_core::{Aggregate, SeriesId, Tags, TimestampMs, WindowResult, now_ms};
use pulse_engine::store::postgres::{PostgresStore, claim_schema};
use pulse_engine::store::sqlite::SqliteStore;
use pulse_engine::store::{Commit, Store};
use serde_json::{Value, json};
use sqlx::{Connection, Row};
use tokio::task::JoinSet;

use super::data::skewed;
use super::e2e::TempDir;
use super::store::Schemas;
use super::{Report, thousands};

/// Series of the measured metric.
pub const SERIES: usize = 100;
const METRIC: &str = "cpu_usage";
const MIN: TimestampMs = 60_000;
const HOUR: TimestampMs = 60 * MIN;
/// The ranges asked, ending at the newest stored window.
const SPANS: [(&str, TimestampMs); 3] = [("1 h", HOUR), ("6 h", 6 * HOUR), ("24 h", 24 * HOUR)];
/// The target of issue 17: p50 of the 24 h query.
const TARGET_MS: f64 = 50.0;
/// The fixed rate of the `/dashboard` measurement.
const DASHBOARD_RATE: u64 = 1_000;

/// How many requests of each kind one run makes.
#[derive(Debug, Clone, Copy)]
pub struct QuerySizes {
    pub range_requests: usize,
    pub dashboard_seconds: u64,
    /// Minutes of stored history (a day unless `--quick`).
    pub minutes: i64,
}

/// The range measurement of one span on one engine.
struct SpanResult {
    span: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    bytes: usize,
    points: usize,
    source_window: String,
    step_ms: i64,
    rows: usize,
    sql_p50_ms: f64,
}

/// Runs the stage on SQLite and, when `database` answers, on PostgreSQL.
pub async fn stage(
    database: Option<&str>,
    sizes: QuerySizes,
    report: &mut Report,
) -> Result<(), String> {
    let end = now_ms() - now_ms().rem_euclid(15 * MIN) - 15 * MIN;
    eprintln!(
        "bench: query API ({SERIES} series, {} minutes of 1m/5m/15m windows)...",
        sizes.minutes
    );
    let results = history(end, sizes.minutes);
    let rows = results.len();
    let sqlite = on_sqlite(&results, end, sizes).await?;
    report_engine(report, "SQLite (embedded)", rows, &sqlite);
    match database {
        Some(url) => {
            let pg = on_postgres(url, &results, end, sizes).await?;
            report_engine(report, "PostgreSQL", rows, &pg);
        }
        None => report
            .notes
            .push("Query API on PostgreSQL skipped: no PostgreSQL answered.".into()),
    }
    Ok(())
}

/// The measurements of one engine: per span, then the dashboard line.
struct EngineResult {
    spans: Vec<SpanResult>,
    dashboard: String,
}

fn report_engine(report: &mut Report, engine: &str, rows: usize, r: &EngineResult) {
    for s in &r.spans {
        let met = if s.span == "24 h" {
            format!(
                "; target p50 ≤ {TARGET_MS:.0} ms: {}",
                super::met(s.p50_ms <= TARGET_MS)
            )
        } else {
            String::new()
        };
        report.notes.push(format!(
            "Query API on {engine}, `query_range` {} of {SERIES} series grouped by host, `avg,p95`, window 1m: \
             p50 {:.1} ms, p99 {:.1} ms to the whole answer ({} KB, {} points, read from `{}` at a step of {} s, \
             {} rows); the same rows by plain SQL: p50 {:.1} ms{met}.",
            s.span,
            s.p50_ms,
            s.p99_ms,
            thousands(s.bytes / 1000),
            thousands(s.points),
            s.source_window,
            s.step_ms / 1000,
            thousands(s.rows),
            s.sql_p50_ms,
        ));
    }
    report.notes.push(format!(
        "Query API on {engine} ({} stored rows): {}",
        thousands(rows),
        r.dashboard
    ));
}

/// `minutes` of 1m windows of [`SERIES`] series ending at `end`, plus their
/// 5m and 15m windows merged from them.
fn history(end: TimestampMs, minutes: i64) -> Vec<WindowResult> {
    let start = end - minutes * MIN;
    let mut out = Vec::new();
    for s in 0..SERIES {
        let host = format!("host-{s:03}");
        let tags: Tags = [
            ("env".to_string(), "prod".to_string()),
            ("host".to_string(), host),
            ("region".to_string(), format!("region-{}", s % 4)),
        ]
        .into();
        let id = SeriesId::of(METRIC, &tags);
        let result =
            |window: &str, start_ms: TimestampMs, size: TimestampMs, agg: Aggregate| WindowResult {
                series_id: id,
                metric: METRIC.into(),
                tags: tags.clone(),
                window: window.into(),
                start_ms,
                end_ms: start_ms + size,
                agg,
            };
        let (mut five, mut fifteen) = (Aggregate::new(), Aggregate::new());
        for m in 0..minutes {
            let at = start + m * MIN;
            let mut agg = Aggregate::new();
            for v in 0..60u64 {
                let n = (s as u64 * 1_000_003 + m as u64) * 60 + v;
                agg.add(skewed(n) * 10.0, at + v as i64 * 1_000);
            }
            five.merge(&agg);
            fifteen.merge(&agg);
            out.push(result("1m", at, MIN, agg));
            if (m + 1) % 5 == 0 {
                let done = std::mem::take(&mut five);
                out.push(result("5m", at + MIN - 5 * MIN, 5 * MIN, done));
            }
            if (m + 1) % 15 == 0 {
                let done = std::mem::take(&mut fifteen);
                out.push(result("15m", at + MIN - 15 * MIN, 15 * MIN, done));
            }
        }
    }
    out
}

async fn seed(store: &dyn Store, results: &[WindowResult]) -> Result<(), String> {
    store
        .migrate()
        .await
        .map_err(|e| format!("bench store: {e}"))?;
    for chunk in results.chunks(5_000) {
        let commit = Commit {
            results: chunk.to_vec(),
            ..Commit::default()
        };
        store
            .commit(&commit)
            .await
            .map_err(|e| format!("bench store: seeding: {e}"))?;
    }
    Ok(())
}

fn up_config(dir: &TempDir) -> Result<Config, String> {
    let mut config = Config::default();
    let local = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    (
        config.gateway.listen,
        config.dashboard.listen,
        config.processor.listen,
    ) = (local, local, local);
    config.storage.data_dir = dir.path().to_path_buf();
    Ok(config)
}

async fn on_sqlite(
    results: &[WindowResult],
    end: TimestampMs,
    sizes: QuerySizes,
) -> Result<EngineResult, String> {
    let dir = TempDir::new("query")?;
    let path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&path)
            .await
            .map_err(|e| format!("bench store {}: {e}", path.display()))?;
        seed(&store, results).await?;
    }
    let url = format!("sqlite://{}?mode=ro", path.display());
    let conn = sqlx::SqliteConnection::connect(&url)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    measure_up(up_config(&dir)?, end, sizes, Plain::Sqlite(conn)).await
}

async fn on_postgres(
    url: &str,
    results: &[WindowResult],
    end: TimestampMs,
    sizes: QuerySizes,
) -> Result<EngineResult, String> {
    let dir = TempDir::new("query-pg")?;
    let mut config = up_config(&dir)?;
    let nanos = now_ms();
    config.pipeline.namespace = "bench".into();
    config.pipeline.name = format!("query-{}-{nanos}", std::process::id());
    let schema = claim_schema(url, &config.pipeline.namespace, &config.pipeline.name)
        .await
        .map_err(|e| format!("bench schema: {e}"))?;
    let mut schemas = Schemas::new(url);
    schemas.adopt(schema.clone());
    let outcome = async {
        let store = PostgresStore::connect(url, &schema)
            .await
            .map_err(|e| format!("bench store {schema}: {e}"))?;
        seed(&store, results).await?;
        drop(store);
        config.storage.database_url = Some(url.to_string());
        let conn = super::store::connect(url).await?;
        measure_up(config, end, sizes, Plain::Postgres(conn, schema.clone())).await
    }
    .await;
    schemas.drop_all().await;
    outcome
}

/// The reference: the rows a range answer read, by a plain SQL query.
enum Plain {
    Sqlite(sqlx::SqliteConnection),
    /// A connection and the schema.
    Postgres(sqlx::PgConnection, String),
}

/// The columns of a stored window result.
const COLUMNS: &str = "series_id, window_start, count, sum, min, max, last, last_ts, sketch";

impl Plain {
    /// Fetches the rows of `window` starting in `[from, to)`; returns how many.
    async fn rows(
        &mut self,
        window: &str,
        from: TimestampMs,
        to: TimestampMs,
    ) -> Result<usize, String> {
        let lengths: Vec<usize> = match self {
            Plain::Sqlite(conn) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM window_results WHERE metric = ? AND window_label = ? \
                     AND window_start >= ? AND window_start < ?"
                );
                let rows = sqlx::query(&sql)
                    .bind(METRIC)
                    .bind(window)
                    .bind(from)
                    .bind(to)
                    .fetch_all(conn)
                    .await
                    .map_err(|e| format!("plain SQL on SQLite: {e}"))?;
                rows.iter().map(|r| r.get::<Vec<u8>, _>(8).len()).collect()
            }
            Plain::Postgres(conn, schema) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM \"{schema}\".window_results WHERE metric = $1 \
                     AND window_label = $2 AND window_start >= $3 AND window_start < $4"
                );
                let rows = sqlx::query(&sql)
                    .bind(METRIC)
                    .bind(window)
                    .bind(from)
                    .bind(to)
                    .fetch_all(conn)
                    .await
                    .map_err(|e| format!("plain SQL on PostgreSQL: {e}"))?;
                rows.iter().map(|r| r.get::<Vec<u8>, _>(8).len()).collect()
            }
        };
        std::hint::black_box(lengths.iter().sum::<usize>());
        Ok(lengths.len())
    }
}

/// Starts `pulse up` on `config`, measures, stops it.
async fn measure_up(
    config: Config,
    end: TimestampMs,
    sizes: QuerySizes,
    mut plain: Plain,
) -> Result<EngineResult, String> {
    let running = pulse::up::start(config)
        .await
        .map_err(|e| format!("pulse up did not start: {e}"))?;
    let client = reqwest::Client::new();
    let base = format!("http://{}", running.dashboard);
    let outcome: Result<EngineResult, String> = async {
        let mut spans = Vec::new();
        for (span, ms) in SPANS {
            let from = end - ms.min(sizes.minutes * MIN);
            let url = format!(
                "{base}/api/v1/query_range?metric={METRIC}&window=1m&group_by=host&aggs=avg,p95&max_points=240&from={}&to={}",
                from / 1000,
                end / 1000
            );
            let (mut times, answer) = (Vec::new(), get_json(&client, &url).await?);
            for _ in 0..sizes.range_requests {
                let started = Instant::now();
                let body = get_bytes(&client, &url).await?;
                times.push(started.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(body);
            }
            let source_window = answer["source_window"].as_str().unwrap_or("?").to_string();
            let mut sql_times = Vec::new();
            let mut rows = 0;
            for _ in 0..sizes.range_requests {
                let started = Instant::now();
                rows = plain.rows(&source_window, from, end).await?;
                sql_times.push(started.elapsed().as_secs_f64() * 1e3);
            }
            let series = answer["series"].as_array().cloned().unwrap_or_default();
            spans.push(SpanResult {
                span,
                p50_ms: percentile(&mut times, 0.5),
                p99_ms: percentile(&mut times, 0.99),
                bytes: serde_json::to_vec(&answer).map_or(0, |b| b.len()),
                points: series
                    .iter()
                    .map(|s| s["points"].as_array().map_or(0, Vec::len))
                    .sum(),
                source_window,
                step_ms: answer["step_ms"].as_i64().unwrap_or(0),
                rows,
                sql_p50_ms: percentile(&mut sql_times, 0.5),
            });
        }
        let dashboard = dashboard_rate(&client, &running, sizes.dashboard_seconds).await?;
        Ok(EngineResult { spans, dashboard })
    }
    .await;
    let stopped = running
        .stop()
        .await
        .map_err(|e| format!("pulse up did not stop cleanly: {e}"));
    let result = outcome?;
    stopped?;
    Ok(result)
}

/// Closes one window through the gateway (so the cache holds it), then asks
/// `/dashboard` at [`DASHBOARD_RATE`] for `seconds`.
async fn dashboard_rate(
    client: &reqwest::Client,
    running: &pulse::up::Running,
    seconds: u64,
) -> Result<String, String> {
    let at = now_ms() - 150_000;
    let points: Vec<Value> = (0..SERIES)
        .map(|s| {
            json!({"metric_name": METRIC, "value": s as f64, "timestamp": at as f64 / 1000.0,
                   "tags": {"env": "prod", "host": format!("host-{s:03}"), "region": format!("region-{}", s % 4)}})
        })
        .collect();
    let posted = client
        .post(format!("http://{}/v1/metrics", running.gateway))
        .json(&points)
        .send()
        .await
        .map_err(|e| format!("POST to the gateway: {e}"))?;
    if !posted.status().is_success() {
        return Err(format!("the gateway answered {}", posted.status()));
    }
    let url = format!(
        "http://{}/dashboard?metric={METRIC}&window=1m&aggs=avg,max,p95",
        running.dashboard
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let source = loop {
        let response = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let source = response
            .headers()
            .get("x-pulse-source")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if source == "cache" || Instant::now() > deadline {
            break source;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total = (seconds * DASHBOARD_RATE) as usize;
    let started = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    let url: Arc<str> = url.into();
    for i in 0..total {
        let due = started + Duration::from_micros(i as u64 * 1_000_000 / DASHBOARD_RATE);
        tokio::time::sleep_until(due).await;
        let (client, url) = (client.clone(), Arc::clone(&url));
        tasks.spawn(async move {
            let ok = client
                .get(&*url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            (ok, due.elapsed().as_secs_f64() * 1e3)
        });
    }
    let (mut times, mut failed) = (Vec::with_capacity(total), 0);
    while let Some(joined) = tasks.join_next().await {
        let (ok, ms) = joined.map_err(|e| format!("a /dashboard request failed: {e}"))?;
        failed += usize::from(!ok);
        times.push(ms);
    }
    Ok(format!(
        "`/dashboard` (window 1m, `avg,max,p95`, {SERIES} series, answered from the {source}) at a fixed {} \
         requests/s for {seconds} s: p50 {:.2} ms, p99 {:.2} ms from when each request was due, {failed} failed.",
        thousands(DASHBOARD_RATE as usize),
        percentile(&mut times, 0.5),
        percentile(&mut times, 0.99),
    ))
}

async fn get_bytes(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body.to_vec())
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let body = get_bytes(client, url).await?;
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
}

/// The `q` quantile of `values` (nearest rank).
fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}
