//! The CronJob of `spec.backup`: `pulse backup --config … --to … --keep …`
//! on the pipeline's schedule, with the database URL and the bucket's
//! credentials from Secrets and the endpoint and region as the standard
//! `AWS_*` variables.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EnvVar, PodSpec, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Owner;
use super::deployment::{
    default_resources, empty_dir, mount, restricted_container, restricted_pod, secret_env,
};
use crate::crd::{BackupSpec, SecretKeyRef};
use crate::names;

/// Keys of the credentials Secret (the variables' own names).
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Retries of one failed backup before the Job gives up until the next run.
const BACKOFF_LIMIT: i32 = 2;
/// Finished Jobs kept of each outcome, for `kubectl logs`.
const HISTORY: i32 = 3;

/// What the CronJob runs with.
pub(super) struct BackupJob<'a> {
    pub spec: &'a BackupSpec,
    pub image: &'a str,
    pub config_map: &'a str,
    pub database_url_secret: &'a SecretKeyRef,
    pub service_account: &'a str,
}

/// `<pipeline>-backup`: one backup at a time (a run still going when the next
/// is due makes that one wait: `Forbid`).
pub(super) fn cron_job(owner: &Owner<'_>, job: BackupJob<'_>) -> CronJob {
    let spec = job.spec;
    let config_path = format!("{}/{}", names::CONFIG_DIR, names::CONFIG_KEY);
    let credentials = spec.credentials_secret_ref.as_ref().map(|secret| {
        [ACCESS_KEY_ID, SECRET_ACCESS_KEY].map(|key| SecretKeyRef {
            name: secret.name.clone(),
            key: key.to_string(),
        })
    });
    let mut env = secret_env(
        [(names::ENV_DATABASE_URL, Some(job.database_url_secret))]
            .into_iter()
            .chain(
                credentials
                    .iter()
                    .flatten()
                    .map(|secret| (secret.key.as_str(), Some(secret))),
            ),
    );
    let plain = [
        ("AWS_REGION", spec.region.as_deref().or(Some("us-east-1"))),
        ("AWS_ENDPOINT_URL", spec.endpoint.as_deref()),
    ];
    env.extend(plain.into_iter().filter_map(|(name, value)| {
        value.map(|value| EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            ..EnvVar::default()
        })
    }));
    let container = Container {
        name: "backup".into(),
        image: Some(job.image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            "pulse".into(),
            "backup".into(),
            "--config".into(),
            config_path,
            "--to".into(),
            spec.destination.clone(),
            "--keep".into(),
            spec.keep.to_string(),
        ]),
        env: Some(env),
        resources: Some(default_resources()),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            mount("config", names::CONFIG_DIR, true),
            mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        service_account_name: Some(job.service_account.to_string()),
        automount_service_account_token: Some(false),
        security_context: Some(restricted_pod()),
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: job.config_map.into(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            empty_dir("tmp"),
        ]),
        ..PodSpec::default()
    };
    CronJob {
        metadata: owner.meta(&names::backup_cron_job_name(owner.instance), None),
        spec: CronJobSpec {
            schedule: spec.schedule.clone(),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(HISTORY),
            failed_jobs_history_limit: Some(HISTORY),
            job_template: JobTemplateSpec {
                metadata: None,
                spec: Some(JobSpec {
                    backoff_limit: Some(BACKOFF_LIMIT),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(owner.labels(None)),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        },
        ..CronJob::default()
    }
}
