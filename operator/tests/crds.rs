//! The CRDs as the API server sees them: the generated files are current, the
//! schema carries the names, columns, defaults and CEL rules, the CEL rules
//! accept good specs and refuse bad ones (evaluated here with kube's CEL
//! engine, as the API server would), and the examples a newcomer applies
//! parse, pass the rules and validate.

use std::path::PathBuf;

use kube::CustomResourceExt;
use kube::core::cel::{validate_cel, validate_cel_update};
use pulse_operator::crd::{Dashboard, MetricPipeline, crds_yaml};
use pulse_operator::validate::{validate_dashboard, validate_pipeline};
use serde::Deserialize;
use serde_json::{Value, json};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The documents of a multi-document YAML file, as JSON values.
fn yaml_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_file(path)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

fn of_kind(docs: &[Value], kind: &str) -> Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the documents"))
        .clone()
}

/// A resource as the API server returns it: namespaced, with a uid.
fn stored<K: serde::de::DeserializeOwned>(mut doc: Value) -> K {
    doc["metadata"]["namespace"] = json!("shop");
    doc["metadata"]["uid"] = json!("2b0e4a52-7c1f-4b7e-9a53-3c2a9d1f0e11");
    serde_json::from_value(doc).unwrap()
}

fn example_pipeline() -> MetricPipeline {
    stored(of_kind(
        &yaml_documents("examples/pipeline.yaml"),
        "MetricPipeline",
    ))
}

fn example_dashboard() -> Dashboard {
    stored(of_kind(
        &yaml_documents("examples/dashboard.yaml"),
        "Dashboard",
    ))
}

#[test]
fn crd_files_are_up_to_date() {
    let crds = crds_yaml().unwrap();
    assert_eq!(crds.len(), 2);
    for crd in crds {
        let path = repo_file(&format!("crds/{}.yaml", crd.name));
        // `PULSE_BLESS=1` writes them (and the chart's copies), as
        // `pulse crds --out-dir` would, without building the whole binary.
        if std::env::var_os("PULSE_BLESS").is_some() {
            for dir in ["crds", "charts/pulse/crds"] {
                let copy = repo_file(&format!("{dir}/{}.yaml", crd.name));
                std::fs::write(copy, &crd.yaml).unwrap();
            }
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == crd.yaml,
            "{} is out of date with operator/src/crd/: regenerate it with `cargo run -- crds --out-dir crds`",
            path.display()
        );
    }
}

#[test]
fn crds_name_the_kinds_short_names_status_and_columns() {
    let crd = serde_json::to_value(MetricPipeline::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "metricpipelines.pulse.dev");
    assert_eq!(crd["spec"]["group"], "pulse.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["mp"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<_> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Points/s",
            "Lag",
            "Last Window",
            "Gateway",
            "Windows",
            "Age"
        ]
    );
    // Health is read from status.health, which the health watch keeps.
    let health =
        &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["health"];
    for (column, path) in [
        ("Points/s", ".status.health.pointsPerSecond"),
        ("Lag", ".status.health.consumerLag"),
        ("Last Window", ".status.health.lastWindowClosed"),
    ] {
        let found = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == column)
            .unwrap();
        assert_eq!(found["jsonPath"], path);
        let field = path.rsplit('.').next().unwrap();
        assert!(
            health["properties"][field].is_object(),
            "{field} in {health}"
        );
    }

    let crd = serde_json::to_value(Dashboard::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "dashboards.pulse.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["pdash"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<_> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Pipeline", "URL", "Age"]);
}

#[test]
fn every_spec_field_is_documented_and_defaults_are_in_the_schema() {
    fn walk(path: &str, schema: &Value, undocumented: &mut Vec<String>) {
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                if prop["description"].as_str().is_none_or(str::is_empty) {
                    undocumented.push(here.clone());
                }
                walk(&here, prop, undocumented);
            }
        }
        if schema["items"].is_object() {
            walk(&format!("{path}[]"), &schema["items"], undocumented);
        }
    }
    for crd in [
        serde_json::to_value(MetricPipeline::crd()).unwrap(),
        serde_json::to_value(Dashboard::crd()).unwrap(),
    ] {
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut undocumented = Vec::new();
        walk("spec", spec, &mut undocumented);
        assert!(undocumented.is_empty(), "undocumented: {undocumented:?}");
    }
    let crd = serde_json::to_value(MetricPipeline::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let props = &spec["properties"];
    assert_eq!(props["kafka"]["properties"]["partitions"]["default"], 6);
    assert_eq!(
        props["kafka"]["properties"]["replicationFactor"]["default"],
        3
    );
    assert_eq!(props["windows"]["default"], json!(["1m", "5m", "15m"]));
    assert_eq!(props["allowedLateness"]["default"], "30s");
    assert_eq!(props["deletionPolicy"]["default"], "Retain");
    assert_eq!(props["deletionPolicy"]["enum"], json!(["Retain", "Delete"]));
    assert_eq!(
        props["kafka"]["properties"]["partitions"]["maximum"],
        1024.0
    );
    assert_eq!(spec["required"], json!(["database", "kafka"]));
}

