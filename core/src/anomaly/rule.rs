//! The `[[anomaly.rules]]` and `[[alerting.receivers]]` sections, and their
//! checks: a bad rule or receiver is refused when the configuration loads,
//! with an error naming it, never discovered at the first window it judges.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::aggregate::AggKind;
use crate::config::ConfigError;
use crate::point::Tags;

/// Longest history a moving average or EWMA keeps, per series: bounds the
/// processor's memory and checkpoint size whatever a rule asks.
pub const MAX_HISTORY: usize = 1_000;
/// Most consecutive windows `for` may ask.
pub const MAX_FOR: u32 = 1_000;

/// `[anomaly]`: the rules judged when windows close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    pub rules: Vec<RuleConfig>,
}

/// How a rule decides a window is anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Further than `deviation` standard deviations from the mean of the last
    /// `windows` windows.
    MovingAverage,
    /// Further than `deviation` standard deviations from an exponentially
    /// weighted mean (and variance) whose span is `windows` windows.
    Ewma,
    /// Above `above` and/or below `below`.
    Threshold,
}

/// One `[[anomaly.rules]]` entry, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique in the pipeline; part of every anomaly's id.
    pub name: String,
    pub metric: String,
    /// Only series whose tags include all of these; one evaluation per series.
    #[serde(default)]
    pub tags: Tags,
    /// One of `processor.windows`; the first when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default = "default_aggregation")]
    pub aggregation: String,
    pub detector: DetectorKind,
    /// moving_average / ewma: history length, also the warm-up.
    #[serde(default = "default_windows")]
    pub windows: usize,
    /// moving_average / ewma: standard deviations that count as anomalous.
    #[serde(default = "default_deviation")]
    pub deviation: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Consecutive anomalous windows before it fires; as many clear windows
    /// resolve it.
    #[serde(rename = "for", default = "default_for")]
    pub for_windows: u32,
    /// Receivers told when it fires and resolves.
    #[serde(default)]
    pub notify: Vec<String>,
}

/// The defaults of an unset key; public so the operator's CRD has the same.
pub fn default_aggregation() -> String {
    "avg".into()
}
pub fn default_windows() -> usize {
    10
}
pub fn default_deviation() -> f64 {
    3.0
}
pub fn default_for() -> u32 {
    1
}

/// `[alerting]`: where firing and resolved anomalies are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    pub receivers: Vec<ReceiverConfig>,
}

/// Which payload a receiver takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKind {
    /// Pulse's own JSON (README, "Alerting"), POSTed to `url`.
    Webhook,
    /// A Slack incoming webhook URL.
    Slack,
    /// PagerDuty Events API v2; `url` defaults to the public endpoint.
    Pagerduty,
    /// A Prometheus Alertmanager's base URL; alerts go to `<url>/api/v2/alerts`.
    Alertmanager,
}

/// The public PagerDuty Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// One `[[alerting.receivers]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    pub kind: ReceiverKind,
    /// Where to POST. Often a secret (Slack webhook URLs are): it may instead
    /// come from the environment variable named by `url_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Environment variable holding the URL (on Kubernetes, from a Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// PagerDuty's integration (routing) key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Environment variable holding the routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key_env: Option<String>,
}

