//! `spec.backup`: the CronJob builder field by field, and the reconcile
//! against the in-process API server (applied while asked for, deleted once
//! the spec drops it, no request for a pipeline that never had one).

use std::sync::Arc;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Container, EnvVar};
use pulse_operator::build::pipeline_objects;
use pulse_operator::controller::backup::BACKUP_SCHEDULED;
use pulse_operator::controller::{Context, pipeline};
use pulse_operator::crd::MetricPipeline;
use pulse_operator::fixtures::{FakeApi, FakeSchemaAdmin, FakeTopicAdmin, database_secret};
use pulse_operator::metrics::Metrics;
use pulse_operator::validate::validate_pipeline;
use serde_json::{Value, json};

const IMAGE: &str = "ghcr.io/pulse/pulse:0.1.0";
const CRON_JOB: &str = "/apis/batch/v1/namespaces/shop/cronjobs/checkout-backup";

fn with_backup(backup: Value) -> MetricPipeline {
    let mut pipeline = MetricPipeline::test();
    pipeline.spec.backup = Some(serde_json::from_value(backup).unwrap());
    pipeline
}

fn cron_job(pipeline: &MetricPipeline) -> Option<CronJob> {
    pipeline_objects(
        &validate_pipeline(pipeline).unwrap(),
        IMAGE,
        &Default::default(),
        Default::default(),
    )
    .backup
}

fn container(cron_job: &CronJob) -> Container {
    let job = cron_job.spec.job_template.spec.as_ref().unwrap();
    job.template.spec.as_ref().unwrap().containers[0].clone()
}

/// The container's variables as JSON (value or secret reference).
fn env(container: &Container) -> Value {
    let vars: Vec<&EnvVar> = container.env.iter().flatten().collect();
    serde_json::to_value(vars).unwrap()
}

#[test]
fn a_backup_spec_becomes_a_cron_job_running_pulse_backup() {
    let pipeline = with_backup(json!({
        "schedule": "0 3 * * *",
        "destination": "s3://backups/pulse/checkout",
        "endpoint": "http://minio.storage:9000",
        "region": "eu-west-1",
        "credentialsSecretRef": {"name": "s3-creds"},
        "keep": 3
    }));
    let cron = cron_job(&pipeline).expect("a CronJob");
    assert_eq!(cron.metadata.name.as_deref(), Some("checkout-backup"));
    assert_eq!(cron.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(
        cron.metadata.owner_references.as_ref().unwrap()[0].uid,
        "uid-checkout"
    );
    let spec = &cron.spec;
    assert_eq!(spec.schedule, "0 3 * * *");
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let job = spec.job_template.spec.as_ref().unwrap();
    assert_eq!(job.backoff_limit, Some(2));
    let pod = job.template.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    // The processor's ServiceAccount: the job reads what the processor writes.
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("checkout-processor")
    );
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    assert_eq!(
        pod.volumes.as_ref().unwrap()[0]
            .config_map
            .as_ref()
            .unwrap()
            .name,
        "checkout-pulse-config"
    );
    let container = container(&cron);
    assert_eq!(container.image.as_deref(), Some(IMAGE));
    assert_eq!(
        container.command.clone().unwrap(),
        [
            "pulse",
            "backup",
            "--config",
            "/etc/pulse/pulse.toml",
            "--to",
            "s3://backups/pulse/checkout",
            "--keep",
            "3"
        ]
    );
    let secret = |name: &str, key: &str| json!({"secretKeyRef": {"name": name, "key": key, "optional": false}});
    assert_eq!(
        env(&container),
        json!([
            {"name": "PULSE_STORAGE__DATABASE_URL", "valueFrom": secret("checkout-db", "url")},
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": secret("s3-creds", "AWS_ACCESS_KEY_ID")},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": secret("s3-creds", "AWS_SECRET_ACCESS_KEY")},
            {"name": "AWS_REGION", "value": "eu-west-1"},
            {"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"},
        ])
    );
    assert_eq!(
        container
            .security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true)
    );
}

#[test]
fn defaults_keep_seven_in_us_east_1_with_the_pods_own_credentials() {
    let pipeline = with_backup(json!({"schedule": "@daily", "destination": "s3://b"}));
    let container = container(&cron_job(&pipeline).unwrap());
    assert_eq!(container.command.clone().unwrap()[7], "7");
    assert_eq!(
        env(&container),
        json!([
            {"name": "PULSE_STORAGE__DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "checkout-db", "key": "url", "optional": false}}},
            {"name": "AWS_REGION", "value": "us-east-1"},
        ])
    );
    assert!(cron_job(&MetricPipeline::test()).is_none());
}

struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
}

fn harness() -> Harness {
    let (api, client) = FakeApi::start();
    let ctx = Arc::new(Context::new(
        client,
        FakeTopicAdmin::new(),
        FakeSchemaAdmin::new(),
        Metrics::new(),
        IMAGE.into(),
    ));
    api.insert(&database_secret());
    api.deployments_available(true);
    Harness { api, ctx }
}

impl Harness {
    async fn reconcile(&self, mp: MetricPipeline) {
        self.api.insert(&mp);
        pipeline::reconcile(Arc::new(mp), self.ctx.clone())
            .await
            .expect("reconcile");
    }

    /// The `BackupScheduled` condition of the last status patch.
    fn scheduled(&self) -> Option<Value> {
        let recorded = self.api.recorded();
        let status = recorded
            .iter()
            .rev()
            .find(|r| r.path.ends_with("/status"))
            .expect("a status patch");
        status.body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == BACKUP_SCHEDULED)
            .cloned()
    }

    fn cron_job_requests(&self) -> Vec<String> {
        self.api
            .lines()
            .into_iter()
            .filter(|l| l.contains("cronjobs"))
            .collect()
    }
}

#[tokio::test]
async fn the_cron_job_is_applied_while_asked_for_and_deleted_after() {
    let h = harness();
    let asked =
        with_backup(json!({"schedule": "0 3 * * *", "destination": "s3://b/p"})).finalized();
    h.reconcile(asked.clone()).await;
    assert_eq!(h.cron_job_requests(), [format!("PATCH {CRON_JOB}")]);
    let applied = h
        .api
        .recorded()
        .into_iter()
        .find(|r| r.path == CRON_JOB)
        .unwrap();
    assert!(applied.query.contains("fieldManager=pulse-operator"));
    assert_eq!(applied.body["spec"]["schedule"], "0 3 * * *");
    let scheduled = h.scheduled().expect("a BackupScheduled condition");
    assert_eq!(scheduled["status"], "True");
    assert_eq!(
        scheduled["message"],
        "CronJob checkout-backup runs pulse backup to s3://b/p at \"0 3 * * *\""
    );

    // The spec drops backups: the status still says one was scheduled, so
    // the CronJob is deleted, and the condition goes.
    let mut dropped = MetricPipeline::test().finalized();
    dropped.status = h
        .api
        .recorded()
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/status"))
        .map(|r| serde_json::from_value(r.body["status"].clone()).unwrap());
    h.api.clear();
    h.reconcile(dropped).await;
    assert_eq!(h.cron_job_requests(), [format!("DELETE {CRON_JOB}")]);
    assert_eq!(h.scheduled(), None);

    // A pipeline that never had backups makes no CronJob request at all.
    h.api.clear();
    h.reconcile(MetricPipeline::test().finalized()).await;
    assert!(h.cron_job_requests().is_empty());
}
