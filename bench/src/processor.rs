//! The processor on the production engines: `pulse_processor::Processor` reading
//! a pre-filled topic of librdkafka's mock cluster through `KafkaConsumer` and
//! committing exactly once (results, raw points, open windows and offsets in
//! one transaction per checkpoint) to PostgreSQL; against a bare
//! `KafkaConsumer` reading and decoding the same topic (the bus's own ceiling).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use pulse_core::codec::record::{decode_point, encode_point};
use pulse_core::config::Config;
use pulse_engine::bus::kafka::KafkaConsumer;
use pulse_engine::bus::{BusConsumer, BusError, ConsumerEvent, OutgoingRecord};
use pulse_engine::cache::memory::MemoryCache;
use pulse_engine::store::Store;
use pulse_server::CancellationToken;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::Notify;

use super::data::{fleet, stream_point};
use super::e2e::{parse_counter, parse_value};
use super::kafka::{mock_cluster, produce_raw};
use super::store::Schemas;
use super::{Report, Row, met, thousands};

/// Partitions of the topic. The mock cluster keeps only 5 MiB per partition
/// (about 55,000 of these records, lz4 or not), so 1,000,000 records need
/// about 20; 32 leave room for the uneven spread of 1,000 series.
pub const PARTITIONS: u32 = 32;
/// Records produced per call of the raw producer while pre-filling, so the
/// bench never holds the whole topic in memory.
const FILL_CHUNK: usize = 100_000;

pub struct ProcessorBenchResult {
    pub points: usize,
    pub series: usize,
    /// From the assignment until the store holds offsets covering every record.
    pub processor_rate: f64,
    /// From the assignment until every record was read and decoded.
    pub consumer_rate: f64,
    pub seconds: f64,
    /// The processor's store commits during the run and their total time.
    pub commits: Option<u64>,
    pub commit_seconds: Option<f64>,
    /// From creating the processor's consumer until its partitions were assigned.
    pub join_seconds: f64,
    pub mode: &'static str,
}

/// What the wrapped consumer saw: when the group assigned partitions, and the
/// offsets the processor reported after each store commit.
#[derive(Default)]
struct Progress {
    assigned_at: Mutex<Option<Instant>>,
    /// Sum of the next offsets of the last commit (= records covered, as every
    /// partition started at 0).
    committed: AtomicU64,
    changed: Notify,
}

/// The processor's `KafkaConsumer`, watched: the processor calls `commit` only
/// after the store commit carrying those offsets landed, so that is when
/// records count as processed.
struct Watched {
    inner: KafkaConsumer,
    progress: Arc<Progress>,
}

#[async_trait]
impl BusConsumer for Watched {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<ConsumerEvent, BusError> {
        let event = self.inner.next(max, wait).await;
        if let Ok(ConsumerEvent::Assigned(_)) = &event {
            let mut at = pulse_core::sync::lock(&self.progress.assigned_at);
            at.get_or_insert_with(Instant::now);
        }
        event
    }

    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        self.inner.seek(partition, offset).await
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), BusError> {
        let covered = offsets.iter().map(|&(_, next)| next).sum();
        self.progress.committed.store(covered, Ordering::SeqCst);
        self.progress.changed.notify_one();
        self.inner.commit(offsets).await
    }

    async fn pause(&mut self, paused: bool) -> Result<(), BusError> {
        self.inner.pause(paused).await
    }

    async fn end_offsets(&self) -> Result<Vec<(u32, u64)>, BusError> {
        self.inner.end_offsets().await
    }
}

