//! A PostgreSQL URL read as libpq (and so `psql`) reads it, TLS included.
//!
//! sqlx parses `sslmode`, `sslrootcert`, `sslcert` and `sslkey` itself; this
//! module closes the gaps between its reading and libpq's, so a URL that works
//! with `psql` means the same here:
//!
//! * `sslmode=require` with an `sslrootcert` verifies the server's
//!   certificate against it (libpq: "as verify-ca", for compatibility);
//! * `sslrootcert=system` trusts the system's roots and needs (or defaults
//!   to) `sslmode=verify-full`, as libpq 16 does;
//! * `sslmode=allow` tries TLS first where libpq tries plain text first; both
//!   accept either, and TLS is the safer of the two;
//! * a missing or unreadable certificate or key file, or `sslcert` without
//!   `sslkey`, is refused before connecting, naming the parameter and the file.
//!
//! Without `sslrootcert`, `verify-ca` and `verify-full` trust the system's
//! roots (libpq would read `~/.postgresql/root.crt`).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::store::StoreError;

/// The connection settings of `url` (`postgres://user:password@host:port/db?sslmode=…`).
/// Errors never repeat the URL, which may hold a password.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let invalid = |why: String| {
        StoreError::Other(format!(
            "invalid PostgreSQL url (expected postgres://user:password@host:port/database\
             [?sslmode=verify-full&sslrootcert=/path/ca.crt]): {why}"
        ))
    };
    let mut parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    let params: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mode = match param("sslmode") {
        Some(mode) => Some(PgSslMode::from_str(mode).map_err(|_| {
            invalid(format!(
                "sslmode `{mode}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ))
        })?),
        None => None,
    };
    let system_roots = param("sslrootcert") == Some("system");
    if system_roots && mode.is_some_and(|m| !matches!(m, PgSslMode::VerifyFull)) {
        return Err(invalid(
            "sslrootcert=system needs sslmode=verify-full (as with libpq): trusting every public \
             CA only protects a connection that also checks the host name"
                .into(),
        ));
    }
    let root_cert = param("sslrootcert").filter(|_| !system_roots);
    for (name, file) in [
        ("sslrootcert", root_cert),
        ("sslcert", param("sslcert")),
        ("sslkey", param("sslkey")),
    ] {
        if let Some(file) = file {
            std::fs::File::open(file).map_err(|e| {
                invalid(format!(
                    "{name} names {file}, which cannot be read ({e}); mount the file there or fix {name}"
                ))
            })?;
        }
    }
    if param("sslcert").is_some() != param("sslkey").is_some() {
        return Err(invalid(
            "sslcert and sslkey go together: give both files for a client certificate, or neither"
                .into(),
        ));
    }
    if system_roots {
        // sqlx would read `system` as a file; without sslrootcert it trusts
        // the system's roots, which is what `system` means.
        let kept: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "sslrootcert")
            .cloned()
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut options =
        PgConnectOptions::from_str(parsed.as_str()).map_err(|e| invalid(e.to_string()))?;
    let effective = match (mode, root_cert) {
        (None, _) if system_roots => Some(PgSslMode::VerifyFull),
        (Some(PgSslMode::Require), Some(_)) => Some(PgSslMode::VerifyCa),
        (Some(PgSslMode::Allow), _) => Some(PgSslMode::Prefer),
        _ => None,
    };
    if let Some(mode) = effective {
        options = options.ssl_mode(mode);
    }
    Ok(options)
}

/// The message of a failed connection: the TLS cause in words when the
/// handshake was refused, else the driver's own message.
pub(crate) fn connect_failure(e: &sqlx::Error) -> String {
    crate::tls::explain(e, "sslrootcert").unwrap_or_else(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> PgSslMode {
        connect_options(url).unwrap().get_ssl_mode()
    }

    #[test]
    fn modes_are_read_as_libpq_reads_them() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca = ca.path().display();
        let base = "postgres://pulse:secret@db:5432/metrics";
        assert!(matches!(
            mode(&format!("{base}?sslmode=disable")),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode(&format!("{base}?sslmode=require")),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode(&format!("{base}?sslmode=require&sslrootcert={ca}")),
            PgSslMode::VerifyCa
        ));
        assert!(matches!(
            mode(&format!("{base}?sslmode=verify-full&sslrootcert={ca}")),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(
            mode(&format!("{base}?sslrootcert=system")),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(
            mode(&format!("{base}?sslmode=allow")),
            PgSslMode::Prefer
        ));
    }

    #[test]
    fn bad_tls_settings_are_refused_naming_the_setting_not_the_password() {
        let base = "postgres://pulse:secret@db:5432/metrics";
        for (query, expected) in [
            ("sslmode=strict", "sslmode `strict`"),
            (
                "sslmode=require&sslrootcert=/nonexistent/ca.crt",
                "sslrootcert names /nonexistent/ca.crt",
            ),
            (
                "sslmode=require&sslrootcert=system",
                "needs sslmode=verify-full",
            ),
            ("sslmode=verify-full&sslkey=/etc/hostname", "go together"),
        ] {
            let err = connect_options(&format!("{base}?{query}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{query}: {err}");
            assert!(!err.contains("secret"), "{query}: {err}");
        }
    }
}
