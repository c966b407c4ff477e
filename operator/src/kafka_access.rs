//! How a pipeline reaches its Kafka: `spec.kafka.tls` and `spec.kafka.sasl`
//! turned into the `bus.*` keys of the pods' `pulse.toml`, the Secret volumes
//! and environment those keys point at, and the librdkafka properties of the
//! operator's own admin client. One module, so the paths the config names and
//! the paths the volumes are mounted at cannot drift apart.

use k8s_openapi::api::core::v1::{EnvVar, Volume, VolumeMount};
use pulse_core::config::BusConfig;
use pulse_core::kafka_security::SaslMechanism;

use crate::build::deployment::secret_env;
use crate::connections::{one_key, tls_pair};
use crate::crd::{KafkaSaslMechanism, KafkaSpec, SecretKeyRef};
use crate::names;

/// Where the brokers' CA is mounted, and the file in it.
const CA_DIR: &str = "/etc/pulse/kafka-ca";
const CA_FILE: &str = "ca.crt";
/// Where the client certificate Secret (`tls.crt`, `tls.key`) is mounted.
const CLIENT_DIR: &str = "/etc/pulse/kafka-client";

fn mechanism(m: KafkaSaslMechanism) -> SaslMechanism {
    match m {
        KafkaSaslMechanism::Plain => SaslMechanism::Plain,
        KafkaSaslMechanism::ScramSha256 => SaslMechanism::ScramSha256,
        KafkaSaslMechanism::ScramSha512 => SaslMechanism::ScramSha512,
    }
}

/// Sets the `bus.tls*` and `bus.sasl_*` keys (all but the password) for `kafka`.
pub fn render(kafka: &KafkaSpec, bus: &mut BusConfig) {
    if let Some(tls) = &kafka.tls {
        bus.tls = true;
        bus.tls_ca_file = tls
            .ca_secret_ref
            .as_ref()
            .map(|_| format!("{CA_DIR}/{CA_FILE}").into());
        if tls.client_certificate_secret.is_some() {
            bus.tls_cert_file = Some(format!("{CLIENT_DIR}/tls.crt").into());
            bus.tls_key_file = Some(format!("{CLIENT_DIR}/tls.key").into());
        }
    }
    if let Some(sasl) = &kafka.sasl {
        bus.sasl_mechanism = Some(mechanism(sasl.mechanism));
        bus.sasl_username = Some(sasl.username.clone());
    }
}

/// Clears what [`render`] set: for the dashboard, which never opens Kafka and
/// so gets none of its credentials.
pub fn forget(bus: &mut BusConfig) {
    bus.tls = false;
    bus.tls_ca_file = None;
    bus.tls_cert_file = None;
    bus.tls_key_file = None;
    bus.sasl_mechanism = None;
    bus.sasl_username = None;
}

/// PLAIN sends the password as it is: refused without TLS, as in `pulse.toml`.
pub fn check(kafka: &KafkaSpec) -> Result<(), String> {
    match &kafka.sasl {
        Some(sasl) if sasl.mechanism == KafkaSaslMechanism::Plain && kafka.tls.is_none() => Err(
            "kafka.sasl.mechanism PLAIN sends the password as it is, so it needs kafka.tls \
             (or use SCRAM-SHA-512)"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// The password variable of the pods that talk to Kafka.
pub fn env(kafka: &KafkaSpec) -> Vec<EnvVar> {
    secret_env([(
        names::ENV_SASL_PASSWORD,
        kafka.sasl.as_ref().map(|s| &s.password_secret_ref),
    )])
}

/// The Secret volumes (and their read-only mounts) the `bus.tls_*` files live in.
pub fn volumes(kafka: &KafkaSpec) -> Vec<(Volume, VolumeMount)> {
    let Some(tls) = &kafka.tls else {
        return Vec::new();
    };
    let mut volumes = Vec::new();
    if let Some(ca) = &tls.ca_secret_ref {
        volumes.push(one_key("kafka-ca", ca, CA_FILE, CA_DIR));
    }
    if let Some(secret) = &tls.client_certificate_secret {
        volumes.push(tls_pair("kafka-client", secret, CLIENT_DIR));
    }
    volumes
}

/// The Secret keys the operator's admin client needs, read through the API
/// before each reconcile's topic work (so a rotated Secret is followed).
pub fn admin_secrets(kafka: &KafkaSpec) -> Vec<SecretKeyRef> {
    let mut refs = Vec::new();
    if let Some(tls) = &kafka.tls {
        refs.extend(tls.ca_secret_ref.clone());
        if let Some(secret) = &tls.client_certificate_secret {
            for key in ["tls.crt", "tls.key"] {
                refs.push(SecretKeyRef {
                    name: secret.clone(),
                    key: key.into(),
                });
            }
        }
    }
    if let Some(sasl) = &kafka.sasl {
        refs.push(sasl.password_secret_ref.clone());
    }
    refs
}

/// The admin client's librdkafka properties: the pods' `bus.*` keys, with the
/// PEM texts in the properties (`ssl.*.pem`) instead of files, as the
/// operator reads them from the Secrets. `secret` gives the value of each of
/// [`admin_secrets`]. Holds secrets: never log the result.
pub fn admin_properties(
    kafka: &KafkaSpec,
    secret: impl Fn(&SecretKeyRef) -> String,
) -> Vec<(String, String)> {
    let mut bus = BusConfig::default();
    render(kafka, &mut bus);
    bus.sasl_password = kafka.sasl.as_ref().map(|s| secret(&s.password_secret_ref));
    // The files are the pods'; the operator has the PEM texts instead.
    let (ca, cert_key) = (bus.tls_ca_file.take(), bus.tls_cert_file.take());
    bus.tls_key_file = None;
    let mut properties: Vec<(String, String)> = pulse_core::kafka_security::client_properties(&bus)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if let (Some(_), Some(tls)) = (ca, &kafka.tls)
        && let Some(ca) = &tls.ca_secret_ref
    {
        properties.retain(|(k, _)| k != "ssl.ca.location");
        properties.push(("ssl.ca.pem".into(), secret(ca)));
    }
    if let (Some(_), Some(name)) = (
        cert_key,
        kafka
            .tls
            .as_ref()
            .and_then(|t| t.client_certificate_secret.as_ref()),
    ) {
        for (property, key) in [
            ("ssl.certificate.pem", "tls.crt"),
            ("ssl.key.pem", "tls.key"),
        ] {
            let value = secret(&SecretKeyRef {
                name: name.clone(),
                key: key.into(),
            });
            properties.push((property.into(), value));
        }
    }
    properties
}
