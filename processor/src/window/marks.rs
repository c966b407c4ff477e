//! Batch marks: which points of keyed batches a partition has already taken,
//! so a batch sent again (a client retrying after a lost answer, a sidecar
//! restarted before it deleted a delivered segment) is dropped point by point
//! instead of counted twice.
//!
//! A point of a keyed batch carries `(key, index, start)` (see
//! `pulse_core::idempotency`): `start` is where the request that carried it
//! began within the batch. Per key, a partition keeps one *span* per request
//! start: `[start, highest index taken from it]`. A point is a duplicate when
//! its index lies in any span of its key. That is exact, because
//!
//! * one request's records reach a partition in order, so indices between
//!   `start` and the highest one taken that never came here belong to series
//!   of other partitions (or were refused by the gateway): they can never
//!   arrive here, in this request or in any resend of the batch;
//! * every point of a series goes to one partition, so a resend of the batch
//!   (whole or cut differently) brings each point back to the partition that
//!   took it;
//! * the spans are committed in the same transaction as the offsets and
//!   windows they cover, so after a crash they match what was counted.
//!
//! Marks are kept while a resend could still be accepted: until the
//! partition's watermark is more than the horizon past the newest point taken
//! under the key (the gateway refuses points older than `limits.max_past`,
//! and the horizon adds `limits.max_future` and the clock skew allowance). At
//! most `max_spans` spans are kept per partition; past that, the keys whose
//! newest point is oldest are forgotten first (counted), and a resend of
//! those batches would be taken again (at least once).

use pulse_core::TimestampMs;
use pulse_core::idempotency::{BatchKey, BatchRef};
use pulse_engine::store::{BatchMark, BatchMarkKey, Commit};
use rustc_hash::{FxHashMap, FxHashSet};

/// How long and how many marks a partition keeps.
#[derive(Debug, Clone, Copy)]
pub struct MarkPolicy {
    /// A key is forgotten once the watermark is this far past its newest point.
    pub horizon_ms: i64,
    /// Most spans kept per partition.
    pub max_spans: usize,
}

/// The format byte of an encoded mark.
const FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    /// Event time of the newest point taken under the key.
    newest_ms: TimestampMs,
    /// `(request start, highest index taken from that request)`.
    spans: Vec<(u32, u32)>,
    /// Some state of it is in the store, so forgetting it must delete that.
    persisted: bool,
}

/// What [`Marks::checkpoint`] forgot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Keys past the horizon.
    pub expired: usize,
    /// Keys forgotten early to stay within `max_spans`.
    pub evicted: usize,
}

/// The marks of one partition.
#[derive(Debug, Default)]
pub struct Marks {
    by_key: FxHashMap<BatchKey, Mark>,
    /// Keys changed since the last checkpoint.
    dirty: FxHashSet<BatchKey>,
    /// Forgotten keys whose rows the next checkpoint deletes.
    deleted: Vec<BatchKey>,
    spans: usize,
}

impl Marks {
    /// The marks a checkpoint saved.
    pub fn restore<'a>(saved: impl Iterator<Item = &'a BatchMark>) -> Result<Marks, String> {
        let mut marks = Marks::default();
        for row in saved {
            let mark = decode(&row.state)?;
            marks.spans += mark.spans.len();
            marks.by_key.insert(BatchKey(row.key), mark);
        }
        Ok(marks)
    }

    /// Takes the point at `batch` (event time `ts`), or returns `false` when
    /// the partition has taken it before.
    #[inline]
    pub fn take(&mut self, batch: &BatchRef, ts: TimestampMs) -> bool {
        // A record from outside Pulse may carry a start past its index.
        let start = batch.start.min(batch.index);
        let mark = self.by_key.entry(batch.key).or_insert_with(|| Mark {
            newest_ms: ts,
            spans: Vec::new(),
            persisted: false,
        });
        if mark
            .spans
            .iter()
            .any(|&(from, to)| (from..=to).contains(&batch.index))
        {
            return false;
        }
        match mark.spans.iter_mut().find(|(from, _)| *from == start) {
            Some(span) => span.1 = batch.index,
            None => {
                mark.spans.push((start, batch.index));
                self.spans += 1;
            }
        }
        mark.newest_ms = mark.newest_ms.max(ts);
        self.dirty.insert(batch.key);
        true
    }

    /// Forgets keys past the horizon of `watermark` and, past `max_spans`,
    /// the keys with the oldest newest points; then moves what changed into
    /// `commit` for `partition`.
    pub fn checkpoint(
        &mut self,
        partition: u32,
        watermark: Option<TimestampMs>,
        policy: &MarkPolicy,
        commit: &mut Commit,
    ) -> Forgotten {
        let mut forgotten = Forgotten::default();
        if let Some(watermark) = watermark {
            let cutoff = watermark.saturating_sub(policy.horizon_ms);
            let expired: Vec<BatchKey> = self
                .by_key
                .iter()
                .filter(|(_, m)| m.newest_ms < cutoff)
                .map(|(k, _)| *k)
                .collect();
            forgotten.expired = expired.len();
            for key in expired {
                self.forget(key);
            }
        }
        if self.spans > policy.max_spans {
            let mut by_age: Vec<(TimestampMs, BatchKey)> =
                self.by_key.iter().map(|(k, m)| (m.newest_ms, *k)).collect();
            by_age.sort_unstable();
            for (_, key) in by_age {
                if self.spans <= policy.max_spans {
                    break;
                }
                self.forget(key);
                forgotten.evicted += 1;
            }
        }
        for key in self.dirty.drain() {
            if let Some(mark) = self.by_key.get_mut(&key) {
                mark.persisted = true;
                commit.upsert_marks.push(BatchMark {
                    partition,
                    key: key.0,
                    state: encode(mark),
                });
            }
        }
        commit.delete_marks.extend(
            self.deleted
                .drain(..)
                .map(|key| -> BatchMarkKey { (partition, key.0) }),
        );
        forgotten
    }

    fn forget(&mut self, key: BatchKey) {
        if let Some(mark) = self.by_key.remove(&key) {
            self.spans -= mark.spans.len();
            self.dirty.remove(&key);
            if mark.persisted {
                self.deleted.push(key);
            }
        }
    }

    /// Keys remembered.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }
}

