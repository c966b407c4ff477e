//! What each receiver kind is sent, in its documented format. Pure: the
//! delivery loop POSTs these bodies to [`target_url`].
//!
//! - `webhook`: `{"version":1,"anomaly":{…}}` with the API's anomaly fields.
//! - `slack`: an incoming-webhook message (`text`, with `blocks` for layout).
//! - `pagerduty`: an Events API v2 event, `trigger` then `resolve`, with the
//!   anomaly id as `dedup_key`.
//! - `alertmanager`: a one-alert list for `POST /api/v2/alerts`, labelled with
//!   the rule (`alertname`), the anomaly id, the metric, window and tags.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::rule::ReceiverKind;
use super::{AlertState, Anomaly};
use crate::TimestampMs;

/// How long a firing alert lasts in Alertmanager unless Pulse resolves it.
/// Alertmanager ends an alert without `endsAt` after its `resolve_timeout`
/// (5 minutes by default) unless the sender repeats it; Pulse sends each
/// change once, so it states a far end and sends the real one on resolve.
pub const ALERTMANAGER_HOLD: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where a receiver's POST goes, given its configured URL.
pub fn target_url(kind: ReceiverKind, url: &str) -> String {
    match kind {
        ReceiverKind::Alertmanager => format!("{}/api/v2/alerts", url.trim_end_matches('/')),
        _ => url.to_string(),
    }
}

/// The body for `kind`. `routing_key` is PagerDuty's integration key.
pub fn body(kind: ReceiverKind, anomaly: &Anomaly, routing_key: Option<&str>) -> Value {
    match kind {
        ReceiverKind::Webhook => json!({"version": 1, "anomaly": anomaly}),
        ReceiverKind::Slack => slack(anomaly),
        ReceiverKind::Pagerduty => pagerduty(anomaly, routing_key.unwrap_or_default()),
        ReceiverKind::Alertmanager => alertmanager(anomaly),
    }
}

/// RFC 3339 time, as every receiver takes it.
pub fn rfc3339(ms: TimestampMs) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn slack(a: &Anomaly) -> Value {
    let (icon, head) = match a.state {
        AlertState::Firing => (":rotating_light:", "FIRING"),
        AlertState::Resolved => (":white_check_mark:", "RESOLVED"),
    };
    let text = format!("{icon} [{head}] {}", a.message);
    let when = match a.resolved_ms {
        Some(ms) => format!(
            "window {} · resolved {}",
            rfc3339(a.window_start_ms),
            rfc3339(ms)
        ),
        None => format!("window {}", rfc3339(a.window_start_ms)),
    };
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("rule `{}` · id `{}` · {when}", a.rule, a.id)}
            ]}
        ]
    })
}

fn pagerduty(a: &Anomaly, routing_key: &str) -> Value {
    match a.state {
        AlertState::Resolved => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": a.id,
        }),
        AlertState::Firing => {
            // PagerDuty refuses summaries over 1024 characters.
            let summary: String = a.message.chars().take(1024).collect();
            json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": a.id,
                "payload": {
                    "summary": summary,
                    "source": format!("pulse/{}", a.metric_name),
                    "severity": "error",
                    "timestamp": rfc3339(a.window_end_ms),
                    "component": a.metric_name,
                    "class": a.rule,
                    "custom_details": a,
                },
                "client": "Pulse",
            })
        }
    }
}

/// An Alertmanager label name: `[a-zA-Z_][a-zA-Z0-9_]*`; other characters
/// become `_`, and tags never override Pulse's own labels.
fn label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

fn alertmanager(a: &Anomaly) -> Value {
    let mut labels = Map::new();
    for (k, v) in &a.tags {
        labels.insert(label_name(k), Value::String(v.clone()));
    }
    for (k, v) in [
        ("alertname", &a.rule),
        ("anomaly_id", &a.id),
        ("metric", &a.metric_name),
        ("window", &a.window),
    ] {
        labels.insert(k.into(), Value::String(v.clone()));
    }
    let ends = a
        .resolved_ms
        .unwrap_or(a.window_end_ms + ALERTMANAGER_HOLD.as_millis() as i64);
    json!([{
        "labels": labels,
        "annotations": {
            "summary": a.message,
            "value": a.value.to_string(),
            "expected": a.expected.to_string(),
            "score": a.score.to_string(),
        },
        "startsAt": rfc3339(a.window_start_ms),
        "endsAt": rfc3339(ends),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(state: AlertState) -> Anomaly {
        Anomaly {
            id: "00112233aabbccdd".into(),
            rule: "cpu-spike".into(),
            metric_name: "cpu_usage".into(),
            tags: [
                ("env".to_string(), "prod".to_string()),
                ("k8s.pod".into(), "web-1".into()),
            ]
            .into(),
            window: "1m".into(),
            window_start_ms: 1_700_000_000_000,
            window_end_ms: 1_700_000_060_000,
            value: 95.0,
            expected: 50.0,
            score: 9.0,
            state,
            message: "cpu-spike: cpu_usage{env=prod} avg over 1m was 95".into(),
            resolved_ms: (state == AlertState::Resolved).then_some(1_700_000_120_000),
            notify: vec![],
        }
    }

    #[test]
    fn alertmanager_labels_are_valid_names_and_resolve_sets_the_end() {
        let firing = body(
            ReceiverKind::Alertmanager,
            &sample(AlertState::Firing),
            None,
        );
        let alert = &firing[0];
        assert_eq!(alert["labels"]["alertname"], "cpu-spike");
        assert_eq!(alert["labels"]["anomaly_id"], "00112233aabbccdd");
        assert_eq!(alert["labels"]["k8s_pod"], "web-1");
        assert_eq!(alert["startsAt"], "2023-11-14T22:13:20.000Z");
        let resolved = body(
            ReceiverKind::Alertmanager,
            &sample(AlertState::Resolved),
            None,
        );
        assert_eq!(resolved[0]["endsAt"], "2023-11-14T22:15:20.000Z");
        assert_eq!(label_name("9x"), "_9x");
        assert_eq!(
            target_url(ReceiverKind::Alertmanager, "http://am:9093/"),
            "http://am:9093/api/v2/alerts"
        );
    }
}
