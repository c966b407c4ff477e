//! The query API end to end through `Dashboard::router`, against the embedded
//! SQLite store and the in-memory cache.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use futures::stream::BoxStream;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use pulse_core::config::Config;
use pulse_core::{Aggregate, SeriesId, Tags, TimestampMs, WindowResult};
use pulse_dashboard::Dashboard;
use pulse_engine::cache::memory::MemoryCache;
use pulse_engine::cache::{Cache, CacheError, Partial};
use pulse_engine::store::sqlite::SqliteStore;
use pulse_engine::store::{Commit, Store};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

/// 2024-07-17T06:45:00Z, the start of a 5m window.
const START: TimestampMs = 1_721_198_700_000;
const FIVE_MINUTES: TimestampMs = 300_000;

fn result(
    metric: &str,
    window: &str,
    tags: &[(&str, &str)],
    start_ms: TimestampMs,
    values: &[f64],
) -> WindowResult {
    let tags: Tags = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut agg = Aggregate::new();
    for (i, v) in values.iter().enumerate() {
        agg.add(*v, start_ms + i as TimestampMs);
    }
    WindowResult {
        series_id: SeriesId::of(metric, &tags),
        metric: metric.into(),
        tags,
        window: window.into(),
        start_ms,
        end_ms: start_ms + FIVE_MINUTES,
        agg,
    }
}

fn host(name: &str) -> [(&str, &str); 2] {
    [("host", name), ("env", "prod")]
}

struct Fixture {
    router: Router,
    store: Arc<SqliteStore>,
    cache: Arc<MemoryCache>,
    registry: Arc<Mutex<Registry>>,
    _dir: TempDir,
}

impl Fixture {
    async fn new(config: Config) -> Fixture {
        Fixture::with_cache(config, None).await
    }

