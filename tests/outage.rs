//! Outages of the store and the cache while points flow through Kafka.
//!
//! The processor and dashboard reach PostgreSQL and Redis through TCP proxies
//! that the test cuts (closing every connection and refusing new ones) and
//! restores. While PostgreSQL is cut the processor must hold its checkpoint,
//! say so in its logs and on `/readyz`, and lose nothing; while Redis is cut
//! the dashboard must answer from the store and say so. Both must recover
//! without a restart, and the final window results must equal what the test
//! computes from the input.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use pulse_core::codec::record::encode_point;
use pulse_core::config::Config;
use pulse_core::{Point, Tags};
use pulse_dashboard::Dashboard;
use pulse_engine::bus::kafka::{KafkaConsumer, KafkaProducer};
use pulse_engine::bus::{BusProducer, OutgoingRecord};
use pulse_engine::cache::Cache;
use pulse_engine::cache::redis::RedisCache;
use pulse_engine::store::postgres::PostgresStore;
use pulse_engine::store::{ResultQuery, Store};
use pulse_processor::Processor;
use pulse_server::{CancellationToken, serve};
use rdkafka::mocking::MockCluster;
use serde_json::Value;
use tokio::net::TcpListener;

use common::proxy::{Proxy, target_of, through};
use common::{test_database_url, test_redis_url};

const TOPIC: &str = "pulse.outage.points";
const HOSTS: [&str; 3] = ["a", "b", "c"];
const MINUTE: i64 = 60_000;

/// Everything the processor logs, as text, for checking what it told the operator.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Points of the three hosts, one per host every 100 ms of event time in
/// `[from, from + minutes)`, with whole values so every sum is exact.
fn points(from_ms: i64, minutes: i64) -> Vec<Point> {
    let mut out = Vec::new();
    let mut i = 0i64;
    let mut ts = from_ms;
    while ts < from_ms + minutes * MINUTE {
        for host in HOSTS {
            out.push(Point {
                metric: "outage_cpu".into(),
                tags: [("host".to_string(), host.to_string())].into(),
                value: ((i * 7) % 23) as f64,
                timestamp_ms: ts,
                kind: pulse_core::MetricKind::Gauge,
                sketch: None,
            });
            i += 1;
        }
        ts += 100;
    }
    out
}

async fn send(producer: &KafkaProducer, points: &[Point]) {
    for chunk in points.chunks(2_000) {
        let records = chunk
            .iter()
            .map(|p| OutgoingRecord {
                key: p.series_id().0,
                value: encode_point(p),
            })
            .collect();
        producer.send(records).await.unwrap();
    }
}

/// Offsets the store's checkpoints have committed, over all partitions.
async fn committed(store: &PostgresStore) -> u64 {
    let progress = store.progress(&[0, 1]).await.unwrap();
    progress.iter().map(|p| p.next_offset).sum()
}

