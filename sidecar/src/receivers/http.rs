//! `POST /metrics` and `POST /v1/metrics` on localhost: the gateway's contract,
//! with the gateway's code. Bodies are decoded and validated by
//! `pulse_core::codec::body`, and answered by `pulse_server::ingest`, so an app
//! can point at the sidecar or the gateway and see the same answers.
//!
//! `202` means the points are in the buffer on disk: they survive a crash of
//! the sidecar and reach the gateway at least once. `503` + `Retry-After` means
//! the buffer could not take them; nothing of that request was kept.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::LengthLimitError;
use pulse_core::codec::body::{BodyError, ParsedBatch, decode_content, parse_points};
use pulse_server::ApiError;
use pulse_server::http_metrics::{HttpMetrics, track};
use pulse_server::ingest::{body_refusal, points_answer};

use super::Intake;
use crate::config::HttpConfig;

const RECEIVER: &str = "http";

/// How long a client may take to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bodies up to this size are parsed on the runtime thread; larger ones on a
/// blocking thread, so one big body does not stall the StatsD socket.
const INLINE_PARSE_BYTES: usize = 64 << 10;

struct Receiver {
    intake: Arc<Intake>,
    config: HttpConfig,
}

/// The receiver's routes, with request latency tracked.
pub fn router(intake: Arc<Intake>, config: HttpConfig, http_metrics: HttpMetrics) -> Router {
    let receiver = Arc::new(Receiver { intake, config });
    Router::new()
        .route("/metrics", post(receive))
        .route("/v1/metrics", post(receive))
        .with_state(receiver)
        .route_layer(from_fn_with_state(http_metrics, track))
}

async fn receive(
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
    async fn ingest(
        self: &Arc<Self>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        let body = self.read_body(body).await?;
        let encoding = headers
            .get(header::CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let parsed = if body.len() <= INLINE_PARSE_BYTES {
            self.parse(&body, encoding.as_deref())
        } else {
            let receiver = Arc::clone(self);
            tokio::task::spawn_blocking(move || receiver.parse(&body, encoding.as_deref()))
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("the request could not be processed: {e}"),
                    )
                })?
        };
        let intake = &self.intake;
        let ParsedBatch { mut points, errors } = parsed.map_err(|error| {
            intake.metrics.rejected(RECEIVER, "malformed", 1);
            body_refusal(&error)
        })?;
        for error in &errors {
            intake.metrics.rejected(RECEIVER, error.reason.as_str(), 1);
        }
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

    fn parse(&self, body: &[u8], encoding: Option<&str>) -> Result<ParsedBatch, BodyError> {
        let decoded = decode_content(encoding, body, self.config.max_decompressed_bytes)?;
        parse_points(
            &decoded,
            &self.intake.limits,
            self.config.max_points_per_request,
            pulse_core::now_ms(),
        )
    }

    /// Reads the body up to `http.max_body_bytes` (a JSON 413 beyond it) and
    /// within [`BODY_READ_TIMEOUT`].
    async fn read_body(&self, body: Body) -> Result<Bytes, ApiError> {
        let limit = self.config.max_body_bytes;
        match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(error)) => {
                let too_large = std::error::Error::source(&error)
                    .is_some_and(|source| source.is::<LengthLimitError>());
                self.intake.metrics.rejected(RECEIVER, "malformed", 1);
                Err(if too_large {
                    body_refusal(&BodyError::TooLarge { limit, after: "" })
                } else {
                    ApiError::bad_request(
                        "unreadable_body",
                        format!("the request body could not be read: {error}"),
                    )
                })
            }
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use prometheus_client::registry::Registry;
    use tower::ServiceExt;

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
