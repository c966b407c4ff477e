//! Gateway → Kafka: the gateway's router on a `KafkaProducer` against
//! librdkafka's mock cluster (the real Kafka protocol on loopback, in this
//! process), against a raw `rdkafka` producer with the same settings sending the
//! same records.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prometheus_client::registry::Registry;
use pulse_core::config::Config;
use pulse_engine::bus::kafka::KafkaProducer;
use pulse_engine::bus::{BusProducer, OutgoingRecord};
use pulse_server::CancellationToken;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord, Producer};

use super::e2e::{self, batches};
use super::{Report, Row, median, met, thousands};

/// Partitions of the gateway's topic: the default `bus.partitions`.
pub const PARTITIONS: u32 = 4;
/// A one-partition topic every mock cluster of the bench has, for the record
/// each producer sends before its clock starts: an idempotent producer holds
/// its first records until the broker gave it a producer id (0.1 to 0.5 s with
/// the mock), which would otherwise be timed.
const WARMUP_TOPIC: &str = "pulse.bench.warmup";
/// Records the raw producer keeps in flight at most (under the producer's
/// local queue of 250,000, so it never refuses one).
const MAX_IN_FLIGHT: usize = 100_000;

pub struct KafkaBenchResult {
    pub points: usize,
    pub batch: usize,
    /// From the first POST until the last 202.
    pub gateway_rate: f64,
    /// The same, through a gateway with the rate and active-series limits on
    /// (set so that they never refuse: their bookkeeping is what is measured).
    pub limited_rate: f64,
    /// The same records through a raw `FutureProducer`, until all delivered.
    pub raw_rate: f64,
    /// 429/503 answers retried.
    pub retries: usize,
    /// Alternating runs of both sides; the medians are reported.
    pub runs: usize,
    /// CPU time of the whole process per point (gateway side, raw side,
    /// gateway with limits), in microseconds, the in-process mock broker included.
    pub cpu_us_per_point: Option<(f64, f64, f64)>,
}

/// A gateway router serving on a loopback port.
struct Served {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Served {
    async fn start(config: &Config, bus: Arc<dyn BusProducer>) -> Result<Served, String> {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let router = pulse_gateway::Gateway::router(config, bus, registry);
        let listener = pulse_server::bind("gateway", config.gateway.listen, "gateway.listen")
            .await
            .map_err(|e| e.to_string())?;
        let url = format!(
            "http://{}/v1/metrics",
            listener.local_addr().map_err(|e| format!("{e}"))?
        );
        let shutdown = CancellationToken::new();
        let serve = pulse_server::serve(
            listener,
            router,
            shutdown.clone(),
            config.http.clone(),
            None,
        );
        let task = tokio::spawn(async move { serve.await.map_err(|e| e.to_string()) });
        Ok(Served {
            url,
            shutdown,
            task,
        })
    }

    async fn stop(self) -> Result<(), String> {
        self.shutdown.cancel();
        self.task
            .await
            .map_err(|e| format!("the gateway task failed: {e}"))?
            .map_err(|e| format!("the gateway failed: {e}"))
    }
}

/// A gateway's producer on its own topic, which has sent one record before
/// the clock starts, so neither the metadata call nor the wait for a producer
/// id is timed (the raw producer warms up the same way).
async fn warm_producer(brokers: &str, topic: &str) -> Result<Arc<dyn BusProducer>, String> {
    let producer = KafkaProducer::new(brokers, topic)
        .await
        .map_err(|e| format!("gateway producer: {e}"))?;
    producer
        .send(vec![OutgoingRecord {
            key: 0,
            value: Vec::new(),
        }])
        .await
        .map_err(|e| format!("gateway producer: {e}"))?;
    Ok(Arc::new(producer))
}

/// `config` with both gateway limits on, high enough never to refuse a point
/// of the bench: every request still takes from its rate bucket and looks up
/// each point's series.
fn with_limits(config: &Config, series: usize) -> Config {
    let mut limited = config.clone();
    limited.gateway.rate_limit = 100_000_000;
    limited.gateway.max_active_series = series * 2;
    limited
}

/// A mock Kafka cluster of one broker (replication factor 1, so `acks=all`
/// means that broker) with `topics` of `partitions` partitions each.
///
/// The mock keeps at most 5 MiB of record batches per partition and silently
/// drops the oldest beyond that (librdkafka's `rdkafka_mock.c`), so a topic
/// that must be read back whole needs enough partitions.
pub fn mock_cluster(
    topics: &[&str],
    partitions: u32,
) -> Result<MockCluster<'static, DefaultProducerContext>, String> {
    let cluster =
        MockCluster::new(1).map_err(|e| format!("the mock Kafka cluster did not start: {e}"))?;
    for topic in topics {
        cluster
            .create_topic(topic, partitions as i32, 1)
            .map_err(|e| format!("the mock Kafka cluster did not create {topic}: {e}"))?;
    }
    cluster
        .create_topic(WARMUP_TOPIC, 1, 1)
        .map_err(|e| format!("the mock Kafka cluster did not create {WARMUP_TOPIC}: {e}"))?;
    Ok(cluster)
}

