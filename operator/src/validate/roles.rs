//! The roles' Deployments as the builders take them: replicas, resources and
//! placement, and the autoscalers and Ingresses in front of them.

use k8s_openapi::api::core::v1::ResourceRequirements;

use super::{InvalidSpec, in_range};
use crate::crd::{
    CpuAutoscalingSpec, IngressSpec, LagAutoscalingSpec, MetricPipelineSpec, PlacementSpec,
    RoleSpec,
};

/// Replicas, resources and placement of one Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub replicas: i32,
    /// `None`: the builders' defaults.
    pub resources: Option<ResourceRequirements>,
    pub placement: PlacementSpec,
}

/// A HorizontalPodAutoscaler on CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuScaling {
    pub min: i32,
    pub max: i32,
    pub target_cpu: i32,
}

/// Scaling on consumer lag, `max` already capped at the partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagScaling {
    pub min: i32,
    pub max: i32,
    pub lag_threshold: i64,
    /// What the scaler reads: the brokers, the consumer group and its topic.
    pub brokers: String,
    pub consumer_group: String,
    pub topic: String,
}

/// Every role of a pipeline, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Roles {
    pub gateway: Workload,
    pub processor: Workload,
    pub dashboards: Workload,
    pub gateway_scaling: Option<CpuScaling>,
    pub processor_scaling: Option<LagScaling>,
    pub gateway_ingress: Option<IngressSpec>,
    pub dashboards_ingress: Option<IngressSpec>,
}

/// The roles of `spec`; the lag scaler reads `consumer_group` on `topic`.
pub(super) fn roles(
    spec: &MetricPipelineSpec,
    partitions: i32,
    consumer_group: String,
    topic: String,
) -> Result<Roles, InvalidSpec> {
    let gateway = workload("gateway", &spec.gateway.role)?;
    let processor = workload("processor", &spec.processor.role)?;
    let dashboards = workload("dashboards", &spec.dashboards.role)?;
    if processor.replicas > partitions {
        return Err(InvalidSpec::ReplicasOverPartitions {
            replicas: processor.replicas,
            partitions,
        });
    }
    let gateway_scaling = spec
        .gateway
        .autoscaling
        .as_ref()
        .map(cpu_scaling)
        .transpose()?;
    let processor_scaling = match &spec.processor.autoscaling {
        None => None,
        Some(lag) => Some(lag_scaling(
            lag,
            partitions,
            spec.kafka.brokers.clone(),
            consumer_group,
            topic,
        )?),
    };
    Ok(Roles {
        gateway,
        processor,
        dashboards,
        gateway_scaling,
        processor_scaling,
        gateway_ingress: spec.gateway.ingress.clone(),
        dashboards_ingress: spec.dashboards.ingress.clone(),
    })
}

pub(super) fn workload(field: &str, role: &RoleSpec) -> Result<Workload, InvalidSpec> {
    let replicas = in_range(
        &format!("{field}.replicas"),
        role.replicas,
        1,
        1024,
        "1 to 1024",
    )?;
    Ok(Workload {
        replicas,
        resources: role.resources.clone(),
        placement: role.placement.clone(),
    })
}

fn min_max(field: &str, min: i32, max: i32) -> Result<(i32, i32), InvalidSpec> {
    let min = in_range(&format!("{field}.minReplicas"), min, 1, 1024, "1 to 1024")?;
    let max = in_range(
        &format!("{field}.maxReplicas"),
        max,
        min,
        1024,
        "minReplicas to 1024",
    )?;
    Ok((min, max))
}

fn cpu_scaling(spec: &CpuAutoscalingSpec) -> Result<CpuScaling, InvalidSpec> {
    let (min, max) = min_max("gateway.autoscaling", spec.min_replicas, spec.max_replicas)?;
    let target_cpu = in_range(
        "gateway.autoscaling.targetCpuUtilization",
        spec.target_cpu_utilization,
        1,
        100,
        "1 to 100 (percent of the CPU request)",
    )?;
    Ok(CpuScaling {
        min,
        max,
        target_cpu,
    })
}

/// The lag scaler; its maximum is capped at `partitions`, since a processor
/// beyond them gets no partition and idles.
fn lag_scaling(
    spec: &LagAutoscalingSpec,
    partitions: i32,
    brokers: String,
    consumer_group: String,
    topic: String,
) -> Result<LagScaling, InvalidSpec> {
    let (min, max) = min_max(
        "processor.autoscaling",
        spec.min_replicas,
        spec.max_replicas,
    )?;
    if min > partitions {
        return Err(InvalidSpec::ReplicasOverPartitions {
            replicas: min,
            partitions,
        });
    }
    if spec.lag_threshold < 1 {
        return Err(InvalidSpec::OutOfRange {
            field: "processor.autoscaling.lagThreshold".into(),
            value: spec.lag_threshold,
            range: "1 or more points",
        });
    }
    Ok(LagScaling {
        min,
        max: max.min(partitions),
        lag_threshold: spec.lag_threshold,
        brokers,
        consumer_group,
        topic,
    })
}
