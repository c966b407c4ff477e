//! The gateway's HTTP contract, driven through its router against the embedded
//! SQLite bus (and, for failure paths, producers that refuse or stall).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use pulse_core::Point;
use pulse_core::codec::record::{decode_key, decode_point};
use pulse_core::config::Config;
use pulse_engine::bus::embedded::SqliteBus;
use pulse_engine::bus::{BusConsumer, BusError, BusProducer, ConsumerEvent, OutgoingRecord};
use pulse_gateway::Gateway;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::Notify;
use tower::ServiceExt;

/// A gateway in front of a fresh embedded bus.
struct Harness {
    router: Router,
    bus: Arc<SqliteBus>,
    _dir: TempDir,
}

async fn harness(config: Config) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(&dir.path().join("bus.db"), 4)
        .await
        .unwrap();
    let router = Gateway::router(&config, bus.clone(), registry());
    Harness {
        router,
        bus,
        _dir: dir,
    }
}

fn registry() -> Arc<Mutex<Registry>> {
    Arc::new(Mutex::new(Registry::default()))
}

fn now_secs() -> i64 {
    pulse_core::now_ms() / 1000
}

/// The point of the original contract, stamped with the current time so that it
/// passes the default `limits.max_past`.
fn original_point(timestamp: i64) -> String {
    format!(
        r#"{{"metric_name":"cpu_usage","value":92.5,"timestamp":{timestamp},"tags":{{"host":"web-01","env":"prod"}}}}"#
    )
}

fn point(metric: &str, value: f64) -> String {
    json!({"metric_name": metric, "value": value, "tags": {"host": "web-01"}}).to_string()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body.to_vec())
}

async fn post(
    router: &Router,
    path: &str,
    headers: &[(header::HeaderName, &str)],
    body: impl Into<Body>,
) -> Answer {
    let mut request = Request::post(path);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    let (status, headers, body) = send(router, request.body(body.into()).unwrap()).await;
    let body = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(router: &Router, path: &str) -> (StatusCode, String) {
    let (status, _, body) = send(router, Request::get(path).body(Body::empty()).unwrap()).await;
    (status, String::from_utf8(body).unwrap())
}

/// Every point on the bus, checking that each record is keyed by its series id.
async fn stored_points(bus: &Arc<SqliteBus>) -> Vec<Point> {
    let mut consumer = bus.consumer();
    let mut points = Vec::new();
    loop {
        match consumer
            .next(10_000, Duration::from_millis(50))
            .await
            .unwrap()
        {
            ConsumerEvent::Records(records) => {
                for record in records {
                    let point = decode_point(&record.value).unwrap();
                    assert_eq!(decode_key(&record.key).unwrap(), point.series_id());
                    points.push(point);
                }
            }
            ConsumerEvent::Idle => return points,
            ConsumerEvent::Assigned(_) | ConsumerEvent::Revoked(_) => {}
        }
    }
}

async fn stored_values(bus: &Arc<SqliteBus>) -> Vec<f64> {
    let mut values: Vec<f64> = stored_points(bus).await.iter().map(|p| p.value).collect();
    values.sort_by(f64::total_cmp);
    values
}

#[tokio::test]
async fn the_original_single_point_is_accepted_and_lands_on_the_bus() {
    let h = harness(Config::default()).await;
    let timestamp = now_secs();
    let answer = post(&h.router, "/metrics", &[], original_point(timestamp)).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(answer.body, json!({"accepted": 1, "rejected": 0}));

    let points = stored_points(&h.bus).await;
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].metric, "cpu_usage");
    assert_eq!(points[0].value, 92.5);
    assert_eq!(points[0].timestamp_ms, timestamp * 1000);
    assert_eq!(points[0].tags["host"], "web-01");
    assert_eq!(points[0].tags["env"], "prod");
}

