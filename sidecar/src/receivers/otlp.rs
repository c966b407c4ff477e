//! OTLP/HTTP metrics: `POST /v1/metrics` on the OTLP port, protobuf
//! (`application/x-protobuf`) or JSON (`application/json`), optionally gzip or
//! zstd compressed, answered as the OTLP specification asks: `200` with an
//! `ExportMetricsServiceResponse` (carrying `partial_success` when data points
//! were rejected), `400` with a `google.rpc.Status` for a body that cannot be
//! read, `503` + `Retry-After` when the buffer cannot take the points; each
//! body in the request's own encoding.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use prost::Message;
use pulse_core::SeriesId;
use pulse_core::codec::body::BodyError;
use pulse_core::histogram::{Baselines, Cumulative};
use pulse_server::edge::{BodyEdge, DecodeError, ReadError, Received, content_encoding};

use super::Intake;
use crate::config::OtlpConfig;
use crate::parse::otlp::{Encoding, decode, to_points};

const RECEIVER: &str = "otlp";

/// `google.rpc.Status`, the error body of OTLP/HTTP (details omitted).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"code": 3, "message": "the body is not an OTLP ExportMetricsServiceRequest"}))]
pub(crate) struct Status {
    /// The gRPC status code: 3 invalid argument, 8 resource exhausted, 14 unavailable.
    #[prost(int32, tag = "1")]
    #[schema(example = 3)]
    code: i32,
    /// What went wrong, for a person.
    #[prost(string, tag = "2")]
    #[schema(example = "the body is not an OTLP ExportMetricsServiceRequest")]
    message: String,
}

/// gRPC status codes used in `Status.code`.
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;

/// What a decoded OTLP message is charged to the decode budget per byte of
/// its encoding: its messages, strings and vectors take more than their wire
/// bytes.
const DECODED_EXPANSION: usize = 4;

pub struct Receiver {
    intake: Arc<Intake>,
    config: OtlpConfig,
    max_points: usize,
    /// The previous export of each cumulative histogram series.
    histograms: Mutex<Baselines>,
}

/// Cumulative histogram series followed per app.
const MAX_HISTOGRAMS: usize = 10_000;

impl Receiver {
    /// The state OTLP/HTTP and OTLP/gRPC share. `max_points` bounds the
    /// points of one request.
    pub fn new(intake: Arc<Intake>, config: OtlpConfig, max_points: usize) -> Arc<Receiver> {
        Arc::new(Receiver {
            intake,
            config,
            max_points,
            histograms: Mutex::new(Baselines::new(MAX_HISTOGRAMS)),
        })
    }
}

/// The OTLP/HTTP route.
pub fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/v1/metrics", post(receive))
        .with_state(receiver)
        .merge(pulse_server::openapi::router(&crate::openapi::otlp()))
}

