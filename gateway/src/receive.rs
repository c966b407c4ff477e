//! The ingest handlers behind `POST /metrics`, `POST /v1/metrics` and
//! `POST /api/v1/write` (Prometheus remote write).
//!
//! One request goes through: reading the body (the shared ingest edge,
//! `pulse_server::edge`: `gateway.max_body_bytes`, `http.body_timeout` and the
//! process's decode budget), admission (a processing slot), decoding and
//! validating it, the active-series check, its writer's rate limit, then one
//! bus send of its valid points; only then are its new series admitted. Both
//! routes accept the same shapes (one object, an array or NDJSON, optionally
//! compressed), so the original single-point clients and the sidecar share one
//! parser.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use pulse_core::codec::body::{ParsedBatch, parse_points_within};
use pulse_core::codec::record::encode_record;
use pulse_core::codec::remote_write;
use pulse_core::histogram::Cumulative;
use pulse_core::idempotency::{KEY_HEADER, OFFSET_HEADER, RequestBatch};
use pulse_core::series::SeriesId;
use pulse_core::validate::{PointError, RejectReason};
use pulse_engine::bus::OutgoingRecord;
use pulse_server::edge::content_encoding;
use pulse_server::error::ApiError;
use tokio::sync::SemaphorePermit;

use crate::answer::{Receipt, Refusal};
use crate::{Gateway, HISTOGRAM_BASELINES};

/// How long a request waits for a processing slot before it is turned away.
/// Long enough to ride out a burst, short enough that the client's own retry
/// (after `Retry-After`) is the better use of the connection.
const ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// A body turned into bus records, plus the errors of its invalid points and
/// the series its records belong to (admitted once the request is accepted).
struct Prepared {
    records: Vec<OutgoingRecord>,
    errors: Vec<PointError>,
    series: Vec<SeriesId>,
    /// Remote write's histogram states, kept as baselines once accepted.
    baselines: Vec<(SeriesId, Cumulative)>,
}

