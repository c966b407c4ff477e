//! The Kafka bus over TLS and SASL: librdkafka (built with OpenSSL, as
//! shipped) against the mock cluster behind [`crate::kafka_front`], which does
//! the brokers' side of the TLS handshake with a certificate made here and
//! checks SASL credentials. The client settings come from the `bus.*` keys
//! through [`pulse_core::kafka_security::client_properties`], as in a
//! deployment.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_core::config::BusConfig;
use pulse_core::kafka_security::{SaslMechanism, client_properties};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::bus::kafka::{KafkaConsumer, KafkaProducer};
use crate::bus::{BusError, BusProducer, OutgoingRecord};
use crate::kafka_front::{KafkaFront, SaslUser};
use crate::tls_peers::TestPki;

const TOPIC: &str = "pulse.test.tls.points";
const PASSWORD: &str = "kafka-test-secret";

/// The mock cluster (one broker, as the front stands for one) with the topic.
fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    cluster
}

/// The brokers' TLS side: the test CA's `localhost` certificate, and a
/// client certificate from the test CA required if `mtls`.
fn server_tls(pki: &TestPki, mtls: bool) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mtls {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

/// The `bus.*` keys of a client trusting `ca`, with the test's client
/// certificate if `mtls`, and SASL as `sasl` (mechanism, password).
fn bus(pki: &TestPki, ca: PathBuf, mtls: bool, sasl: Option<(SaslMechanism, &str)>) -> BusConfig {
    BusConfig {
        tls: true,
        tls_ca_file: Some(ca),
        tls_cert_file: mtls.then(|| pki.client_cert.clone()),
        tls_key_file: mtls.then(|| pki.client_key.clone()),
        sasl_mechanism: sasl.map(|(m, _)| m),
        sasl_username: sasl.map(|_| "pulse".to_string()),
        sasl_password: sasl.map(|(_, p)| p.to_string()),
        ..BusConfig::default()
    }
}

fn sasl_user(mechanism: SaslMechanism) -> SaslUser {
    SaslUser {
        mechanism: mechanism.as_str(),
        user: "pulse".into(),
        password: PASSWORD.into(),
    }
}

/// The client properties of `bus`, plus IPv4 only (`localhost` is the
/// front's name, and it listens on 127.0.0.1).
fn properties(
    bus: &BusConfig,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, String)> {
    let mut properties = client_properties(bus);
    properties.push(("broker.address.family", "v4".into()));
    properties.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    properties
}

fn refs<'a>(properties: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    properties.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn producer(brokers: &str, properties: &[(&'static str, String)]) -> KafkaProducer {
    KafkaProducer::with_overrides(brokers, TOPIC, &refs(properties))
        .await
        .unwrap()
}

/// The error `ready` reports once the brokers' refusal reached the client.
async fn refusal(brokers: &str, properties: &[(&'static str, String)]) -> String {
    let producer = producer(brokers, properties).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match producer.ready().await {
            Ok(()) => panic!("the brokers at {brokers} were expected to refuse this client"),
            Err(BusError::Unavailable(text)) if text.contains("refused the connection") => {
                return text;
            }
            Err(other) => {
                assert!(
                    Instant::now() < deadline,
                    "no refusal named within 30s: {other}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// TLS with the brokers' certificate checked against the CA and the host
/// name, a client certificate (mTLS) and SCRAM-SHA-512: the whole bus suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bus_conforms_over_mtls_and_scram() {
    let pki = TestPki::new("pulse");
    let cluster = cluster();
    let front = KafkaFront::start(
        &cluster.bootstrap_servers(),
        Some(server_tls(&pki, true)),
        Some(sasl_user(SaslMechanism::ScramSha512)),
    )
    .await;
    let brokers = format!("localhost:{}", front.port);
    let bus = bus(
        &pki,
        pki.ca.clone(),
        true,
        Some((SaslMechanism::ScramSha512, PASSWORD)),
    );
    let properties = properties(
        &bus,
        &[
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ],
    );
    let producer = producer(&brokers, &properties).await;
    producer.ready().await.unwrap();
    assert_eq!(producer.partition_count().await.unwrap(), 4);
    crate::conformance::bus_suite(
        &producer,
        || KafkaConsumer::with_overrides(&brokers, TOPIC, "pulse-tls", &refs(&properties)).unwrap(),
        4,
    )
    .await;
}

/// PLAIN and SCRAM-SHA-256 over TLS without a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_plain_and_scram_sha_256_over_tls() {
    let pki = TestPki::new("pulse");
    let cluster = cluster();
    for mechanism in [SaslMechanism::Plain, SaslMechanism::ScramSha256] {
        let front = KafkaFront::start(
            &cluster.bootstrap_servers(),
            Some(server_tls(&pki, false)),
            Some(sasl_user(mechanism)),
        )
        .await;
        let brokers = format!("localhost:{}", front.port);
        let bus = bus(&pki, pki.ca.clone(), false, Some((mechanism, PASSWORD)));
        let producer = producer(&brokers, &properties(&bus, &[])).await;
        producer.ready().await.unwrap();
        let record = OutgoingRecord {
            key: 7,
            value: b"over sasl".to_vec(),
        };
        producer.send(vec![record]).await.unwrap();
    }
}

/// Each refusal is named: an untrusted certificate, a host the certificate
/// does not name, a missing client certificate, a wrong password (which no
/// error shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_refusals_name_what_failed() {
    let pki = TestPki::new("pulse");
    let cluster = cluster();
    let tls_only = KafkaFront::start(
        &cluster.bootstrap_servers(),
        Some(server_tls(&pki, false)),
        None,
    )
    .await;
    let at = |host: &str| format!("{host}:{}", tls_only.port);

    let text = refusal(
        &at("localhost"),
        &properties(&bus(&pki, pki.other_ca.clone(), false, None), &[]),
    )
    .await;
    assert!(
        text.contains("not trusted") && text.contains("bus.tls_ca_file"),
        "{text}"
    );

    // The right CA, but a host the certificate does not list: OpenSSL reports
    // it as it reports an unknown CA, so the message names both causes.
    let text = refusal(
        &at("127.0.0.1"),
        &properties(&bus(&pki, pki.ca.clone(), false, None), &[]),
    )
    .await;
    assert!(
        text.contains("hostname mismatch") && text.contains("subjectAltName"),
        "{text}"
    );
    // And with the right host the same CA is accepted: the refusal above is the name.
    producer(
        &at("localhost"),
        &properties(&bus(&pki, pki.ca.clone(), false, None), &[]),
    )
    .await
    .ready()
    .await
    .unwrap();

    let mtls = KafkaFront::start(
        &cluster.bootstrap_servers(),
        Some(server_tls(&pki, true)),
        None,
    )
    .await;
    let brokers = format!("localhost:{}", mtls.port);
    let text = refusal(
        &brokers,
        &properties(&bus(&pki, pki.ca.clone(), false, None), &[]),
    )
    .await;
    assert!(text.contains("client's certificate"), "{text}");

    let scram = KafkaFront::start(
        &cluster.bootstrap_servers(),
        Some(server_tls(&pki, false)),
        Some(sasl_user(SaslMechanism::ScramSha256)),
    )
    .await;
    let brokers = format!("localhost:{}", scram.port);
    let wrong = "not-the-password";
    let text = refusal(
        &brokers,
        &properties(
            &bus(
                &pki,
                pki.ca.clone(),
                false,
                Some((SaslMechanism::ScramSha256, wrong)),
            ),
            &[],
        ),
    )
    .await;
    assert!(text.contains("SASL refused"), "{text}");
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
}
