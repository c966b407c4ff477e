//! The aggregate columns of `window_results`, the same in every store: the
//! order they are read in, decoding them into an [`Aggregate`], and the
//! percentiles stored next to the sketch for SQL readers (written, never
//! read back: the sketch is the truth).

use pulse_core::aggregate::{AggKind, Aggregate, AggregateParts};
use pulse_core::{MetricKind, TimestampMs};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::StoreError;

/// The aggregate columns [`aggregate_at`] reads, in order, after the
/// statement's own columns.
pub const AGG_COLUMNS: &str =
    "count, sum, min, max, last, last_ts, sketch, kind, first_value, first_ts, increase";

/// [`AGG_COLUMNS`] then the percentile columns: what a write sets.
pub const WRITE_COLUMNS: &str = "count, sum, min, max, last, last_ts, sketch, kind, first_value, \
     first_ts, increase, p50, p90, p95, p99";

/// How many columns [`WRITE_COLUMNS`] names.
pub const WRITE_COLUMN_COUNT: usize = 15;

/// [`AGG_COLUMNS`] qualified with a table alias, e.g. `r.count, r.sum, ...`.
pub fn agg_columns(alias: &str) -> String {
    AGG_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The percentiles of `agg` stored as `p50`, `p90`, `p95`, `p99`.
pub fn percentiles(agg: &Aggregate) -> [Option<f64>; 4] {
    ["p50", "p90", "p95", "p99"].map(|q| {
        q.parse::<AggKind>()
            .ok()
            .and_then(|kind| agg.value(kind))
    })
}

/// The kind stored as `code`.
pub fn kind(code: i32) -> Result<MetricKind, StoreError> {
    MetricKind::from_code(i64::from(code))
        .ok_or_else(|| StoreError::Corrupt(format!("unknown metric kind {code}")))
}

/// The aggregate whose [`AGG_COLUMNS`] start at column `at` of `row`.
pub fn aggregate_at<'r, R>(row: &'r R, at: usize) -> Result<Aggregate, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    i32: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
    &'r [u8]: Decode<'r, R::Database> + Type<R::Database>,
{
    fn get<'r, R, T>(row: &'r R, index: usize) -> Result<T, StoreError>
    where
        R: Row,
        usize: ColumnIndex<R>,
        T: Decode<'r, R::Database> + Type<R::Database>,
    {
        row.try_get(index)
            .map_err(|e| StoreError::Corrupt(format!("window result column {index}: {e}")))
    }
    let count: i64 = get(row, at)?;
    let first_ts: TimestampMs = get(row, at + 9)?;
    Aggregate::from_parts(AggregateParts {
        count: u64::try_from(count)
            .map_err(|_| StoreError::Corrupt(format!("window count {count}")))?,
        sum: get(row, at + 1)?,
        min: get(row, at + 2)?,
        max: get(row, at + 3)?,
        last: get(row, at + 4)?,
        last_ts: get(row, at + 5)?,
        sketch: get(row, at + 6)?,
        kind: kind(get(row, at + 7)?)?,
        first: get(row, at + 8)?,
        first_ts,
        increase: get(row, at + 10)?,
    })
    .map_err(|e| StoreError::Corrupt(e.to_string()))
}
