//! `pulse openapi`: the OpenAPI 3.1 document of every HTTP listener of Pulse,
//! as each serves it at `GET /openapi.json`, by file name. `docs/openapi/`
//! holds them (`pulse openapi --out-dir docs/openapi`); a test fails when
//! those copies are stale.

use utoipa::openapi::OpenApi;

/// Every listener's document, by the file name it is written under.
pub fn documents() -> Vec<(&'static str, OpenApi)> {
    vec![
        ("gateway.json", pulse_gateway::openapi()),
        ("dashboard.json", pulse_dashboard::openapi()),
        ("processor.json", pulse_processor::run::openapi()),
        ("operator.json", pulse_operator::run::openapi()),
        ("sidecar-receiver.json", pulse_sidecar::openapi::receiver()),
        ("sidecar-otlp.json", pulse_sidecar::openapi::otlp()),
        ("sidecar-admin.json", pulse_sidecar::openapi::admin()),
    ]
}

/// The text of a document, exactly as its listener serves it.
pub fn text(doc: &OpenApi) -> String {
    pulse_server::openapi::to_json(doc)
}
