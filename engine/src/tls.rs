//! Why a TLS connection to PostgreSQL or Redis failed, in words an operator
//! can act on.
//!
//! The drivers report a refused handshake as an I/O error wrapping rustls's
//! error, whose own text (`invalid peer certificate: UnknownIssuer`) does not
//! say which setting to look at. [`explain`] finds the rustls error in the
//! error's source chain and names the cause. Nothing here sees a password:
//! only the error value is read.

use std::error::Error;
use std::sync::Arc;

use rustls::{AlertDescription, CertificateError};

/// What went wrong in a TLS handshake, if `error` (or one of its sources) is
/// a rustls error; `ca_setting` names the setting holding the trusted CAs
/// (`sslrootcert`, `cache.tls_ca_file`).
pub(crate) fn explain(error: &(dyn Error + 'static), ca_setting: &str) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        // The redis crate keeps its cause behind an `Arc`.
        let e: &(dyn Error + 'static) = match e.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
            Some(shared) => &**shared,
            None => e,
        };
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(tls, ca_setting));
        }
        // `io::Error::source` skips the error it wraps; look inside it too.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(describe(inner, ca_setting));
        }
        next = e.source();
    }
    None
}

fn describe(error: &rustls::Error, ca_setting: &str) -> String {
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "TLS: the server's certificate is not trusted: it is not signed by a CA in \
                 {ca_setting} (or, without it, the system's trusted roots); point {ca_setting} \
                 at the CA that issued the server's certificate"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "TLS: hostname mismatch: the server's certificate does not name the host in the \
                 URL; connect with a name the certificate lists (its subjectAltName)"
                    .into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: the server's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: the server's certificate is not valid yet (check the clocks)".into()
            }
            CertificateError::Revoked => "TLS: the server's certificate is revoked".into(),
            other => format!("TLS: the server's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied),
        ) => format!(
            "TLS: the server refused this client's certificate ({alert:?}); give a client \
             certificate and key its CA trusts"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_cause_inside_an_io_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = explain(&io, "sslrootcert").expect("a TLS error");
        assert!(text.contains("not trusted"), "{text}");
        assert!(text.contains("sslrootcert"), "{text}");
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        );
        let text = explain(&io, "sslrootcert").expect("a TLS error");
        assert!(text.contains("hostname mismatch"), "{text}");
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(explain(&plain, "sslrootcert"), None);
    }
}
