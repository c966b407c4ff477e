//! What rotates under a running role without a restart: the served TLS
//! certificate (a cert-manager renewal) and the bearer tokens (a Secret
//! mounted as a file). In both, a client that keeps sending through the
//! rotation has no request refused.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use pulse_core::edge::HttpLimits;
use pulse_server::auth::{Tokens, require_bearer};
use pulse_server::{CancellationToken, CertFiles, ServerTls, serve};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::ServiceExt;

/// A status code and the certificate the server presented with it.
type Answer = (u16, Vec<u8>);

/// How long a rotation may take to be seen (the files are polled every second).
const ROTATION_DEADLINE: Duration = Duration::from_secs(20);

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA"))
    }

    /// A certificate for `localhost` and its key, PEM.
    fn leaf(&self) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&key, &self.0)
            .expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.0.pem().as_bytes()).expect("CA PEM"))
            .expect("CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // A resumed session presents no certificate; every handshake here
        // is a full one, so it shows the certificate in service.
        let mut config = config;
        config.resumption = rustls::client::Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }
}

/// Replaces `path`'s content at once (a rename), as the kubelet does.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// The longest one step of a client (connect, handshake, one request) may
/// take before the test fails naming it, instead of hanging.
const STEP: Duration = Duration::from_secs(15);

/// `step` within [`STEP`], or a failure that names `what`.
async fn within<T>(what: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, step)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP:?}"))
}

async fn connect(connector: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    within("the TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake")
}

/// One `GET /ping` on `stream` (kept alive); the status code. The answer is
/// read by its head and content-length, so any answer (not only "pong")
/// ends the read and is reported.
async fn ping(stream: &mut TlsStream<TcpStream>) -> u16 {
    within("a GET /ping", async {
        stream
            .write_all(b"GET /ping HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some((status, body)) = parse_answer(&answer) {
                assert!(status != 200 || body == b"pong", "200 without pong");
                return status;
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the server closed the connection");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
}

/// The status and body of one whole HTTP/1.1 answer in `bytes`, or `None`
/// while part of it is still to come.
fn parse_answer(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..end]).expect("an ASCII head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().expect("a content-length"))
        })
        .expect("a content-length");
    bytes.get(end..end + length).map(|body| (status, body))
}

/// The certificate the server presented on `stream`.
fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swapped_while_a_client_keeps_sending_refuses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = Ca::new();
    let (first_cert, first_key) = ca.leaf();
    std::fs::write(&cert_file, &first_cert).unwrap();
    std::fs::write(&key_file, &first_key).unwrap();
    let tls = ServerTls::load(CertFiles {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        section: "gateway",
    })
    .unwrap();
    let shutdown = CancellationToken::new();
    tls.watch(shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/ping", get(|| async { "pong" }));
    let server = tokio::spawn(serve(
        listener,
        router,
        shutdown.clone(),
        HttpLimits::default(),
        Some(tls.clone()),
    ));
    let connector = ca.connector();

    // A client that opens a new connection (a new handshake) per request,
    // and one kept-alive connection opened before the renewal.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let sender = tokio::spawn({
        let (connector, stop, seen) = (connector.clone(), Arc::clone(&stop), Arc::clone(&seen));
        async move {
            while !stop.load(Ordering::Relaxed) {
                let mut stream = connect(&connector, addr).await;
                let status = ping(&mut stream).await;
                seen.lock().unwrap().push((status, served(&stream)));
            }
        }
    });
    let mut kept = connect(&connector, addr).await;
    assert_eq!(ping(&mut kept).await, 200);
    assert_eq!(served(&kept), pem_der(&first_cert));

    // A renewal half written (a new key without its certificate) is not
    // served: the previous pair stays, and the error names the key.
    let (second_cert, second_key) = ca.leaf();
    replace(&key_file, &second_key);
    let error = tls.reload().unwrap_err().to_string();
    assert!(error.contains("gateway.tls_key_file"), "{error}");
    assert!(
        !error.contains("PRIVATE KEY"),
        "the key's text stays out: {error}"
    );
    replace(&cert_file, &second_cert);

    let deadline = Instant::now() + ROTATION_DEADLINE;
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|(_, cert)| *cert == pem_der(&second_cert))
    {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        if sender.is_finished() {
            // Its failure says more than the missing certificate would.
            sender.await.unwrap();
            panic!("the sender stopped before the renewal was served");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the renewal is still served.
    assert_eq!(ping(&mut kept).await, 200);
    stop.store(true, Ordering::Relaxed);
    within("the sender's last request", sender).await.unwrap();
    shutdown.cancel();
    within("the graceful stop", server).await.unwrap().unwrap();

    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|(status, _)| *status == 200),
        "a request was refused"
    );
    assert!(seen.iter().any(|(_, cert)| *cert == pem_der(&first_cert)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotated_in_its_file_is_honoured_with_no_request_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "old-token\n").unwrap();
    let tokens = Tokens::configured(&[], Some(file.as_path()), "gateway.tokens_file").unwrap();
    let shutdown = CancellationToken::new();
    tokens.watch(shutdown.clone());
    let router = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .layer(from_fn_with_state(tokens.clone(), require_bearer));
    let call = |token: &str| {
        let request = Request::get("/ping")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let router = router.clone();
        async move { router.oneshot(request).await.unwrap().status() }
    };
    let until = |token: &'static str, wanted: StatusCode| {
        let call = &call;
        async move {
            let deadline = Instant::now() + ROTATION_DEADLINE;
            while call(token).await != wanted {
                assert!(Instant::now() < deadline, "{token} never answered {wanted}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // The client sends with whichever token it holds, all along.
    let held = Arc::new(Mutex::new("old-token"));
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let sender = tokio::spawn({
        let (router, held, stop, refused) = (
            router.clone(),
            Arc::clone(&held),
            Arc::clone(&stop),
            Arc::clone(&refused),
        );
        async move {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) || sent == 0 {
                let token = *held.lock().unwrap();
                let request = Request::get("/ping")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap();
                let status = router.clone().oneshot(request).await.unwrap().status();
                if status != StatusCode::OK {
                    refused.lock().unwrap().push((token, status));
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    // 1. The Secret gains the new token: both work.
    replace(&file, "old-token\nnew-token\n");
    until("new-token", StatusCode::OK).await;
    assert_eq!(call("old-token").await, StatusCode::OK);
    *held.lock().unwrap() = "new-token";
    // 2. An empty file (a Secret being rewritten) changes nothing.
    replace(&file, "");
    let error = tokens.reload().unwrap_err().to_string();
    assert!(error.contains("gateway.tokens_file"), "{error}");
    assert_eq!(call("new-token").await, StatusCode::OK);
    // 3. The old token is removed: it stops working, the new one goes on.
    replace(&file, "new-token\n");
    until("old-token", StatusCode::FORBIDDEN).await;
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    shutdown.cancel();
    assert_eq!(
        *refused.lock().unwrap(),
        Vec::new(),
        "requests were refused"
    );
}
