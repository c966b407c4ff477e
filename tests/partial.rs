//! `partial=true`: the window still open, live. Real engines, the embedded ones
//! (`pulse up`) and Kafka (librdkafka's mock cluster) + PostgreSQL + Redis.
//! Points of one window are sent while lateness keeps it open; every answer
//! with `partial=true` must show them, marked partial, the live stream must
//! send `partial` events, and nothing of it may reach the store. Then the
//! processor restarts with a short lateness, the window closes, and its
//! stored result counts every point exactly once.

mod common;

use std::time::{Duration, Instant};

use pulse_core::config::Config;
use serde_json::Value;

use common::*;

const POINTS: i64 = 12;
const DEADLINE: Duration = Duration::from_secs(60);

/// The production engines (none: the embedded ones).
#[derive(Clone, Default)]
struct Engines {
    /// `[pipeline]`, `[bus]` and `[cache]` sections.
    sections: String,
    /// `storage.database_url`, or empty.
    database: String,
}

/// The config: two chained windows; `timing` the processor's lateness and idleness.
fn config(dir: &std::path::Path, engines: &Engines, timing: &str) -> Config {
    let database = if engines.database.is_empty() {
        String::new()
    } else {
        format!("database_url = \"{}\"", engines.database)
    };
    Config::from_toml(&format!(
        r#"
{}
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = ["1m", "5m"]
allowed_lateness = "{timing}"
idle_timeout = "{timing}"
checkpoint_interval = "200ms"
[storage]
data_dir = "{}"
{database}
"#,
        engines.sections,
        dir.display()
    ))
    .unwrap()
}

