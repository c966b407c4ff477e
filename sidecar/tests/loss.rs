//! The sidecar loses nothing it acknowledged: the real binary runs as a child
//! process in front of a fake gateway that records every point; the gateway
//! answers 503, then goes away, the sidecar is SIGKILLed and restarted in the
//! middle of the outage, and once the gateway is back every point must arrive.
//! A second test checks that SIGTERM delivers what the sidecar holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use pulse_core::codec::body::{decode_content, parse_points};
use pulse_core::validate::Limits;
use pulse_server::CancellationToken;
use tokio::task::JoinHandle;

/// What the fake gateway saw.
#[derive(Default)]
struct Seen {
    /// Point id → times received.
    ids: Mutex<HashMap<u64, u32>>,
    requests: AtomicUsize,
    /// Answer 503 + Retry-After instead of taking points.
    unavailable: AtomicBool,
}

/// A gateway that can be stopped (connections refused) and started again on
/// the same port.
struct FakeGateway {
    port: u16,
    seen: Arc<Seen>,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

async fn ingest(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    if seen.unavailable.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "{}",
        )
            .into_response();
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let decoded = decode_content(encoding, &body, 1 << 26).expect("the sidecar sends valid bodies");
    let batch = parse_points(&decoded, &Limits::default(), 100_000, pulse_core::now_ms())
        .expect("the sidecar sends valid NDJSON");
    assert!(batch.errors.is_empty(), "{:?}", batch.errors);
    let mut ids = seen.ids.lock().unwrap();
    for point in &batch.points {
        let id: u64 = point.point.tags["id"].parse().unwrap();
        *ids.entry(id).or_default() += 1;
    }
    (
        StatusCode::ACCEPTED,
        format!("{{\"accepted\":{},\"rejected\":0}}", batch.points.len()),
    )
        .into_response()
}

impl FakeGateway {
    fn new() -> FakeGateway {
        FakeGateway {
            port: free_port(),
            seen: Arc::new(Seen::default()),
            running: None,
        }
    }

