//! Step two of a reconcile: pure functions from a validated value to the
//! Kubernetes objects that run it (after the Stackable operators' `build`).
//! Nothing here talks to the API server, so every object is tested field by
//! field; the reconciler only applies what these return.
//!
//! One module per object kind; this one holds what they share: labels, object
//! metadata with the controller owner reference, and the config hash.

mod config_map;
mod dashboard;
pub(crate) mod deployment;
mod pdb;
mod service;
mod service_account;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};

use crate::connections::Mounts;
use crate::kafka_access;
use crate::names::{self, Component};
use crate::validate::ValidatedPipeline;

pub use dashboard::{DashboardObjects, dashboard_objects};

/// Every object of one pipeline, in the order they are applied (what a pod
/// mounts or runs as exists before the pod's Deployment).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineObjects {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub gateway_service: Service,
    pub gateway: Deployment,
    pub processor: Deployment,
    pub gateway_pdb: PodDisruptionBudget,
    pub processor_pdb: PodDisruptionBudget,
}

/// The objects of `pipeline`; its pods run `image` unless the spec names one.
pub fn pipeline_objects(pipeline: &ValidatedPipeline, image: &str) -> PipelineObjects {
    let owner = Owner {
        namespace: &pipeline.namespace,
        instance: pipeline.name.as_str(),
        reference: &pipeline.owner,
    };
    let image = pipeline.image.as_deref().unwrap_or(image);
    let config_map_name = names::config_map_name(pipeline.name.as_str());
    let service_account = names::service_account_name(pipeline.name.as_str());
    let hash = config_hash(&pipeline.config_toml);
    // Both roles talk to Kafka: its Secrets go to both.
    let role = |component, workload, mut env: Vec<_>, mounts: Mounts| {
        env.extend(kafka_access::env(&pipeline.kafka));
        env.extend(mounts.env);
        let mut volumes = kafka_access::volumes(&pipeline.kafka);
        volumes.extend(mounts.volumes);
        deployment::Role {
            component,
            workload,
            image,
            config_map: &config_map_name,
            config_hash: &hash,
            env,
            volumes,
            service_account: Some(&service_account),
        }
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
    PipelineObjects {
        service_account: service_account::service_account(&owner, &service_account),
        config_map: config_map::config_map(&owner, &config_map_name, &pipeline.config_toml),
        gateway_service: service::service(&owner, Component::Gateway),
        gateway: deployment::deployment(
            &owner,
            role(
                Component::Gateway,
                &pipeline.gateway,
                Vec::new(),
                pipeline.connections.gateway(),
            ),
        ),
        processor: deployment::deployment(
            &owner,
            role(
                Component::Processor,
                &pipeline.processor,
                processor_env,
                pipeline.connections.processor(),
            ),
        ),
        gateway_pdb: pdb::pdb(&owner, Component::Gateway),
        processor_pdb: pdb::pdb(&owner, Component::Processor),
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
