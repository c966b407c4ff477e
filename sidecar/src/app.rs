//! Wiring: the buffer, its writer, the forwarder, the receivers and the admin
//! server, started in that order and stopped in the reverse one.
//!
//! On SIGTERM (or Ctrl-C) the receivers stop taking points and flush what
//! they aggregate, the open segment is sealed, and the forwarder delivers the
//! buffer until it is empty or `shutdown_grace` has passed since the signal.
//! Whatever is left stays in the buffer directory for the next start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use pulse_server::CancellationToken;
use pulse_server::edge::DecodeBudget;
use pulse_server::http_metrics::HttpMetrics;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::admin::{BufferCheck, GatewayCheck};
use crate::buffer::Buffer;
use crate::buffer::writer::{Writer, WriterConfig};
use crate::config::Config;
use crate::forward::{Circuit, Forwarder, Token};
use crate::metrics::Metrics;
use crate::receivers::{self, Intake};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot listen on {addr} for the {what}: {source}; set another address with `{key}` in the config or PULSE_SIDECAR_{env}"
    )]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        key: &'static str,
        env: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot use the buffer directory {dir}: {source}; set `buffer.dir` to a writable directory"
    )]
    Buffer {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config key `tags`: {0}")]
    Tags(String),
    #[error("cannot start: {0}")]
    Other(String),
}

fn bind_error(
    what: &'static str,
    addr: SocketAddr,
    key: &'static str,
    source: std::io::Error,
) -> StartError {
    StartError::Bind {
        what,
        addr,
        key,
        env: key.to_ascii_uppercase().replace('.', "__"),
        source,
    }
}

async fn listen(
    what: &'static str,
    addr: SocketAddr,
    key: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(what, addr, key, e))
}

