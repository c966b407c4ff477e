//! The OpenAPI documents: the copies in `docs/openapi/` are what the code
//! generates, every field and parameter is described with an example, and the
//! roles serve exactly these documents at `GET /openapi.json`.

use std::path::PathBuf;

use pulse_core::config::Config;
use serde_json::Value;

mod common;

fn committed(name: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs/openapi")
        .join(name);
    std::fs::read_to_string(path).ok()
}

#[test]
fn committed_documents_are_the_generated_ones() {
    let stale: Vec<&str> = pulse::openapi::documents()
        .iter()
        .filter(|(name, doc)| committed(name).as_deref() != Some(&pulse::openapi::text(doc)))
        .map(|(name, _)| *name)
        .collect();
    assert!(
        stale.is_empty(),
        "docs/openapi/ is stale for {stale:?}: run `cargo run -- openapi --out-dir docs/openapi` and commit the files"
    );
}

#[test]
fn documents_are_openapi_3_1_and_list_the_contract_routes() {
    let documents: Vec<(&str, Value)> = pulse::openapi::documents()
        .iter()
        .map(|(name, doc)| (*name, serde_json::to_value(doc).unwrap()))
        .collect();
    for (name, doc) in &documents {
        assert_eq!(doc["openapi"], "3.1.0", "{name}");
        assert!(doc["paths"]["/openapi.json"]["get"].is_object(), "{name}");
    }
    let paths = |name: &str| documents.iter().find(|(n, _)| *n == name).unwrap().1["paths"].clone();
    let gateway = paths("gateway.json");
    for path in ["/metrics", "/v1/metrics"] {
        assert!(gateway[path]["post"].is_object(), "gateway POST {path}");
    }
    assert!(
        gateway["/metrics"]["get"].is_object(),
        "gateway GET /metrics"
    );
    let dashboard = paths("dashboard.json");
    for path in [
        "/dashboard",
        "/api/v1/query_range",
        "/api/v1/anomalies",
        "/api/v1/live",
    ] {
        assert!(dashboard[path]["get"].is_object(), "dashboard GET {path}");
    }
    let receiver = paths("sidecar-receiver.json");
    assert!(
        receiver["/v1/metrics"]["post"].is_object() && receiver["/metrics"]["post"].is_object()
    );
}

/// Every property of every schema, and every parameter, says what it is and
/// shows a value, so a reader (and a generated client's docs) never guesses.
#[test]
fn every_field_and_parameter_has_a_description_and_an_example() {
    let mut missing = Vec::new();
    for (name, doc) in pulse::openapi::documents() {
        let doc = serde_json::to_value(&doc).unwrap();
        if let Some(schemas) = doc["components"]["schemas"].as_object() {
            for (schema, body) in schemas {
                for (field, property) in body["properties"].as_object().into_iter().flatten() {
                    // utoipa puts an optional reference's description beside
                    // the `$ref`, inside its `oneOf`.
                    let described = property.get("description").is_some()
                        || property["oneOf"]
                            .as_array()
                            .is_some_and(|any| any.iter().any(|v| v.get("description").is_some()));
                    // A reference or an enum shows its values where it is defined.
                    let text = property.to_string();
                    let example = property.get("example").is_some()
                        || property.get("examples").is_some()
                        || text.contains("\"$ref\"")
                        || text.contains("\"enum\"");
                    if !described || !example {
                        missing.push(format!("{name}: {schema}.{field}"));
                    }
                }
            }
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter.get("description").is_none() || parameter.get("example").is_none()
                    {
                        missing.push(format!("{name}: {method} {path} {}", parameter["name"]));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "without a description or an example: {missing:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulse_up_serves_its_documents() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&common::config_toml(dir.path(), "10s")).unwrap();
    let running = pulse::up::start(config).await.unwrap();
    let client = reqwest::Client::new();
    for (addr, name) in [
        (running.gateway, "gateway.json"),
        (running.dashboard, "dashboard.json"),
        (running.processor, "processor.json"),
    ] {
        let answer = client
            .get(format!("http://{addr}/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{name}");
        assert_eq!(
            answer.headers()["content-type"],
            "application/json",
            "{name}"
        );
        let served = answer.text().await.unwrap();
        let (_, doc) = pulse::openapi::documents()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        assert_eq!(served, pulse::openapi::text(&doc), "{name}");
    }
    running.stop().await.unwrap();
}
