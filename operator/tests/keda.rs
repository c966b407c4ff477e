//! The KEDA ScaledObject the operator builds, validated against KEDA's
//! published schema (`tests/fixtures/keda/`) by a real JSON Schema validator
//! (Python's `jsonschema`, which `.ci/run` installs with kubernetes-validate),
//! strictly: a field KEDA does not know would be pruned by the API server and
//! silently lost, so it fails here. Skips without python3 and jsonschema
//! unless `CI` is set.

use std::io::Write;
use std::process::{Command, Stdio};

use pulse_core::board::Boards;
use pulse_operator::build::{Cluster, pipeline_objects};
use pulse_operator::crd::MetricPipeline;
use pulse_operator::validate::validate_pipeline;
use serde_json::{Value, json};

/// Validates `instance` against `schema` (Draft 7, strict objects); prints
/// `ok` or the first error's path and message.
const VALIDATE: &str = r#"
import json, sys
import jsonschema
def strict(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node and node.get("x-kubernetes-preserve-unknown-fields") is not True:
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
data = json.load(sys.stdin)
schema = data["schema"]
strict(schema)
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(data["instance"]), key=lambda e: list(e.path))
print("ok" if not errors else "/".join(map(str, errors[0].path)) + ": " + errors[0].message)
"#;

fn schema() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keda/scaledobjects.keda.sh.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the KEDA schema is checked in");
    serde_norway::from_str(&text).expect("the KEDA schema is YAML")
}

/// The validator's verdict, or `None` (after a skip notice) without python3
/// and jsonschema.
fn validate(instance: &Value) -> Option<String> {
    let input = json!({"schema": schema(), "instance": instance}).to_string();
    let child = Command::new("python3")
        .args(["-c", VALIDATE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let output = child.and_then(|mut child| {
        if let Some(stdin) = child.stdin.as_mut() {
            stdin.write_all(input.as_bytes())?;
        }
        child.wait_with_output()
    });
    match output {
        Ok(output) if output.status.success() => {
            Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
        }
        other => {
            let why = match other {
                Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
                Err(error) => error.to_string(),
            };
            pulse_core::test_policy::skip_or_fail(
                &format!("python3 with jsonschema cannot run ({why})"),
                "python3 -m pip install kubernetes-validate==1.37.0",
            );
            None
        }
    }
}

fn scaled_object() -> Value {
    let resource: MetricPipeline = serde_json::from_value(json!({
        "apiVersion": "pulse.dev/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": "checkout", "namespace": "shop", "uid": "u-1"},
        "spec": {
            "kafka": {"brokers": "kafka-0:9092", "partitions": 8},
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "processor": {"autoscaling": {"minReplicas": 2, "maxReplicas": 50}}
        }
    }))
    .unwrap();
    let objects = pipeline_objects(
        &validate_pipeline(&resource).unwrap(),
        "pulse:test",
        &Boards::default(),
        Cluster { keda: true },
    );
    serde_json::to_value(objects.processor_scaled_object.expect("a ScaledObject")).unwrap()
}

#[test]
fn the_scaled_object_fits_kedas_published_schema() {
    let object = scaled_object();
    assert_eq!(object["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(object["kind"], "ScaledObject");
    let Some(verdict) = validate(&object) else {
        return;
    };
    assert_eq!(verdict, "ok", "{object}");
}

/// The validation can fail: a field KEDA does not have, and a trigger
/// setting that is not a string, are caught.
#[test]
fn the_validation_catches_what_keda_would_drop_or_refuse() {
    let mut unknown = scaled_object();
    unknown["spec"]["maxReplicas"] = json!(3);
    let Some(verdict) = validate(&unknown) else {
        return;
    };
    assert!(verdict.contains("maxReplicas"), "{verdict}");
    let mut number = scaled_object();
    number["spec"]["triggers"][0]["metadata"]["lagThreshold"] = json!(10000);
    let verdict = validate(&number).unwrap_or_default();
    assert!(
        verdict.starts_with("spec/triggers/0/metadata/lagThreshold"),
        "{verdict}"
    );
}
