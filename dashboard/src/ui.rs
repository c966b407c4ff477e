//! The web UI's pages and assets, embedded in the binary so a Pulse without
//! internet access (or without npm) serves the whole UI itself.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the dashboard list for browsers (`Accept: text/html`); the JSON API index for everyone else |
//! | `GET /d/<name>` | one dashboard; 404 (same page, which explains) for an unknown name |
//! | `GET /assets/<file>` | the app (`ui/src/`) and the vendored uPlot (`ui/vendor/`) |
//!
//! The pages hold no data, so they need no token: the app asks for one when the
//! API answers 401 and sends it as a bearer header on every request, the live
//! stream included (it reads the SSE stream with `fetch`, since `EventSource`
//! cannot set headers; a token in a URL would end up in logs and history).
//!
//! Every answer has an `ETag` (a hash of the content) and `Cache-Control:
//! no-cache`, so a browser revalidates and gets a `304` until Pulse is upgraded.
//! HTML pages carry a strict Content-Security-Policy: scripts, styles and
//! connections only from Pulse itself.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use pulse_server::ApiError;
use xxhash_rust::xxh64::xxh64;

use crate::api::{self, AppState};
use crate::boards;

/// One embedded file.
struct Asset {
    /// The path under `/assets/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($dir:literal, $file:literal, $type:expr) => {
        Asset {
            path: $file,
            content_type: $type,
            body: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/ui/",
                $dir,
                "/",
                $file
            )),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Everything under `/assets/`. A unit test checks that every file of `ui/src/`
/// and `ui/vendor/` is listed, so a new module cannot be forgotten.
static ASSETS: &[Asset] = &[
    asset!("src", "app.js", JS),
    asset!("src", "api.js", JS),
    asset!("src", "live.js", JS),
    asset!("src", "panels.js", JS),
    asset!("src", "chart.js", JS),
    asset!("src", "format.js", JS),
    asset!("src", "app.css", CSS),
    asset!("src", "favicon.svg", "image/svg+xml"),
    asset!("vendor", "uPlot.iife.min.js", JS),
    asset!("vendor", "uPlot.min.css", CSS),
    asset!("vendor", "uPlot.LICENSE", "text/plain; charset=utf-8"),
];

/// The one HTML page: the app reads its location to know what to show.
static PAGE: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/src/index.html"));

/// Content hashes, computed once.
static ETAGS: LazyLock<Vec<String>> =
    LazyLock::new(|| ASSETS.iter().map(|a| etag(a.body)).collect());
static PAGE_ETAG: LazyLock<String> = LazyLock::new(|| etag(PAGE));

fn etag(body: &[u8]) -> String {
    format!("\"{:016x}\"", xxh64(body, 0))
}

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// `GET /`: the UI for browsers, the JSON index for API clients, so `curl /`
/// keeps answering what it did before the UI existed.
#[utoipa::path(
    get,
    path = "/",
    tag = "ui",
    responses((status = 200, description = "The web UI's page to a client whose `Accept` has `text/html`; a JSON index of the API to any other", content(
        (String = "text/html", example = "<!doctype html>..."),
        (Object = "application/json", example = json!({"service": "pulse-dashboard", "endpoints": {"/dashboard": "latest closed window across series"}}))
    )))
)]
pub(crate) async fn root(headers: HeaderMap) -> Response {
    if wants_html(&headers) {
        page(StatusCode::OK, &headers)
    } else {
        api::index().into_response()
    }
}

/// `GET /d/{name}`: the page, or the page with a 404 for an unknown board (the
/// app then lists the boards that exist).
#[utoipa::path(
    get,
    path = "/d/{name}",
    tag = "ui",
    params(("name" = String, Path, description = "The board's name", example = "default")),
    responses(
        (status = 200, description = "The web UI's page, showing the board", content_type = "text/html", body = String, example = "<!doctype html>..."),
        (status = 404, description = "No such board: the page (which lists the boards) to browsers, `no_such_dashboard` to other clients", content(
            (String = "text/html", example = "<!doctype html>..."),
            (pulse_server::openapi::ErrorBody = "application/json")
        )),
    )
)]
pub(crate) async fn board(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let boards = state.boards.current();
    if boards::exists(&boards, &name) {
        page(StatusCode::OK, &headers)
    } else if wants_html(&headers) {
        page(StatusCode::NOT_FOUND, &headers)
    } else {
        api::no_such_board(&boards, &name).into_response()
    }
}