/// `FORMAT`, the newest event time (i64), then `(start, highest)` pairs
/// (u32 each), all little-endian.
fn encode(mark: &Mark) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + 8 * mark.spans.len());
    out.push(FORMAT);
    out.extend_from_slice(&mark.newest_ms.to_le_bytes());
    for (from, to) in &mark.spans {
        out.extend_from_slice(&from.to_le_bytes());
        out.extend_from_slice(&to.to_le_bytes());
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Mark, String> {
    let unreadable = || format!("a batch mark of {} bytes does not decode", bytes.len());
    let (&format, rest) = bytes.split_first().ok_or_else(unreadable)?;
    if format != FORMAT {
        return Err(format!(
            "batch mark format {format} is unknown to this build"
        ));
    }
    if rest.len() < 8 || (rest.len() - 8) % 8 != 0 {
        return Err(unreadable());
    }
    let (newest, spans) = rest.split_at(8);
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    Ok(Mark {
        newest_ms: i64::from_le_bytes(newest.try_into().expect("8 bytes")),
        spans: spans
            .chunks_exact(8)
            .map(|pair| (word(&pair[..4]), word(&pair[4..])))
            .collect(),
        persisted: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: u8, index: u32, start: u32) -> BatchRef {
        BatchRef {
            key: BatchKey([key; 16]),
            index,
            start,
        }
    }

    const POLICY: MarkPolicy = MarkPolicy {
        horizon_ms: 1_000,
        max_spans: 100,
    };

    #[test]
    fn a_batch_sent_again_whole_or_in_parts_is_taken_once() {
        let mut m = Marks::default();
        // This partition holds indices 1, 4 and 7 of a 10-point batch.
        assert!([1, 4, 7].iter().all(|&i| m.take(&at(1, i, 0), 0)));
        assert!([1, 4, 7].iter().all(|&i| !m.take(&at(1, i, 0), 0)));
        // Cut in parts [0, 5) and [5, 10) after a lost answer.
        assert!(!m.take(&at(1, 4, 0), 0) && !m.take(&at(1, 7, 5), 0));
        // Another key is another batch.
        assert!(m.take(&at(2, 1, 0), 0));
    }

    #[test]
    fn parts_taken_out_of_order_and_a_prefix_taken_before_a_crash_are_exact() {
        let mut m = Marks::default();
        // Part [5, 10) first, then part [0, 5): each request has its span.
        assert!(m.take(&at(1, 8, 5), 0));
        assert!(m.take(&at(1, 2, 0), 0) && m.take(&at(1, 3, 0), 0));
        assert!(!m.take(&at(1, 8, 0), 0) && !m.take(&at(1, 3, 0), 0));
        // Only a prefix of a request landed: the rest is new when resent.
        let mut m = Marks::default();
        assert!(m.take(&at(3, 1, 0), 0));
        assert!(!m.take(&at(3, 1, 0), 0));
        assert!(m.take(&at(3, 6, 0), 0));
    }

    #[test]
    fn marks_survive_a_checkpoint_and_are_pruned_after_the_horizon() {
        let mut m = Marks::default();
        m.take(&at(1, 3, 0), 5_000);
        m.take(&at(2, 3, 0), 9_000);
        let mut commit = Commit::default();
        let forgotten = m.checkpoint(0, Some(5_500), &POLICY, &mut commit);
        assert_eq!(forgotten, Forgotten::default());
        assert_eq!(commit.upsert_marks.len(), 2);
        let mut restored = Marks::restore(commit.upsert_marks.iter()).unwrap();
        assert!(!restored.take(&at(1, 3, 0), 5_000));
        assert!(!restored.take(&at(2, 3, 0), 9_000));

        // Watermark 6 001: key 1's newest point (5 000) is past the horizon.
        let mut commit = Commit::default();
        let forgotten = restored.checkpoint(0, Some(6_001), &POLICY, &mut commit);
        assert_eq!(forgotten.expired, 1);
        assert_eq!(commit.delete_marks, [(0, [1; 16])]);
        assert!(commit.upsert_marks.is_empty());
        assert_eq!(restored.keys(), 1);
    }

    #[test]
    fn past_the_bound_the_oldest_keys_are_evicted_and_counted() {
        let mut m = Marks::default();
        for key in 0..5u8 {
            m.take(&at(key, 0, 0), i64::from(key));
        }
        let policy = MarkPolicy {
            horizon_ms: i64::MAX,
            max_spans: 3,
        };
        let mut commit = Commit::default();
        let forgotten = m.checkpoint(0, Some(10), &policy, &mut commit);
        assert_eq!(forgotten.evicted, 2);
        assert_eq!(m.keys(), 3);
        // Never persisted, so nothing to delete; the newest three are kept.
        assert!(commit.delete_marks.is_empty());
        assert!(!m.take(&at(4, 0, 0), 4) && m.take(&at(0, 0, 0), 0));
    }

    #[test]
    fn unreadable_marks_are_errors() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode(&[1, 0, 0, 0]).is_err());
        let mark = Mark {
            newest_ms: -7,
            spans: vec![(0, 9), (20, 31)],
            persisted: true,
        };
        assert_eq!(decode(&encode(&mark)).unwrap(), mark);
    }
}
