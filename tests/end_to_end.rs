//! The whole data path as `pulse up` runs it (same `pulse::up::start`), on
//! ephemeral ports: 50k points with out-of-order and late ones over seven series,
//! every aggregation the dashboard answers checked against values computed here.

mod common;

use std::sync::Arc;

use pulse_core::Tags;
use pulse_core::config::Config;
use pulse_engine::store::Store;
use pulse_engine::store::sqlite::SqliteStore;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregation_the_dashboard_returns_matches_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(dir.path(), "2s")).unwrap();
    let running = pulse::up::start(config).await.unwrap();
    let (gateway, dashboard) = (
        format!("http://{}", running.gateway),
        format!("http://{}", running.dashboard),
    );
    let processor = format!("http://{}", running.processor);
    let client = reqwest::Client::new();

    let points = stream();
    let late = points.iter().filter(|p| p.late).count();
    assert!(late > 500, "the stream has late points ({late})");
    let expected = expected(&points);
    let from_ms = points.iter().map(|p| p.ts_ms).min().unwrap() - 3_600_000;

    post(&client, &gateway, &points, 2_500).await;
    wait_for_all_windows(&client, &dashboard, &expected, from_ms).await;
    check_dashboard(&client, &dashboard, &expected, from_ms).await;

    // Late points were counted per window, not aggregated.
    let metrics = client
        .get(format!("{processor}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (label, _, _) in WINDOWS {
        let line = format!("pulse_processor_late_points_total{{window=\"{label}\"}} {late}");
        assert!(metrics.contains(&line), "expected `{line}` in\n{metrics}");
    }
    let (status, ready) = get_json(&client, &format!("{processor}/readyz")).await;
    assert_eq!(status, 200, "{ready}");

    running.stop().await.unwrap();

    // Every point, late ones included, is kept raw exactly once.
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("store.db"))
            .await
            .unwrap(),
    );
    let mut raw = 0;
    for metric in ["cpu_usage", "mem_used"] {
        raw += store
            .raw_points(metric, &Tags::new(), 0, i64::MAX)
            .await
            .unwrap()
            .len();
    }
    assert_eq!(raw, POINTS);
}