/// Sends `records` to `topic` with a plain `FutureProducer` configured like
/// `KafkaProducer` (engine/src/bus/kafka.rs: idempotent, `acks=all`, lz4,
/// librdkafka's default linger, the same local queue bounds), each record to
/// partition `key % partitions` with the key's 8 big-endian bytes, as fast as
/// librdkafka takes them with at most [`MAX_IN_FLIGHT`] undelivered. Returns
/// the time from the first send until every record was acknowledged.
pub async fn produce_raw(
    brokers: &str,
    topic: &str,
    partitions: u32,
    records: &[OutgoingRecord],
) -> Result<Duration, String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "pulse-bench-raw-producer")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "250000")
        .set("queue.buffering.max.kbytes", (256 * 1024).to_string())
        .set("message.timeout.ms", "30000")
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| format!("cannot create the raw Kafka producer: {e}"))?;
    let delivered =
        |outcome: Option<Result<rdkafka::producer::future_producer::OwnedDeliveryResult, _>>| {
            match outcome {
                Some(Ok(Ok(_))) | None => Ok(()),
                Some(Ok(Err((e, _)))) => Err(format!("the raw producer's record failed: {e}")),
                Some(Err(_)) => Err("the raw producer dropped a delivery".to_string()),
            }
        };
    // Like `KafkaProducer::new`, read the topic's metadata before the clock
    // starts (which also connects to the broker), and wait for a producer id.
    let (client, name) = (producer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&name), Duration::from_secs(5))
    })
    .await
    .map_err(|e| format!("the raw producer's metadata: {e}"))?
    .map_err(|e| format!("the raw producer's metadata: {e}"))?;
    delivered(Some(
        producer
            .send_result(
                FutureRecord::to(WARMUP_TOPIC)
                    .key(&[0u8][..])
                    .payload(&[0u8][..]),
            )
            .map_err(|(e, _)| format!("the raw producer refused its warm-up record: {e}"))?
            .await,
    ))?;
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for record in records {
        let key = record.key.to_be_bytes();
        let mut message = FutureRecord::to(topic)
            .partition((record.key % u64::from(partitions)) as i32)
            .key(&key[..])
            .payload(&record.value[..]);
        loop {
            if in_flight.len() >= MAX_IN_FLIGHT {
                delivered(in_flight.next().await)?;
            }
            match producer.send_result(message) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    message = back;
                    if in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        delivered(in_flight.next().await)?;
                    }
                }
                Err((e, _)) => return Err(format!("the raw producer refused a record: {e}")),
            }
        }
    }
    while !in_flight.is_empty() {
        delivered(in_flight.next().await)?;
    }
    Ok(started.elapsed())
}

