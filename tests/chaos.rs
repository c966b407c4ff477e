//! The chaos test of the whole path: an app's points go through a sidecar, a
//! gateway, Kafka (librdkafka's mock cluster, in this test process), two
//! processors, PostgreSQL, Redis and a dashboard, each role its own process,
//! while the test SIGKILLs every role at random moments and restarts it, cuts
//! PostgreSQL and Redis for seconds at a time (TCP proxies between the roles
//! and the servers), and loses some of the gateway's answers to the sidecar
//! (a proxy that closes the connection as the answer starts), so the sidecar
//! sends those batches again.
//!
//! The points carry skewed clocks: some hosts stamp them up to 90 minutes
//! back (late for every window, merged into the stored ones), some up to 14 s
//! ahead (beyond the processor's clock-skew allowance). Once everything is
//! restored and drained, every stored window must equal the same input
//! aggregated once in this process with the pipeline's own aggregate code:
//! count, sum, min, max and last exactly, every quantile p1..p99 equal to an
//! uninterrupted run's; every point is kept raw exactly once; and the
//! dashboard answers the same numbers.
//!
//! The kill and cut schedule, the lost answers and the points come from one
//! seed, printed first; `PULSE_CHAOS_SEED=<seed>` replays the same schedule
//! (the moments depend on the machine's speed too).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pulse_core::Point;
use pulse_engine::store::Store;
use pulse_engine::store::postgres::PostgresStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};

use common::proxy::{Proxy, target_of, through};
use common::*;

const PARTITIONS: i32 = 4;
/// Short windows, so every one of them closes soon after the stream ends:
/// 5s feeds 15s and the sliding 30s/5s.
const WINDOWS: [WindowDef; 3] = [
    ("5s", 5_000, 5_000),
    ("15s", 15_000, 15_000),
    ("30s/5s", 30_000, 5_000),
];
/// How long the app sends, and how long the chaos goes on (past the app's
/// end, while the sidecar still delivers what it holds).
const SEND_FOR: Duration = Duration::from_secs(40);
const CHAOS_FOR: Duration = Duration::from_secs(55);
/// The app sends a batch of this many points every `SEND_EVERY`.
const BATCH: usize = 100;
const SEND_EVERY: Duration = Duration::from_millis(200);
/// How far each host's clock is off: 90 and 10 minutes back, seconds back,
/// right, and ahead by more than the processor's skew allowance (5 s).
const SKEWS_MS: [i64; 12] = [
    -90 * 60_000,
    -10 * 60_000,
    -45_000,
    -8_000,
    -1_000,
    0,
    0,
    250,
    2_000,
    4_000,
    9_000,
    14_000,
];
const METRICS: [&str; 2] = ["chaos_cpu", "chaos_mem"];
/// Per mille of the gateway's answers the front proxy loses during the chaos.
const LOST_ANSWERS_PER_MILLE: u64 = 80;
/// How long the drain may take once everything is restored.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// xorshift64*: small, deterministic, good enough for schedules.
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

