//! HTTPS for every role: rustls, with the certificate re-read when its files
//! change ([`crate::reload`]).
//!
//! cert-manager renews a certificate by rewriting the Secret and the kubelet
//! swaps the mounted files; the next handshakes get the new pair while open
//! connections keep theirs, so a renewal drops no client and needs no
//! restart. A pair that does not load (the certificate written and the key
//! not yet) leaves the previous pair in service.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::reload::{FileError, KeyedFile, Reloading};

/// The certificate files of one role.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The config section (`gateway`, `dashboard`): the keys named in errors
    /// are `<section>.tls_cert_file` and `<section>.tls_key_file`.
    pub section: &'static str,
}

/// What a role serves HTTPS with; cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    pair: Arc<Reloading<CertifiedKey>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("pair", &self.pair)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Resolver(Arc<Reloading<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

impl ServerTls {
    /// Loads the pair in `files`; an error names the key and the file.
    /// Call [`ServerTls::watch`] to follow renewals.
    pub fn load(files: CertFiles) -> Result<ServerTls, FileError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = KeyedFile::new(format!("{}.tls_cert_file", files.section), &files.cert_file);
        let key = KeyedFile::new(format!("{}.tls_key_file", files.section), &files.key_file);
        let parse = {
            let (cert, key, provider) = (cert.clone(), key.clone(), Arc::clone(&provider));
            move |bytes: &[Vec<u8>]| parse_pair(&cert, &bytes[0], &key, &bytes[1], &provider)
        };
        let pair = Reloading::load(
            format!("the {}'s TLS certificate", files.section),
            vec![cert.clone(), key],
            parse,
        )?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| cert.error(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(&pair))));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            pair,
        })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// The rustls configuration (its certificate follows the files), for a
    /// server that takes one: the operator's admission webhook.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(self.acceptor.config())
    }

    /// Re-reads the files now; `Ok(true)` when a new pair went into service.
    pub fn reload(&self) -> Result<bool, FileError> {
        self.pair.reload()
    }

    /// Follows the files until `shutdown` (see [`crate::reload`]).
    pub fn watch(&self, shutdown: CancellationToken) {
        self.pair.watch(shutdown);
    }
}

fn parse_pair(
    cert_file: &KeyedFile,
    cert: &[u8],
    key_file: &KeyedFile,
    key: &[u8],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, FileError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_file.error(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(cert_file.error("holds no PEM certificate"));
    }
    // The key's own bytes never reach a message.
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| key_file.error(format!("not a PEM private key ({e})")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        key_file.error(format!(
            "does not load or does not match the certificate: {e}"
        ))
    })
}
