//! Scraping the app's own Prometheus endpoint (`http://127.0.0.1:<port><path>`)
//! every `prometheus.interval`. The exposition is parsed by
//! `crate::parse::prometheus`; each sample becomes a point. A failed scrape is
//! counted (`pulse_sidecar_scrapes_total{outcome}`) and logged with its root
//! cause, and the next one tried on schedule. Every scrape also writes `up`
//! and `scrape_duration_seconds`, as Prometheus does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header;
use pulse_core::histogram::{Baselines, classic_to_histograms};
use pulse_core::validate::UncheckedPoint;
use pulse_core::{Tags, TimestampMs};
use pulse_server::CancellationToken;

use super::Intake;
use crate::config::PrometheusConfig;
use crate::parse::prometheus::{parse, to_points};

const RECEIVER: &str = "prometheus";

/// Histogram series followed per app (their last bucket counts).
const MAX_HISTOGRAMS: usize = 10_000;

/// Scrapes until `stop`.
pub async fn run(
    client: reqwest::Client,
    intake: Arc<Intake>,
    config: PrometheusConfig,
    port: u16,
    stop: CancellationToken,
) {
    let url = format!("http://127.0.0.1:{port}{}", config.path);
    let mut baselines = Baselines::new(MAX_HISTOGRAMS);
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = stop.cancelled() => return,
        }
        let started = Instant::now();
        let scraped = scrape(&client, &url, &config).await;
        let scraped_at = pulse_core::now_ms();
        let (text, outcome) = match scraped {
            Ok(text) => (text, "ok"),
            Err(failure) => {
                tracing::warn!(message = "Cannot scrape the app's metrics.", %url, outcome = failure.0, reason = %failure.1);
                (String::new(), failure.0)
            }
        };
        let exposition = parse(&text);
        for rejection in &exposition.rejected {
            intake.metrics.rejected(RECEIVER, rejection.reason, 1);
        }
        if let Some(first) = exposition.rejected.first() {
            tracing::debug!(message = "Lines of the app's exposition were rejected.", lines = exposition.rejected.len(), first = %first.message);
        }
        let mut points: Vec<(usize, UncheckedPoint)> = to_points(exposition, scraped_at)
            .into_iter()
            .enumerate()
            .collect();
        // One scrape holds every bucket of a histogram, so its baseline is
        // kept at once (a scrape lost to a full buffer loses its interval).
        for (id, state) in classic_to_histograms(&mut points, &baselines) {
            baselines.set(id, state);
        }
        let mut points: Vec<UncheckedPoint> = points.into_iter().map(|(_, p)| p).collect();
        points.extend(scrape_health(
            outcome == "ok",
            started.elapsed(),
            scraped_at,
        ));
        let (valid, _) = intake.admit(RECEIVER, points, scraped_at);
        let outcome = match intake.write(RECEIVER, valid).await {
            Ok(_) => outcome,
            Err(error) => {
                tracing::warn!(message = "Scraped points could not be buffered and are lost.", %error);
                "buffer_unavailable"
            }
        };
        intake
            .metrics
            .scrapes
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
    }
}

/// The series Prometheus writes for every scrape: `up` (1 when the target
/// answered with an exposition, 0 otherwise) and `scrape_duration_seconds`,
/// so a dashboard or an anomaly rule sees a target that stopped answering.
fn scrape_health(up: bool, took: Duration, at_ms: TimestampMs) -> [UncheckedPoint; 2] {
    let point = |metric: &str, value: f64| {
        UncheckedPoint::gauge(metric, Tags::new(), value, Some(at_ms as f64 / 1000.0))
    };
    [
        point("up", if up { 1.0 } else { 0.0 }),
        point("scrape_duration_seconds", took.as_secs_f64()),
    ]
}

/// An error with its chain of causes (`error sending request: connection
/// refused`): reqwest's own text names only the outermost step.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The exposition text, or the outcome label and reason of a failure.
async fn scrape(
    client: &reqwest::Client,
    url: &str,
    config: &PrometheusConfig,
) -> Result<String, (&'static str, String)> {
    let mut response = client
        .get(url)
        .timeout(config.timeout)
        // The classic text format: every exporter serves it, and it is what
        // the parser reads.
        .header(header::ACCEPT, "text/plain;version=0.0.4;q=1,*/*;q=0.1")
        .send()
        .await
        .map_err(|e| ("unreachable", with_causes(&e)))?;
    if !response.status().is_success() {
        return Err(("http_error", format!("answered {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ("unreachable", with_causes(&e)))?
    {
        if body.len() + chunk.len() > config.max_body_bytes {
            return Err((
                "too_large",
                format!(
                    "the exposition is larger than prometheus.max_body_bytes ({})",
                    config.max_body_bytes
                ),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;

    use super::*;
    use crate::receivers::testing;

    #[tokio::test]
    async fn the_apps_exposition_is_scraped_into_points() {
        let app = Router::new().route(
            "/metrics",
            get(|| async {
                "# TYPE reqs counter\nreqs_total{code=\"200\"} 5\nbroken line\ntemp 21.5\n"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let fixture = testing::intake();
        let stop = CancellationToken::new();
        let config = PrometheusConfig {
            port: Some(port),
            interval: Duration::from_millis(50),
            ..PrometheusConfig::default()
        };
        let task = tokio::spawn(run(
            reqwest::Client::new(),
            Arc::clone(&fixture.intake),
            config,
            port,
            stop.clone(),
        ));
        for _ in 0..200 {
            if fixture.buffer.depth().1 >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
        assert!(fixture.buffer.depth().1 >= 2);
        let ok = fixture
            .intake
            .metrics
            .scrapes
            .get_or_create(&crate::metrics::OutcomeLabels { outcome: "ok" })
            .get();
        assert!(ok >= 1);
    }

    #[test]
    fn a_scrape_writes_up_and_its_duration() {
        let [up, took] = scrape_health(false, Duration::from_millis(250), 9_000);
        assert_eq!((up.metric.as_str(), up.value), ("up", 0.0));
        assert_eq!(
            (took.metric.as_str(), took.value),
            ("scrape_duration_seconds", 0.25)
        );
        assert_eq!(up.timestamp_secs, Some(9.0));
    }

    #[tokio::test]
    async fn a_failed_scrape_names_its_root_cause() {
        // A port nothing listens on: reqwest says only "error sending request".
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}/metrics");
        let (outcome, reason) = scrape(&reqwest::Client::new(), &url, &PrometheusConfig::default())
            .await
            .unwrap_err();
        assert_eq!(outcome, "unreachable");
        assert!(reason.to_lowercase().contains("refused"), "{reason}");
    }
}
