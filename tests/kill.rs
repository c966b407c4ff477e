//! The crash proof of exactly-once processing: a `pulse processor` child process
//! is SIGKILLed at random moments, at least ten times, while 200 000 points flow
//! through Kafka (librdkafka's mock cluster, in this test process) into
//! PostgreSQL. After a final run that is stopped gracefully, the stored window
//! results must equal what the test computes from the input: count, sum, min,
//! max and last exactly, every quantile equal to an uninterrupted run's, the
//! late counts exact and every point kept raw exactly once.
//!
//! The kill delays come from a PRNG seeded from the clock; the seed is printed
//! and `PULSE_KILL_SEED=<seed>` replays the same delays.

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pulse_engine::bus::kafka::KafkaProducer;
use pulse_engine::store::Store;
use pulse_engine::store::postgres::PostgresStore;

use common::*;

const PARTITIONS: i32 = 4;
const POINTS: usize = 200_000;
const BATCH: usize = 2_000;
/// The producer spreads the points over at least this long; it also never gets
/// more than one slice ahead of the kills (see `kill_and_check`).
const PRODUCE_FOR: Duration = Duration::from_secs(30);
const LATENESS_MS: i64 = 30_000;
const MIN_KILLS: usize = 10;

/// xorshift64*: small, deterministic, good enough for delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

fn clock_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// What the stored checkpoints cover: the sum of the partitions' next offsets
/// (0 while the processor has not created its schema yet).
async fn committed(store: &PostgresStore) -> usize {
    match store.progress(&[0, 1, 2, 3]).await {
        Ok(c) => c.iter().map(|p| p.next_offset as usize).sum(),
        Err(_) => 0,
    }
}

async fn count(pool: &sqlx::PgPool, schema: &str, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".{table}"))
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_at_random_moments_stores_exactly_the_uninterrupted_results() {
    let Some(database) = test_database_url() else {
        return;
    };
    on_fresh_pipeline(&database, "kill", PARTITIONS, |p| {
        kill_and_check(p.brokers, database.clone(), p.name, p.topic, p.schema)
    })
    .await;
}

/// One kill: how long the processor took to get its partitions (`None`: it
/// was killed while starting or joining the group), how long after that (or
/// after its start) it was killed, and the points sent and committed then.
#[derive(Debug)]
struct Kill {
    assigned_after_ms: Option<u128>,
    delay_ms: u64,
    sent: usize,
    committed: usize,
}

