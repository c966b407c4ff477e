//! Metric kinds through `pulse up` as a client uses it (issue 14): JSON
//! points that say they are counters or carry sketches go through the real
//! gateway, bus, processor and store, and the dashboard answers what a
//! Prometheus user checks: a counter's increase and rate over a window with
//! a reset, the `last` of a counter across series, a histogram's p95 across
//! two pods, values read bit for bit, and a tag filter value with a comma.

mod common;

use std::time::{Duration, Instant};

use pulse_core::Distribution;
use pulse_core::codec::json::SketchJson;
use pulse_core::config::Config;
use serde_json::{Value, json};

use common::get_json;

fn config(dir: &std::path::Path) -> Config {
    Config::from_toml(&format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = ["1m"]
checkpoint_interval = "200ms"
idle_timeout = "1s"
[storage]
data_dir = "{}"
"#,
        dir.display()
    ))
    .unwrap()
}

/// Waits for the 1m window of `metric` (with `query` appended) to answer
/// `count` points, and returns the answer.
async fn window(client: &reqwest::Client, dashboard: &str, query: &str, count: u64) -> Value {
    let url = format!("{dashboard}/dashboard?window=1m&{query}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = get_json(client, &url).await;
        if status == 200 && body["aggregations"]["count"] == json!(count) {
            return body;
        }
        assert!(Instant::now() < deadline, "{url} answered {status} {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn close(got: &Value, want: f64, what: &str) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
    assert!(
        (got - want).abs() <= want.abs() * 1e-9,
        "{what}: {got}, expected {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_histograms_and_exact_values_answer_what_users_check() {
    let dir = tempfile::tempdir().unwrap();
    let running = pulse::up::start(config(dir.path())).await.unwrap();
    let gateway = format!("http://{}", running.gateway);
    let dashboard = format!("http://{}", running.dashboard);
    let client = reqwest::Client::new();

    // One minute that ended over 90 s ago: closed once the watermark
    // follows the wall clock.
    let start_s = (pulse_core::now_ms() / 1000 - 180) / 60 * 60;
    let at = |offset: i64| start_s + offset;

    // A counter on two pods, scraped every 15 s from the window's start;
    // pod a restarts between its second and third scrape.
    let mut points = Vec::new();
    for (pod, values) in [("a", [10.0, 20.0, 5.0, 15.0]), ("b", [100.0, 110.0, 120.0, 130.0])] {
        for (i, v) in values.into_iter().enumerate() {
            points.push(json!({"metric_name": "requests_total", "kind": "counter",
                "value": v, "timestamp": at(15 * i as i64), "tags": {"pod": pod}}));
        }
    }
    // A latency histogram on two pods, each flushing two sketches.
    let (fast, slow): (Vec<f64>, Vec<f64>) = (
        (1..=100).map(|i| f64::from(i) / 1000.0).collect(),
        (1..=100).map(|i| 1.0 + f64::from(i) / 100.0).collect(),
    );
    for (pod, values) in [("a", &fast), ("b", &slow)] {
        for (part, offset) in [(&values[..50], 10), (&values[50..], 40)] {
            let sketch = SketchJson::of(&Distribution::of(part));
            points.push(json!({"metric_name": "req_seconds", "kind": "histogram",
                "sketch": sketch, "timestamp": at(offset), "tags": {"pod": pod}}));
        }
    }
    // A value with 17 significant digits, and tag values with a comma.
    points.push(json!({"metric_name": "precise", "timestamp": at(5), "value": 0.0}));
    for (path, v) in [("/a,b", 7.0), ("/a", 1.0)] {
        points.push(json!({"metric_name": "paths", "value": v, "timestamp": at(5), "tags": {"path": path}}));
    }
    // The precise value goes in as the client wrote it.
    let body = serde_json::to_string(&points).unwrap().replacen(
        r#""value":0.0"#,
        r#""value":3806.1772796135315"#,
        1,
    );
    let response = client
        .post(format!("{gateway}/v1/metrics"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());

    // Counter: per pod, the growth with the reset counted (a: 10 + 5 + 10,
    // b: 30), extrapolated over the 15 s after the last scrape as
    // Prometheus's increase() does (x 60/45); across pods, the sum.
    let a = window(&client, &dashboard, "metric=requests_total&tags=pod:a&aggs=count,increase,rate,last", 4).await;
    close(&a["aggregations"]["increase"], 25.0 * 60.0 / 45.0, "increase of pod a");
    let both = window(&client, &dashboard, "metric=requests_total&aggs=count,increase,rate,last", 8).await;
    let increase = (25.0 + 30.0) * 60.0 / 45.0;
    close(&both["aggregations"]["increase"], increase, "increase");
    close(&both["aggregations"]["rate"], increase / 60.0, "rate");
    close(&both["aggregations"]["last"], 15.0 + 130.0, "last across pods");

    // Histogram: p95 of both pods' observations merged, count and sum exact.
    let h = window(&client, &dashboard, "metric=req_seconds&aggs=p95,count,sum", 200).await;
    let mut all: Vec<f64> = fast.iter().chain(&slow).copied().collect();
    all.sort_by(f64::total_cmp);
    let exact = all[(0.95 * 199.0) as usize];
    let p95 = h["aggregations"]["p95"].as_f64().unwrap();
    assert!((p95 - exact).abs() / exact <= 0.01, "p95 {p95}, exact {exact}");
    close(&h["aggregations"]["sum"], all.iter().sum(), "sum");

    // Bit for bit: the answer's text holds the value as sent.
    window(&client, &dashboard, "metric=precise&aggs=count,last", 1).await;
    let text = client
        .get(format!("{dashboard}/dashboard?metric=precise&window=1m&aggs=last,max"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#""last":3806.1772796135315"#), "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer["aggregations"]["max"].as_f64().unwrap().to_bits(),
        3806.1772796135315_f64.to_bits()
    );

    // A quoted filter value may hold a comma.
    let p = window(&client, &dashboard, "metric=paths&tags=path:%22/a,b%22&aggs=count,last", 1).await;
    assert_eq!(p["aggregations"]["last"], json!(7.0));

    // The metrics list says what each metric is.
    let (_, metrics) = get_json(&client, &format!("{dashboard}/api/v1/metrics")).await;
    let kind = |name: &str| {
        metrics["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["kind"].clone())
    };
    assert_eq!(kind("requests_total"), Some(json!("counter")), "{metrics}");
    assert_eq!(kind("req_seconds"), Some(json!("histogram")));
    assert_eq!(kind("precise"), Some(json!("gauge")));

    running.stop().await.unwrap();
}