impl ReceiverConfig {
    /// The URL to POST to: `url`, else the variable `url_env` names, else
    /// (PagerDuty only) the public endpoint.
    /// Checked to be an http(s) URL.
    pub fn resolved_url(&self) -> Result<String, String> {
        let url = if let Some(url) = self.url.as_deref().filter(|u| !u.trim().is_empty()) {
            url.trim().to_string()
        } else if let Some(var) = &self.url_env {
            read_env(var)?
        } else {
            match self.kind {
                ReceiverKind::Pagerduty => PAGERDUTY_EVENTS_URL.into(),
                _ => return Err("`url` (or `url_env`) is required".into()),
            }
        };
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(url)
        } else {
            Err("must be an http:// or https:// URL".into())
        }
    }

    /// What can be checked without the environment: a URL written in the
    /// file is read, a URL or key from a variable only needs the variable
    /// named. Only the processor sends alerts, so only it resolves the
    /// variables (at start, see [`ReceiverConfig::resolved_url`]); the other
    /// roles read the same file without the Secrets.
    fn check_written(&self) -> Result<(), (&'static str, String)> {
        if self.url_env.is_none() {
            self.resolved_url().map_err(|m| ("url", m))?;
        }
        if self.kind == ReceiverKind::Pagerduty
            && self.routing_key_env.is_none()
            && self
                .routing_key
                .as_deref()
                .is_none_or(|k| k.trim().is_empty())
        {
            return Err((
                "routing_key",
                "`routing_key` (or `routing_key_env`) is required for pagerduty".into(),
            ));
        }
        Ok(())
    }

    /// PagerDuty's routing key: `routing_key`, else the variable `routing_key_env` names.
    pub fn resolved_routing_key(&self) -> Result<String, String> {
        if let Some(key) = self.routing_key.as_deref().filter(|k| !k.trim().is_empty()) {
            return Ok(key.trim().to_string());
        }
        match &self.routing_key_env {
            Some(var) => read_env(var),
            None => Err("`routing_key` (or `routing_key_env`) is required for pagerduty".into()),
        }
    }
}

fn read_env(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(format!(
            "environment variable `{var}` is unset or empty (on Kubernetes: is the Secret mounted?)"
        )),
    }
}