/// Takes an OTLP `ExportMetricsServiceRequest` into the sidecar's buffer,
/// answered as the OTLP/HTTP specification asks, in the request's encoding.
#[utoipa::path(
    post,
    path = "/v1/metrics",
    tag = "otlp",
    params(pulse_server::ingest::ContentEncoding),
    request_body(
        description = "An OTLP `ExportMetricsServiceRequest` (opentelemetry-proto `collector/metrics/v1`): protobuf, or its JSON mapping",
        content(
            (Object = "application/json", example = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "queue.depth", "gauge": {"dataPoints": [{"asInt": "7"}]}}]}]}]})),
            (Vec<u8> = "application/x-protobuf")
        )
    ),
    responses(
        (status = 200, description = "An `ExportMetricsServiceResponse`: `{}` when every data point was buffered, `partialSuccess` (`rejectedDataPoints`, `errorMessage`) when some were rejected", content(
            (Object = "application/json", example = json!({"partialSuccess": {"rejectedDataPoints": 1, "errorMessage": "1 data points were rejected; the first: ..."}})),
            (Vec<u8> = "application/x-protobuf")
        )),
        (status = 400, description = "A body that cannot be read: a `google.rpc.Status`", content((Status = "application/json"), (Vec<u8> = "application/x-protobuf"))),
        (status = 408, description = "The body did not arrive within `edge.body_timeout`: a `google.rpc.Status`", content((Status = "application/json"), (Vec<u8> = "application/x-protobuf"))),
        (status = 413, description = "Over `otlp.max_body_bytes` (before or after decompression) or the point limit: a `google.rpc.Status`", content((Status = "application/json"), (Vec<u8> = "application/x-protobuf"))),
        (status = 415, description = "A content type other than application/x-protobuf or application/json, or an unknown `Content-Encoding`: a `google.rpc.Status`", content((Status = "application/json"), (Vec<u8> = "application/x-protobuf"))),
        (status = 503, description = "The buffer cannot take points, or the decode budget stayed full; retry after `Retry-After`: a `google.rpc.Status`", content((Status = "application/json"), (Vec<u8> = "application/x-protobuf")), headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub(crate) async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-protobuf");
    let encoding = if content_type.starts_with("application/json") {
        Encoding::Json
    } else if content_type.starts_with("application/x-protobuf")
        || content_type.starts_with("application/protobuf")
    {
        Encoding::Protobuf
    } else {
        receiver.intake.metrics.rejected(RECEIVER, "malformed", 1);
        return status(
            Encoding::Json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_ARGUMENT,
            format!(
                "content type `{content_type}` is not OTLP; send application/x-protobuf or application/json"
            ),
        );
    };
    let edge = receiver.edge();
    let received = match edge.read(body).await {
        Ok(received) => received,
        Err(error) => {
            receiver.intake.metrics.rejected(RECEIVER, "malformed", 1);
            let code = match error {
                ReadError::TooLarge { .. } => RESOURCE_EXHAUSTED,
                ReadError::Busy => UNAVAILABLE,
                ReadError::Timeout { .. } | ReadError::Unreadable(_) => INVALID_ARGUMENT,
            };
            let mut response = status(encoding, error.status(), code, error.to_string());
            if error == ReadError::Busy {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            return response;
        }
    };
    let answer = match receiver
        .export(received, content_encoding(&headers), encoding)
        .await
    {
        Ok(answer) => answer,
        Err(failure) => return failure.answer(encoding),
    };
    match encoding {
        Encoding::Protobuf => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            answer.encode_to_vec(),
        )
            .into_response(),
        // `{}` for a full success, rather than `{"partialSuccess":null}`.
        Encoding::Json => match answer.partial_success {
            Some(partial) => (
                StatusCode::OK,
                axum::Json(serde_json::json!({"partialSuccess": partial})),
            )
                .into_response(),
            None => (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response(),
        },
    }
}

type Refusal = (StatusCode, i32, String);

/// Why an export was not taken: the HTTP status, the gRPC code and the
/// message, and whether the client should retry after a second.
pub(crate) struct Failure {
    pub http: StatusCode,
    pub code: i32,
    pub message: String,
    pub retry: bool,
}

impl Failure {
    fn new(http: StatusCode, code: i32, message: String) -> Failure {
        Failure {
            http,
            code,
            message,
            retry: http == StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The OTLP/HTTP answer: a `google.rpc.Status` in the request's encoding.
    fn answer(self, encoding: Encoding) -> Response {
        let mut response = status(encoding, self.http, self.code, self.message);
        if self.retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl Receiver {
    /// Takes one received export (OTLP/HTTP's body, or OTLP/gRPC's message
    /// without its frame) into the buffer: decompressed with
    /// `content_encoding`, decoded, mapped, validated and written. The
    /// answer carries `partial_success` when data points were rejected.
    pub(crate) async fn export(
        self: &Arc<Self>,
        received: Received,
        content_encoding: Option<String>,
        encoding: Encoding,
    ) -> Result<ExportMetricsServiceResponse, Failure> {
        let work = Arc::clone(self);
        let mapped = self
            .edge()
            .decode(received, content_encoding, move |text, charge| {
                // A decoded message holds more than its bytes; charge it before.
                charge(text.len().saturating_mul(DECODED_EXPANSION))?;
                Ok(work.map(text, encoding))
            })
            .await;
        let (points, rejected, baselines) = match mapped {
            Ok((Ok(mapped), _reservation)) => mapped,
            Ok((Err((http, code, message)), _)) => {
                self.intake.metrics.rejected(RECEIVER, "malformed", 1);
                return Err(Failure::new(http, code, message));
            }
            Err(DecodeError::Body(error)) => {
                self.intake.metrics.rejected(RECEIVER, "malformed", 1);
                let (http, code) = match error {
                    BodyError::TooLarge { .. } => {
                        (StatusCode::PAYLOAD_TOO_LARGE, RESOURCE_EXHAUSTED)
                    }
                    BodyError::UnsupportedEncoding(_) => {
                        (StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID_ARGUMENT)
                    }
                    BodyError::Busy => (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
                    _ => (StatusCode::BAD_REQUEST, INVALID_ARGUMENT),
                };
                return Err(Failure::new(http, code, error.to_string()));
            }
            Err(DecodeError::Internal(error)) => {
                return Err(Failure {
                    http: StatusCode::INTERNAL_SERVER_ERROR,
                    code: UNAVAILABLE,
                    message: error,
                    retry: false,
                });
            }
        };
        if let Err(error) = self.intake.write(RECEIVER, points).await {
            // The baselines stay, so the client's retry counts the same interval.
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE,
                format!("the sidecar cannot buffer points ({error}); retry later"),
            ));
        }
        let mut histograms = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, state) in baselines {
            histograms.set(id, state);
        }
        drop(histograms);
        let partial_success = (!rejected.is_empty()).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected.len() as i64,
            error_message: format!(
                "{} data points were rejected; the first: {}",
                rejected.len(),
                rejected[0]
            ),
        });
        Ok(ExportMetricsServiceResponse { partial_success })
    }

    /// The shared ingest edge with this receiver's body limits.
    pub(crate) fn edge(&self) -> BodyEdge {
        BodyEdge {
            budget: self.intake.budget.clone(),
            timeout: self.intake.body_timeout,
            max_body_bytes: self.config.max_body_bytes,
            max_decompressed_bytes: self.config.max_decompressed_bytes,
        }
    }

    /// Decodes, maps and validates one decompressed request body.
    fn map(&self, decoded: &[u8], encoding: Encoding) -> Result<Mapped, Refusal> {
        let request = decode(decoded, encoding)
            .map_err(|rejection| (StatusCode::BAD_REQUEST, INVALID_ARGUMENT, rejection.message))?;
        let now = pulse_core::now_ms();
        let baselines = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mapped = to_points(
            request,
            &self.config.resource_attributes,
            self.max_points,
            now,
            &baselines,
        )
        .map_err(|too_many| {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                RESOURCE_EXHAUSTED,
                format!("the request makes more than {} points", too_many.limit),
            )
        })?;
        let mut rejected: Vec<String> = Vec::new();
        for rejection in &mapped.rejected {
            self.intake.metrics.rejected(RECEIVER, rejection.reason, 1);
            rejected.push(rejection.message.clone());
        }
        let (points, errors) = self.intake.admit(RECEIVER, mapped.points, now);
        rejected.extend(errors.into_iter().map(|e| {
            let field = e.field.unwrap_or_default();
            format!("{field} {}", e.message)
        }));
        drop(baselines);
        Ok((points, rejected, mapped.baselines))
    }
}

/// A request's valid points, the messages of its rejected ones, and its
/// cumulative histograms' states, kept once the points are buffered.
type Mapped = (
    Vec<pulse_core::Point>,
    Vec<String>,
    Vec<(SeriesId, Cumulative)>,
);

fn status(encoding: Encoding, http: StatusCode, code: i32, message: String) -> Response {
    let status = Status { code, message };
    match encoding {
        Encoding::Protobuf => (
            http,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            status.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (http, axum::Json(status)).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use axum::http::Request;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use tower::ServiceExt;

    use super::*;
    use crate::config::OtlpConfig;
    use crate::receivers::testing;

    const JSON: &str = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[
        {"name":"g","gauge":{"dataPoints":[{"asDouble":1.5},{"asDouble":"NaN"}]}}]}]}]}"#;

    async fn call(router: &Router, content_type: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let response = router
            .clone()
            .oneshot(
                Request::post("/v1/metrics")
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        (
            status,
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn json_and_protobuf_requests_are_answered_in_kind() {
        let fixture = testing::intake();
        let router = router(Receiver::new(
            Arc::clone(&fixture.intake),
            OtlpConfig::default(),
            1000,
        ));
        let (status, body) = call(&router, "application/json", JSON.as_bytes().to_vec()).await;
        assert_eq!(status, StatusCode::OK);
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            answer["partialSuccess"]["rejectedDataPoints"], 1,
            "{answer}"
        );

        let request: ExportMetricsServiceRequest = serde_json::from_str(JSON).unwrap();
        let (status, body) = call(&router, "application/x-protobuf", request.encode_to_vec()).await;
        assert_eq!(status, StatusCode::OK);
        let answer = ExportMetricsServiceResponse::decode(body).unwrap();
        assert_eq!(answer.partial_success.unwrap().rejected_data_points, 1);
        assert_eq!(fixture.buffer.depth().1, 2);
    }

    #[tokio::test]
    async fn garbage_is_a_400_status_and_other_content_types_a_415() {
        let fixture = testing::intake();
        let router = router(Receiver::new(
            Arc::clone(&fixture.intake),
            OtlpConfig::default(),
            1000,
        ));
        let (status, body) = call(&router, "application/x-protobuf", vec![0xff; 16]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(Status::decode(body).unwrap().code, INVALID_ARGUMENT);
        let (status, _) = call(&router, "text/plain", b"x".to_vec()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn only_an_oversized_body_is_a_413() {
        let fixture = testing::intake();
        let config = OtlpConfig {
            max_body_bytes: 100,
            ..OtlpConfig::default()
        };
        let router = router(Receiver::new(Arc::clone(&fixture.intake), config, 1000));
        let (status, body) = call(&router, "application/x-protobuf", vec![0; 101]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(Status::decode(body).unwrap().code, RESOURCE_EXHAUSTED);
        let (status, body) = call(&router, "application/x-protobuf", vec![0xff; 100]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(Status::decode(body).unwrap().code, INVALID_ARGUMENT);
    }
}