async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_cache_outages_lose_nothing_and_recover_without_a_restart() {
    let (Some(pg_url), Some(redis_url)) = (test_database_url(), test_redis_url()) else {
        return;
    };
    let logs = Logs::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    )
    .unwrap();

    let pg_proxy = Proxy::start(target_of(&pg_url)).await;
    let redis_proxy = Proxy::start(target_of(&redis_url)).await;
    let schema = pulse_core::names::schema("outage", &format!("t{}", std::process::id()));
    // The test reads through its own connection, which no proxy cuts.
    let direct = PostgresStore::connect(&pg_url, &schema).await.unwrap();
    direct.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(
        PostgresStore::connect(&through(&pg_url, pg_proxy.addr), &schema)
            .await
            .unwrap(),
    );
    let cache: Arc<dyn Cache> = Arc::new(
        RedisCache::connect(
            &through(&redis_url, redis_proxy.addr),
            &schema,
            Duration::from_secs(3600),
        )
        .await
        .unwrap(),
    );

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer = KafkaProducer::new(&brokers, TOPIC).await.unwrap();
    let config = Config::from_toml(
        r#"
[processor]
windows = ["1m"]
allowed_lateness = "1s"
idle_timeout = "1h"
checkpoint_interval = "200ms"
"#,
    )
    .unwrap();
    let consumer = KafkaConsumer::with_overrides(
        &brokers,
        TOPIC,
        "outage",
        &[
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ],
    )
    .unwrap();
    let registry = || Arc::new(Mutex::new(Registry::default()));
    let processor = Processor::new(
        &config,
        Box::new(consumer),
        Arc::clone(&store),
        Arc::clone(&cache),
        registry(),
    )
    .unwrap();
    let dashboard = Dashboard::router(
        &config,
        Arc::new(direct_clone(&pg_url, &schema).await),
        cache,
        registry(),
    );
    let shutdown = CancellationToken::new();
    let processor_http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dashboard_http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let readyz = format!("http://{}/readyz", processor_http.local_addr().unwrap());
    let latest = format!(
        "http://{}/dashboard?metric=outage_cpu&window=1m",
        dashboard_http.local_addr().unwrap()
    );
    tokio::spawn(serve(
        processor_http,
        processor.router(),
        shutdown.clone(),
        config.http.clone(),
        None,
    ));
    tokio::spawn(serve(
        dashboard_http,
        dashboard,
        shutdown.clone(),
        config.http.clone(),
        None,
    ));
    let running = tokio::spawn(processor.run(shutdown.clone()));
    let client = reqwest::Client::new();

    // Event time alone closes windows here (the idle timeout is an hour): the
    // phases carry event times 40 minutes old and arrive seconds apart, so a
    // caught-up partition going idle between two phases would rightly count
    // the next phase late. (That a partition with unread records never counts
    // as idle is proven in processor/tests/backlog.rs.)
    let start = (pulse_core::now_ms() / MINUTE - 40) * MINUTE;
    let mut sent = Vec::new();
    let phase = |n: i64| points(start + n * 3 * MINUTE, 3);

    // 1. Everything up: the processor commits, the cache serves.
    sent.extend(phase(0));
    send(&producer, &phase(0)).await;
    eventually("the first phase committed", || async {
        committed(&direct).await == sent.len() as u64
    })
    .await;
    eventually("the dashboard served from the cache", || async {
        get(&client, &latest).await.1["source"] == "cache"
    })
    .await;

    // 2. PostgreSQL cut: the processor holds its checkpoint and says so.
    pg_proxy.cut();
    sent.extend(phase(1));
    send(&producer, &phase(1)).await;
    eventually("/readyz to report the store outage", || async {
        let (status, body) = get(&client, &readyz).await;
        status == 503 && body.to_string().contains("degraded")
    })
    .await;
    assert!(
        logs.text()
            .contains("Store refused a checkpoint; holding it and retrying."),
        "the outage is logged:\n{}",
        logs.text()
    );
    assert!(committed(&direct).await < sent.len() as u64);

    // 3. Redis cut as well: the dashboard answers from the store and says so.
    redis_proxy.cut();
    eventually("the dashboard to fall back to the store", || async {
        let (status, body) = get(&client, &latest).await;
        status == 200 && body["source"] == "store"
    })
    .await;

    // 4. PostgreSQL back: the held checkpoint lands, nothing restarted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg_proxy.restore();
    eventually("the held points committed", || async {
        committed(&direct).await == sent.len() as u64
    })
    .await;
    eventually("/readyz to recover", || async {
        get(&client, &readyz).await.0 == 200
    })
    .await;
    assert!(logs.text().contains("Store commits succeed again."));
    // The windows that landed could not reach the cut Redis: said once its
    // commands time out.
    eventually("the cache failure logged", || async {
        logs.text().contains("Cannot update the cache")
    })
    .await;

    // 5. Redis back: newly closed windows reach the cache again. A later
    // point on each partition closes every window of the last phase.
    redis_proxy.restore();
    sent.extend(phase(2));
    send(&producer, &phase(2)).await;
    let ticks = closing_ticks(start + 20 * MINUTE);
    send(&producer, &ticks).await;
    eventually("the last phase committed", || async {
        committed(&direct).await == (sent.len() + ticks.len()) as u64
    })
    .await;
    eventually("the dashboard to serve from the cache again", || async {
        let body = get(&client, &latest).await.1;
        body["source"] == "cache" && body["window_start_ms"] == start + 8 * MINUTE
    })
    .await;

    // Every window holds exactly its points, once.
    let mut expected: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
    for p in &sent {
        let e = expected
            .entry((p.tags["host"].clone(), p.timestamp_ms / MINUTE * MINUTE))
            .or_default();
        e.0 += 1;
        e.1 += p.value;
    }
    let results = direct
        .range(&ResultQuery {
            metric: "outage_cpu".into(),
            window: "1m".into(),
            tags: Tags::new(),
            from_ms: 0,
            to_ms: i64::MAX,
            limit: 10_000,
        })
        .await
        .unwrap();
    let got: BTreeMap<(String, i64), (u64, f64)> = results
        .iter()
        .map(|r| {
            (
                (r.tags["host"].clone(), r.start_ms),
                (r.agg.count, r.agg.sum),
            )
        })
        .collect();
    assert_eq!(got, expected);

    shutdown.cancel();
    running.await.unwrap().unwrap();
    sqlx_drop_schema(&pg_url, &schema).await;
}

/// One point of another metric at `ts_ms` on each of the two partitions, so
/// both partitions' watermarks pass every window before it.
fn closing_ticks(ts_ms: i64) -> Vec<Point> {
    let mut ticks: Vec<Point> = Vec::new();
    for i in 0.. {
        let tick = Point {
            metric: "outage_tick".into(),
            tags: [("host".to_string(), format!("tick-{i}"))].into(),
            value: 0.0,
            timestamp_ms: ts_ms,
            kind: pulse_core::MetricKind::Gauge,
            sketch: None,
        };
        let partition = tick.series_id().partition(2);
        if ticks
            .iter()
            .all(|t| t.series_id().partition(2) != partition)
        {
            ticks.push(tick);
        }
        if ticks.len() == 2 {
            break;
        }
    }
    ticks
}

/// A second direct store for the dashboard (the test keeps its own).
async fn direct_clone(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::connect(url, schema).await.unwrap()
}

async fn sqlx_drop_schema(url: &str, schema: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}
