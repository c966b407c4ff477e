//! `--only freshness`: how soon a point is in the partial answer of its open
//! window (`/dashboard?…&partial=true`) after its 202, on the embedded engines
//! (`pulse up`) and on Kafka (librdkafka's mock cluster) + PostgreSQL + Redis.
//!
//! Each round POSTs one point to a series of its own, with a lateness of 10
//! minutes so its window stays open, then polls the dashboard every 5 ms
//! until the point's series is counted; the time from the 202 to that answer
//! is the round's freshness. The reference is the same poll's own round trip
//! (a `/dashboard` answer from the cache): the floor of what can be observed.

use std::time::{Duration, Instant};

use pulse_core::config::Config;
use serde_json::{Value, json};

use crate::{Report, met};

/// The target: a point in the partial answer within 2 s of its 202 (p95).
const TARGET_SECONDS: f64 = 2.0;
/// How long one round may take before the run fails.
const ROUND_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(5);

/// The engines of one measurement.
struct Engines {
    name: &'static str,
    /// `[pipeline]`, `[bus]`, `[cache]` sections and `storage` keys.
    sections: String,
    database: Option<String>,
}

pub async fn stage(quick: bool, database: &str, report: &mut Report) -> Result<(), String> {
    let rounds = if quick { 20 } else { 200 };
    let embedded = Engines {
        name: "embedded engines (`pulse up`)",
        sections: String::new(),
        database: None,
    };
    measure(&embedded, rounds, report).await?;

    let redis =
        std::env::var("PULSE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let pipeline = format!("freshness-{}-{nanos}", std::process::id());
    let topic = format!("pulse.bench.{pipeline}.points");
    let cluster = crate::kafka::mock_cluster(&[&topic], 4)?;
    let production = Engines {
        name: "Kafka (mock cluster) + PostgreSQL + Redis",
        sections: format!(
            r#"
[pipeline]
namespace = "bench"
name = "{pipeline}"
[bus]
partitions = 4
kafka_brokers = "{}"
[cache]
redis_url = "{redis}"
ttl = "2m"
"#,
            cluster.bootstrap_servers()
        ),
        database: Some(database.to_string()),
    };
    let outcome = measure(&production, rounds, report).await;
    let schema = pulse_core::names::schema("bench", &pipeline);
    if let Ok(mut conn) = crate::store::connect(database).await {
        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        if let Err(e) = sqlx::query(&drop).execute(&mut conn).await {
            eprintln!("warning: cannot drop the bench schema {schema}: {e}");
        }
    }
    outcome
}

async fn measure(engines: &Engines, rounds: usize, report: &mut Report) -> Result<(), String> {
    eprintln!(
        "bench: freshness of the open window on {} ({rounds} points, one at a time)...",
        engines.name
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let database = engines
        .database
        .as_ref()
        .map(|url| format!("database_url = \"{url}\""))
        .unwrap_or_default();
    let config = Config::from_toml(&format!(
        r#"
{}
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = ["1m"]
allowed_lateness = "10m"
idle_timeout = "10m"
[storage]
data_dir = "{}"
{database}
"#,
        engines.sections,
        dir.path().display()
    ))
    .map_err(|e| e.to_string())?;
    let running = pulse::up::start(config)
        .await
        .map_err(|e| format!("pulse up on {}: {e}", engines.name))?;
    let gateway = format!("http://{}/v1/metrics", running.gateway);
    let client = reqwest::Client::new();
    let mut fresh = Vec::with_capacity(rounds);
    let mut polls = Vec::new();
    let metric = "freshness";
    for round in 0..rounds {
        let host = format!("h{round}");
        let body = json!([{
            "metric_name": metric,
            "value": round as f64,
            "timestamp": pulse_core::now_ms() as f64 / 1000.0,
            "tags": {"host": host},
        }]);
        let answer = client
            .post(&gateway)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST: {e}"))?;
        if answer.status() != 202 {
            return Err(format!("POST answered {}", answer.status()));
        }
        let accepted = Instant::now();
        let url = format!(
            "http://{}/dashboard?metric={metric}&window=1m&aggs=count&tags=host:{host}&partial=true",
            running.dashboard
        );
        loop {
            let asked = Instant::now();
            let got: Option<Value> = match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => r.json().await.ok(),
                _ => None,
            };
            polls.push(asked.elapsed().as_secs_f64());
            if got.is_some_and(|v| v["aggregations"]["count"] == 1 && v["partial"] == true) {
                fresh.push(accepted.elapsed().as_secs_f64());
                break;
            }
            if accepted.elapsed() > ROUND_DEADLINE {
                return Err(format!(
                    "round {round}: the point was not in the partial answer within {ROUND_DEADLINE:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    running.stop().await?;
    fresh.sort_by(f64::total_cmp);
    polls.sort_by(f64::total_cmp);
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let (p50, p95, max) = (at(&fresh, 0.5), at(&fresh, 0.95), at(&fresh, 1.0));
    report.notes.push(format!(
        "Freshness on {}: a point is in `/dashboard?…&partial=true` p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms after its 202 ({rounds} points, one at a time); reference, the poll's own round trip: p50 {:.1} ms, p95 {:.1} ms. Target p95 ≤ {TARGET_SECONDS} s: {}.",
        engines.name,
        p50 * 1000.0,
        p95 * 1000.0,
        max * 1000.0,
        at(&polls, 0.5) * 1000.0,
        at(&polls, 0.95) * 1000.0,
        met(p95 <= TARGET_SECONDS)
    ));
    Ok(())
}
