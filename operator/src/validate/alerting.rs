//! `spec.anomaly` and `spec.alerting` rendered into the config's
//! `[[anomaly.rules]]` and `[[alerting.receivers]]`. A receiver's Secret keys
//! become `url_env` / `routing_key_env` naming variables that the processor's
//! Deployment fills from the Secrets, so no credential is in the ConfigMap.
//! Core's checks (`pulse_core::anomaly::rule::validate`, run when the
//! rendered config is validated) then name any bad rule.

use pulse_core::anomaly::{
    AlertingConfig, AnomalyConfig, DetectorKind, ReceiverConfig, ReceiverKind, RuleConfig,
};
use pulse_core::config::Config;

use super::{InvalidSpec, window_label};
use crate::crd::{
    AnomalyRuleSpec, DetectorSpec, MetricPipelineSpec, ReceiverKindSpec, ReceiverSpec, SecretKeyRef,
};
use crate::names;

/// Sets `config.anomaly` and `config.alerting` from the spec; returns the
/// receivers' Secret keys by the variable each is read from.
pub(super) fn render(
    spec: &MetricPipelineSpec,
    config: &mut Config,
) -> Result<Vec<(String, SecretKeyRef)>, InvalidSpec> {
    let mut secrets = Vec::new();
    let receivers = spec
        .alerting
        .iter()
        .flat_map(|a| a.receivers.iter())
        .enumerate()
        .map(|(index, r)| receiver(index, r, &mut secrets))
        .collect();
    let rules = spec
        .anomaly
        .iter()
        .flat_map(|a| a.rules.iter())
        .enumerate()
        .map(|(index, r)| rule(index, r))
        .collect::<Result<_, _>>()?;
    config.anomaly = AnomalyConfig { rules };
    config.alerting = AlertingConfig { receivers };
    Ok(secrets)
}

fn receiver(
    index: usize,
    spec: &ReceiverSpec,
    secrets: &mut Vec<(String, SecretKeyRef)>,
) -> ReceiverConfig {
    let mut from_secret = |env: String, secret: &Option<SecretKeyRef>| {
        secret.as_ref().map(|secret| {
            secrets.push((env.clone(), secret.clone()));
            env
        })
    };
    ReceiverConfig {
        name: spec.name.clone(),
        kind: match spec.kind {
            ReceiverKindSpec::Webhook => ReceiverKind::Webhook,
            ReceiverKindSpec::Slack => ReceiverKind::Slack,
            ReceiverKindSpec::Pagerduty => ReceiverKind::Pagerduty,
            ReceiverKindSpec::Alertmanager => ReceiverKind::Alertmanager,
        },
        url: spec.url.clone(),
        url_env: from_secret(names::receiver_url_env(index), &spec.url_secret_ref),
        routing_key: None,
        routing_key_env: from_secret(
            names::receiver_routing_key_env(index),
            &spec.routing_key_secret_ref,
        ),
    }
}

fn rule(index: usize, spec: &AnomalyRuleSpec) -> Result<RuleConfig, InvalidSpec> {
    // Rules name windows as spec.windows writes them; the config by label.
    let window = spec
        .window
        .as_deref()
        .map(|text| {
            window_label(text).map_err(|reason| InvalidSpec::RuleWindow {
                index,
                rule: spec.name.clone(),
                window: text.to_string(),
                reason,
            })
        })
        .transpose()?;
    Ok(RuleConfig {
        name: spec.name.clone(),
        metric: spec.metric.clone(),
        tags: spec.tags.clone(),
        window,
        aggregation: spec.aggregation.clone(),
        detector: match spec.detector {
            DetectorSpec::MovingAverage => DetectorKind::MovingAverage,
            DetectorSpec::Ewma => DetectorKind::Ewma,
            DetectorSpec::Threshold => DetectorKind::Threshold,
        },
        windows: usize::try_from(spec.windows).unwrap_or(usize::MAX),
        deviation: spec.deviation,
        above: spec.above,
        below: spec.below,
        for_windows: spec.for_windows,
        notify: spec.notify.clone(),
    })
}