    async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the gateway's port is free again");
        let app = Router::new()
            .route("/v1/metrics", post(ingest))
            .with_state(Arc::clone(&self.seen));
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        self.running = Some((stop, task));
    }

    async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    fn received(&self) -> (usize, usize) {
        let ids = self.seen.ids.lock().unwrap();
        let duplicates = ids.values().map(|n| (*n - 1) as usize).sum();
        (ids.len(), duplicates)
    }

    fn missing(&self, total: u64) -> Vec<u64> {
        let ids = self.seen.ids.lock().unwrap();
        (0..total).filter(|id| !ids.contains_key(id)).collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, with its config and buffer in `dir`.
struct Sidecar {
    child: Child,
    admin_port: u16,
}

fn write_config(dir: &Path, gateway_port: u16, extra: &str) -> (PathBuf, u16, u16) {
    let (http_port, admin_port) = (free_port(), free_port());
    let path = dir.join("sidecar.toml");
    std::fs::write(
        &path,
        format!(
            r#"gateway = "http://127.0.0.1:{gateway_port}"
shutdown_grace = "10s"
[http]
listen = "127.0.0.1:{http_port}"
[statsd]
enabled = false
[otlp]
enabled = false
[admin]
listen = "127.0.0.1:{admin_port}"
[buffer]
dir = "{}"
[batch]
linger = "200ms"
max_points = 1000
[forward]
backoff_min = "50ms"
backoff_max = "1s"
breaker_failures = 3
breaker_cooldown = "300ms"
{extra}
"#,
            dir.join("buffer").display()
        ),
    )
    .unwrap();
    (path, http_port, admin_port)
}

impl Sidecar {
    async fn start(dir: &Path, config: &Path, admin_port: u16) -> Sidecar {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sidecar.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pulse-sidecar"))
            .arg("--config")
            .arg(config)
            .env("PULSE_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let sidecar = Sidecar { child, admin_port };
        sidecar.wait_ready(dir).await;
        sidecar
    }

    async fn wait_ready(&self, dir: &Path) {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(response) = client.get(&url).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the sidecar did not become ready; its log:\n{}",
            std::fs::read_to_string(dir.join("sidecar.log")).unwrap_or_default()
        );
    }

    /// One sample of the sidecar's `/metrics`, summed over labels.
    async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Sends points `ids` in requests of 100, each retried until the sidecar
/// answers 202 (as an app's client would while the sidecar restarts).
async fn send(client: reqwest::Client, port: u16, ids: std::ops::Range<u64>) {
    let url = format!("http://127.0.0.1:{port}/v1/metrics");
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(100) {
        let body: String = chunk
            .iter()
            .map(|id| format!("{{\"metric_name\":\"loss_test\",\"value\":{id},\"tags\":{{\"id\":\"{id}\"}}}}\n"))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sent = client.post(&url).body(body.clone()).send().await;
            if let Ok(response) = sent
                && response.status() == StatusCode::ACCEPTED
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar did not take points for 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_for_all(gateway: &FakeGateway, total: u64, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gateway.received().0 < total as usize {
        if Instant::now() > deadline {
            let missing = gateway.missing(total);
            panic!(
                "{} of {total} points never arrived (first: {:?}); sidecar log:\n{}",
                missing.len(),
                &missing[..missing.len().min(10)],
                std::fs::read_to_string(dir.join("sidecar.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_point_arrives_across_an_outage_and_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = FakeGateway::new();
    gateway.start().await;
    let (config, http_port, admin_port) = write_config(dir.path(), gateway.port, "");
    let mut sidecar = Sidecar::start(dir.path(), &config, admin_port).await;
    let client = reqwest::Client::new();

    // Healthy.
    send(client.clone(), http_port, 0..3_000).await;
    // The gateway answers 503 + Retry-After.
    gateway.seen.unavailable.store(true, Ordering::Relaxed);
    send(client.clone(), http_port, 3_000..6_000).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The gateway is gone: connections are refused.
    gateway.stop().await;
    send(client.clone(), http_port, 6_000..9_000).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let retries = sidecar.metric("pulse_sidecar_forward_retries_total").await;
    let queued = sidecar.metric("pulse_sidecar_buffer_points").await;
    assert!(retries >= 2.0, "{retries} retries");
    assert!(queued >= 6_000.0, "{queued} points queued");
    assert_eq!(
        sidecar.metric("pulse_sidecar_circuit_state").await,
        1.0,
        "the circuit is open"
    );
    // SIGKILL in the middle of a stream of requests, then a restart; the
    // sender retries what was not acknowledged.
    let sender = tokio::spawn(send(client.clone(), http_port, 9_000..15_000));
    tokio::time::sleep(Duration::from_millis(150)).await;
    sidecar.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sidecar = Sidecar::start(dir.path(), &config, admin_port).await;
    sender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during_outage = gateway.seen.requests.load(Ordering::Relaxed);
    // The gateway comes back.
    gateway.seen.unavailable.store(false, Ordering::Relaxed);
    gateway.start().await;
    wait_for_all(&gateway, 15_000, dir.path()).await;

    let (received, duplicates) = gateway.received();
    println!(
        "loss test: {received} distinct points of 15000 arrived, {duplicates} duplicates; {during_outage} requests hit the gateway before it came back"
    );
    assert_eq!(received, 15_000);
    // Only the request in flight at the kill may be buffered and resent.
    assert!(duplicates <= 100, "{duplicates} duplicates");
    let log = std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap();
    assert!(log.contains("Recovered the buffer"), "{log}");
    sidecar.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_what_the_sidecar_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = FakeGateway::new();
    gateway.start().await;
    // A long linger: without the shutdown flush the points would still wait.
    let (config, http_port, admin_port) = write_config(dir.path(), gateway.port, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("linger = \"200ms\"", "linger = \"1h\"");
    std::fs::write(&config, text).unwrap();
    let mut sidecar = Sidecar::start(dir.path(), &config, admin_port).await;
    send(reqwest::Client::new(), http_port, 0..500).await;
    assert_eq!(gateway.received().0, 0, "nothing is sent before the linger");
    let started = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(sidecar.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = sidecar.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(gateway.received(), (500, 0));
    gateway.stop().await;
}
