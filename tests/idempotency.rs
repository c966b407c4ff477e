//! Exactly once end to end with idempotency keys (issue 11, item 7), through
//! `pulse up` as a user runs it: a batch sent again under its
//! `Idempotency-Key` (whole, or cut into parts with `Idempotency-Offset`)
//! counts once in the windows; so does a sidecar's batch whose 202 was lost
//! on the way back, and one resent by a sidecar killed and restarted before
//! it could forget it; and what the processor remembers of a batch survives
//! its restart.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pulse_core::config::Config;
use serde_json::Value;

use common::*;

const WINDOWS: [(&str, i64); 1] = [("1m", 60_000)];

/// `pulse up` on ephemeral ports with 1m windows over 4 partitions, a
/// watermark that follows the wall clock after 1 s without records, and at
/// most `max_points` points per request.
fn config(dir: &std::path::Path, max_points: usize) -> Config {
    Config::from_toml(&format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
max_points_per_request = {max_points}
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = ["1m"]
checkpoint_interval = "200ms"
idle_timeout = "1s"
[bus]
partitions = 4
[storage]
data_dir = "{}"
"#,
        dir.display()
    ))
    .unwrap()
}

/// Points of 10 hosts over the five minutes that ended a minute ago (their
/// windows close as soon as the bus is idle).
fn points(n: usize, seed: u64) -> Vec<TestPoint> {
    let end = (pulse_core::now_ms() - 60_000).div_euclid(60_000) * 60_000;
    random_points(n, 10, end - 300_000, end, seed)
}

