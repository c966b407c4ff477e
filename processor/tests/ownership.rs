//! A processor writes and reports only for the partitions it owns.
//!
//! - A processor that lost its partitions while its store was down (in Kafka:
//!   stalled past the group's poll interval, and the group gave them to
//!   another member) must not write its held checkpoint once the store is
//!   back: the store fences it, and the results stay exact.
//! - A processor that gives partitions up stops exporting their lag.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use pulse_core::anomaly::Anomaly;
use pulse_core::codec::record::encode_point;
use pulse_core::config::Config;
use pulse_core::{Point, Tags, TimestampMs, WindowResult};
use pulse_engine::bus::embedded::{SqliteBus, SqliteConsumer};
use pulse_engine::bus::{BusConsumer, BusError, BusProducer, ConsumerEvent, OutgoingRecord};
use pulse_engine::cache::memory::MemoryCache;
use pulse_engine::store::sqlite::SqliteStore;
use pulse_engine::store::{AnomalyQuery, Delivery, DeliveryOutcome, DetectorState};
use pulse_engine::store::{
    Checkpoint, Commit, DeadLetter, LateCount, MetricInfo, PartitionCheckpoint, ResultQuery,
    RetentionReport, Store, StoreError,
};
use pulse_processor::Processor;
use pulse_server::CancellationToken;

const MINUTE: i64 = 60_000;
const METRIC: &str = "owned_cpu";

/// What a gated store's commits came to once the gate was open.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Written,
    Fenced(Vec<u32>),
    Failed(String),
}

/// A store whose commits fail as if it were down while `down` is set, and
/// which records what its commits came to once it is up.
struct Gated {
    inner: Arc<dyn Store>,
    down: AtomicBool,
    /// Raw points of the largest commit refused while down.
    held_points: Mutex<usize>,
    outcomes: Mutex<Vec<Outcome>>,
}

#[async_trait]
impl Store for Gated {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn load_checkpoint(&self, partitions: &[u32]) -> Result<Checkpoint, StoreError> {
        self.inner.load_checkpoint(partitions).await
    }
    async fn progress(&self, partitions: &[u32]) -> Result<Vec<PartitionCheckpoint>, StoreError> {
        self.inner.progress(partitions).await
    }
    async fn commit(&self, commit: &Commit) -> Result<Vec<WindowResult>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            let mut held = self.held_points.lock().unwrap();
            *held = (*held).max(commit.raw_points.len());
            return Err(StoreError::Unavailable(
                "the test holds the store down".into(),
            ));
        }
        let outcome = self.inner.commit(commit).await;
        self.outcomes.lock().unwrap().push(match &outcome {
            Ok(_) => Outcome::Written,
            Err(StoreError::Fenced { partitions }) => Outcome::Fenced(partitions.clone()),
            Err(e) => Outcome::Failed(e.to_string()),
        });
        outcome
    }
    async fn latest(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError> {
        self.inner.latest(query).await
    }
    async fn range(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError> {
        self.inner.range(query).await
    }
    async fn raw_points(
        &self,
        metric: &str,
        tags: &Tags,
        from_ms: TimestampMs,
        to_ms: TimestampMs,
    ) -> Result<Vec<Point>, StoreError> {
        self.inner.raw_points(metric, tags, from_ms, to_ms).await
    }
    async fn metrics(&self) -> Result<Vec<MetricInfo>, StoreError> {
        self.inner.metrics().await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(limit).await
    }
    async fn late_counts(&self, metric: &str) -> Result<Vec<LateCount>, StoreError> {
        self.inner.late_counts(metric).await
    }
    async fn enforce_retention(
        &self,
        raw_before_ms: TimestampMs,
        results_before_ms: TimestampMs,
    ) -> Result<RetentionReport, StoreError> {
        self.inner
            .enforce_retention(raw_before_ms, results_before_ms)
            .await
    }
    async fn load_detectors(&self, partitions: &[u32]) -> Result<Vec<DetectorState>, StoreError> {
        self.inner.load_detectors(partitions).await
    }
    async fn anomalies(&self, query: &AnomalyQuery) -> Result<Vec<Anomaly>, StoreError> {
        self.inner.anomalies(query).await
    }
    async fn pending_deliveries(
        &self,
        partitions: &[u32],
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.inner.pending_deliveries(partitions, limit).await
    }
    async fn mark_delivery(&self, seq: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
        self.inner.mark_delivery(seq, outcome).await
    }
    async fn ready(&self) -> Result<String, StoreError> {
        self.inner.ready().await
    }
}

/// Points of six hosts over five minutes, two hours old, so every window
/// closes as soon as the partitions are idle.
fn points(n: i64) -> Vec<Point> {
    let start = (pulse_core::now_ms() / MINUTE - 120) * MINUTE;
    (0..n)
        .map(|i| Point {
            metric: METRIC.into(),
            tags: Tags::from([("host".to_string(), format!("h{}", i % 6))]),
            value: (i % 23) as f64,
            timestamp_ms: start + i * (5 * MINUTE / n),
            kind: pulse_core::MetricKind::Gauge,
            sketch: None,
        })
        .collect()
}

async fn send(bus: &SqliteBus, points: &[Point]) {
    let records = points
        .iter()
        .map(|p| OutgoingRecord {
            key: p.series_id().0,
            value: encode_point(p),
        })
        .collect();
    bus.send(records).await.unwrap();
}

fn config() -> Config {
    Config::from_toml(
        r#"
[processor]
windows = ["1m"]
allowed_lateness = "1s"
idle_timeout = "50ms"
checkpoint_interval = "20ms"
max_poll_records = 500
"#,
    )
    .unwrap()
}

fn processor(
    consumer: Box<dyn BusConsumer>,
    store: Arc<dyn Store>,
) -> (Processor, Arc<Mutex<Registry>>) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let processor = Processor::new(
        &config(),
        consumer,
        store,
        Arc::new(MemoryCache::new()),
        Arc::clone(&registry),
    )
    .unwrap();
    (processor, registry)
}

