//! The webhook's HTTPS server: `POST /mutate-pods` over TLS, the only I/O of
//! the webhook. It reads the pod's `MetricPipeline` to resolve the
//! [`InjectTarget`]; everything else is [`super::review`] and
//! [`super::patch`], which are pure.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, http::StatusCode};
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use kube::{Api, Client};
use pulse_server::tls::ServerTls;
use tokio_util::sync::CancellationToken;

use super::review::{self, Admission, Candidate};
use super::sidecar::{GatewayLimits, InjectTarget, SidecarSettings, TokenSecret};
use super::tls::{self, TlsError};
use crate::crd::MetricPipeline;
use crate::metrics::{Metrics, WebhookOutcome};
use crate::names;

/// Longest the pipeline lookup may take: the API server gives the whole call
/// 5 s (`timeoutSeconds` in the chart), and a late answer injects nothing.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest AdmissionReview read; a pod is far smaller (etcd's limit is 1.5 MiB).
const MAX_BODY_BYTES: usize = 3 << 20;
/// How long open connections may finish after shutdown is asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How `pulse operator` runs the webhook (`--webhook-listen`,
/// `--webhook-tls-dir`, the `--sidecar-*` flags).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Address of the HTTPS listener (`0.0.0.0:8443`).
    pub listen: SocketAddr,
    /// Directory holding `tls.crt` and `tls.key`.
    pub tls_dir: PathBuf,
    /// Whether the cluster runs native sidecars ([`native_sidecars_supported`]).
    pub native_sidecars: bool,
    pub sidecar: SidecarSettings,
}

/// Why the webhook cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "cannot listen for the webhook on {addr}: {source}; free the port or change --webhook-listen"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the webhook server on {addr} stopped: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Whether the cluster runs native sidecars (init containers with
/// `restartPolicy: Always`): on by default from Kubernetes 1.29. Minor
/// versions like `29+` (EKS, GKE) count as 29; an unreadable version counts as
/// too old, since a classic sidecar works everywhere.
pub fn native_sidecars_supported(version: &Info) -> bool {
    let number = |text: &str| {
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    };
    match (number(&version.major), number(&version.minor)) {
        (Some(major), Some(minor)) => (major, minor) >= (1, 29),
        _ => false,
    }
}

/// Serves the webhook until `shutdown` is cancelled.
pub async fn serve(
    config: WebhookConfig,
    client: Client,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    Webhook::bind(config, client)?.run(shutdown).await
}

/// A bound, not yet running webhook server; binding first lets start-up fail
/// on a bad certificate or a taken port before anything runs.
pub struct Webhook {
    listener: TcpListener,
    addr: SocketAddr,
    tls: ServerTls,
    state: AppState,
}

#[derive(Clone)]
struct AppState {
    client: Client,
    native_sidecars: bool,
    sidecar: SidecarSettings,
    /// Counts each request's outcome (`pulse_operator_webhook_requests_total`).
    metrics: Metrics,
}

impl Webhook {
    /// Loads the TLS files and binds the listener.
    pub fn bind(config: WebhookConfig, client: Client) -> Result<Self, WebhookError> {
        let tls = tls::server_tls(&config.tls_dir)?;
        let bind_error = |source| WebhookError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let state = AppState {
            client,
            native_sidecars: config.native_sidecars,
            sidecar: config.sidecar,
            metrics: Metrics::new(),
        };
        Ok(Webhook {
            listener,
            addr,
            tls,
            state,
        })
    }