/// Posts `points` as one body under `key`, starting at `offset` in the
/// batch; the answer's status and body.
async fn post_keyed(
    client: &reqwest::Client,
    gateway: &str,
    points: &[TestPoint],
    key: &str,
    offset: usize,
) -> (u16, String) {
    let body = Value::Array(points.iter().map(TestPoint::json).collect());
    let response = client
        .post(format!("{gateway}/v1/metrics"))
        .header("Idempotency-Key", key)
        .header("Idempotency-Offset", offset.to_string())
        .json(&body)
        .send()
        .await
        .expect("gateway answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Waits until the processor has dropped `n` duplicate points (or fails).
async fn wait_for_duplicates(client: &reqwest::Client, processor: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = metrics_text(client, processor).await;
        let got = counter(&metrics, "pulse_processor_duplicate_points_total");
        if got >= n as f64 {
            assert_eq!(got, n as f64, "duplicates dropped");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {n} duplicates dropped; processor metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_under_its_key_counts_once_whole_or_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let running = pulse::up::start(config(dir.path(), 10_000)).await.unwrap();
    let gateway = format!("http://{}", running.gateway);
    let processor = format!("http://{}", running.processor);
    let client = reqwest::Client::new();
    let batch = points(1_000, 1);

    assert_eq!(
        post_keyed(&client, &gateway, &batch, "batch-1", 0).await.0,
        202
    );
    // The answer was lost, say: the client sends it again, whole...
    assert_eq!(
        post_keyed(&client, &gateway, &batch, "batch-1", 0).await.0,
        202
    );
    // ...and once more cut in two parts, each numbered within the batch.
    let (first, second) = batch.split_at(400);
    assert_eq!(
        post_keyed(&client, &gateway, first, "batch-1", 0).await.0,
        202
    );
    assert_eq!(
        post_keyed(&client, &gateway, second, "batch-1", 400)
            .await
            .0,
        202
    );
    // The same points under another key are another batch: counted again.
    let other = points(10, 2);
    assert_eq!(
        post_keyed(&client, &gateway, &other, "batch-2", 0).await.0,
        202
    );

    // A bad key is refused before anything is taken.
    let (status, body) = post_keyed(&client, &gateway, &batch, "two words", 0).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_idempotency_key"), "{body}");

    wait_for_duplicates(&client, &processor, 2_000).await;
    let all: Vec<TestPoint> = batch.iter().chain(&other).cloned().collect();
    check_windows(
        &client,
        &format!("http://{}", running.dashboard),
        &windows_of(&all, &WINDOWS),
        &WINDOWS,
        Duration::from_secs(60),
    )
    .await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marks_of_a_batch_survive_a_processor_restart() {
    let dir = tempfile::tempdir().unwrap();
    let batch = points(500, 3);
    let running = pulse::up::start(config(dir.path(), 10_000)).await.unwrap();
    let client = reqwest::Client::new();
    let gateway = format!("http://{}", running.gateway);
    assert_eq!(
        post_keyed(&client, &gateway, &batch, "restart", 0).await.0,
        202
    );
    // Counted and checkpointed before the stop.
    check_windows(
        &client,
        &format!("http://{}", running.dashboard),
        &windows_of(&batch, &WINDOWS),
        &WINDOWS,
        Duration::from_secs(60),
    )
    .await;
    running.stop().await.unwrap();

    let running = pulse::up::start(config(dir.path(), 10_000)).await.unwrap();
    let gateway = format!("http://{}", running.gateway);
    assert_eq!(
        post_keyed(&client, &gateway, &batch, "restart", 0).await.0,
        202
    );
    wait_for_duplicates(&client, &format!("http://{}", running.processor), 500).await;
    check_windows(
        &client,
        &format!("http://{}", running.dashboard),
        &windows_of(&batch, &WINDOWS),
        &WINDOWS,
        Duration::from_secs(60),
    )
    .await;
    running.stop().await.unwrap();
}

/// A proxy in front of the gateway that passes every request on, but keeps
/// the answer of the first `lose` the gateway accepted: the client waits
/// until its timeout and cuts the connection, as when an answer is lost.
struct LossyProxy {
    gateway: String,
    client: reqwest::Client,
    lose: usize,
    lost: AtomicUsize,
}

async fn relay(State(proxy): State<Arc<LossyProxy>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut request = proxy
        .client
        .post(format!("{}/v1/metrics", proxy.gateway))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let Ok(answer) = request.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let text = answer.bytes().await.unwrap_or_default();
    if status == StatusCode::ACCEPTED
        && proxy
            .lost
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < proxy.lose).then_some(n + 1)
            })
            .is_ok()
    {
        // Written to the bus; the answer never comes back.
        std::future::pending::<()>().await;
    }
    Response::builder()
        .status(status.as_u16())
        .header("content-type", "application/json")
        .body(Body::from(text))
        .unwrap()
}

/// A sidecar sending to `gateway` with a short request timeout from the
/// buffer in `buffer`, on a runtime of its own: shutting that down stops
/// every task of the sidecar at once, mid-request, like a SIGKILL (only the
/// disk is left). Its HTTP and admin ports, and the runtime.
fn sidecar(gateway: &str, buffer: &std::path::Path) -> (u16, u16, tokio::runtime::Runtime) {
    let free_port = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (http_port, admin_port) = (free_port(), free_port());
    let mut config = pulse_sidecar::config::Config {
        gateway: Some(gateway.to_string()),
        ..Default::default()
    };
    config.http.listen = format!("127.0.0.1:{http_port}").parse().unwrap();
    config.admin.listen = format!("127.0.0.1:{admin_port}").parse().unwrap();
    config.statsd.enabled = false;
    config.otlp.enabled = false;
    config.buffer.dir = buffer.to_path_buf();
    config.forward.timeout = Duration::from_secs(1);
    config.forward.backoff_min = Duration::from_millis(50);
    config.forward.backoff_max = Duration::from_millis(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.spawn(pulse_sidecar::app::run(config, std::future::pending()));
    (http_port, admin_port, runtime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_batch_whose_answer_was_lost_or_whose_sidecar_was_killed_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    // Smaller than the sidecar's batch: it cuts the batch on the 413, and
    // every part must still be deduplicated within the batch.
    let running = pulse::up::start(config(dir.path(), 300)).await.unwrap();
    let proxy = Arc::new(LossyProxy {
        gateway: format!("http://{}", running.gateway),
        client: reqwest::Client::new(),
        lose: 2,
        lost: AtomicUsize::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/metrics", axum::routing::post(relay))
        .with_state(Arc::clone(&proxy));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let buffer = tempfile::tempdir().unwrap();
    let (port, _, first) = sidecar(&proxy_url, buffer.path());
    let client = reqwest::Client::new();
    let batch = points(1_000, 4);
    let body = Value::Array(batch.iter().map(TestPoint::json).collect());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client
            .post(format!("http://127.0.0.1:{port}/v1/metrics"))
            .json(&body)
            .send()
            .await
        {
            Ok(answer) => {
                assert_eq!(answer.status(), 202);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("sidecar not up yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the sidecar does not answer: {e}"),
        }
    }
    // Two answers lost (the sidecar sent a part again after the first),
    // then the sidecar dies without a word, its buffer left on disk.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.lost.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the sidecar never sent twice");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.shutdown_background();
    // Restarted on the same buffer: it sends the batch again, under the
    // key its segment had, and the gateway's answers come back now.
    let (_, admin, second) = sidecar(&proxy_url, buffer.path());

    // Everything delivered, and everything the gateway wrote read.
    let processor = format!("http://{}", running.processor);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // The restarted sidecar's admin port may not listen yet.
        let sidecar = match client
            .get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .await
        {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let gateway = metrics_text(&client, &format!("http://{}", running.gateway)).await;
        let metrics = metrics_text(&client, &processor).await;
        let written = counter(&gateway, "pulse_gateway_points_accepted_total");
        let duplicates = counter(&metrics, "pulse_processor_duplicate_points_total");
        let read = counter(&metrics, "pulse_processor_points_total") + duplicates;
        if sidecar.contains("pulse_sidecar_buffer_points")
            && counter(&sidecar, "pulse_sidecar_buffer_points") == 0.0
            && written >= batch.len() as f64
            && read == written
        {
            assert!(duplicates > 0.0, "parts whose answers were lost came again");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered: {written} written, {read} read; sidecar:\n{sidecar}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_windows(
        &client,
        &format!("http://{}", running.dashboard),
        &windows_of(&batch, &WINDOWS),
        &WINDOWS,
        Duration::from_secs(90),
    )
    .await;
    second.shutdown_background();
    running.stop().await.unwrap();
}
