//! Autoscalers: a HorizontalPodAutoscaler (autoscaling/v2) on the gateway's
//! CPU, and a KEDA `ScaledObject` with the Kafka scaler on the processors'
//! consumer lag. KEDA is a CRD, not a built-in, so its object is a
//! `DynamicObject`; its shape is checked against KEDA's published schema in
//! the tests (`operator/tests/fixtures/keda/`).

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use kube::api::{ApiResource, DynamicObject};
use serde_json::json;

use super::Owner;
use crate::names::{self, Component};
use crate::validate::{CpuScaling, LagScaling};

/// KEDA's API group and version, and the `ScaledObject` kind.
pub const KEDA_GROUP: &str = "keda.sh";
pub const KEDA_VERSION: &str = "v1alpha1";
pub const SCALED_OBJECT_KIND: &str = "ScaledObject";
pub const SCALED_OBJECTS: &str = "scaledobjects";
/// How often KEDA reads the lag, and how long it waits before removing
/// processors (a rebalance costs every processor a moment, so not hastily).
const POLLING_INTERVAL_SECONDS: i64 = 30;
const SCALE_DOWN_STABILIZATION_SECONDS: i64 = 300;

/// KEDA's `ScaledObject` as a kube `ApiResource`.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource {
        group: KEDA_GROUP.into(),
        version: KEDA_VERSION.into(),
        api_version: format!("{KEDA_GROUP}/{KEDA_VERSION}"),
        kind: SCALED_OBJECT_KIND.into(),
        plural: SCALED_OBJECTS.into(),
    }
}

/// `<pipeline>-gateway`: between `min` and `max` pods, keeping their average
/// CPU use at `target_cpu` percent of the request.
pub(super) fn gateway_hpa(owner: &Owner<'_>, scaling: CpuScaling) -> HorizontalPodAutoscaler {
    let name = names::object_name(owner.instance, Component::Gateway);
    HorizontalPodAutoscaler {
        metadata: owner.meta(&name, Some(Component::Gateway)),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name,
            },
            min_replicas: Some(scaling.min),
            max_replicas: scaling.max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.target_cpu),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        ..HorizontalPodAutoscaler::default()
    }
}

/// `<pipeline>-processor`: KEDA's Kafka scaler on the consumer group's lag
/// over the points topic. `maxReplicaCount` is already capped at the
/// partitions, and `allowIdleConsumers: false` keeps KEDA's own cap there too.
pub(super) fn processor_scaled_object(owner: &Owner<'_>, scaling: &LagScaling) -> DynamicObject {
    let name = names::object_name(owner.instance, Component::Processor);
    let mut object = DynamicObject::new(&name, &scaled_object_resource()).data(json!({
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": scaling.min,
            "maxReplicaCount": scaling.max,
            "pollingInterval": POLLING_INTERVAL_SECONDS,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                "stabilizationWindowSeconds": SCALE_DOWN_STABILIZATION_SECONDS
            }}}},
            "triggers": [{
                "type": "kafka",
                "metadata": {
                    "bootstrapServers": scaling.brokers,
                    "consumerGroup": scaling.consumer_group,
                    "topic": scaling.topic,
                    "lagThreshold": scaling.lag_threshold.to_string(),
                    "offsetResetPolicy": "earliest",
                    "allowIdleConsumers": "false",
                },
            }],
        },
    }));
    object.metadata = owner.meta(&name, Some(Component::Processor));
    object
}