/// Pre-fills a topic with `points` records of `series` series (the window
/// measurement's stream: one point per series and second of event time, with
/// out-of-order and late points, ending two minutes ago), then runs the bare
/// consumer and the processor on it.
pub async fn measure(
    url: &str,
    points: usize,
    series: usize,
) -> Result<ProcessorBenchResult, String> {
    let topic = "pulse.bench.processor";
    let cluster = mock_cluster(&[topic], PARTITIONS)?;
    let brokers = cluster.bootstrap_servers();
    let fleet = fleet(series);
    let rounds = points.div_ceil(series) as i64;
    let base = pulse_core::now_ms() - rounds * 1_000 - 120_000;
    for from in (0..points).step_by(FILL_CHUNK) {
        let records: Vec<OutgoingRecord> = (from..(from + FILL_CHUNK).min(points))
            .map(|i| {
                let point = stream_point(i as u64, &fleet, base);
                OutgoingRecord {
                    key: point.series_id().0,
                    value: encode_point(&point),
                }
            })
            .collect();
        produce_raw(&brokers, topic, PARTITIONS, &records).await?;
    }
    drop(fleet);
    check_whole(&brokers, topic).await?;

    let consumer_time = bare_consumer(&brokers, topic, points).await?;

    let mut schemas = Schemas::new(url);
    let outcome = async {
        let store = Arc::new(schemas.store("processor").await?);
        let mode = store.mode();
        let run = through_processor(&brokers, topic, points, Arc::clone(&store) as _).await?;
        let progress = store
            .progress(&(0..PARTITIONS).collect::<Vec<_>>())
            .await
            .map_err(|e| format!("reading the processor's checkpoint: {e}"))?;
        let stored: u64 = progress.iter().map(|p| p.next_offset).sum();
        if stored != points as u64 {
            return Err(format!(
                "the store's checkpoints cover {stored} of {points} records"
            ));
        }
        Ok::<_, String>(ProcessorBenchResult {
            points,
            series,
            processor_rate: points as f64 / run.processed.as_secs_f64(),
            consumer_rate: points as f64 / consumer_time.as_secs_f64(),
            seconds: run.processed.as_secs_f64(),
            commits: run.commits,
            commit_seconds: run.commit_seconds,
            join_seconds: run.join.as_secs_f64(),
            mode,
        })
    }
    .await;
    schemas.drop_all().await;
    outcome
}

/// Fails if the mock cluster dropped record batches of `topic` (it keeps 5
/// MiB per partition and drops the oldest beyond that, silently).
async fn check_whole(brokers: &str, topic: &str) -> Result<(), String> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
    let name = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let topic = name;
        for p in 0..PARTITIONS as i32 {
            let (low, _) = client
                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                .map_err(|e| format!("reading the watermarks of {topic} [{p}]: {e}"))?;
            if low > 0 {
                return Err(format!(
                    "the mock Kafka cluster dropped the first {low} records of {topic} [{p}]: it keeps \
                     5 MiB per partition, so the topic needs more partitions or fewer points"
                ));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("checking {topic}: {e}"))?
}

/// How long a run may take before the bench gives up: 60 s, or 1 s per
/// 10,000 points if that is longer (plus the group join).
fn deadline(points: usize) -> Duration {
    Duration::from_secs(60).max(Duration::from_millis(points as u64 / 10))
}

/// Reads and decodes every record in a fresh group; the time from the
/// assignment until the last record.
async fn bare_consumer(brokers: &str, topic: &str, points: usize) -> Result<Duration, String> {
    let max = Config::default().processor.max_poll_records;
    let mut consumer = KafkaConsumer::new(brokers, topic, "pulse-bench-bare")
        .map_err(|e| format!("bare consumer: {e}"))?;
    let created = Instant::now();
    let mut started = None;
    let mut read = 0;
    while read < points {
        if created.elapsed() > deadline(points) {
            return Err(format!(
                "the bare consumer read only {read} of {points} records"
            ));
        }
        match consumer
            .next(max, Duration::from_millis(250))
            .await
            .map_err(|e| format!("bare consumer: {e}"))?
        {
            ConsumerEvent::Assigned(_) => {
                started.get_or_insert_with(Instant::now);
            }
            ConsumerEvent::Records(records) => {
                for record in &records {
                    decode_point(&record.value)
                        .map_err(|e| format!("bare consumer: a record does not decode: {e}"))?;
                }
                read += records.len();
            }
            ConsumerEvent::Revoked(_) | ConsumerEvent::Idle => {}
        }
    }
    let started = started.ok_or("the bare consumer read records before any assignment")?;
    Ok(started.elapsed())
}

