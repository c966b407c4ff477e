//! The webhook follows a renewal of its certificate files (cert-manager
//! rewriting the mounted Secret) without a restart, as the gateway and the
//! dashboard do: new handshakes get the new certificate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_operator::webhook::{SidecarSettings, Webhook, WebhookConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_util::sync::CancellationToken;

const HOST: &str = "pulse-webhook.pulse.svc";

/// Writes a fresh CA's certificate for `HOST` into `dir`; returns the leaf.
fn issue(dir: &std::path::Path) -> CertificateDer<'static> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec![HOST.to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    std::fs::write(dir.join("tls.crt"), leaf.pem()).expect("write cert");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write key");
    leaf.der().clone()
}

/// The leaf certificate a fresh handshake with `addr` is shown. The test
/// looks at what is served, so it accepts any certificate.
async fn served(addr: std::net::SocketAddr) -> CertificateDer<'static> {
    #[derive(Debug)]
    struct ShowAnything(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for ShowAnything {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ShowAnything(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the webhook listens");
    let name = ServerName::try_from(HOST).expect("a DNS name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("a handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .clone()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = issue(dir.path());
    let (service, _api) = tower_test::mock::pair::<
        axum::http::Request<kube::client::Body>,
        axum::http::Response<kube::client::Body>,
    >();
    let config = WebhookConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        tls_dir: dir.path().to_path_buf(),
        native_sidecars: true,
        sidecar: SidecarSettings::new(
            "ghcr.io/example/pulse-sidecar:0.1.0",
            SidecarSettings::default_resources(),
            "256Mi",
        )
        .expect("valid settings"),
    };
    let webhook = Webhook::bind(config, kube::Client::new(service, "default")).expect("binds");
    let addr = webhook.local_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(webhook.run(shutdown.clone()));
    assert_eq!(served(addr).await, first);

    let second = issue(dir.path());
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(30);
    while served(addr).await != second {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served within 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    server.await.expect("joins").expect("stops cleanly");
}
