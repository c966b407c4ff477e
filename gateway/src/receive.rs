//! The ingest handler behind `POST /metrics` and `POST /v1/metrics`.
//!
//! One request goes through: admission (a processing slot), reading the body up
//! to `gateway.max_body_bytes`, decoding and validating it, its writer's rate
//! limit, then one bus send of its valid points. Both routes accept the same shapes (one object, an array or
//! NDJSON, optionally compressed), so the original single-point clients and the
//! sidecar share one parser.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::LengthLimitError;
use pulse_core::Point;
use pulse_core::codec::body::{BodyError, decode_content, parse_points};
use pulse_core::codec::record::encode_point;
use pulse_core::series::SeriesId;
use pulse_core::validate::{PointError, RejectReason};
use pulse_engine::bus::OutgoingRecord;
use pulse_server::ApiError;
use tokio::sync::SemaphorePermit;

use crate::Gateway;
use crate::answer::{Receipt, Refusal, body_refusal};

/// How long a request waits for a processing slot before it is turned away.
/// Long enough to ride out a burst, short enough that the client's own retry
/// (after `Retry-After`) is the better use of the connection.
const ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// How long a client may take to send its body. The body is read while holding
/// a processing slot, so without this a few clients trickling bytes could hold
/// every slot and lock everyone else out.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A body turned into bus records, plus the errors of its invalid points.
struct Prepared {
    records: Vec<OutgoingRecord>,
    errors: Vec<PointError>,
}

/// Axum handler for both ingest routes.
pub(crate) async fn receive(
    State(gateway): State<Arc<Gateway>>,
    route: MatchedPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = Arc::clone(&gateway).ingest(&headers, body).await;
    let metrics = &gateway.metrics;
    match result {
        Ok(receipt) => {
            metrics.request(route.as_str(), receipt.outcome());
            receipt.into_response()
        }
        Err(refusal) => {
            metrics.request(route.as_str(), refusal.outcome());
            if let Refusal::Body(error) = &refusal {
                metrics.body_rejected(error.code);
            }
            refusal.into_response()
        }
    }
}

impl Gateway {
    /// Takes one request from admission to the bus; the points of a `Receipt`
    /// are durable, those of a `Refusal` were not acknowledged.
    async fn ingest(self: Arc<Self>, headers: &HeaderMap, body: Body) -> Result<Receipt, Refusal> {
        // The permit is held until the answer is ready, so at most
        // `max_in_flight` bodies are in memory or on their way to the bus.
        let _permit = self.admit().await?;
        let body = self.read_body(body).await?;
        // Header bytes that are not text cannot name a supported encoding; keep
        // them (lossily) so the 415 says what was sent.
        let encoding = headers
            .get(header::CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let gateway = Arc::clone(&self);
        // Decompressing and parsing up to `max_decompressed_bytes` is CPU work
        // that would stall every other connection on this worker thread.
        let prepared =
            tokio::task::spawn_blocking(move || gateway.prepare(&body, encoding.as_deref()))
                .await
                .map_err(|e| {
                    tracing::error!(message = "Processing a request body failed.", error = %e);
                    Refusal::Internal(e.to_string())
                })?
                .map_err(|e| Refusal::Body(body_refusal(&e)))?;
        self.metrics
            .points_parsed(prepared.records.len(), &prepared.errors);
        let accepted = prepared.records.len();
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.rates
            .take(authorization, accepted)
            .map_err(|wait| Refusal::RateLimited {
                wait,
                rate: self.settings.rate_limit,
            })?;
        if accepted > 0 {
            Arc::clone(&self).send(prepared.records).await?;
        }
        Ok(Receipt {
            accepted,
            errors: prepared.errors,
        })
    }

    /// Waits up to [`ADMISSION_WAIT`] for a processing slot.
    async fn admit(&self) -> Result<SemaphorePermit<'_>, Refusal> {
        match tokio::time::timeout(ADMISSION_WAIT, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout is the only real case.
            Ok(Err(_)) | Err(_) => Err(Refusal::Overloaded),
        }
    }

