//! The monitoring step of a pipeline reconcile: whether the Prometheus
//! Operator's `PodMonitor` exists in the cluster (API discovery, which every
//! authenticated client may read), and so whether the pipeline gets its
//! PodMonitors or the scrape annotations on its pods.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::Error;
use crate::build::PipelineObjects;
use crate::build::monitoring::{
    MONITORING_API_VERSION, annotate_for_scraping, pod_monitor_resource, pod_monitors,
};
use crate::names;
use crate::validate::ValidatedPipeline;

/// Whether the API server serves `monitoring.coreos.com/v1` `podmonitors`.
pub async fn pod_monitors_served(client: &Client) -> Result<bool, Error> {
    match client
        .list_api_group_resources(MONITORING_API_VERSION)
        .await
    {
        Ok(resources) => Ok(resources
            .resources
            .iter()
            .any(|r| r.name == pod_monitor_resource().plural)),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
        Err(error) => Err(Error::kube(format!(
            "discovering {MONITORING_API_VERSION} (the Prometheus Operator's PodMonitor)"
        ))(error)),
    }
}

/// Prepares the pipeline's scraping: the PodMonitors to apply when the
/// Prometheus Operator is installed; otherwise none, and the roles' pod
/// templates get the scrape annotations.
pub async fn prepare(
    client: &Client,
    pipeline: &ValidatedPipeline,
    objects: &mut PipelineObjects,
) -> Result<Vec<DynamicObject>, Error> {
    if pod_monitors_served(client).await? {
        return Ok(pod_monitors(pipeline).into());
    }
    annotate_for_scraping(&mut objects.gateway);
    annotate_for_scraping(&mut objects.processor);
    Ok(Vec::new())
}

/// Server-side applies the PodMonitors, as every other object is applied.
pub async fn apply_pod_monitors(
    client: &Client,
    namespace: &str,
    monitors: &[DynamicObject],
) -> Result<(), Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &pod_monitor_resource());
    for monitor in monitors {
        let name = monitor.name_any();
        api.patch(
            &name,
            &PatchParams::apply(names::FIELD_MANAGER).force(),
            &Patch::Apply(monitor),
        )
        .await
        .map_err(Error::kube(format!(
            "applying PodMonitor {namespace}/{name}"
        )))?;
    }
    Ok(())
}
