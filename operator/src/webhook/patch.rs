//! Pure: an opted-in pod and its [`InjectTarget`] -> the JSON patch that adds
//! the sidecar. No client, no clock: the same pod always gives the same patch.
//!
//! The patch only adds (RFC 6902 `add`), at paths that exist in the pod as the
//! API server sent it, so it applies cleanly on top of what earlier mutating
//! webhooks did.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::Value;

use super::per_pod::{BadAnnotation, per_pod};
use super::sidecar::{self, InjectTarget};
use crate::names;

/// Annotation that makes `kubectl logs` and `kubectl exec` pick the app, not
/// the sidecar, in a pod with a classic (regular container) sidecar.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Ports the sidecar binds in the pod's network namespace: HTTP, StatsD, OTLP, admin.
const SIDECAR_PORTS: [u16; 4] = [
    names::SIDECAR_HTTP_PORT,
    names::SIDECAR_STATSD_PORT,
    names::SIDECAR_OTLP_PORT,
    names::SIDECAR_ADMIN_PORT,
];

/// What the webhook does with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// The pod has no `pulse.dev/inject` label.
    NotOptedIn,
    /// The pod already has the sidecar (container or annotation): unchanged,
    /// so a pod that passes the webhook twice gets one sidecar.
    AlreadyInjected,
    /// Apply this patch.
    Patch(Patch),
}

/// An opted-in pod the sidecar cannot be added to without breaking it; the
/// pod is admitted unchanged and the message is shown as a warning.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CannotInject {
    #[error("the pod has no containers")]
    NoContainers,
    #[error(
        "the pod uses the host's network, where the sidecar's ports would clash across pods; send to the gateway directly"
    )]
    HostNetwork,
    #[error("the pod already has a volume named `{0}`; rename it to let the sidecar be injected")]
    VolumeTaken(String),
    #[error(
        "container `{container}` declares port {port}, which the sidecar listens on; move it to let the sidecar be injected"
    )]
    PortTaken { container: String, port: u16 },
    #[error("{0}; fix or remove it")]
    Annotation(#[from] BadAnnotation),
    #[error("cannot encode the patch: {0}")]
    Encode(String),
}

/// The pipeline a pod asks for with its `pulse.dev/inject` label, if any.
/// An empty value asks for nothing.
pub fn requested_pipeline(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(names::INJECT_LABEL)
        .map(String::as_str)
        .filter(|pipeline| !pipeline.is_empty())
}

/// Whether the pod already carries the sidecar: the injected annotation, or a
/// container or init container with the sidecar's name (injected by hand or
/// by an older webhook).
pub fn already_injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(names::INJECTED_ANNOTATION));
    annotated
        || pod
            .spec
            .as_ref()
            .is_some_and(|spec| all_containers(spec).any(|c| c.name == names::SIDECAR_CONTAINER))
}

/// The patch that injects the sidecar into `pod` of `namespace`: a native
/// sidecar (first init container, `restartPolicy: Always`) when the cluster
/// supports it, so it starts before and stops after the app and never keeps a
/// Job's pod alive; a regular container (last) otherwise.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    native_sidecars: bool,
    target: &InjectTarget,
) -> Result<Injection, CannotInject> {
    if requested_pipeline(pod).is_none() {
        return Ok(Injection::NotOptedIn);
    }
    if already_injected(pod) {
        return Ok(Injection::AlreadyInjected);
    }
    let spec = pod.spec.as_ref().ok_or(CannotInject::NoContainers)?;
    check_fits(spec)?;
    let per_pod = per_pod(pod)?;

    let container = sidecar::container(target, namespace, native_sidecars, &per_pod);
    let mut ops = Vec::new();

    let mut annotations = BTreeMap::from([(
        names::INJECTED_ANNOTATION.to_string(),
        target.pipeline.clone(),
    )]);
    let existing = pod.metadata.annotations.as_ref();
    if !native_sidecars
        && !existing.is_some_and(|a| a.contains_key(DEFAULT_CONTAINER_ANNOTATION))
        && let Some(app) = spec.containers.first()
    {
        annotations.insert(DEFAULT_CONTAINER_ANNOTATION.into(), app.name.clone());
    }
    match existing {
        None => ops.push(add(&["metadata", "annotations"], &annotations)?),
        Some(_) => {
            for (key, value) in &annotations {
                ops.push(add(&["metadata", "annotations", key], value)?);
            }
        }
    }

    let volumes = sidecar::volumes(target);
    match &spec.volumes {
        None => ops.push(add(&["spec", "volumes"], &volumes)?),
        Some(_) => {
            for volume in &volumes {
                ops.push(add(&["spec", "volumes", "-"], volume)?);
            }
        }
    }

    ops.push(match (native_sidecars, &spec.init_containers) {
        (true, None) => add(&["spec", "initContainers"], &[&container])?,
        // First, so the pod's own init containers can already send metrics.
        (true, Some(_)) => add(&["spec", "initContainers", "0"], &container)?,
        (false, _) => add(&["spec", "containers", "-"], &container)?,
    });
    Ok(Injection::Patch(Patch(ops)))
}

/// Refuses pods the sidecar would break: host network, or a name or port of
/// the sidecar already in use.
fn check_fits(spec: &PodSpec) -> Result<(), CannotInject> {
    if spec.containers.is_empty() {
        return Err(CannotInject::NoContainers);
    }
    if spec.host_network == Some(true) {
        return Err(CannotInject::HostNetwork);
    }
    for volume in spec.volumes.iter().flatten() {
        if [sidecar::BUFFER_VOLUME, sidecar::TOKEN_VOLUME].contains(&volume.name.as_str()) {
            return Err(CannotInject::VolumeTaken(volume.name.clone()));
        }
    }
    for container in all_containers(spec) {
        for port in container.ports.iter().flatten() {
            if let Some(taken) = SIDECAR_PORTS
                .into_iter()
                .find(|p| i32::from(*p) == port.container_port)
            {
                return Err(CannotInject::PortTaken {
                    container: container.name.clone(),
                    port: taken,
                });
            }
        }
    }
    Ok(())
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

/// An `add` of `value` at the path made of `tokens` (escaped as RFC 6901
/// wants: `pulse.dev/injected` becomes `pulse.dev~1injected`).
fn add(tokens: &[&str], value: &impl serde::Serialize) -> Result<PatchOperation, CannotInject> {
    let value: Value =
        serde_json::to_value(value).map_err(|error| CannotInject::Encode(error.to_string()))?;
    Ok(PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    }))
}
