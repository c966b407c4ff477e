//! The production engines through the real `pulse` binary: a role that cannot
//! reach its database says so and keeps retrying instead of crashing; roles run
//! alone refuse the embedded engines; and `pulse up --kafka --database --redis`
//! carries points end to end through librdkafka's mock Kafka cluster (in this
//! test process), the test PostgreSQL and the test Redis.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use common::*;

/// Partitions of the points topic (`bus.partitions`, and the mock's topic).
const PARTITIONS: i32 = 4;

fn mock_kafka(topic: &str) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("the mock Kafka cluster starts");
    cluster
        .create_topic(topic, PARTITIONS, 1)
        .expect("the mock creates the topic");
    cluster
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A pipeline name no other test (run) uses, so its schema, topic and Redis
/// keys start empty.
#[test]
fn a_processor_without_its_database_says_where_and_keeps_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "pulse.test.waiting.points";
    let kafka = mock_kafka(topic);
    let port = closed_port();
    let config = dir.path().join("pulse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
namespace = "test"
name = "waiting"
[processor]
listen = "127.0.0.1:0"
[bus]
kafka_brokers = "{}"
[storage]
data_dir = "{}"
database_url = "postgres://pulse:hunter2@127.0.0.1:{port}/pulse"
"#,
            kafka.bootstrap_servers(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();

    let mut pulse = PulseProcess::spawn(&["processor", "--config", config.to_str().unwrap()]);
    let warning = format!("Cannot reach PostgreSQL at 127.0.0.1:{port} (storage.database_url)");
    // The first attempt fails at once, the second one a second later.
    let warnings = pulse.wait_for_lines("two retry warnings", 2, Duration::from_secs(20), |l| {
        l.contains(&warning)
    });
    // The pauses double from 1 s, half of each random.
    let pause = |line: &str| -> f64 {
        let after = line.split("retrying in ").nth(1).expect(line);
        after.split('s').next().unwrap().parse().expect(line)
    };
    let (first, second) = (pause(&warnings[0]), pause(&warnings[1]));
    assert!((0.5..=1.0).contains(&first), "{}", warnings[0]);
    assert!((1.0..=2.0).contains(&second), "{}", warnings[1]);
    assert!(pulse.is_running(), "still waiting, not crashed");
    let output = pulse.output();
    assert!(
        !output.contains("hunter2"),
        "the password leaked:\n{output}"
    );
    assert!(
        !output.contains("is up"),
        "nothing claims to be up:\n{output}"
    );

    // SIGTERM while waiting is a clean stop.
    let status = pulse.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}:\n{}", pulse.output());
}

