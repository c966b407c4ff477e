//! The Day 2 builders, field by field: placement (spread, affinity,
//! tolerations, pod metadata, ServiceAccount annotations), the gateway's
//! HorizontalPodAutoscaler, the processors' KEDA ScaledObject, and the
//! Ingresses.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use pulse_core::board::Boards;
use pulse_operator::build::{Cluster, PipelineObjects, default_spread, pipeline_objects};
use pulse_operator::crd::MetricPipeline;
use pulse_operator::validate::{InvalidSpec, ValidatedPipeline, validate_pipeline};
use serde_json::{Value, json};

const IMAGE: &str = "ghcr.io/pulse/pulse:0.1.0";

fn spec(day2: Value) -> Value {
    let mut spec = json!({
        "apiVersion": "pulse.dev/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": "checkout", "namespace": "shop", "uid": "u-1"},
        "spec": {
            "kafka": {"brokers": "kafka-0:9092", "partitions": 8},
            "database": {"urlSecretRef": {"name": "db", "key": "url"}}
        }
    });
    if let (Some(target), Value::Object(extra)) = (spec["spec"].as_object_mut(), day2) {
        target.extend(extra);
    }
    spec
}

fn validated(day2: Value) -> Result<ValidatedPipeline, InvalidSpec> {
    let resource: MetricPipeline = serde_json::from_value(spec(day2)).unwrap();
    validate_pipeline(&resource)
}

fn build(day2: Value, cluster: Cluster) -> PipelineObjects {
    pipeline_objects(
        &validated(day2).unwrap(),
        IMAGE,
        &Boards::default(),
        cluster,
    )
}

fn pod(deployment: &Deployment) -> &PodSpec {
    deployment.spec.template.spec.as_ref().unwrap()
}

fn as_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn every_role_spreads_softly_over_zones_and_nodes_by_default() {
    let objects = build(json!({}), Cluster::default());
    for deployment in [&objects.gateway, &objects.processor, &objects.dashboard] {
        let selector = deployment.spec.selector.match_labels.clone().unwrap();
        let spread = pod(deployment).topology_spread_constraints.clone().unwrap();
        assert_eq!(spread, default_spread(&selector));
        assert_eq!(
            as_json(&spread),
            json!([
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": selector}, "matchLabelKeys": ["pod-template-hash"]},
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": selector}, "matchLabelKeys": ["pod-template-hash"]}
            ])
        );
        let pod = pod(deployment);
        assert_eq!(
            (
                &pod.affinity,
                &pod.tolerations,
                &pod.node_selector,
                &pod.priority_class_name
            ),
            (&None, &None, &None, &None)
        );
    }
}

#[test]
fn placement_of_each_role_reaches_its_pods_and_account_only() {
    let objects = build(
        json!({
            "gateway": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ingest"]}]}
                ]}}},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ingest", "effect": "NoSchedule"}],
                "nodeSelector": {"kubernetes.io/arch": "arm64"},
                "priorityClassName": "pulse-critical",
                "podAnnotations": {"team": "obs", "pulse.dev/config-hash": "mine"},
                "podLabels": {"cost-center": "42", "app.kubernetes.io/component": "mine"},
                "serviceAccountAnnotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/gw"}
            },
            "processor": {"topologySpreadConstraints": []},
            "dashboards": {"replicas": 3, "serviceAccountAnnotations": {"iam.gke.io/gcp-service-account": "d@p.iam"}}
        }),
        Cluster::default(),
    );
    let gateway = pod(&objects.gateway);
    assert_eq!(
        as_json(&gateway.affinity)["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        json!(["ingest"])
    );
    assert_eq!(
        as_json(&gateway.tolerations),
        json!([{"key": "dedicated", "operator": "Equal", "value": "ingest", "effect": "NoSchedule"}])
    );
    assert_eq!(
        gateway.node_selector,
        Some(BTreeMap::from([(
            "kubernetes.io/arch".into(),
            "arm64".into()
        )]))
    );
    assert_eq!(
        gateway.priority_class_name.as_deref(),
        Some("pulse-critical")
    );
    let meta = objects.gateway.spec.template.metadata.clone().unwrap();
    let labels = meta.labels.unwrap();
    let annotations = meta.annotations.unwrap();
    assert_eq!(labels["cost-center"], "42");
    assert_eq!(
        labels["app.kubernetes.io/component"], "gateway",
        "the selector's labels win"
    );
    assert_eq!(annotations["team"], "obs");
    assert_ne!(
        annotations["pulse.dev/config-hash"], "mine",
        "the operator's annotation wins"
    );
    // The processor turned the spread off; the dashboards' replicas and PDB.
    assert_eq!(pod(&objects.processor).topology_spread_constraints, None);
    assert_eq!(pod(&objects.processor).priority_class_name, None);
    assert_eq!(objects.dashboard.spec.replicas, Some(3));
    assert_eq!(
        objects.pdbs[2].metadata.name.as_deref(),
        Some("checkout-dashboard")
    );
    // Each role's account carries its own annotations.
    let annotations: Vec<_> = objects
        .service_accounts
        .iter()
        .map(|a| {
            (
                a.metadata.name.clone().unwrap(),
                a.metadata.annotations.clone(),
            )
        })
        .collect();
    assert_eq!(
        annotations,
        [
            (
                "checkout-gateway".to_string(),
                Some(BTreeMap::from([(
                    "eks.amazonaws.com/role-arn".to_string(),
                    "arn:aws:iam::1:role/gw".to_string()
                )]))
            ),
            ("checkout-processor".to_string(), None),
            (
                "checkout-dashboard".to_string(),
                Some(BTreeMap::from([(
                    "iam.gke.io/gcp-service-account".to_string(),
                    "d@p.iam".to_string()
                )]))
            ),
        ]
    );
    assert!(
        objects
            .service_accounts
            .iter()
            .all(|a| a.automount_service_account_token == Some(false))
    );
}

