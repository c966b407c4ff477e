//! Anomaly detection end to end through `pulse up`: steady values for ten
//! one-minute windows, then a spike, then steady again. The spike window, and
//! only it, is an anomaly in the API, and it reaches a local webhook receiver
//! (firing, then resolved). `pulse up` is SIGKILLed mid-stream and restarted
//! on the same data directory: the detector's history survives (otherwise the
//! spike would fall in a new warm-up and never fire) and nothing is judged or
//! delivered twice. A `/api/v1/live` subscriber gets the spike as an `anomaly`
//! event, and its stream ends when `pulse up` stops.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

use common::*;

const SPIKE_MINUTE: i64 = 10;
const MINUTES: i64 = 15;

async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    async fn take(State(got): State<Arc<Mutex<Vec<Value>>>>, axum::Json(body): axum::Json<Value>) {
        got.lock().unwrap().push(body);
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/hook", post(take))
        .with_state(Arc::clone(&got));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn config(data_dir: &std::path::Path, hook: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = ["1m"]
checkpoint_interval = "200ms"
allowed_lateness = "1s"
idle_timeout = "10m"
[storage]
data_dir = "{}"

[[anomaly.rules]]
name = "cpu-spike"
metric = "cpu_usage"
tags = {{ env = "prod" }}
window = "1m"
aggregation = "avg"
detector = "moving_average"
windows = 10
deviation = 3.0
for = 1
notify = ["ops"]

[[alerting.receivers]]
name = "ops"
kind = "webhook"
url = "{hook}"
"#,
        data_dir.display()
    )
}

/// One point per minute, in the middle of the minute.
fn points(base_ms: i64, minutes: std::ops::Range<i64>) -> Value {
    Value::Array(
        minutes
            .map(|m| {
                let value = if m == SPIKE_MINUTE { 500.0 } else { 50.0 };
                json!({
                    "metric_name": "cpu_usage",
                    "value": value,
                    "timestamp": (base_ms + m * 60_000 + 30_000) as f64 / 1000.0,
                    "tags": {"env": "prod", "host": "web-1"},
                })
            })
            .collect(),
    )
}

async fn send(client: &reqwest::Client, gateway: &str, body: Value) {
    let response = client
        .post(format!("{gateway}/v1/metrics"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// Polls until `done` holds for the JSON at `url`, or fails after a minute.
async fn wait_for(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = get_json(client, url).await;
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Subscribes to the server-sent events at `url` and collects the stream's
/// text as it arrives; abort the task to hang up.
async fn live_events(
    client: &reqwest::Client,
    url: &str,
) -> (Arc<Mutex<String>>, tokio::task::JoinHandle<()>) {
    let mut response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let reader = tokio::spawn(async move {
        while let Ok(Some(chunk)) = response.chunk().await {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    (text, reader)
}

/// The data of the first `event` in the collected stream, or fails after a minute.
async fn wait_for_event(text: &Mutex<String>, event: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = {
            let text = text.lock().unwrap();
            // Events are separated by a blank line; each has `event:` and `data:` lines.
            text.split("\n\n").find_map(|block| {
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(str::trim_start))
                };
                (field("event:")? == event).then_some(())?;
                field("data:").and_then(|data| serde_json::from_str::<Value>(data).ok())
            })
        };
        if let Some(data) = found {
            return data;
        }
        assert!(
            Instant::now() < deadline,
            "no `{event}` event on the live stream: {}",
            text.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spike_window_and_only_it_is_an_anomaly_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, got) = webhook().await;
    let config_path = dir.path().join("pulse.toml");
    std::fs::write(&config_path, config(&dir.path().join("data"), &hook)).unwrap();
    let config_arg = config_path.to_str().unwrap();
    let client = reqwest::Client::new();
    let now = pulse_core::now_ms();
    let base_ms = (now - 3_600_000) / 60_000 * 60_000;
    let (from, to) = (base_ms / 1000, (base_ms + MINUTES * 60_000) / 1000);

    // First part: seven steady minutes, committed, then SIGKILL.
    let mut up = PulseProcess::spawn(&["up", "--config", config_arg]);
    let gateway = up.banner_url("gateway", Duration::from_secs(60));
    let dashboard = up.banner_url("dashboard", Duration::from_secs(60));
    send(&client, &gateway, points(base_ms, 0..7)).await;
    let range =
        format!("{dashboard}/api/v1/query_range?metric=cpu_usage&window=1m&from={from}&to={to}");
    wait_for(&client, &range, "the first windows to be stored", |b| {
        b["series"][0]["points"]
            .as_array()
            .is_some_and(|p| p.len() >= 6)
    })
    .await;
    up.kill();

    // Restarted on the same data: the rest, with the spike, watched live.
    let mut up = PulseProcess::spawn(&["up", "--config", config_arg]);
    let gateway = up.banner_url("gateway", Duration::from_secs(60));
    let dashboard = up.banner_url("dashboard", Duration::from_secs(60));
    let (live, reader) = live_events(
        &client,
        &format!("{dashboard}/api/v1/live?metric=cpu_usage&window=1m"),
    )
    .await;
    send(&client, &gateway, points(base_ms, 7..MINUTES)).await;
    let api = format!("{dashboard}/api/v1/anomalies?metric=cpu_usage&from={from}&to={to}");
    let answer = wait_for(&client, &api, "the spike's anomaly to resolve", |b| {
        b["anomalies"][0]["state"] == "resolved"
    })
    .await;
    let anomalies = answer["anomalies"].as_array().unwrap();
    assert_eq!(anomalies.len(), 1, "only the spike window: {answer}");
    let a = &anomalies[0];
    assert_eq!(a["window_start_ms"], base_ms + SPIKE_MINUTE * 60_000);
    assert_eq!(a["rule"], "cpu-spike");
    assert_eq!(a["metric_name"], "cpu_usage");
    assert_eq!(a["tags"]["host"], "web-1");
    assert_eq!(a["window"], "1m");
    assert_eq!(a["value"], 500.0);
    assert_eq!(a["expected"], 50.0);
    assert!(a["score"].as_f64().unwrap() > 3.0);
    assert!(a["id"].as_str().is_some_and(|id| id.len() == 16));
    assert!(a["message"].as_str().unwrap().contains("cpu-spike"));

    // query_range carries it for the UI's markers (the restarted dashboard's port).
    let range =
        format!("{dashboard}/api/v1/query_range?metric=cpu_usage&window=1m&from={from}&to={to}");
    let (_, range) = get_json(&client, &range).await;
    assert_eq!(range["anomalies"][0]["id"], a["id"]);

    // The live subscriber got it as an `anomaly` event (firing, or already
    // resolved when both changes fell between two of its looks at the store).
    let event = wait_for_event(&live, "anomaly").await;
    assert_eq!(event["id"], a["id"], "{event}");
    assert_eq!(event["window_start_ms"], a["window_start_ms"]);

    // The webhook got the trigger and the resolve, each once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bodies = got.lock().unwrap().clone();
    let states: Vec<&Value> = bodies.iter().map(|b| &b["anomaly"]["state"]).collect();
    assert_eq!(states, [&json!("firing"), &json!("resolved")], "{bodies:?}");
    assert!(bodies.iter().all(|b| b["anomaly"]["id"] == a["id"]));
    // Still subscribed: the graceful stop ends the stream instead of waiting for it.
    assert!(
        !reader.is_finished(),
        "the live stream ended before the stop"
    );
    up.terminate(Duration::from_secs(20));
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the live stream did not end when pulse stopped")
        .unwrap();
}
