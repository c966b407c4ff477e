//! Pure: what one pod asks of its sidecar through annotations, and the
//! Kubernetes metadata it is tagged with. Everything here becomes sidecar
//! environment (`PULSE_SIDECAR_*`), so `kubectl describe pod` shows it.
//!
//! | annotation | what |
//! |---|---|
//! | `pulse.dev/prometheus-port`, `pulse.dev/prometheus-path` | scrape the app's Prometheus endpoint on 127.0.0.1 |
//! | `pulse.dev/sidecar-cpu-request`, `-memory-request`, `-cpu-limit`, `-memory-limit` | the sidecar's resources, over the operator's |
//! | `pulse.dev/tags` | extra tags, `key=value,key=value` |
//! | `pulse.dev/tag-labels` | pod labels to copy as tags, `app,app.kubernetes.io/version` |
//! | `pulse.dev/pod-tag` | `"false"`: no `pod` tag (a new series at every rollout) |

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub const PROMETHEUS_PORT: &str = "pulse.dev/prometheus-port";
pub const PROMETHEUS_PATH: &str = "pulse.dev/prometheus-path";
pub const CPU_REQUEST: &str = "pulse.dev/sidecar-cpu-request";
pub const MEMORY_REQUEST: &str = "pulse.dev/sidecar-memory-request";
pub const CPU_LIMIT: &str = "pulse.dev/sidecar-cpu-limit";
pub const MEMORY_LIMIT: &str = "pulse.dev/sidecar-memory-limit";
pub const TAGS: &str = "pulse.dev/tags";
pub const TAG_LABELS: &str = "pulse.dev/tag-labels";
pub const POD_TAG: &str = "pulse.dev/pod-tag";

/// Tags the injected sidecar sets from the pod itself.
const RESERVED_TAGS: [&str; 3] = ["pod", "namespace", "node"];

/// The label a Deployment's ReplicaSets put on their pods; the ReplicaSet's
/// name is the Deployment's plus `-<hash>`.
const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// What one pod's sidecar gets beyond the pipeline's settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PerPod {
    pub prometheus_port: Option<u16>,
    pub prometheus_path: Option<String>,
    /// Resource quantities by (`requests`|`limits`, `cpu`|`memory`).
    pub resources: Vec<(&'static str, &'static str, Quantity)>,
    /// Tags with literal values: the workload, the container, extra tags and
    /// copied labels, by tag key.
    pub tags: BTreeMap<String, String>,
    /// Whether the sidecar tags points with the pod's name.
    pub pod_tag: bool,
}

/// An annotation the webhook cannot follow: the pod is admitted without the
/// sidecar and this is the warning.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("annotation {annotation}: `{value}` {problem}")]
pub struct BadAnnotation {
    pub annotation: &'static str,
    pub value: String,
    pub problem: String,
}

