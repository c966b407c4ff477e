//! The reconcile step of `spec.backup`: apply the CronJob while the spec asks
//! for backups, delete it once the spec stops asking. Whether one was made is
//! read from the pipeline's own `BackupScheduled` condition, so a pipeline
//! that never had backups costs no request.

use k8s_openapi::api::batch::v1::CronJob;
use kube::api::DeleteParams;
use kube::{Api, Client};

use super::status::Check;
use super::{Error, apply};
use crate::crd::MetricPipeline;
use crate::names;

/// The condition saying the backup CronJob is in place.
pub const BACKUP_SCHEDULED: &str = "BackupScheduled";

/// Applies `cron_job` (the pipeline's `spec.backup` built), or deletes the
/// one an earlier spec made; the condition to report, if any.
pub(super) async fn reconcile(
    client: &Client,
    pipeline: &MetricPipeline,
    namespace: &str,
    cron_job: Option<&CronJob>,
) -> Result<Option<Check>, Error> {
    if let Some(cron_job) = cron_job {
        let applied = apply(client, namespace, cron_job).await?;
        let schedule = applied.spec.schedule;
        let destination = pipeline
            .spec
            .backup
            .as_ref()
            .map(|b| b.destination.as_str())
            .unwrap_or_default();
        return Ok(Some(Check::ok(
            BACKUP_SCHEDULED,
            "Scheduled",
            format!(
                "CronJob {} runs pulse backup to {destination} at \"{schedule}\"",
                applied.metadata.name.unwrap_or_default()
            ),
        )));
    }
    let had_one = pipeline
        .status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == BACKUP_SCHEDULED));
    if had_one {
        let name = names::backup_cron_job_name(&pipeline.metadata.name.clone().unwrap_or_default());
        let api: Api<CronJob> = Api::namespaced(client.clone(), namespace);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                return Err(Error::kube(format!(
                    "deleting CronJob {namespace}/{name} after spec.backup was removed"
                ))(error));
            }
        }
    }
    Ok(None)
}