fn render(registry: &Mutex<Registry>) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry.lock().unwrap()).unwrap();
    text
}

/// Polls `check` every 20 ms until it holds or `limit` passes; returns
/// whether it held.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Count and sum per (host, window start).
fn windows_of(points: &[Point]) -> BTreeMap<(String, i64), (u64, f64)> {
    let mut expected: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
    for p in points {
        let e = expected
            .entry((p.tags["host"].clone(), p.timestamp_ms / MINUTE * MINUTE))
            .or_default();
        e.0 += 1;
        e.1 += p.value;
    }
    expected
}

fn all_windows() -> ResultQuery {
    ResultQuery {
        metric: METRIC.into(),
        window: "1m".into(),
        tags: Tags::new(),
        from_ms: 0,
        to_ms: i64::MAX,
        limit: 10_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_processors_commit_after_reassignment_is_refused_and_results_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(&dir.path().join("bus.db"), 2)
        .await
        .unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("store.db"))
        .await
        .unwrap();
    sqlite.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let input = points(3_000);
    send(&bus, &input).await;

    // The stale one: takes the partitions, reads, and cannot commit.
    let gated = Arc::new(Gated {
        inner: Arc::clone(&store),
        down: AtomicBool::new(true),
        held_points: Mutex::new(0),
        outcomes: Mutex::new(Vec::new()),
    });
    let (stale, stale_metrics) = processor(Box::new(bus.consumer()), gated.clone());
    let stop_stale = CancellationToken::new();
    let stale = tokio::spawn(stale.run(stop_stale.clone()));
    assert!(
        eventually(Duration::from_secs(30), async || *gated
            .held_points
            .lock()
            .unwrap()
            > 0)
        .await,
        "the stale processor holds a checkpoint with points"
    );

    // The new owner takes the partitions over and processes everything.
    let (owner, _) = processor(Box::new(bus.consumer()), Arc::clone(&store));
    let stop_owner = CancellationToken::new();
    let owner = tokio::spawn(owner.run(stop_owner.clone()));
    let expected = windows_of(&input);
    assert!(
        eventually(Duration::from_secs(60), async || {
            store.range(&all_windows()).await.unwrap().len() >= expected.len()
        })
        .await,
        "the new owner closes every window"
    );

    // The store comes back for the stale processor.
    gated.down.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(30), async || {
            !gated.outcomes.lock().unwrap().is_empty()
        })
        .await,
        "the stale processor tries its held checkpoint again"
    );
    stop_owner.cancel();
    owner.await.unwrap().unwrap();
    stop_stale.cancel();
    stale.await.unwrap().unwrap();

    let outcomes = gated.outcomes.lock().unwrap().clone();
    assert_eq!(
        outcomes.first(),
        Some(&Outcome::Fenced(vec![0, 1])),
        "the held checkpoint is refused: {outcomes:?}"
    );
    assert!(
        !outcomes.contains(&Outcome::Written),
        "the stale processor writes nothing afterwards: {outcomes:?}"
    );
    assert!(
        render(&stale_metrics).contains("pulse_processor_fenced_commits_total 1\n"),
        "the refusal is counted"
    );
    let raw = store
        .raw_points(METRIC, &Tags::new(), 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(raw.len(), input.len(), "every raw point stored once");
    let got: BTreeMap<(String, i64), (u64, f64)> = store
        .range(&all_windows())
        .await
        .unwrap()
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

/// The embedded consumer with rebalance events the test injects; records of
/// a partition revoked this way are no longer handed out.
struct Scripted {
    inner: SqliteConsumer,
    injected: Arc<Mutex<VecDeque<ConsumerEvent>>>,
    revoked: Vec<u32>,
}

#[async_trait]
impl BusConsumer for Scripted {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<ConsumerEvent, BusError> {
        if let Some(event) = self.injected.lock().unwrap().pop_front() {
            if let ConsumerEvent::Revoked(partitions) = &event {
                self.revoked.extend(partitions);
            }
            return Ok(event);
        }
        Ok(match self.inner.next(max, wait).await? {
            ConsumerEvent::Records(mut records) => {
                records.retain(|r| !self.revoked.contains(&r.partition));
                ConsumerEvent::Records(records)
            }
            other => other,
        })
    }
    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        self.inner.seek(partition, offset).await
    }
    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), BusError> {
        self.inner.commit(offsets).await
    }
    async fn pause(&mut self, paused: bool) -> Result<(), BusError> {
        self.inner.pause(paused).await
    }
    async fn end_offsets(&self) -> Result<Vec<(u32, u64)>, BusError> {
        let revoked = self.revoked.clone();
        let mut ends = self.inner.end_offsets().await?;
        ends.retain(|(p, _)| !revoked.contains(p));
        Ok(ends)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_given_up_stops_exporting_its_lag() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(&dir.path().join("bus.db"), 2)
        .await
        .unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("store.db"))
        .await
        .unwrap();
    sqlite.migrate().await.unwrap();
    send(&bus, &points(600)).await;

    let injected = Arc::new(Mutex::new(VecDeque::new()));
    let consumer = Scripted {
        inner: bus.consumer(),
        injected: Arc::clone(&injected),
        revoked: Vec::new(),
    };
    let (processor, registry) = processor(Box::new(consumer), Arc::new(sqlite));
    let stop = CancellationToken::new();
    let running = tokio::spawn(processor.run(stop.clone()));
    let lag_of =
        |partition: u32| format!("pulse_processor_bus_lag_records{{partition=\"{partition}\"}}");
    assert!(
        eventually(Duration::from_secs(30), async || {
            let text = render(&registry);
            text.contains(&lag_of(0)) && text.contains(&lag_of(1))
        })
        .await,
        "both partitions' lag is exported"
    );

    injected
        .lock()
        .unwrap()
        .push_back(ConsumerEvent::Revoked(vec![1]));
    let gone = eventually(Duration::from_secs(10), async || {
        !render(&registry).contains(&lag_of(1))
    })
    .await;
    let text = render(&registry);
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(gone, "the revoked partition's lag is gone:\n{text}");
    assert!(text.contains(&lag_of(0)), "the owned one's stays:\n{text}");
    assert!(
        !text.contains("pulse_processor_watermark_seconds{partition=\"1\"}"),
        "and so does its watermark:\n{text}"
    );
}
