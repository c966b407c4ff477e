//! How Pulse authenticates to Kafka and encrypts the connection: the `bus.tls*`
//! and `bus.sasl_*` keys, their rules, and the librdkafka properties they
//! become. Pure: the same properties serve the gateway's producer, the
//! processor's consumer and the operator's admin client, so all three connect
//! alike.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{BusConfig, ConfigError};

/// The SASL mechanisms Pulse speaks to Kafka. GSSAPI (Kerberos) and OAUTHBEARER
/// are left out: they need libraries or token endpoints managed Kafka services
/// rarely ask for, and each would add a system dependency to the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// User and password sent as they are: only ever inside TLS.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response (RFC 5802/7677): the password never crosses the wire.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka (and the brokers) use.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Checks the security keys of `bus` together: every rule about them lives here.
pub fn validate(bus: &BusConfig) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: &str| {
        Err(ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        })
    };
    let tls_files = [
        ("bus.tls_ca_file", &bus.tls_ca_file),
        ("bus.tls_cert_file", &bus.tls_cert_file),
        ("bus.tls_key_file", &bus.tls_key_file),
    ];
    if !bus.tls
        && let Some((key, _)) = tls_files.iter().find(|(_, file)| file.is_some())
    {
        return invalid(
            key,
            "is only used with bus.tls = true (TLS to the brokers); set it, or remove this key",
        );
    }
    if bus.tls_cert_file.is_some() != bus.tls_key_file.is_some() {
        return invalid(
            "bus.tls_cert_file",
            "bus.tls_cert_file and bus.tls_key_file go together: set both for a client \
             certificate (mTLS), or neither",
        );
    }
    match bus.sasl_mechanism {
        None => {
            for (key, value) in [
                ("bus.sasl_username", &bus.sasl_username),
                ("bus.sasl_password", &bus.sasl_password),
            ] {
                if value.is_some() {
                    return invalid(
                        key,
                        "is only used with bus.sasl_mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                    );
                }
            }
        }
        Some(mechanism) => {
            if bus.sasl_username.is_none() {
                return invalid(
                    "bus.sasl_username",
                    "bus.sasl_mechanism is set, so the brokers need a user name",
                );
            }
            // The password is not required here: the operator renders the
            // file without it (it arrives as PULSE_BUS__SASL_PASSWORD), and
            // librdkafka refuses a SASL client without one, naming it.
            if mechanism == SaslMechanism::Plain && !bus.tls {
                return invalid(
                    "bus.sasl_mechanism",
                    "PLAIN sends the password as it is, so it is refused without TLS: set \
                     bus.tls = true (or use SCRAM-SHA-512)",
                );
            }
        }
    }
    Ok(())
}

/// The librdkafka properties for `bus`'s security keys, to be set on every
/// client (producer, consumer, admin). Empty for a plain-text cluster.
/// Holds the SASL password: never log the result.
pub fn client_properties(bus: &BusConfig) -> Vec<(&'static str, String)> {
    let protocol = match (bus.tls, bus.sasl_mechanism.is_some()) {
        (false, false) => return Vec::new(),
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    let mut properties = vec![("security.protocol", protocol.to_string())];
    if bus.tls {
        // The broker's certificate must name the host the client connects
        // to (librdkafka's default since 2.0, stated so it never regresses).
        properties.push(("ssl.endpoint.identification.algorithm", "https".into()));
        // Without a CA file the system's roots: with OpenSSL built into the
        // binary, librdkafka must be told to look for them in the usual places.
        let ca = bus
            .tls_ca_file
            .as_deref()
            .map_or_else(|| "probe".to_string(), path_text);
        properties.push(("ssl.ca.location", ca));
        if let (Some(cert), Some(key)) = (&bus.tls_cert_file, &bus.tls_key_file) {
            properties.push(("ssl.certificate.location", path_text(cert)));
            properties.push(("ssl.key.location", path_text(key)));
        }
    }
    if let Some(mechanism) = bus.sasl_mechanism {
        properties.push(("sasl.mechanisms", mechanism.as_str().into()));
    }
    if let Some(user) = &bus.sasl_username {
        properties.push(("sasl.username", user.clone()));
    }
    if let Some(password) = &bus.sasl_password {
        properties.push(("sasl.password", password.clone()));
    }
    properties
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn bus(toml: &str) -> Result<BusConfig, ConfigError> {
        Config::from_toml(&format!("[bus]\nkafka_brokers = \"k:9093\"\n{toml}")).map(|c| c.bus)
    }

    fn refused_key(toml: &str) -> String {
        match bus(toml) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected a refusal of {toml:?}, got {other:?}"),
        }
    }

    #[test]
    fn plain_text_cluster_sets_nothing() {
        assert!(client_properties(&bus("").unwrap()).is_empty());
    }

    #[test]
    fn tls_with_ca_client_certificate_and_scram() {
        let bus = bus(
            "tls = true\ntls_ca_file = \"/ca.crt\"\ntls_cert_file = \"/c.crt\"\n\
             tls_key_file = \"/c.key\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
             sasl_username = \"pulse\"\nsasl_password = \"s3cret\"",
        )
        .unwrap();
        let properties = client_properties(&bus);
        let get = |key: &str| {
            properties
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("ssl.endpoint.identification.algorithm"), Some("https"));
        assert_eq!(get("ssl.ca.location"), Some("/ca.crt"));
        assert_eq!(get("ssl.certificate.location"), Some("/c.crt"));
        assert_eq!(get("ssl.key.location"), Some("/c.key"));
        assert_eq!(get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.username"), Some("pulse"));
        assert_eq!(get("sasl.password"), Some("s3cret"));
    }

    #[test]
    fn tls_without_a_ca_file_probes_the_system_roots() {
        let properties = client_properties(&bus("tls = true").unwrap());
        assert!(properties.contains(&("security.protocol", "ssl".into())));
        assert!(properties.contains(&("ssl.ca.location", "probe".into())));
    }

    #[test]
    fn scram_without_tls_is_sasl_plaintext() {
        let properties = client_properties(
            &bus(
                "sasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"u\"\nsasl_password = \"p\"",
            )
            .unwrap(),
        );
        assert_eq!(
            properties[0],
            ("security.protocol", "sasl_plaintext".into())
        );
    }

    #[test]
    fn inconsistent_keys_are_refused_by_name() {
        assert_eq!(refused_key("tls_ca_file = \"/ca.crt\""), "bus.tls_ca_file");
        assert_eq!(
            refused_key("tls = true\ntls_cert_file = \"/c.crt\""),
            "bus.tls_cert_file"
        );
        assert_eq!(refused_key("sasl_username = \"u\""), "bus.sasl_username");
        // PLAIN would send the password in clear.
        assert_eq!(
            refused_key("sasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password = \"p\""),
            "bus.sasl_mechanism"
        );
        assert!(bus("sasl_mechanism = \"GSSAPI\"").is_err());
    }
}
