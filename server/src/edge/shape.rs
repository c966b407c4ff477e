//! One error shape for every answer of every role, and the request-head limits.
//!
//! Handlers answer errors with [`ApiError`], but some answers are made before
//! or around them: axum's 404 and 405 (empty bodies), its extractor rejections
//! (plain text, e.g. a path that is not UTF-8 after decoding), and the head
//! limits here. This layer turns every error answer that is not already a
//! typed body (JSON, HTML for browsers, OTLP's protobuf status) into
//! `{"error": {"code", "message"}}`, keeping its status and headers.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use pulse_core::edge::HttpLimits;
use serde_json::json;

use crate::ApiError;

/// Most bytes of a plain-text error body carried over into the JSON message.
const MAX_MESSAGE_BYTES: usize = 1 << 10;

#[derive(Clone, Copy)]
struct HeadLimits {
    max_url_bytes: usize,
    max_header_bytes: usize,
}

/// `router` with the head limits checked and every error answer in JSON.
pub fn layer(router: Router, limits: &HttpLimits) -> Router {
    let head = HeadLimits {
        max_url_bytes: limits.max_url_bytes,
        max_header_bytes: limits.max_header_bytes,
    };
    router.layer(from_fn_with_state(head, guard))
}

async fn guard(State(limits): State<HeadLimits>, request: Request, next: Next) -> Response {
    if let Some(refusal) = check_head(&limits, &request) {
        return refusal.into_response();
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if needs_shape(&response) {
        return reshape(response, &method, &path).await;
    }
    response
}

/// The refusal of a head over a limit, if it is.
fn check_head(limits: &HeadLimits, request: &Request) -> Option<ApiError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > limits.max_url_bytes {
        return Some(
            ApiError::new(
                StatusCode::URI_TOO_LONG,
                "url_too_long",
                format!(
                    "the request target is {target} bytes, over the limit of {} (http.max_url_bytes); \
                     send fewer or shorter parameters",
                    limits.max_url_bytes
                ),
            )
            .with_details(json!({"limit_bytes": limits.max_url_bytes})),
        );
    }
    let headers = header_bytes(request.headers());
    if headers > limits.max_header_bytes {
        return Some(
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "the request headers are {headers} bytes, over the limit of {} (http.max_header_bytes)",
                    limits.max_header_bytes
                ),
            )
            .with_details(json!({"limit_bytes": limits.max_header_bytes})),
        );
    }
    None
}

/// The headers' size as sent: `name: value\r\n` each.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// An error answer whose body is empty or plain text.
fn needs_shape(response: &Response) -> bool {
    if !(response.status().is_client_error() || response.status().is_server_error()) {
        return false;
    }
    match response.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(kind) => kind.as_bytes().starts_with(b"text/plain"),
    }
}

async fn reshape(response: Response, method: &Method, path: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_MESSAGE_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let status = parts.status;
    let message = if text.is_empty() {
        default_message(status, method, path)
    } else {
        text
    };
    let answer = ApiError::new(status, code(status), message).into_response();
    let (answer_parts, answer_body) = answer.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        answer_parts.headers[header::CONTENT_TYPE].clone(),
    );
    Response::from_parts(parts, answer_body)
}

/// What an empty error answer meant.
fn default_message(status: StatusCode, method: &Method, path: &str) -> String {
    let path: String = path.chars().take(200).collect();
    match status {
        StatusCode::NOT_FOUND => format!("no route for {method} {path}"),
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{method} is not allowed on {path}; see the Allow header")
        }
        _ => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_string(),
    }
}

/// The stable code of an error status.
fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::URI_TOO_LONG => "url_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn router() -> Router {
        let routes = Router::new().route("/ok", get(|| async { "fine" })).route(
            "/typed/{n}",
            get(|axum::extract::Path(n): axum::extract::Path<u32>| async move { n.to_string() }),
        );
        layer(
            routes,
            &HttpLimits {
                max_url_bytes: 300,
                max_header_bytes: 1024,
                ..HttpLimits::default()
            },
        )
    }

    async fn call(request: Request) -> (StatusCode, serde_json::Value, HeaderMap) {
        let response = router().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or_default(),
            headers,
        )
    }

    fn get_req(uri: &str) -> Request {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn empty_and_plain_text_errors_become_the_json_shape() {
        let (status, body, _) = call(get_req("/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(body["error"]["message"], "no route for GET /nowhere");

        let post = Request::post("/ok").body(Body::empty()).unwrap();
        let (status, body, headers) = call(post).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert!(headers.contains_key(header::ALLOW));

        let (status, body, headers) = call(get_req("/typed/%ff%fe")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "bad_request");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    }

    #[tokio::test]
    async fn heads_over_the_limits_are_414_and_431_naming_them() {
        let long = format!("/ok?x={}", "a".repeat(400));
        let (status, body, _) = call(get_req(&long)).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG);
        assert_eq!(body["error"]["details"]["limit_bytes"], 300);

        let big = Request::get("/ok")
            .header("x-big", "b".repeat(2000))
            .body(Body::empty())
            .unwrap();
        let (status, body, _) = call(big).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(body["error"]["code"], "headers_too_large");

        let (status, _, _) = call(get_req("/ok")).await;
        assert_eq!(status, StatusCode::OK);
    }
}
