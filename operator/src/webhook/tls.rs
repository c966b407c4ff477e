//! The webhook's TLS identity: `tls.crt` and `tls.key` of a directory (a
//! mounted `kubernetes.io/tls` Secret, made by the chart or cert-manager).
//! The API server only calls webhooks over HTTPS, and checks the certificate
//! against the `caBundle` of the webhook configuration.
//!
//! The pair is served through `pulse_server::tls`, so it follows the files
//! as the gateway's and dashboard's certificates do: a cert-manager renewal
//! reaches the next handshakes within a second, without a restart, and a pair
//! half written stays out of service.

use std::path::Path;

use pulse_server::reload::FileError;
use pulse_server::tls::{CertFiles, ServerTls};

/// Certificate chain file in the TLS directory.
pub const CERT_FILE: &str = "tls.crt";
/// Private key file in the TLS directory.
pub const KEY_FILE: &str = "tls.key";

/// The TLS files cannot be used; says which file and what to check.
#[derive(Debug, thiserror::Error)]
#[error(
    "webhook TLS: {0}; mount the webhook TLS Secret (tls.crt and its PEM key tls.key) in \
     --webhook-tls-dir"
)]
pub struct TlsError(#[from] FileError);

/// Whether `dir` holds the webhook's certificate and key. The chart mounts the
/// TLS Secret as optional, so an empty directory means the webhook is off.
pub fn files_present(dir: &Path) -> bool {
    dir.join(CERT_FILE).is_file() && dir.join(KEY_FILE).is_file()
}

/// The webhook's certificate from `dir/tls.crt` (PEM chain, leaf first) and
/// `dir/tls.key`, with ring (the provider kube uses), so the process needs no
/// global crypto provider. [`ServerTls::watch`] makes it follow the files.
pub fn server_tls(dir: &Path) -> Result<ServerTls, TlsError> {
    Ok(ServerTls::load(CertFiles {
        cert_file: dir.join(CERT_FILE),
        key_file: dir.join(KEY_FILE),
        section: "webhook",
    })?)
}
