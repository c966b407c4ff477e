//! `pulse bench --only ui`: the web UI in headless Chromium against `pulse up`
//! with the default checkpoint interval.
//!
//! - Page load: navigate to `/d/web` (5 panels, 40 minutes of data) and read
//!   the `pulse:first-chart` performance mark the page sets when its first line
//!   chart draws points; milliseconds from the start of the navigation.
//! - Live update: POST a batch that closes one more 1m window and wait until
//!   the chart has one more point; from just before the POST to the
//!   `data-updated-at` stamp the panel sets when it draws (the same clock), and,
//!   for the split, to the moment the page received the window's SSE event.
//!
//! Needs Chromium (`apt-get install -y chromium`, or `PULSE_CHROMIUM`), so it
//! runs only when named: `pulse bench --only ui`.

use std::time::Duration;

use serde_json::Value;

use pulse_browser::scenario::{self, BOARD, HISTORY_MINUTES, LIVE_MINUTES};
use pulse_browser::{Browser, Page};

use super::Report;

/// What one run measured, in milliseconds per repetition.
pub struct UiResult {
    pub first_chart_ms: Vec<f64>,
    pub dom_ready_ms: Vec<f64>,
    pub event_ms: Vec<f64>,
    pub drawn_ms: Vec<f64>,
}

/// Measures and adds the notes to `report`.
pub async fn stage(quick: bool, report: &mut Report) -> Result<(), String> {
    let (loads, updates) = if quick { (3, 3) } else { (10, 10) };
    eprintln!("bench: web UI in headless Chromium ({loads} page loads, {updates} live updates)...");
    let r = measure(loads, updates).await?;
    let stats = |values: &[f64]| {
        format!(
            "median {:.0} ms, p95 {:.0} ms",
            percentile(values, 0.5),
            percentile(values, 0.95)
        )
    };
    report.notes.push(format!(
        "Web UI page load (`/d/{BOARD}`: 5 panels, 2 line charts, 40 windows per series), navigation start to the \
         first line chart drawn with points: {} over {} loads (the first, with a cold cache, {:.0} ms); \
         DOMContentLoaded {}.",
        stats(&r.first_chart_ms),
        r.first_chart_ms.len(),
        r.first_chart_ms.first().copied().unwrap_or(f64::NAN),
        stats(&r.dom_ready_ms),
    ));
    let page_ms: Vec<f64> = r
        .drawn_ms
        .iter()
        .zip(&r.event_ms)
        .map(|(d, e)| d - e)
        .collect();
    report.notes.push(format!(
        "Web UI live update, POST of a batch that closes a 1m window to the new point drawn on the chart: {} over {} \
         updates. Of that, POST to the window's server-sent event in the page: {} (the processor publishes closed \
         windows after each store commit, every `processor.checkpoint_interval` = 1s); the page's own part, from the \
         event to the point drawn (re-query of the panel, redraw): {}.",
        stats(&r.drawn_ms),
        r.drawn_ms.len(),
        stats(&r.event_ms),
        stats(&page_ms),
    ));
    Ok(())
}

