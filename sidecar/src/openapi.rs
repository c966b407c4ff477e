//! The OpenAPI 3.1 documents of the sidecar's three HTTP listeners, each
//! served at `GET /openapi.json` on its own port: the HTTP receiver (the
//! gateway's contract), the OTLP/HTTP receiver and the admin port.

use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(crate::receivers::http::receive),
    components(schemas(
        pulse_server::ingest::InvalidPoints,
        pulse_core::validate::PointError
    )),
    tags((name = "ingest", description = "Points in: 202 once in the buffer on disk"))
)]
struct ReceiverApi;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(crate::receivers::otlp::receive),
    tags((name = "otlp", description = "OTLP/HTTP metrics"))
)]
struct OtlpApi;

/// The HTTP receiver's document (`http.listen`, 127.0.0.1:9091 by default).
pub fn receiver() -> OpenApi {
    let mut doc = ReceiverApi::openapi();
    pulse_server::ingest::also_at_metrics(&mut doc);
    pulse_server::openapi::finish(
        doc,
        "Pulse sidecar: HTTP receiver",
        "The gateway's ingest contract on localhost, where 202 means the points are in the \
         sidecar's buffer on disk. Every error answer is `{\"error\":{\"code\",\"message\",\"details\"}}`.",
    )
}

/// The OTLP/HTTP receiver's document (`otlp.listen`, 127.0.0.1:4318 by default).
pub fn otlp() -> OpenApi {
    pulse_server::openapi::finish(
        OtlpApi::openapi(),
        "Pulse sidecar: OTLP/HTTP receiver",
        "OTLP/HTTP metrics (protobuf or JSON), answered as the OTLP specification asks: errors are \
         a `google.rpc.Status` in the request's encoding (the edge's own refusals, 414 and 431, \
         in the one JSON error shape).",
    )
}

/// The admin port's document (`admin.listen`, :9092 by default).
pub fn admin() -> OpenApi {
    pulse_server::openapi::ops_document(
        "Pulse sidecar: admin",
        "Probes and metrics of the sidecar: `/readyz` reports the buffer and the gateway.",
    )
}