fn invalid(key: String, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

/// Checks every rule against the configured windows and receivers, and every
/// receiver; the first problem is returned, naming the rule or receiver.
pub fn validate(
    rules: &AnomalyConfig,
    alerting: &AlertingConfig,
    windows: &[String],
) -> Result<(), ConfigError> {
    let mut receivers = HashSet::new();
    for (i, r) in alerting.receivers.iter().enumerate() {
        let key = |field: &str| format!("alerting.receivers[{i}] ({}).{field}", r.name);
        if r.name.trim().is_empty() {
            return Err(invalid(key("name"), "must not be empty".into()));
        }
        if !receivers.insert(r.name.as_str()) {
            return Err(invalid(
                key("name"),
                format!("receiver `{}` is declared twice", r.name),
            ));
        }
        r.check_written()
            .map_err(|(field, m)| invalid(key(field), m))?;
    }
    let mut names = HashSet::new();
    for (i, rule) in rules.rules.iter().enumerate() {
        let key = |field: &str| format!("anomaly.rules[{i}] ({}).{field}", rule.name);
        let bad = |field: &str, message: String| Err(invalid(key(field), message));
        if rule.name.trim().is_empty() {
            return bad("name", "must not be empty".into());
        }
        if !names.insert(rule.name.as_str()) {
            return bad("name", format!("rule `{}` is declared twice", rule.name));
        }
        if rule.metric.trim().is_empty() {
            return bad("metric", "must name a metric".into());
        }
        if let Some(w) = &rule.window
            && !windows.contains(w)
        {
            return bad(
                "window",
                format!("`{w}` is not one of processor.windows {windows:?}"),
            );
        }
        if let Err(e) = rule.aggregation.parse::<AggKind>() {
            return bad("aggregation", e);
        }
        match rule.detector {
            DetectorKind::MovingAverage | DetectorKind::Ewma => {
                if !(2..=MAX_HISTORY).contains(&rule.windows) {
                    return bad(
                        "windows",
                        format!("must be 2 to {MAX_HISTORY}, got {}", rule.windows),
                    );
                }
                if !(rule.deviation.is_finite() && rule.deviation > 0.0) {
                    return bad(
                        "deviation",
                        format!("must be a number above 0, got {}", rule.deviation),
                    );
                }
                if rule.above.is_some() || rule.below.is_some() {
                    return bad(
                        "detector",
                        "`above`/`below` belong to detector = \"threshold\"".into(),
                    );
                }
            }
            DetectorKind::Threshold => {
                let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
                if rule.above.is_none() && rule.below.is_none() {
                    return bad(
                        "above",
                        "a threshold rule needs `above` and/or `below`".into(),
                    );
                }
                if !finite(rule.above) || !finite(rule.below) {
                    return bad("above", "`above` and `below` must be finite numbers".into());
                }
                if let (Some(above), Some(below)) = (rule.above, rule.below)
                    && below >= above
                {
                    return bad(
                        "below",
                        format!("{below} must be under `above` ({above}), or every value fires"),
                    );
                }
            }
        }
        if !(1..=MAX_FOR).contains(&rule.for_windows) {
            return bad(
                "for",
                format!("must be 1 to {MAX_FOR}, got {}", rule.for_windows),
            );
        }
        if let Some(unknown) = rule.notify.iter().find(|n| !receivers.contains(n.as_str())) {
            return bad(
                "notify",
                format!(
                    "receiver `{unknown}` is not declared in [[alerting.receivers]] (declared: {:?})",
                    alerting
                        .receivers
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const GOOD: &str = r#"
[[anomaly.rules]]
name = "cpu-spike"
metric = "cpu_usage"
tags = { env = "prod" }
window = "1m"
aggregation = "avg"
detector = "moving_average"
windows = 10
deviation = 3.0
for = 1
notify = ["ops"]

[[anomaly.rules]]
name = "cpu-high"
metric = "cpu_usage"
detector = "threshold"
above = 90.0
for = 2

[[alerting.receivers]]
name = "ops"
kind = "webhook"
url = "http://127.0.0.1:9999/hook"
"#;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml(text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_contract_parses() {
        let c = load(GOOD).unwrap();
        let r = &c.anomaly.rules[0];
        assert_eq!(r.tags.get("env").map(String::as_str), Some("prod"));
        assert_eq!((r.windows, r.deviation, r.for_windows), (10, 3.0, 1));
        assert_eq!(c.anomaly.rules[1].window, None);
        assert_eq!(c.anomaly.rules[1].aggregation, "avg");
        assert_eq!(c.anomaly.rules[1].for_windows, 2);
        assert_eq!(c.alerting.receivers[0].kind, super::ReceiverKind::Webhook);
        // The effective config renders back to the same thing.
        assert_eq!(load(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule() {
        for (from, to, expect) in [
            ("window = \"1m\"", "window = \"2m\"", "(cpu-spike).window"),
            (
                "aggregation = \"avg\"",
                "aggregation = \"median\"",
                "(cpu-spike).aggregation",
            ),
            ("windows = 10", "windows = 1", "(cpu-spike).windows"),
            (
                "deviation = 3.0",
                "deviation = -1.0",
                "(cpu-spike).deviation",
            ),
            (
                "notify = [\"ops\"]",
                "notify = [\"nobody\"]",
                "receiver `nobody`",
            ),
            (
                "above = 90.0",
                "below = 5.0\nabove = 1.0",
                "(cpu-high).below",
            ),
            ("for = 2", "for = 0", "(cpu-high).for"),
            (
                "name = \"cpu-high\"",
                "name = \"cpu-spike\"",
                "declared twice",
            ),
            (
                "detector = \"threshold\"",
                "detector = \"zscore\"",
                "zscore",
            ),
            (
                "url = \"http://127.0.0.1:9999/hook\"",
                "url = \"ftp://x\"",
                "(ops).url",
            ),
            (
                "kind = \"webhook\"",
                "kind = \"pagerduty\"",
                "(ops).routing_key",
            ),
            ("for = 1", "for = 1\nbogus = 3", "bogus"),
        ] {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let err = load(&text).unwrap_err();
            assert!(err.contains(expect), "{to}: {err}");
        }
    }

    #[test]
    fn receiver_secrets_come_from_the_environment_of_the_sender_only() {
        let text = GOOD.replace(
            "url = \"http://127.0.0.1:9999/hook\"",
            "url_env = \"PULSE_TEST_RECEIVER_URL_UNSET\"",
        );
        // Every role loads the file; only the processor, which sends, needs the variable.
        let config = load(&text).unwrap();
        let err = config.alerting.receivers[0].resolved_url().unwrap_err();
        assert!(err.contains("PULSE_TEST_RECEIVER_URL_UNSET"), "{err}");
        let r = super::ReceiverConfig {
            name: "pd".into(),
            kind: super::ReceiverKind::Pagerduty,
            url: None,
            url_env: None,
            routing_key: Some("abc".into()),
            routing_key_env: None,
        };
        assert_eq!(r.resolved_url().unwrap(), super::PAGERDUTY_EVENTS_URL);
    }
}