/// Runs `pulse up` with the scenario's board, loads the page `loads` times and
/// closes `updates` windows while it is open.
pub async fn measure(loads: usize, updates: usize) -> Result<UiResult, String> {
    if updates as i64 > LIVE_MINUTES - 1 {
        return Err(format!(
            "at most {} live updates fit before the wall clock",
            LIVE_MINUTES - 1
        ));
    }
    let browser = Browser::launch().await.map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("pulse-bench-ui-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let config =
        pulse_core::config::Config::from_toml(&scenario::config_toml(dir.path(), "1s", &[]))
            .map_err(|e| e.to_string())?;
    let running = pulse::up::start(config).await.map_err(|e| e.to_string())?;
    let outcome = run(&browser, running.gateway, running.dashboard, loads, updates).await;
    browser.close().await;
    running.stop().await?;
    outcome
}

async fn run(
    browser: &Browser,
    gateway: std::net::SocketAddr,
    dashboard: std::net::SocketAddr,
    loads: usize,
    updates: usize,
) -> Result<UiResult, String> {
    let (gateway, dashboard) = (format!("http://{gateway}"), format!("http://{dashboard}"));
    let client = reqwest::Client::new();
    let start = scenario::start_ms(pulse_core::now_ms());
    scenario::post(&client, &gateway, &scenario::history(start)).await?;
    wait_for_history(&client, &dashboard, start).await?;

    let page = browser
        .new_page(1440, 900)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("{dashboard}/d/{BOARD}");
    let mut result = UiResult {
        first_chart_ms: Vec::new(),
        dom_ready_ms: Vec::new(),
        event_ms: Vec::new(),
        drawn_ms: Vec::new(),
    };
    for _ in 0..loads {
        page.goto(&url).await.map_err(|e| e.to_string())?;
        let first = wait(&page, "document.body.dataset.firstChartMs", 30).await?;
        let dom = page
            .eval("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
            .await
            .map_err(|e| e.to_string())?;
        result.first_chart_ms.push(number(&first)?);
        result.dom_ready_ms.push(number(&dom)?);
    }
    if loads == 0 {
        page.goto(&url).await.map_err(|e| e.to_string())?;
    }
    wait(&page, "document.body.dataset.live === 'live'", 30).await?;
    wait(&page, "document.body.dataset.loaded === 'true'", 30).await?;
    for i in 0..updates {
        // Spread the POSTs over the checkpoint cycle rather than in step with it.
        tokio::time::sleep(Duration::from_millis(200 + (i as u64 * 373) % 1000)).await;
        let want = HISTORY_MINUTES + i as i64 + 1;
        let posted = pulse_core::now_ms() as f64;
        scenario::post(&client, &gateway, &scenario::minute(start, want - 1)).await?;
        let drawn = wait(
            &page,
            &format!(
                "(p => p.dataset.points === '{want}' && p.dataset.updatedAt)(document.querySelector('[data-panel=p1]'))"
            ),
            30,
        )
        .await?;
        let event = page
            .eval("document.getElementById('live').dataset.lastEvent")
            .await
            .map_err(|e| e.to_string())?;
        result.drawn_ms.push(number(&drawn)? - posted);
        result.event_ms.push(number(&event)? - posted);
    }
    let errors = page.errors();
    if !errors.is_empty() {
        return Err(format!("the page reported errors: {errors:?}"));
    }
    Ok(result)
}

async fn wait(page: &Page, expression: &str, seconds: u64) -> Result<Value, String> {
    page.wait_for(expression, Duration::from_secs(seconds))
        .await
        .map_err(|e| e.to_string())
}

/// A number, or a number in a string (data- attributes are strings).
fn number(value: &Value) -> Result<f64, String> {
    value
        .as_f64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| format!("not a number: {value}"))
}

async fn wait_for_history(
    client: &reqwest::Client,
    dashboard: &str,
    start: i64,
) -> Result<(), String> {
    let url = format!(
        "{dashboard}/api/v1/query_range?metric=cpu_usage&window=1m&from={}&aggs=count",
        start / 1000
    );
    for _ in 0..600 {
        let body: Value = client
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["series"][0]["points"].as_array().map_or(0, Vec::len) >= HISTORY_MINUTES as usize {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the history's windows did not close within 60 s".into())
}

/// Nearest-rank percentile (`q` in 0..=1) of `values`; NaN when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stage runs at tiny sizes (no timing asserted). Skipped without
    /// Chromium, unless `CI` is set, like the browser tests.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ui_bench_runs_at_tiny_sizes() {
        if pulse_browser::chromium_path().is_none() {
            pulse_core::test_policy::skip_or_fail("no Chromium", "apt-get install -y chromium");
            return;
        }
        let r = measure(1, 1).await.expect("the UI bench runs");
        assert_eq!((r.first_chart_ms.len(), r.drawn_ms.len()), (1, 1));
        assert!(r.drawn_ms[0] > 0.0 && r.event_ms[0] > 0.0);
        let mut report = Report::default();
        report.notes.push("x".into());
        assert!(!super::super::render(&report).contains("| what |"));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&values, 0.5), 3.0);
        assert_eq!(percentile(&values, 0.95), 5.0);
        assert_eq!(percentile(&[7.0], 0.95), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(number(&Value::from("12.5")).unwrap(), 12.5);
        assert!(number(&Value::Null).is_err());
    }
}