struct ProcessorRun {
    processed: Duration,
    join: Duration,
    commits: Option<u64>,
    commit_seconds: Option<f64>,
}

async fn through_processor(
    brokers: &str,
    topic: &str,
    points: usize,
    store: Arc<dyn Store>,
) -> Result<ProcessorRun, String> {
    let config = Config::default();
    let progress = Arc::new(Progress::default());
    let consumer = Watched {
        inner: KafkaConsumer::new(brokers, topic, "pulse-bench-processor")
            .map_err(|e| format!("processor consumer: {e}"))?,
        progress: Arc::clone(&progress),
    };
    let created = Instant::now();
    let registry = Arc::new(Mutex::new(Registry::default()));
    let processor = pulse_processor::Processor::new(
        &config,
        Box::new(consumer),
        store,
        Arc::new(MemoryCache::new()),
        Arc::clone(&registry),
    )
    .map_err(|e| format!("processor: {e}"))?;
    let shutdown = CancellationToken::new();
    let mut running = tokio::spawn(processor.run(shutdown.clone()));
    let mut stopped = None;
    let waited = loop {
        if progress.committed.load(Ordering::SeqCst) >= points as u64 {
            break Ok(Instant::now());
        }
        if created.elapsed() > deadline(points) {
            break Err(format!(
                "the processor's store commits cover only {} of {points} records within {} s",
                progress.committed.load(Ordering::SeqCst),
                deadline(points).as_secs()
            ));
        }
        tokio::select! {
            () = progress.changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            joined = &mut running => {
                stopped = Some(joined);
                break Err("the processor stopped before its commits covered every record".into());
            }
        }
    };
    // The metrics before the final commit of the shutdown.
    let mut text = String::new();
    // Writing into a String cannot fail; a missing line just leaves a note out.
    let _ =
        prometheus_client::encoding::text::encode(&mut text, &pulse_core::sync::lock(&registry));
    shutdown.cancel();
    let stopped = match stopped {
        Some(joined) => joined,
        None => running.await,
    };
    stopped
        .map_err(|e| format!("the processor task failed: {e}"))?
        .map_err(|e| format!("the processor failed: {e}"))?;
    let done = waited?;
    let assigned = pulse_core::sync::lock(&progress.assigned_at)
        .ok_or("the processor committed records before any assignment")?;
    Ok(ProcessorRun {
        processed: done - assigned,
        join: assigned - created,
        commits: parse_counter(&text, "pulse_processor_commit_duration_seconds_count"),
        commit_seconds: parse_value(&text, "pulse_processor_commit_duration_seconds_sum"),
    })
}

/// The throughput target of the processor on Kafka and PostgreSQL.
pub const TARGET: f64 = 300_000.0;

/// Measures and adds the row and a note to `report`.
pub async fn stage(
    url: &str,
    points: usize,
    series: usize,
    report: &mut Report,
) -> Result<(), String> {
    eprintln!(
        "bench: processor on Kafka (mock cluster) and PostgreSQL ({points} points of {series} series)..."
    );
    let p = measure(url, points, series).await?;
    report.rows.push(Row {
        what: format!(
            "Processor, Kafka + PostgreSQL, exactly-once: assignment to the store commit covering every record, \
             {} points of {} series, {PARTITIONS} partitions",
            thousands(p.points),
            thousands(p.series)
        ),
        rate: p.processor_rate,
        unit: "points/s",
        reference: "bare `KafkaConsumer` reading and decoding the same topic (fresh group)".into(),
        reference_rate: p.consumer_rate,
        target: format!(
            "≥ 300 k points/s: {}",
            met(p.processor_rate >= TARGET)
        ),
    });
    let mut note = format!(
        "Processor took {:.2} s after its group join ({:.1} s); store in {} mode",
        p.seconds, p.join_seconds, p.mode
    );
    if let (Some(n), Some(s)) = (p.commits, p.commit_seconds) {
        let _ = write!(note, "; {s:.2} s in {n} store commit(s)");
    }
    report.notes.push(format!("{note}."));
    Ok(())
}
