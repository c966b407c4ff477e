//! The sidecar container and volumes the webhook adds to a pod: pure builders
//! from the operator's sidecar settings and the pod's pipeline.
//!
//! The sidecar is configured through its environment (`PULSE_SIDECAR_*`, the
//! same keys as its `--gateway`, `--token-file` and `--buffer-dir` flags), so
//! the injected container needs no command line and shows its whole setup in
//! `kubectl describe pod`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::per_pod::PerPod;
use crate::names;

/// Volume holding the sidecar's disk buffer (an emptyDir: it lives as long as the pod).
pub const BUFFER_VOLUME: &str = "pulse-sidecar-buffer";
/// Volume holding the pipeline's ingest token (the pipeline's Secret).
pub const TOKEN_VOLUME: &str = "pulse-sidecar-token";
/// Where the buffer volume is mounted; the sidecar's `buffer.dir`.
pub const BUFFER_DIR: &str = "/var/lib/pulse-sidecar/buffer";
/// Where the token volume is mounted (read-only).
pub const TOKEN_DIR: &str = "/var/run/secrets/pulse.dev/ingest";
/// The token file inside [`TOKEN_DIR`]; the sidecar's `token_file`.
pub const TOKEN_FILE: &str = "/var/run/secrets/pulse.dev/ingest/token";
/// Name of the sidecar's admin port (probes, `/metrics`); unique within the pod.
pub const ADMIN_PORT_NAME: &str = "pulse-admin";

/// The smallest buffer the webhook accepts: the sidecar needs room for four
/// batches of 4 MiB (its `buffer.max_bytes` check) plus the headroom below.
pub const MIN_BUFFER_SIZE_LIMIT: u64 = 32 << 20;

/// How the operator runs every sidecar it injects: from `pulse operator`'s
/// flags (the chart's `sidecar.*` values). Build it with [`SidecarSettings::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarSettings {
    image: String,
    resources: ResourceRequirements,
    /// The emptyDir's `sizeLimit` as written (`256Mi`), and in bytes.
    buffer_size_limit: Quantity,
    buffer_size_bytes: u64,
}

/// Sidecar settings that cannot work, with what to change.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidSidecarSettings {
    #[error("the sidecar image is empty: pass --sidecar-image (or PULSE_SIDECAR_IMAGE)")]
    NoImage,
    #[error(
        "sidecar resources are not a JSON ResourceRequirements ({0}); e.g. {{\"requests\":{{\"cpu\":\"10m\",\"memory\":\"32Mi\"}},\"limits\":{{\"memory\":\"128Mi\"}}}}"
    )]
    Resources(String),
    #[error(
        "sidecar buffer size limit `{0}` is not a Kubernetes quantity of bytes (e.g. 256Mi, 1Gi, 500M)"
    )]
    BufferSize(String),
    #[error(
        "sidecar buffer size limit `{given}` is below {MIN_BUFFER_SIZE_LIMIT} bytes (32Mi), the least the sidecar's buffer works with; raise it"
    )]
    BufferTooSmall { given: String },
}

impl SidecarSettings {
    /// Checks the settings once, at start-up, so that no pod is ever given a
    /// sidecar that cannot start. `buffer_size_limit` is the emptyDir's
    /// `sizeLimit` as a quantity (`256Mi`).
    pub fn new(
        image: impl Into<String>,
        resources: ResourceRequirements,
        buffer_size_limit: &str,
    ) -> Result<Self, InvalidSidecarSettings> {
        let image = image.into();
        if image.trim().is_empty() {
            return Err(InvalidSidecarSettings::NoImage);
        }
        let bytes = parse_bytes(buffer_size_limit)
            .ok_or_else(|| InvalidSidecarSettings::BufferSize(buffer_size_limit.to_string()))?;
        if bytes < MIN_BUFFER_SIZE_LIMIT {
            return Err(InvalidSidecarSettings::BufferTooSmall {
                given: buffer_size_limit.to_string(),
            });
        }
        Ok(SidecarSettings {
            image,
            resources,
            buffer_size_limit: Quantity(buffer_size_limit.trim().to_string()),
            buffer_size_bytes: bytes,
        })
    }

