//! Why a Kafka client could not get through the brokers' TLS or SASL, in
//! words an operator can act on.
//!
//! librdkafka reports a refused handshake through the client's error
//! callback (`SSL handshake failed: error:0A000086:SSL routines::certificate
//! verify failed ...`), while the call that was waiting only sees a timeout
//! ("Local: Broker transport failure"). [`BrokerFailure`] keeps the last such
//! report, explained by [`explain`], so the error a caller gets (and `/readyz`
//! shows) names the cause. librdkafka never puts a password or key in these
//! texts, and nothing here adds one.

use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::error::RDKafkaErrorCode;

/// The last TLS or SASL failure a client's brokers reported, explained.
#[derive(Clone, Default)]
pub(crate) struct BrokerFailure(Arc<Mutex<Option<String>>>);

impl BrokerFailure {
    /// Keeps `reason` if it is a TLS or SASL failure.
    pub(crate) fn record(&self, code: Option<RDKafkaErrorCode>, reason: &str) {
        if let Some(explained) = explain(code, reason) {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(explained);
        }
    }

    /// `message` with the last TLS or SASL failure appended, if there was one.
    pub(crate) fn annotate(&self, message: String) -> String {
        match &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(cause) => format!("{message}; the brokers refused the connection: {cause}"),
            None => message,
        }
    }
}

/// What a librdkafka connection failure means, if it is one of TLS or SASL.
pub(crate) fn explain(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<String> {
    let text = reason.to_ascii_lowercase();
    let has = |needle: &str| text.contains(needle);
    if has("hostname mismatch") || has("ip address mismatch") {
        return Some(
            "TLS: hostname mismatch: the broker's certificate does not name the host this client \
             connected to; list the brokers in bus.kafka_brokers by a name their certificate \
             lists (its subjectAltName)"
                .into(),
        );
    }
    // OpenSSL 3 reports an unknown issuer and a name mismatch alike
    // ("certificate verify failed"), so both causes are named.
    if has("certificate verify failed")
        || has("failed to verify broker certificate")
        || has("broker certificate could not be verified")
    {
        return Some(
            "TLS: the broker's certificate is not trusted or does not name the host: it must be \
             signed by the CA in bus.tls_ca_file (or, without it, the system's trusted roots) \
             and list the host this client connected to (hostname mismatch otherwise); check \
             bus.tls_ca_file and that bus.kafka_brokers uses a name in the certificate's \
             subjectAltName"
                .into(),
        );
    }
    if has("client ssl authentication might be required")
        || has("certificate required")
        || has("alert bad certificate")
        || has("alert unknown ca")
    {
        return Some(
            "TLS: the broker refused this client's certificate, or wants one: set \
             bus.tls_cert_file and bus.tls_key_file to a certificate signed by a CA the \
             brokers trust"
                .into(),
        );
    }
    if has("connecting to a plaintext broker listener") || has("wrong version number") {
        return Some(
            "TLS: the broker did not answer in TLS; is bus.kafka_brokers a plain-text listener? \
             (then bus.tls = false, or use the brokers' TLS port)"
                .into(),
        );
    }
    if has("mechanism handshake failed") {
        // The text lists the mechanisms the brokers offer; no secret in it.
        return Some(format!(
            "SASL: the brokers do not offer bus.sasl_mechanism: {reason}"
        ));
    }
    if code == Some(RDKafkaErrorCode::Authentication)
        || has("sasl authentication error")
        || has("sasl scram authentication failed")
        || has("authentication failed")
    {
        return Some(
            "SASL refused: the brokers did not accept bus.sasl_username with bus.sasl_password \
             for bus.sasl_mechanism; check the user, its password (not shown) and that the \
             brokers know the user for that mechanism"
                .into(),
        );
    }
    if code == Some(RDKafkaErrorCode::SSL) {
        return Some(format!("TLS handshake failed: {reason}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_cause_of_librdkafkas_texts() {
        let untrusted = "ssl://localhost:9093/bootstrap: SSL handshake failed: \
            error:0A000086:SSL routines::certificate verify failed: broker certificate could \
            not be verified, verify that ssl.ca.location is correctly configured or root CA \
            certificates are installed (install ca-certificates package)";
        let text = explain(Some(RDKafkaErrorCode::SSL), untrusted).unwrap();
        assert!(
            text.contains("not trusted") && text.contains("bus.tls_ca_file"),
            "{text}"
        );
        assert!(text.contains("hostname mismatch"), "{text}");
        let text = explain(
            None,
            "Failed to verify broker certificate: hostname mismatch",
        )
        .unwrap();
        assert!(text.contains("hostname mismatch"), "{text}");
        let text = explain(
            Some(RDKafkaErrorCode::Authentication),
            "sasl_ssl://localhost:9093/1: SASL authentication error: Authentication failed \
             (after 12ms in state AUTH_REQ)",
        )
        .unwrap();
        assert!(text.starts_with("SASL refused"), "{text}");
        assert_eq!(explain(None, "Connection refused"), None);
    }

    #[test]
    fn a_failure_is_appended_to_later_errors() {
        let failure = BrokerFailure::default();
        assert_eq!(failure.annotate("timed out".into()), "timed out");
        failure.record(
            None,
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        );
        assert_eq!(failure.annotate("timed out".into()), "timed out");
        failure.record(
            Some(RDKafkaErrorCode::Authentication),
            "SASL authentication error",
        );
        assert!(
            failure
                .annotate("timed out".into())
                .contains("SASL refused")
        );
    }
}
