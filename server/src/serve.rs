//! Binding and serving with graceful shutdown.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// Serves `router` until `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

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
