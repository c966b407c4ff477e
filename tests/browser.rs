//! The web UI in a real browser: headless Chromium (Debian's `chromium`) drives
//! the page of a running `pulse up` (the same `pulse::up::start`) with data in
//! it. The page exposes its state as data- attributes (see
//! `dashboard/ui/src/panels.js`), so nothing here reads canvas pixels.
//!
//! Without Chromium these tests print a skip notice; with `CI` set they fail, so
//! CI always runs them. A screenshot of the populated dashboard is kept in
//! `target/ui-artifacts/dashboard.png` (and written to `docs/dashboard.png` too
//! when `PULSE_UPDATE_DOCS_SCREENSHOT=1`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulse_browser::scenario::{self, BOARD, CPU_HOSTS, CPU_ORANGE, CPU_RED, HISTORY_MINUTES};
use pulse_browser::{Browser, BrowserError, Page, PageError};
use pulse_core::config::Config;
use serde_json::Value;

/// Chromium, or `None` after a skip notice; with `CI` set a missing Chromium
/// is a failure, as for the other services the tests need.
async fn browser_or_skip() -> Option<Browser> {
    match Browser::launch().await {
        Ok(browser) => Some(browser),
        Err(error @ BrowserError::NotFound) => {
            pulse_core::test_policy::skip_or_fail(
                &error.to_string(),
                "apt-get install -y chromium",
            );
            None
        }
        Err(error) => panic!("headless Chromium is needed for the UI tests: {error}"),
    }
}

fn artifacts_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("ui-artifacts")
}

/// A panel's data- attribute.
async fn attr(page: &Page, panel: &str, name: &str) -> Value {
    page.eval(&format!(
        "document.querySelector('[data-panel=\"{panel}\"]')?.dataset['{name}'] ?? null"
    ))
    .await
    .unwrap()
}

async fn wait(page: &Page, expression: &str, seconds: u64) -> Value {
    match page
        .wait_for(expression, Duration::from_secs(seconds))
        .await
    {
        Ok(value) => value,
        Err(error) => {
            let state = page
                .eval("JSON.stringify([...document.querySelectorAll('[data-panel]')].map(p => ({...p.dataset, message: p.querySelector('.panel-message')?.textContent})))")
                .await
                .unwrap_or_default();
            panic!("{error}\npanels: {state}\nerrors: {:?}", page.errors());
        }
    }
}

