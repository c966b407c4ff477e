//! Step two of a reconcile: pure functions from a validated value to the
//! Kubernetes objects that run it (after the Stackable operators' `build`).
//! Nothing here talks to the API server, so every object is tested field by
//! field; the reconciler only applies what these return.
//!
//! One module per object kind; this one holds what they share: labels, object
//! metadata with the controller owner reference, and the config hash.

mod autoscaling;
mod backup;
mod config_map;
mod dashboard;
pub(crate) mod deployment;
mod ingress;
pub mod monitoring;
mod pdb;
mod placement;
mod service;
mod service_account;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::DynamicObject;
use pulse_core::board::Boards;
use sha2::{Digest, Sha256};

use crate::connections::Mounts;
use crate::kafka_access;
use crate::names::{self, Component};
use crate::validate::{BOARDS_DIR, ValidatedPipeline, Workload};

pub use autoscaling::{
    KEDA_GROUP, KEDA_VERSION, SCALED_OBJECT_KIND, SCALED_OBJECTS, scaled_object_resource,
};
pub use backup::{ACCESS_KEY_ID, SECRET_ACCESS_KEY};
pub use dashboard::boards;
pub use deployment::HTTP_PORT_NAME;
pub use ingress::ingress_url;
pub use placement::{NODE_KEY, ZONE_KEY, default_spread};

/// What the operator found in the cluster that changes what it builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cluster {
    /// KEDA's `ScaledObject` CRD is installed.
    pub keda: bool,
}

/// Every object of one pipeline, in the order they are applied (what a pod
/// mounts or runs as exists before the pod's Deployment). The optional ones
/// are deleted when `None` (the spec no longer asks for them).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineObjects {
    pub service_accounts: Vec<ServiceAccount>,
    pub config_map: ConfigMap,
    pub boards_config_map: ConfigMap,
    pub services: Vec<Service>,
    pub gateway: Deployment,
    pub processor: Deployment,
    pub dashboard: Deployment,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub gateway_hpa: Option<HorizontalPodAutoscaler>,
    /// `None` also when the spec asks for lag scaling but KEDA is missing.
    pub processor_scaled_object: Option<DynamicObject>,
    pub gateway_ingress: Option<Ingress>,
    pub dashboard_ingress: Option<Ingress>,
    /// `spec.backup`'s CronJob, when asked for.
    pub backup: Option<CronJob>,
}

