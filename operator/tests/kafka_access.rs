//! `spec.kafka.tls` and `spec.kafka.sasl`: the `bus.*` keys the pods read, the
//! Secret files and variable those keys rely on (gateway and processor only),
//! and the operator's own admin client settings, from the same spec.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use pulse_core::config::Config;
use pulse_core::kafka_security::SaslMechanism;
use pulse_operator::build::pipeline_objects;
use pulse_operator::crd::{MetricPipeline, SecretKeyRef};
use pulse_operator::kafka_access::{admin_properties, admin_secrets};
use pulse_operator::names::ENV_SASL_PASSWORD;
use pulse_operator::validate::{ValidatedPipeline, validate_pipeline};
use serde_json::{Value, json};

const IMAGE: &str = "ghcr.io/pulse/pulse:0.1.0";

fn spec(kafka: Value) -> Value {
    json!({
        "apiVersion": "pulse.dev/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": "checkout", "namespace": "shop", "uid": "6f1c2d3e-0000-4000-8000-000000000001"},
        "spec": {
            "kafka": kafka,
            "database": {"urlSecretRef": {"name": "db", "key": "url"}}
        }
    })
}

fn secured() -> Value {
    spec(json!({
        "brokers": "kafka-0.kafka:9093",
        "tls": {
            "caSecretRef": {"name": "kafka-ca", "key": "ca.pem"},
            "clientCertificateSecret": "checkout-kafka-client"
        },
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": "checkout",
            "passwordSecretRef": {"name": "kafka-user", "key": "password"}
        }
    }))
}

fn validated(value: Value) -> ValidatedPipeline {
    let resource: MetricPipeline = serde_json::from_value(value).unwrap();
    validate_pipeline(&resource).unwrap()
}

fn container(deployment: &Deployment) -> &Container {
    &pod(deployment).containers[0]
}

fn pod(deployment: &Deployment) -> &PodSpec {
    deployment.spec.template.spec.as_ref().unwrap()
}

#[test]
fn the_pods_config_names_the_mounted_files_and_no_password() {
    let pipeline = validated(secured());
    let bus = &pipeline.config.bus;
    assert!(bus.tls);
    assert_eq!(
        bus.tls_ca_file.as_deref(),
        Some("/etc/pulse/kafka-ca/ca.crt".as_ref())
    );
    assert_eq!(
        bus.tls_cert_file.as_deref(),
        Some("/etc/pulse/kafka-client/tls.crt".as_ref())
    );
    assert_eq!(
        bus.tls_key_file.as_deref(),
        Some("/etc/pulse/kafka-client/tls.key".as_ref())
    );
    assert_eq!(bus.sasl_mechanism, Some(SaslMechanism::ScramSha512));
    assert_eq!(bus.sasl_username.as_deref(), Some("checkout"));
    assert_eq!(bus.sasl_password, None);
    // The rendered file loads; the password comes from the environment.
    let loaded = Config::from_toml(&pipeline.config_toml).unwrap();
    assert_eq!(loaded.bus.sasl_password, None);
}

#[test]
fn gateway_and_processor_mount_the_secrets_the_dashboard_gets_none() {
    let pipeline = validated(secured());
    let objects = pipeline_objects(&pipeline, IMAGE, &Default::default(), Default::default());
    for deployment in [&objects.gateway, &objects.processor] {
        let pod = pod(deployment);
        let volumes = pod.volumes.as_ref().unwrap();
        let ca = volumes.iter().find(|v| v.name == "kafka-ca").unwrap();
        let ca = ca.secret.as_ref().unwrap();
        assert_eq!(ca.secret_name.as_deref(), Some("kafka-ca"));
        let items = ca.items.as_ref().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("ca.pem", "ca.crt")
        );
        assert_eq!(ca.default_mode, Some(0o440));
        let client = volumes.iter().find(|v| v.name == "kafka-client").unwrap();
        let client = client.secret.as_ref().unwrap();
        assert_eq!(client.secret_name.as_deref(), Some("checkout-kafka-client"));
        let paths: Vec<&str> = client
            .items
            .iter()
            .flatten()
            .map(|i| i.path.as_str())
            .collect();
        assert_eq!(paths, ["tls.crt", "tls.key"]);
        let container = container(deployment);
        let mounts = container.volume_mounts.as_ref().unwrap();
        for (name, path) in [
            ("kafka-ca", "/etc/pulse/kafka-ca"),
            ("kafka-client", "/etc/pulse/kafka-client"),
        ] {
            let mount = mounts.iter().find(|m| m.name == name).unwrap();
            assert_eq!(mount.mount_path, path);
            assert_eq!(mount.read_only, Some(true));
        }
        let password = container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == ENV_SASL_PASSWORD)
            .unwrap();
        let from = password
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("kafka-user", "password")
        );
        assert_eq!(password.value, None);
    }
    // The dashboard server never talks to Kafka: no password, no Kafka files.
    let container = container(&objects.dashboard);
    assert!(
        container
            .env
            .iter()
            .flatten()
            .all(|e| e.name != ENV_SASL_PASSWORD)
    );
    assert!(
        pod(&objects.dashboard)
            .volumes
            .iter()
            .flatten()
            .all(|v| !v.name.starts_with("kafka"))
    );
}

#[test]
fn the_admin_client_gets_the_pem_texts_and_password_from_the_secrets() {
    let pipeline = validated(secured());
    let wanted = admin_secrets(&pipeline.kafka);
    let key = |name: &str, key: &str| SecretKeyRef {
        name: name.into(),
        key: key.into(),
    };
    assert_eq!(
        wanted,
        [
            key("kafka-ca", "ca.pem"),
            key("checkout-kafka-client", "tls.crt"),
            key("checkout-kafka-client", "tls.key"),
            key("kafka-user", "password"),
        ]
    );
    let properties = admin_properties(&pipeline.kafka, |secret| {
        format!("<{}/{}>", secret.name, secret.key)
    });
    let get = |k: &str| {
        properties
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("security.protocol"), Some("sasl_ssl"));
    assert_eq!(get("ssl.endpoint.identification.algorithm"), Some("https"));
    assert_eq!(get("ssl.ca.pem"), Some("<kafka-ca/ca.pem>"));
    assert_eq!(get("ssl.ca.location"), None);
    assert_eq!(
        get("ssl.certificate.pem"),
        Some("<checkout-kafka-client/tls.crt>")
    );
    assert_eq!(get("ssl.key.pem"), Some("<checkout-kafka-client/tls.key>"));
    assert_eq!(get("ssl.certificate.location"), None);
    assert_eq!(get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
    assert_eq!(get("sasl.username"), Some("checkout"));
    assert_eq!(get("sasl.password"), Some("<kafka-user/password>"));
    // Without tls or sasl the admin client speaks plain text, as before.
    let plain = validated(spec(json!({"brokers": "kafka:9092"})));
    assert!(admin_properties(&plain.kafka, |_| unreachable!()).is_empty());
}

#[test]
fn plain_without_tls_is_refused() {
    let resource: MetricPipeline = serde_json::from_value(spec(json!({
        "brokers": "kafka:9092",
        "sasl": {"mechanism": "PLAIN", "username": "u", "passwordSecretRef": {"name": "s", "key": "k"}}
    })))
    .unwrap();
    let error = validate_pipeline(&resource).unwrap_err().to_string();
    assert!(
        error.contains("spec.kafka.sasl.mechanism") && error.contains("kafka.tls"),
        "{error}"
    );
}
