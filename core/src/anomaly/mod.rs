//! Anomaly detection and alerting, the pure parts: the rule and receiver
//! configuration, the detectors, the per-series alert state machine, the
//! anomaly record every role shares, and the receivers' payloads.
//!
//! The processor judges closed windows with these (see `pulse-processor`'s
//! `judge`), the store keeps the anomalies and an outbox, and a delivery loop
//! sends the outbox to the receivers.

pub mod alert;
pub mod detector;
pub mod payload;
pub mod rule;

use serde::{Deserialize, Serialize};

use crate::TimestampMs;
use crate::aggregate::AggKind;
use crate::point::Tags;
use crate::result::{WindowResult, matches_tags};
use crate::series::SeriesId;

pub use alert::{Firing, SeriesState, Transition, Window};
pub use detector::{Detector, History, Judgement};
pub use rule::{
    AlertingConfig, AnomalyConfig, DetectorKind, ReceiverConfig, ReceiverKind, RuleConfig,
};

/// Whether an alert is still on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<AlertState> {
        match text {
            "firing" => Some(AlertState::Firing),
            "resolved" => Some(AlertState::Resolved),
            _ => None,
        }
    }
}

/// One anomaly: a rule fired on one series' window. The same record (by
/// `id`) later turns `resolved`. This is what the API answers, the store
/// keeps, the `.anomalies` topic carries and the generic webhook receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Anomaly {
    /// Stable: derived from rule, series, window and window start, so a
    /// replay produces the same id, and receivers deduplicate on it.
    #[schema(example = "3f2a9c0d41b7e655")]
    pub id: String,
    /// The rule that fired (`[[anomalies.rules]]` name).
    #[schema(example = "cpu_high")]
    pub rule: String,
    /// The series' metric.
    #[schema(example = "cpu_usage")]
    pub metric_name: String,
    /// The series' tags.
    #[schema(value_type = BTreeMap<String, String>, example = json!({"host": "web-01"}))]
    pub tags: Tags,
    /// The window label the rule judges.
    #[schema(example = "1m")]
    pub window: String,
    /// Start of the window the rule fired on, Unix milliseconds.
    #[schema(value_type = i64, example = 1764393600000_i64)]
    pub window_start_ms: TimestampMs,
    /// End of that window (exclusive), Unix milliseconds.
    #[schema(value_type = i64, example = 1764393660000_i64)]
    pub window_end_ms: TimestampMs,
    /// The window's value (the rule's aggregation).
    #[schema(example = 97.5)]
    pub value: f64,
    /// What the detector expected: the mean, or the bound crossed.
    #[schema(example = 90.0)]
    pub expected: f64,
    /// Standard deviations from the mean, or distance past the bound.
    #[schema(example = 7.5)]
    pub score: f64,
    /// `firing`, or `resolved` once the series is back to normal.
    #[schema(inline, example = "firing")]
    pub state: AlertState,
    /// What was found, for a person.
    #[schema(example = "cpu_usage avg 97.5 is above 90 (rule cpu_high)")]
    pub message: String,
    /// End of the window at which it resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, example = 1764393900000_i64)]
    pub resolved_ms: Option<TimestampMs>,
    /// Receivers the rule notifies (not part of the API answer).
    #[serde(default, skip)]
    pub notify: Vec<String>,
}

/// The stable id of the anomaly `rule` fired on `series`' window at `start_ms`.
pub fn anomaly_id(rule: &str, series: SeriesId, window: &str, start_ms: TimestampMs) -> String {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0x616e_6f6d);
    for part in [rule.as_bytes(), &[0], window.as_bytes(), &[0]] {
        h.update(part);
    }
    h.update(&series.as_i64().to_le_bytes());
    h.update(&start_ms.to_le_bytes());
    format!("{:016x}", h.digest())
}

/// A configured rule, ready to judge windows.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub metric: String,
    pub tags: Tags,
    pub window: String,
    pub aggregation: AggKind,
    pub detector: Detector,
    pub for_windows: u32,
    pub notify: Vec<String>,
}

impl Rule {
    /// Builds the rules of a configuration already validated (see
    /// [`rule::validate`]); `first_window` is the default window label.
    pub fn compile(config: &AnomalyConfig, first_window: &str) -> Result<Vec<Rule>, String> {
        config
            .rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    name: r.name.clone(),
                    metric: r.metric.clone(),
                    tags: r.tags.clone(),
                    window: r.window.clone().unwrap_or_else(|| first_window.to_string()),
                    aggregation: r
                        .aggregation
                        .parse()
                        .map_err(|e| format!("rule `{}`: {e}", r.name))?,
                    detector: Detector::of(r),
                    for_windows: r.for_windows,
                    notify: r.notify.clone(),
                })
            })
            .collect()
    }

    /// Whether this rule judges `result`.
    pub fn applies(&self, result: &WindowResult) -> bool {
        result.window == self.window && matches_tags(&result.tags, &self.tags)
    }

    /// The anomaly record of `firing` on `result`'s series.
    pub fn anomaly(&self, result: &WindowResult, firing: &Firing, state: AlertState) -> Anomaly {
        let tags = result
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let how = match self.detector.kind {
            DetectorKind::Threshold => format!("past the bound {}", firing.judgement.expected),
            _ => format!(
                "expected {:.4} ({:.1} standard deviations off)",
                firing.judgement.expected, firing.judgement.score
            ),
        };
        Anomaly {
            id: anomaly_id(&self.name, result.series_id, &self.window, firing.start_ms),
            rule: self.name.clone(),
            metric_name: result.metric.clone(),
            tags: result.tags.clone(),
            window: self.window.clone(),
            window_start_ms: firing.start_ms,
            window_end_ms: firing.end_ms,
            value: firing.value,
            expected: firing.judgement.expected,
            score: firing.judgement.score,
            state,
            message: format!(
                "{}: {}{{{tags}}} {} over {} was {}, {how}",
                self.name, result.metric, self.aggregation, self.window, firing.value
            ),
            resolved_ms: None,
            notify: self.notify.clone(),
        }
    }
}
