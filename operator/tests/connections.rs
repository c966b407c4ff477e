//! The database CA and read URL, and Redis's TLS files, from a
//! `MetricPipeline`'s Secret references to the roles that use them.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use pulse_operator::build::pipeline_objects;
use pulse_operator::crd::MetricPipeline;
use pulse_operator::validate::validate_pipeline;
use serde_json::json;

const IMAGE: &str = "ghcr.io/pulse/pulse:0.1.0";

fn pod(deployment: &Deployment) -> &PodSpec {
    deployment.spec.template.spec.as_ref().unwrap()
}

fn container(deployment: &Deployment) -> &Container {
    &pod(deployment).containers[0]
}

fn env<'a>(deployment: &'a Deployment, name: &str) -> Option<&'a EnvVar> {
    container(deployment)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
}

fn volume_secret(deployment: &Deployment, volume: &str) -> Option<String> {
    pod(deployment)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .and_then(|v| v.secret.as_ref()?.secret_name.clone())
}

#[test]
fn database_and_redis_tls_reach_the_processor_and_dashboards_only() {
    let resource: MetricPipeline = serde_json::from_value(json!({
        "apiVersion": "pulse.dev/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": "checkout", "namespace": "shop", "uid": "6f1c2d3e-0000-4000-8000-000000000001"},
        "spec": {
            "kafka": {"brokers": "kafka:9092"},
            "database": {
                "urlSecretRef": {"name": "db", "key": "url"},
                "caSecretRef": {"name": "db-ca", "key": "ca.crt"},
                "readUrlSecretRef": {"name": "db", "key": "replica-url"}
            },
            "redis": {
                "urlSecretRef": {"name": "cache", "key": "url"},
                "caSecretRef": {"name": "cache-ca", "key": "ca.pem"},
                "clientCertificateSecret": "checkout-redis-client"
            }
        }
    }))
    .unwrap();
    let pipeline = validate_pipeline(&resource).unwrap();
    let cache = &pipeline.config.cache;
    assert_eq!(
        cache.tls_ca_file.as_deref(),
        Some("/etc/pulse/redis-ca/ca.crt".as_ref())
    );
    assert_eq!(
        cache.tls_cert_file.as_deref(),
        Some("/etc/pulse/redis-client/tls.crt".as_ref())
    );
    assert_eq!(
        cache.tls_key_file.as_deref(),
        Some("/etc/pulse/redis-client/tls.key".as_ref())
    );
    // The gateway uses neither, and still reads the shared file: the TLS
    // keys only count where a Redis URL is given.
    pulse_core::config::Config::from_toml(&pipeline.config_toml).unwrap();

    let objects = pipeline_objects(&pipeline, IMAGE, &Default::default(), Default::default());
    let processor = &objects.processor;
    assert_eq!(
        env(processor, "PGSSLROOTCERT").and_then(|e| e.value.as_deref()),
        Some("/etc/pulse/db-ca/ca.crt")
    );
    assert_eq!(
        env(processor, "PGSSLMODE").and_then(|e| e.value.as_deref()),
        Some("verify-full")
    );
    assert_eq!(volume_secret(processor, "db-ca").as_deref(), Some("db-ca"));
    assert_eq!(
        volume_secret(processor, "redis-ca").as_deref(),
        Some("cache-ca")
    );
    assert_eq!(
        volume_secret(processor, "redis-client").as_deref(),
        Some("checkout-redis-client")
    );
    // The processor writes: never the replica.
    assert!(env(processor, "PULSE_DASHBOARD__DATABASE_URL").is_none());
    let gateway = &objects.gateway;
    assert!(env(gateway, "PGSSLROOTCERT").is_none());
    assert_eq!(volume_secret(gateway, "db-ca"), None);
    assert_eq!(volume_secret(gateway, "redis-ca"), None);

    // The dashboard server reads the replica, with the same CAs.
    let deployment = &objects.dashboard;
    let read = env(deployment, "PULSE_DASHBOARD__DATABASE_URL")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .unwrap();
    assert_eq!(
        (read.name.as_str(), read.key.as_str()),
        ("db", "replica-url")
    );
    assert_eq!(volume_secret(deployment, "db-ca").as_deref(), Some("db-ca"));
    assert_eq!(
        volume_secret(deployment, "redis-ca").as_deref(),
        Some("cache-ca")
    );
}
