//! The store: window results, raw points and the processor's checkpoints.
//!
//! Exactly-once rests on [`Store::commit`]: closed window results, raw points,
//! open window state and the bus offsets they cover are written in one
//! transaction, so after any crash the store holds either all of a commit or none.
//!
//! Window results are *merged on write*: a result in a commit is a partial
//! aggregate of its window, and when the store already holds that window
//! (late points that arrived after it closed, or the same series' part of it
//! from another partition after the topic grew) the two are merged in the
//! commit's transaction. Each partial is committed exactly once, with the
//! offsets of the records it holds, so merging never counts a point twice
//! (see [`merge_results`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use async_trait::async_trait;
use pulse_core::{Point, SeriesId, Tags, TimestampMs, WindowResult};

pub mod anomaly;
mod columns;
mod marks;
pub mod postgres;
pub mod sqlite;

pub use anomaly::{AnomalyChange, AnomalyQuery, Delivery, DeliveryOutcome, DetectorState};
pub use marks::{BatchMark, BatchMarkKey};

/// Progress of one bus partition, stored with the results it produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCheckpoint {
    pub partition: u32,
    /// The next offset to read.
    pub next_offset: u64,
    /// Highest event time seen on the partition, if any.
    pub max_event_ts: Option<TimestampMs>,
    /// The partition's watermark when the checkpoint was taken, if any.
    pub watermark: Option<TimestampMs>,
}

/// Identifies one open window of one series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpenWindowKey {
    pub partition: u32,
    pub series_id: SeriesId,
    pub window: String,
    pub start_ms: TimestampMs,
}

/// An open window's state, encoded with `pulse_core::codec::state`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenWindowState {
    pub key: OpenWindowKey,
    pub state: Vec<u8>,
}

/// Points that arrived after their window had closed, per metric and window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateCount {
    pub metric: String,
    pub window: String,
    pub count: u64,
}

/// One raw point as stored. Its series is named by id only: the name and
/// tags travel once per commit in [`Commit::series`], not once per point,
/// which keeps the processor's per-point work free of string copies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawPoint {
    pub series_id: SeriesId,
    pub timestamp_ms: TimestampMs,
    pub value: f64,
}

/// The metric and tags behind a series id.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    pub series_id: SeriesId,
    pub metric: String,
    pub tags: Tags,
}

/// A bus record the processor could not decode (unknown format version,
/// corrupt bytes). It is kept whole with the reason, in the same transaction
/// as the offsets that move past it, so it is neither lost nor retried forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
    pub payload: Vec<u8>,
}

/// A processor's claim on a partition: the owner generation the store gave it
/// when it took the partition ([`Store::load_checkpoint`]). Each take bumps
/// the generation, so a processor that lost a partition (stalled past the bus
/// group's poll interval, say) holds an older one than the new owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub partition: u32,
    pub generation: u64,
}

/// Everything one processor checkpoint writes, atomically.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// The claims the writer holds on the partitions it writes. The store
    /// refuses the whole commit with [`StoreError::Fenced`] when any of them
    /// is no longer the partition's current generation. A commit without
    /// claims (tools, tests) is not fenced.
    pub claims: Vec<Claim>,
    pub partitions: Vec<PartitionCheckpoint>,
    /// Partial aggregates of windows, merged into what the store holds of
    /// each window (see the module docs). A window may appear more than once.
    pub results: Vec<WindowResult>,
    /// Series of `raw_points` (results carry their own names). A series may be
    /// given again in later commits; the store keeps the first.
    pub series: Vec<SeriesRow>,
    pub raw_points: Vec<RawPoint>,
    pub upsert_open: Vec<OpenWindowState>,
    pub delete_open: Vec<OpenWindowKey>,
    pub late: Vec<LateCount>,
    pub dead_letters: Vec<DeadLetter>,
    /// Anomalies that fired or resolved on `results`, with their outbox rows.
    pub anomalies: Vec<AnomalyChange>,
    /// Changed detector states (the judge's part of the checkpoint).
    pub detectors: Vec<DetectorState>,
    /// Batch marks taken or changed since the last commit, and those pruned.
    pub upsert_marks: Vec<BatchMark>,
    pub delete_marks: Vec<BatchMarkKey>,
}

