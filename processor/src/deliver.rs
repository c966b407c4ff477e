//! The delivery loop: reads the anomaly outbox of this processor's partitions
//! from the store, sends each row to its receiver (or the `.anomalies` bus
//! topic) and marks it sent. At least once: a row is marked only after its
//! receiver accepted it, so a crash in between sends it again; receivers
//! deduplicate on the anomaly id. A failing receiver is retried with backoff,
//! across restarts (the retry time is in the store), and its later rows for
//! the same anomaly wait, so a resolve never overtakes its trigger.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pulse_core::anomaly::payload::{body, target_url};
use pulse_core::anomaly::{AlertingConfig, ReceiverKind};
use pulse_core::backoff::{self, Backoff};
use pulse_core::now_ms;
use pulse_engine::bus::{BusProducer, OutgoingRecord};
use pulse_engine::store::anomaly::BUS_RECEIVER;
use pulse_engine::store::{Delivery, DeliveryOutcome, Store};
use pulse_server::CancellationToken;
use tracing::{info, warn};

use crate::metrics::{AnomalyMetrics, DeliveryLabel};
use crate::post::post_json;

/// Outbox rows read per pass.
const BATCH: usize = 200;
/// Pause between passes when nothing was due.
const IDLE_PAUSE: Duration = Duration::from_millis(500);
/// How long one POST may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A row whose receiver is no longer configured is kept, and looked at again this late.
const UNKNOWN_RECEIVER_RETRY: Duration = Duration::from_secs(3600);

/// First and longest pause before retrying a receiver.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);

