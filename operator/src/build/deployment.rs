//! The Deployment of one role (gateway, processor, dashboard): the `pulse`
//! binary reading the mounted `pulse.toml`, hardened and probed.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Owner, placement};
use crate::crd::SecretKeyRef;
use crate::names::{self, Component};
use crate::validate::{DATA_DIR, Workload};

/// Name of every role's HTTP port (the API and `/healthz`, `/readyz`, `/metrics`).
pub const HTTP_PORT_NAME: &str = "http";
/// The non-root user and group the pods run as (distroless `nonroot`).
const RUN_AS: i64 = 65532;

/// What differs between the roles' Deployments.
pub(super) struct Role<'a> {
    pub component: Component,
    pub workload: &'a Workload,
    pub image: &'a str,
    pub config_map: &'a str,
    pub config_hash: &'a str,
    /// Secret values the role needs, as environment variables.
    pub env: Vec<EnvVar>,
    /// Secrets mounted as files (read-only), e.g. Kafka's CA and client certificate.
    pub volumes: Vec<(Volume, VolumeMount)>,
    /// `None`: the namespace's default account (with no token mounted).
    pub service_account: Option<&'a str>,
    /// Whether an autoscaler owns the replica count: the Deployment then
    /// leaves `replicas` out, so the operator and the autoscaler do not fight.
    pub autoscaled: bool,
    /// More ConfigMaps to mount read-only, by volume name and path (the
    /// dashboard server's boards).
    pub extra_config_maps: Vec<(&'a str, &'a str, &'a str)>,
}

/// The role's port, where it serves its API and its health endpoints.
pub(super) fn port(component: Component) -> u16 {
    match component {
        Component::Gateway => names::GATEWAY_PORT,
        Component::Processor => names::PROCESSOR_PORT,
        Component::Dashboard => names::DASHBOARD_PORT,
    }
}

/// Environment variables from Secret keys; a `None` reference adds nothing.
/// The Secrets are required (not `optional`): a pod whose Secret is missing
/// waits in `CreateContainerConfigError`, saying which, instead of running
/// on the embedded engines.
pub(crate) fn secret_env<'a>(
    refs: impl IntoIterator<Item = (&'a str, Option<&'a SecretKeyRef>)>,
) -> Vec<EnvVar> {
    refs.into_iter()
        .filter_map(|(name, secret)| {
            secret.map(|secret| EnvVar {
                name: name.to_string(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: secret.key.clone(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            })
        })
        .collect()
}

/// `<owner>-<role>` running `pulse <role> --config /etc/pulse/pulse.toml`.
pub(super) fn deployment(owner: &Owner<'_>, role: Role<'_>) -> Deployment {
    let component = role.component;
    let labels = owner.labels(Some(component));
    let config_path = format!("{}/{}", names::CONFIG_DIR, names::CONFIG_KEY);
    let container = Container {
        name: component.as_str().into(),
        image: Some(role.image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            "pulse".into(),
            component.as_str().into(),
            "--config".into(),
            config_path,
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.into()),
            container_port: i32::from(port(component)),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: (!role.env.is_empty()).then_some(role.env),
        resources: Some(
            role.workload
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        // Startup waits for the engines (Kafka, PostgreSQL) with retries; the
        // liveness probe only starts once the process answers at all.
        startup_probe: Some(probe("/healthz", 5, 60)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(
            [
                mount("config", names::CONFIG_DIR, true),
                mount("data", DATA_DIR, false),
                mount("tmp", "/tmp", false),
            ]
            .into_iter()
            .chain(
                role.extra_config_maps
                    .iter()
                    .map(|(volume, _, path)| mount(volume, path, true)),
            )
            .chain(role.volumes.iter().map(|(_, mount)| mount.clone()))
            .collect(),
        ),
        ..Container::default()
    };
    let mut pod = PodSpec {
        containers: vec![container],
        service_account_name: role.service_account.map(str::to_string),
        automount_service_account_token: Some(false),
        security_context: Some(restricted_pod()),
        volumes: Some(
            [
                config_map_volume("config", role.config_map),
                empty_dir("data"),
                empty_dir("tmp"),
            ]
            .into_iter()
            .chain(
                role.extra_config_maps
                    .iter()
                    .map(|(volume, config_map, _)| config_map_volume(volume, config_map)),
            )
            .chain(role.volumes.into_iter().map(|(volume, _)| volume))
            .collect(),
        ),
        ..PodSpec::default()
    };
    let mut template_meta = ObjectMeta {
        labels: Some(labels),
        annotations: Some(BTreeMap::from([(
            names::CONFIG_HASH_ANNOTATION.to_string(),
            role.config_hash.to_string(),
        )])),
        ..ObjectMeta::default()
    };
    placement::place(
        &mut pod,
        &mut template_meta,
        &role.workload.placement,
        &owner.selector(Some(component)),
    );
    Deployment {
        metadata: owner.meta(
            &names::object_name(owner.instance, component),
            Some(component),
        ),
        spec: DeploymentSpec {
            replicas: (!role.autoscaled).then_some(role.workload.replicas),
            selector: LabelSelector {
                match_labels: Some(owner.selector(Some(component))),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(template_meta),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// Requests that schedule anywhere and a memory limit that stops a runaway
/// process; no CPU limit, so a busy pod is not throttled while idle cores wait.
pub(super) fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HTTP_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The pod's side of the "restricted" Pod Security Standard: a non-root user.
pub(super) fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// The "restricted" Pod Security Standard, and a read-only root filesystem.
pub(super) fn restricted_container() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

pub(super) fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn config_map_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub(super) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}
