//! `pulse operator`: the health and metrics endpoints, the sidecar injection
//! webhook (on every replica, as the webhook Service spreads calls over
//! them), and both controllers (on the leader only).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::admin::{KafkaTopicAdmin, PostgresSchemaAdmin};
use crate::controller::{self, Context};
use crate::leader::{self, Candidate, LeaderError};
use crate::metrics::Metrics;
use crate::webhook::{
    InvalidSidecarSettings, SidecarSettings, WebhookConfig, WebhookError,
    native_sidecars_supported, tls,
};

/// What `pulse operator`'s flags set.
#[derive(Debug, Clone)]
pub struct Options {
    /// Plain HTTP listener of /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
    /// HTTPS listener of the webhook.
    pub webhook_listen: SocketAddr,
    /// Directory with `tls.crt` and `tls.key`; without them the webhook is off.
    pub webhook_tls_dir: PathBuf,
    /// The pulse image the Deployments run unless a spec names one.
    pub image: String,
    /// The image of the injected sidecar.
    pub sidecar_image: String,
    /// The sidecar's resources as JSON (`None`: the webhook's defaults).
    pub sidecar_resources: Option<String>,
    /// `sizeLimit` of the sidecar's buffer emptyDir (`256Mi`).
    pub sidecar_buffer_size_limit: String,
    /// Whether to reconcile only while holding the Lease.
    pub leader_election: bool,
}

/// Why the operator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "no pulse image: pass --image or set PULSE_IMAGE (the image the pipeline Deployments run)"
    )]
    NoImage,
    #[error(
        "cannot reach the Kubernetes API: {0}; run in a pod with a ServiceAccount or set KUBECONFIG"
    )]
    Client(#[source] kube::Error),
    #[error(
        "cannot listen on {addr} for /healthz, /readyz and /metrics: {source}; free the port or change --listen"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the health endpoint on {addr} stopped: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "leader election needs the env var {0} (the chart sets it from the downward API); set it or pass \
         --no-leader-election"
    )]
    MissingEnv(&'static str),
    #[error(transparent)]
    Sidecar(#[from] InvalidSidecarSettings),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

#[derive(Clone)]
struct Health {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

/// Runs the operator until SIGTERM or Ctrl-C (or a lost Lease, an error so the
/// pod restarts as a follower).
pub async fn run(options: Options) -> Result<(), RunError> {
    if options.image.trim().is_empty() {
        return Err(RunError::NoImage);
    }
    let candidate = if options.leader_election {
        let env = |name| std::env::var(name).map_err(|_| RunError::MissingEnv(name));
        Some(Candidate {
            namespace: env("POD_NAMESPACE")?,
            identity: env("POD_NAME")?,
        })
    } else {
        None
    };
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let metrics = Metrics::new();
    let health = Health {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let health_server = serve_health(options.listen, health.clone(), shutdown.clone()).await?;
    let webhook = start_webhook(&options, &client, &metrics, &shutdown).await?;

    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(KafkaTopicAdmin::new()),
        Arc::new(PostgresSchemaAdmin),
        metrics,
        options.image.clone(),
    ));
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        message = "Operator started.",
        listen = %options.listen,
        leader_election = options.leader_election,
        webhook = webhook.is_some()
    );
    let controllers = async {
        match &candidate {
            Some(candidate) => leader::lead(client, candidate, controller::run(ctx)).await,
            None => {
                controller::run(ctx).await;
                Ok(())
            }
        }
    };
    let outcome = tokio::select! {
        result = controllers => result.map_err(RunError::from),
        () = shutdown.cancelled() => Ok(()),
    };
    shutdown.cancel();
    if let Some(webhook) = webhook {
        match webhook.await {
            Ok(Err(error)) => {
                tracing::warn!(message = "The webhook stopped with an error.", %error)
            }
            Err(error) => tracing::warn!(message = "The webhook task failed.", %error),
            Ok(Ok(())) => {}
        }
    }
    if let Ok(Err(error)) = health_server.await {
        tracing::warn!(message = "The health endpoint stopped with an error.", %error);
    }
    outcome
}

/// Starts the webhook when its TLS files are there; without them the chart
/// has the webhook turned off, and so is it here.
async fn start_webhook(
    options: &Options,
    client: &Client,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<Result<(), WebhookError>>>, RunError> {
    if !tls::files_present(&options.webhook_tls_dir) {
        tracing::info!(
            message = "Sidecar injection webhook off: no tls.crt/tls.key.",
            dir = %options.webhook_tls_dir.display()
        );
        return Ok(None);
    }
    let sidecar = SidecarSettings::from_flags(
        &options.sidecar_image,
        options.sidecar_resources.as_deref(),
        &options.sidecar_buffer_size_limit,
    )?;
    let native_sidecars = match client.apiserver_version().await {
        Ok(version) => native_sidecars_supported(&version),
        Err(error) => {
            tracing::warn!(
                message = "Cannot read the API server's version; injecting classic sidecars.",
                %error
            );
            false
        }
    };
    let config = WebhookConfig {
        listen: options.webhook_listen,
        tls_dir: options.webhook_tls_dir.clone(),
        native_sidecars,
        sidecar,
    };
    let webhook =
        crate::webhook::Webhook::bind(config, client.clone())?.with_metrics(metrics.clone());
    Ok(Some(tokio::spawn(webhook.run(shutdown.clone()))))
}

/// Binds the health listener (so a taken port fails start-up) and serves it.
async fn serve_health(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), RunError>>, RunError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Listen { addr, source })?;
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
        .merge(pulse_server::openapi::router(&openapi()));
    Ok(tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(|source| RunError::Serve { addr, source })
    }))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(healthz, readyz, metrics))]
