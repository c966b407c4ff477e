//! OTLP over gRPC: the `opentelemetry.proto.collector.metrics.v1.MetricsService`
//! `Export` call on the OTLP gRPC port (4317), beside OTLP/HTTP.
//!
//! A unary gRPC call is an HTTP/2 POST whose body is one length-prefixed
//! message (a compressed-flag byte, a 4-byte big-endian length, the
//! protobuf) and whose answer is one such message followed by trailers
//! (`grpc-status`, `grpc-message`). That is all an OTLP exporter sends, so
//! it is served here on the sidecar's own HTTP/2 server (cleartext, prior
//! knowledge, as exporters speak to `http://localhost:4317`), through the
//! same path as OTLP/HTTP ([`Receiver::export`]), rather than with tonic: a
//! second server stack would cost the sidecar's small idle memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body::Frame;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use pulse_server::edge::Received;

use super::otlp::{Failure, Receiver};
use crate::parse::otlp::Encoding;

/// The method's path.
pub const EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// gRPC status codes.
const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const UNIMPLEMENTED: i32 = 12;

/// The gRPC route over the OTLP receiver's state.
pub(crate) fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route(EXPORT, post(export))
        .with_state(receiver)
}

async fn export(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Body) -> Response {
    let received = match receiver.edge().read(body).await {
        Ok(received) => received,
        Err(error) => return trailers_only(grpc_code(error.status()), &error.to_string()),
    };
    let (compressed, message) = match unframe(received.bytes.clone()) {
        Ok(frame) => frame,
        Err(problem) => return trailers_only(INVALID_ARGUMENT, &problem),
    };
    let encoding = match (compressed, headers.get("grpc-encoding")) {
        (false, _) => None,
        (true, Some(name)) if name == "gzip" => Some("gzip".to_string()),
        (true, name) => {
            let name = name.map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned());
            return trailers_only(
                UNIMPLEMENTED,
                &format!(
                    "message compression `{}` is not supported; use gzip or none",
                    name.unwrap_or_default()
                ),
            );
        }
    };
    let received = Received {
        bytes: message,
        reservation: received.reservation,
    };
    match receiver
        .export(received, encoding, Encoding::Protobuf)
        .await
    {
        Ok(answer) => answered(&answer),
        Err(Failure { http, message, .. }) => trailers_only(grpc_code(http), &message),
    }
}

/// The message of a request body: `(compressed, bytes)`.
fn unframe(body: Bytes) -> Result<(bool, Bytes), String> {
    if body.len() < 5 {
        return Err("the body is not a gRPC message (shorter than its 5-byte prefix)".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(format!(
            "the gRPC message announces {len} bytes but {} follow; send exactly one message",
            body.len() - 5
        ));
    }
    Ok((body[0] == 1, body.slice(5..)))
}

/// The gRPC code for the HTTP status OTLP/HTTP would have answered.
fn grpc_code(http: StatusCode) -> i32 {
    match http {
        StatusCode::PAYLOAD_TOO_LARGE => 8,      // RESOURCE_EXHAUSTED
        StatusCode::SERVICE_UNAVAILABLE => 14,   // UNAVAILABLE: the exporter retries
        StatusCode::REQUEST_TIMEOUT => 4,        // DEADLINE_EXCEEDED
        StatusCode::INTERNAL_SERVER_ERROR => 13, // INTERNAL
        StatusCode::UNSUPPORTED_MEDIA_TYPE => UNIMPLEMENTED,
        _ => INVALID_ARGUMENT,
    }
}

/// A successful call: the answer as one message, then `grpc-status: 0`.
fn answered(answer: &ExportMetricsServiceResponse) -> Response {
    let message = answer.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(OK));
    grpc_response(Body::new(Unary {
        data: Some(Bytes::from(framed)),
        trailers: Some(trailers),
    }))
}

/// A failed call: no message, its status in the headers (gRPC's
/// "trailers-only" answer).
fn trailers_only(code: i32, message: &str) -> Response {
    let mut response = grpc_response(Body::empty());
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(code));
    // grpc-message is percent-encoded; keep it to printable ASCII.
    let text: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect::<String>()
        .replace('%', "%25");
    if let Ok(value) = HeaderValue::from_str(&text) {
        headers.insert("grpc-message", value);
    }
    response
}

fn grpc_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/grpc")],
        body,
    )
        .into_response()
}

/// A body of one data frame and one trailers frame.
struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Unary {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(frame.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_message_is_read_and_bad_frames_are_named() {
        let body = Bytes::from_static(b"\x00\x00\x00\x00\x03abc");
        assert_eq!(unframe(body).unwrap(), (false, Bytes::from_static(b"abc")));
        assert!(unframe(Bytes::from_static(b"\x00\x00")).is_err());
        assert!(unframe(Bytes::from_static(b"\x01\x00\x00\x00\x09abc")).is_err());
    }
}
