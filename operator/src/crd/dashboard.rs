//! `Dashboard`: panels over one pipeline's windows, served at `/d/<name>` by
//! the pipeline's one dashboard server (`spec.dashboards` of the pipeline).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A metric name as the gateway accepts it.
const METRIC_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_.:-]*$";
/// A window label of the pipeline (`5m`, `10m/1m`).
const WINDOW_LABEL_PATTERN: &str = "^[1-9][0-9]*(ms|s|m|h|d)(/[1-9][0-9]*(ms|s|m|h|d))?$";
/// An aggregation: count, sum, min, max, avg, last, or a quantile p0..p100.
const AGG_PATTERN: &str = r"^(count|sum|min|max|avg|last|p[0-9]{1,3}(\.[0-9])?)$";
/// A named colour or `#rrggbb`.
const COLOR_PATTERN: &str = "^(green|blue|yellow|orange|red|purple|grey|#[0-9a-fA-F]{6})$";

/// A dashboard of panels over one `MetricPipeline`'s windows, served live at
/// `/d/<name>` by the pipeline's dashboard server, which picks up added,
/// changed and removed boards without a restart.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "pulse.dev",
    version = "v1alpha1",
    kind = "Dashboard",
    plural = "dashboards",
    shortname = "pdash",
    namespaced,
    doc = "A Pulse dashboard: panels over one MetricPipeline, served live at /d/<name> by the pipeline's dashboard server.",
    status = "DashboardStatus",
    printcolumn = r#"{"name":"Pipeline","type":"string","jsonPath":".spec.pipeline"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 50 && !self.metadata.name.contains('.')").message(
        "metadata.name must be at most 50 characters without dots: it is the <name> in /d/<name> and prefixes the Service"
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct DashboardSpec {
    /// Name of the `MetricPipeline` in this namespace whose results the panels show.
    #[schemars(length(min = 1, max = 50))]
    pub pipeline: String,
    /// Shown in the page header; the resource name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub title: Option<String>,
    /// The panels, top to bottom.
    #[schemars(length(min = 1, max = 100))]
    pub panels: Vec<PanelSpec>,
}

/// One panel of a dashboard.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PanelSpec {
    /// Shown above the panel; made from the metric and aggregation when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub title: Option<String>,
    /// `line` (a chart over time), `stat` (the latest value, coloured by the
    /// thresholds) or `table` (the latest value per group).
    #[serde(default)]
    pub kind: PanelKindSpec,
    /// The metric shown, as sent to the gateway (`cpu_usage`).
    #[schemars(length(min = 1, max = 200), pattern(METRIC_PATTERN))]
    pub metric: String,
    /// One of the pipeline's windows (`1m`, `10m/1m`); its first window when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(WINDOW_LABEL_PATTERN))]
    pub window: Option<String>,
    /// Aggregations shown: count, sum, min, max, avg, last, p50, p95, p99.9 ...
    /// A stat panel shows the first.
    #[serde(default = "default_aggs")]
    #[schemars(length(min = 1, max = 16), inner(pattern(AGG_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub aggs: Vec<String>,
    /// Only series carrying all of these tags (`env: prod`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// One line (or table row) per combination of these tag keys' values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub group_by: Vec<String>,
    /// Colours from a value upwards, in increasing value order; below the
    /// lowest a value shows as ok.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[x_kube(validation = Rule::new(
        "self.map(t, t.value).isSorted() && self.all(t, self.exists_one(u, u.value == t.value))"
    ).message("thresholds must have distinct values, listed in increasing order"))]
    pub thresholds: Vec<ThresholdSpec>,
}

/// What a panel draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PanelKindSpec {
    /// A line chart over the chosen time range.
    #[default]
    Line,
    /// The latest closed window's value, coloured by the thresholds.
    Stat,
    /// The latest value of each group of series.
    Table,
}

/// From `value` upwards (inclusive), the panel shows `color`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ThresholdSpec {
    /// The lowest value shown in this colour.
    pub value: f64,
    /// A named colour (green, blue, yellow, orange, red, purple, grey) or `#rrggbb`.
    #[schemars(pattern(COLOR_PATTERN))]
    pub color: String,
}

/// What the operator last saw of the dashboard.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DashboardStatus {
    /// `Ready`, with the reason when not `True` (pipeline missing, a panel's
    /// window not computed by the pipeline, Deployment not available).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// URL of the dashboard page: through the pipeline's dashboard Ingress when
    /// it has one, else in-cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

fn default_aggs() -> Vec<String> {
    vec!["avg".to_string()]
}
