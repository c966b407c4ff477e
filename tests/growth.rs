//! Growing a topic's partitions does not split series (issue 11, item 5).
//!
//! A gateway keys a series to `id % partitions` with the count it read at
//! start, so while a grown topic rolls out, gateways that started before the
//! growth and gateways that started after write one series to two
//! partitions, and its windows get a part on each. The store merges window
//! results on write, so both parts end in the one stored window.
//!
//! librdkafka's mock cluster cannot add partitions to a topic (it has no
//! CreatePartitions), so the test starts from the rollout itself: a topic
//! with 8 partitions, written first by "old" writers that keep 4, then by
//! old and new ones together, then by new ones only, through `pulse up` on
//! that topic.

mod common;

use std::time::Duration;

use pulse_core::config::Config;
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::*;

const WINDOWS: [(&str, i64); 2] = [("1m", 60_000), ("5m", 300_000)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_written_to_two_partitions_while_they_grow_ends_whole() {
    let topic = "pulse.test.growth.points";
    let kafka = MockKafka::start(topic, 8);
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = ["1m", "5m"]
checkpoint_interval = "200ms"
idle_timeout = "1s"
[bus]
kafka_brokers = "{}"
topic = "{topic}"
[storage]
data_dir = "{}"
"#,
        kafka.bootstrap_servers(),
        dir.path().display()
    ))
    .unwrap();
    let running = pulse::up::start(config).await.unwrap();
    let dashboard = format!("http://{}", running.dashboard);

    // Ten minutes of 20 series, all in windows that ended 90 s ago or earlier.
    let end = (pulse_core::now_ms() - 90_000).div_euclid(300_000) * 300_000;
    let mut points = random_points(6_000, 20, end - 600_000, end, 5);
    points.sort_by_key(|p| p.ts_ms);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .create()
        .expect("a producer of the mock cluster");
    let n = points.len();
    let mut split = 0;
    for (i, p) in points.iter().enumerate() {
        let point = pulse_core::Point {
            metric: p.metric.to_string(),
            tags: p
                .json()
                .get("tags")
                .and_then(|t| serde_json::from_value(t.clone()).ok())
                .expect("tags"),
            value: p.value,
            timestamp_ms: p.ts_ms,
            kind: pulse_core::MetricKind::Gauge,
            sketch: None,
        };
        let id = point.series_id();
        // Old writers only, then old and new ones in turn, then new ones only.
        let partitions = match i * 3 / n {
            0 => 4,
            1 if i % 2 == 0 => 4,
            _ => 8,
        };
        split += usize::from(id.partition(4) != id.partition(8));
        let key = id.0.to_be_bytes();
        let value = pulse_core::codec::record::encode_point(&point);
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&key[..])
                    .payload(&value)
                    .partition(id.partition(partitions) as i32),
                Duration::from_secs(10),
            )
            .await
            .expect("the mock Kafka takes the record");
    }
    assert!(
        split > n / 4,
        "many points belong to series that move ({split} of {n})"
    );

    check_windows(
        &reqwest::Client::new(),
        &dashboard,
        &windows_of(&points, &WINDOWS),
        &WINDOWS,
        Duration::from_secs(90),
    )
    .await;
    running.stop().await.unwrap();
    drop(kafka);
}