/// Waits until the API itself answers `want` 1m windows of cpu_usage.
async fn wait_for_windows(client: &reqwest::Client, dashboard: &str, from_ms: i64, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = format!(
            "{dashboard}/api/v1/query_range?metric=cpu_usage&window=1m&from={}&aggs=count",
            from_ms / 1000
        );
        let body: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        let got = body["series"][0]["points"].as_array().map_or(0, Vec::len);
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {want} windows closed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_errors(what: &str, errors: &[PageError]) {
    assert!(
        errors.is_empty(),
        "{what}: the page reported errors:\n{}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_updates_live_and_filters_in_a_real_browser() {
    let Some(browser) = browser_or_skip().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&scenario::config_toml(dir.path(), "100ms", &[])).unwrap();
    let running = pulse::up::start(config).await.unwrap();
    let gateway = format!("http://{}", running.gateway);
    let dashboard = format!("http://{}", running.dashboard);
    let client = reqwest::Client::new();
    let start = scenario::start_ms(pulse_core::now_ms());
    scenario::post(&client, &gateway, &scenario::history(start))
        .await
        .unwrap();
    wait_for_windows(&client, &dashboard, start, HISTORY_MINUTES as usize).await;

    let page = browser.new_page(1440, 900).await.unwrap();

    // The list at `/`: the built-in board and the configured one.
    page.goto(&format!("{dashboard}/")).await.unwrap();
    wait(&page, "document.body.dataset.loaded === 'true'", 15).await;
    let boards = page
        .eval("[...document.querySelectorAll('[data-board]')].map(a => a.dataset.board)")
        .await
        .unwrap();
    assert_eq!(boards, serde_json::json!(["default", BOARD]));
    page.screenshot(&artifacts_dir().join("list.png"))
        .await
        .unwrap();

    // `/d/default`: one panel per metric seen.
    page.goto(&format!("{dashboard}/d/default")).await.unwrap();
    wait(&page, "document.body.dataset.loaded === 'true'", 15).await;
    let titles = page
        .eval("[...document.querySelectorAll('.panel-title')].map(h => h.textContent)")
        .await
        .unwrap();
    assert_eq!(titles, serde_json::json!(["cpu_usage", "mem_used"]));
    page.screenshot(&artifacts_dir().join("default.png"))
        .await
        .unwrap();

    // The configured board: every panel renders the posted history.
    page.goto(&format!("{dashboard}/d/{BOARD}")).await.unwrap();
    page.eval("window.__sameDocument = true").await.unwrap();
    wait(&page, "document.body.dataset.loaded === 'true'", 15).await;
    let minutes = HISTORY_MINUTES.to_string();
    assert_eq!(attr(&page, "p1", "state").await, "ready");
    assert_eq!(
        attr(&page, "p1", "points").await,
        minutes.as_str(),
        "one point per closed 1m window"
    );
    assert_eq!(attr(&page, "p1", "series").await, "3", "one line per host");
    assert_eq!(attr(&page, "p5", "points").await, minutes.as_str());
    assert_eq!(attr(&page, "p5", "series").await, "2", "avg and p95");
    assert_eq!(
        attr(&page, "p4", "rows").await,
        "2",
        "one row per memory host"
    );

    // The stat panel shows what /dashboard answers, coloured by its thresholds.
    let latest: Value = client
        .get(format!(
            "{dashboard}/dashboard?metric=cpu_usage&window=1m&aggs=p95"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p95 = latest["aggregations"]["p95"].as_f64().unwrap();
    let shown: f64 = attr(&page, "p2", "value")
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(shown, p95);
    let color = if p95 >= CPU_RED {
        "red"
    } else if p95 >= CPU_ORANGE {
        "orange"
    } else {
        "ok"
    };
    assert_eq!(attr(&page, "p2", "color").await, color, "p95 {p95}");

    // Live: the page says so, and a newly closed window moves the charts
    // without a reload.
    wait(&page, "document.body.dataset.live === 'live'", 10).await;
    page.screenshot(&artifacts_dir().join("dashboard-light.png"))
        .await
        .unwrap();
    // The screenshot in the dark theme, which also redraws every chart.
    page.set_color_scheme("dark").await.unwrap();
    wait(
        &page,
        &format!(
            "document.querySelector('[data-panel=p1]').dataset.points === '{minutes}' && \
             [...document.querySelectorAll('[data-panel]')].every(p => p.dataset.state === 'ready')"
        ),
        10,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shot = artifacts_dir().join("dashboard.png");
    page.screenshot(&shot).await.unwrap();
    if std::env::var_os("PULSE_UPDATE_DOCS_SCREENSHOT").is_some() {
        page.screenshot(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png"))
            .await
            .unwrap();
    }
    let posted = Instant::now();
    scenario::post(&client, &gateway, &scenario::minute(start, HISTORY_MINUTES))
        .await
        .unwrap();
    let more = (HISTORY_MINUTES + 1).to_string();
    wait(
        &page,
        &format!(
            "['p1', 'p5'].every(p => document.querySelector(`[data-panel=${{p}}]`).dataset.points === '{more}')"
        ),
        10,
    )
    .await;
    eprintln!(
        "a new window reached the chart {:?} after the POST",
        posted.elapsed()
    );
    assert_eq!(
        page.eval("window.__sameDocument").await.unwrap(),
        true,
        "no reload"
    );

    // A tag filter narrows the series; the URL keeps it.
    wait(&page, "document.body.dataset.tagsLoaded === 'true'", 10).await;
    page.eval(
        "(() => { const s = document.getElementById('filter-select'); s.value = 'host:web-01'; \
         s.dispatchEvent(new Event('change')); })()",
    )
    .await
    .unwrap();
    wait(
        &page,
        "document.querySelector('[data-panel=p1]').dataset.series === '1'",
        10,
    )
    .await;
    assert_eq!(attr(&page, "p1", "points").await, more.as_str());
    let url = page.eval("location.search").await.unwrap();
    assert!(
        url.as_str().unwrap().contains("tags=host%3Aweb-01"),
        "{url}"
    );
    assert_eq!(
        page.eval("document.querySelector('.chip').dataset.tag")
            .await
            .unwrap(),
        "host:web-01"
    );
    // The aggregation and group-by pickers requery every panel.
    page.eval(
        "(() => { const s = document.getElementById('agg-select'); s.value = 'max'; \
         s.dispatchEvent(new Event('change')); })()",
    )
    .await
    .unwrap();
    wait(
        &page,
        "document.querySelector('[data-panel=p5]').dataset.series === '1' && \
         document.querySelector('[data-panel=p5] .panel-meta').textContent.includes('max')",
        10,
    )
    .await;
    // Removing the filter brings the hosts back.
    page.eval("document.querySelector('.chip').click()")
        .await
        .unwrap();
    wait(
        &page,
        &format!(
            "document.querySelector('[data-panel=p1]').dataset.series === '{}'",
            CPU_HOSTS.len()
        ),
        10,
    )
    .await;

    // Hovering a chart shows the exact values.
    let tooltip = page
        .eval(
            "(() => { const o = document.querySelector('[data-panel=p1] .u-over'); const r = o.getBoundingClientRect(); \
             o.dispatchEvent(new MouseEvent('mousemove', {clientX: r.right - 3, clientY: r.top + r.height / 2, bubbles: true})); \
             return new Promise(done => setTimeout(() => { \
               const t = document.querySelector('[data-panel=p1] .chart-tooltip'); done(t.hidden ? null : t.textContent); }, 100)); })()",
        )
        .await
        .unwrap();
    assert!(
        tooltip.as_str().is_some_and(|t| t.contains("host=web-0")),
        "tooltip: {tooltip}"
    );

    // The range and window pickers: 6h, then a custom range holding the first
    // ten minutes of history, then the 5m window.
    page.eval("document.querySelector('[data-range=\"6h\"]').click()")
        .await
        .unwrap();
    wait(
        &page,
        "location.search.includes('range=6h') && \
         document.querySelector('[data-panel=p1]').dataset.state === 'ready'",
        10,
    )
    .await;
    page.eval(&format!(
        "(() => {{ document.querySelector('[data-range=\"custom\"]').click(); \
         const local = ms => new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 16); \
         document.getElementById('range-from').value = local({start}); \
         document.getElementById('range-to').value = local({end}); \
         document.getElementById('custom-range').requestSubmit(); }})()",
        end = start + 10 * 60_000
    ))
    .await
    .unwrap();
    wait(
        &page,
        "location.search.includes('range=custom') && \
         document.querySelector('[data-panel=p1]').dataset.points === '10'",
        10,
    )
    .await;
    page.eval(
        "(() => { const s = document.getElementById('window-select'); s.value = '5m'; \
         s.dispatchEvent(new Event('change')); })()",
    )
    .await
    .unwrap();
    wait(
        &page,
        "document.querySelector('[data-panel=p1] .panel-meta').textContent.includes('5m') && \
         document.querySelector('[data-panel=p1]').dataset.state !== 'loading'",
        10,
    )
    .await;

    assert_no_errors("the dashboard", &page.errors());

    // An unknown board: a 404 page that lists the boards that exist.
    let missing = browser.new_page(1024, 700).await.unwrap();
    missing.goto(&format!("{dashboard}/d/nope")).await.unwrap();
    wait(&missing, "document.body.dataset.view === 'notfound'", 10).await;
    let links = missing
        .eval("[...document.querySelectorAll('.notice a')].map(a => a.textContent)")
        .await
        .unwrap();
    assert_eq!(links, serde_json::json!(["default", BOARD]));
    let errors: Vec<PageError> = missing
        .errors()
        .into_iter()
        .filter(|e| !(e.kind == "log:network" && e.text.contains("404")))
        .collect();
    assert_no_errors("the 404 page", &errors);

    browser.close().await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_read_tokens_the_page_asks_for_one_and_the_api_refuses_without_it() {
    let Some(browser) = browser_or_skip().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-token";
    let config = Config::from_toml(&scenario::config_toml(dir.path(), "100ms", &[token])).unwrap();
    let running = pulse::up::start(config).await.unwrap();
    let (gateway, dashboard) = (
        format!("http://{}", running.gateway),
        format!("http://{}", running.dashboard),
    );
    let client = reqwest::Client::new();
    let start = scenario::start_ms(pulse_core::now_ms());
    scenario::post(&client, &gateway, &scenario::history(start))
        .await
        .unwrap();

    // The API refuses without the token; the page itself holds no data and loads.
    for path in [
        "/api/v1/dashboards",
        "/api/v1/live",
        "/api/v1/tags?metric=cpu_usage&window=1m",
    ] {
        let status = client
            .get(format!("{dashboard}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{path}");
    }
    let page_status = client
        .get(format!("{dashboard}/d/{BOARD}"))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(page_status, 200);

    let page = browser.new_page(1280, 800).await.unwrap();
    page.goto(&format!("{dashboard}/d/{BOARD}")).await.unwrap();
    wait(&page, "document.getElementById('token-dialog').open", 10).await;
    page.screenshot(&artifacts_dir().join("token.png"))
        .await
        .unwrap();

    let submit = |value: &str| {
        format!(
            "(() => {{ document.getElementById('token-input').value = {value:?}; \
             document.getElementById('token-form').requestSubmit(); }})()"
        )
    };
    page.eval(&submit("wrong")).await.unwrap();
    wait(
        &page,
        "document.getElementById('token-dialog').open && \
         document.getElementById('token-reason').textContent.includes('refused')",
        10,
    )
    .await;
    page.eval(&submit(token)).await.unwrap();
    wait(
        &page,
        "document.body.dataset.view === 'board' && document.body.dataset.loaded === 'true'",
        15,
    )
    .await;
    wait(&page, "document.body.dataset.live === 'live'", 10).await;
    assert_eq!(
        page.eval("document.getElementById('token-dialog').open")
            .await
            .unwrap(),
        false
    );
    assert_eq!(attr(&page, "p1", "state").await, "ready");

    // The refusals show as failed requests; nothing else may appear.
    let errors: Vec<PageError> = page
        .errors()
        .into_iter()
        .filter(|e| {
            !(e.kind == "log:network" && (e.text.contains("401") || e.text.contains("403")))
        })
        .collect();
    assert_no_errors("the token flow", &errors);

    browser.close().await;
    running.stop().await.unwrap();
}

/// A TCP relay in front of the dashboard that the test can cut, to watch the
/// page lose the live stream and get it back by itself.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            up: Arc::new(AtomicBool::new(true)),
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        let (up, connections) = (Arc::clone(&relay.up), Arc::clone(&relay.connections));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(task.abort_handle());
            }
        });
        relay
    }

    /// Closes every relayed connection and refuses new ones until [`Relay::restore`].
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_lost_stream_and_reconnects_by_itself() {
    let Some(browser) = browser_or_skip().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&scenario::config_toml(dir.path(), "100ms", &[])).unwrap();
    let running = pulse::up::start(config).await.unwrap();
    let gateway = format!("http://{}", running.gateway);
    let client = reqwest::Client::new();
    let start = scenario::start_ms(pulse_core::now_ms());
    scenario::post(&client, &gateway, &scenario::history(start))
        .await
        .unwrap();
    wait_for_windows(
        &client,
        &format!("http://{}", running.dashboard),
        start,
        HISTORY_MINUTES as usize,
    )
    .await;
    let relay = Relay::start(running.dashboard).await;

    let page = browser.new_page(1280, 800).await.unwrap();
    page.goto(&format!("http://{}/d/{BOARD}", relay.addr))
        .await
        .unwrap();
    wait(&page, "document.body.dataset.live === 'live'", 15).await;
    let minutes = HISTORY_MINUTES.to_string();
    assert_eq!(attr(&page, "p1", "points").await, minutes.as_str());

    relay.cut();
    wait(&page, "document.body.dataset.live === 'disconnected'", 10).await;
    let label = page
        .eval("document.querySelector('#live .label').textContent")
        .await
        .unwrap();
    assert!(label.as_str().unwrap().contains("retrying"), "{label}");
    // A window closes while the page cannot hear of it.
    scenario::post(&client, &gateway, &scenario::minute(start, HISTORY_MINUTES))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(attr(&page, "p1", "points").await, minutes.as_str());

    relay.restore();
    wait(&page, "document.body.dataset.live === 'live'", 20).await;
    // Back live, the page re-reads what it missed.
    let more = (HISTORY_MINUTES + 1).to_string();
    wait(
        &page,
        &format!("document.querySelector('[data-panel=p1]').dataset.points === '{more}'"),
        10,
    )
    .await;

    // Only the refused connections of the outage may show as errors.
    let errors: Vec<PageError> = page
        .errors()
        .into_iter()
        .filter(|e| e.kind != "log:network")
        .collect();
    assert_no_errors("the reconnect", &errors);

    browser.close().await;
    running.stop().await.unwrap();
}
