//! Reconciling a `Dashboard`: find and validate its pipeline, validate the
//! panels against it, build and apply the dashboard's objects, report status.
//! A dashboard holds no external state, so it needs no finalizer: its
//! objects go with it through their owner references.
//!
//! A dashboard follows its pipeline: the controller watches `MetricPipeline`
//! ([`dashboards_of`]), so a changed window, Secret reference or token
//! reaches the dashboard's config at once, and when the pipeline is deleted
//! the dashboard's Deployment goes (its schema may be dropped with the
//! pipeline) while its status says why, until the pipeline is back.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::status::{self, Check};
use super::{Context, Error, apply, error_policy as requeue_policy, key};
use crate::build::dashboard_objects;
use crate::crd::{Dashboard, DashboardStatus, MetricPipeline};
use crate::names::{self, Component};
use crate::validate::{validate_dashboard, validate_pipeline};

/// The kind label of metrics and logs.
pub const KIND: &str = "Dashboard";
/// How soon a dashboard whose pipeline is missing looks again.
const PIPELINE_MISSING: Duration = Duration::from_secs(60);

/// The reconcile entry point kube-runtime's `Controller` calls.
pub async fn reconcile(dashboard: Arc<Dashboard>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(KIND);
    let Some(namespace) = dashboard.namespace() else {
        return Ok(Action::await_change());
    };
    let result = reconcile_in(&dashboard, &namespace, &ctx).await;
    if result.is_ok() {
        ctx.succeeded(&key(dashboard.as_ref()));
    }
    result
}

/// Requeues a failed dashboard reconcile with backoff.
pub fn error_policy(dashboard: Arc<Dashboard>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_policy(KIND, dashboard.as_ref(), error, &ctx)
}

async fn reconcile_in(
    dashboard: &Dashboard,
    namespace: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let wanted = &dashboard.spec.pipeline;
    let pipelines: Api<MetricPipeline> = Api::namespaced(ctx.client.clone(), namespace);
    let pipeline = pipelines
        .get_opt(wanted)
        .await
        .map_err(Error::kube(format!(
            "reading MetricPipeline {namespace}/{wanted}"
        )))?;
    let gone = match &pipeline {
        None => Some(format!(
            "MetricPipeline {wanted} does not exist in namespace {namespace}; the dashboard is not \
             served until it does: create it or fix spec.pipeline"
        )),
        Some(p) if p.meta().deletion_timestamp.is_some() => Some(format!(
            "MetricPipeline {wanted} is being deleted; the dashboard is not served (its data may \
             be dropped with it): recreate the pipeline or delete the dashboard"
        )),
        Some(_) => None,
    };
    let (Some(pipeline), None) = (pipeline, gone.as_ref()) else {
        stop_serving(dashboard, namespace, ctx).await?;
        let message = gone.unwrap_or_default();
        not_ready(dashboard, ctx, "PipelineNotFound", message).await?;
        return Ok(Action::requeue(PIPELINE_MISSING));
    };
    let validated = match validate_pipeline(&pipeline)
        .map_err(|e| ("PipelineInvalid", format!("MetricPipeline {wanted}: {e}")))
        .and_then(|p| validate_dashboard(dashboard, &p).map_err(|e| ("InvalidSpec", e.to_string())))
    {
        Ok(validated) => validated,
        Err((reason, message)) => {
            ctx.metrics.failure(KIND, reason);
            not_ready(dashboard, ctx, reason, message).await?;
            return Ok(Action::requeue(status::RESYNC));
        }
    };
    let objects = dashboard_objects(&validated, &ctx.image);
    apply(&ctx.client, namespace, &objects.config_map).await?;
    apply(&ctx.client, namespace, &objects.service).await?;
    let deployment = apply(&ctx.client, namespace, &objects.deployment).await?;
    let mut checks = vec![status::deployment_check(
        status::DASHBOARD_READY,
        &deployment,
    )];
    let again = status::conclude(&mut checks);
    write_status(dashboard, ctx, &checks).await?;
    Ok(Action::requeue(again))
}

/// Deletes the dashboard's Deployment, so nothing answers from a pipeline that
/// is gone; its ConfigMap and Service stay for when the pipeline is back.
async fn stop_serving(dashboard: &Dashboard, namespace: &str, ctx: &Context) -> Result<(), Error> {
    let name = names::object_name(&dashboard.name_any(), Component::Dashboard);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(Error::kube(format!(
            "deleting Deployment {namespace}/{name} of a dashboard whose pipeline is gone"
        ))(error)),
    }
}

/// The dashboards that read `pipeline`: those of its namespace whose
/// `spec.pipeline` names it. The Dashboard controller's watch of
/// `MetricPipeline` reconciles them whenever the pipeline changes or goes.
pub fn dashboards_of(
    pipeline: &MetricPipeline,
    dashboards: impl IntoIterator<Item = Arc<Dashboard>>,
) -> Vec<ObjectRef<Dashboard>> {
    let namespace = pipeline.namespace();
    let name = pipeline.name_any();
    dashboards
        .into_iter()
        .filter(|d| d.namespace() == namespace && d.spec.pipeline == name)
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

async fn not_ready(
    dashboard: &Dashboard,
    ctx: &Context,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let checks = [
        Check::unknown(status::DASHBOARD_READY),
        Check::failed(status::READY, reason, message),
    ];
    write_status(dashboard, ctx, &checks).await
}

/// Writes the conditions and the URL (server-side apply on /status) and
/// publishes an Event when the conditions changed.
async fn write_status(dashboard: &Dashboard, ctx: &Context, checks: &[Check]) -> Result<(), Error> {
    let namespace = dashboard.namespace().unwrap_or_default();
    let name = dashboard.name_any();
    let previous = dashboard
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = dashboard.meta().generation;
    let conditions = status::conditions(previous, checks, generation, Timestamp::now());
    let changed = status::changed(previous, &conditions);
    let body = serde_json::json!({
        "apiVersion": Dashboard::api_version(&()),
        "kind": Dashboard::kind(&()),
        "status": DashboardStatus {
            conditions,
            observed_generation: generation,
            url: Some(names::dashboard_url(&namespace, &name)),
        },
    });
    let api: Api<Dashboard> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch_status(
        &name,
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::kube(format!(
        "writing the status of Dashboard {namespace}/{name}"
    )))?;
    if let (true, Some(ready)) = (changed, checks.iter().find(|c| c.type_ == status::READY)) {
        let type_ = if ready.ok == Some(true) {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.publish(
            &dashboard.object_ref(&()),
            type_,
            &ready.reason,
            "Reconcile",
            ready.message.clone(),
        )
        .await;
    }
    Ok(())
}
