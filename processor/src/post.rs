//! One JSON POST over HTTP/1.1 or HTTPS, for alert delivery: hyper on a
//! fresh connection per request (alerts are rare), rustls with ring and the
//! system's root certificates for `https://`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// Most of an answer's body read (for the error message).
const MAX_ANSWER: usize = 64 * 1024;

/// The TLS settings of every HTTPS receiver, made once: ring, and the
/// system's trusted roots (those that do not load are skipped).
fn tls() -> Result<Arc<ClientConfig>, String> {
    static TLS: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    TLS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            return Err(
                "no trusted root certificates found on this system (install ca-certificates)"
                    .into(),
            );
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    })
    .clone()
}

/// POSTs `body` as JSON to `url`; the status and (the start of) the answer.
pub async fn post_json(
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    tokio::time::timeout(timeout, post(url, body))
        .await
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
}

async fn post(url: &str, body: Vec<u8>) -> Result<(u16, String), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must start with http:// or https://".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or(host.clone());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = Request::post(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, "pulse-alerting")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    if https {
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| format!("bad TLS server name: {e}"))?;
        let tls = TlsConnector::from(tls()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        exchange(tls, request).await
    } else {
        exchange(tcp, request).await
    }
}

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<(u16, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let driver = tokio::spawn(connection);
    let outcome = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
    .await;
    driver.abort();
    outcome
}