/// `GET /assets/{*path}`: the web UI's scripts, styles and fonts, with an
/// `ETag` (a matching `If-None-Match` gets 304).
#[utoipa::path(
    get,
    path = "/assets/{path}",
    tag = "ui",
    params(("path" = String, Path, description = "The file's path under the UI's assets", example = "app.js")),
    responses(
        (status = 200, description = "The file, with its content type", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "image/svg+xml"),
            (String = "text/plain")
        )),
        (status = 304, description = "Not modified: the `If-None-Match` matched the file's `ETag`"),
        (status = 404, description = "`not_found`: no such file", body = pulse_server::openapi::ErrorBody),
    )
)]
pub(crate) async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.path == path) {
        Some(i) => {
            let asset = &ASSETS[i];
            respond(
                StatusCode::OK,
                asset.content_type,
                asset.body,
                &ETAGS[i],
                &headers,
                false,
            )
        }
        None => ApiError::not_found(format!("no asset `{path}`")).into_response(),
    }
}

fn page(status: StatusCode, headers: &HeaderMap) -> Response {
    respond(
        status,
        "text/html; charset=utf-8",
        PAGE,
        &PAGE_ETAG,
        headers,
        true,
    )
}

/// Whether the client prefers HTML (every browser navigation says so).
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// The body with its caching and security headers, or `304` when the client
/// already holds this version (only for a `200`: a 404 page is always sent).
fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: &'static [u8],
    etag: &str,
    headers: &HeaderMap,
    html: bool,
) -> Response {
    let fresh = status == StatusCode::OK
        && headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag = HeaderValue::from_str(etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response()
    };
    let out = response.headers_mut();
    out.insert(header::ETAG, etag);
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if html {
        out.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        out.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        out.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        out.insert(
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_file_of_the_ui_is_embedded_once() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/ui");
        let on_disk: BTreeSet<String> = ["src", "vendor"]
            .iter()
            .flat_map(|sub| std::fs::read_dir(format!("{dir}/{sub}")).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != "index.html")
            .collect();
        let embedded: BTreeSet<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        assert_eq!(embedded.len(), ASSETS.len(), "an asset is listed twice");
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn content_types_follow_the_extension() {
        for asset in ASSETS {
            let expected = match asset.path.rsplit('.').next() {
                Some("js") => JS,
                Some("css") => CSS,
                Some("svg") => "image/svg+xml",
                _ => "text/plain; charset=utf-8",
            };
            assert_eq!(asset.content_type, expected, "{}", asset.path);
        }
    }

    /// `npm run vendor` copies uPlot from node_modules; the copy must be the
    /// version package.json pins and package-lock.json locks.
    #[test]
    fn vendored_uplot_is_the_locked_version() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/ui");
        let read_json = |file: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{file}")).unwrap())
                .unwrap()
        };
        let pinned = read_json("package.json")["dependencies"]["uplot"]
            .as_str()
            .unwrap()
            .to_string();
        let locked = read_json("package-lock.json")["packages"]["node_modules/uplot"]["version"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(pinned, locked, "package.json must pin an exact version");
        let vendored = ASSETS
            .iter()
            .find(|a| a.path == "uPlot.iife.min.js")
            .unwrap();
        let banner = std::str::from_utf8(&vendored.body[..80]).unwrap_or_default();
        assert!(
            banner.contains(&format!("uPlot (v{locked})")),
            "vendor/uPlot.iife.min.js is not uPlot {locked}: run `npm ci && npm run vendor` in dashboard/ui ({banner})"
        );
    }

    #[test]
    fn etags_are_stable_quoted_hashes() {
        assert_eq!(etag(b"a"), etag(b"a"));
        assert_ne!(etag(b"a"), etag(b"b"));
        assert!(PAGE_ETAG.starts_with('"') && PAGE_ETAG.len() == 18);
    }
}
