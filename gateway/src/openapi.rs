//! The gateway's OpenAPI 3.1 document, served at `GET /openapi.json`.

use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(crate::receive::receive, crate::receive::remote_write),
    components(schemas(
        pulse_server::ingest::InvalidPoints,
        pulse_core::validate::PointError
    )),
    tags(
        (name = "ingest", description = "Points in: 202 once durable in the bus"),
        (name = "operations", description = "Probes, metrics and this document")
    )
)]
struct GatewayApi;

/// The gateway's document: the ingest routes and the operational ones.
pub fn openapi() -> OpenApi {
    let mut doc = GatewayApi::openapi();
    doc.merge(pulse_server::openapi::OpsApi::openapi());
    pulse_server::ingest::also_at_metrics(&mut doc);
    pulse_server::openapi::finish(
        doc,
        "Pulse gateway",
        "The ingestion gateway of a Pulse pipeline: authenticates writers, validates points and \
         appends them to the bus. Every error answer is `{\"error\":{\"code\",\"message\",\"details\"}}`.",
    )
}
