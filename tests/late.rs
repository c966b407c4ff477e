//! Event time at the seams, through `pulse up` as a user runs it (issue 11):
//! points a sidecar delivers minutes late, after an outage, still reach
//! their windows (merged into the stored results, and counted late); and one
//! client with a fast clock does not make everybody else's points late.

mod common;

use std::time::Duration;

use pulse_core::config::Config;

use common::*;

/// `pulse up` on ephemeral ports with `windows`, fast checkpoints, a
/// watermark that follows the wall clock after 1 s without records, and
/// `partitions` bus partitions.
fn config(dir: &std::path::Path, windows: &str, partitions: u32) -> Config {
    Config::from_toml(&format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = {windows}
checkpoint_interval = "200ms"
idle_timeout = "1s"
[bus]
partitions = {partitions}
[storage]
data_dir = "{}"
"#,
        dir.display()
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_delivered_after_an_outage_update_their_closed_windows() {
    const WINDOWS: [(&str, i64); 2] = [("1m", 60_000), ("5m", 300_000)];
    let dir = tempfile::tempdir().unwrap();
    let running = pulse::up::start(config(dir.path(), r#"["1m", "5m"]"#, 4))
        .await
        .unwrap();
    let gateway = format!("http://{}", running.gateway);
    let dashboard = format!("http://{}", running.dashboard);
    let processor = format!("http://{}", running.processor);
    let client = reqwest::Client::new();

    // Every window of the test ends 90 s ago or earlier: before the outage
    // is over, each is closed by the watermark following the wall clock.
    let end = (pulse_core::now_ms() - 90_000).div_euclid(300_000) * 300_000;
    let start = end - 600_000;
    // Before the outage: points of the first five minutes arrive on time.
    let mut before = random_points(2_000, 10, start, start + 300_000, 1);
    before.sort_by_key(|p| p.ts_ms);
    post(&client, &gateway, &before, 500).await;
    check_windows(
        &client,
        &dashboard,
        &windows_of(&before, &WINDOWS),
        &WINDOWS,
        Duration::from_secs(60),
    )
    .await;

    // After it: the sidecar delivers what it buffered, all ten minutes, in
    // batches. Every window these points fall into has closed.
    let backlog = random_points(8_000, 10, start, end, 2);
    post(&client, &gateway, &backlog, 500).await;
    let all: Vec<TestPoint> = before.iter().chain(&backlog).cloned().collect();
    check_windows(
        &client,
        &dashboard,
        &windows_of(&all, &WINDOWS),
        &WINDOWS,
        Duration::from_secs(60),
    )
    .await;

    // Still counted as late, every one of them, for both windows.
    let metrics = metrics_text(&client, &processor).await;
    for (label, _) in WINDOWS {
        let late = counter(
            &metrics,
            &format!("pulse_processor_late_points_total{{window=\"{label}\"}}"),
        );
        assert_eq!(late, backlog.len() as f64, "late points for {label}");
    }
    assert_eq!(
        counter(&metrics, "pulse_processor_late_points_expired_total"),
        0.0
    );

    // The cache holds the merged newest window, not the late partial.
    let (status, body) = get_json(
        &client,
        &format!("{dashboard}/dashboard?metric=cpu_usage&window=1m&aggs={AGGS}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "cache", "{body}");
    assert_eq!(body["window_start_ms"].as_i64(), Some(end - 60_000));
    let newest: Vec<f64> = all
        .iter()
        .filter(|p| p.ts_ms >= end - 60_000)
        .map(|p| p.value)
        .collect();
    check_aggregations(
        "the newest 1m window, from the cache",
        &body["aggregations"],
        &newest,
        newest.iter().sum(),
        None,
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_fast_clock_does_not_make_the_others_late() {
    const WINDOWS: [(&str, i64); 1] = [("1m", 60_000)];
    let dir = tempfile::tempdir().unwrap();
    let running = pulse::up::start(config(dir.path(), r#"["1m"]"#, 1))
        .await
        .unwrap();
    let gateway = format!("http://{}", running.gateway);
    let dashboard = format!("http://{}", running.dashboard);
    let processor = format!("http://{}", running.processor);
    let client = reqwest::Client::new();

    let now = pulse_core::now_ms();
    let ahead = TestPoint {
        metric: "cpu_usage",
        host: "fast-clock".into(),
        value: 1.0,
        ts_ms: now + 540_000,
        late: false,
    };
    post(&client, &gateway, &[ahead], 1).await;
    // Current points of 100 hosts, all on the one partition.
    let current = random_points(1_000, 100, now - 5_000, now, 3);
    post(&client, &gateway, &current, 100).await;
    // Their minute closes at most 90 s later.
    check_windows(
        &client,
        &dashboard,
        &windows_of(&current, &WINDOWS),
        &WINDOWS,
        Duration::from_secs(150),
    )
    .await;
    let metrics = metrics_text(&client, &processor).await;
    assert_eq!(
        counter(&metrics, "pulse_processor_late_points_total{window=\"1m\"}"),
        0.0,
        "none of the current points was late"
    );
    running.stop().await.unwrap();
}