#[tokio::test]
async fn arrays_and_ndjson_are_accepted_on_both_routes() {
    let h = harness(Config::default()).await;
    let array = format!("[{},{}]", point("a", 1.0), point("a", 2.0));
    let ndjson = format!("{}\n{}\n", point("b", 3.0), point("b", 4.0));
    for path in ["/metrics", "/v1/metrics"] {
        for body in [&array, &ndjson] {
            let answer = post(&h.router, path, &[], body.clone()).await;
            assert_eq!(
                answer.status,
                StatusCode::ACCEPTED,
                "{path}: {}",
                answer.body
            );
            assert_eq!(answer.body["accepted"], 2);
        }
    }
    assert_eq!(
        stored_values(&h.bus).await,
        [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    );
}

#[tokio::test]
async fn gzip_and_zstd_batches_are_decompressed() {
    let h = harness(Config::default()).await;
    let ndjson = format!("{}\n{}", point("m", 1.0), point("m", 2.0));
    let zstd = zstd::encode_all(ndjson.as_bytes(), 3).unwrap();
    for (encoding, body) in [("gzip", gzip(ndjson.as_bytes())), ("zstd", zstd)] {
        let answer = post(
            &h.router,
            "/v1/metrics",
            &[(header::CONTENT_ENCODING, encoding)],
            body,
        )
        .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{encoding}");
        assert_eq!(answer.body["accepted"], 2);
    }
    assert_eq!(stored_values(&h.bus).await, [1.0, 1.0, 2.0, 2.0]);
}

#[tokio::test]
async fn a_mixed_batch_is_400_with_index_and_field_and_its_valid_points_are_stored() {
    let h = harness(Config::default()).await;
    let body = format!(
        "[{},{},{},{},{}]",
        point("ok", 1.0),
        r#"{"metric_name":"9lives","value":1}"#,
        point("ok", 2.0),
        r#"{"metric_name":"ok","value":3,"timestamp":1}"#,
        point("ok", 3.0),
    );
    let answer = post(&h.router, "/v1/metrics", &[], body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let error = &answer.body["error"];
    assert_eq!(error["code"], "invalid_points");
    assert_eq!(
        error["message"],
        "2 of 5 points were rejected; the 3 valid points were accepted"
    );
    let details = &error["details"];
    assert_eq!(details["accepted"], 3);
    assert_eq!(details["rejected"], 2);
    assert_eq!(details["errors_omitted"], 0);
    assert_eq!(details["errors"][0]["index"], 1);
    assert_eq!(details["errors"][0]["field"], "metric_name");
    assert_eq!(details["errors"][0]["reason"], "invalid_name");
    assert_eq!(details["errors"][1]["index"], 3);
    assert_eq!(details["errors"][1]["field"], "timestamp");
    assert_eq!(details["errors"][1]["reason"], "too_old");

    assert_eq!(stored_values(&h.bus).await, [1.0, 2.0, 3.0]);
}

#[tokio::test]
async fn truncated_json_is_400_invalid_json_with_line_and_column() {
    let h = harness(Config::default()).await;
    let answer = post(
        &h.router,
        "/v1/metrics",
        &[],
        r#"[{"metric_name":"a","value":1},{"metric_na"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["code"], "invalid_json");
    assert_eq!(answer.body["error"]["details"]["line"], 1);
    assert!(answer.body["error"]["details"]["column"].as_u64().unwrap() > 30);
    assert!(stored_points(&h.bus).await.is_empty());
}

#[tokio::test]
async fn wrong_json_types_are_rejected_per_field() {
    let h = harness(Config::default()).await;
    let body = [
        r#"{"metric_name":"a","value":"1"}"#,
        r#"{"metric_name":7,"value":1}"#,
        r#"{"metric_name":"a","value":1,"timestamp":"now"}"#,
        r#"{"metric_name":"a","value":1,"tags":{"host":3}}"#,
        r#"[1,2]"#,
    ]
    .join("\n");
    let answer = post(&h.router, "/metrics", &[], body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["details"]["accepted"], 0);
    let fields: Vec<&Value> = answer.body["error"]["details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["field"])
        .collect();
    assert_eq!(
        fields,
        [
            &json!("value"),
            &json!("metric_name"),
            &json!("timestamp"),
            &json!("tags"),
            &Value::Null
        ]
    );
    assert!(stored_points(&h.bus).await.is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_json_413_before_and_after_decompression() {
    let mut config = Config::default();
    config.gateway.max_body_bytes = 2048;
    config.gateway.max_decompressed_bytes = 4096;
    let h = harness(config).await;

    let large = format!("[{}]", vec![point("m", 1.0); 50].join(","));
    assert!(large.len() > 2048);
    let answer = post(&h.router, "/v1/metrics", &[], large).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body["error"]["code"], "body_too_large");
    assert_eq!(answer.body["error"]["details"]["limit_bytes"], 2048);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");

    let bomb = gzip(&vec![b' '; 1 << 16]);
    assert!(
        bomb.len() < 2048,
        "the compressed body itself is within the limit"
    );
    let answer = post(
        &h.router,
        "/v1/metrics",
        &[(header::CONTENT_ENCODING, "gzip")],
        bomb,
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body["error"]["code"], "body_too_large");
    assert_eq!(answer.body["error"]["details"]["limit_bytes"], 4096);
    assert!(stored_points(&h.bus).await.is_empty());
}

#[tokio::test]
async fn too_many_points_in_one_request_is_413() {
    let mut config = Config::default();
    config.gateway.max_points_per_request = 2;
    let h = harness(config).await;
    let body = format!(
        "[{},{},{}]",
        point("m", 1.0),
        point("m", 2.0),
        point("m", 3.0)
    );
    let answer = post(&h.router, "/v1/metrics", &[], body).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body["error"]["code"], "too_many_points");
    assert_eq!(answer.body["error"]["details"]["limit"], 2);
    assert!(stored_points(&h.bus).await.is_empty());
}

#[tokio::test]
async fn an_unknown_content_encoding_is_415() {
    let h = harness(Config::default()).await;
    let answer = post(
        &h.router,
        "/v1/metrics",
        &[(header::CONTENT_ENCODING, "br")],
        point("m", 1.0),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(answer.body["error"]["code"], "unsupported_encoding");
}

#[tokio::test]
async fn empty_and_corrupt_bodies_are_400_with_their_own_codes() {
    let h = harness(Config::default()).await;
    let answer = post(&h.router, "/v1/metrics", &[], " \n").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["code"], "empty_body");

    let answer = post(
        &h.router,
        "/v1/metrics",
        &[(header::CONTENT_ENCODING, "gzip")],
        "not gzip at all",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["code"], "corrupt_body");
    assert_eq!(answer.body["error"]["details"]["encoding"], "gzip");
}

#[tokio::test]
async fn ingest_needs_a_bearer_token_when_tokens_are_configured() {
    let mut config = Config::default();
    config.gateway.tokens = vec!["secret-1".into(), "secret-2".into()];
    let h = harness(config).await;
    let body = point("m", 1.0);

    for path in ["/metrics", "/v1/metrics"] {
        let answer = post(&h.router, path, &[], body.clone()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(answer.headers[header::WWW_AUTHENTICATE], "Bearer");

        let wrong = [(header::AUTHORIZATION, "Bearer secret-3")];
        let answer = post(&h.router, path, &wrong, body.clone()).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}");

        let right = [(header::AUTHORIZATION, "Bearer secret-2")];
        let answer = post(&h.router, path, &right, body.clone()).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{path}");
    }
    assert_eq!(stored_points(&h.bus).await.len(), 2);

    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(&h.router, path).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn a_writer_over_its_rate_gets_429_with_retry_after_and_nothing_is_stored() {
    let mut config = Config::default();
    config.gateway.tokens = vec!["team-a".into(), "team-b".into()];
    config.gateway.rate_limit = 1;
    config.gateway.max_points_per_request = 3;
    let h = harness(config).await;
    let batch = |n: usize| format!("[{}]", vec![point("m", 1.0); n].join(","));
    let (a, b) = (
        [(header::AUTHORIZATION, "Bearer team-a")],
        [(header::AUTHORIZATION, "Bearer team-b")],
    );

    // The burst is max_points_per_request: a full request passes at once.
    let answer = post(&h.router, "/v1/metrics", &a, batch(3)).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let answer = post(&h.router, "/v1/metrics", &a, batch(2)).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.body["error"]["code"], "rate_limited");
    let retry_after: u64 = answer.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // Invalid points take nothing from the bucket: the request is still
    // answered for what it carries.
    let answer = post(
        &h.router,
        "/v1/metrics",
        &a,
        r#"{"metric_name":"9","value":1}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    // Another writer has its own bucket.
    let answer = post(&h.router, "/v1/metrics", &b, batch(3)).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(stored_points(&h.bus).await.len(), 6);

    let (_, metrics) = get(&h.router, "/metrics").await;
    assert!(
        metrics.contains(r#"outcome="rate_limited""#),
        "the refusal is counted: {metrics}"
    );
}

#[tokio::test]
async fn new_series_over_the_active_limit_are_refused_per_point_while_known_ones_pass() {
    let mut config = Config::default();
    config.gateway.max_active_series = 2;
    let h = harness(config).await;
    let body = format!(
        "[{},{},{},{},{}]",
        point("a", 1.0),
        r#"{"metric_name":"9lives","value":1}"#,
        point("b", 2.0),
        point("c", 3.0),
        point("a", 4.0),
    );
    let answer = post(&h.router, "/v1/metrics", &[], body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let details = &answer.body["error"]["details"];
    assert_eq!(details["accepted"], 3);
    assert_eq!(details["rejected"], 2);
    // The errors name the points by their place in the batch, in order.
    assert_eq!(details["errors"][0]["index"], 1);
    assert_eq!(details["errors"][0]["reason"], "invalid_name");
    assert_eq!(details["errors"][1]["index"], 3);
    assert_eq!(details["errors"][1]["reason"], "too_many_series");
    assert_eq!(stored_values(&h.bus).await, [1.0, 2.0, 4.0]);

    // Known series keep flowing at the limit.
    let body = format!("[{},{}]", point("b", 5.0), point("a", 6.0));
    let answer = post(&h.router, "/v1/metrics", &[], body).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);

    let (_, metrics) = get(&h.router, "/metrics").await;
    assert!(
        metrics.contains("pulse_gateway_active_series 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"pulse_gateway_points_rejected_total{reason="too_many_series"} 1"#),
        "{metrics}"
    );
}

/// A bus that is down: every send and readiness check fails.
struct DownBus;

#[async_trait]
impl BusProducer for DownBus {
    async fn send(&self, _: Vec<OutgoingRecord>) -> Result<(), BusError> {
        Err(BusError::Unavailable("broker unreachable".into()))
    }

    async fn ready(&self) -> Result<(), BusError> {
        Err(BusError::Unavailable("broker unreachable".into()))
    }
}

#[tokio::test]
async fn a_down_bus_gives_503_with_retry_after_and_acknowledges_nothing() {
    let router = Gateway::router(&Config::default(), Arc::new(DownBus), registry());
    let answer = post(&router, "/v1/metrics", &[], point("m", 1.0)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");
    assert_eq!(answer.body["error"]["code"], "unavailable");
    assert!(answer.body["error"].get("details").is_none());

    let (status, metrics) = get(&router, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("pulse_gateway_points_accepted_total 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"pulse_gateway_bus_send_errors_total{error="unavailable"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"pulse_gateway_requests_total{route="/v1/metrics",outcome="bus_unavailable"} 1"#
        ),
        "{metrics}"
    );

    let (status, readiness) = get(&router, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(readiness.contains("broker unreachable"), "{readiness}");
}

#[tokio::test]
async fn metrics_show_rejected_points_by_reason_and_requests_by_outcome() {
    let h = harness(Config::default()).await;
    let body = format!(
        "{}\n{}",
        point("m", 1.0),
        r#"{"metric_name":"m","value":"high"}"#
    );
    let answer = post(&h.router, "/v1/metrics", &[], body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    post(&h.router, "/metrics", &[], point("m", 2.0)).await;
    post(
        &h.router,
        "/v1/metrics",
        &[(header::CONTENT_ENCODING, "br")],
        "x",
    )
    .await;

    let (status, metrics) = get(&h.router, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        r#"pulse_gateway_points_rejected_total{reason="invalid_value"} 1"#,
        r#"pulse_gateway_points_rejected_total{reason="too_old"} 0"#,
        "pulse_gateway_points_received_total 3",
        "pulse_gateway_points_accepted_total 2",
        r#"pulse_gateway_requests_total{route="/v1/metrics",outcome="invalid_points"} 1"#,
        r#"pulse_gateway_requests_total{route="/metrics",outcome="accepted"} 1"#,
        r#"pulse_gateway_requests_total{route="/v1/metrics",outcome="rejected_body"} 1"#,
        r#"pulse_gateway_body_rejections_total{code="unsupported_encoding"} 1"#,
        "pulse_gateway_bus_send_duration_seconds_count 2",
        r#"pulse_http_request_duration_seconds_count{method="POST",route="/v1/metrics",status="400"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
}

#[tokio::test]
async fn healthz_and_readyz_are_200_when_the_bus_is_ready() {
    let h = harness(Config::default()).await;
    let (status, body) = get(&h.router, "/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get(&h.router, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["checks"]["bus"]["ok"], true);
}

/// A bus that never finishes a send, holding its request's processing slot.
struct StuckBus {
    entered: Notify,
}

#[async_trait]
impl BusProducer for StuckBus {
    async fn send(&self, _: Vec<OutgoingRecord>) -> Result<(), BusError> {
        self.entered.notify_one();
        std::future::pending().await
    }

    async fn ready(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn requests_beyond_max_in_flight_get_503_overloaded_after_waiting() {
    let mut config = Config::default();
    config.gateway.max_in_flight = 1;
    let bus = Arc::new(StuckBus {
        entered: Notify::new(),
    });
    let router = Gateway::router(&config, bus.clone(), registry());

    let first = Request::post("/v1/metrics")
        .body(Body::from(point("m", 1.0)))
        .unwrap();
    let stuck = tokio::spawn(router.clone().oneshot(first));
    bus.entered.notified().await;

    let started = tokio::time::Instant::now();
    let answer = post(&router, "/v1/metrics", &[], point("m", 2.0)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["error"]["code"], "overloaded");
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");
    assert!(started.elapsed() >= Duration::from_secs(2));
    stuck.abort();
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_is_408_and_frees_its_slot() {
    let mut config = Config::default();
    config.gateway.max_in_flight = 1;
    // The bus is never reached: these requests fail on their bodies.
    let router = Gateway::router(&config, Arc::new(DownBus), registry());
    let trickle = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let request = Request::post("/v1/metrics")
        .body(Body::from_stream(trickle))
        .unwrap();
    let (status, _, body) = send(&router, request).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "body_timeout");

    // With the only slot still held, this would be 503 `overloaded`.
    let answer = post(&router, "/v1/metrics", &[], " ").await;
    assert_eq!(answer.body["error"]["code"], "empty_body");
}

#[tokio::test]
async fn a_refused_request_uses_no_active_series_place() {
    let mut config = Config::default();
    config.gateway.max_active_series = 2;
    config.gateway.rate_limit = 1;
    config.gateway.max_points_per_request = 1;
    let h = harness(config).await;
    assert_eq!(
        post(&h.router, "/v1/metrics", &[], point("a", 1.0))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    // Over the rate: refused as a whole, so its new series `b` takes nothing.
    let answer = post(&h.router, "/v1/metrics", &[], point("b", 1.0)).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    let (_, metrics) = get(&h.router, "/metrics").await;
    assert!(
        metrics.contains("pulse_gateway_active_series 1"),
        "only `a` is active, `b` was refused: {metrics}"
    );
}

#[tokio::test]
async fn a_body_still_arriving_holds_no_processing_slot() {
    let mut config = Config::default();
    config.gateway.max_in_flight = 1;
    let h = harness(config).await;
    let trickle = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let slow = Request::post("/v1/metrics")
        .body(Body::from_stream(trickle))
        .unwrap();
    let slow = tokio::spawn(h.router.clone().oneshot(slow));
    tokio::task::yield_now().await;
    // The only slot is free for a client whose body is complete.
    let answer = post(&h.router, "/v1/metrics", &[], point("m", 1.0)).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    slow.abort();
}

/// Bodies a hostile or broken client might send: random bytes, JSON-like noise,
/// and point objects with every field of the wrong type or range.
fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    let scalar = prop_oneof![
        Just("1".to_string()),
        Just("null".to_string()),
        Just("1e999".to_string()),
        Just("-0".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        "[0-9.eE+-]{1,12}",
        "\"[a-z \\n\\u{0}-\\u{1f}]{0,6}\"",
    ];
    let name = any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap());
    let object = (
        prop_oneof![name.clone(), scalar.clone()],
        scalar.clone(),
        scalar.clone(),
        prop::collection::btree_map(any::<String>(), scalar.clone(), 0..3),
    )
        .prop_map(|(name, value, timestamp, tags)| {
            let tags: Vec<String> = tags
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                .collect();
            format!(
                r#"{{"metric_name":{name},"value":{value},"timestamp":{timestamp},"tags":{{{}}}}}"#,
                tags.join(",")
            )
        });
    prop_oneof![
        any::<Vec<u8>>(),
        "[\\[\\]{}\",:0-9a-z_ .eE+\\n-]{0,200}".prop_map(String::into_bytes),
        prop::collection::vec(object.clone(), 1..5)
            .prop_map(|v| format!("[{}]", v.join(",")).into_bytes()),
        prop::collection::vec(object, 1..5).prop_map(|v| v.join("\n").into_bytes()),
    ]
}

#[test]
fn hostile_bodies_never_get_a_server_error() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h = runtime.block_on(harness(Config::default()));
    let encodings = prop_oneof![
        Just(None),
        Just(Some("gzip")),
        Just(Some("zstd")),
        Just(Some("identity")),
        Just(Some("br")),
    ];
    proptest!(
        ProptestConfig::with_cases(300),
        |(body in hostile_body(), encoding in encodings, compress in any::<bool>())| {
            let body = match (encoding, compress) {
                (Some("gzip"), true) => gzip(&body),
                (Some("zstd"), true) => zstd::encode_all(&body[..], 1).unwrap(),
                _ => body,
            };
            let headers: Vec<_> = encoding.map(|e| (header::CONTENT_ENCODING, e)).into_iter().collect();
            let answer = runtime.block_on(post(&h.router, "/v1/metrics", &headers, body));
            prop_assert!(
                answer.status == StatusCode::ACCEPTED || answer.status.is_client_error(),
                "{} {}", answer.status, answer.body
            );
        }
    );
}

/// A bus that holds each send until released, then takes it.
struct GatedBus {
    entered: Notify,
    release: Notify,
}

#[async_trait]
impl BusProducer for GatedBus {
    async fn send(&self, _: Vec<OutgoingRecord>) -> Result<(), BusError> {
        self.entered.notify_one();
        self.release.notified().await;
        Ok(())
    }

    async fn ready(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// A client that hangs up while its points are on their way to the bus gets
/// no answer, but the points are written, so they are counted.
#[tokio::test]
async fn points_written_for_a_client_that_hung_up_are_counted() {
    let bus = Arc::new(GatedBus {
        entered: Notify::new(),
        release: Notify::new(),
    });
    let router = Gateway::router(&Config::default(), bus.clone(), registry());
    let request = Request::post("/v1/metrics")
        .body(Body::from(format!(
            "[{}]",
            vec![point("m", 1.0); 3].join(",")
        )))
        .unwrap();
    let client = tokio::spawn(router.clone().oneshot(request));
    bus.entered.notified().await;
    client.abort();
    assert!(
        client.await.unwrap_err().is_cancelled(),
        "the client hung up"
    );
    bus.release.notify_one();
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = get(&router, "/metrics").await.1;
        if metrics.contains("pulse_gateway_points_accepted_total 3\n") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the 3 points written to the bus are not counted: {metrics}");
}

/// A snappy-compressed remote write request, as Prometheus sends it.
fn remote_write_body(series: &[(&str, &str, f64)]) -> Vec<u8> {
    use prost::Message;
    use pulse_core::codec::remote_write::{Label, Sample, TimeSeries, WriteRequest};
    let now = pulse_core::now_ms();
    let request = WriteRequest {
        timeseries: series
            .iter()
            .map(|&(name, pod, value)| TimeSeries {
                labels: vec![
                    Label {
                        name: "__name__".into(),
                        value: name.into(),
                    },
                    Label {
                        name: "pod".into(),
                        value: pod.into(),
                    },
                ],
                samples: vec![Sample {
                    value,
                    timestamp: now,
                }],
            })
            .collect(),
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .unwrap()
}

#[tokio::test]
async fn remote_write_takes_samples_with_the_same_auth_limits_and_answers() {
    let mut config = Config::default();
    config.gateway.tokens = vec!["secret".into()];
    config.gateway.max_points_per_request = 3;
    let h = harness(config).await;
    let path = "/api/v1/write";
    let auth = (header::AUTHORIZATION, "Bearer secret");
    let snappy = (header::CONTENT_ENCODING, "snappy");
    let body = remote_write_body(&[("temp", "a", 21.5), ("temp", "b", 19.0)]);

    let answer = post(&h.router, path, std::slice::from_ref(&snappy), body.clone()).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = post(&h.router, path, std::slice::from_ref(&auth), body.clone()).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(answer.body["error"]["code"], "unsupported_encoding");
    let answer = post(
        &h.router,
        path,
        &[auth.clone(), snappy.clone()],
        &b"not snappy"[..],
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["code"], "corrupt_body");
    let many = remote_write_body(&[
        ("a", "1", 1.0),
        ("a", "2", 1.0),
        ("a", "3", 1.0),
        ("a", "4", 1.0),
    ]);
    let answer = post(&h.router, path, &[auth.clone(), snappy.clone()], many).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body["error"]["code"], "too_many_points");
    // A name outside Pulse's alphabet is refused per sample; the rest is taken.
    let mixed = remote_write_body(&[("temp", "c", 20.0), ("9bad", "c", 1.0)]);
    let answer = post(&h.router, path, &[auth.clone(), snappy.clone()], mixed).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["details"]["errors"][0]["index"], 1);

    let answer = post(&h.router, path, &[auth, snappy], body).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 2);
    assert_eq!(stored_values(&h.bus).await, [19.0, 20.0, 21.5]);
}
