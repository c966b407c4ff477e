//! `MetricPipeline.spec.backup`: scheduled backups of the pipeline's database
//! schema to an S3-compatible bucket, run by a CronJob as `pulse backup`
//! (the fields CloudNativePG users know from `barmanObjectStore`: a
//! destination path, an endpoint, credentials from a Secret, a retention).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `s3://bucket` or `s3://bucket/prefix`, as `pulse backup --to` takes it.
const DESTINATION_PATTERN: &str = "^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\\s]*)?$";
/// An endpoint URL: `http(s)://host[:port][/path]`.
const ENDPOINT_PATTERN: &str = "^https?://[^\\s/]+(/[^\\s]*)?$";

/// Scheduled backups of the pipeline's schema.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to back up, as a CronJob schedule (`0 3 * * *`: every night at
    /// 03:00 in the cluster's time zone).
    #[schemars(length(min = 1, max = 100))]
    pub schedule: String,
    /// Where: `s3://bucket/prefix`. Each backup goes to `prefix/<UTC time>/`
    /// (a manifest and one zstd object per table).
    #[schemars(pattern(DESTINATION_PATTERN))]
    pub destination: String,
    /// The S3 endpoint of a store other than AWS (MinIO, Ceph, R2...), e.g.
    /// `http://minio.storage:9000`; requests are path-style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(ENDPOINT_PATTERN))]
    pub endpoint: Option<String>,
    /// The bucket's region (`AWS_REGION`); `us-east-1` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// A Secret in the pipeline's namespace with keys `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`. Without it the job uses the pod's own
    /// credentials (e.g. IAM roles for the pipeline's ServiceAccount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// How many backups to keep: older ones are deleted after each backup.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: i32,
}

/// A Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn default_keep() -> i32 {
    7
}