impl Commit {
    /// Whether there is anything beyond offsets to write.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
            && self.raw_points.is_empty()
            && self.upsert_open.is_empty()
            && self.delete_open.is_empty()
            && self.late.is_empty()
            && self.dead_letters.is_empty()
            && self.anomalies.is_empty()
            && self.detectors.is_empty()
            && self.upsert_marks.is_empty()
            && self.delete_marks.is_empty()
    }
}

/// The key a window result is stored under.
pub type ResultKey<'a> = (&'a str, &'a str, TimestampMs, SeriesId);

/// The key of `r`: metric, window label, start, series.
pub fn result_key(r: &WindowResult) -> ResultKey<'_> {
    (&r.metric, &r.window, r.start_ms, r.series_id)
}

/// A commit's window results, one per key in key order (so concurrent commits
/// lock rows in one order): a key given once is borrowed, the partials of a
/// key given several times are merged.
pub fn combine_results(results: &[WindowResult]) -> Vec<Cow<'_, WindowResult>> {
    let mut by_key: BTreeMap<ResultKey<'_>, Cow<'_, WindowResult>> = BTreeMap::new();
    for r in results {
        match by_key.entry(result_key(r)) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Cow::Borrowed(r));
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                slot.get_mut().to_mut().agg.merge(&r.agg);
            }
        }
    }
    by_key.into_values().collect()
}

/// The one rule for writing a partial result over a stored one: both
/// aggregates merge exactly (counts and sums add, min/max/last by value and
/// time, sketch bins add), so the stored window ends up equal to the window
/// of all the points of both parts, in whatever order the parts came.
pub fn merge_results(stored: &pulse_core::Aggregate, partial: &WindowResult) -> WindowResult {
    let mut merged = partial.clone();
    merged.agg.merge(stored);
    merged
}

/// What a processor restores when it is given partitions.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// The new owner generation of each loaded partition, for its commits.
    pub claims: Vec<Claim>,
    pub partitions: Vec<PartitionCheckpoint>,
    pub open: Vec<OpenWindowState>,
    /// The batch marks of the loaded partitions.
    pub marks: Vec<BatchMark>,
}

/// Which window results to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultQuery {
    pub metric: String,
    pub window: String,
    /// Keep only series whose tags include all of these.
    pub tags: Tags,
    /// Window starts in `[from, to)`.
    pub from_ms: TimestampMs,
    pub to_ms: TimestampMs,
    /// At most this many rows; the newest windows are kept when cut.
    pub limit: usize,
}

/// A metric known to the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct MetricInfo {
    /// The metric's name.
    #[schema(example = "cpu_usage")]
    pub name: String,
    /// How many series (tag combinations) of it are stored.
    #[schema(example = 3)]
    pub series: u64,
    /// End of the newest stored window of any series, if any (Unix milliseconds).
    #[schema(value_type = Option<i64>, example = 1764393660000_i64)]
    pub last_window_end_ms: Option<TimestampMs>,
    /// What the metric is (`gauge`, `counter`, `delta_counter`,
    /// `histogram`): the kind of its newest stored window; `null` before
    /// its first window closes.
    #[schema(example = "counter")]
    pub kind: Option<pulse_core::MetricKind>,
}

/// How much a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub raw_points: u64,
    pub results: u64,
    /// Resolved anomalies (see [`Store::enforce_retention`]).
    pub anomalies: u64,
    /// Delivered outbox rows.
    pub deliveries: u64,
}

/// Store failures. `Unavailable` is transient: retry with backoff.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The commit's writer is stale: another processor took these partitions
    /// since. Nothing was written; retrying can never succeed.
    #[error(
        "commit refused: partitions {partitions:?} were taken over by another processor since this one loaded them"
    )]
    Fenced { partitions: Vec<u32> },
    #[error("store error: {0}")]
    Other(String),
}

