//! Reading and decoding one ingest body: the part of the ingest edge the
//! gateway's and the sidecar's receivers share.
//!
//! The body is read in the handler, before the request takes a processing
//! slot, so a client trickling its body holds only a connection and the bytes
//! it has sent. Every byte kept, as received, inflated and parsed, is charged
//! to the process's [`DecodeBudget`]; the read has a deadline
//! (`http.body_timeout`), and the decoding runs on a blocking thread so it
//! never stalls the other connections of a runtime worker.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use pulse_core::TimestampMs;
use pulse_core::codec::body::{BodyError, ParsedBatch, decode_content_within, parse_points_within};
use pulse_core::validate::Limits;

use super::budget::{DecodeBudget, Reservation};
use crate::ApiError;
use crate::ingest::body_refusal;

/// How the bodies of one receiver are read and decoded.
#[derive(Clone, Debug)]
pub struct BodyEdge {
    pub budget: DecodeBudget,
    pub timeout: Duration,
    /// Largest body as sent (compressed or not).
    pub max_body_bytes: usize,
    /// Largest body after decompression.
    pub max_decompressed_bytes: usize,
}

/// A body read in full, with its share of the decode budget.
#[derive(Debug)]
pub struct Received {
    pub bytes: Bytes,
    pub reservation: Reservation,
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Over `max_body_bytes`, refused before the excess was kept.
    TooLarge { limit: usize },
    /// Not all there within the body timeout.
    Timeout { after: Duration },
    /// The connection failed or the framing was broken.
    Unreadable(String),
    /// The decode budget stayed full.
    Busy,
}

impl ReadError {
    /// The status a client gets for it.
    pub fn status(&self) -> StatusCode {
        match self {
            ReadError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ReadError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ReadError::Unreadable(_) => StatusCode::BAD_REQUEST,
            ReadError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON answer of the ingest contract.
    pub fn answer(&self) -> ApiError {
        match self {
            ReadError::TooLarge { limit } => body_refusal(&BodyError::TooLarge {
                limit: *limit,
                after: "",
            }),
            ReadError::Busy => body_refusal(&BodyError::Busy),
            ReadError::Timeout { .. } | ReadError::Unreadable(_) => {
                let code = if matches!(self, ReadError::Timeout { .. }) {
                    "body_timeout"
                } else {
                    "unreadable_body"
                };
                ApiError::new(self.status(), code, self.to_string())
            }
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge { limit } => {
                write!(f, "body is larger than the limit of {limit} bytes")
            }
            ReadError::Timeout { after } => write!(
                f,
                "the request body did not arrive within {} (http.body_timeout)",
                pulse_core::duration::label(*after)
            ),
            ReadError::Unreadable(error) => {
                write!(f, "the request body could not be read: {error}")
            }
            ReadError::Busy => f.write_str(&BodyError::Busy.to_string()),
        }
    }
}

/// The `Content-Encoding` of a request as text; bytes that are not text are
/// kept lossily so the 415 says what was sent.
pub fn content_encoding(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

impl BodyEdge {
    /// Reads the whole body, refusing it as soon as it grows past
    /// `max_body_bytes` (before the excess is kept) or the timeout passes,
    /// charging each chunk to the budget as it arrives.
    pub async fn read(&self, body: Body) -> Result<Received, ReadError> {
        let mut reservation = self.budget.reservation();
        let read = read_within(body, self.max_body_bytes, &mut reservation);
        let bytes = match tokio::time::timeout(self.timeout, read).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ReadError::Timeout {
                    after: self.timeout,
                });
            }
        };
        Ok(Received { bytes, reservation })
    }