async fn kill_and_check(
    brokers: String,
    database: String,
    pipeline: String,
    topic: String,
    schema: String,
) {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pulse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
namespace = "test"
name = "{pipeline}"
[processor]
listen = "127.0.0.1:0"
windows = ["1m", "5m", {{ size = "10m", slide = "1m" }}]
allowed_lateness = "{LATENESS_MS}ms"
# Longer than a killed processor lives after its assignment, so a partition's
# watermark follows the wall clock only in the final run, once it has read
# every point: which points are late depends on the record order alone.
idle_timeout = "4s"
checkpoint_interval = "200ms"
[bus]
kafka_brokers = "{brokers}"
topic = "{topic}"
# A killed processor stays in the consumer group until this passes.
session_timeout = "2s"
[storage]
data_dir = "{}"
database_url = "{database}"
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();

    // 30 minutes of event time that ended more than an hour ago: the idle
    // watermark of the final run closes every window.
    let start_ms = (pulse_core::now_ms() - 2 * 3_600_000) / 600_000 * 600_000;
    let (points, late) = crash_stream(POINTS, start_ms, 0x6b69_6c6c);
    let partitions: BTreeSet<u64> = points
        .iter()
        .map(|p| p.series_id().0 % PARTITIONS as u64)
        .collect();
    assert_eq!(
        partitions.len(),
        PARTITIONS as usize,
        "every partition gets series"
    );
    let exact = exact_results(
        &points,
        &late,
        PARTITIONS as u64,
        LATENESS_MS,
        &CHAIN_WINDOWS,
    );

    let store = Arc::new(PostgresStore::connect(&database, &schema).await.unwrap());
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let producer = KafkaProducer::new(&brokers, &topic).await.unwrap();
    // The producer is paced, and holds back so that it has sent at most
    // (k + 1) / (MIN_KILLS + 1) of the points before the k-th mid-stream kill:
    // however slowly processors restart, at least MIN_KILLS kills come while
    // points still flow in.
    let sent = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicUsize::new(0));
    let producing = {
        let (sent, killed, points) = (Arc::clone(&sent), Arc::clone(&killed), points.clone());
        tokio::spawn(async move {
            let batches = points.len().div_ceil(BATCH) as u32;
            let begin = tokio::time::Instant::now();
            let mut done = 0;
            for (i, chunk) in points.chunks(BATCH).enumerate() {
                tokio::time::sleep_until(begin + PRODUCE_FOR * i as u32 / batches).await;
                let allowed = || (killed.load(Ordering::SeqCst) + 1) * POINTS / (MIN_KILLS + 1);
                while done + chunk.len() > allowed() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                send_points(&producer, chunk, BATCH).await;
                done += chunk.len();
                sent.store(done, Ordering::SeqCst);
            }
        })
    };

    let seed = std::env::var("PULSE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| clock_nanos() | 1);
    println!("kill seed {seed} (PULSE_KILL_SEED={seed} replays these kill delays)");
    let runtime = tokio::runtime::Handle::current();
    let killing = {
        let (config, store, sent) = (config.clone(), Arc::clone(&store), Arc::clone(&sent));
        let killed = Arc::clone(&killed);
        tokio::task::spawn_blocking(move || {
            let mut rng = Rng(seed);
            let mut kills: Vec<Kill> = Vec::new();
            loop {
                if killed.load(Ordering::SeqCst) >= MIN_KILLS
                    && sent.load(Ordering::SeqCst) == POINTS
                {
                    return kills;
                }
                let spawned = Instant::now();
                let mut child = PulseProcess::spawn(&["processor", "--config", &config]);
                // Mostly mid-stream, after the processor resumed from its
                // checkpoints; now and then while it starts or joins the group.
                let early = !kills.is_empty() && rng.between(0, 5) == 0;
                let assigned_after_ms = (!early).then(|| {
                    child.wait_for_lines(
                        "the partition assignment",
                        1,
                        Duration::from_secs(60),
                        |l| l.contains("Partitions assigned; resuming"),
                    );
                    spawned.elapsed().as_millis()
                });
                let delay_ms = if early {
                    rng.between(100, 1_500)
                } else {
                    rng.between(300, 2_000)
                };
                std::thread::sleep(Duration::from_millis(delay_ms));
                assert!(
                    child.is_running(),
                    "the processor exited by itself:\n{}",
                    child.output()
                );
                let status = child.kill();
                assert_eq!(status.signal(), Some(9), "{status}");
                let kill = Kill {
                    assigned_after_ms,
                    delay_ms,
                    sent: sent.load(Ordering::SeqCst),
                    committed: runtime.block_on(committed(&store)),
                };
                let when = match kill.assigned_after_ms {
                    Some(ms) => format!("the assignment (which took {ms} ms)"),
                    None => "the start".into(),
                };
                println!(
                    "kill {}: {} ms after {when}; {} points sent, {} committed",
                    kills.len() + 1,
                    kill.delay_ms,
                    kill.sent,
                    kill.committed
                );
                if kill.assigned_after_ms.is_some() {
                    killed.fetch_add(1, Ordering::SeqCst);
                }
                kills.push(kill);
            }
        })
    };
    let kills = killing.await.unwrap();
    producing.await.unwrap();
    let kill_phase = began.elapsed();

    // Killed processors made progress that the next ones resumed from.
    let progress: BTreeSet<usize> = kills.iter().map(|k| k.committed).collect();
    assert!(
        progress.len() >= MIN_KILLS / 2,
        "the killed processors hardly committed anything: {kills:?}"
    );
    let mid_stream = kills
        .iter()
        .filter(|k| k.assigned_after_ms.is_some() && k.sent < POINTS)
        .count();
    assert!(mid_stream >= MIN_KILLS, "{kills:?}");

    // A final processor reads the rest, closes every window once its
    // partitions idle, and stops gracefully.
    let mut last = PulseProcess::spawn(&["processor", "--config", &config]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = committed(&store).await;
        assert!(done <= POINTS, "offsets beyond the input: {done}");
        if done == POINTS && count(&pool, &schema, "open_windows").await == 0 {
            break;
        }
        assert!(
            last.is_running(),
            "the final processor exited:\n{}",
            last.output()
        );
        assert!(
            Instant::now() < deadline,
            "the final processor did not finish within 120 s ({done} of {POINTS} committed):\n{}",
            last.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = tokio::task::block_in_place(|| last.terminate(Duration::from_secs(30)));
    assert!(status.success(), "{status}:\n{}", last.output());
    assert!(
        last.output()
            .contains("Processor stopped after committing its progress."),
        "{}",
        last.output()
    );

    let checked = check_exact(&*store, &exact, &CHAIN_WINDOWS).await;
    assert_eq!(
        count(&pool, &schema, "raw_points").await,
        POINTS as i64,
        "every point is kept raw exactly once"
    );
    println!(
        "{} kills ({} after the partition assignment) in {:.1}s; {checked} windows and {} late counts \
         exact; {:.1}s in all",
        kills.len(),
        kills
            .iter()
            .filter(|k| k.assigned_after_ms.is_some())
            .count(),
        kill_phase.as_secs_f64(),
        exact.late.len(),
        began.elapsed().as_secs_f64()
    );
}