struct HealthApi;

/// The OpenAPI 3.1 document of the operator's health port.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    pulse_server::openapi::finish(
        HealthApi::openapi(),
        "Pulse operator",
        "Probes and metrics of the Kubernetes operator (`pulse operator --listen`). The sidecar \
         injection webhook is a Kubernetes AdmissionReview endpoint on its own TLS port and is \
         not part of this document.",
    )
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The operator is alive", content_type = "text/plain", body = String, example = "ok"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: ready once the Kubernetes client, the health server and the
/// webhook are up.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String, example = "ready"),
        (status = 503, description = "Still starting", content_type = "text/plain", body = String, example = "starting"),
    )
)]
async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// The operator's metrics in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Every metric of the operator (OpenMetrics text)", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String, example = "# TYPE pulse_operator_reconciles counter\npulse_operator_reconciles_total 3\n# EOF\n"))
)]
async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.render(),
    )
}

/// Cancels `shutdown` on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(message = "Cannot listen for SIGTERM.", %error);
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!(message = "Shutting down.");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_endpoints_answer_and_metrics_are_prometheus_text() {
        let health = Health {
            metrics: Metrics::new(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        drop(health.metrics.reconcile("MetricPipeline"));
        let shutdown = CancellationToken::new();
        // Port 0: any free port; read it back from a probe bind.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
        let addr = probe.local_addr().expect("probe addr");
        drop(probe);
        let server = serve_health(addr, health.clone(), shutdown.clone())
            .await
            .expect("bind");
        let get = |path: &'static str| async move {
            use http_body_util::BodyExt;
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connects");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .expect("HTTP/1.1");
            tokio::spawn(connection);
            let request = http::Request::get(path)
                .header("host", "localhost")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("a request");
            let response = sender.send_request(request).await.expect("an answer");
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.expect("a body");
            (
                status,
                String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            )
        };
        assert_eq!(get("/healthz").await.0, 200);
        assert_eq!(get("/readyz").await.0, 503);
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").await.0, 200);
        let (status, text) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            text.contains("pulse_operator_reconciles_total{kind=\"MetricPipeline\"} 1"),
            "{text}"
        );
        shutdown.cancel();
        server.await.expect("join").expect("clean stop");
    }
}
