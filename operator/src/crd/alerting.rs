//! `MetricPipeline.spec.anomaly` and `spec.alerting`: the rules judged when a
//! window closes and the receivers told, in the shape of `pulse.toml`'s
//! `[[anomaly.rules]]` and `[[alerting.receivers]]` (camelCase keys), except
//! that a receiver's URL or key that is a credential comes from a Secret.
//!
//! They are fields of the pipeline rather than a CRD of their own because a
//! rule is only meaningful against one pipeline's windows and receivers: in
//! one object the API server's CEL can check a rule's window and receivers
//! at `kubectl apply`, and one reconcile renders rules, receivers and the
//! Secrets' environment into the processor together, so a half-applied
//! change (a rule naming a receiver not yet created) cannot exist.

use std::collections::BTreeMap;

use kube::KubeSchema;
use pulse_core::anomaly::rule;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Most rules and receivers one pipeline may declare (bounds the CEL rules'
/// cost for the API server and the processor's state).
pub const MAX_RULES: usize = 256;
pub const MAX_RECEIVERS: usize = 32;

/// The rules judged when a window closes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnomalySpec {
    /// Each rule judges every matching series' window as it closes. Names are
    /// unique (the API server refuses a duplicate).
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rules: Vec<AnomalyRuleSpec>,
}

/// How a rule decides a window is anomalous.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DetectorSpec {
    /// Further than `deviation` standard deviations from the mean of the last `windows` windows.
    MovingAverage,
    /// Further than `deviation` standard deviations from an exponentially weighted mean of span `windows`.
    Ewma,
    /// Above `above` and/or below `below`.
    Threshold,
}

/// One rule, as `[[anomaly.rules]]` in `pulse.toml`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new(
    "self.detector == 'threshold' ? (has(self.above) || has(self.below)) : !(has(self.above) || has(self.below))"
).message(Message::Expression(
    "'anomaly rule ' + self.name + ': ' + (self.detector == 'threshold' ? 'a threshold rule needs above and/or below' : 'above and below belong to detector threshold')".into()
)))]
#[x_kube(validation = Rule::new("!has(self.above) || !has(self.below) || self.below < self.above").message(Message::Expression(
    "'anomaly rule ' + self.name + ': below must be under above, or every value fires'".into()
)))]
#[serde(rename_all = "camelCase")]
pub struct AnomalyRuleSpec {
    /// Unique in the pipeline; part of every anomaly's id.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// The metric judged.
    #[schemars(length(min = 1))]
    pub metric: String,
    /// Only series whose tags include all of these; one evaluation per series.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// One of spec.windows, as written there; the first when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub window: Option<String>,
    /// The window's value judged: count, sum, min, max, avg, last or a quantile such as p95.
    #[serde(default = "default_aggregation")]
    #[schemars(pattern(r"^(count|sum|min|max|avg|mean|last|p[0-9]+(\.[0-9])?)$"))]
    pub aggregation: String,
    /// `moving_average`, `ewma` or `threshold`.
    pub detector: DetectorSpec,
    /// moving_average / ewma: history length, also the warm-up before it judges.
    #[serde(default = "default_windows")]
    #[schemars(range(min = 2, max = 1000))]
    pub windows: u32,
    /// moving_average / ewma: how many standard deviations are anomalous.
    #[serde(default = "default_deviation")]
    #[schemars(range(min = 0.0))]
    pub deviation: f64,
    /// threshold: fire above this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// threshold: fire below this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Consecutive anomalous windows before it fires; as many clear ones resolve it.
    #[serde(rename = "for", default = "default_for")]
    #[schemars(range(min = 1, max = 1000))]
    pub for_windows: u32,
    /// Names of the receivers (spec.alerting.receivers) told when it fires and resolves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RECEIVERS), inner(length(min = 1, max = 128)))]
    pub notify: Vec<String>,
}

/// Where firing and resolved anomalies are sent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertingSpec {
    /// Receivers the rules' `notify` name. Names are unique (the API server
    /// refuses a duplicate).
    #[serde(default)]
    #[schemars(length(max = MAX_RECEIVERS))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub receivers: Vec<ReceiverSpec>,
}

/// Which payload a receiver takes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKindSpec {
    /// Pulse's own JSON, POSTed to the URL.
    Webhook,
    /// A Slack incoming webhook (its URL is a credential: `urlSecretRef`).
    Slack,
    /// PagerDuty Events API v2, with the integration key from `routingKeySecretRef`.
    Pagerduty,
    /// A Prometheus Alertmanager's base URL.
    Alertmanager,
}

/// One receiver, as `[[alerting.receivers]]` in `pulse.toml`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("!(has(self.url) && has(self.urlSecretRef))").message(Message::Expression(
    "'receiver ' + self.name + ': give url or urlSecretRef, not both'".into()
)))]
#[x_kube(validation = Rule::new("self.kind == 'pagerduty' || has(self.url) || has(self.urlSecretRef)").message(Message::Expression(
    "'receiver ' + self.name + ': needs url or urlSecretRef'".into()
)))]
#[x_kube(validation = Rule::new("self.kind != 'slack' || has(self.urlSecretRef)").message(Message::Expression(
    "'receiver ' + self.name + ': a Slack webhook URL is a credential; give it as urlSecretRef'".into()
)))]
#[x_kube(validation = Rule::new("(self.kind == 'pagerduty') == has(self.routingKeySecretRef)").message(Message::Expression(
    "'receiver ' + self.name + ': ' + (self.kind == 'pagerduty' ? 'pagerduty needs routingKeySecretRef' : 'routingKeySecretRef belongs to kind pagerduty')".into()
)))]
#[serde(rename_all = "camelCase")]
pub struct ReceiverSpec {
    /// What rules' `notify` name it by.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// `webhook`, `slack`, `pagerduty` or `alertmanager`.
    pub kind: ReceiverKindSpec,
    /// A URL that is no secret (an in-cluster Alertmanager or webhook):
    /// written into the config. Exclusive with `urlSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^https?://\S+$"))]
    pub url: Option<String>,
    /// The Secret key holding the URL (required for Slack); it reaches the
    /// processor as an environment variable, never the ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// pagerduty: the Secret key holding the integration (routing) key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key_secret_ref: Option<SecretKeyRef>,
}

fn default_aggregation() -> String {
    rule::default_aggregation()
}

fn default_windows() -> u32 {
    u32::try_from(rule::default_windows()).unwrap_or(u32::MAX)
}

fn default_deviation() -> f64 {
    rule::default_deviation()
}

fn default_for() -> u32 {
    rule::default_for()
}
