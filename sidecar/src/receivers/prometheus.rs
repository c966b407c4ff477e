//! Scraping the app's own Prometheus endpoint (`http://127.0.0.1:<port><path>`)
//! every `prometheus.interval`. The exposition is parsed by
//! `crate::parse::prometheus`; each sample becomes a point. A failed scrape is
//! counted (`pulse_sidecar_scrapes_total{outcome}`) and logged, and the next
//! one tried on schedule.

use std::sync::Arc;

use axum::http::header;
use pulse_server::CancellationToken;

use super::Intake;
use crate::config::PrometheusConfig;
use crate::parse::prometheus::{parse, to_points};

const RECEIVER: &str = "prometheus";

/// Scrapes until `stop`.
pub async fn run(
    client: reqwest::Client,
    intake: Arc<Intake>,
    config: PrometheusConfig,
    port: u16,
    stop: CancellationToken,
) {
    let url = format!("http://127.0.0.1:{port}{}", config.path);
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = stop.cancelled() => return,
        }
        let outcome = match scrape(&client, &url, &config).await {
            Ok(text) => {
                let scraped_at = pulse_core::now_ms();
                let exposition = parse(&text);
                for rejection in &exposition.rejected {
                    intake.metrics.rejected(RECEIVER, rejection.reason, 1);
                }
                if let Some(first) = exposition.rejected.first() {
                    tracing::debug!(message = "Lines of the app's exposition were rejected.", lines = exposition.rejected.len(), first = %first.message);
                }
                let points = to_points(exposition.samples, scraped_at);
                let (valid, _) = intake.admit(RECEIVER, points, scraped_at);
                match intake.write(RECEIVER, valid).await {
                    Ok(_) => "ok",
                    Err(error) => {
                        tracing::warn!(message = "Scraped points could not be buffered and are lost.", %error);
                        "buffer_unavailable"
                    }
                }
            }
            Err(failure) => {
                tracing::warn!(message = "Cannot scrape the app's metrics.", %url, reason = %failure.1);
                failure.0
            }
        };
        intake
            .metrics
            .scrapes
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
    }
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
        .map_err(|e| ("unreachable", e.to_string()))?;
    if !response.status().is_success() {
        return Err(("http_error", format!("answered {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ("unreachable", e.to_string()))?
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
    use std::time::Duration;

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
}
