//! How Prometheus finds a pipeline's pods: a `PodMonitor` of the Prometheus
//! Operator when its CRDs are installed, the `prometheus.io/*` scrape
//! annotations that annotation-based scrape configs read otherwise. Pure: the
//! reconciler decides which (by API discovery) and applies what these return.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::core::{ApiResource, DynamicObject};
use serde_json::json;

use super::Owner;
use super::deployment::HTTP_PORT_NAME;
use crate::names;
use crate::validate::ValidatedPipeline;
use crate::webhook::sidecar::ADMIN_PORT_NAME;

/// The Prometheus Operator's API group and version holding `PodMonitor`.
pub const MONITORING_API_VERSION: &str = "monitoring.coreos.com/v1";
/// Every role serves its metrics here (and so does the sidecar's admin port).
pub const METRICS_PATH: &str = "/metrics";
/// How often Prometheus scrapes the pipeline: the processors' lag and window
/// counters move every checkpoint, so a minute would blur the lag alert.
pub const SCRAPE_INTERVAL: &str = "30s";
/// The annotations annotation-based scrape configs (the Prometheus Helm
/// chart's `kubernetes-pods` job and most others) read.
pub const SCRAPE_ANNOTATION: &str = "prometheus.io/scrape";
pub const PORT_ANNOTATION: &str = "prometheus.io/port";
pub const PATH_ANNOTATION: &str = "prometheus.io/path";

/// `PodMonitor` of the Prometheus Operator, for [`kube::Api`] over
/// [`DynamicObject`] (the type is not ours to generate a CRD for).
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: MONITORING_API_VERSION.into(),
        kind: "PodMonitor".into(),
        plural: "podmonitors".into(),
    }
}

/// Name of the PodMonitor of the pipeline's gateway and processor pods.
pub fn pod_monitor_name(pipeline: &str) -> String {
    format!("{pipeline}-pulse")
}

/// Name of the PodMonitor of the sidecars injected for the pipeline.
pub fn sidecar_pod_monitor_name(pipeline: &str) -> String {
    format!("{pipeline}-pulse-sidecars")
}

/// The pipeline's two PodMonitors: its roles' pods (by the labels every
/// object of the pipeline carries, on their `http` port) and the pods its
/// sidecars were injected into (label `pulse.dev/inject: <pipeline>`, on the
/// sidecar's admin port). Both keep the role and pipeline as target labels,
/// so the chart's alerts and dashboards can group by them.
pub fn pod_monitors(pipeline: &ValidatedPipeline) -> [DynamicObject; 2] {
    let owner = Owner {
        namespace: &pipeline.namespace,
        instance: pipeline.name.as_str(),
        reference: &pipeline.owner,
    };
    let roles = pod_monitor(
        &owner,
        &pod_monitor_name(pipeline.name.as_str()),
        owner.selector(None),
        HTTP_PORT_NAME,
        &[names::LABEL_INSTANCE, names::LABEL_COMPONENT],
    );
    let sidecars = pod_monitor(
        &owner,
        &sidecar_pod_monitor_name(pipeline.name.as_str()),
        BTreeMap::from([(
            names::INJECT_LABEL.to_string(),
            pipeline.name.as_str().to_string(),
        )]),
        ADMIN_PORT_NAME,
        &[names::INJECT_LABEL],
    );
    [roles, sidecars]
}

fn pod_monitor(
    owner: &Owner<'_>,
    name: &str,
    selector: BTreeMap<String, String>,
    port: &str,
    target_labels: &[&str],
) -> DynamicObject {
    let resource = pod_monitor_resource();
    let mut object = DynamicObject::new(name, &resource).data(json!({
        "spec": {
            "selector": {"matchLabels": selector},
            "podTargetLabels": target_labels,
            "podMetricsEndpoints": [{
                "port": port,
                "path": METRICS_PATH,
                "interval": SCRAPE_INTERVAL,
            }],
        }
    }));
    object.metadata = owner.meta(name, None);
    object
}

/// Adds the `prometheus.io/*` scrape annotations to a role's pod template,
/// naming the port of its `http` container port (where `/metrics` is).
pub fn annotate_for_scraping(deployment: &mut Deployment) {
    let spec = &mut deployment.spec;
    let port = spec
        .template
        .spec
        .iter()
        .flat_map(|pod| &pod.containers)
        .flat_map(|container| container.ports.iter().flatten())
        .find(|port| port.name.as_deref() == Some(HTTP_PORT_NAME))
        .map(|port| port.container_port);
    let Some(port) = port else {
        return;
    };
    let annotations = spec
        .template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (SCRAPE_ANNOTATION, "true".to_string()),
        (PORT_ANNOTATION, port.to_string()),
        (PATH_ANNOTATION, METRICS_PATH.to_string()),
    ] {
        annotations.insert(key.to_string(), value);
    }
}
