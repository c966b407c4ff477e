//! A sidecar in front of a gateway whose request limit is smaller than the
//! sidecar's batches (issue: injected sidecars dropped whole batches on the
//! gateway's 413). A default sidecar, told nothing of the limit, must cut its
//! batches until the gateway takes them, so every point reaches the windows.

use std::time::{Duration, Instant};

use pulse_core::config::Config;
use serde_json::{Value, json};

mod common;

use common::get_json;

const POINTS: usize = 5_000;

/// A port nothing listens on at the moment (the sidecar binds its own).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_sidecar_fits_its_batches_to_a_small_gateway_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_toml(&common::config_toml(dir.path(), "10s")).unwrap();
    config.gateway.max_points_per_request = 100;
    let running = pulse::up::start(config).await.unwrap();
    let dashboard = format!("http://{}", running.dashboard);

    let sidecar_dir = tempfile::tempdir().unwrap();
    let (http_port, admin_port) = (free_port(), free_port());
    let mut sidecar = pulse_sidecar::config::Config {
        gateway: Some(format!("http://{}", running.gateway)),
        ..Default::default()
    };
    sidecar.http.listen = format!("127.0.0.1:{http_port}").parse().unwrap();
    sidecar.admin.listen = format!("127.0.0.1:{admin_port}").parse().unwrap();
    sidecar.statsd.enabled = false;
    sidecar.otlp.enabled = false;
    sidecar.buffer.dir = sidecar_dir.path().to_path_buf();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sidecar = tokio::spawn(pulse_sidecar::app::run(sidecar, async {
        let _ = stopped.await;
    }));

    // Five minutes back, so every 1m window closes once the bus is idle.
    let start_ms = pulse_core::now_ms() / 60_000 * 60_000 - 5 * 60_000;
    let points: Vec<Value> = (0..POINTS)
        .map(|i| {
            json!({
                "metric_name": "fit_test",
                "value": 1.0,
                "timestamp": (start_ms + (i as i64) * 10) as f64 / 1000.0,
                "tags": {"host": format!("h{}", i % 10)},
            })
        })
        .collect();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{http_port}/v1/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.post(&url).json(&points).send().await {
            Ok(answer) => {
                assert_eq!(
                    answer.status(),
                    202,
                    "{}",
                    answer.text().await.unwrap_or_default()
                );
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("sidecar not up yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the sidecar does not answer: {e}"),
        }
    }

    let query = format!(
        "{dashboard}/api/v1/query_range?metric=fit_test&window=1m&from={}&to={}&aggs=count",
        start_ms / 1000 - 60,
        pulse_core::now_ms() / 1000 + 60
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let counted = loop {
        let (_, body) = get_json(&client, &query).await;
        let counted: f64 = body["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
            .map(|p| p["aggregations"]["count"].as_f64().unwrap_or(0.0))
            .sum();
        if counted >= POINTS as f64 || Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let metrics = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        counted, POINTS as f64,
        "points in the windows; sidecar metrics:\n{metrics}"
    );
    let dropped: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pulse_sidecar_buffer_dropped_points_total{"))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(dropped.is_empty(), "nothing dropped: {dropped:?}");
    let _ = stop.send(());
    sidecar.await.unwrap().unwrap();
    running.stop().await.unwrap();
}
