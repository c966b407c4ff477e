//! The answers of the ingest contract (`POST /metrics`, `POST /v1/metrics`), shared
//! by the gateway and the sidecar so that a client sees one contract whichever of
//! the two it talks to: `202 {"accepted":N,"rejected":0}`, `400 invalid_points`
//! with a per-point error list, and the whole-body refusals (`invalid_json`,
//! `body_too_large`, `unsupported_encoding`, ...).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pulse_core::codec::body::BodyError;
use pulse_core::codec::body::TypedPoint;
use pulse_core::validate::PointError;
use serde::Deserialize;
use serde::Serialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::ApiError;

/// The `202` answer: every point of the request was taken.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"accepted": 2, "rejected": 0}))]
pub struct Receipt {
    /// Points taken (durable in the bus, or in the sidecar's buffer).
    #[schema(example = 2)]
    pub accepted: usize,
    /// Always 0 in a `202`: a request with an invalid point is answered `400 invalid_points`.
    #[schema(example = 0)]
    pub rejected: usize,
}

/// `details` of a `400 invalid_points` answer. The valid points of the
/// request were taken all the same: resend only the ones listed, fixed.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"accepted": 1, "rejected": 1, "errors": [{"index": 1, "field": "value", "reason": "invalid_value", "message": "`value` must be a finite number"}], "errors_omitted": 0}))]
pub struct InvalidPoints<'a> {
    /// Valid points of the request that were taken.
    #[schema(example = 1)]
    pub accepted: usize,
    /// Invalid points, not taken.
    #[schema(example = 1)]
    pub rejected: usize,
    /// The first 100 errors, in the order of the points.
    #[schema(value_type = Vec<PointError>)]
    pub errors: &'a [PointError],
    /// Errors past the first 100, counted but not listed.
    #[schema(example = 0)]
    pub errors_omitted: usize,
}

/// The `Content-Encoding` of an ingest body.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ContentEncoding {
    /// How the body is compressed: absent or `identity` (not at all), `gzip` or
    /// `zstd`; anything else is refused with 415 `unsupported_encoding`.
    #[serde(rename = "Content-Encoding")]
    #[param(rename = "Content-Encoding", example = "gzip")]
    pub content_encoding: Option<String>,
}

/// Documents the ingest handler's operation at `/v1/metrics` at `/metrics`
/// too: both routes take the same bodies and give the same answers.
pub fn also_at_metrics(doc: &mut utoipa::openapi::OpenApi) {
    let Some(mut operation) = doc
        .paths
        .paths
        .get("/v1/metrics")
        .and_then(|item| item.post.clone())
    else {
        return;
    };
    operation.operation_id = Some("post_metrics".into());
    operation.summary =
        Some("Takes points (the original single-point route; same contract as /v1/metrics)".into());
    let item = doc.paths.paths.entry("/metrics".into()).or_default();
    item.post = Some(operation);
}

/// The body of both ingest routes: one point, or an array of points (as
/// `application/json`), or one point per line (NDJSON, `application/x-ndjson`
/// or any other content type), optionally compressed (`Content-Encoding: gzip`
/// or `zstd`). The route decodes it as a stream; this type names its shape.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(example = json!([{"metric_name": "cpu_usage", "value": 91, "tags": {"host": "web-01"}}, {"metric_name": "cpu_usage", "value": 95, "tags": {"host": "web-02"}}]))]
pub enum IngestBody {
    /// One point.
    One(TypedPoint),
    /// A batch of points.
    Many(Vec<TypedPoint>),
}

/// Most point errors listed in one answer: enough to fix a client, small enough
/// that a batch of 100 000 bad points does not produce a huge error body.
pub const MAX_LISTED_ERRORS: usize = 100;

/// The answer to a request whose valid points were all taken: `202` when every
/// point was valid, otherwise `400 invalid_points` listing the errors and saying
/// how many valid points were accepted anyway.
pub fn points_answer(accepted: usize, errors: &[PointError]) -> Response {
    if errors.is_empty() {
        let body = Receipt {
            accepted,
            rejected: 0,
        };
        return (StatusCode::ACCEPTED, Json(body)).into_response();
    }
    let rejected = errors.len();
    let listed = &errors[..rejected.min(MAX_LISTED_ERRORS)];
    let omitted = rejected - listed.len();
    let mut message = summary(accepted, rejected);
    if omitted > 0 {
        message += &format!(
            "; the first {} errors are listed, {omitted} more are omitted",
            listed.len()
        );
    }
    ApiError::bad_request("invalid_points", message)
        .with_details(json!(InvalidPoints {
            accepted,
            rejected,
            errors: listed,
            errors_omitted: omitted,
        }))
        .into_response()
}

/// The answer to a body that was refused as a whole, with the details a client
/// needs to fix it.
pub fn body_refusal(error: &BodyError) -> ApiError {
    let (status, code, details) = match error {
        BodyError::UnsupportedEncoding(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            None,
        ),
        BodyError::TooLarge { limit, .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            Some(json!({"limit_bytes": limit})),
        ),
        BodyError::TooManyPoints { count, limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_points",
            Some(json!({"count": count, "limit": limit})),
        ),
        BodyError::Corrupt { encoding, .. } => (
            StatusCode::BAD_REQUEST,
            "corrupt_body",
            Some(json!({"encoding": encoding})),
        ),
        BodyError::Empty => (StatusCode::BAD_REQUEST, "empty_body", None),
        BodyError::Busy => {
            return ApiError {
                code: "overloaded",
                ..ApiError::unavailable(error.to_string(), 1)
            };
        }
        BodyError::Json { line, column, .. } => (
            StatusCode::BAD_REQUEST,
            "invalid_json",
            Some(json!({"line": line, "column": column})),
        ),
    };
    let answer = ApiError::new(status, code, error.to_string());
    match details {
        Some(details) => answer.with_details(details),
        None => answer,
    }
}

/// "2 of 5 points were rejected; the 3 valid points were accepted".
fn summary(accepted: usize, rejected: usize) -> String {
    let total = accepted + rejected;
    let noun = if total == 1 { "point" } else { "points" };
    let verb = if rejected == 1 { "was" } else { "were" };
    let kept = match accepted {
        0 => "nothing was accepted".to_string(),
        1 => "the 1 valid point was accepted".to_string(),
        n => format!("the {n} valid points were accepted"),
    };
    format!("{rejected} of {total} {noun} {verb} rejected; {kept}")
}

#[cfg(test)]
mod tests {
    use pulse_core::validate::RejectReason;

    use super::*;

    #[test]
    fn summary_counts_rejected_and_accepted_points() {
        assert_eq!(
            summary(3, 2),
            "2 of 5 points were rejected; the 3 valid points were accepted"
        );
        assert_eq!(
            summary(1, 1),
            "1 of 2 points was rejected; the 1 valid point was accepted"
        );
        assert_eq!(
            summary(0, 1),
            "1 of 1 point was rejected; nothing was accepted"
        );
    }

    #[tokio::test]
    async fn at_most_100_errors_are_listed_and_the_rest_counted() {
        let errors: Vec<PointError> = (0..130)
            .map(|i| PointError::new(i, Some("value"), RejectReason::InvalidValue, "bad"))
            .collect();
        let response = points_answer(2, &errors);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let details = &body["error"]["details"];
        assert_eq!(details["errors"].as_array().unwrap().len(), 100);
        assert_eq!(details["errors_omitted"], 30);
        assert_eq!(details["rejected"], 130);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .ends_with("30 more are omitted"),
            "{body}"
        );
    }
}
