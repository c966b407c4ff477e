//! What an ingest request gets back, and the outcome label it is counted under.
//!
//! A request either went through (a [`Receipt`]: every valid point is durable,
//! and invalid ones are listed) or was refused as a whole (a [`Refusal`]: none of
//! its points were acknowledged, so the client may resend all of them).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pulse_core::codec::body::BodyError;
use pulse_core::validate::PointError;
use pulse_engine::bus::BusError;
use pulse_server::ApiError;
use serde_json::json;

/// Most point errors listed in one answer: enough to fix a client, small enough
/// that a batch of 100 000 bad points does not produce a huge error body.
const MAX_LISTED_ERRORS: usize = 100;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: u64 = 1;

/// A request whose valid points are durable on the bus.
#[derive(Debug)]
pub(crate) struct Receipt {
    pub(crate) accepted: usize,
    pub(crate) errors: Vec<PointError>,
}

/// Why a request was refused as a whole.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No processing slot became free in time.
    Overloaded,
    /// The body could not be read, decoded or parsed (4xx).
    Body(ApiError),
    /// The bus did not make the points durable.
    Bus(BusError),
    /// Processing the body failed unexpectedly (a bug, never bad input).
    Internal(String),
}

impl Receipt {
    /// The `outcome` label of the requests counter.
    pub(crate) fn outcome(&self) -> &'static str {
        if self.errors.is_empty() {
            "accepted"
        } else {
            "invalid_points"
        }
    }
}

impl Refusal {
    /// The `outcome` label of the requests counter.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Refusal::Overloaded => "overloaded",
            Refusal::Body(_) => "rejected_body",
            Refusal::Bus(_) => "bus_unavailable",
            Refusal::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for Receipt {
    fn into_response(self) -> Response {
        if self.errors.is_empty() {
            let body = json!({"accepted": self.accepted, "rejected": 0});
            return (StatusCode::ACCEPTED, Json(body)).into_response();
        }
        let rejected = self.errors.len();
        let listed = &self.errors[..rejected.min(MAX_LISTED_ERRORS)];
        let omitted = rejected - listed.len();
        let mut message = summary(self.accepted, rejected);
        if omitted > 0 {
            message += &format!(
                "; the first {} errors are listed, {omitted} more are omitted",
                listed.len()
            );
        }
        ApiError::bad_request("invalid_points", message)
            .with_details(json!({
                "accepted": self.accepted,
                "rejected": rejected,
                "errors": listed,
                "errors_omitted": omitted,
            }))
            .into_response()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Overloaded => ApiError {
                code: "overloaded",
                ..ApiError::unavailable(
                    "the gateway is at its limit of concurrent requests; nothing was accepted, retry later",
                    RETRY_AFTER_SECS,
                )
            },
            Refusal::Body(error) => error,
            Refusal::Bus(error) => ApiError::unavailable(
                format!("the points could not be stored ({error}); nothing was accepted, retry later"),
                RETRY_AFTER_SECS,
            ),
            Refusal::Internal(message) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the request could not be processed: {message}"),
            ),
        }
        .into_response()
    }
}

/// The answer to a body that was refused as a whole, with the details a client
/// needs to fix it.
pub(crate) fn body_refusal(error: &BodyError) -> ApiError {
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
        let errors = (0..130)
            .map(|i| PointError::new(i, Some("value"), RejectReason::InvalidValue, "bad"))
            .collect();
        let response = Receipt {
            accepted: 2,
            errors,
        }
        .into_response();
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