/// Polls `url` until `done` holds for its JSON answer; the last answer either way.
async fn poll(client: &reqwest::Client, url: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = get_json(client, url).await;
        if done(status, &body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn points_of(answer: &Value) -> Vec<Value> {
    answer["series"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .collect()
}

async fn open_window_is_answered_live_and_never_stored(engines: Engines) {
    let dir = tempfile::tempdir().unwrap();
    let running = pulse::up::start(config(dir.path(), &engines, "10m"))
        .await
        .unwrap();
    let (gateway, dashboard) = (
        format!("http://{}", running.gateway),
        format!("http://{}", running.dashboard),
    );
    let client = reqwest::Client::new();
    let mut live = client
        .get(format!(
            "{dashboard}/api/v1/live?metric=cpu_usage&window=1m&partial=true"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    // Three minutes ago: inside the 10m lateness, so the window stays open.
    let start = (pulse_core::now_ms() - 180_000) / 60_000 * 60_000;
    let points: Vec<TestPoint> = (0..POINTS)
        .map(|i| TestPoint {
            metric: "cpu_usage",
            host: format!("web-{:02}", i % 2),
            value: (i + 1) as f64,
            ts_ms: start + i * 1_000,
            late: false,
        })
        .collect();
    let sum = (POINTS * (POINTS + 1) / 2) as f64;
    post(&client, &gateway, &points, 4).await;

    let latest =
        format!("{dashboard}/dashboard?metric=cpu_usage&window=1m&aggs=count,sum,max&partial=true");
    let body = poll(&client, &latest, |status, b| {
        status == 200 && b["aggregations"]["count"] == POINTS
    })
    .await;
    assert_eq!(body["partial"], true, "{body}");
    assert_eq!(body["window_start_ms"], start, "{body}");
    assert_eq!(body["aggregations"]["sum"], sum, "{body}");
    assert_eq!(body["aggregations"]["max"], POINTS as f64, "{body}");
    assert_eq!(body["series"], 2, "{body}");

    // The 5m window holds the open 1m window's points too.
    let five = format!("{dashboard}/dashboard?metric=cpu_usage&window=5m&aggs=count&partial=true");
    let body = poll(&client, &five, |status, b| {
        status == 200 && b["aggregations"]["count"] == POINTS
    })
    .await;
    assert_eq!(
        (
            body["partial"].clone(),
            body["aggregations"]["count"].clone()
        ),
        (Value::from(true), Value::from(POINTS)),
        "{body}"
    );

    let range = format!(
        "{dashboard}/api/v1/query_range?metric=cpu_usage&window=1m&group_by=host&aggs=count,sum"
    );
    let body = poll(&client, &format!("{range}&partial=true"), |_, b| {
        points_of(b).len() == 2
    })
    .await;
    for point in points_of(&body) {
        assert_eq!(point["partial"], true, "{body}");
        assert_eq!(point["window_start_ms"], start, "{body}");
        assert_eq!(point["aggregations"]["count"], POINTS / 2, "{body}");
    }

    // Never stored: without partial=true nothing exists.
    let (status, body) = get_json(&client, &latest.replace("&partial=true", "")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "no_data", "{body}");
    let (_, body) = get_json(&client, &range).await;
    assert!(points_of(&body).is_empty(), "{body}");

    // The live stream sent the open window as `partial` events.
    let deadline = Instant::now() + DEADLINE;
    let mut text = String::new();
    while !text.contains("event: partial") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), live.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let event = text
        .split("\n\n")
        .find(|e| e.contains("event: partial"))
        .unwrap_or_else(|| panic!("no partial event in:\n{text}"));
    let data: Value = serde_json::from_str(
        event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("a data line"),
    )
    .unwrap();
    assert_eq!(data["window_start_ms"], start, "{data}");
    assert_eq!(data["metric_name"], "cpu_usage", "{data}");
    drop(live);

    // Exactly-once accounting is untouched by the partials published.
    let metrics = client
        .get(format!("http://{}/metrics", running.processor))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("pulse_processor_points_total {POINTS}\n")),
        "{metrics}"
    );
    assert!(
        !metrics.contains("pulse_processor_partials_total 0\n"),
        "{metrics}"
    );
    running.stop().await.unwrap();

    // Restarted with a short lateness: the window closes, with every point once.
    let running = pulse::up::start(config(dir.path(), &engines, "1s"))
        .await
        .unwrap();
    // The restarted dashboard listens on a new port.
    let (range, dashboard) = (
        range.replace(&dashboard, &format!("http://{}", running.dashboard)),
        format!("http://{}", running.dashboard),
    );
    let body = poll(&client, &range, |_, b| points_of(b).len() == 2).await;
    let points = points_of(&body);
    assert_eq!(points.len(), 2, "{body}");
    let counted: i64 = points
        .iter()
        .map(|p| p["aggregations"]["count"].as_i64().unwrap())
        .sum();
    let summed: f64 = points
        .iter()
        .map(|p| p["aggregations"]["sum"].as_f64().unwrap())
        .sum();
    assert_eq!((counted, summed), (POINTS, sum), "{body}");
    // Closed now: a partial answer is the closed window, not marked partial.
    let latest =
        format!("{dashboard}/dashboard?metric=cpu_usage&window=1m&aggs=count&partial=true");
    let body = poll(&client, &latest, |status, b| {
        status == 200 && b.get("partial").is_none()
    })
    .await;
    assert!(body.get("partial").is_none(), "{body}");
    assert_eq!(body["aggregations"]["count"], POINTS, "{body}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_engines_answer_the_open_window() {
    open_window_is_answered_live_and_never_stored(Engines::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_postgresql_and_redis_answer_the_open_window() {
    let (Some(database), Some(redis)) = (test_database_url(), test_redis_url()) else {
        return;
    };
    on_fresh_pipeline(&database, "partial", 2, |p| {
        let engines = Engines {
            sections: format!(
                r#"
[pipeline]
namespace = "test"
name = "{}"
[bus]
partitions = 2
kafka_brokers = "{}"
[cache]
redis_url = "{redis}"
ttl = "10m"
"#,
                p.name, p.brokers
            ),
            database: database.clone(),
        };
        open_window_is_answered_live_and_never_stored(engines)
    })
    .await;
}
