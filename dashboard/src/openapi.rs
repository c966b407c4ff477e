//! The dashboard's OpenAPI 3.1 document, served at `GET /openapi.json`.

use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        crate::api::dashboard,
        crate::api::query_range,
        crate::api::metrics,
        crate::api::tags,
        crate::api::dashboards,
        crate::api::dashboard_board,
        crate::live::live,
        crate::anomalies::anomalies,
        crate::ui::root,
        crate::ui::board,
        crate::ui::asset,
    ),
    components(schemas(crate::answer::LiveEvent, pulse_core::anomaly::Anomaly)),
    tags(
        (name = "query", description = "Windows, series, tags and the live stream"),
        (name = "anomalies", description = "What the anomaly rules found"),
        (name = "dashboards", description = "The boards of the web UI"),
        (name = "ui", description = "The web UI's page and assets"),
        (name = "operations", description = "Probes, metrics and this document")
    )
)]
struct DashboardApi;

/// The dashboard's document: the query API, the web UI and the operational routes.
pub fn openapi() -> OpenApi {
    let mut doc = DashboardApi::openapi();
    doc.merge(pulse_server::openapi::OpsApi::openapi());
    pulse_server::openapi::finish(
        doc,
        "Pulse dashboard",
        "The query API of a Pulse pipeline over the windows the processor stores, and its web UI. \
         With `dashboard.read_tokens` set, the API routes need a bearer token. Every error answer \
         is `{\"error\":{\"code\",\"message\",\"details\"}}`.",
    )
}