/// Runs the raw producer on one topic, then the gateway on another topic of
/// the same mock cluster, with the same records.
pub async fn measure(
    points: usize,
    batch: usize,
    series: usize,
    runs: usize,
) -> Result<KafkaBenchResult, String> {
    let (raw_topic, gateway_topic, limited_topic) = (
        "pulse.bench.raw",
        "pulse.bench.gateway",
        "pulse.bench.limited",
    );
    let cluster = mock_cluster(&[raw_topic, gateway_topic, limited_topic], PARTITIONS)?;
    let brokers = cluster.bootstrap_servers();
    let (bodies, records): (Vec<_>, Vec<_>) = batches(points, batch, series)?.into_iter().unzip();
    let records: Vec<OutgoingRecord> = records.into_iter().flatten().collect();

    let mut config = Config::default();
    config.gateway.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let plain = Served::start(&config, warm_producer(&brokers, gateway_topic).await?).await?;
    let limited = async {
        let bus = warm_producer(&brokers, limited_topic).await?;
        Served::start(&with_limits(&config, series), bus).await
    };
    let limited = match limited.await {
        Ok(limited) => limited,
        Err(e) => {
            plain.stop().await?;
            return Err(e);
        }
    };
    let outcome = async {
        let (mut raw_rates, mut gateway_rates, mut limited_rates) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut retries = 0;
        let (mut raw_cpu, mut gateway_cpu, mut limited_cpu) = (Some(0.0), Some(0.0), Some(0.0));
        let add = |total: &mut Option<f64>, before: Option<f64>| {
            *total = total
                .zip(before.zip(e2e::cpu_seconds()))
                .map(|(t, (b, a))| t + a - b);
        };
        for _ in 0..runs {
            let before = e2e::cpu_seconds();
            let raw = produce_raw(&brokers, raw_topic, PARTITIONS, &records).await?;
            add(&mut raw_cpu, before);
            raw_rates.push(points as f64 / raw.as_secs_f64());
            for (served, rates, cpu) in [
                (&plain, &mut gateway_rates, &mut gateway_cpu),
                (&limited, &mut limited_rates, &mut limited_cpu),
            ] {
                let before = e2e::cpu_seconds();
                let started = Instant::now();
                let (accepted, r) = e2e::post_bodies(&served.url, bodies.clone()).await?;
                rates.push(points as f64 / started.elapsed().as_secs_f64());
                add(cpu, before);
                retries += r;
                if accepted != points {
                    return Err(format!(
                        "the gateway accepted {accepted} of {points} points"
                    ));
                }
            }
        }
        let per_point = |cpu: f64| cpu * 1e6 / (points * runs) as f64;
        Ok::<_, String>(KafkaBenchResult {
            points,
            batch,
            gateway_rate: median(&mut gateway_rates),
            limited_rate: median(&mut limited_rates),
            raw_rate: median(&mut raw_rates),
            retries,
            runs,
            cpu_us_per_point: gateway_cpu
                .zip(raw_cpu)
                .zip(limited_cpu)
                .map(|((g, r), l)| (per_point(g), per_point(r), per_point(l))),
        })
    }
    .await;
    plain.stop().await?;
    limited.stop().await?;
    outcome
}

/// Measures and adds the row to `report`.
pub async fn stage(
    points: usize,
    batch: usize,
    series: usize,
    runs: usize,
    report: &mut Report,
) -> Result<(), String> {
    eprintln!(
        "bench: gateway → Kafka (mock cluster; {points} points in batches of {batch}, {} clients)...",
        e2e::CLIENTS
    );
    let k = measure(points, batch, series, runs).await?;
    let ratio = k.gateway_rate / k.raw_rate;
    report.rows.push(Row {
        what: format!(
            "Gateway → Kafka, first POST to last 202: `Gateway::router` on `KafkaProducer` (mock cluster, \
             1 broker, {PARTITIONS} partitions), {} points of {} series, JSON batches of {}, {} clients",
            thousands(k.points),
            thousands(series),
            thousands(k.batch),
            e2e::CLIENTS
        ),
        rate: k.gateway_rate,
        unit: "points/s",
        reference: format!(
            "raw `FutureProducer`, same settings, the same {} encoded records, ≤ {} in flight",
            thousands(k.points),
            thousands(MAX_IN_FLIGHT)
        ),
        reference_rate: k.raw_rate,
        target: format!("≥ 0.5× raw: {}", met(ratio >= 0.5)),
    });
    report.rows.push(Row {
        what: format!(
            "Gateway → Kafka as above, with `gateway.rate_limit` (100 M points/s) and \
             `max_active_series` ({}) on, neither refusing a point",
            thousands(series * 2)
        ),
        rate: k.limited_rate,
        unit: "points/s",
        reference: "the gateway without limits, same run".into(),
        reference_rate: k.gateway_rate,
        target: "none: the limits' cost".into(),
    });
    let mut note = format!(
        "Gateway → Kafka: median of {} alternating runs; each producer sent one record before its clock \
         started (metadata and producer id)",
        k.runs
    );
    if let Some((gateway, raw, limited)) = k.cpu_us_per_point {
        let _ = write!(
            note,
            "; CPU time of the process per point (the HTTP clients and the mock broker included): gateway side \
             {gateway:.2} µs, raw side {raw:.2} µs, gateway with limits {limited:.2} µs"
        );
    }
    if k.retries > 0 {
        let _ = write!(
            note,
            "; the gateway pushed back (429/503) {} time(s), and those requests were retried",
            k.retries
        );
    }
    report.notes.push(format!("{note}."));
    Ok(())
}
