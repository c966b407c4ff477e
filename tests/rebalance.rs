//! The scaling proof of the consumer: two processors in one consumer group
//! (librdkafka's mock Kafka cluster and the test PostgreSQL), scaled 1 → 2 → 1
//! while points flow. Each rebalance revokes partitions from a processor, which
//! must commit their windows and offsets before another one resumes them from
//! the store. The stored results must equal what the test computes from the
//! input exactly: nothing lost, nothing counted twice.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use pulse_core::config::Config;
use pulse_engine::bus::kafka::{KafkaConsumer, KafkaProducer};
use pulse_engine::cache::memory::MemoryCache;
use pulse_engine::store::Store;
use pulse_engine::store::postgres::PostgresStore;
use pulse_processor::{Processor, ProcessorError};
use pulse_server::{CancellationToken, serve};
use serde_json::Value;
use tokio::task::JoinHandle;

use common::*;

const PARTITIONS: i32 = 4;
const POINTS: usize = 90_000;
const BATCH: usize = 1_000;
/// Between two batches of a phase: a third of the points takes about 7.5 s.
const PACE: Duration = Duration::from_millis(250);
/// While a rebalance is awaited, a few points keep every partition busy, so
/// no partition idles and lets its watermark jump to the wall clock early.
const TRICKLE: usize = 48;
const TRICKLE_PACE: Duration = Duration::from_millis(200);
const LATENESS_MS: i64 = 30_000;
const GROUP_TIMEOUTS: [(&str, &str); 2] = [
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "500"),
];

/// A processor running in this test process, with its `/readyz` and `/metrics`.
struct Running {
    name: &'static str,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ProcessorError>>,
    ops: String,
    /// Every partition `/readyz` reported it owning.
    owned: BTreeSet<u32>,
}

async fn start(
    name: &'static str,
    config: &Config,
    brokers: &str,
    topic: &str,
    database: &str,
    schema: &str,
) -> Running {
    let group = config.consumer_group();
    let consumer = KafkaConsumer::with_overrides(brokers, topic, &group, &GROUP_TIMEOUTS).unwrap();
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(database, schema).await.unwrap());
    let processor = Processor::new(
        config,
        Box::new(consumer),
        store,
        Arc::new(MemoryCache::new()),
        Arc::new(Mutex::new(Registry::default())),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        processor.router(),
        shutdown.clone(),
        pulse_core::edge::HttpLimits::default(),
        None,
    ));
    let task = tokio::spawn(processor.run(shutdown.clone()));
    Running {
        name,
        shutdown,
        task,
        ops,
        owned: BTreeSet::new(),
    }
}