/// The API server only takes structural schemas: every node typed (or an
/// int-or-string), no `anyOf`/`oneOf` choosing between types.
#[test]
fn schemas_are_structural() {
    fn walk(path: &str, schema: &Value, problems: &mut Vec<String>) {
        let typed = schema["type"].is_string()
            || schema["x-kubernetes-int-or-string"] == true
            || schema["x-kubernetes-preserve-unknown-fields"] == true;
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        for key in ["anyOf", "oneOf", "allOf", "$ref"] {
            if !schema[key].is_null() {
                problems.push(format!("{path}: {key}"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                walk(&format!("{path}.{name}"), prop, problems);
            }
        }
        for key in ["items", "additionalProperties"] {
            if schema[key].is_object() {
                walk(&format!("{path}.{key}"), &schema[key], problems);
            }
        }
    }
    for crd in [
        serde_json::to_value(MetricPipeline::crd()).unwrap(),
        serde_json::to_value(Dashboard::crd()).unwrap(),
    ] {
        let mut problems = Vec::new();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk("", root, &mut problems);
        assert!(
            problems.is_empty(),
            "{}: {problems:?}",
            crd["metadata"]["name"]
        );
        assert!(
            root["description"].as_str().unwrap().starts_with("A Pulse"),
            "kubectl explain shows the kind's own description"
        );
    }
}

#[test]
fn cel_rules_spanning_fields_are_in_the_schema() {
    let text = serde_json::to_string(&MetricPipeline::crd()).unwrap();
    for rule in [
        "self.processor.replicas <= self.kafka.partitions",
        "self.processor.autoscaling.minReplicas <= self.kafka.partitions",
        "self.minReplicas <= self.maxReplicas",
        "duration(w.split('/')[0]).getSeconds() % duration(w.split('/')[1]).getSeconds() == 0",
        "self >= oldSelf",
        "self == oldSelf",
        "self.metadata.name.size() <= 50",
        "self.rateBurst == 0 || self.rateBurst >= self.maxPointsPerRequest",
        "r.window in self.windows",
        "self.alerting.receivers.exists(x, x.name == n)",
        "self.kind != 'slack' || has(self.urlSecretRef)",
    ] {
        assert!(text.contains(rule), "missing CEL rule {rule}");
    }
    let text = serde_json::to_string(&Dashboard::crd()).unwrap();
    assert!(text.contains("self.map(t, t.value).isSorted()"));
}

/// The example with one change made to its JSON form.
fn pipeline_with(change: impl FnOnce(&mut Value)) -> MetricPipeline {
    let mut value = serde_json::to_value(example_pipeline()).unwrap();
    change(&mut value);
    serde_json::from_value(value).unwrap()
}

#[test]
fn cel_accepts_the_example_pipeline_and_dashboard() {
    validate_cel(&example_pipeline()).unwrap();
    validate_cel(&example_dashboard()).unwrap();
}

#[test]
fn cel_refuses_more_processors_than_partitions() {
    let bad = pipeline_with(|v| v["spec"]["processor"]["replicas"] = json!(7));
    let err = validate_cel(&bad).unwrap_err().to_string();
    assert!(err.contains("processor.replicas must not exceed"), "{err}");
}

#[test]
fn cel_refuses_autoscaling_that_cannot_work() {
    let bad = pipeline_with(|v| {
        v["spec"]["gateway"]["autoscaling"] = json!({"minReplicas": 5, "maxReplicas": 2})
    });
    let err = validate_cel(&bad).unwrap_err().to_string();
    assert!(
        err.contains("minReplicas must not exceed autoscaling.maxReplicas"),
        "{err}"
    );
    let bad = pipeline_with(|v| {
        v["spec"]["processor"]["autoscaling"] = json!({"minReplicas": 7, "maxReplicas": 12})
    });
    let err = validate_cel(&bad).unwrap_err().to_string();
    assert!(
        err.contains("processor.autoscaling.minReplicas must not exceed kafka.partitions"),
        "{err}"
    );
    let good = pipeline_with(|v| {
        v["spec"]["processor"]["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 60})
    });
    validate_cel(&good).unwrap();
}

#[test]
fn rate_and_series_limits_render_and_a_burst_below_a_full_request_is_refused() {
    let bad = pipeline_with(|v| {
        v["spec"]["limits"] = json!({"rateLimit": 1000, "rateBurst": 10, "maxPointsPerRequest": 50})
    });
    let err = validate_cel(&bad).unwrap_err().to_string();
    assert!(
        err.contains("rateBurst must be 0 or at least maxPointsPerRequest"),
        "{err}"
    );
    let good = pipeline_with(|v| {
        v["spec"]["limits"] =
            json!({"rateLimit": 1000, "maxActiveSeries": 50000, "seriesIdle": "30m"})
    });
    validate_cel(&good).unwrap();
    let rendered = validate_pipeline(&good).unwrap().config_toml;
    for line in [
        "rate_limit = 1000",
        "max_active_series = 50000",
        "series_idle = \"30m\"",
    ] {
        assert!(rendered.contains(line), "{line} in {rendered}");
    }
}

#[test]
fn cel_refuses_a_sliding_window_whose_slide_does_not_divide_its_size() {
    let bad = pipeline_with(|v| v["spec"]["windows"] = json!(["1m", "10m/3m"]));
    let err = validate_cel(&bad).unwrap_err().to_string();
    assert!(err.contains("multiple of its slide"), "{err}");
    let good = pipeline_with(|v| v["spec"]["windows"] = json!(["1m", "1h/5m", "90s/30s"]));
    validate_cel(&good).unwrap();
}

#[test]
fn cel_lets_partitions_grow_but_not_shrink_and_fixes_replication() {
    let old = example_pipeline();
    let grown = pipeline_with(|v| v["spec"]["kafka"]["partitions"] = json!(12));
    validate_cel_update(&grown, &old).unwrap();
    let shrunk = pipeline_with(|v| v["spec"]["kafka"]["partitions"] = json!(3));
    let err = validate_cel_update(&shrunk, &old).unwrap_err().to_string();
    assert!(err.contains("can only grow"), "{err}");
    let replicated = pipeline_with(|v| v["spec"]["kafka"]["replicationFactor"] = json!(2));
    let err = validate_cel_update(&replicated, &old)
        .unwrap_err()
        .to_string();
    assert!(err.contains("replicationFactor is fixed"), "{err}");
}

#[test]
fn cel_refuses_names_too_long_for_the_derived_objects() {
    let long = pipeline_with(|v| v["metadata"]["name"] = json!("p".repeat(51)));
    let err = validate_cel(&long).unwrap_err().to_string();
    assert!(err.contains("at most 50 characters"), "{err}");
}

#[test]
fn cel_refuses_unordered_dashboard_thresholds() {
    let mut value = serde_json::to_value(example_dashboard()).unwrap();
    value["spec"]["panels"][1]["thresholds"] =
        json!([{"value": 90, "color": "red"}, {"value": 80, "color": "orange"}]);
    let bad: Dashboard = serde_json::from_value(value).unwrap();
    let err = validate_cel(&bad).unwrap_err().to_string();
    assert!(err.contains("increasing order"), "{err}");
}

#[test]
fn examples_parse_and_validate() {
    let pipeline = validate_pipeline(&example_pipeline()).unwrap();
    assert_eq!(pipeline.name.as_str(), "checkout");
    let labels: Vec<_> = pipeline.windows.iter().map(|w| w.label.as_str()).collect();
    assert_eq!(labels, ["1m", "5m", "15m", "10m/1m"]);
    let dashboard = validate_dashboard(&example_dashboard(), &pipeline).unwrap();
    assert_eq!(dashboard.board.panels.len(), 4);

    // Every Secret key the example pipeline names is in the example Secret.
    let docs = yaml_documents("examples/pipeline.yaml");
    let secret = of_kind(&docs, "Secret");
    let spec = &of_kind(&docs, "MetricPipeline")["spec"];
    for reference in [
        &spec["database"]["urlSecretRef"],
        &spec["redis"]["urlSecretRef"],
        &spec["auth"]["ingestTokensSecretRef"],
        &spec["auth"]["readTokensSecretRef"],
        &spec["alerting"]["receivers"][0]["urlSecretRef"],
    ] {
        assert_eq!(reference["name"], secret["metadata"]["name"]);
        let key = reference["key"].as_str().unwrap();
        assert!(
            secret["stringData"][key].is_string(),
            "the example Secret has no key {key}"
        );
    }
}