/// The objects of `pipeline` serving `boards`; its pods run `image` unless the
/// spec names one.
pub fn pipeline_objects(
    pipeline: &ValidatedPipeline,
    image: &str,
    boards: &Boards,
    cluster: Cluster,
) -> PipelineObjects {
    let owner = Owner {
        namespace: &pipeline.namespace,
        instance: pipeline.name.as_str(),
        reference: &pipeline.owner,
    };
    let image = pipeline.image.as_deref().unwrap_or(image);
    let config_map_name = names::config_map_name(pipeline.name.as_str());
    let boards_name = names::boards_config_map_name(pipeline.name.as_str());
    let hash = config_hash(&pipeline.config_toml);
    let roles = &pipeline.roles;
    let lag_scaling = roles.processor_scaling.as_ref().filter(|_| cluster.keda);
    let workloads = [
        (Component::Gateway, &roles.gateway),
        (Component::Processor, &roles.processor),
        (Component::Dashboard, &roles.dashboards),
    ];
    let deployment =
        |component, workload: &Workload, mut env: Vec<EnvVar>, mounts: Mounts, autoscaled| {
            let mut volumes = Vec::new();
            let extra_config_maps = match component {
                Component::Dashboard => vec![("boards", boards_name.as_str(), BOARDS_DIR)],
                // The gateway and the processor talk to Kafka: its Secrets go to both.
                _ => {
                    env.extend(kafka_access::env(&pipeline.kafka));
                    volumes.extend(kafka_access::volumes(&pipeline.kafka));
                    Vec::new()
                }
            };
            env.extend(mounts.env);
            volumes.extend(mounts.volumes);
            let account = names::object_name(owner.instance, component);
            deployment::deployment(
                &owner,
                deployment::Role {
                    component,
                    workload,
                    image,
                    config_map: &config_map_name,
                    config_hash: &hash,
                    env,
                    volumes,
                    service_account: Some(account.as_str()),
                    autoscaled,
                    extra_config_maps,
                },
            )
        };
    // Only the processor sends alerts, so only it gets the receivers' Secrets.
    let processor_env = deployment::secret_env(
        [
            (names::ENV_DATABASE_URL, Some(&pipeline.database_url_secret)),
            (names::ENV_REDIS_URL, pipeline.redis_url_secret.as_ref()),
        ]
        .into_iter()
        .chain(
            pipeline
                .receiver_secrets
                .iter()
                .map(|(env, secret)| (env.as_str(), Some(secret))),
        ),
    );
    let dashboard_env = deployment::secret_env([
        (names::ENV_DATABASE_URL, Some(&pipeline.database_url_secret)),
        (names::ENV_REDIS_URL, pipeline.redis_url_secret.as_ref()),
    ]);
    // A board set the validation let through always renders; should it not,
    // the server keeps its last good boards (it refuses a file it cannot read).
    let boards_text = boards.to_file().unwrap_or_default();
    PipelineObjects {
        service_accounts: workloads
            .iter()
            .map(|(c, w)| {
                service_account::service_account(
                    &owner,
                    *c,
                    &w.placement.service_account_annotations,
                )
            })
            .collect(),
        config_map: config_map::config_map(&owner, &config_map_name, &pipeline.config_toml),
        boards_config_map: dashboard::boards_config_map(&owner, boards_text),
        services: [Component::Gateway, Component::Dashboard]
            .map(|c| service::service(&owner, c))
            .to_vec(),
        gateway: deployment(
            Component::Gateway,
            &roles.gateway,
            Vec::new(),
            pipeline.connections.gateway(),
            roles.gateway_scaling.is_some(),
        ),
        processor: deployment(
            Component::Processor,
            &roles.processor,
            processor_env,
            pipeline.connections.processor(),
            lag_scaling.is_some(),
        ),
        dashboard: deployment(
            Component::Dashboard,
            &roles.dashboards,
            dashboard_env,
            pipeline.connections.dashboard(),
            false,
        ),
        pdbs: workloads
            .iter()
            .map(|(c, _)| pdb::pdb(&owner, *c))
            .collect(),
        gateway_hpa: roles
            .gateway_scaling
            .map(|scaling| autoscaling::gateway_hpa(&owner, scaling)),
        processor_scaled_object: lag_scaling
            .map(|scaling| autoscaling::processor_scaled_object(&owner, scaling)),
        gateway_ingress: roles
            .gateway_ingress
            .as_ref()
            .map(|i| ingress::ingress(&owner, Component::Gateway, i)),
        dashboard_ingress: roles
            .dashboards_ingress
            .as_ref()
            .map(|i| ingress::ingress(&owner, Component::Dashboard, i)),
        backup: pipeline.backup.as_ref().map(|spec| {
            backup::cron_job(
                &owner,
                backup::BackupJob {
                    spec,
                    image,
                    config_map: &config_map_name,
                    database_url_secret: &pipeline.database_url_secret,
                    service_account: &names::object_name(owner.instance, Component::Processor),
                },
            )
        }),
    }
}

/// The resource the objects belong to: their namespace, the
/// `app.kubernetes.io/instance` they carry, and the controller reference.
struct Owner<'a> {
    namespace: &'a str,
    instance: &'a str,
    reference: &'a OwnerReference,
}

impl Owner<'_> {
    /// Metadata of an object named `name`, labelled for `component` when it
    /// belongs to one role.
    fn meta(&self, name: &str, component: Option<Component>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.to_string()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The labels of docs/ARCHITECTURE.md "Names and contracts" on everything the operator makes.
    fn labels(&self, component: Option<Component>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([(
            names::LABEL_MANAGED_BY.to_string(),
            names::MANAGED_BY.to_string(),
        )]);
        labels.extend(self.selector(component));
        labels
    }

    /// The labels that pick one role's pods (stable: a Deployment's selector
    /// cannot change).
    fn selector(&self, component: Option<Component>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (names::LABEL_NAME.to_string(), names::APP_NAME.to_string()),
            (names::LABEL_INSTANCE.to_string(), self.instance.to_string()),
        ]);
        if let Some(component) = component {
            labels.insert(
                names::LABEL_COMPONENT.to_string(),
                component.as_str().to_string(),
            );
        }
        labels
    }
}

/// SHA-256 of the rendered `pulse.toml`, hex: the pod template annotation that
/// rolls the pods when, and only when, the config they read changes.
pub fn config_hash(config_toml: &str) -> String {
    Sha256::digest(config_toml.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
