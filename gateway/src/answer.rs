//! What an ingest request gets back, and the outcome label it is counted under.
//!
//! A request either went through (a [`Receipt`]: every valid point is durable,
//! and invalid ones are listed) or was refused as a whole (a [`Refusal`]: none of
//! its points were acknowledged, so the client may resend all of them).

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pulse_core::validate::PointError;
use pulse_engine::bus::BusError;
use pulse_server::ApiError;

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
    /// The writer is over `gateway.rate_limit`; its points fit in `wait`.
    RateLimited { wait: Duration, rate: u32 },
    /// The body could not be read, decoded or parsed (4xx), the decode
    /// budget was full (503), or decoding failed unexpectedly (500, a bug).
    Body(ApiError),
    /// The bus did not make the points durable.
    Bus(BusError),
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
            Refusal::RateLimited { .. } => "rate_limited",
            // A full decode budget is overload, and a failed decoding task a
            // bug, not a bad body.
            Refusal::Body(error) if error.status == StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            Refusal::Body(error) if error.status.is_server_error() => "internal_error",
            Refusal::Body(_) => "rejected_body",
            Refusal::Bus(_) => "bus_unavailable",
        }
    }
}

impl IntoResponse for Receipt {
    fn into_response(self) -> Response {
        pulse_server::ingest::points_answer(self.accepted, &self.errors)
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
            Refusal::RateLimited { wait, rate } => ApiError {
                retry_after: Some(retry_after_secs(wait)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "this writer is over the gateway's rate limit of {rate} points/s; \
                         nothing was accepted, resend the request after Retry-After"
                    ),
                )
            },
            Refusal::Body(error) => error,
            Refusal::Bus(error) => ApiError::unavailable(
                format!("the points could not be stored ({error}); nothing was accepted, retry later"),
                RETRY_AFTER_SECS,
            ),
        }
        .into_response()
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1, so a client
/// that waits as told finds room.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}
