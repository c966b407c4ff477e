//! A processor working through a backlog must not take a partition whose
//! records are still unread for an idle one. If it did, the wall clock would
//! move that partition's watermark past the backlog's event times and the
//! waiting points would be counted late instead of aggregated.
//!
//! The embedded bus hands out one partition's records per poll when a partition
//! holds more than a poll's worth, and the idle timeout here is shorter than one
//! poll-and-checkpoint round, so every partition looks idle by the clock at
//! every checkpoint while the backlog lasts. Only the lag may say otherwise.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use pulse_core::codec::record::encode_point;
use pulse_core::config::Config;
use pulse_core::{Point, Tags};
use pulse_engine::bus::embedded::SqliteBus;
use pulse_engine::bus::{BusProducer, OutgoingRecord};
use pulse_engine::cache::memory::MemoryCache;
use pulse_engine::store::sqlite::SqliteStore;
use pulse_engine::store::{ResultQuery, Store};
use pulse_processor::Processor;
use pulse_server::CancellationToken;

const MINUTE: i64 = 60_000;
const HOSTS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_aggregated_not_counted_late_when_the_idle_timeout_is_short() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(&dir.path().join("bus.db"), 2)
        .await
        .unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);

    // Fifty minutes of points, an hour old: any idle advance makes them late.
    let start = (pulse_core::now_ms() / MINUTE - 120) * MINUTE;
    let mut points = Vec::new();
    for i in 0..30_000i64 {
        let host = HOSTS[(i % HOSTS.len() as i64) as usize];
        points.push(Point {
            metric: "backlog_cpu".into(),
            tags: Tags::from([("host".to_string(), host.to_string())]),
            value: (i % 17) as f64,
            timestamp_ms: start + i * 100,
            kind: pulse_core::MetricKind::Gauge,
            sketch: None,
        });
    }
    let records = points
        .iter()
        .map(|p| OutgoingRecord {
            key: p.series_id().0,
            value: encode_point(p),
        })
        .collect();
    bus.send(records).await.unwrap();

    let config = Config::from_toml(
        r#"
[processor]
windows = ["1m"]
allowed_lateness = "1s"
idle_timeout = "1ms"
checkpoint_interval = "10ms"
max_poll_records = 2000
"#,
    )
    .unwrap();
    let processor = Processor::new(
        &config,
        Box::new(bus.consumer()),
        Arc::clone(&store),
        Arc::new(MemoryCache::new()),
        Arc::new(Mutex::new(Registry::default())),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(processor.run(shutdown.clone()));

    let query = ResultQuery {
        metric: "backlog_cpu".into(),
        window: "1m".into(),
        tags: Tags::new(),
        from_ms: 0,
        to_ms: i64::MAX,
        limit: 10_000,
    };
    let mut expected: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
    for p in &points {
        let e = expected
            .entry((p.tags["host"].clone(), p.timestamp_ms / MINUTE * MINUTE))
            .or_default();
        e.0 += 1;
        e.1 += p.value;
    }
    // Once caught up the partitions are idle for real and every window closes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let got = loop {
        let results = store.range(&query).await.unwrap();
        if results.len() >= expected.len() || tokio::time::Instant::now() > deadline {
            break results;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let late: u64 = store
        .late_counts("backlog_cpu")
        .await
        .unwrap()
        .iter()
        .map(|l| l.count)
        .sum();
    assert_eq!(late, 0, "no point of the backlog is late");
    let got: BTreeMap<(String, i64), (u64, f64)> = got
        .iter()
        .map(|r| {
            (
                (r.tags["host"].clone(), r.start_ms),
                (r.agg.count, r.agg.sum),
            )
        })
        .collect();
    assert_eq!(got, expected, "every window holds exactly its points");
}