/// Takes points: 202 once every point is durable in the bus.
///
/// `POST /metrics` (the original single-point contract) and `POST /v1/metrics`
/// (the sidecar's batches) take the same bodies and give the same answers.
#[utoipa::path(
    post,
    path = "/v1/metrics",
    tag = "ingest",
    params(
        pulse_server::ingest::ContentEncoding,
        ("Idempotency-Key" = Option<String>, Header, example = "batch-2026-12-07-0001",
         description = "A key for the whole batch: 1 to 128 visible ASCII characters without spaces, `\"` or `\\` (double quotes around it are allowed). A batch sent again under the same key and writer token within the mark horizon counts once in the windows; the sidecar always sends one."),
        ("Idempotency-Offset" = Option<u32>, Header, example = 400,
         description = "The index of this body's first point within the whole batch (default 0), so a batch can be sent in parts; needs `Idempotency-Key`."),
    ),
    request_body(
        description = "One point, an array of points, or NDJSON (one point per line)",
        content(
            (pulse_server::ingest::IngestBody = "application/json"),
            (String = "application/x-ndjson", example = "{\"metric_name\":\"mem_used\",\"value\":1024,\"tags\":{\"host\":\"db-01\"}}\n")
        )
    ),
    responses(
        (status = 202, description = "Every point is durable in the bus", body = pulse_server::ingest::Receipt),
        (status = 400, description = "`invalid_points`: some points were invalid (`details` is `InvalidPoints`; the valid ones were accepted), or of a new series over `gateway.max_active_series`; `invalid_json`, `empty_body`, `corrupt_body`: the body as a whole cannot be read; `invalid_idempotency_key`: a bad `Idempotency-Key` or `Idempotency-Offset` (nothing was read or accepted)", body = pulse_server::openapi::ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive within `http.body_timeout`", body = pulse_server::openapi::ErrorBody),
        (status = 413, description = "`body_too_large` (over `gateway.max_body_bytes`, before or after decompression) or `too_many_points` (over `gateway.max_points_per_request`)", body = pulse_server::openapi::ErrorBody),
        (status = 415, description = "`unsupported_encoding`: a `Content-Encoding` other than identity, gzip, zstd", body = pulse_server::openapi::ErrorBody),
        (status = 429, description = "`rate_limited`: the writer is over `gateway.rate_limit`; nothing was accepted, resend after `Retry-After` seconds", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before resending"))),
        (status = 503, description = "`unavailable` (the bus refused) or `overloaded` (no processing slot or decode budget within 2 s); nothing was accepted, retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn receive(
    State(gateway): State<Arc<Gateway>>,
    route: MatchedPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(gateway, route, headers, body, Format::Points).await
}

/// Takes Prometheus remote write 1.0: 202 once every sample is durable in the bus.
///
/// The same limits, authentication and answers as `POST /v1/metrics`, one
/// point per sample (see the README's "Metric types" for what counters and
/// classic histograms become).
#[utoipa::path(
    post,
    path = "/api/v1/write",
    tag = "ingest",
    params(
        ("Content-Encoding" = String, Header, example = "snappy",
         description = "`snappy` (the block format), as the remote write 1.0 specification requires"),
    ),
    request_body(
        description = "A `prometheus.WriteRequest` protobuf, snappy-compressed",
        content((Vec<u8> = "application/x-protobuf"))
    ),
    responses(
        (status = 202, description = "Every sample is durable in the bus", body = pulse_server::ingest::Receipt),
        (status = 400, description = "`invalid_points`: some samples were invalid (the valid ones were accepted); `corrupt_body`, `empty_body`: the body is not a snappy-compressed `WriteRequest`", body = pulse_server::openapi::ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive within `http.body_timeout`", body = pulse_server::openapi::ErrorBody),
        (status = 413, description = "`body_too_large` or `too_many_points`, as for `/v1/metrics`", body = pulse_server::openapi::ErrorBody),
        (status = 415, description = "`unsupported_encoding`: a `Content-Encoding` other than `snappy`", body = pulse_server::openapi::ErrorBody),
        (status = 429, description = "`rate_limited`: the writer is over `gateway.rate_limit`; nothing was accepted", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before resending"))),
        (status = 503, description = "`unavailable` or `overloaded`; nothing was accepted, retry after `Retry-After`", body = pulse_server::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn remote_write(
    State(gateway): State<Arc<Gateway>>,
    route: MatchedPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(gateway, route, headers, body, Format::RemoteWrite).await
}

/// What a route's bodies are.
#[derive(Debug, Clone, Copy)]
enum Format {
    /// The ingest contract: a JSON point, an array or NDJSON, optionally
    /// gzip or zstd.
    Points,
    /// A snappy-compressed `prometheus.WriteRequest`.
    RemoteWrite,
}

/// Ingests a request of `format` and answers it, counting the outcome.
async fn answer(
    gateway: Arc<Gateway>,
    route: MatchedPath,
    headers: HeaderMap,
    body: Body,
    format: Format,
) -> Response {
    let result = Arc::clone(&gateway).ingest(&headers, body, format).await;
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
    /// Takes one request from its body to the bus; the points of a `Receipt`
    /// are durable, those of a `Refusal` were not acknowledged.
    async fn ingest(
        self: Arc<Self>,
        headers: &HeaderMap,
        body: Body,
        format: Format,
    ) -> Result<Receipt, Refusal> {
        let batch = self.request_batch(headers).map_err(Refusal::Body)?;
        let encoding = content_encoding(headers);
        // Remote write's snappy is undone by its own decoder (the block
        // format announces its length); the edge sees an identity body.
        let encoding = match format {
            Format::Points => encoding,
            Format::RemoteWrite => {
                let snappy = encoding.as_deref().map(str::trim);
                if !snappy.is_some_and(|e| e.eq_ignore_ascii_case("snappy")) {
                    return Err(Refusal::Body(ApiError::new(
                        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_encoding",
                        format!(
                            "remote write bodies are snappy-compressed (`Content-Encoding: snappy`), \
                             not `{}`; send what Prometheus sends",
                            encoding.unwrap_or_else(|| "identity".into())
                        ),
                    )));
                }
                None
            }
        };
        // The body is read before a slot is taken, so a client trickling its
        // body holds only its connection and the bytes it sent (charged to the
        // decode budget), never a slot others need.
        let received = self
            .edge
            .read(body)
            .await
            .map_err(|e| Refusal::Body(e.answer()))?;
        self.metrics.body_received(received.bytes.len());
        // The permit is held until the answer is ready, so at most
        // `max_in_flight` requests are decoded or on their way to the bus.
        let _permit = self.admit().await?;
        let gateway = Arc::clone(&self);
        let now_ms = pulse_core::now_ms();
        let (prepared, _reservation) = self
            .edge
            .decode(received, encoding, move |text, charge| {
                let limits = &gateway.limits;
                let max_points = gateway.settings.max_points_per_request;
                let (parsed, baselines) = match format {
                    Format::Points => (
                        parse_points_within(text, limits, max_points, now_ms, charge)?,
                        Vec::new(),
                    ),
                    Format::RemoteWrite => {
                        let max_len = gateway.edge.max_decompressed_bytes;
                        let request = remote_write::decode(text, max_len, charge)?;
                        let baselines = gateway
                            .histograms
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        remote_write::to_points(request, limits, max_points, now_ms, &baselines)?
                    }
                };
                let mut prepared = gateway.prepare(parsed, batch.as_ref(), now_ms);
                prepared.baselines = baselines;
                Ok(prepared)
            })
            .await
            .map_err(|e| Refusal::Body(e.answer()))?;
        let accepted = prepared.records.len();
        self.metrics.points_parsed(accepted, &prepared.errors);
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
        if let Some(active) = &self.series {
            active.commit(prepared.series, now_ms);
            self.metrics.active_series(active.len());
        }
        if !prepared.baselines.is_empty() {
            let mut histograms = self
                .histograms
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let forgotten = histograms.forgotten();
            for (id, state) in prepared.baselines {
                histograms.set(id, state);
            }
            if histograms.forgotten() > forgotten {
                tracing::warn!(
                    message = "Histogram baselines were forgotten for room; their next scrape is a baseline again.",
                    forgotten = histograms.forgotten() - forgotten,
                    limit = HISTOGRAM_BASELINES,
                );
            }
        }
        Ok(Receipt {
            accepted,
            errors: prepared.errors,
        })
    }

    /// The request's idempotency headers, checked before its body is read:
    /// a bad key is refused whole (`400 invalid_idempotency_key`), since
    /// taking the points without it would lose the guarantee the client
    /// asked for.
    fn request_batch(&self, headers: &HeaderMap) -> Result<Option<RequestBatch>, ApiError> {
        let get = |name: &str| headers.get(name).map(|v| v.as_bytes());
        RequestBatch::from_headers(
            get(KEY_HEADER),
            get(OFFSET_HEADER),
            get(header::AUTHORIZATION.as_str()).unwrap_or_default(),
            self.settings.max_points_per_request,
        )
        .map_err(|e| ApiError::bad_request("invalid_idempotency_key", e.to_string()))
    }

    /// Waits up to [`ADMISSION_WAIT`] for a processing slot.
    async fn admit(&self) -> Result<SemaphorePermit<'_>, Refusal> {
        match tokio::time::timeout(ADMISSION_WAIT, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout is the only real case.
            Ok(Err(_)) | Err(_) => Err(Refusal::Overloaded),
        }
    }

    /// Holds back the points of new series over the active-series limit and
    /// encodes the rest as bus records; every point keeps its index in the
    /// request, and on the bus its place in the client's keyed batch.
    fn prepare(&self, batch: ParsedBatch, keyed: Option<&RequestBatch>, now_ms: i64) -> Prepared {
        let series: Vec<SeriesId> = batch.points.iter().map(|p| p.point.series_id()).collect();
        let passes = self
            .series
            .as_ref()
            .map(|active| (active.check(&series, now_ms), active.limit()));
        let mut errors = batch.errors;
        let mut records = Vec::with_capacity(batch.points.len());
        let mut admitted = Vec::with_capacity(batch.points.len());
        let mut refused = false;
        for (k, (indexed, id)) in batch.points.iter().zip(series).enumerate() {
            match &passes {
                Some((passes, limit)) if !passes[k] => {
                    errors.push(too_many_series(indexed.index, *limit));
                    refused = true;
                }
                _ => {
                    records.push(OutgoingRecord {
                        key: id.0,
                        value: encode_record(
                            &indexed.point,
                            keyed.map(|k| k.point(indexed.index)).as_ref(),
                        ),
                    });
                    admitted.push(id);
                }
            }
        }
        if refused {
            errors.sort_by_key(|e| e.index);
        }
        Prepared {
            records,
            errors,
            series: admitted,
            baselines: Vec::new(),
        }
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
                // The send task panicked: a bug, answered as one (500).
                Err(Refusal::Body(pulse_server::error::ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the gateway failed to send the batch; see its logs",
                )))
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