    /// `cache` replaces the memory cache in the router (the fixture's own stays
    /// for publishing in tests that use it).
    async fn with_cache(config: Config, cache: Option<Arc<dyn Cache>>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("pulse.db"))
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        let memory = Arc::new(MemoryCache::new());
        let registry = Arc::new(Mutex::new(Registry::default()));
        let router = Dashboard::router(
            &config,
            store.clone(),
            cache.unwrap_or_else(|| memory.clone()),
            registry.clone(),
        );
        Fixture {
            router,
            store,
            cache: memory,
            registry,
            _dir: dir,
        }
    }

    async fn commit(&self, results: Vec<WindowResult>) {
        self.store
            .commit(&Commit {
                results,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn request(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    /// The registry as `/metrics` would print it, without going through a request
    /// (which would itself change the request metrics).
    fn registry_text(&self) -> String {
        let registry = self.registry.lock().unwrap();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    async fn get(&self, uri: &str) -> Answer {
        self.request(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn source_header(&self) -> &str {
        self.headers["x-pulse-source"].to_str().unwrap()
    }
}

/// Nearest-rank quantile with the rank convention DDSketch uses.
fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

#[tokio::test]
async fn dashboard_answers_the_contract_and_p95_over_three_hosts_is_the_p95_of_the_union() {
    let fixture = Fixture::new(Config::default()).await;
    let per_host: Vec<Vec<f64>> = vec![
        (1..=300).map(f64::from).collect(),
        (1..=50).map(|v| 1_000.0 + f64::from(v)).collect(),
        (1..=120).map(|v| f64::from(v) * 7.5).collect(),
    ];
    let mut results: Vec<WindowResult> = ["web-01", "web-02", "web-03"]
        .iter()
        .zip(&per_host)
        .map(|(name, values)| result("cpu_usage", "5m", &host(name), START, values))
        .collect();
    // An older window and another window size must not leak into the answer.
    results.push(result(
        "cpu_usage",
        "5m",
        &host("web-01"),
        START - FIVE_MINUTES,
        &[1e6],
    ));
    results.push(result("cpu_usage", "1m", &host("web-01"), START, &[1e6]));
    fixture.commit(results).await;

    let answer = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&aggs=avg,max,p95,count")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let body = answer.json();
    let union: Vec<f64> = per_host.concat();
    let avg = union.iter().sum::<f64>() / union.len() as f64;
    assert_eq!(body["metric_name"], "cpu_usage");
    assert_eq!(body["window"], "5m");
    assert_eq!(body["window_start"], "2024-07-17T06:45:00Z");
    assert_eq!(body["window_end"], "2024-07-17T06:50:00Z");
    assert_eq!(body["window_start_ms"], START);
    assert_eq!(body["window_end_ms"], START + FIVE_MINUTES);
    assert_eq!(body["series"], 3);
    assert_eq!(body["source"], "store");
    let aggs = body["aggregations"].as_object().unwrap();
    let names: Vec<&str> = aggs.keys().map(String::as_str).collect();
    assert_eq!(names.len(), 4);
    assert_eq!(aggs["count"], json!(union.len()));
    assert_eq!(aggs["max"], json!(1_050.0));
    assert!((aggs["avg"].as_f64().unwrap() - avg).abs() < 1e-9);
    let exact = exact_quantile(&union, 0.95);
    let p95 = aggs["p95"].as_f64().unwrap();
    assert!(
        (p95 - exact).abs() / exact <= 0.01,
        "p95 {p95} vs exact {exact}"
    );
}

#[tokio::test]
async fn dashboard_reports_every_default_aggregation_without_aggs() {
    let fixture = Fixture::new(Config::default()).await;
    fixture
        .commit(vec![result(
            "cpu_usage",
            "5m",
            &host("web-01"),
            START,
            &[1.0, 3.0],
        )])
        .await;
    let answer = fixture.get("/dashboard?metric=cpu_usage&window=5m").await;
    let body = answer.json();
    assert_eq!(body["aggregations"].as_object().unwrap().len(), 10);
    // The wire keeps the documented order (a `Value` would sort the keys).
    let positions: Vec<usize> = [
        "count", "sum", "min", "max", "avg", "last", "p50", "p90", "p95", "p99",
    ]
    .iter()
    .map(|name| answer.body.find(&format!("\"{name}\":")).unwrap())
    .collect();
    assert!(positions.is_sorted(), "{}", answer.body);
    assert_eq!(body["aggregations"]["last"], json!(3.0));
}

#[tokio::test]
async fn tag_filter_narrows_the_series_merged() {
    let fixture = Fixture::new(Config::default()).await;
    fixture
        .commit(vec![
            result("cpu_usage", "5m", &host("web-01"), START, &[10.0]),
            result("cpu_usage", "5m", &host("web-02"), START, &[20.0]),
            result(
                "cpu_usage",
                "5m",
                &[("host", "web-03"), ("env", "dev")],
                START,
                &[90.0],
            ),
        ])
        .await;
    let prod = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&tags=env:prod&aggs=max,count")
        .await
        .json();
    assert_eq!(prod["series"], 2);
    assert_eq!(prod["aggregations"], json!({"max": 20.0, "count": 2}));
    let one = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&tags=host:web-02,env:prod&aggs=max")
        .await
        .json();
    assert_eq!(one["series"], 1);
    assert_eq!(one["aggregations"], json!({"max": 20.0}));
}

#[tokio::test]
async fn cache_hit_answers_from_the_cache_and_says_so() {
    let fixture = Fixture::new(Config::default()).await;
    // The store is a window behind the cache, so the answer shows which one spoke.
    fixture
        .commit(vec![result(
            "cpu_usage",
            "5m",
            &host("web-01"),
            START - FIVE_MINUTES,
            &[1.0],
        )])
        .await;
    fixture
        .cache
        .put_latest(&[
            result("cpu_usage", "5m", &host("web-01"), START, &[5.0]),
            result("cpu_usage", "5m", &host("web-02"), START, &[7.0]),
        ])
        .await
        .unwrap();
    let answer = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&aggs=max")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.source_header(), "cache");
    let body = answer.json();
    assert_eq!(body["source"], "cache");
    assert_eq!(body["window_start_ms"], START);
    assert_eq!(body["series"], 2);
    assert_eq!(body["aggregations"]["max"], json!(7.0));
}

#[tokio::test]
async fn cold_cache_falls_back_to_the_store_and_says_so() {
    let fixture = Fixture::new(Config::default()).await;
    fixture
        .commit(vec![result(
            "cpu_usage",
            "5m",
            &host("web-01"),
            START,
            &[4.0],
        )])
        .await;
    let answer = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&aggs=max")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.source_header(), "store");
    assert_eq!(answer.json()["source"], "store");
    assert_eq!(answer.json()["aggregations"]["max"], json!(4.0));
}

#[tokio::test]
async fn cache_without_the_filtered_series_falls_back_to_the_store() {
    let fixture = Fixture::new(Config::default()).await;
    fixture
        .commit(vec![result(
            "cpu_usage",
            "5m",
            &host("web-02"),
            START - FIVE_MINUTES,
            &[2.0],
        )])
        .await;
    fixture
        .cache
        .put_latest(&[result("cpu_usage", "5m", &host("web-01"), START, &[5.0])])
        .await
        .unwrap();
    let answer = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&tags=host:web-02&aggs=max")
        .await;
    assert_eq!(answer.source_header(), "store");
    assert_eq!(answer.json()["window_start_ms"], START - FIVE_MINUTES);
}

/// A cache that is down: every call fails.
struct DownCache;

#[async_trait::async_trait]
impl Cache for DownCache {
    async fn put_latest(&self, _: &[WindowResult]) -> Result<(), CacheError> {
        Err(CacheError::Unavailable("connection refused".into()))
    }

    async fn latest(&self, _: &str, _: &str) -> Result<Option<Vec<WindowResult>>, CacheError> {
        Err(CacheError::Unavailable("connection refused".into()))
    }

    async fn publish(&self, _: &[WindowResult]) -> Result<(), CacheError> {
        Err(CacheError::Unavailable("connection refused".into()))
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, WindowResult>, CacheError> {
        Err(CacheError::Unavailable("connection refused".into()))
    }

    async fn put_partial(&self, _: &[Partial]) -> Result<(), CacheError> {
        Err(CacheError::Unavailable("connection refused".into()))
    }

    async fn partials(&self, _: &str, _: &str, _: i64) -> Result<Vec<WindowResult>, CacheError> {
        Err(CacheError::Unavailable("connection refused".into()))
    }

    async fn subscribe_partial(&self) -> Result<BoxStream<'static, WindowResult>, CacheError> {
        Err(CacheError::Unavailable("connection refused".into()))
    }
}

#[tokio::test]
async fn failing_cache_is_counted_and_answered_from_the_store() {
    let fixture = Fixture::with_cache(Config::default(), Some(Arc::new(DownCache))).await;
    fixture
        .commit(vec![result(
            "cpu_usage",
            "5m",
            &host("web-01"),
            START,
            &[4.0],
        )])
        .await;
    let answer = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&aggs=max")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.source_header(), "store");
    let metrics = fixture.get("/metrics").await.body;
    assert!(
        metrics.contains("pulse_dashboard_cache_errors_total 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("pulse_dashboard_queries_total{endpoint=\"dashboard\",source=\"store\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn live_is_503_when_the_cache_cannot_subscribe() {
    let fixture = Fixture::with_cache(Config::default(), Some(Arc::new(DownCache))).await;
    let answer = fixture.get("/api/v1/live").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"]["code"], "unavailable");
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn unknown_window_is_a_400_naming_the_valid_ones() {
    let fixture = Fixture::new(Config::default()).await;
    let answer = fixture.get("/dashboard?metric=cpu_usage&window=2m").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "unknown_window");
    assert!(
        error["message"].as_str().unwrap().contains("1m, 5m, 15m"),
        "{error}"
    );
    let range = fixture
        .get("/api/v1/query_range?metric=cpu_usage&window=7m")
        .await;
    assert_eq!(range.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sliding_window_labels_from_the_config_are_accepted() {
    let config =
        Config::from_toml("[processor]\nwindows = [\"1m\", { size = \"10m\", slide = \"1m\" }]")
            .unwrap();
    let fixture = Fixture::new(config).await;
    let answer = fixture
        .get("/dashboard?metric=cpu_usage&window=10m%2F1m")
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = fixture.get("/dashboard?metric=cpu_usage&window=5m").await;
    assert!(answer.body.contains("1m, 10m/1m"), "{}", answer.body);
}

#[tokio::test]
async fn no_closed_window_is_a_404_no_data() {
    let fixture = Fixture::new(Config::default()).await;
    let answer = fixture.get("/dashboard?metric=cpu_usage&window=5m").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "no_data");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("no closed `5m` window"), "{message}");
    assert!(message.contains("cpu_usage"), "{message}");
    assert!(message.contains("allowed lateness"), "{message}");
}

#[tokio::test]
async fn bad_input_is_a_400_in_the_error_shape_never_a_500() {
    let fixture = Fixture::new(Config::default()).await;
    for uri in [
        "/dashboard?window=5m",
        "/dashboard?metric=cpu_usage&window=5m&aggs=median",
        "/dashboard?metric=cpu_usage&window=5m&tags=host",
        "/dashboard?metric=a&metric=b&window=5m",
        "/api/v1/query_range?metric=cpu_usage&window=5m&from=20&to=10",
        "/api/v1/query_range?metric=cpu_usage&window=5m&from=0&to=1000000000",
        "/api/v1/query_range?metric=cpu_usage&window=5m&from=tomorrow",
        "/api/v1/query_range?metric=cpu_usage&window=5m&group_by=host:a",
        "/api/v1/live?window=3m",
    ] {
        let answer = fixture.get(uri).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            answer.body
        );
        assert!(answer.json()["error"]["code"].is_string(), "{uri}");
    }
    let unknown = fixture.get("/nowhere").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["code"], "not_found");
}

#[tokio::test]
async fn query_range_group_by_gives_one_series_per_host_with_points_in_order() {
    let fixture = Fixture::new(Config::default()).await;
    let mut results = Vec::new();
    for i in (0..3).rev() {
        let start = START + i * FIVE_MINUTES;
        results.push(result(
            "cpu_usage",
            "5m",
            &host("web-01"),
            start,
            &[1.0 + i as f64],
        ));
        results.push(result(
            "cpu_usage",
            "5m",
            &host("web-02"),
            start,
            &[10.0 + i as f64],
        ));
        // A second series of web-01 (another tag) merges into web-01's group.
        results.push(result(
            "cpu_usage",
            "5m",
            &[("host", "web-01"), ("env", "canary")],
            start,
            &[100.0],
        ));
    }
    results.push(result("cpu_usage", "5m", &[("env", "prod")], START, &[7.0]));
    fixture.commit(results).await;
    let from = START / 1000;
    let to = "2024-07-17T07:00:00Z";
    let answer = fixture
        .get(&format!(
            "/api/v1/query_range?metric=cpu_usage&window=5m&from={from}&to={to}&group_by=host&aggs=max,count"
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["from_ms"], START);
    assert_eq!(body["to_ms"], START + 3 * FIVE_MINUTES);
    assert_eq!(body["truncated"], false);
    let series = body["series"].as_array().unwrap();
    let tags: Vec<&Value> = series.iter().map(|s| &s["tags"]).collect();
    assert_eq!(
        tags,
        [
            &json!({"host": ""}),
            &json!({"host": "web-01"}),
            &json!({"host": "web-02"})
        ]
    );
    let web01 = series[1]["points"].as_array().unwrap();
    let starts: Vec<i64> = web01
        .iter()
        .map(|p| p["window_start_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(
        starts,
        [START, START + FIVE_MINUTES, START + 2 * FIVE_MINUTES]
    );
    assert_eq!(web01[0]["window_end_ms"], START + FIVE_MINUTES);
    assert_eq!(web01[0]["aggregations"], json!({"max": 100.0, "count": 2}));
    let web02 = series[2]["points"].as_array().unwrap();
    assert_eq!(web02[2]["aggregations"], json!({"max": 12.0, "count": 1}));
}

#[tokio::test]
async fn query_range_without_group_by_merges_everything_and_filters_aggs() {
    let fixture = Fixture::new(Config::default()).await;
    fixture
        .commit(vec![
            result("cpu_usage", "5m", &host("web-01"), START, &[1.0, 2.0]),
            result("cpu_usage", "5m", &host("web-02"), START, &[3.0]),
            result(
                "cpu_usage",
                "5m",
                &[("host", "web-03"), ("env", "dev")],
                START,
                &[50.0],
            ),
        ])
        .await;
    let body = fixture
        .get(&format!(
            "/api/v1/query_range?metric=cpu_usage&window=5m&from={}&to={}&tags=env:prod&aggs=sum,min",
            START / 1000,
            (START + FIVE_MINUTES) / 1000
        ))
        .await
        .json();
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["tags"], json!({}));
    assert_eq!(
        series[0]["points"][0]["aggregations"],
        json!({"sum": 6.0, "min": 1.0})
    );
}

#[tokio::test]
async fn query_range_defaults_to_the_last_hour_and_answers_empty_series() {
    let fixture = Fixture::new(Config::default()).await;
    let before = pulse_core::now_ms();
    let body = fixture
        .get("/api/v1/query_range?metric=cpu_usage&window=1m")
        .await
        .json();
    let to = body["to_ms"].as_i64().unwrap();
    assert!(to >= before);
    assert_eq!(body["from_ms"].as_i64().unwrap(), to - 3_600_000);
    assert_eq!(body["series"], json!([]));
}

#[tokio::test]
async fn query_range_over_the_row_limit_is_truncated_to_whole_windows() {
    let mut config = Config::default();
    config.dashboard.max_points_per_query = 7;
    let fixture = Fixture::new(config).await;
    let mut results = Vec::new();
    for i in 0..4 {
        for name in ["web-01", "web-02", "web-03"] {
            results.push(result(
                "cpu_usage",
                "5m",
                &host(name),
                START + i * FIVE_MINUTES,
                &[1.0],
            ));
        }
    }
    fixture.commit(results).await;
    let body = fixture
        .get(&format!(
            "/api/v1/query_range?metric=cpu_usage&window=5m&from={}&to={}&aggs=count",
            START / 1000,
            (START + 4 * FIVE_MINUTES) / 1000
        ))
        .await
        .json();
    assert_eq!(body["truncated"], true);
    let points = body["series"][0]["points"].as_array().unwrap();
    let starts: Vec<i64> = points
        .iter()
        .map(|p| p["window_start_ms"].as_i64().unwrap())
        .collect();
    // The newest windows, each merged over all three hosts.
    assert_eq!(starts, [START + 2 * FIVE_MINUTES, START + 3 * FIVE_MINUTES]);
    assert!(
        points
            .iter()
            .all(|p| p["aggregations"]["count"] == json!(3))
    );
}

#[tokio::test]
async fn metrics_lists_stored_metrics_and_configured_windows() {
    let fixture = Fixture::new(Config::default()).await;
    fixture
        .commit(vec![
            result("cpu_usage", "5m", &host("web-01"), START, &[1.0]),
            result("cpu_usage", "5m", &host("web-02"), START, &[1.0]),
            result("mem_used", "1m", &host("web-01"), START, &[1.0]),
        ])
        .await;
    let body = fixture.get("/api/v1/metrics").await.json();
    assert_eq!(body["windows"], json!(["1m", "5m", "15m"]));
    let metrics = body["metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics[0]["name"], "cpu_usage");
    assert_eq!(metrics[0]["series"], 2);
    assert_eq!(metrics[0]["last_window_end_ms"], START + FIVE_MINUTES);
}

#[tokio::test]
async fn api_needs_a_read_token_when_configured_but_ops_do_not() {
    let mut config = Config::default();
    config.dashboard.read_tokens = vec!["s3cret".into()];
    let fixture = Fixture::new(config).await;
    let uri = "/api/v1/metrics";
    let missing = fixture.get(uri).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["error"]["code"], "unauthorized");
    let with = |token: &str| {
        Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        fixture.request(with("wrong")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(fixture.request(with("s3cret")).await.status, StatusCode::OK);
    let dashboard = fixture.get("/dashboard?metric=cpu_usage&window=5m").await;
    assert_eq!(dashboard.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        fixture.get("/api/v1/live").await.status,
        StatusCode::UNAUTHORIZED
    );
    for open in ["/", "/healthz", "/readyz", "/metrics"] {
        assert_eq!(fixture.get(open).await.status, StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn ops_endpoints_report_store_readiness_and_dashboard_metrics() {
    let fixture = Fixture::new(Config::default()).await;
    let ready = fixture.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["checks"]["store"]["ok"], true);
    fixture.get("/api/v1/metrics").await;
    let text = fixture.registry_text();
    assert!(
        text.contains("pulse_dashboard_queries_total{endpoint=\"metrics\",source=\"store\"} 1"),
        "{text}"
    );
    assert!(text.contains("route=\"/api/v1/metrics\""), "{text}");
    assert!(
        text.contains("pulse_dashboard_live_subscribers 0"),
        "{text}"
    );
    let index = fixture.get("/").await.json();
    assert!(index["endpoints"]["/dashboard"].is_string());
}

/// Reads the SSE body until it holds a complete `window` event and returns its data.
async fn next_window_event(body: &mut Body) -> Value {
    let mut text = String::new();
    loop {
        let frame = body.frame().await.expect("stream ended").unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        if let Some(event) = text.split("\n\n").find(|e| e.contains("event: window")) {
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("event has data");
            return serde_json::from_str(data).unwrap();
        }
    }
}

#[tokio::test]
async fn live_delivers_a_published_window_and_counts_the_subscriber() {
    let fixture = Fixture::new(Config::default()).await;
    let response = fixture
        .router
        .clone()
        .oneshot(
            Request::get("/api/v1/live?metric=cpu_usage&window=5m")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let wanted = result("cpu_usage", "5m", &host("web-01"), START, &[2.0, 4.0]);
    fixture
        .cache
        .publish(&[
            result("mem_used", "5m", &host("web-01"), START, &[1.0]),
            result("cpu_usage", "1m", &host("web-01"), START, &[1.0]),
            wanted.clone(),
        ])
        .await
        .unwrap();
    let mut body = response.into_body();
    let event = tokio::time::timeout(Duration::from_secs(5), next_window_event(&mut body))
        .await
        .expect("a window event within 5 s");
    assert_eq!(event["metric_name"], "cpu_usage");
    assert_eq!(event["window"], "5m");
    assert_eq!(event["series_id"], wanted.series_id.to_string());
    assert_eq!(event["tags"], json!({"host": "web-01", "env": "prod"}));
    assert_eq!(event["window_start_ms"], START);
    assert_eq!(event["window_end_ms"], START + FIVE_MINUTES);
    assert_eq!(event["aggregations"]["avg"], json!(3.0));
    assert_eq!(event["aggregations"].as_object().unwrap().len(), 10);

    assert!(
        fixture
            .registry_text()
            .contains("pulse_dashboard_live_subscribers 1")
    );
    drop(body);
    assert!(
        fixture
            .registry_text()
            .contains("pulse_dashboard_live_subscribers 0")
    );
}

/// A config with one dashboard, `web`, as `[[dashboards]]` would give it.
fn config_with_board() -> Config {
    Config::from_toml(
        r#"
[[dashboards]]
name = "web"
title = "Web fleet"
[[dashboards.panels]]
metric = "cpu_usage"
group_by = ["host"]
[[dashboards.panels]]
kind = "stat"
title = "CPU p95"
metric = "cpu_usage"
window = "5m"
aggs = "p95"
thresholds = [{ value = 90, color = "red" }]
"#,
    )
    .unwrap()
}

fn html(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn dashboards_lists_default_first_and_answers_each_board_with_defaults_filled() {
    let fixture = Fixture::new(config_with_board()).await;
    fixture
        .commit(vec![
            result("mem_used", "1m", &host("db-01"), START, &[1.0]),
            result("cpu_usage", "1m", &host("web-01"), START, &[1.0]),
        ])
        .await;
    let list = fixture.get("/api/v1/dashboards").await.json();
    let names: Vec<&str> = list["dashboards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "web"]);
    assert_eq!(list["windows"], json!(["1m", "5m", "15m"]));

    let web = fixture.get("/api/v1/dashboards/web").await.json();
    assert_eq!(web["title"], "Web fleet");
    assert_eq!(
        web["panels"][0]["window"], "1m",
        "the first configured window"
    );
    assert_eq!(web["panels"][0]["aggs"], json!(["avg"]));
    assert_eq!(web["panels"][1]["thresholds"][0]["color"], "red");

    let default = fixture.get("/api/v1/dashboards/default").await.json();
    let metrics: Vec<&str> = default["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metric"].as_str().unwrap())
        .collect();
    assert_eq!(metrics, ["cpu_usage", "mem_used"], "one panel per metric");

    let missing = fixture.get("/api/v1/dashboards/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "no_such_dashboard");
    assert_eq!(
        missing.json()["error"]["details"]["dashboards"],
        json!(["default", "web"])
    );
}

#[tokio::test]
async fn tags_lists_the_keys_and_values_of_the_series_in_range() {
    let fixture = Fixture::new(Config::default()).await;
    fixture
        .commit(vec![
            result("cpu_usage", "5m", &host("web-01"), START, &[1.0]),
            result("cpu_usage", "5m", &host("web-02"), START, &[1.0]),
            result("cpu_usage", "5m", &[("host", "db-01")], START, &[1.0]),
            result(
                "cpu_usage",
                "5m",
                &host("web-09"),
                START - 86_400_000,
                &[1.0],
            ),
            result("mem_used", "5m", &[("zone", "a")], START, &[1.0]),
        ])
        .await;
    let range = format!(
        "from={}&to={}",
        START / 1000 - 60,
        (START + FIVE_MINUTES) / 1000
    );
    let body = fixture
        .get(&format!("/api/v1/tags?metric=cpu_usage&window=5m&{range}"))
        .await
        .json();
    assert_eq!(
        body["keys"],
        json!({"env": ["prod"], "host": ["db-01", "web-01", "web-02"]})
    );
    assert_eq!(body["series"], 3);
    assert_eq!(body["truncated"], false);
    let narrowed = fixture
        .get(&format!(
            "/api/v1/tags?metric=cpu_usage&window=5m&tags=env:prod&{range}"
        ))
        .await
        .json();
    assert_eq!(narrowed["keys"]["host"], json!(["web-01", "web-02"]));
    let bad = fixture.get("/api/v1/tags?metric=cpu_usage&window=7m").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn browsers_get_the_page_and_api_clients_the_index() {
    let fixture = Fixture::new(config_with_board()).await;
    for uri in ["/", "/d/web", "/d/default"] {
        let page = fixture.request(html(uri)).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert_eq!(
            page.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(page.body.contains("/assets/app.js"), "{uri}");
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    assert!(fixture.get("/").await.json()["endpoints"].is_object());

    // An unknown board: the page with a 404 for browsers, the error shape otherwise.
    let page = fixture.request(html("/d/nope")).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.body.contains("<html"));
    let json = fixture.get("/d/nope").await;
    assert_eq!(json.status, StatusCode::NOT_FOUND);
    assert_eq!(json.json()["error"]["code"], "no_such_dashboard");
}

#[tokio::test]
async fn assets_are_embedded_typed_and_revalidated_with_etags() {
    let fixture = Fixture::new(Config::default()).await;
    for (path, content_type) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        (
            "/assets/uPlot.iife.min.js",
            "text/javascript; charset=utf-8",
        ),
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let asset = fixture.get(path).await;
        assert_eq!(asset.status, StatusCode::OK, "{path}");
        assert_eq!(asset.headers[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(asset.headers[header::CACHE_CONTROL], "no-cache");
        assert!(!asset.body.is_empty());
        let etag = asset.headers[header::ETAG].to_str().unwrap().to_string();
        let again = fixture
            .request(
                Request::get(path)
                    .header(header::IF_NONE_MATCH, &etag)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.body.is_empty());
        assert_eq!(again.headers[header::ETAG], etag.as_str());
    }
    let missing = fixture.get("/assets/nope.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "not_found");
    let traversal = fixture.get("/assets/../Cargo.toml").await;
    assert_ne!(traversal.status, StatusCode::OK);
}

#[tokio::test]
async fn with_read_tokens_the_pages_stay_open_and_the_new_endpoints_need_one() {
    let mut config = config_with_board();
    config.dashboard.read_tokens = vec!["s3cret".into()];
    let fixture = Fixture::new(config).await;
    for open in ["/d/web", "/assets/app.js"] {
        assert_eq!(
            fixture.request(html(open)).await.status,
            StatusCode::OK,
            "{open}"
        );
    }
    for closed in [
        "/api/v1/dashboards",
        "/api/v1/dashboards/web",
        "/api/v1/tags?metric=cpu_usage&window=1m",
    ] {
        assert_eq!(
            fixture.get(closed).await.status,
            StatusCode::UNAUTHORIZED,
            "{closed}"
        );
    }
}

/// An open window as the processor publishes it, kept for a minute.
fn open(result: WindowResult) -> Partial {
    Partial {
        result,
        expires_ms: pulse_core::now_ms() + 60_000,
    }
}

#[tokio::test]
async fn partial_true_merges_the_open_window_and_marks_it() {
    let fixture = Fixture::new(Config::default()).await;
    fixture
        .commit(vec![result(
            "cpu_usage",
            "5m",
            &host("web-01"),
            START,
            &[1.0],
        )])
        .await;
    let next = START + FIVE_MINUTES;
    fixture
        .cache
        .put_partial(&[
            open(result(
                "cpu_usage",
                "5m",
                &host("web-01"),
                next,
                &[2.0, 6.0],
            )),
            open(result("cpu_usage", "5m", &host("web-02"), next, &[4.0])),
            // The closed window's partial, not yet removed: never counted twice.
            open(result("cpu_usage", "5m", &host("web-01"), START, &[1.0])),
        ])
        .await
        .unwrap();

    let plain = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&aggs=count")
        .await
        .json();
    assert_eq!(plain["window_start_ms"], START, "{plain}");
    assert!(plain.get("partial").is_none(), "{plain}");

    let live = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&aggs=count,max&partial=true")
        .await
        .json();
    assert_eq!(
        (&live["window_start_ms"], &live["partial"], &live["series"]),
        (&json!(next), &json!(true), &json!(2)),
        "{live}"
    );
    assert_eq!(live["aggregations"], json!({"count": 3, "max": 6.0}));
    let filtered = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&aggs=count&partial=true&tags=host:web-02")
        .await
        .json();
    assert_eq!(filtered["aggregations"]["count"], 1, "{filtered}");

    let range = format!(
        "/api/v1/query_range?metric=cpu_usage&window=5m&from={}&to={}&aggs=count",
        START / 1000,
        (next + FIVE_MINUTES) / 1000
    );
    let closed = fixture.get(&range).await.json();
    assert_eq!(
        closed["series"][0]["points"].as_array().unwrap().len(),
        1,
        "{closed}"
    );
    let both = fixture.get(&format!("{range}&partial=true")).await.json();
    assert_eq!(
        both["series"][0]["points"],
        json!([
            {"window_start_ms": START, "window_end_ms": START + FIVE_MINUTES, "aggregations": {"count": 1}},
            {"window_start_ms": next, "window_end_ms": next + FIVE_MINUTES, "aggregations": {"count": 3}, "partial": true},
        ]),
        "{both}"
    );

    // Recorded closed, the window is answered whole and unmarked.
    fixture
        .cache
        .put_latest(&[
            result("cpu_usage", "5m", &host("web-01"), next, &[2.0, 6.0]),
            result("cpu_usage", "5m", &host("web-02"), next, &[4.0]),
        ])
        .await
        .unwrap();
    let closed = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&aggs=count&partial=true")
        .await
        .json();
    assert_eq!(closed["window_start_ms"], next, "{closed}");
    assert_eq!(closed["aggregations"]["count"], 3, "{closed}");
    assert!(closed.get("partial").is_none(), "{closed}");
}

#[tokio::test]
async fn partial_true_with_the_cache_down_answers_the_closed_windows() {
    let fixture = Fixture::with_cache(Config::default(), Some(Arc::new(DownCache))).await;
    fixture
        .commit(vec![result(
            "cpu_usage",
            "5m",
            &host("web-01"),
            START,
            &[4.0],
        )])
        .await;
    let answer = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&aggs=max&partial=true")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["aggregations"]["max"], 4.0);
    let live = fixture.get("/api/v1/live?partial=true").await;
    assert_eq!(live.status, StatusCode::SERVICE_UNAVAILABLE);
    let bad = fixture
        .get("/dashboard?metric=cpu_usage&window=5m&partial=maybe")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["code"], "bad_query");
}