/// Runs the sidecar until `shutdown` resolves, then drains it.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let http_metrics = HttpMetrics::register(&mut registry);
    let registry = Arc::new(Mutex::new(registry));

    // The pod's tags must themselves be valid, or every point would be refused.
    let probe = pulse_core::validate::UncheckedPoint {
        metric: "probe".into(),
        tags: config.tags.clone(),
        value: 0.0,
        timestamp_secs: None,
        kind: pulse_core::MetricKind::Gauge,
        sketch: None,
    };
    pulse_core::validate::validate(0, probe, &config.limits, pulse_core::now_ms())
        .map_err(|e| StartError::Tags(e.message))?;

    let (buffer, next_seq, recovery) = Buffer::open(
        &config.buffer.dir,
        config.buffer.max_bytes,
        Arc::clone(&metrics),
    )
    .map_err(|source| StartError::Buffer {
        dir: config.buffer.dir.clone(),
        source,
    })?;
    if recovery.segments > 0 || recovery.removed_files > 0 {
        tracing::info!(
            message = "Recovered the buffer of an earlier run; its points are delivered first.",
            segments = recovery.segments,
            points = recovery.points,
            truncated_bytes = recovery.truncated_bytes,
            removed_files = recovery.removed_files
        );
    }
    let (writer, writer_thread) = Writer::start(
        Arc::clone(&buffer),
        WriterConfig {
            max_points: config.batch_limits().0,
            max_bytes: config.batch_limits().1,
            linger: config.batch.linger,
            fsync: config.buffer.fsync,
            compression: config.forward.compression,
        },
        next_seq,
    )
    .map_err(|e| StartError::Other(format!("cannot start the buffer writer: {e}")))?;

    // Every listener is bound before anything is served, so a port conflict
    // stops the start with a clear error instead of a half-working sidecar.
    let http_listener = match config.http.enabled {
        true => Some(listen("HTTP receiver", config.http.listen, "http.listen").await?),
        false => None,
    };
    let otlp_listener = match config.otlp.enabled {
        true => Some((
            listen("OTLP receiver", config.otlp.listen, "otlp.listen").await?,
            listen(
                "OTLP/gRPC receiver",
                config.otlp.grpc_listen,
                "otlp.grpc_listen",
            )
            .await?,
        )),
        false => None,
    };
    let statsd_socket = match config.statsd.enabled {
        true => Some(
            receivers::statsd::bind(config.statsd.listen, config.statsd.receive_buffer_bytes)
                .map_err(|e| {
                    bind_error("StatsD receiver", config.statsd.listen, "statsd.listen", e)
                })?,
        ),
        false => None,
    };
    let admin_listener = listen("admin endpoints", config.admin.listen, "admin.listen").await?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2)
        .build()
        .map_err(|e| StartError::Other(format!("cannot build the HTTP client: {e}")))?;
    let circuit = Arc::new(Mutex::new((Circuit::Closed, 0)));
    // Carries the shutdown deadline to the forwarder.
    let (forward_stop, forward_deadline) = tokio::sync::watch::channel(None);
    let forwarder = Forwarder {
        buffer: Arc::clone(&buffer),
        client: client.clone(),
        url: config.ingest_url(),
        token: Token::new(config.token_file.clone()),
        config: config.forward.clone(),
        metrics: Arc::clone(&metrics),
        circuit: Arc::clone(&circuit),
        max_segment_text: config.max_segment_text(),
    };
    let grace = config.shutdown_grace;
    let forward_task = tokio::spawn(forwarder.run(forward_deadline));

    let intake = Arc::new(Intake {
        writer: writer.clone(),
        metrics: Arc::clone(&metrics),
        limits: config.limits.clone(),
        static_tags: config.tags.clone(),
        budget: DecodeBudget::new(config.edge.max_decode_bytes),
        body_timeout: config.edge.body_timeout,
    });
    let receivers_stop = CancellationToken::new();
    let mut receivers = JoinSet::new();
    let mut serving = Vec::new();
    if let Some(listener) = http_listener {
        let router = receivers::http::router(
            Arc::clone(&intake),
            config.http.clone(),
            http_metrics.clone(),
        );
        serving.push(format!("http {}", config.http.listen));
        let stop = receivers_stop.clone();
        let edge = config.edge.clone();
        receivers.spawn(async move {
            if let Err(error) = pulse_server::serve(listener, router, stop, edge, None).await {
                tracing::error!(message = "The HTTP receiver failed.", %error);
            }
        });
    }
    if let Some((listener, grpc_listener)) = otlp_listener {
        let receiver = receivers::otlp::Receiver::new(
            Arc::clone(&intake),
            config.otlp.clone(),
            config.http.max_points_per_request,
        );
        serving.push(format!("otlp {}", config.otlp.listen));
        serving.push(format!("otlp-grpc {}", config.otlp.grpc_listen));
        let routes = [
            (listener, receivers::otlp::router(Arc::clone(&receiver))),
            (grpc_listener, receivers::otlp_grpc::router(receiver)),
        ];
        for (listener, router) in routes {
            let stop = receivers_stop.clone();
            let edge = config.edge.clone();
            receivers.spawn(async move {
                if let Err(error) = pulse_server::serve(listener, router, stop, edge, None).await {
                    tracing::error!(message = "An OTLP receiver failed.", %error);
                }
            });
        }
    }
    if let Some(socket) = statsd_socket {
        serving.push(format!("statsd {}", config.statsd.listen));
        receivers.spawn(receivers::statsd::run(
            socket,
            Arc::clone(&intake),
            config.statsd.clone(),
            receivers_stop.clone(),
        ));
    }
    if let Some(port) = config.prometheus.port {
        serving.push(format!(
            "prometheus scrape 127.0.0.1:{port}{}",
            config.prometheus.path
        ));
        receivers.spawn(receivers::prometheus::run(
            client,
            Arc::clone(&intake),
            config.prometheus.clone(),
            port,
            receivers_stop.clone(),
        ));
    }
    let admin_stop = CancellationToken::new();
    let admin = pulse_server::ops_router(
        registry,
        vec![
            Arc::new(BufferCheck(Arc::clone(&buffer))),
            Arc::new(GatewayCheck(circuit)),
        ],
    )
    .merge(pulse_server::openapi::router(&crate::openapi::admin()));
    let admin_task = tokio::spawn(pulse_server::serve(
        admin_listener,
        admin,
        admin_stop.clone(),
        config.edge.clone(),
        None,
    ));
    tracing::info!(
        message = "pulse-sidecar is up.",
        gateway = %config.ingest_url(),
        receivers = %serving.join(", "),
        admin = %config.admin.listen,
        buffer = %config.buffer.dir.display()
    );

    shutdown.await;
    let signalled = Instant::now();
    tracing::info!(
        message = "Stopping: receivers first, then delivering the buffer.",
        grace_ms = grace.as_millis() as u64
    );
    receivers_stop.cancel();
    // Receivers finish quickly (in-flight requests, a last StatsD flush); do
    // not let a stuck client hold the whole grace period.
    let receivers_done = async { while receivers.join_next().await.is_some() {} };
    if tokio::time::timeout(grace / 2, receivers_done)
        .await
        .is_err()
    {
        tracing::warn!(message = "Receivers did not stop in time; stopping them.");
    }
    receivers.shutdown().await;
    writer.seal().await;
    drop(intake);
    drop(writer);
    let deadline = signalled + grace;
    let _ = forward_stop.send(Some(deadline));
    let left = deadline.saturating_duration_since(Instant::now());
    let forward = tokio::time::timeout(left + Duration::from_millis(500), forward_task).await;
    if forward.is_err() {
        tracing::warn!(message = "The forwarder did not stop within the grace period.");
    }
    let (segments, points, _) = buffer.depth();
    if points > 0 {
        tracing::warn!(
            message = "Stopped with undelivered points; they stay in the buffer directory and are sent at the next start.",
            points,
            segments
        );
    }
    // The writer thread ends once every handle is gone; it sealed already.
    let join = tokio::task::spawn_blocking(move || writer_thread.join());
    let _ = tokio::time::timeout(Duration::from_secs(2), join).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    tracing::info!(message = "pulse-sidecar stopped.");
    Ok(())
}