    /// Counts the requests' outcomes in `metrics` (the operator's, served on
    /// its `/metrics`) instead of a registry of its own.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.state.metrics = metrics;
        self
    }

    /// The address the server listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then lets open requests finish.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WebhookError> {
        let addr = self.addr;
        let serve_error = |source| WebhookError::Serve { addr, source };
        let handle: Handle<SocketAddr> = Handle::new();
        let stopper = handle.clone();
        // A renewed certificate goes into service without a restart.
        self.tls.watch(shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
        });
        tracing::info!(message = "Sidecar injection webhook listening.", %addr, path = names::WEBHOOK_PATH);
        let router = Router::new()
            .route(names::WEBHOOK_PATH, post(mutate_pods))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.state);
        let config = RustlsConfig::from_config(self.tls.server_config());
        axum_server::from_tcp_rustls(self.listener, config)
            .map_err(serve_error)?
            .handle(handle)
            .serve(router.into_make_service())
            .await
            .map_err(serve_error)
    }
}

/// `POST /mutate-pods`: always 200 with an AdmissionReview that allows the pod.
async fn mutate_pods(
    State(state): State<AppState>,
    body: Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    let answer = match review::admit(&body) {
        Admission::Answer(answer) => *answer,
        Admission::Candidate(candidate) => answer_candidate(&state, *candidate).await,
    };
    let mut outcome = WebhookOutcome::Ignored;
    if let Some(response) = &answer.response {
        for warning in response.warnings.iter().flatten() {
            outcome = WebhookOutcome::Failed;
            tracing::warn!(message = "Sidecar not injected.", uid = %response.uid, %warning);
        }
        if response.patch.is_some() {
            outcome = WebhookOutcome::Injected;
            tracing::info!(message = "Sidecar injected.", uid = %response.uid);
        }
    }
    state.metrics.webhook(outcome);
    (StatusCode::OK, Json(review::to_wire(&answer)))
}

async fn answer_candidate(
    state: &AppState,
    candidate: Candidate,
) -> AdmissionReview<DynamicObject> {
    let pipelines: Api<MetricPipeline> =
        Api::namespaced(state.client.clone(), candidate.namespace());
    let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, pipelines.get_opt(candidate.pipeline()));
    let pipeline = match lookup.await {
        Ok(Ok(Some(pipeline))) => pipeline,
        Ok(Ok(None)) => {
            let reason = format!(
                "no MetricPipeline `{}` in namespace `{}` (label {})",
                candidate.pipeline(),
                candidate.namespace(),
                names::INJECT_LABEL
            );
            return candidate.skip(&reason);
        }
        Ok(Err(error)) => {
            let reason = format!(
                "cannot read MetricPipeline `{}`: {error}",
                candidate.pipeline()
            );
            return candidate.skip(&reason);
        }
        Err(_) => {
            let reason = format!(
                "reading MetricPipeline `{}` took over {}s",
                candidate.pipeline(),
                LOOKUP_TIMEOUT.as_secs()
            );
            return candidate.skip(&reason);
        }
    };
    let token = pipeline
        .spec
        .auth
        .as_ref()
        .and_then(|auth| auth.ingest_tokens_secret_ref.as_ref())
        .map(|secret| TokenSecret {
            name: secret.name.clone(),
            key: secret.key.clone(),
        });
    let target = InjectTarget {
        pipeline: candidate.pipeline().to_string(),
        gateway_url: names::gateway_url(candidate.namespace(), candidate.pipeline()),
        token,
        limits: GatewayLimits {
            max_points_per_request: pipeline.spec.limits.max_points_per_request,
            max_decompressed_bytes: pipeline.spec.limits.max_decompressed_bytes,
        },
        sidecar: state.sidecar.clone(),
    };
    candidate.inject(&target, state.native_sidecars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            ..Info::default()
        }
    }

    #[test]
    fn native_sidecars_from_kubernetes_1_29_on() {
        assert!(native_sidecars_supported(&info("1", "29")));
        assert!(native_sidecars_supported(&info("1", "31+")));
        assert!(native_sidecars_supported(&info("2", "0")));
        assert!(!native_sidecars_supported(&info("1", "28")));
        assert!(!native_sidecars_supported(&info("1", "28+")));
        assert!(!native_sidecars_supported(&info("", "")));
        assert!(!native_sidecars_supported(&info("one", "29")));
    }
}
