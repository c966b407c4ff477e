//! `POST /metrics` and `POST /v1/metrics` on localhost: the gateway's contract,
//! with the gateway's code. Bodies are decoded and validated by
//! `pulse_core::codec::body`, and answered by `pulse_server::ingest`, so an app
//! can point at the sidecar or the gateway and see the same answers.
//!
//! `202` means the points are in the buffer on disk: they survive a crash of
//! the sidecar and reach the gateway at least once. `503` + `Retry-After` means
//! the buffer could not take them; nothing of that request was kept.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use pulse_core::codec::body::ParsedBatch;
use pulse_server::ApiError;
use pulse_server::edge::{BodyEdge, DecodeError, content_encoding};
use pulse_server::http_metrics::{HttpMetrics, track};
use pulse_server::ingest::points_answer;

use super::Intake;
use crate::config::HttpConfig;

const RECEIVER: &str = "http";

pub(crate) struct Receiver {
    intake: Arc<Intake>,
    config: HttpConfig,
    edge: BodyEdge,
}

/// The receiver's routes, with request latency tracked.
pub fn router(intake: Arc<Intake>, config: HttpConfig, http_metrics: HttpMetrics) -> Router {
    let edge = BodyEdge {
        budget: intake.budget.clone(),
        timeout: intake.body_timeout,
        max_body_bytes: config.max_body_bytes,
        max_decompressed_bytes: config.max_decompressed_bytes,
    };
    let receiver = Arc::new(Receiver {
        intake,
        config,
        edge,
    });
    Router::new()
        .route("/metrics", post(receive))
        .route("/v1/metrics", post(receive))
        .with_state(receiver)
        .merge(pulse_server::openapi::router(&crate::openapi::receiver()))
        .route_layer(from_fn_with_state(http_metrics, track))
}

/// Takes points into the sidecar's buffer: the gateway's contract, where 202
/// means "in the buffer on disk".
#[utoipa::path(
    post,
    path = "/v1/metrics",
    tag = "ingest",
    params(pulse_server::ingest::ContentEncoding),
    request_body(
        description = "One point, an array of points, or NDJSON (one point per line)",
        content(
            (pulse_server::ingest::IngestBody = "application/json"),
            (String = "application/x-ndjson", example = "{\"metric_name\":\"mem_used\",\"value\":1024,\"tags\":{\"host\":\"db-01\"}}\n")
        )
    ),
    responses(
        (status = 202, description = "Every point is in the sidecar's buffer on disk", body = pulse_server::ingest::Receipt),
        (status = 400, description = "`invalid_points`: some points were invalid (`details` is `InvalidPoints`; the valid ones were buffered); `invalid_json`, `empty_body`, `corrupt_body`: the body as a whole cannot be read", body = pulse_server::openapi::ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive within `edge.body_timeout`", body = pulse_server::openapi::ErrorBody),
        (status = 413, description = "`body_too_large` (over `http.max_body_bytes`, before or after decompression) or `too_many_points` (over `http.max_points_per_request`)", body = pulse_server::openapi::ErrorBody),
        (status = 415, description = "`unsupported_encoding`: a `Content-Encoding` other than identity, gzip, zstd", body = pulse_server::openapi::ErrorBody),
        (status = 503, description = "`unavailable` (the buffer cannot take points: disk) or `overloaded` (the decode budget stayed full for 2 s); nothing was kept, retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub(crate) async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match receiver.ingest(&headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

impl Receiver {
    /// Reads and decodes a body through the shared ingest edge (limits,
    /// timeout, decode budget, streaming parse), then buffers its valid points.
    async fn ingest(&self, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
        let intake = &self.intake;
        let received = self.edge.read(body).await.map_err(|error| {
            intake.metrics.rejected(RECEIVER, "malformed", 1);
            error.answer()
        })?;
        let decoded = self
            .edge
            .decode_points(
                received,
                content_encoding(headers),
                intake.limits.clone(),
                self.config.max_points_per_request,
                pulse_core::now_ms(),
            )
            .await;
        let (ParsedBatch { points, errors }, _reservation) = decoded.map_err(|error| {
            if let DecodeError::Body(_) = error {
                intake.metrics.rejected(RECEIVER, "malformed", 1);
            }
            error.answer()
        })?;
        for error in &errors {
            intake.metrics.rejected(RECEIVER, error.reason.as_str(), 1);
        }
        let mut points: Vec<_> = points.into_iter().map(|p| p.point).collect();
        for point in &mut points {
            intake.add_static_tags(&mut point.tags);
        }
        let accepted = points.len();
        intake.write(RECEIVER, points).await.map_err(|error| {
            ApiError::unavailable(
                format!(
                    "the sidecar cannot buffer points ({error}); nothing was accepted, retry later"
                ),
                1,
            )
        })?;
        Ok(points_answer(accepted, &errors))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{Request, StatusCode, header};
    use prometheus_client::registry::Registry;
    use tower::ServiceExt;

    use pulse_core::codec::body::decode_content;

    use super::*;
    use crate::receivers::testing;

    async fn post(
        router: &Router,
        path: &str,
        body: &'static str,
    ) -> (StatusCode, serde_json::Value) {
        let response = router
            .clone()
            .oneshot(
                Request::post(path)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn router_for(fixture: &testing::Fixture) -> Router {
        let http_metrics = HttpMetrics::register(&mut Registry::default());
        router(
            Arc::clone(&fixture.intake),
            HttpConfig::default(),
            http_metrics,
        )
    }

    #[tokio::test]
    async fn the_gateway_contract_is_answered_on_both_routes() {
        let fixture = testing::intake();
        let router = router_for(&fixture);
        let (status, body) = post(
            &router,
            "/metrics",
            r#"{"metric_name":"cpu_usage","value":92.5,"tags":{"host":"web-01"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body, serde_json::json!({"accepted": 1, "rejected": 0}));
        let (status, body) = post(
            &router,
            "/v1/metrics",
            r#"[{"metric_name":"a","value":1},{"metric_name":"a","value":"x"}]"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_points");
        assert_eq!(body["error"]["details"]["accepted"], 1);
        assert_eq!(body["error"]["details"]["errors"][0]["field"], "value");
        let (status, body) = post(&router, "/v1/metrics", "[{").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_json");
        assert_eq!(
            fixture.buffer.depth().1,
            2,
            "the two valid points are buffered"
        );
    }

    #[tokio::test]
    async fn the_pods_tags_are_added_without_overriding_the_apps() {
        let fixture = testing::intake();
        let router = router_for(&fixture);
        post(
            &router,
            "/metrics",
            r#"{"metric_name":"a","value":1,"tags":{"pod":"mine"}}"#,
        )
        .await;
        post(&router, "/metrics", r#"{"metric_name":"b","value":1}"#).await;
        let fixture_buffer = &fixture.buffer;
        fixture.intake.writer.seal().await;
        let info = fixture_buffer.take_next().unwrap();
        let batch = fixture_buffer.read(&info).unwrap();
        let text = decode_content(Some("zstd"), &batch.body, 1 << 20).unwrap();
        let text = String::from_utf8(text.into_owned()).unwrap();
        assert!(text.contains(r#""tags":{"pod":"mine"}"#), "{text}");
        assert!(text.contains(r#""tags":{"pod":"web-1"}"#), "{text}");
    }
}
