//! `spec.anomaly` and `spec.alerting`: rendered into the config every role
//! reads, credentials only as Secret-backed environment of the processor, and
//! a bad rule refused naming it, by the CRD's CEL rules (evaluated with
//! kube's CEL engine, as the API server would) and by the operator's
//! validation (the `Ready=False, InvalidSpec` condition).

use std::collections::BTreeMap;

use kube::core::cel::validate_cel;
use pulse_core::anomaly::{DetectorKind, ReceiverKind};
use pulse_core::config::Config;
use pulse_operator::build::pipeline_objects;
use pulse_operator::crd::MetricPipeline;
use pulse_operator::validate::{InvalidSpec, validate_pipeline};
use serde_json::{Value, json};

const IMAGE: &str = "ghcr.io/pulse/pulse:0.1.0";

/// A pipeline with two rules and one receiver of each kind.
fn spec() -> Value {
    json!({
        "apiVersion": "pulse.dev/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": "checkout", "namespace": "shop", "uid": "6f1c2d3e-0000-4000-8000-000000000002"},
        "spec": {
            "kafka": {"brokers": "kafka:9092", "partitions": 6},
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "windows": ["60s", "5m"],
            "anomaly": {"rules": [
                {"name": "cpu-spike", "metric": "cpu_usage", "tags": {"env": "prod"},
                 "window": "60s", "aggregation": "p95", "detector": "moving_average",
                 "windows": 12, "deviation": 2.5, "for": 2, "notify": ["ops", "chat", "pager"]},
                {"name": "cpu-high", "metric": "cpu_usage", "detector": "threshold",
                 "above": 90.0, "notify": ["am"]}
            ]},
            "alerting": {"receivers": [
                {"name": "ops", "kind": "webhook", "urlSecretRef": {"name": "alerts", "key": "hook"}},
                {"name": "chat", "kind": "slack", "urlSecretRef": {"name": "alerts", "key": "slack"}},
                {"name": "pager", "kind": "pagerduty", "routingKeySecretRef": {"name": "alerts", "key": "pd"}},
                {"name": "am", "kind": "alertmanager", "url": "http://alertmanager.monitoring.svc:9093"}
            ]}
        }
    })
}

fn resource(value: Value) -> MetricPipeline {
    serde_json::from_value(value).unwrap()
}

fn with(change: impl FnOnce(&mut Value)) -> MetricPipeline {
    let mut value = spec();
    change(&mut value);
    resource(value)
}

/// The Secret-backed variables of a container: name -> (secret, key).
fn secret_env(
    container: &k8s_openapi::api::core::v1::Container,
) -> BTreeMap<String, (String, String)> {
    container
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let s = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            Some((e.name.clone(), (s.name.clone(), s.key.clone())))
        })
        .collect()
}

fn pair(name: &str, key: &str) -> (String, String) {
    (name.into(), key.into())
}

#[test]
fn rules_and_receivers_render_into_the_config_with_secrets_as_variables() {
    let validated = validate_pipeline(&resource(spec())).unwrap();
    let config = Config::from_toml(&validated.config_toml).unwrap();
    assert_eq!(config, validated.config);

    let spike = &config.anomaly.rules[0];
    assert_eq!(spike.name, "cpu-spike");
    assert_eq!(spike.window.as_deref(), Some("1m"), "by core's label");
    assert_eq!(spike.tags.get("env").map(String::as_str), Some("prod"));
    assert_eq!(
        (
            spike.aggregation.as_str(),
            spike.detector,
            spike.windows,
            spike.deviation,
            spike.for_windows
        ),
        ("p95", DetectorKind::MovingAverage, 12, 2.5, 2)
    );
    let high = &config.anomaly.rules[1];
    assert_eq!(
        (high.window.as_deref(), high.above, high.for_windows),
        (None, Some(90.0), 1),
        "core's defaults"
    );

    let receivers: Vec<_> = config
        .alerting
        .receivers
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.kind,
                r.url.as_deref(),
                r.url_env.as_deref(),
                r.routing_key_env.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        receivers,
        [
            (
                "ops",
                ReceiverKind::Webhook,
                None,
                Some("PULSE_RECEIVER_0_URL"),
                None
            ),
            (
                "chat",
                ReceiverKind::Slack,
                None,
                Some("PULSE_RECEIVER_1_URL"),
                None
            ),
            (
                "pager",
                ReceiverKind::Pagerduty,
                None,
                None,
                Some("PULSE_RECEIVER_2_ROUTING_KEY")
            ),
            (
                "am",
                ReceiverKind::Alertmanager,
                Some("http://alertmanager.monitoring.svc:9093"),
                None,
                None
            ),
        ]
    );
    assert!(
        config
            .alerting
            .receivers
            .iter()
            .all(|r| r.routing_key.is_none()),
        "no credential in the ConfigMap"
    );

    let objects = pipeline_objects(&validated, IMAGE, &Default::default(), Default::default());
    let processor = &objects.processor.spec.template;
    let container = &processor.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        secret_env(container),
        BTreeMap::from([
            ("PULSE_STORAGE__DATABASE_URL".into(), pair("db", "url")),
            ("PULSE_RECEIVER_0_URL".into(), pair("alerts", "hook")),
            ("PULSE_RECEIVER_1_URL".into(), pair("alerts", "slack")),
            ("PULSE_RECEIVER_2_ROUTING_KEY".into(), pair("alerts", "pd")),
        ])
    );
    let gateway = &objects.gateway.spec.template;
    assert!(
        secret_env(&gateway.spec.as_ref().unwrap().containers[0]).is_empty(),
        "only the processor sends alerts"
    );
    // The gateway reads the same file without the receivers' Secrets.
    assert!(std::env::var_os("PULSE_RECEIVER_0_URL").is_none());
    Config::from_toml(&validated.config_toml).expect("loads without the variables");
    validate_cel(&resource(spec())).unwrap();
}