/// Reads `pod`'s annotations, labels and owner into what its sidecar gets.
pub fn per_pod(pod: &Pod) -> Result<PerPod, BadAnnotation> {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let get = |key: &'static str| annotations.get(key).map(|v| (key, v.trim()));
    let bad = |annotation: &'static str, value: &str, problem: &str| BadAnnotation {
        annotation,
        value: value.to_string(),
        problem: problem.to_string(),
    };
    let mut per_pod = PerPod {
        pod_tag: true,
        ..PerPod::default()
    };
    if let Some((key, value)) = get(PROMETHEUS_PORT) {
        let port = value
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(key, value, "is not a port (1 to 65535)"))?;
        per_pod.prometheus_port = Some(port);
    }
    if let Some((key, value)) = get(PROMETHEUS_PATH) {
        if !value.starts_with('/') || value.contains(char::is_whitespace) {
            return Err(bad(
                key,
                value,
                "must be a path starting with `/`, e.g. /metrics",
            ));
        }
        per_pod.prometheus_path = Some(value.to_string());
    }
    for (key, section, resource) in [
        (CPU_REQUEST, "requests", "cpu"),
        (MEMORY_REQUEST, "requests", "memory"),
        (CPU_LIMIT, "limits", "cpu"),
        (MEMORY_LIMIT, "limits", "memory"),
    ] {
        if let Some((key, value)) = get(key) {
            if !is_quantity(value) {
                return Err(bad(
                    key,
                    value,
                    "is not a Kubernetes quantity, e.g. 50m, 0.5, 64Mi, 1Gi",
                ));
            }
            per_pod
                .resources
                .push((section, resource, Quantity(value.to_string())));
        }
    }
    if let Some((key, value)) = get(POD_TAG) {
        per_pod.pod_tag = match value {
            "true" => true,
            "false" => false,
            _ => return Err(bad(key, value, "must be \"true\" or \"false\"")),
        };
    }
    per_pod.tags.extend(workload_tags(pod));
    if let Some((key, value)) = get(TAG_LABELS) {
        for label in value.split(',').map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(found) = labels.get(label) {
                per_pod.tags.insert(tag_key(label), found.clone());
            }
        }
        if value.split(',').all(|l| l.trim().is_empty()) {
            return Err(bad(key, value, "names no label; list them comma-separated"));
        }
    }
    if let Some((key, value)) = get(TAGS) {
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tag, tag_value) = pair
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .filter(|(k, v)| is_tag_key(k) && !v.is_empty())
                .ok_or_else(|| {
                    bad(
                        key,
                        value,
                        "must be key=value pairs separated by commas, keys of a-z, 0-9 and `_` starting with a letter",
                    )
                })?;
            if RESERVED_TAGS.contains(&tag) {
                return Err(bad(
                    key,
                    value,
                    "sets a tag the sidecar sets itself (pod, namespace, node)",
                ));
            }
            per_pod.tags.insert(tag.to_string(), tag_value.to_string());
        }
    }
    Ok(per_pod)
}

impl PerPod {
    /// The sidecar's resources: `base` with this pod's quantities over it.
    pub fn resources(&self, base: &ResourceRequirements) -> ResourceRequirements {
        let mut resources = base.clone();
        for (section, resource, quantity) in &self.resources {
            let map = match *section {
                "requests" => &mut resources.requests,
                _ => &mut resources.limits,
            };
            map.get_or_insert_with(BTreeMap::new)
                .insert((*resource).to_string(), quantity.clone());
        }
        resources
    }
}

/// `workload_kind` and `workload` from the pod's controller (a ReplicaSet of
/// a Deployment counts as the Deployment), and `container`, the app's first
/// container. Stable across rollouts, unlike the pod's name.
fn workload_tags(pod: &Pod) -> Vec<(String, String)> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(TEMPLATE_HASH_LABEL));
    let (kind, name) = match (owner, hash) {
        (Some(o), Some(hash)) if o.kind == "ReplicaSet" => {
            match o
                .name
                .strip_suffix(hash.as_str())
                .and_then(|n| n.strip_suffix('-'))
            {
                Some(deployment) => ("Deployment".to_string(), deployment.to_string()),
                None => (o.kind.clone(), o.name.clone()),
            }
        }
        (Some(o), _) => (o.kind.clone(), o.name.clone()),
        (None, _) => (
            "Pod".to_string(),
            pod.metadata
                .name
                .clone()
                .or_else(|| pod.metadata.generate_name.clone())
                .unwrap_or_default(),
        ),
    };
    let mut tags = vec![("workload_kind".to_string(), kind)];
    if !name.is_empty() {
        tags.push(("workload".to_string(), name));
    }
    if let Some(app) = pod.spec.as_ref().and_then(|s| s.containers.first()) {
        tags.push(("container".to_string(), app.name.clone()));
    }
    tags
}