    /// Reads the whole body, refusing it with a JSON 413 as soon as it grows
    /// past `gateway.max_body_bytes`, before the excess is buffered, and with a
    /// 408 when it does not arrive within [`BODY_READ_TIMEOUT`].
    async fn read_body(&self, body: Body) -> Result<Bytes, Refusal> {
        let limit = self.settings.max_body_bytes;
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit));
        let bytes = match read.await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => {
                let too_large = std::error::Error::source(&error)
                    .is_some_and(|source| source.is::<LengthLimitError>());
                return Err(Refusal::Body(if too_large {
                    body_refusal(&BodyError::TooLarge { limit, after: "" })
                } else {
                    ApiError::bad_request(
                        "unreadable_body",
                        format!("the request body could not be read: {error}"),
                    )
                }));
            }
            Err(_) => {
                return Err(Refusal::Body(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body did not arrive within {} s",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                )));
            }
        };
        self.metrics.body_received(bytes.len());
        Ok(bytes)
    }

    /// Decodes, parses and validates a body, holds back the points of series
    /// over the active-series limit, and encodes the rest as bus records.
    fn prepare(&self, body: &[u8], encoding: Option<&str>) -> Result<Prepared, BodyError> {
        let decoded = decode_content(encoding, body, self.settings.max_decompressed_bytes)?;
        let now_ms = pulse_core::now_ms();
        let batch = parse_points(
            &decoded,
            &self.limits,
            self.settings.max_points_per_request,
            now_ms,
        )?;
        let series: Vec<SeriesId> = batch.points.iter().map(Point::series_id).collect();
        let admitted = self.series.as_ref().map(|active| {
            let admitted = active.admit(&series, now_ms);
            self.metrics.active_series(active.len());
            (admitted, active.limit())
        });
        let mut errors = batch.errors;
        let mut records = Vec::with_capacity(batch.points.len());
        let mut refused = Vec::new();
        // Valid points lost their batch index; it is the next one no error names.
        let mut invalid = errors.iter().map(|e| e.index).peekable();
        let mut index = 0;
        for (k, (point, id)) in batch.points.iter().zip(&series).enumerate() {
            while invalid.next_if_eq(&index).is_some() {
                index += 1;
            }
            match &admitted {
                Some((admitted, limit)) if !admitted[k] => {
                    refused.push(too_many_series(index, *limit));
                }
                _ => records.push(OutgoingRecord {
                    key: id.0,
                    value: encode_point(point),
                }),
            }
            index += 1;
        }
        if !refused.is_empty() {
            errors.extend(refused);
            errors.sort_by_key(|e| e.index);
        }
        Ok(Prepared { records, errors })
    }

    /// Appends one request's records in a single bus send; returns once they are
    /// durable. The send and its counting run in a task of their own: a client
    /// that hangs up drops the handler's future, but records handed to the bus
    /// may still be written, and what is written must be counted
    /// (`points_accepted_total`), answered or not.
    async fn send(self: Arc<Self>, records: Vec<OutgoingRecord>) -> Result<(), Refusal> {
        let points = records.len();
        let send = tokio::spawn(async move {
            let started = Instant::now();
            let result = self.bus.send(records).await;
            self.metrics.bus_sent(started.elapsed(), points, &result);
            if let Err(error) = &result {
                tracing::warn!(message = "Bus refused a batch.", %error, points);
            }
            result
        });
        match send.await {
            Ok(result) => result.map_err(Refusal::Bus),
            Err(e) => {
                tracing::error!(message = "Sending a batch to the bus failed.", error = %e);
                Err(Refusal::Internal(e.to_string()))
            }
        }
    }
}

/// The error of a point whose series is new while the gateway is at its
/// active-series limit.
fn too_many_series(index: usize, limit: usize) -> PointError {
    PointError::new(
        index,
        None,
        RejectReason::TooManySeries,
        format!(
            "a new series while this gateway already admits its limit of {limit} active series \
             (gateway.max_active_series); known series still pass, new ones once others go idle"
        ),
    )
}
