//! Reconciling a `Dashboard`: find and validate its pipeline, validate the
//! panels against it, and report status: the URL of the board and whether
//! the pipeline's dashboard server is available. The board itself is served
//! by that server: the pipeline's reconcile puts every valid `Dashboard` in
//! its boards ConfigMap (the pipeline controller watches `Dashboard`s,
//! [`pipeline_of`]), so a dashboard owns no objects and needs no finalizer.
//!
//! A dashboard follows its pipeline: the controller watches `MetricPipeline`
//! ([`dashboards_of`]), so a changed window or a pipeline that goes shows in
//! the dashboard's status at once.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::status::{self, Check};
use super::{Context, Error, error_policy as requeue_policy, key};
use crate::build::ingress_url;
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
    let server = names::object_name(wanted, Component::Dashboard);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let check = match deployments
        .get_opt(&server)
        .await
        .map_err(Error::kube(format!(
            "reading Deployment {namespace}/{server}"
        )))? {
        Some(deployment) => status::deployment_check(status::DASHBOARD_READY, &deployment),
        None => Check::failed(
            status::DASHBOARD_READY,
            "Progressing",
            format!(
                "the dashboard server Deployment {server} of pipeline {wanted} is not made yet; \
                 `kubectl describe mp {wanted}` says why when this lasts"
            ),
        ),
    };
    let mut checks = vec![check];
    let again = status::conclude(&mut checks);
    let url = board_url(&pipeline, namespace, validated.name.as_str());
    write_status(dashboard, ctx, &checks, Some(url)).await?;
    Ok(Action::requeue(again))
}

/// Where the board is reached: through the pipeline's dashboard Ingress when
/// it has one, else the in-cluster Service.
fn board_url(pipeline: &MetricPipeline, namespace: &str, board: &str) -> String {
    match &pipeline.spec.dashboards.ingress {
        Some(ingress) => format!("{}/d/{board}", ingress_url(ingress)),
        None => names::board_url(namespace, &pipeline.name_any(), board),
    }
}

/// The pipeline a dashboard is served by, which the pipeline controller
/// reconciles when the dashboard changes.
pub fn pipeline_of(dashboard: &Dashboard) -> Option<ObjectRef<MetricPipeline>> {
    let namespace = dashboard.namespace()?;
    Some(ObjectRef::new(&dashboard.spec.pipeline).within(&namespace))
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
    write_status(dashboard, ctx, &checks, None).await
}

/// Writes the conditions and the URL (none while not served; server-side
/// apply on /status) and
/// publishes an Event when the conditions changed.
async fn write_status(
    dashboard: &Dashboard,
    ctx: &Context,
    checks: &[Check],
    url: Option<String>,
) -> Result<(), Error> {
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
            url,
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
