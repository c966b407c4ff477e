//! What the store keeps of anomalies: the anomalies themselves, each rule's
//! per-series detector state (part of the processor's checkpoint) and the
//! outbox the delivery loop sends to receivers. Written by [`super::Store::commit`]
//! in the same transaction as the window results they were judged on.

use pulse_core::anomaly::{AlertState, Anomaly};
use pulse_core::{SeriesId, Tags, TimestampMs};

pub mod conformance;
pub(super) mod postgres;
pub(super) mod sqlite;

/// The pseudo-receiver standing for the pipeline's `.anomalies` bus topic:
/// every anomaly change gets an outbox row for it.
pub const BUS_RECEIVER: &str = ".anomalies";

/// One rule's encoded state for one series (`pulse_core::anomaly::SeriesState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorState {
    pub partition: u32,
    pub rule: String,
    pub series_id: SeriesId,
    pub state: Vec<u8>,
}

/// An anomaly that fired or resolved in this commit. The store upserts it by
/// id and queues it in the outbox for each of `anomaly.notify` and the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyChange {
    /// The bus partition of the series: the processor owning it delivers it.
    pub partition: u32,
    pub anomaly: Anomaly,
}

/// Which anomalies to read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnomalyQuery {
    pub metric: Option<String>,
    pub rule: Option<String>,
    /// Keep only anomalies whose series tags include all of these.
    pub tags: Tags,
    pub state: Option<AlertState>,
    /// Windows starting in `[from, to)`.
    pub from_ms: TimestampMs,
    pub to_ms: TimestampMs,
    /// At most this many, the newest kept when cut.
    pub limit: usize,
}

/// One outbox row not yet delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub seq: i64,
    pub receiver: String,
    pub attempts: u32,
    /// Not to be tried before this time (ms since the epoch).
    pub next_attempt_ms: TimestampMs,
    pub anomaly: Anomaly,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    Sent {
        at_ms: TimestampMs,
    },
    Failed {
        retry_at_ms: TimestampMs,
        error: String,
    },
}

/// The outbox body of an anomaly: its JSON.
fn body(a: &Anomaly) -> String {
    serde_json::to_string(a).unwrap_or_default()
}

fn parse_body(text: &str) -> Result<Anomaly, super::StoreError> {
    serde_json::from_str(text)
        .map_err(|e| super::StoreError::Corrupt(format!("anomaly outbox body: {e}")))
}

/// Every (receiver, anomaly) outbox row a change makes.
fn outbox_rows(changes: &[AnomalyChange]) -> Vec<(&AnomalyChange, &str)> {
    changes
        .iter()
        .flat_map(|c| {
            c.anomaly
                .notify
                .iter()
                .map(String::as_str)
                .chain([BUS_RECEIVER])
                .map(move |r| (c, r))
        })
        .collect()
}
