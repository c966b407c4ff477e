//! A known dashboard and the data to fill it, shared by the browser tests and
//! `pulse bench --only ui`.
//!
//! Time is driven by event time, not the wall clock, so a window closes the
//! moment the test says so: one partition, a short allowed lateness, and an idle
//! timeout longer than any run. [`minute`] posts every series' point of one
//! minute plus a "clock" point a few seconds into the next minute, which moves
//! the watermark past the first minute's window and closes it at the next
//! checkpoint. The data lies in the past (within `limits.max_past`), so the
//! default 1h range of the page shows it.

use std::path::Path;

use serde_json::{Value, json};

/// The configured board the tests and the bench open, `/d/web`.
pub const BOARD: &str = "web";
/// Hosts of `cpu_usage`, and of `mem_used`.
pub const CPU_HOSTS: [&str; 3] = ["web-01", "web-02", "web-03"];
pub const MEM_HOSTS: [&str; 2] = ["db-01", "db-02"];
/// The stat panel's thresholds, as configured below.
pub const CPU_ORANGE: f64 = 60.0;
pub const CPU_RED: f64 = 85.0;
/// Minutes of history that [`history`] posts.
pub const HISTORY_MINUTES: i64 = 40;
/// Minutes between the end of the history and now: room for that many live
/// minutes before their event time passes the wall clock (and the page's range).
pub const LIVE_MINUTES: i64 = 14;
const LATENESS_S: i64 = 2;

/// A `pulse up` config on ephemeral ports with the `web` board: CPU by host
/// (line), CPU p95 (stat with thresholds), memory (stat), memory by host
/// (table) and CPU average against p95 (line).
pub fn config_toml(data_dir: &Path, checkpoint_interval: &str, read_tokens: &[&str]) -> String {
    let tokens: Vec<String> = read_tokens.iter().map(|t| format!("{t:?}")).collect();
    format!(
        r##"
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
read_tokens = [{tokens}]
[processor]
listen = "127.0.0.1:0"
windows = ["1m", "5m"]
allowed_lateness = "{LATENESS_S}s"
idle_timeout = "1h"
checkpoint_interval = "{checkpoint_interval}"
[storage]
data_dir = "{dir}"
[bus]
partitions = 1

[[dashboards]]
name = "{BOARD}"
title = "Web fleet"

[[dashboards.panels]]
title = "CPU by host"
metric = "cpu_usage"
window = "1m"
aggs = ["avg"]
group_by = ["host"]

[[dashboards.panels]]
title = "CPU p95"
kind = "stat"
metric = "cpu_usage"
aggs = "p95"
thresholds = [{{ value = {CPU_ORANGE:.1}, color = "orange" }}, {{ value = {CPU_RED:.1}, color = "red" }}]

[[dashboards.panels]]
title = "Memory used (MiB)"
kind = "stat"
metric = "mem_used"
aggs = "max"

[[dashboards.panels]]
title = "Memory by host"
kind = "table"
metric = "mem_used"
aggs = ["last", "max"]

[[dashboards.panels]]
title = "CPU: average and p95"
metric = "cpu_usage"
aggs = ["avg", "p95"]
"##,
        tokens = tokens.join(", "),
        dir = data_dir.display(),
    )
}

/// Minute 0 of the scenario: `HISTORY_MINUTES + LIVE_MINUTES` minutes before
/// `now_ms`, on a minute boundary, so the history ends `LIVE_MINUTES` ago and
/// live minutes follow it, all inside the page's default 1h range.
pub fn start_ms(now_ms: i64) -> i64 {
    (now_ms / 60_000 - HISTORY_MINUTES - LIVE_MINUTES) * 60_000
}

