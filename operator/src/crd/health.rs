//! `status.health` of a `MetricPipeline`: what `kubectl get mp` shows besides
//! readiness, read by the operator from the pipeline's own processor metrics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pipeline's throughput, backlog and freshness, as its processors last
/// reported them on `/metrics` (every processor pod, summed).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineHealth {
    /// Points aggregated per second between the operator's last two reads
    /// (`pulse_processor_points_total`); absent after the first read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_per_second: Option<f64>,
    /// Records written to the points topic and not yet processed, over all
    /// partitions (`pulse_processor_bus_lag_records`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_lag: Option<i64>,
    /// When a processor last stored a closed window
    /// (`pulse_processor_last_window_closed_timestamp_seconds`); absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_window_closed: Option<Time>,
    /// Processor pods that answered `/metrics`, of those running, e.g. `2/2`.
    pub processors_read: String,
    /// When the operator read them.
    pub observed_at: Time,
    /// Why some or all processors could not be read, when they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