    /// From `pulse operator`'s flags: the resources as JSON (the chart's
    /// `toJson` of `webhook.sidecar.resources`), empty or absent meaning
    /// [`SidecarSettings::default_resources`].
    pub fn from_flags(
        image: &str,
        resources_json: Option<&str>,
        buffer_size_limit: &str,
    ) -> Result<Self, InvalidSidecarSettings> {
        let resources = match resources_json.map(str::trim) {
            None | Some("") => Self::default_resources(),
            Some(json) => serde_json::from_str(json)
                .map_err(|e| InvalidSidecarSettings::Resources(e.to_string()))?,
        };
        Self::new(image, resources, buffer_size_limit)
    }

    /// The resources a sidecar gets when the chart sets none: small requests
    /// (it idles at ~8 MiB) and a memory limit, no CPU limit (throttling a
    /// sidecar under a burst would only make the app's requests wait).
    pub fn default_resources() -> ResourceRequirements {
        let quantities = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect::<BTreeMap<_, _>>()
        };
        ResourceRequirements {
            requests: Some(quantities(&[("cpu", "10m"), ("memory", "32Mi")])),
            limits: Some(quantities(&[("memory", "128Mi")])),
            ..ResourceRequirements::default()
        }
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    /// The emptyDir's `sizeLimit`, in bytes.
    pub fn buffer_size_bytes(&self) -> u64 {
        self.buffer_size_bytes
    }

    /// The sidecar's own budget (`buffer.max_bytes`): seven eighths of the
    /// emptyDir's limit, because the kubelet evicts the whole pod when an
    /// emptyDir outgrows its `sizeLimit`, and the sidecar may briefly pass its
    /// budget by the segment being written.
    pub fn buffer_max_bytes(&self) -> u64 {
        self.buffer_size_bytes - self.buffer_size_bytes / 8
    }
}

/// The Secret key holding a pipeline's ingest token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSecret {
    pub name: String,
    pub key: String,
}

/// Everything the webhook needs to inject one pod, resolved by the server
/// from the pod's pipeline and the operator's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectTarget {
    /// The pipeline named by the pod's `pulse.dev/inject` label.
    pub pipeline: String,
    /// The pipeline gateway's base URL (`names::gateway_url`).
    pub gateway_url: String,
    /// The pipeline's ingest token Secret, when the gateway wants a token.
    pub token: Option<TokenSecret>,
    /// The gateway's request limits, which the sidecar's batches must fit.
    pub limits: GatewayLimits,
    pub sidecar: SidecarSettings,
}

/// The pipeline's `limits.maxPointsPerRequest` and `maxDecompressedBytes`:
/// a sidecar batch larger than either would be refused with a 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayLimits {
    pub max_points_per_request: u32,
    pub max_decompressed_bytes: u32,
}