#[test]
fn a_bad_rule_is_refused_by_the_operator_naming_it() {
    let refused = |change: fn(&mut Value), needle: &str| {
        let err = validate_pipeline(&with(change)).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        err
    };
    let err = refused(
        |v| v["spec"]["anomaly"]["rules"][0]["window"] = json!("15m"),
        "(cpu-spike).window",
    );
    assert!(matches!(err, InvalidSpec::Config { .. }), "{err}");
    let err = refused(
        |v| v["spec"]["anomaly"]["rules"][1]["window"] = json!("soon"),
        "spec.anomaly.rules[1] (cpu-high).window",
    );
    assert!(matches!(err, InvalidSpec::RuleWindow { .. }), "{err}");
    refused(
        |v| v["spec"]["anomaly"]["rules"][1]["notify"] = json!(["nobody"]),
        "receiver `nobody`",
    );
    refused(
        |v| v["spec"]["anomaly"]["rules"][1]["name"] = json!("cpu-spike"),
        "rule `cpu-spike` is declared twice",
    );
    refused(
        |v| v["spec"]["anomaly"]["rules"][0]["deviation"] = json!(0.0),
        "(cpu-spike).deviation",
    );
    refused(
        |v| v["spec"]["anomaly"]["rules"][1]["below"] = json!(95.0),
        "(cpu-high).below",
    );
    refused(
        |v| v["spec"]["anomaly"]["rules"][0]["aggregation"] = json!("median"),
        "(cpu-spike).aggregation",
    );
    refused(
        |v| v["spec"]["alerting"]["receivers"][3]["name"] = json!("ops"),
        "receiver `ops` is declared twice",
    );
}

#[test]
fn cel_refuses_a_bad_rule_or_receiver_naming_it() {
    let refused = |change: fn(&mut Value), needle: &str| {
        let err = validate_cel(&with(change)).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    };
    refused(
        |v| v["spec"]["anomaly"]["rules"][1]["window"] = json!("15m"),
        "anomaly rule cpu-high: window is not one of spec.windows",
    );
    refused(
        |v| v["spec"]["anomaly"]["rules"][0]["notify"] = json!(["ops", "nobody"]),
        "anomaly rule cpu-spike: notify names a receiver not in spec.alerting.receivers",
    );
    refused(
        |v| {
            v["spec"]
                .as_object_mut()
                .unwrap()
                .remove("alerting")
                .map(drop)
                .unwrap_or(())
        },
        "anomaly rule cpu-spike: notify names a receiver",
    );
    refused(
        |v| v["spec"]["anomaly"]["rules"][1]["detector"] = json!("ewma"),
        "anomaly rule cpu-high: above and below belong to detector threshold",
    );
    refused(
        |v| {
            v["spec"]["anomaly"]["rules"][1]
                .as_object_mut()
                .unwrap()
                .remove("above")
                .map(drop)
                .unwrap_or(())
        },
        "anomaly rule cpu-high: a threshold rule needs above and/or below",
    );
    refused(
        |v| v["spec"]["anomaly"]["rules"][1]["below"] = json!(95.0),
        "anomaly rule cpu-high: below must be under above",
    );
    refused(
        |v| v["spec"]["alerting"]["receivers"][1] = json!({"name": "chat", "kind": "slack", "url": "https://hooks.slack.com/services/T/B/x"}),
        "receiver chat: a Slack webhook URL is a credential",
    );
    refused(
        |v| {
            v["spec"]["alerting"]["receivers"][2]
                .as_object_mut()
                .unwrap()
                .remove("routingKeySecretRef")
                .map(drop)
                .unwrap_or(())
        },
        "receiver pager: pagerduty needs routingKeySecretRef",
    );
    refused(
        |v| {
            v["spec"]["alerting"]["receivers"][3]["urlSecretRef"] = json!({"name": "a", "key": "b"})
        },
        "receiver am: give url or urlSecretRef, not both",
    );
    refused(
        |v| {
            v["spec"]["alerting"]["receivers"][0]
                .as_object_mut()
                .unwrap()
                .remove("urlSecretRef")
                .map(drop)
                .unwrap_or(())
        },
        "receiver ops: needs url or urlSecretRef",
    );
}