/// The value of `host`'s series at `minute`: smooth waves with a little
/// deterministic jitter, so the screenshot looks like a fleet.
pub fn value(host: &str, minute: i64) -> f64 {
    let m = minute as f64;
    let jitter = ((minute * 7919 + host.len() as i64 * 104_729) % 17) as f64 / 4.0;
    let wave = |period: f64, phase: f64| (std::f64::consts::TAU * m / period + phase).sin();
    let raw = match host {
        "web-01" => 32.0 + 10.0 * wave(24.0, 0.0) + jitter,
        "web-02" => 50.0 + 14.0 * wave(18.0, 1.3) + jitter,
        "web-03" => 68.0 + 12.0 * wave(30.0, 2.6) + jitter,
        "db-01" => 1800.0 + 6.0 * m + 4.0 * jitter,
        _ => 2600.0 + 40.0 * wave(40.0, 0.5) + 4.0 * jitter,
    };
    (raw * 4.0).round() / 4.0
}

fn point(metric: &str, host: &str, ts_ms: i64, value: f64) -> Value {
    let tags = if metric == "cpu_usage" {
        json!({"host": host, "env": "prod"})
    } else {
        json!({"host": host, "region": "eu"})
    };
    json!({"metric_name": metric, "value": value, "timestamp": ts_ms as f64 / 1000.0, "tags": tags})
}

/// Every series' point of `minute` (20 s into it), then the clock point that
/// closes that minute's window: `web-01`'s next value a little after the next
/// minute starts (the same value its own point of that minute will carry, so it
/// does not change that window's average).
pub fn minute(start_ms: i64, minute: i64) -> Vec<Value> {
    let at = start_ms + minute * 60_000 + 20_000;
    let mut points: Vec<Value> = CPU_HOSTS
        .iter()
        .map(|h| point("cpu_usage", h, at, value(h, minute)))
        .chain(
            MEM_HOSTS
                .iter()
                .map(|h| point("mem_used", h, at, value(h, minute))),
        )
        .collect();
    let clock = start_ms + (minute + 1) * 60_000 + (LATENESS_S + 1) * 1000;
    points.push(point(
        "cpu_usage",
        "web-01",
        clock,
        value("web-01", minute + 1),
    ));
    points
}

/// Minutes `0..HISTORY_MINUTES`, in order: that many closed 1m windows per series.
pub fn history(start_ms: i64) -> Vec<Value> {
    (0..HISTORY_MINUTES)
        .flat_map(|m| minute(start_ms, m))
        .collect()
}

/// POSTs `points` as one batch; an error unless the gateway answers 202.
pub async fn post(client: &reqwest::Client, gateway: &str, points: &[Value]) -> Result<(), String> {
    let response = client
        .post(format!("{gateway}/v1/metrics"))
        .json(&points)
        .send()
        .await
        .map_err(|e| format!("POST {gateway}/v1/metrics: {e}"))?;
    let status = response.status();
    if status.as_u16() == 202 {
        Ok(())
    } else {
        let body = response.text().await.unwrap_or_default();
        Err(format!("the gateway answered {status}: {body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_parses_with_the_board() {
        let config = pulse_core::config::Config::from_toml(&config_toml(
            Path::new("/tmp/x"),
            "100ms",
            &["t"],
        ))
        .unwrap();
        let web = config.dashboards.get(BOARD).unwrap();
        assert_eq!(web.panels.len(), 5);
        assert_eq!(config.dashboard.read_tokens, ["t"]);
        assert!(
            pulse_core::config::Config::from_toml(&config_toml(Path::new("/tmp/x"), "1s", &[]))
                .unwrap()
                .dashboard
                .read_tokens
                .is_empty()
        );
    }

    #[test]
    fn each_minute_ends_with_a_clock_point_past_the_lateness() {
        let start = start_ms(1_721_198_745_000);
        assert_eq!(start % 60_000, 0);
        let points = minute(start, 3);
        assert_eq!(points.len(), CPU_HOSTS.len() + MEM_HOSTS.len() + 1);
        let clock = points.last().unwrap()["timestamp"].as_f64().unwrap() * 1000.0;
        let window_end = (start + 4 * 60_000) as f64;
        assert!(clock - (LATENESS_S * 1000) as f64 >= window_end);
        assert!(
            clock < window_end + 60_000.0,
            "the clock stays in the next minute"
        );
        assert_eq!(
            history(start).len(),
            points.len() * HISTORY_MINUTES as usize
        );
    }
}