/// The sidecar container: a native sidecar (`restartPolicy: Always`, for the
/// pod's `initContainers`) when `native`, a regular container otherwise.
pub fn container(
    target: &InjectTarget,
    namespace: &str,
    native: bool,
    per_pod: &PerPod,
) -> Container {
    let mut env = vec![
        env_value("PULSE_SIDECAR_GATEWAY", &target.gateway_url),
        env_value("PULSE_SIDECAR_BUFFER__DIR", BUFFER_DIR),
        env_value(
            "PULSE_SIDECAR_BUFFER__MAX_BYTES",
            &target.sidecar.buffer_max_bytes().to_string(),
        ),
        env_value("PULSE_SIDECAR_TAGS__NAMESPACE", namespace),
        // The node through the downward API: the pod is not scheduled yet here.
        env_field("PULSE_SIDECAR_TAGS__NODE", "spec.nodeName"),
        env_value(
            "PULSE_SIDECAR_FORWARD__MAX_POINTS_PER_REQUEST",
            &target.limits.max_points_per_request.to_string(),
        ),
        env_value(
            "PULSE_SIDECAR_FORWARD__MAX_DECOMPRESSED_BYTES",
            &target.limits.max_decompressed_bytes.to_string(),
        ),
    ];
    // The pod's name, through the downward API since a pod made from a
    // template has none yet here; optional, as it makes new series at every
    // rollout.
    if per_pod.pod_tag {
        env.push(env_field("PULSE_SIDECAR_TAGS__POD", "metadata.name"));
    }
    env.extend(per_pod.tags.iter().map(|(key, value)| {
        env_value(
            &format!("PULSE_SIDECAR_TAGS__{}", key.to_uppercase()),
            value,
        )
    }));
    if let Some(port) = per_pod.prometheus_port {
        env.push(env_value(
            "PULSE_SIDECAR_PROMETHEUS__PORT",
            &port.to_string(),
        ));
    }
    if let Some(path) = &per_pod.prometheus_path {
        env.push(env_value("PULSE_SIDECAR_PROMETHEUS__PATH", path));
    }
    let mut volume_mounts = vec![VolumeMount {
        name: BUFFER_VOLUME.into(),
        mount_path: BUFFER_DIR.into(),
        ..VolumeMount::default()
    }];
    if target.token.is_some() {
        env.push(env_value("PULSE_SIDECAR_TOKEN_FILE", TOKEN_FILE));
        volume_mounts.push(VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    Container {
        name: names::SIDECAR_CONTAINER.into(),
        image: Some(target.sidecar.image.clone()),
        restart_policy: native.then(|| "Always".to_string()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: i32::from(names::SIDECAR_ADMIN_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(per_pod.resources(&target.sidecar.resources)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(volume_mounts),
        // A native sidecar's startup probe holds the app back until the
        // sidecar listens, so the app's first points are not refused.
        startup_probe: Some(probe("/healthz", 1, 30)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        ..Container::default()
    }
}

/// The volumes the sidecar mounts: its buffer, and the token when there is one.
pub fn volumes(target: &InjectTarget) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: BUFFER_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(target.sidecar.buffer_size_limit.clone()),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some(token) = &target.token {
        volumes.push(Volume {
            name: TOKEN_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(token.name.clone()),
                items: Some(vec![KeyToPath {
                    key: token.key.clone(),
                    path: "token".into(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// Kubernetes' "restricted" Pod Security Standard for the sidecar, so an
/// injected pod passes a namespace that enforces it. The user id is the
/// image's (a numeric non-root `USER`), so clusters that assign user ids per
/// namespace (OpenShift) can still run it.
fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Bytes of a Kubernetes quantity without a fraction: `268435456`, `256Mi`,
/// `1Gi`, `500M`, `1e9`. `None` for anything else (CPU-style `m`, fractions).
fn parse_bytes(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (digits, suffix) = quantity.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let multiplier: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        exponent => 10u64.checked_pow(exponent.strip_prefix(['e', 'E'])?.parse().ok()?)?,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(limit: &str) -> Result<SidecarSettings, InvalidSidecarSettings> {
        SidecarSettings::new(
            "pulse-sidecar:1",
            SidecarSettings::default_resources(),
            limit,
        )
    }

    #[test]
    fn quantities_of_bytes_are_read_in_every_suffix() {
        assert_eq!(parse_bytes("268435456"), Some(268_435_456));
        assert_eq!(parse_bytes("256Mi"), Some(256 << 20));
        assert_eq!(parse_bytes("1Gi"), Some(1 << 30));
        assert_eq!(parse_bytes("500M"), Some(500_000_000));
        assert_eq!(parse_bytes("1e9"), Some(1_000_000_000));
        for bad in [
            "",
            "Mi",
            "1.5Gi",
            "100m",
            "12 Mi",
            "-1",
            "99999999999Ti",
            "1e99",
        ] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_buffer_budget_stays_under_the_empty_dir_limit() {
        let settings = settings("256Mi").expect("valid");
        assert_eq!(settings.buffer_size_bytes(), 256 << 20);
        assert_eq!(settings.buffer_max_bytes(), 224 << 20);
    }

    #[test]
    fn flags_give_resources_as_json_or_the_defaults() {
        let json = r#"{"requests":{"cpu":"50m","memory":"64Mi"},"limits":{"memory":"256Mi"}}"#;
        let settings = SidecarSettings::from_flags("img", Some(json), "1Gi").expect("valid");
        assert_eq!(
            settings
                .resources
                .requests
                .as_ref()
                .map(|r| r["memory"].0.as_str()),
            Some("64Mi")
        );
        for absent in [None, Some(""), Some("  ")] {
            let settings = SidecarSettings::from_flags("img", absent, "1Gi").expect("valid");
            assert_eq!(settings.resources, SidecarSettings::default_resources());
        }
        assert!(matches!(
            SidecarSettings::from_flags("img", Some("{\"requests\":3}"), "1Gi"),
            Err(InvalidSidecarSettings::Resources(_))
        ));
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_what_to_change() {
        assert_eq!(
            settings("16Mi"),
            Err(InvalidSidecarSettings::BufferTooSmall {
                given: "16Mi".into()
            })
        );
        assert_eq!(
            settings("lots"),
            Err(InvalidSidecarSettings::BufferSize("lots".into()))
        );
        assert_eq!(
            SidecarSettings::new(" ", ResourceRequirements::default(), "256Mi"),
            Err(InvalidSidecarSettings::NoImage)
        );
    }
}
