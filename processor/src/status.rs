//! What `/readyz` reports about the processor itself: the partitions it owns
//! with their lag, and whether store commits are failing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use pulse_server::ReadinessCheck;

/// The processor's own state, shared by its loop and `/readyz`.
#[derive(Default)]
pub struct Status {
    /// Owned partitions and their lag in records (unknown until measured).
    /// Only what the processor owns: a partition it gave up is removed at
    /// once, so its last lag never hides the new owner's.
    owned: BTreeMap<u32, Option<u64>>,
    failing: Option<(Instant, String)>,
}

impl Status {
    /// The partitions owned now; the lag of those kept is kept.
    pub fn set_owned(&mut self, partitions: impl IntoIterator<Item = u32>) {
        let mut owned = BTreeMap::new();
        for p in partitions {
            owned.insert(p, self.owned.get(&p).copied().flatten());
        }
        self.owned = owned;
    }

    /// The partitions owned now (the alert delivery loop sends their outbox).
    pub fn owned(&self) -> Vec<u32> {
        self.owned.keys().copied().collect()
    }

    /// Records a partition's lag, if the partition is owned.
    pub fn set_lag(&mut self, partition: u32, lag: u64) {
        if let Some(slot) = self.owned.get_mut(&partition) {
            *slot = Some(lag);
        }
    }

    /// Marks commits as failing (from the first failure on).
    pub fn commit_failed(&mut self, reason: String) {
        self.failing.get_or_insert_with(|| (Instant::now(), reason));
    }

    /// Marks commits as succeeding; returns since when they had failed.
    pub fn commit_succeeded(&mut self) -> Option<Instant> {
        self.failing.take().map(|(since, _)| since)
    }

    fn report(&self) -> Result<String, String> {
        if let Some((since, reason)) = &self.failing {
            return Err(format!(
                "degraded: store commits failing for {}s ({reason}); progress is held and retried, nothing is lost",
                since.elapsed().as_secs()
            ));
        }
        let total: u64 = self.owned.values().flatten().sum();
        let mut text = format!(
            "partitions {:?}, lag {total} records",
            self.owned.keys().collect::<Vec<_>>()
        );
        if !self.owned.is_empty() {
            let per: Vec<String> = self
                .owned
                .iter()
                .map(|(p, lag)| match lag {
                    Some(lag) => format!("{p}: {lag}"),
                    None => format!("{p}: unknown"),
                })
                .collect();
            let _ = write!(text, " ({})", per.join(", "));
        }
        Ok(text)
    }
}

pub use pulse_core::sync::lock;

/// The `/readyz` check of the processor's own state.
pub struct StatusCheck(pub Arc<Mutex<Status>>);

#[async_trait]
impl ReadinessCheck for StatusCheck {
    fn name(&self) -> &str {
        "processor"
    }

    async fn check(&self) -> Result<String, String> {
        lock(&self.0).report()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owned_partitions_are_reported() {
        let mut status = Status::default();
        status.set_owned([0, 1, 2]);
        status.set_lag(0, 5);
        status.set_lag(2, 7);
        assert_eq!(
            status.report().unwrap(),
            "partitions [0, 1, 2], lag 12 records (0: 5, 1: unknown, 2: 7)"
        );
        status.set_owned([0, 1]);
        status.set_lag(2, 100);
        assert_eq!(
            status.report().unwrap(),
            "partitions [0, 1], lag 5 records (0: 5, 1: unknown)",
            "a partition given up no longer counts"
        );
        status.commit_failed("down".into());
        assert!(status.report().unwrap_err().starts_with("degraded"));
        assert!(status.commit_succeeded().is_some());
        assert!(status.report().is_ok());
    }
}
