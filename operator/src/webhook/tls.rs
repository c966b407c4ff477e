//! The webhook's TLS identity: `tls.crt` and `tls.key` of a directory (a
//! mounted `kubernetes.io/tls` Secret, made by the chart or cert-manager).
//! The API server only calls webhooks over HTTPS, and checks the certificate
//! against the `caBundle` of the webhook configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Certificate chain file in the TLS directory.
pub const CERT_FILE: &str = "tls.crt";
/// Private key file in the TLS directory.
pub const KEY_FILE: &str = "tls.key";

/// The TLS files cannot be used; says which file and what to check.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "webhook certificate {path}: {message}; mount the webhook TLS Secret there (--webhook-tls-dir)"
    )]
    Certificate { path: PathBuf, message: String },
    #[error("webhook private key {path}: {message}; it must be the PEM key of {CERT_FILE}")]
    Key { path: PathBuf, message: String },
    #[error("webhook TLS: the key in {dir} does not fit the certificate: {message}")]
    Mismatch { dir: PathBuf, message: String },
}

/// Whether `dir` holds the webhook's certificate and key. The chart mounts the
/// TLS Secret as optional, so an empty directory means the webhook is off.
pub fn files_present(dir: &Path) -> bool {
    dir.join(CERT_FILE).is_file() && dir.join(KEY_FILE).is_file()
}

/// A rustls server configuration from `dir/tls.crt` (PEM chain, leaf first)
/// and `dir/tls.key` (PEM key), with ring (the provider kube uses), so the
/// process needs no global crypto provider.
pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let certificate = |message: String| TlsError::Certificate {
        path: cert_path.clone(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| certificate(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(certificate("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        message: e.to_string(),
    })?;
    let mismatch = |message: String| TlsError::Mismatch {
        dir: dir.to_path_buf(),
        message,
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| mismatch(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| mismatch(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
