//! Per-pod injection through the whole webhook path (AdmissionReview in,
//! JSON patch out, applied to the pod): the pod's annotations and metadata
//! reach the sidecar's environment and resources, and an annotation the
//! webhook cannot follow leaves the pod uninjected with a warning naming it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::admission::AdmissionResponse;
use pulse_operator::names;
use pulse_operator::webhook::{
    Admission, GatewayLimits, InjectTarget, SidecarSettings, admit, to_wire,
};
use serde_json::{Value, json};

fn opted_in(annotations: &[(&str, &str)]) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/admission/opted-in.json"
    );
    let mut review: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pod = &mut review["request"]["object"]["metadata"];
    pod["labels"]["app.kubernetes.io/version"] = json!("1.4.2");
    for (key, value) in annotations {
        pod["annotations"][*key] = json!(value);
    }
    review
}

fn target() -> InjectTarget {
    InjectTarget {
        pipeline: "checkout".into(),
        gateway_url: names::gateway_url("shop", "checkout"),
        token: None,
        limits: GatewayLimits {
            max_points_per_request: 100,
            max_decompressed_bytes: 1 << 20,
        },
        sidecar: SidecarSettings::new(
            "pulse-sidecar:test",
            SidecarSettings::default_resources(),
            "256Mi",
        )
        .unwrap(),
    }
}

/// The webhook's answer, as the API server reads it, and the pod after its patch.
fn inject(review: &Value) -> (AdmissionResponse, Option<Pod>) {
    let Admission::Candidate(candidate) = admit(&serde_json::to_vec(review).unwrap()) else {
        panic!("an opted-in pod is a candidate")
    };
    let wire = to_wire(&candidate.inject(&target(), true));
    let response: AdmissionResponse = {
        let mut response = wire["response"].clone();
        if let Some(patch) = response.get_mut("patch") {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch.as_str().unwrap())
                .unwrap();
            *patch = json!(bytes);
        }
        serde_json::from_value(response).unwrap()
    };
    let pod = response.patch.as_ref().map(|bytes| {
        let patch: json_patch::Patch = serde_json::from_slice(bytes).unwrap();
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).unwrap();
        serde_json::from_value(pod).unwrap()
    });
    (response, pod)
}

fn sidecar(pod: &Pod) -> Container {
    pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0].clone()
}

/// `name -> value` of the literal variables, `name -> fieldPath` of the downward ones.
fn env(container: &Container) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut literal = BTreeMap::new();
    let mut fields = BTreeMap::new();
    for var in container.env.iter().flatten() {
        match (&var.value, &var.value_from) {
            (Some(value), _) => {
                literal.insert(var.name.clone(), value.clone());
            }
            (None, Some(from)) => {
                let path = from.field_ref.as_ref().unwrap().field_path.clone();
                fields.insert(var.name.clone(), path);
            }
            _ => panic!("{} has no value", var.name),
        }
    }
    (literal, fields)
}

#[test]
fn a_plain_opted_in_pod_is_tagged_with_its_workload_container_node_and_name() {
    let (response, pod) = inject(&opted_in(&[]));
    assert_eq!(response.warnings, None);
    let (literal, fields) = env(&sidecar(&pod.unwrap()));
    for (tag, value) in [
        ("NAMESPACE", "shop"),
        ("WORKLOAD_KIND", "Deployment"),
        ("WORKLOAD", "web"),
        ("CONTAINER", "web"),
    ] {
        assert_eq!(
            literal
                .get(&format!("PULSE_SIDECAR_TAGS__{tag}"))
                .map(String::as_str),
            Some(value),
            "{tag}"
        );
    }
    assert_eq!(
        fields,
        BTreeMap::from([
            ("PULSE_SIDECAR_TAGS__NODE".into(), "spec.nodeName".into()),
            ("PULSE_SIDECAR_TAGS__POD".into(), "metadata.name".into()),
        ])
    );
    assert!(!literal.contains_key("PULSE_SIDECAR_PROMETHEUS__PORT"));
}

#[test]
fn annotations_set_scraping_resources_tags_and_drop_the_pod_tag() {
    let (response, pod) = inject(&opted_in(&[
        ("pulse.dev/prometheus-port", "9464"),
        ("pulse.dev/prometheus-path", "/stats"),
        ("pulse.dev/sidecar-memory-limit", "256Mi"),
        ("pulse.dev/sidecar-cpu-request", "25m"),
        ("pulse.dev/tags", "team=payments,tier=web"),
        ("pulse.dev/tag-labels", "app,app.kubernetes.io/version"),
        ("pulse.dev/pod-tag", "false"),
    ]));
    assert_eq!(response.warnings, None);
    let sidecar = sidecar(&pod.unwrap());
    let (literal, fields) = env(&sidecar);
    for (name, value) in [
        ("PULSE_SIDECAR_PROMETHEUS__PORT", "9464"),
        ("PULSE_SIDECAR_PROMETHEUS__PATH", "/stats"),
        ("PULSE_SIDECAR_TAGS__TEAM", "payments"),
        ("PULSE_SIDECAR_TAGS__TIER", "web"),
        ("PULSE_SIDECAR_TAGS__APP", "web"),
        ("PULSE_SIDECAR_TAGS__APP_KUBERNETES_IO_VERSION", "1.4.2"),
    ] {
        assert_eq!(literal.get(name).map(String::as_str), Some(value), "{name}");
    }
    assert!(
        !fields.contains_key("PULSE_SIDECAR_TAGS__POD"),
        "{fields:?}"
    );
    let resources = sidecar.resources.unwrap();
    assert_eq!(
        resources.limits.unwrap()["memory"],
        Quantity("256Mi".into())
    );
    let requests = resources.requests.unwrap();
    assert_eq!(requests["cpu"], Quantity("25m".into()));
    assert_eq!(
        requests["memory"],
        Quantity("32Mi".into()),
        "the rest stays"
    );
}

#[test]
fn an_annotation_that_cannot_be_followed_leaves_the_pod_alone_with_a_warning() {
    let (response, pod) = inject(&opted_in(&[("pulse.dev/prometheus-port", "http")]));
    assert!(response.allowed);
    assert!(pod.is_none(), "no patch");
    let warnings = response.warnings.unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("annotation pulse.dev/prometheus-port: `http` is not a port"),
        "{warnings:?}"
    );
}
