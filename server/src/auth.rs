//! Bearer-token middleware: 401 without a token, 403 with a wrong one.

use std::sync::Arc;

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
    match check_bearer(header, &tokens.0) {
        AuthDecision::Allowed => next.run(request).await,
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
    }
}