#[test]
fn gateway_autoscaling_is_a_cpu_hpa_that_owns_the_replica_count() {
    let objects = build(
        json!({"gateway": {"replicas": 3, "autoscaling": {"minReplicas": 2, "maxReplicas": 12, "targetCpuUtilization": 60}}}),
        Cluster::default(),
    );
    let hpa = objects.gateway_hpa.clone().expect("an HPA");
    assert_eq!(hpa.metadata.name.as_deref(), Some("checkout-gateway"));
    assert_eq!(
        as_json(&hpa.spec),
        json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout-gateway"},
            "minReplicas": 2,
            "maxReplicas": 12,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]
        })
    );
    assert_eq!(objects.gateway.spec.replicas, None, "the HPA owns it");
    assert_eq!(objects.processor.spec.replicas, Some(2));
    // Defaults: from 1, at 70 % CPU.
    let objects = build(
        json!({"gateway": {"autoscaling": {"maxReplicas": 4}}}),
        Cluster::default(),
    );
    let spec = objects.gateway_hpa.unwrap().spec;
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 4));
    assert_eq!(
        spec.metrics.unwrap()[0]
            .resource
            .as_ref()
            .unwrap()
            .target
            .average_utilization,
        Some(70)
    );
    assert_eq!(build(json!({}), Cluster::default()).gateway_hpa, None);
}

#[test]
fn processor_autoscaling_is_a_keda_kafka_scaler_capped_at_the_partitions() {
    let day2 = json!({"processor": {"autoscaling": {"minReplicas": 2, "maxReplicas": 50, "lagThreshold": 20000}}});
    let objects = build(day2.clone(), Cluster { keda: true });
    let scaled = objects
        .processor_scaled_object
        .clone()
        .expect("a ScaledObject");
    assert_eq!(
        scaled
            .types
            .as_ref()
            .map(|t| (t.api_version.as_str(), t.kind.as_str())),
        Some(("keda.sh/v1alpha1", "ScaledObject"))
    );
    assert_eq!(scaled.metadata.name.as_deref(), Some("checkout-processor"));
    assert_eq!(
        scaled.metadata.owner_references.as_ref().unwrap()[0].uid,
        "u-1"
    );
    assert_eq!(
        scaled.data["spec"],
        json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout-processor"},
            "minReplicaCount": 2,
            "maxReplicaCount": 8,
            "pollingInterval": 30,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}},
            "triggers": [{"type": "kafka", "metadata": {
                "bootstrapServers": "kafka-0:9092",
                "consumerGroup": "pulse-shop-checkout",
                "topic": "pulse.shop.checkout.points",
                "lagThreshold": "20000",
                "offsetResetPolicy": "earliest",
                "allowIdleConsumers": "false"
            }}]
        })
    );
    assert_eq!(objects.processor.spec.replicas, None, "KEDA owns it");
    // Without KEDA: no ScaledObject, and the fixed replicas stay.
    let objects = build(day2, Cluster::default());
    assert_eq!(objects.processor_scaled_object, None);
    assert_eq!(objects.processor.spec.replicas, Some(2));
}

#[test]
fn autoscaling_that_cannot_work_is_refused_naming_the_field() {
    let err =
        validated(json!({"processor": {"autoscaling": {"minReplicas": 9, "maxReplicas": 10}}}))
            .unwrap_err();
    assert_eq!(
        err,
        InvalidSpec::ReplicasOverPartitions {
            replicas: 9,
            partitions: 8
        }
    );
    let err = validated(json!({"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.gateway.autoscaling.maxReplicas"),
        "{err}"
    );
    let err = validated(
        json!({"gateway": {"autoscaling": {"maxReplicas": 2, "targetCpuUtilization": 0}}}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("targetCpuUtilization"), "{err}");
}

#[test]
fn ingresses_route_their_host_to_the_role_over_tls() {
    let objects = build(
        json!({
            "gateway": {"ingress": {"host": "ingest.example.com", "className": "nginx", "tlsSecretName": "ingest-tls",
                                    "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}}},
            "dashboards": {"ingress": {"host": "metrics.example.com"}}
        }),
        Cluster::default(),
    );
    let gateway = objects.gateway_ingress.expect("gateway Ingress");
    assert_eq!(gateway.metadata.name.as_deref(), Some("checkout-gateway"));
    assert_eq!(
        gateway.metadata.annotations.unwrap()["cert-manager.io/cluster-issuer"],
        "letsencrypt"
    );
    assert_eq!(
        as_json(&gateway.spec),
        json!({
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["ingest.example.com"], "secretName": "ingest-tls"}],
            "rules": [{"host": "ingest.example.com", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "checkout-gateway", "port": {"name": "http"}}}
            }]}}]
        })
    );
    let dashboard = objects.dashboard_ingress.expect("dashboard Ingress");
    let spec = as_json(&dashboard.spec);
    assert_eq!(spec.get("tls"), None);
    assert_eq!(
        spec["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "checkout-dashboard"
    );
    let objects = build(json!({}), Cluster::default());
    assert_eq!(
        (objects.gateway_ingress, objects.dashboard_ingress),
        (None, None)
    );
}
