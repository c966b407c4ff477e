//! Where a role's pods run and what they carry (the scheduling fields every
//! platform team sets on every workload), and the Day 2 parts of a role's
//! spec: autoscaling and an Ingress. Kept apart from `pipeline.rs` so each
//! role's spec reads as "replicas, resources, placement" plus its extras.
//!
//! The scheduling fields are Kubernetes' own types (`k8s-openapi`), so their
//! schemas in the CRD are the real ones and `kubectl explain` documents them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration, TopologySpreadConstraint};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RoleSpec;

/// Scheduling and metadata of one role's pods.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Node and pod affinity of the role's pods (`kubectl explain pod.spec.affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over the cluster. When absent, a soft spread over
    /// zones (`topology.kubernetes.io/zone`) and nodes (`kubernetes.io/hostname`)
    /// with `whenUnsatisfiable: ScheduleAnyway`; an empty list turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Taints the pods tolerate (dedicated node pools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Labels a node must carry to run the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// PriorityClass of the pods, so they are not the first evicted under pressure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Annotations added to the pods (the operator's own `pulse.dev/config-hash` wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Labels added to the pods (the `app.kubernetes.io/*` labels the Service
    /// and PodDisruptionBudget select on win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations of the role's ServiceAccount `<pipeline>-<role>`, e.g. a cloud
    /// IAM binding (`eks.amazonaws.com/role-arn`, `iam.gke.io/gcp-service-account`,
    /// `azure.workload.identity/client-id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_account_annotations: BTreeMap<String, String>,
}

/// A HorizontalPodAutoscaler (autoscaling/v2) on the role's CPU use. While it
/// is set, it owns the Deployment's replica count and `replicas` is ignored.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message(
    "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
))]
#[serde(rename_all = "camelCase")]
pub struct CpuAutoscalingSpec {
    /// Fewest pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1024))]
    pub min_replicas: i32,
    /// Most pods.
    #[schemars(range(min = 1, max = 1024))]
    pub max_replicas: i32,
    /// Average CPU use, in percent of the pods' CPU request, the autoscaler keeps.
    #[serde(default = "default_target_cpu")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
}

/// A KEDA `ScaledObject` with the Kafka scaler: processors follow the consumer
/// group's lag on the points topic, never more than the topic's partitions
/// (a processor beyond them would idle). Needs KEDA's CRDs in the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message(
    "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
))]
#[serde(rename_all = "camelCase")]
pub struct LagAutoscalingSpec {
    /// Fewest processors (0 is not allowed: windows in progress live in the processors).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1024))]
    pub min_replicas: i32,
    /// Most processors; capped at `kafka.partitions`.
    #[schemars(range(min = 1, max = 1024))]
    pub max_replicas: i32,
    /// Consumer lag (points not yet processed) per processor above which KEDA
    /// adds one.
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 1))]
    pub lag_threshold: i64,
}

/// An Ingress (networking.k8s.io/v1) in front of the role's Service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// The host name clients use (`metrics.example.com`).
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// The IngressClass; the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// A Secret of type `kubernetes.io/tls` for `host`: TLS is served when set
    /// (cert-manager fills it when the annotations ask it to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
    /// Annotations of the Ingress (`cert-manager.io/cluster-issuer`, the
    /// controller's own settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_target_cpu() -> i32 {
    70
}

fn default_lag_threshold() -> i64 {
    10_000
}

/// The ingestion gateway: replicas, resources and placement, a CPU autoscaler
/// and an Ingress.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(flatten)]
    pub role: RoleSpec,
    /// A HorizontalPodAutoscaler on CPU; `replicas` is ignored while set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<CpuAutoscalingSpec>,
    /// An Ingress to the gateway (`POST /v1/metrics` from outside the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
}

/// The stream processor: replicas, resources and placement, and autoscaling on
/// consumer lag.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorSpec {
    #[serde(flatten)]
    pub role: RoleSpec,
    /// A KEDA ScaledObject on the consumer lag; `replicas` is ignored while
    /// KEDA scales. Without KEDA installed, condition `ProcessorAutoscaling`
    /// says so and `replicas` stays in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<LagAutoscalingSpec>,
}

/// The one dashboard server of the pipeline, serving every `Dashboard` over it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DashboardsSpec {
    #[serde(flatten)]
    pub role: RoleSpec,
    /// An Ingress to the dashboard server (the web UI and the query API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
}
