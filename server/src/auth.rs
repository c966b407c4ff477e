//! Bearer-token middleware: 401 without a token, 403 with a wrong one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pulse_core::auth::{AuthDecision, check_bearer, tokens_from_text};
use tokio_util::sync::CancellationToken;

use crate::ApiError;
use crate::reload::{FileError, KeyedFile, Reloading};

/// Tokens allowed through: a fixed list (empty: authentication is off), or
/// a mounted file re-read when it changes (never empty: see
/// [`pulse_core::auth::tokens_from_text`]).
///
/// During a rotation the file holds the old and the new token, so both work;
/// the old one stops working once it is removed from the file, within
/// [`crate::reload::RELOAD_INTERVAL`] or so.
#[derive(Clone, Debug)]
pub enum Tokens {
    Fixed(Arc<Vec<String>>),
    File(Arc<Reloading<Vec<String>>>),
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::Fixed(Arc::default())
    }
}

impl Tokens {
    /// The tokens in the config: the file at `file` (named by `key` in
    /// errors) when set, else `list`.
    pub fn configured(
        list: &[String],
        file: Option<&Path>,
        key: &str,
    ) -> Result<Tokens, FileError> {
        let Some(path) = file else {
            return Ok(Tokens::Fixed(Arc::new(list.to_vec())));
        };
        let file = KeyedFile::new(key, path);
        let parse = {
            let file = file.clone();
            move |bytes: &[Vec<u8>]| {
                let text =
                    std::str::from_utf8(&bytes[0]).map_err(|_| file.error("is not UTF-8 text"))?;
                tokens_from_text(text).map_err(|why| file.error(why))
            }
        };
        Ok(Tokens::File(Reloading::load(
            format!("the tokens of {key}"),
            vec![file],
            parse,
        )?))
    }

    /// The tokens in force now.
    pub fn current(&self) -> Arc<Vec<String>> {
        match self {
            Tokens::Fixed(tokens) => Arc::clone(tokens),
            Tokens::File(file) => file.current(),
        }
    }

    /// Re-reads the token file now; `Ok(true)` when new tokens went into force.
    pub fn reload(&self) -> Result<bool, FileError> {
        match self {
            Tokens::Fixed(_) => Ok(false),
            Tokens::File(file) => file.reload(),
        }
    }

    /// Follows the token file until `shutdown` (nothing to do for a list).
    pub fn watch(&self, shutdown: CancellationToken) {
        if let Tokens::File(file) = self {
            file.watch(shutdown);
        }
    }
}

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
    let refusal = match check_bearer(header, &tokens.current()) {
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
