//! Bearer-token middleware: 401 without a token, 403 with a wrong one.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pulse_core::auth::{AuthDecision, check_bearer};

use crate::ApiError;

/// Tokens allowed through; empty means authentication is off.
#[derive(Clone, Default)]
pub struct Tokens(pub Arc<Vec<String>>);

/// Axum middleware (use with `axum::middleware::from_fn_with_state`).
pub async fn require_bearer(
    State(tokens): State<Tokens>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let refusal = match check_bearer(header, &tokens.0) {
        AuthDecision::Allowed => return next.run(request).await,
        AuthDecision::Missing => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint needs `Authorization: Bearer <token>`",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
        AuthDecision::Denied => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token is not one of the configured tokens",
        )
        .into_response(),
    };
    drain_small_body(request).await;
    refusal
}

/// Bodies up to this size are read and dropped before a refusal, so the
/// connection can stay open for the client's next (authenticated) request.
const DRAIN_MAX_BYTES: u64 = 64 << 10;

/// How long a refused client may take to send such a body.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a refused request's small body to its end: hyper closes a kept-alive
/// connection whose request body was left unread, and a client that sent a
/// wrong token once would otherwise pay a new connection for every retry.
/// A larger (or slower) body is left unread and its connection closed, so
/// an unauthenticated client cannot make the server read much.
async fn drain_small_body(request: Request) {
    let declared = http_body::Body::size_hint(request.body()).upper();
    if declared.is_none_or(|bytes| bytes > DRAIN_MAX_BYTES) {
        return;
    }
    let body = axum::body::to_bytes(request.into_body(), DRAIN_MAX_BYTES as usize);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, body).await;
}