/// The pause before the next attempt at outbox row `seq` after `attempts`
/// earlier ones failed (this one too): the workspace's one backoff, about
/// 1 s doubling up to 5 minutes, with a jitter drawn from the row, so rows
/// that failed together (a receiver outage) do not retry in lockstep.
pub fn retry_delay(attempts: u32, seq: i64) -> Duration {
    let draw = (seq as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    let random = draw as f64 / (1u64 << 53) as f64;
    backoff::delay(RETRY_FIRST, RETRY_CAP, attempts.saturating_add(1), random)
}

/// A receiver ready to send to.
struct Target {
    kind: ReceiverKind,
    url: String,
    routing_key: Option<String>,
}

/// Sends the outbox.
pub struct Deliverer {
    store: Arc<dyn Store>,
    targets: HashMap<String, Target>,
    /// The `.anomalies` topic, if the bus has one (Kafka).
    topic: Option<Arc<dyn BusProducer>>,
    metrics: AnomalyMetrics,
}

impl Deliverer {
    /// Resolves every receiver's URL and key (already checked at load).
    pub fn new(
        alerting: &AlertingConfig,
        store: Arc<dyn Store>,
        metrics: AnomalyMetrics,
    ) -> Result<Deliverer, String> {
        let mut targets = HashMap::new();
        for r in &alerting.receivers {
            let url = r
                .resolved_url()
                .map_err(|e| format!("receiver `{}`: {e}", r.name))?;
            let routing_key = match r.kind {
                ReceiverKind::Pagerduty => Some(
                    r.resolved_routing_key()
                        .map_err(|e| format!("receiver `{}`: {e}", r.name))?,
                ),
                _ => None,
            };
            targets.insert(
                r.name.clone(),
                Target {
                    kind: r.kind,
                    url: target_url(r.kind, &url),
                    routing_key,
                },
            );
        }
        Ok(Deliverer {
            store,
            targets,
            topic: None,
            metrics,
        })
    }

    /// Also writes every anomaly to the `.anomalies` topic through `topic`.
    pub fn with_topic(mut self, topic: Arc<dyn BusProducer>) -> Self {
        self.topic = Some(topic);
        self
    }

    /// Delivers until `shutdown`, for the partitions `assigned` names.
    pub async fn run(self, assigned: impl Fn() -> Vec<u32> + Send, shutdown: CancellationToken) {
        let mut store = Backoff::new(IDLE_PAUSE, RETRY_CAP);
        loop {
            let pause = match self.pass(&assigned()).await {
                Ok(()) => {
                    store.reset();
                    IDLE_PAUSE
                }
                Err(error) => {
                    warn!(message = "Cannot read or mark the anomaly outbox; retrying (nothing is lost: rows stay in the store).", %error);
                    store.fail()
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One pass over the due rows, oldest first.
    pub async fn pass(&self, partitions: &[u32]) -> Result<(), pulse_engine::store::StoreError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let pending = self.store.pending_deliveries(partitions, BATCH).await?;
        // (anomaly, receiver) pairs with an earlier row still undelivered.
        let mut waiting: HashSet<(String, String)> = HashSet::new();
        let now = now_ms();
        for d in pending {
            let key = (d.anomaly.id.clone(), d.receiver.clone());
            if waiting.contains(&key) || d.next_attempt_ms > now {
                waiting.insert(key);
                continue;
            }
            let outcome = match self.send(&d).await {
                Ok(()) => {
                    self.count(&d.receiver, "sent");
                    if d.attempts > 0 {
                        info!(message = "Alert delivered after retries.", receiver = %d.receiver, anomaly = %d.anomaly.id, attempts = d.attempts + 1);
                    }
                    DeliveryOutcome::Sent { at_ms: now_ms() }
                }
                Err(Failure::UnknownReceiver) => {
                    self.count(&d.receiver, "unknown_receiver");
                    warn!(message = "An outbox row names a receiver no longer configured; it is kept and looked at again in an hour.", receiver = %d.receiver, anomaly = %d.anomaly.id);
                    waiting.insert(key);
                    DeliveryOutcome::Failed {
                        retry_at_ms: now_ms() + UNKNOWN_RECEIVER_RETRY.as_millis() as i64,
                        error: "receiver not configured".into(),
                    }
                }
                Err(Failure::Refused(error)) => {
                    self.count(&d.receiver, "failed");
                    let delay = retry_delay(d.attempts, d.seq);
                    warn!(message = "A receiver refused an alert; retrying later.", receiver = %d.receiver, anomaly = %d.anomaly.id, %error, retry_in_s = delay.as_secs());
                    waiting.insert(key);
                    DeliveryOutcome::Failed {
                        retry_at_ms: now_ms() + delay.as_millis() as i64,
                        error,
                    }
                }
            };
            self.store.mark_delivery(d.seq, &outcome).await?;
        }
        Ok(())
    }

    fn count(&self, receiver: &str, outcome: &str) {
        self.metrics
            .deliveries
            .get_or_create(&DeliveryLabel {
                receiver: receiver.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    async fn send(&self, d: &Delivery) -> Result<(), Failure> {
        if d.receiver == BUS_RECEIVER {
            let Some(topic) = &self.topic else {
                // No topic to write (the embedded bus): nothing outside Pulse reads it.
                return Ok(());
            };
            let key = u64::from_str_radix(&d.anomaly.id, 16).unwrap_or_default();
            let value = serde_json::to_vec(&d.anomaly).unwrap_or_default();
            return topic
                .send(vec![OutgoingRecord { key, value }])
                .await
                .map_err(|e| Failure::Refused(e.to_string()));
        }
        let target = self
            .targets
            .get(&d.receiver)
            .ok_or(Failure::UnknownReceiver)?;
        let payload = body(target.kind, &d.anomaly, target.routing_key.as_deref());
        let (status, text) = post_json(
            &target.url,
            serde_json::to_vec(&payload).unwrap_or_default(),
            SEND_TIMEOUT,
        )
        .await
        .map_err(|e| Failure::Refused(format!("POST {}: {e}", redact(&target.url))))?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(Failure::Refused(format!(
            "POST {} answered {status}: {}",
            redact(&target.url),
            text.chars().take(200).collect::<String>()
        )))
    }
}

enum Failure {
    UnknownReceiver,
    Refused(String),
}

/// A receiver URL without its path, which holds the secret of Slack webhooks.
fn redact(url: &str) -> String {
    match url.find("://").map(|i| i + 3) {
        Some(start) => match url[start..].find('/') {
            Some(end) => format!("{}/…", &url[..start + end]),
            None => url.to_string(),
        },
        None => "(receiver URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_five_minutes_and_urls_hide_their_secret_path() {
        for seq in [1, 2, 77] {
            let first = retry_delay(0, seq);
            assert!(
                first >= Duration::from_millis(500) && first <= RETRY_FIRST,
                "{first:?}"
            );
            let late = retry_delay(40, seq);
            assert!(late >= RETRY_CAP / 2 && late <= RETRY_CAP, "{late:?}");
        }
        assert_ne!(retry_delay(3, 1), retry_delay(3, 2), "rows retry apart");
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
    }
}