/// A port nothing listens on at the moment, for a role that must keep its
/// address across restarts.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The `pulse-sidecar` binary of this workspace: the one `cargo test
/// --workspace` built next to `pulse`, or else built now with cargo (it
/// belongs to another package, so Cargo does not hand its path to this one's
/// tests). Run alone after changing the sidecar, build it first
/// (`cargo build -p pulse-sidecar`).
fn sidecar_binary() -> PathBuf {
    let sibling = Path::new(env!("CARGO_BIN_EXE_pulse")).with_file_name("pulse-sidecar");
    if sibling.exists() {
        return sibling;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(&cargo)
        .args([
            "build",
            "-p",
            "pulse-sidecar",
            "--bin",
            "pulse-sidecar",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo} to build pulse-sidecar: {e}"));
    assert!(
        output.status.success(),
        "cargo build -p pulse-sidecar failed"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .expect("cargo names the pulse-sidecar executable")
}

/// One role's process, restarted after every kill; the output of earlier
/// runs is kept for a failure's message.
struct Role {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    process: Option<PulseProcess>,
    kills: usize,
    /// Output of the runs before the current one (the last few).
    history: Vec<String>,
}

impl Role {
    fn new(name: &str, program: &Path, args: &[&str]) -> Role {
        let mut role = Role {
            name: name.into(),
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            process: None,
            kills: 0,
            history: Vec::new(),
        };
        role.start();
        role
    }

    fn start(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = Some(PulseProcess::spawn_program(&self.program, &args));
    }

    /// Fails the test if the role exited by itself.
    fn check_running(&mut self) {
        let process = self.process.as_mut().expect("started");
        assert!(
            process.is_running(),
            "{} exited by itself:\n{}",
            self.name,
            process.output()
        );
    }

    /// SIGKILL, leaving it down until [`start`](Self::start).
    fn kill(&mut self) {
        self.check_running();
        let mut process = self.process.take().expect("started");
        let status = process.kill();
        assert_eq!(status.signal(), Some(9), "{}: {status}", self.name);
        self.kills += 1;
        self.history.push(process.output());
        if self.history.len() > 3 {
            self.history.remove(0);
        }
    }

    fn output(&self) -> String {
        let current = self.process.as_ref().map(PulseProcess::output);
        format!(
            "==== {} (earlier runs, then the current one) ====\n{}\n---- current ----\n{}",
            self.name,
            self.history.join("\n---- restart ----\n"),
            current.unwrap_or_default()
        )
    }
}

/// What the chaos does, one action at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Kill(usize),
    CutStore,
    CutCache,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_killed_and_every_server_cut_still_stores_exactly_the_input() {
    let (Some(database), Some(redis)) = (test_database_url(), test_redis_url()) else {
        return;
    };
    let seed = std::env::var("PULSE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("chaos seed {seed} (PULSE_CHAOS_SEED={seed} replays this schedule)");
    let sidecar = sidecar_binary();
    on_fresh_pipeline(&database, "chaos", PARTITIONS, |p| {
        chaos(p, database.clone(), redis, sidecar, seed)
    })
    .await;
}

async fn chaos(p: FreshPipeline, database: String, redis: String, sidecar: PathBuf, seed: u64) {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pg_proxy = Proxy::start(target_of(&database)).await;
    let redis_proxy = Proxy::start(target_of(&redis)).await;
    let (gateway_port, dashboard_port) = (free_port(), free_port());
    let gateway_addr: SocketAddr = format!("127.0.0.1:{gateway_port}").parse().unwrap();
    // The sidecar reaches the gateway through this one, which loses answers.
    let front = Proxy::start(gateway_addr).await;
    let dashboard = format!("http://127.0.0.1:{dashboard_port}");

    let config = dir.path().join("pulse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
namespace = "test"
name = "{name}"
[gateway]
listen = "127.0.0.1:{gateway_port}"
[dashboard]
listen = "127.0.0.1:{dashboard_port}"
[processor]
listen = "127.0.0.1:0"
windows = ["5s", "15s", {{ size = "30s", slide = "5s" }}]
allowed_lateness = "2s"
idle_timeout = "3s"
checkpoint_interval = "200ms"
[bus]
kafka_brokers = "{brokers}"
topic = "{topic}"
# A killed processor keeps its partitions until this passes.
session_timeout = "2s"
[storage]
data_dir = "{data}"
database_url = "{pg}"
[cache]
redis_url = "{cache}"
ttl = "10m"
"#,
            name = p.name,
            brokers = p.brokers,
            topic = p.topic,
            data = dir.path().join("data").display(),
            pg = through(&database, pg_proxy.addr),
            cache = through(&redis, redis_proxy.addr),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();

    let (sidecar_port, admin_port) = (free_port(), free_port());
    let sidecar_config = dir.path().join("sidecar.toml");
    std::fs::write(
        &sidecar_config,
        format!(
            r#"
gateway = "http://{front}"
[http]
listen = "127.0.0.1:{sidecar_port}"
[statsd]
enabled = false
[otlp]
enabled = false
[admin]
listen = "127.0.0.1:{admin_port}"
[batch]
linger = "300ms"
[buffer]
dir = "{buffer}"
[forward]
timeout = "5s"
backoff_max = "2s"
breaker_cooldown = "1s"
"#,
            front = front.addr,
            buffer = dir.path().join("buffer").display(),
        ),
    )
    .unwrap();
    let sidecar_config = sidecar_config.to_str().unwrap().to_string();

    let pulse = Path::new(env!("CARGO_BIN_EXE_pulse"));
    let mut roles = vec![
        Role::new("gateway", pulse, &["gateway", "--config", &config]),
        Role::new("processor a", pulse, &["processor", "--config", &config]),
        Role::new("processor b", pulse, &["processor", "--config", &config]),
        Role::new("dashboard", pulse, &["dashboard", "--config", &config]),
        Role::new("sidecar", &sidecar, &["--config", &sidecar_config]),
    ];
    const SIDECAR: usize = 4;

    // The app: batches to the sidecar, each sent until the sidecar took it.
    // The sidecar is killed only between two of its requests (the gate), so a
    // request that failed was not taken: what the app sent is what it sent
    // once.
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let app = tokio::spawn(app(
        format!("http://127.0.0.1:{sidecar_port}/v1/metrics"),
        Arc::clone(&gate),
        seed,
    ));
    let polling = tokio::spawn(poll_dashboard(dashboard.clone(), began + CHAOS_FOR));

    // The chaos: a seeded shuffle of kills and cuts, spread over CHAOS_FOR.
    front.lose_answers(LOST_ANSWERS_PER_MILLE, seed ^ 0x1057);
    let runtime = tokio::runtime::Handle::current();
    let (roles, cuts) = {
        let (pg_proxy, redis_proxy) = (&pg_proxy, &redis_proxy);
        tokio::task::block_in_place(|| {
            let mut rng = Rng(seed);
            let mut deck: Vec<Action> = [0, 0, 0, 1, 1, 2, 2, 3, 3, SIDECAR, SIDECAR, SIDECAR]
                .into_iter()
                .map(Action::Kill)
                .chain([
                    Action::CutStore,
                    Action::CutStore,
                    Action::CutCache,
                    Action::CutCache,
                ])
                .collect();
            for i in (1..deck.len()).rev() {
                deck.swap(i, rng.between(0, i as u64 + 1) as usize);
            }
            let step = CHAOS_FOR.as_millis() as u64 / (deck.len() as u64 + 1);
            let mut restores: Vec<(Instant, Action)> = Vec::new();
            let mut cuts = 0;
            for action in deck {
                let at =
                    Instant::now() + Duration::from_millis(rng.between(step / 2, step * 3 / 2));
                while Instant::now() < at {
                    std::thread::sleep(Duration::from_millis(50));
                    restores.retain(|&(when, what)| {
                        let due = Instant::now() >= when;
                        if due {
                            restore(what, pg_proxy, redis_proxy);
                        }
                        !due
                    });
                }
                let elapsed = began.elapsed().as_secs_f64();
                match action {
                    Action::Kill(i) => {
                        let _held = (i == SIDECAR).then(|| runtime.block_on(gate.lock()));
                        roles[i].kill();
                        let down = rng.between(0, 1_500);
                        println!("{elapsed:6.1}s kill {} (down {down} ms)", roles[i].name);
                        std::thread::sleep(Duration::from_millis(down));
                        roles[i].start();
                    }
                    Action::CutStore | Action::CutCache => {
                        let down = Duration::from_millis(rng.between(2_000, 8_000));
                        println!("{elapsed:6.1}s {action:?} for {down:?}");
                        if action == Action::CutStore {
                            pg_proxy.cut();
                        } else {
                            redis_proxy.cut();
                        }
                        cuts += 1;
                        restores.push((Instant::now() + down, action));
                    }
                }
                for role in roles.iter_mut() {
                    role.check_running();
                }
            }
            for (_, what) in restores {
                restore(what, pg_proxy, redis_proxy);
            }
            (roles, cuts)
        })
    };
    front.lose_answers(0, 0);
    println!(
        "{:6.1}s chaos over; everything restored ({} answers lost)",
        began.elapsed().as_secs_f64(),
        front.answers_lost()
    );

    let failure = |what: &str, roles: &[Role]| -> String {
        let outputs: Vec<String> = roles.iter().map(Role::output).collect();
        format!("{what}\n{}", outputs.join("\n"))
    };
    let points = app.await.unwrap();
    let dashboard_answers = polling.await.unwrap();
    println!(
        "{:6.1}s the app sent {} points; the dashboard answered {dashboard_answers:?} meanwhile",
        began.elapsed().as_secs_f64(),
        points.len()
    );

    // Drain: the sidecar delivers everything, the processors commit every
    // record, and every window closes.
    let direct = PostgresStore::connect(&database, &p.schema).await.unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let metrics_url = format!("http://127.0.0.1:{admin_port}/metrics");
    let ends = loop {
        let buffered = match client.get(&metrics_url).send().await {
            Ok(r) => gauge(
                &r.text().await.unwrap_or_default(),
                "pulse_sidecar_buffer_points",
            ),
            Err(_) => None,
        };
        if buffered == Some(0.0) {
            let ends = end_offsets(&p.brokers, &p.topic);
            let committed = committed(&direct).await;
            let open = open_windows(&database, &p.schema).await;
            if committed == ends && open == 0 {
                break ends;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            failure(
                &format!(
                    "not drained within {DRAIN_TIMEOUT:?}: sidecar holds {buffered:?} points, \
                     the store committed {:?} of the bus's {:?}, {} windows open",
                    committed(&direct).await,
                    end_offsets(&p.brokers, &p.topic),
                    open_windows(&database, &p.schema).await
                ),
                &roles
            )
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let drained = began.elapsed();

    // Every stored window equals the input aggregated once, uninterrupted.
    let mut exact = ExactWindows::new();
    for point in &points {
        add_to_windows(&mut exact, point, &WINDOWS);
    }
    let raw = raw_points(&database, &p.schema).await;
    assert_eq!(
        raw,
        points.len() as i64,
        "{}",
        failure(
            &format!(
                "every point is kept raw exactly once: {raw} raw points for {} sent",
                points.len()
            ),
            &roles
        )
    );
    let checked = check_windows_exact(&direct, &exact, &WINDOWS).await;
    let answered = check_dashboard_windows(&client, &dashboard, &points, &exact).await;
    println!(
        "seed {seed}: {} points, {} records on the bus; kills: {}; {cuts} cuts; {} answers \
         lost; drained after {:.1}s; {checked} stored windows and {answered} dashboard \
         windows exact; {:.1}s in all",
        points.len(),
        ends.iter().sum::<u64>(),
        roles
            .iter()
            .map(|r| format!("{} {}", r.name, r.kills))
            .collect::<Vec<_>>()
            .join(", "),
        front.answers_lost(),
        drained.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}

fn restore(action: Action, pg: &Proxy, redis: &Proxy) {
    match action {
        Action::CutStore => pg.restore(),
        Action::CutCache => redis.restore(),
        Action::Kill(_) => {}
    }
}

/// The app: for `SEND_FOR`, a batch of points every `SEND_EVERY`, each host
/// stamping with its own clock. Returns every point sent.
async fn app(url: String, gate: Arc<tokio::sync::Mutex<()>>, seed: u64) -> Vec<Point> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut rng = Rng(seed ^ 0xa99);
    let mut sent = Vec::new();
    let began = tokio::time::Instant::now();
    let mut tick = began;
    let series: Vec<(&str, usize)> = METRICS
        .iter()
        .flat_map(|&m| (0..SKEWS_MS.len()).map(move |h| (m, h)))
        .collect();
    while began.elapsed() < SEND_FOR {
        let now = pulse_core::now_ms();
        let batch: Vec<Point> = (0..BATCH)
            .map(|_| {
                let (metric, host) = series[rng.between(0, series.len() as u64) as usize];
                Point {
                    metric: metric.into(),
                    tags: [("host".to_string(), format!("h{host:02}"))].into(),
                    // Multiples of 1/4: every sum is exact in f64.
                    value: 1.0 + rng.between(0, 400) as f64 * 0.25,
                    timestamp_ms: now + SKEWS_MS[host] - rng.between(0, 1_000) as i64,
                    kind: pulse_core::MetricKind::Gauge,
                    sketch: None,
                }
            })
            .collect();
        let body: Vec<Value> = batch.iter().map(point_json).collect();
        let taken = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let answer = {
                let _open = gate.lock().await;
                client.post(&url).json(&body).send().await
            };
            match answer {
                Ok(a) if a.status() == 202 => break,
                Ok(a) => {
                    let status = a.status();
                    assert!(
                        status == 503,
                        "the sidecar refused a batch: {status} {}",
                        a.text().await.unwrap_or_default()
                    );
                }
                Err(e) => assert!(
                    e.is_connect(),
                    "the sidecar did not answer (a hang, or a connection broken mid-request): {e}"
                ),
            }
            assert!(
                tokio::time::Instant::now() < taken,
                "the sidecar did not take a batch within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent.extend(batch);
        tick += SEND_EVERY;
        tokio::time::sleep_until(tick).await;
    }
    sent
}

fn point_json(p: &Point) -> Value {
    json!({
        "metric_name": p.metric,
        "value": p.value,
        "timestamp": p.timestamp_ms as f64 / 1000.0,
        "tags": p.tags,
    })
}

/// What the dashboard answered while the chaos went on, by outcome.
async fn poll_dashboard(dashboard: String, until: Instant) -> BTreeMap<String, u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    while Instant::now() < until {
        for url in [
            format!("{dashboard}/dashboard?metric=chaos_cpu&window=5s"),
            format!(
                "{dashboard}/api/v1/query_range?metric=chaos_mem&window=15s&from={}&to={}&group_by=host",
                pulse_core::now_ms() / 1000 - 120,
                pulse_core::now_ms() / 1000 + 60
            ),
        ] {
            let outcome = match client.get(&url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    assert!(
                        status < 500 || status == 503,
                        "the dashboard answered {status} to {url}: {body}"
                    );
                    match body["source"].as_str() {
                        Some(source) => format!("{status} {source}"),
                        None => status.to_string(),
                    }
                }
                // A hang, not a kill: a killed dashboard breaks its connections.
                Err(e) if e.is_timeout() => panic!("the dashboard did not answer {url}: {e}"),
                Err(_) => "down".into(),
            };
            *outcomes.entry(outcome).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    outcomes
}

/// The value of an unlabelled gauge in an OpenMetrics text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// The next offset of every partition of `topic`, in partition order.
fn end_offsets(brokers: &str, topic: &str) -> Vec<u64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .expect("the mock Kafka answers");
            high as u64
        })
        .collect()
}

/// The next offset the store's checkpoints cover, per partition.
async fn committed(store: &PostgresStore) -> Vec<u64> {
    let partitions: Vec<u32> = (0..PARTITIONS as u32).collect();
    match store.progress(&partitions).await {
        Ok(progress) => partitions
            .iter()
            .map(|&p| {
                progress
                    .iter()
                    .find(|c| c.partition == p)
                    .map_or(0, |c| c.next_offset)
            })
            .collect(),
        Err(_) => vec![0; PARTITIONS as usize],
    }
}

async fn count_rows(database: &str, schema: &str, table: &str) -> i64 {
    let pool = sqlx::PgPool::connect(database).await.unwrap();
    let count = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".{table}"))
        .fetch_one(&pool)
        .await
        .unwrap_or(-1);
    pool.close().await;
    count
}

async fn open_windows(database: &str, schema: &str) -> i64 {
    count_rows(database, schema, "open_windows").await
}

async fn raw_points(database: &str, schema: &str) -> i64 {
    count_rows(database, schema, "raw_points").await
}

/// Checks every window the dashboard's `query_range` answers (grouped by
/// host) against `exact`: count, sum, min, max, last and the quantiles equal
/// to the uninterrupted aggregate's (to the last bit of a JSON number). Returns how many windows were checked.
async fn check_dashboard_windows(
    client: &reqwest::Client,
    dashboard: &str,
    points: &[Point],
    exact: &ExactWindows,
) -> usize {
    let hosts: BTreeMap<u64, String> = points
        .iter()
        .map(|p| (p.series_id().0, p.tags["host"].clone()))
        .collect();
    let want: BTreeMap<(String, String, &str, i64), &pulse_core::Aggregate> = exact
        .iter()
        .map(|((metric, id, label, start), agg)| {
            ((metric.clone(), hosts[id].clone(), *label, *start), agg)
        })
        .collect();
    let (from, to) = (
        exact.keys().map(|k| k.3).min().unwrap() / 1000 - 1,
        pulse_core::now_ms() / 1000 + 120,
    );
    let aggs = ["count", "sum", "min", "max", "last", "p50", "p90", "p99"];
    let mut checked = 0;
    for metric in METRICS {
        for (label, _, _) in WINDOWS {
            let url = format!(
                "{dashboard}/api/v1/query_range?metric={metric}&window={label}&from={from}&to={to}&group_by=host&aggs={}",
                aggs.join(",")
            );
            let (status, body) = get_json(client, &url).await;
            assert_eq!(status, 200, "{url}: {body}");
            assert_ne!(body["truncated"], true, "{url}: truncated");
            for series in body["series"].as_array().expect("series") {
                let host = series["tags"]["host"].as_str().expect("by host");
                for point in series["points"].as_array().expect("points") {
                    let start = point["window_start_ms"].as_i64().expect("start");
                    let key = (metric.to_string(), host.to_string(), label, start);
                    let agg = want.get(&key).unwrap_or_else(|| {
                        panic!("the dashboard answered {key:?}, no such window")
                    });
                    let got = &point["aggregations"];
                    for name in aggs {
                        let kind: pulse_core::AggKind = name.parse().unwrap();
                        let (got, want) = (got[name].as_f64(), agg.value(kind).unwrap());
                        // Exact but for the last bit a JSON number may lose
                        // when parsed (serde_json's fast float parsing).
                        assert!(
                            got.is_some_and(|g| (g - want).abs() <= want.abs() * 1e-15),
                            "{key:?}: {name} answered by the dashboard: {got:?}, not {want}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, exact.len(), "the dashboard answered every window");
    checked
}