#[test]
fn roles_run_alone_refuse_the_embedded_engines() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pulse.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[processor]\nlisten = \"127.0.0.1:0\"\n\
             [dashboard]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    for (role, key) in [
        ("gateway", "bus.kafka_brokers"),
        ("processor", "bus.kafka_brokers"),
        ("dashboard", "storage.database_url"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args([role, "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "pulse {role} started:\n{stderr}");
        assert!(
            stderr.contains(key) && stderr.contains("pulse up"),
            "pulse {role}: {stderr}"
        );
    }
    assert!(
        !dir.path().join("data").exists(),
        "a refused role touched nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_on_kafka_postgresql_and_redis_aggregates_end_to_end() {
    let (Some(database), Some(redis)) = (test_database_url(), test_redis_url()) else {
        return;
    };
    on_fresh_pipeline(&database, "roles", PARTITIONS, |p| {
        run_up_on_production_engines(
            p.brokers,
            database.clone(),
            redis,
            p.name,
            p.topic,
            p.schema,
        )
    })
    .await;
}

async fn run_up_on_production_engines(
    brokers: String,
    database: String,
    redis: String,
    pipeline: String,
    topic: String,
    schema: String,
) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = dir.path().join("pulse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
namespace = "test"
name = "{pipeline}"
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = ["1m"]
allowed_lateness = "1s"
idle_timeout = "1s"
checkpoint_interval = "200ms"
[bus]
partitions = {PARTITIONS}
[storage]
data_dir = "{}"
[cache]
ttl = "10m"
"#,
            data_dir.display()
        ),
    )
    .unwrap();
    let mut pulse = PulseProcess::spawn(&[
        "up",
        "--config",
        config.to_str().unwrap(),
        "--kafka",
        &brokers,
        "--database",
        &database,
        "--redis",
        &redis,
    ]);
    let (gateway, dashboard) = tokio::task::block_in_place(|| {
        (
            pulse.banner_url("gateway", Duration::from_secs(90)),
            pulse.banner_url("dashboard", Duration::from_secs(5)),
        )
    });
    let banner = pulse.output();
    for part in [
        format!(
            "Kafka {brokers}, topic {topic} ({PARTITIONS} partitions), group pulse-test-{pipeline}"
        ),
        format!("schema {schema}"),
        format!("Redis 127.0.0.1:6379, prefix pulse:test:{pipeline}"),
    ] {
        let part = part.replace(
            "127.0.0.1:6379",
            &pulse::engines::url_endpoint(&redis, 6379),
        );
        assert!(
            banner.contains(&part),
            "`{part}` not in the banner:\n{banner}"
        );
    }
    assert!(
        !data_dir.exists(),
        "no embedded engine was opened:\n{banner}"
    );

    // 300 points of 3 hosts, one a second over five whole minutes that ended
    // a few minutes ago: five 1m windows, all closed once the partitions idle.
    let start = (pulse_core::now_ms() - 10 * 60_000) / 60_000 * 60_000;
    let points: Vec<TestPoint> = (0..300)
        .map(|i| TestPoint {
            metric: "cpu_usage",
            host: format!("web-{:02}", i % 3),
            value: 1.0 + (i % 17) as f64 * 0.5,
            ts_ms: start + i * 1_000,
            late: false,
        })
        .collect();
    let mut expected: BTreeMap<i64, (u64, f64)> = BTreeMap::new();
    for p in &points {
        let window = expected.entry(p.ts_ms / 60_000 * 60_000).or_default();
        window.0 += 1;
        window.1 += p.value;
    }
    assert_eq!(expected.len(), 5);
    let client = reqwest::Client::new();
    post(&client, &gateway, &points, 100).await;

    // Every window, from the store (PostgreSQL).
    let range = format!(
        "{dashboard}/api/v1/query_range?metric=cpu_usage&window=1m&from={}&to={}&aggs=count,sum",
        start / 1000 - 60,
        pulse_core::now_ms() / 1000 + 1
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let got: BTreeMap<i64, (u64, f64)> = loop {
        let (_, body) = get_json(&client, &range).await;
        let got: BTreeMap<i64, (u64, f64)> = body["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
            .map(|p| {
                let aggs = &p["aggregations"];
                (
                    p["window_start_ms"].as_i64().unwrap(),
                    (
                        aggs["count"].as_f64().unwrap() as u64,
                        aggs["sum"].as_f64().unwrap(),
                    ),
                )
            })
            .collect();
        if got.len() >= expected.len() || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(got, expected, "windows in the store:\n{}", pulse.output());

    // The newest window, from the cache (Redis). The processor writes the
    // cache right after the store, so the store may be a moment ahead.
    let (&newest, &(count, sum)) = expected.last_key_value().unwrap();
    let latest = format!("{dashboard}/dashboard?metric=cpu_usage&window=1m&aggs=count,sum");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = get_json(&client, &latest).await;
        let newest_cached = status == 200
            && body["window_start_ms"].as_i64() == Some(newest)
            && body["source"] == "cache";
        if newest_cached || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["window_start_ms"].as_i64(), Some(newest), "{body}");
    assert_eq!(body["aggregations"]["count"].as_f64(), Some(count as f64));
    assert_eq!(body["aggregations"]["sum"].as_f64(), Some(sum));
    assert_eq!(body["series"].as_u64(), Some(3), "{body}");
    assert_eq!(body["source"], "cache", "{body}");

    // Every point is kept raw, once, in the pipeline's own schema.
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let raw: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".raw_points"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(raw, 300);
    pool.close().await;

    let status = tokio::task::block_in_place(|| pulse.terminate(Duration::from_secs(30)));
    assert!(status.success(), "{status}:\n{}", pulse.output());
    assert!(
        pulse.output().contains("Pulse stopped cleanly."),
        "{}",
        pulse.output()
    );
}