impl Running {
    /// The partitions the processor says it owns (`/readyz`), remembered.
    async fn partitions(&mut self, client: &reqwest::Client) -> BTreeSet<u32> {
        let body: Value = match client.get(format!("{}/readyz", self.ops)).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let detail = body["checks"]["processor"]["detail"]
            .as_str()
            .unwrap_or_default();
        let now: BTreeSet<u32> = detail
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(list, _)| {
                list.split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        self.owned.extend(&now);
        now
    }

    /// Points the processor aggregated (`pulse_processor_points_total`).
    async fn points(&self, client: &reqwest::Client) -> u64 {
        let text = client
            .get(format!("{}/metrics", self.ops))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("pulse_processor_points_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Stops it gracefully (it commits what it holds, then leaves the group).
    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the processor task")
            .expect("the processor stops cleanly");
    }
}

/// Polls both processors' `/readyz` until `done` holds for (first, second),
/// checking on the way that no partition is ever owned by both at once.
async fn until(
    what: &str,
    client: &reqwest::Client,
    first: &mut Running,
    mut second: Option<&mut Running>,
    done: impl Fn(&BTreeSet<u32>, &BTreeSet<u32>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = first.partitions(client).await;
        let b = match second.as_deref_mut() {
            Some(s) => s.partitions(client).await,
            None => BTreeSet::new(),
        };
        assert!(
            a.is_disjoint(&b),
            "partitions owned twice: {} {a:?}, other {b:?}",
            first.name
        );
        if done(&a, &b) {
            println!("{what}: {} owns {a:?}, other {b:?}", first.name);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} owns {a:?}, other {b:?}",
            first.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn committed(store: &PostgresStore) -> usize {
    match store.progress(&[0, 1, 2, 3]).await {
        Ok(c) => c.iter().map(|p| p.next_offset as usize).sum(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_two_one_hands_windows_over_without_loss_or_double_counting() {
    let Some(database) = test_database_url() else {
        return;
    };
    on_fresh_pipeline(&database, "rebalance", PARTITIONS, |p| {
        scale_and_check(p.brokers, database.clone(), p.name, p.topic, p.schema)
    })
    .await;
}

async fn scale_and_check(
    brokers: String,
    database: String,
    pipeline: String,
    topic: String,
    schema: String,
) {
    let began = Instant::now();
    let config = Config::from_toml(&format!(
        r#"
[pipeline]
namespace = "test"
name = "{pipeline}"
[processor]
windows = ["1m", "5m", {{ size = "10m", slide = "1m" }}]
allowed_lateness = "{LATENESS_MS}ms"
idle_timeout = "5s"
checkpoint_interval = "200ms"
"#
    ))
    .unwrap();
    let start_ms = (pulse_core::now_ms() - 2 * 3_600_000) / 600_000 * 600_000;
    let (points, late) = crash_stream(POINTS, start_ms, 0x0072_6562_616c);
    let exact = exact_results(
        &points,
        &late,
        PARTITIONS as u64,
        LATENESS_MS,
        &CHAIN_WINDOWS,
    );
    let store = PostgresStore::connect(&database, &schema).await.unwrap();
    store.migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let client = reqwest::Client::new();

    // The producer sends a third of the points per phase; between phases,
    // while the test waits for a rebalance, it only trickles.
    let producer = KafkaProducer::new(&brokers, &topic).await.unwrap();
    let phase = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let producing = {
        let (phase, sent, points) = (Arc::clone(&phase), Arc::clone(&sent), points.clone());
        tokio::spawn(async move {
            let mut i = 0;
            for third in 1..=3 {
                let end = third * POINTS / 3;
                while i < end {
                    let open = phase.load(Ordering::SeqCst) >= third;
                    let n = if open { BATCH } else { TRICKLE };
                    let chunk = &points[i..(i + n).min(end)];
                    send_points(&producer, chunk, BATCH).await;
                    i += chunk.len();
                    sent.store(i, Ordering::SeqCst);
                    tokio::time::sleep(if open { PACE } else { TRICKLE_PACE }).await;
                }
            }
        })
    };
    let sent_at_least = |n: usize| {
        let sent = Arc::clone(&sent);
        async move {
            while sent.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // 1: one processor takes every partition.
    let mut first = start("first", &config, &brokers, &topic, &database, &schema).await;
    until("one processor", &client, &mut first, None, |a, _| {
        a.len() == PARTITIONS as usize
    })
    .await;
    phase.store(1, Ordering::SeqCst);
    sent_at_least(POINTS / 3).await;

    // 1 → 2: the first one's partitions are revoked, committed and split.
    let mut second = start("second", &config, &brokers, &topic, &database, &schema).await;
    until(
        "two processors",
        &client,
        &mut first,
        Some(&mut second),
        |a, b| !a.is_empty() && !b.is_empty() && a.len() + b.len() == PARTITIONS as usize,
    )
    .await;
    phase.store(2, Ordering::SeqCst);
    sent_at_least(2 * POINTS / 3).await;

    // 2 → 1: the first one stops gracefully and leaves; the second takes all.
    let first_points = first.points(&client).await;
    let first_owned = first.owned.clone();
    first.stop().await;
    until("one processor again", &client, &mut second, None, |a, _| {
        a.len() == PARTITIONS as usize
    })
    .await;
    phase.store(3, Ordering::SeqCst);
    producing.await.unwrap();

    // Everything read, committed and every window closed (once idle).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = committed(&store).await;
        assert!(done <= POINTS, "offsets beyond the input: {done}");
        let open: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".open_windows"))
                .fetch_one(&pool)
                .await
                .unwrap();
        if done == POINTS && open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not finished within 90 s: {done} of {POINTS} committed, {open} windows open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second_points = second.points(&client).await;
    let second_owned = second.owned.clone();
    second.stop().await;

    assert!(!first_owned.is_empty() && !second_owned.is_empty());
    assert!(first_points > 0 && second_points > 0);
    // The hand-overs resumed exactly where the revoked processor committed:
    // no point was read twice, let alone counted twice.
    assert_eq!(
        first_points + second_points,
        POINTS as u64,
        "points read by the first and the second processor"
    );
    let checked = check_exact(&store, &exact, &CHAIN_WINDOWS).await;
    let raw: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".raw_points"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(raw, POINTS as i64, "every point is kept raw exactly once");
    println!(
        "first owned {first_owned:?} and read {first_points} points, second owned {second_owned:?} \
         and read {second_points}; {checked} windows exact; {:.1}s",
        began.elapsed().as_secs_f64()
    );
}
