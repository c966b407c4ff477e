//! The Kubernetes side of a pipeline reconcile: what the builders need to
//! know of the cluster (the pipeline's `Dashboard`s, whether KEDA is
//! installed), and applying the built objects in order, deleting the optional
//! ones the spec no longer asks for.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Resource};
use pulse_core::board::Boards;
use serde::de::DeserializeOwned;

use super::status::{self, Check};
use super::{Context, Error, apply};
use crate::build::{self, Cluster, PipelineObjects};
use crate::crd::Dashboard;
use crate::names::{self, Component};
use crate::validate::{ValidatedPipeline, validate_dashboard};

/// The condition saying whether `spec.processor.autoscaling` is in force.
pub const PROCESSOR_AUTOSCALING: &str = "ProcessorAutoscaling";

/// The boards of every valid `Dashboard` over `pipeline`. A dashboard that
/// does not validate is left out (its own status says why); the others are
/// served.
pub async fn boards(ctx: &Context, pipeline: &ValidatedPipeline) -> Result<Boards, Error> {
    let namespace = &pipeline.namespace;
    let api: Api<Dashboard> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = api
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(format!(
            "listing the Dashboards of {namespace}"
        )))?;
    let valid: Vec<_> = listed
        .items
        .iter()
        .filter(|d| {
            d.spec.pipeline == pipeline.name.as_str() && d.meta().deletion_timestamp.is_none()
        })
        .filter_map(|d| validate_dashboard(d, pipeline).ok())
        .collect();
    Ok(build::boards(&valid).unwrap_or_else(|error| {
        tracing::warn!(message = "The dashboards do not form one board set; serving none.", %error);
        Boards::default()
    }))
}

/// Whether KEDA's `ScaledObject` API is served (API discovery, which every
/// authenticated client may read). Asked only when a spec wants lag scaling.
pub async fn keda_installed(ctx: &Context) -> Result<bool, Error> {
    let group_version = format!("{}/{}", build::KEDA_GROUP, build::KEDA_VERSION);
    match ctx.client.list_api_group_resources(&group_version).await {
        Ok(list) => Ok(list
            .resources
            .iter()
            .any(|r| r.name == build::SCALED_OBJECTS)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(Error::kube(format!("discovering {group_version}"))(error)),
    }
}

/// The `ProcessorAutoscaling` condition, when the spec asks for lag scaling.
pub fn autoscaling_check(pipeline: &ValidatedPipeline, cluster: Cluster) -> Option<Check> {
    let scaling = pipeline.roles.processor_scaling.as_ref()?;
    let name = names::object_name(pipeline.name.as_str(), Component::Processor);
    Some(if cluster.keda {
        Check::ok(
            PROCESSOR_AUTOSCALING,
            "ScaledObjectApplied",
            format!(
                "KEDA ScaledObject {name} scales the processors from {} to {} on the lag of consumer group {}",
                scaling.min, scaling.max, scaling.consumer_group
            ),
        )
    } else {
        Check::failed(
            PROCESSOR_AUTOSCALING,
            "KedaNotInstalled",
            format!(
                "spec.processor.autoscaling needs KEDA, and the API {}/{} ({}) is not served in this cluster: \
                 install KEDA (https://keda.sh) or remove spec.processor.autoscaling; meanwhile \
                 spec.processor.replicas ({}) is in force",
                build::KEDA_GROUP,
                build::KEDA_VERSION,
                build::SCALED_OBJECTS,
                pipeline.roles.processor.replicas
            ),
        )
    })
}

/// The three Deployments as the API server answered their applies.
pub struct Applied {
    pub gateway: Deployment,
    pub processor: Deployment,
    pub dashboard: Deployment,
}

/// Applies every object of the pipeline in the builders' order, and deletes
/// the optional objects the spec no longer asks for.
pub async fn apply_all(
    ctx: &Context,
    ns: &str,
    pipeline: &str,
    objects: &PipelineObjects,
) -> Result<Applied, Error> {
    let client = &ctx.client;
    for account in &objects.service_accounts {
        apply(client, ns, account).await?;
    }
    apply(client, ns, &objects.config_map).await?;
    apply(client, ns, &objects.boards_config_map).await?;
    for service in &objects.services {
        apply(client, ns, service).await?;
    }
    let applied = Applied {
        gateway: apply(client, ns, &objects.gateway).await?,
        processor: apply(client, ns, &objects.processor).await?,
        dashboard: apply(client, ns, &objects.dashboard).await?,
    };
    for pdb in &objects.pdbs {
        apply(client, ns, pdb).await?;
    }
    let gateway = names::object_name(pipeline, Component::Gateway);
    let processor = names::object_name(pipeline, Component::Processor);
    let dashboard = names::object_name(pipeline, Component::Dashboard);
    apply_or_delete::<HorizontalPodAutoscaler>(ctx, ns, &gateway, objects.gateway_hpa.as_ref())
        .await?;
    apply_or_delete_scaled_object(
        ctx,
        ns,
        &processor,
        objects.processor_scaled_object.as_ref(),
    )
    .await?;
    apply_or_delete::<Ingress>(ctx, ns, &gateway, objects.gateway_ingress.as_ref()).await?;
    apply_or_delete::<Ingress>(ctx, ns, &dashboard, objects.dashboard_ingress.as_ref()).await?;
    Ok(applied)
}

async fn apply_or_delete<K>(
    ctx: &Context,
    ns: &str,
    name: &str,
    object: Option<&K>,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + serde::Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    match object {
        Some(object) => apply(&ctx.client, ns, object).await.map(drop),
        None => {
            let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
            gone(
                api.delete(name, &DeleteParams::background())
                    .await
                    .map(drop),
                K::kind(&()).as_ref(),
                ns,
                name,
            )
        }
    }
}

/// The ScaledObject is a CRD's: applied through a dynamic API. Without KEDA
/// the delete answers 404 like a missing object, which is what it is.
async fn apply_or_delete_scaled_object(
    ctx: &Context,
    ns: &str,
    name: &str,
    object: Option<&DynamicObject>,
) -> Result<(), Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &build::scaled_object_resource());
    match object {
        Some(object) => api
            .patch(
                name,
                &PatchParams::apply(names::FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
            .map(drop)
            .map_err(Error::kube(format!("applying ScaledObject {ns}/{name}"))),
        None => gone(
            api.delete(name, &DeleteParams::background())
                .await
                .map(drop),
            build::SCALED_OBJECT_KIND,
            ns,
            name,
        ),
    }
}

/// A delete that found nothing to delete succeeded.
fn gone(result: Result<(), kube::Error>, kind: &str, ns: &str, name: &str) -> Result<(), Error> {
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(Error::kube(format!(
            "deleting {kind} {ns}/{name}, which the spec no longer asks for"
        ))(error)),
    }
}

/// The readiness of the three Deployments, in condition order.
pub fn deployment_checks(applied: &Applied) -> [Check; 3] {
    [
        status::deployment_check(status::GATEWAY_READY, &applied.gateway),
        status::deployment_check(status::PROCESSOR_READY, &applied.processor),
        status::deployment_check(status::DASHBOARD_READY, &applied.dashboard),
    ]
}
