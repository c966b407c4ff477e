//! Binding and serving with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use pulse_core::edge::HttpLimits;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::{Service, service_fn};

use crate::tls::ServerTls;

/// The server's shutdown, in every request's extensions.
///
/// A graceful stop waits for every answer in flight to end, and an event stream
/// never ends by itself: a handler that streams ends its stream with
/// [`Stopping::stopped`], so one open `/api/v1/live` tab cannot hold a SIGTERM
/// until the pod is killed. A router served without [`serve`] (tests) has none;
/// the default never stops.
#[derive(Clone, Debug, Default)]
pub struct Stopping(CancellationToken);

impl Stopping {
    /// Resolves once the server has been told to stop.
    pub async fn stopped(self) {
        self.0.cancelled_owned().await;
    }
}

/// A listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} for the {role}: {source}; set another address with `{key}` in the config or PULSE_{env}"
)]
pub struct BindError {
    pub role: &'static str,
    pub addr: SocketAddr,
    pub key: &'static str,
    pub env: String,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` for `role`; `key` is the config key that sets it (named in the error).
pub async fn bind(
    role: &'static str,
    addr: SocketAddr,
    key: &'static str,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        role,
        addr,
        key,
        env: key.to_ascii_uppercase().replace('.', "__"),
        source,
    })
}

/// Serves `router` until `shutdown` is cancelled, then lets in-flight requests
/// finish.
///
/// Every role is served here, with the edge's limits (`http`): at most
/// `max_connections` open connections (more wait in the listen backlog), a
/// header read timeout that also closes idle kept-alive connections, request
/// heads bounded by `max_url_bytes` and `max_header_bytes`, and every error
/// answer in the one JSON shape (see [`crate::edge::shape`]).
///
/// With `tls`, every connection is HTTPS (HTTP/2 or HTTP/1.1 by ALPN); the
/// handshake runs in the connection's own task, bounded by the header read
/// timeout, so a slow or broken client holds only its own slot. The
/// certificate follows its files (see [`ServerTls::watch`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
    tls: Option<ServerTls>,
) -> std::io::Result<()> {
    let limits = &limits;
    let router = crate::edge::shape::layer(router, limits);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // The head limits answer in JSON below this buffer; hyper's own bare
        // 431 only meets heads twice their size. The buffer bounds what one
        // connection holds: max_connections of them at most.
        .max_buf_size(head_buffer(limits));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(4 * limits.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit,
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = permit else { break };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or a connection reset before it
                    // was accepted: wait a little instead of spinning.
                    tracing::warn!(message = "Cannot accept a connection.", %error);
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let (router, stopping) = (router.clone(), Stopping(shutdown.clone()));
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            request.extensions_mut().insert(stopping.clone());
            router.clone().call(request.map(Body::new))
        });
        let (builder, watcher, acceptor) = (
            builder.clone(),
            graceful.watcher(),
            tls.as_ref().map(ServerTls::acceptor),
        );
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            match acceptor {
                None => run_connection(&builder, watcher, stream, service).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => run_connection(&builder, watcher, stream, service).await,
                        // Nothing was asked yet, so nothing is lost: a scanner,
                        // a client that does not trust the certificate, or plain HTTP.
                        Ok(Err(error)) => {
                            tracing::debug!(message = "A TLS handshake failed.", %remote, %error);
                        }
                        Err(_) => {
                            tracing::debug!(message = "A TLS handshake timed out.", %remote);
                        }
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Serves one accepted connection (plain or TLS) until it ends or the
/// graceful shutdown closes it.
async fn run_connection<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    stream: I,
    service: S,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<
            Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
        .into_owned();
    // A client that goes away or breaks the protocol ends only its own
    // connection; there is nothing to answer.
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(message = "A connection ended with an error.", %error);
    }
}

/// hyper's largest read buffer: twice the largest head the limits let
/// through, and at least hyper's minimum.
fn head_buffer(limits: &HttpLimits) -> usize {
    (2 * (limits.max_url_bytes + limits.max_header_bytes)).max(MIN_HEAD_BUFFER)
}

/// hyper refuses a smaller read buffer.
const MIN_HEAD_BUFFER: usize = 8192;

/// The pause after a failed `accept`.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(message = "Cannot listen for Ctrl-C.", error = %e);
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(message = "Cannot listen for SIGTERM.", error = %e);
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
