//! The OpenAPI 3.1 documents every role publishes at `GET /openapi.json`.
//!
//! Each role describes its own routes with `#[utoipa::path]` on the real
//! handlers and `ToSchema` on the real request and answer types, so the
//! document is compiled from the code and cannot drift from it. This module
//! holds what every document shares: the one error shape ([`ErrorBody`]), the
//! operational endpoints ([`OpsApi`]), the route that serves a document, and
//! [`finish`], the one place that adds the answers every route can give
//! before its handler runs (the edge's head limits, bearer authentication).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder,
    Schema,
};
use utoipa::{OpenApi as _, ToSchema};

/// The body of every error answer of every role (the sidecar's OTLP receiver
/// alone answers in OTLP's `google.rpc.Status`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "bad_window", "message": "unknown window `2m`; configured: 1m, 5m", "details": {"valid_windows": ["1m", "5m"]}}}))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error itself: a stable code to branch on, a message for people, and
/// the structured details some codes carry.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"code": "body_too_large", "message": "the body is over the limit of 10485760 bytes", "details": {"limit_bytes": 10485760}}))]
pub struct ErrorDetail {
    /// Stable, machine-readable code (`invalid_points`, `bad_window`, `rate_limited`, ...).
    #[schema(example = "bad_window")]
    pub code: String,
    /// What happened and what to do, for a person.
    #[schema(example = "unknown window `2m`; configured: 1m, 5m")]
    pub message: String,
    /// Structured details of some codes: the limit crossed, the per-point errors
    /// of `invalid_points`, the valid choices. Absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = details_schema, required = false)]
    pub details: Option<Value>,
}

/// `details`: any JSON object (utoipa drops an example given to a free-form
/// object, so the schema is written here).
fn details_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Object)
        .description(Some(
            "Structured details of some codes: the limit crossed, the per-point errors \
             of `invalid_points`, the valid choices. Absent when there are none.",
        ))
        .examples([serde_json::json!({"limit_bytes": 10485760})])
        .build()
}

/// `GET /healthz`: the process is alive.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    /// Always `ok`: an answer at all means the process is alive.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /readyz`: whether every dependency answers, and what each said.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "checks": {"store": {"ok": true, "detail": "sqlite"}}}))]
pub struct Readiness {
    /// `ready` (200) or `not_ready` (503).
    #[schema(example = "ready")]
    pub status: &'static str,
    /// One entry per dependency, by name.
    #[schema(example = json!({"bus": {"ok": true, "detail": "3 partitions"}}))]
    pub checks: std::collections::BTreeMap<String, ReadinessEntry>,
}

/// What one dependency's check found.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"ok": false, "detail": "store commits failing for 12s"}))]
pub struct ReadinessEntry {
    /// Whether the dependency answers.
    #[schema(example = true)]
    pub ok: bool,
    /// What it answered, or why it is not ready.
    #[schema(example = "store commits failing for 12s")]
    pub detail: String,
}

/// `/healthz`, `/readyz` and `/metrics` ([`crate::ops_router`]), for the
/// documents of the listeners that serve them.
#[derive(utoipa::OpenApi)]
#[openapi(paths(crate::ops::healthz, crate::ops::readyz, crate::ops::metrics))]
pub struct OpsApi;

/// `/openapi.json` and the error shape, in every document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(openapi_json), components(schemas(ErrorBody, ErrorDetail)))]
struct DocumentApi;

/// The document of a listener whose only routes are the operational ones
/// (the processor's health port, the sidecar's admin port).
pub fn ops_document(title: &str, description: &str) -> OpenApi {
    finish(OpsApi::openapi(), title, description)
}

/// Names the document, adds `/openapi.json` and the answers every route can
/// give before its handler runs: 414 and 431 (the head limits), and 401/403
/// on the routes that declare bearer authentication.
pub fn finish(mut doc: OpenApi, title: &str, description: &str) -> OpenApi {
    doc.merge(DocumentApi::openapi());
    doc.info = InfoBuilder::new()
        .title(title)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(description))
        .build();
    let components = doc
        .components
        .get_or_insert_with(|| ComponentsBuilder::new().build());
    let mut authenticated = false;
    for item in doc.paths.paths.values_mut() {
        for operation in operations(item) {
            let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, text: &str| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(text));
            };
            add(
                "414",
                "url_too_long: the request target is over http.max_url_bytes",
            );
            add(
                "431",
                "headers_too_large: the request headers are over http.max_header_bytes",
            );
            if secured {
                authenticated = true;
                add(
                    "401",
                    "unauthorized: tokens are configured and no `Authorization: Bearer` header was sent",
                );
                add(
                    "403",
                    "forbidden: the bearer token is not one of the configured tokens",
                );
            }
        }
    }
    if authenticated {
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Needed only when the role has tokens configured (gateway.tokens, dashboard.read_tokens)",
                    ))
                    .build(),
            ),
        );
    }
    doc
}

/// The name of the bearer security scheme, for `security(...)` in path attributes.
pub const BEARER: &str = "bearer";

/// A role's document served at `GET /openapi.json`, serialised once.
pub fn router(doc: &OpenApi) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .with_state(Arc::<str>::from(to_json(doc)))
}

/// The document as the role serves it and `pulse openapi` writes it.
pub fn to_json(doc: &OpenApi) -> String {
    // The model holds only strings, numbers and maps with string keys, which
    // always serialise.
    let mut text = doc.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// The OpenAPI 3.1 document of this role's HTTP API: its routes, parameters,
/// bodies and answers. Generate a client from it.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
async fn openapi_json(State(text): State<Arc<str>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        text.to_string(),
    )
}

/// A documented error answer in the one error shape.
pub fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::<Schema>::Ref(Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build()
        .into()
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}