/// A label key as a tag key the sidecar's environment can carry: lower case,
/// every character outside a-z, 0-9 and `_` as `_` (`app.kubernetes.io/name`
/// is `app_kubernetes_io_name`).
pub fn tag_key(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A tag key that survives the trip through an environment variable name.
fn is_tag_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A Kubernetes quantity: a decimal number and an optional suffix.
fn is_quantity(text: &str) -> bool {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        serde_json::from_value(json!({
            "metadata": {
                "name": "web-7d9f8b6c4d-x2k9q",
                "labels": {"app": "web", "pod-template-hash": "7d9f8b6c4d", "app.kubernetes.io/version": "1.4"},
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c4d", "uid": "u", "controller": true}]
            },
            "spec": {"containers": [{"name": "checkout"}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_without_annotations_is_tagged_with_its_workload_and_container() {
        let per_pod = per_pod(&pod(&[])).unwrap();
        assert!(per_pod.pod_tag);
        assert_eq!(per_pod.prometheus_port, None);
        assert_eq!(
            per_pod.tags,
            BTreeMap::from([
                ("workload_kind".into(), "Deployment".into()),
                ("workload".into(), "web".into()),
                ("container".into(), "checkout".into()),
            ])
        );
    }

    #[test]
    fn annotations_set_scraping_resources_tags_and_the_pod_tag() {
        let per_pod = per_pod(&pod(&[
            (PROMETHEUS_PORT, "9464"),
            (PROMETHEUS_PATH, "/stats"),
            (CPU_REQUEST, "50m"),
            (MEMORY_LIMIT, "256Mi"),
            (TAGS, "team=payments, tier=web"),
            (TAG_LABELS, "app.kubernetes.io/version,missing"),
            (POD_TAG, "false"),
        ]))
        .unwrap();
        assert_eq!(per_pod.prometheus_port, Some(9464));
        assert_eq!(per_pod.prometheus_path.as_deref(), Some("/stats"));
        assert!(!per_pod.pod_tag);
        assert_eq!(per_pod.tags["team"], "payments");
        assert_eq!(per_pod.tags["tier"], "web");
        assert_eq!(per_pod.tags["app_kubernetes_io_version"], "1.4");
        assert!(!per_pod.tags.contains_key("missing"));
        let resources = per_pod.resources(&ResourceRequirements {
            requests: Some(BTreeMap::from([("memory".into(), Quantity("32Mi".into()))])),
            ..ResourceRequirements::default()
        });
        let requests = resources.requests.unwrap();
        assert_eq!(requests["cpu"], Quantity("50m".into()));
        assert_eq!(requests["memory"], Quantity("32Mi".into()));
        assert_eq!(
            resources.limits.unwrap()["memory"],
            Quantity("256Mi".into())
        );
    }

    #[test]
    fn bad_annotations_name_the_annotation() {
        for (key, value) in [
            (PROMETHEUS_PORT, "http"),
            (PROMETHEUS_PORT, "0"),
            (PROMETHEUS_PATH, "metrics"),
            (CPU_LIMIT, "lots"),
            (MEMORY_REQUEST, "1.2.3Gi"),
            (TAGS, "Team=x"),
            (TAGS, "team"),
            (TAGS, "node=x"),
            (TAG_LABELS, ","),
            (POD_TAG, "no"),
        ] {
            let error = per_pod(&pod(&[(key, value)])).unwrap_err();
            assert_eq!((error.annotation, error.value.as_str()), (key, value));
        }
    }

    #[test]
    fn workloads_other_than_deployments_and_bare_pods_keep_their_kind() {
        let mut stateful = pod(&[]);
        stateful.metadata.owner_references.as_mut().unwrap()[0].kind = "StatefulSet".into();
        stateful.metadata.owner_references.as_mut().unwrap()[0].name = "db".into();
        assert_eq!(per_pod(&stateful).unwrap().tags["workload"], "db");
        let mut bare = pod(&[]);
        bare.metadata.owner_references = None;
        let tags = per_pod(&bare).unwrap().tags;
        assert_eq!(
            (tags["workload_kind"].as_str(), tags["workload"].as_str()),
            ("Pod", "web-7d9f8b6c4d-x2k9q")
        );
        assert_eq!(tag_key("app.kubernetes.io/name"), "app_kubernetes_io_name");
    }
}