/// The partitions whose claim is stale, given the generations the store
/// holds (`current`, a missing partition at generation 0).
pub fn stale_claims(claims: &[Claim], current: &[(u32, u64)]) -> Vec<u32> {
    let mut stale: Vec<u32> = claims
        .iter()
        .filter(|c| {
            let now = current
                .iter()
                .find(|(p, _)| *p == c.partition)
                .map_or(0, |&(_, g)| g);
            now != c.generation
        })
        .map(|c| c.partition)
        .collect();
    stale.sort_unstable();
    stale.dedup();
    stale
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Creates or upgrades the schema; safe to call from several processes.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Takes `partitions` for the caller: bumps their owner generations (which
    /// fences any earlier owner's commits), then reads their checkpoints and
    /// open windows (empty for new ones) as of after every commit the earlier
    /// owners landed.
    async fn load_checkpoint(&self, partitions: &[u32]) -> Result<Checkpoint, StoreError>;

    /// The stored progress of `partitions`, read without taking them (for
    /// tools and tests: [`load_checkpoint`](Store::load_checkpoint) would
    /// fence the processor that owns them).
    async fn progress(&self, partitions: &[u32]) -> Result<Vec<PartitionCheckpoint>, StoreError>;

    /// Writes all of `commit` in one transaction, or nothing; refuses it with
    /// [`StoreError::Fenced`] when one of its claims is stale. Returns the
    /// windows whose stored result now holds more than one partial of the
    /// commit (a window merged with what was stored, or given twice), as
    /// stored; every other result of the commit is stored as given.
    async fn commit(&self, commit: &Commit) -> Result<Vec<WindowResult>, StoreError>;

    /// Results of the newest window (among those matching `query`, ignoring
    /// `from`/`to`/`limit`) across every matching series.
    async fn latest(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError>;

    /// Results of matching series in a time range, ordered by window start.
    async fn range(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError>;

    /// Raw points of `metric` matching `tags` with timestamps in `[from, to)`.
    async fn raw_points(
        &self,
        metric: &str,
        tags: &Tags,
        from_ms: TimestampMs,
        to_ms: TimestampMs,
    ) -> Result<Vec<Point>, StoreError>;

    /// Every metric with stored series, by name.
    async fn metrics(&self) -> Result<Vec<MetricInfo>, StoreError>;

    /// The newest `limit` dead letters, newest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// Late-point totals of `metric`, per window.
    async fn late_counts(&self, metric: &str) -> Result<Vec<LateCount>, StoreError>;

    /// Deletes raw points (and dead letters) older than `raw_before_ms` and
    /// results whose window ended before `results_before_ms`. Anomalies go
    /// with the results once resolved (a resolving window that ended before
    /// `results_before_ms`); a firing one stays however old, as it is still
    /// on. Outbox rows go with the raw points once delivered (sent before
    /// `raw_before_ms`); an undelivered row is never deleted.
    async fn enforce_retention(
        &self,
        raw_before_ms: TimestampMs,
        results_before_ms: TimestampMs,
    ) -> Result<RetentionReport, StoreError>;

    /// The detector states of `partitions` (see [`DetectorState`]).
    async fn load_detectors(&self, partitions: &[u32]) -> Result<Vec<DetectorState>, StoreError>;

    /// Anomalies matching `query`, ordered by window start.
    async fn anomalies(
        &self,
        query: &AnomalyQuery,
    ) -> Result<Vec<pulse_core::anomaly::Anomaly>, StoreError>;

    /// Undelivered outbox rows of `partitions`, oldest first.
    async fn pending_deliveries(
        &self,
        partitions: &[u32],
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Records how delivering outbox row `seq` went.
    async fn mark_delivery(&self, seq: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError>;

    /// Whether the store answers, and what it is (engine, place, mode), for
    /// `/readyz` details.
    async fn ready(&self) -> Result<String, StoreError>;
}