    /// Decompresses `received` (up to `max_decompressed_bytes`) and hands the
    /// text to `parse` on a blocking thread; both charge the reservation,
    /// which is returned to be held as long as the parsed value lives.
    pub async fn decode<T: Send + 'static>(
        &self,
        received: Received,
        encoding: Option<String>,
        parse: impl FnOnce(
            &[u8],
            &mut dyn FnMut(usize) -> Result<(), BodyError>,
        ) -> Result<T, BodyError>
        + Send
        + 'static,
    ) -> Result<(T, Reservation), DecodeError> {
        let Received {
            bytes,
            mut reservation,
        } = received;
        let max = self.max_decompressed_bytes;
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut charge = |n: usize| Ok::<_, BodyError>(reservation.take_blocking(&handle, n)?);
            let result = decode_content_within(encoding.as_deref(), &bytes, max, &mut charge)
                .and_then(|text| parse(&text, &mut charge));
            result.map(|value| (value, reservation))
        })
        .await
        .map_err(|e| DecodeError::Internal(e.to_string()))?
        .map_err(DecodeError::Body)
    }

    /// [`BodyEdge::decode`] of the points of the ingest contract (a JSON
    /// point, an array or NDJSON).
    pub async fn decode_points(
        &self,
        received: Received,
        encoding: Option<String>,
        limits: Limits,
        max_points: usize,
        now_ms: TimestampMs,
    ) -> Result<(ParsedBatch, Reservation), DecodeError> {
        self.decode(received, encoding, move |text, charge| {
            parse_points_within(text, &limits, max_points, now_ms, charge)
        })
        .await
    }
}

/// Why a read body could not be turned into points.
#[derive(Debug)]
pub enum DecodeError {
    /// Refused as a whole: a 4xx (or 503 for a full budget).
    Body(BodyError),
    /// The blocking task failed (a bug, never bad input).
    Internal(String),
}

impl DecodeError {
    /// The JSON answer of the ingest contract.
    pub fn answer(&self) -> ApiError {
        match self {
            DecodeError::Body(error) => body_refusal(error),
            DecodeError::Internal(message) => {
                tracing::error!(message = "Processing a request body failed.", error = %message);
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("the request could not be processed: {message}"),
                )
            }
        }
    }
}

async fn read_within(
    mut body: Body,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, ReadError> {
    // A declared length over the limit is refused before any byte is read.
    let declared = http_body::Body::size_hint(&body).exact();
    if declared.is_some_and(|declared| declared > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    let mut kept: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Unreadable(source_text(&e)))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if kept.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        if kept.len() + chunk.len() > kept.capacity() {
            // What is charged is what is allocated: the declared length at
            // once, or a doubling (never past the limit) for a chunked body.
            let grown = match declared {
                Some(declared) => (declared as usize).max(kept.len() + chunk.len()),
                None => (2 * kept.capacity())
                    .max(kept.len() + chunk.len())
                    .min(limit),
            };
            reservation
                .take(grown - kept.capacity())
                .await
                .map_err(|_| ReadError::Busy)?;
            kept.reserve_exact(grown - kept.len());
        }
        kept.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(kept))
}

/// The innermost cause of a body error (axum wraps hyper's).
fn source_text(error: &axum::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(max_body_bytes: usize, budget: usize) -> BodyEdge {
        BodyEdge {
            budget: DecodeBudget::new(budget),
            timeout: Duration::from_secs(5),
            max_body_bytes,
            max_decompressed_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_and_its_bytes_released() {
        let edge = edge(100, 1 << 20);
        let error = edge.read(Body::from(vec![b'x'; 101])).await.unwrap_err();
        assert_eq!(error, ReadError::TooLarge { limit: 100 });
        assert_eq!(error.answer().status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(edge.budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_body_that_does_not_fit_the_budget_is_a_503() {
        let edge = edge(8 << 20, 1 << 20);
        let error = edge
            .read(Body::from(vec![b'x'; 2 << 20]))
            .await
            .unwrap_err();
        assert_eq!(error, ReadError::Busy);
        let answer = error.answer();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.retry_after, Some(1));
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_a_408() {
        let edge = BodyEdge {
            timeout: Duration::from_millis(200),
            ..edge(100, 1 << 20)
        };
        let error = edge.read(Body::new(Stalled)).await.unwrap_err();
        assert_eq!(error.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(error.answer().code, "body_timeout");
    }

    #[tokio::test]
    async fn decoded_points_charge_the_budget_while_they_live() {
        let edge = edge(1 << 20, 64 << 20);
        let received = edge
            .read(Body::from(r#"[{"metric_name":"a","value":1},2]"#))
            .await
            .unwrap();
        let (batch, reservation) = edge
            .decode_points(received, None, Limits::default(), 10, pulse_core::now_ms())
            .await
            .unwrap();
        assert_eq!((batch.points.len(), batch.errors.len()), (1, 1));
        assert!(reservation.used() > 2 * pulse_core::codec::body::ELEMENT_COST);
        assert!(edge.budget.in_use() > 0);
        drop(reservation);
        assert_eq!(edge.budget.in_use(), 0);
    }

    /// A body whose next byte never comes.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            std::task::Poll::Pending
        }
    }
}
