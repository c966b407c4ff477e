//! The production store: PostgreSQL through sqlx, one schema per pipeline.
//!
//! * **Schema**: every table lives in the pipeline's schema
//!   (`pulse_core::names::schema`, or an earlier release's schema the
//!   pipeline claimed: [`claim_schema`]), set as the
//!   `search_path` of every pooled connection, so two pipelines share a
//!   database without sharing a table.
//! * **Migrations**: a small versioned list of SQL files
//!   (`migrations/postgres/`) embedded in the binary and recorded in the
//!   schema's own `schema_migrations` table, applied under
//!   `pg_advisory_lock(hashtext(schema))`, so any number of processes may
//!   migrate at once and every schema of a database migrates on its own.
//! * **Modes**: with the `timescaledb` extension available, `raw_points` and
//!   `window_results` are hypertables (one-day chunks; retention and
//!   compression are TimescaleDB policies, see [`timescale`], and the
//!   retention pass deletes rows as well). Otherwise they are natively range-partitioned by day on their time
//!   column, with partitions created ahead (today .. +7 days) and on demand
//!   before a commit writes into a new day, plus a DEFAULT partition as a
//!   safety net; retention drops whole partitions, then deletes leftovers.
//!   A schema keeps the mode it was created with.
//! * **Writes**: one [`Store::commit`] is one transaction, one statement per
//!   table: that transaction is the exactly-once guarantee. Window results and
//!   raw points go in with a binary `COPY` (results fall back to an `UNNEST`
//!   upsert when a window is already stored), the rest as `UNNEST` arrays.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pulse_core::{Aggregate, Point, SeriesId, Tags, TimestampMs, WindowResult};
use sqlx::postgres::{PgArguments, PgPool, PgPoolOptions, PgRow};
use sqlx::{Arguments, Executor, Postgres, Row};

mod claim;
mod options;
mod timescale;

pub use claim::{claim_schema, owned_schema};
pub use options::connect_options;
pub use timescale::TimescalePolicies;

use super::{
    AnomalyQuery, Checkpoint, Claim, Commit, DeadLetter, Delivery, DeliveryOutcome, DetectorState,
    LateCount, MetricInfo, OpenWindowKey, OpenWindowState, PartitionCheckpoint, ResultQuery,
    RetentionReport, Store, StoreError, anomaly, combine_results, merge_results,
};

/// One partition (or chunk) per UTC day of the time column, in milliseconds.
const DAY_MS: i64 = 86_400_000;
/// Daily partitions created ahead by `migrate`: today and this many days after.
const DAYS_AHEAD: i64 = 7;
/// New partitions one commit may create per table; rows of further days go to
/// the DEFAULT partition (a guard against a batch of absurd timestamps).
const MAX_NEW_PARTITIONS_PER_COMMIT: usize = 64;
/// How long partition DDL waits for a lock before giving up (and the commit
/// or retention pass is retried), so DDL never queues the whole table behind it.
const DDL_LOCK_TIMEOUT: &str = "10s";
/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// One versioned migration; `native` and `timescaledb` differ only where the
/// time series tables are made.
struct Migration {
    version: i64,
    name: &'static str,
    native: &'static str,
    timescaledb: &'static str,
}

const INITIAL: &str = include_str!("../../migrations/postgres/0001_initial.sql");

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        native: INITIAL,
        timescaledb: INITIAL,
    },
    Migration {
        version: 2,
        name: "timeseries",
        native: include_str!("../../migrations/postgres/0002_timeseries.native.sql"),
        timescaledb: include_str!("../../migrations/postgres/0002_timeseries.timescaledb.sql"),
    },
    Migration {
        version: 3,
        name: "dead_letters",
        native: DEAD_LETTERS,
        timescaledb: DEAD_LETTERS,
    },
    Migration {
        version: 4,
        name: "partition_owners",
        native: PARTITION_OWNERS,
        timescaledb: PARTITION_OWNERS,
    },
    Migration {
        version: 5,
        name: "anomalies",
        native: ANOMALIES,
        timescaledb: ANOMALIES,
    },
];
const ANOMALIES: &str = include_str!("../../migrations/postgres/0005_anomalies.sql");
const DEAD_LETTERS: &str = include_str!("../../migrations/postgres/0003_dead_letters.sql");
const PARTITION_OWNERS: &str = include_str!("../../migrations/postgres/0004_partition_owners.sql");

const MODE_UNKNOWN: u8 = 0;
const MODE_TIMESCALEDB: u8 = 1;
const MODE_NATIVE: u8 = 2;

/// The two time-partitioned tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TsTable {
    Raw,
    Results,
}

impl TsTable {
    fn name(self) -> &'static str {
        match self {
            TsTable::Raw => "raw_points",
            TsTable::Results => "window_results",
        }
    }

    fn column(self) -> &'static str {
        match self {
            TsTable::Raw => "ts",
            TsTable::Results => "window_start",
        }
    }
}

fn check_schema(schema: &str) -> Result<(), StoreError> {
    let valid = !schema.is_empty()
        && schema.len() <= MAX_IDENTIFIER_BYTES
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && !schema.starts_with("pg_")
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Other(format!(
            "invalid store schema name `{schema}`: use [a-z0-9_], at most 63 bytes, not starting \
             with a digit or `pg_` (pulse_core::names::schema makes one)"
        )))
    }
}

/// Maps a driver error: connection trouble and transient conflicts are
/// `Unavailable` (retry), undecodable data is `Corrupt`, the rest `Other`.
pub(in crate::store) fn db_error(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => StoreError::Unavailable(options::connect_failure(&e)),
        E::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            // 08 connection exception, 53 insufficient resources, 57 operator
            // intervention (shutdown, statement/lock timeout), 40001
            // serialization failure, 40P01 deadlock, 55P03 lock not available.
            let transient = code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || matches!(code.as_str(), "40001" | "40P01" | "55P03");
            if transient {
                StoreError::Unavailable(format!("{e} (SQLSTATE {code})"))
            } else {
                StoreError::Other(format!("{e} (SQLSTATE {code})"))
            }
        }
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

pub(in crate::store) fn col<'r, T>(row: &'r PgRow, index: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(index)
        .map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
}

fn arg<'q, T>(args: &mut PgArguments, value: T) -> Result<(), StoreError>
where
    T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
{
    args.add(value)
        .map_err(|e| StoreError::Other(format!("encoding a query argument: {e}")))
}

fn tags_json(tags: &Tags) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "{}".into())
}

fn parse_tags(text: &str) -> Result<Tags, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("series tags: {e}")))
}

/// `(year, month, day)` of a day number since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The day number since 1970-01-01 of a date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn day_of(ts_ms: TimestampMs) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// Days that get their own partition (years 1000..=9999, so names keep 8
/// digits); rows of other days land in the DEFAULT partition.
fn partitionable(day: i64) -> bool {
    (days_from_civil(1000, 1, 1)..=days_from_civil(9999, 12, 31)).contains(&day)
}

/// `raw_points_p20260129`: the partition of `table` holding UTC day `day`.
fn partition_name(table: TsTable, day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{}_p{y:04}{m:02}{d:02}", table.name())
}

/// The day of a partition named by [`partition_name`], if it is one.
fn partition_day(table: TsTable, name: &str) -> Option<i64> {
    let digits = name.strip_prefix(table.name())?.strip_prefix("_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = digits[..4].parse().ok()?;
    let month: u32 = digits[4..6].parse().ok()?;
    let day: u32 = digits[6..].parse().ok()?;
    let days = days_from_civil(year, month, day);
    (partition_name(table, days) == name).then_some(days)
}

fn today() -> i64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    day_of(now_ms)
}

const RESULT_COLUMNS: &str = "r.series_id, r.metric, s.tags::text, r.window_label, r.window_start, \
     r.window_end, r.count, r.sum, r.min, r.max, r.last, r.last_ts, r.sketch";

fn result_from_row(row: &PgRow) -> Result<WindowResult, StoreError> {
    let tags = parse_tags(&col::<String>(row, 2)?)?;
    let count: i64 = col(row, 6)?;
    let agg = Aggregate::from_parts(
        u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("window count {count}")))?,
        col(row, 7)?,
        col(row, 8)?,
        col(row, 9)?,
        col(row, 10)?,
        col(row, 11)?,
        &col::<Vec<u8>>(row, 12)?,
    )
    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(WindowResult {
        series_id: SeriesId::from_i64(col(row, 0)?),
        metric: col(row, 1)?,
        tags,
        window: col(row, 3)?,
        start_ms: col(row, 4)?,
        end_ms: col(row, 5)?,
        agg,
    })
}

/// The statement of [`Store::latest`]: the newest window start among the
/// matching series, then every matching row of that start.
fn latest_statement(query: &ResultQuery) -> Result<(String, PgArguments), StoreError> {
    let mut args = PgArguments::default();
    arg(&mut args, query.metric.clone())?;
    arg(&mut args, query.window.clone())?;
    let sql = if query.tags.is_empty() {
        // max() over the primary key (metric, window_label, window_start, ...)
        // is one backward index probe per partition.
        format!(
            "SELECT {RESULT_COLUMNS} FROM window_results r JOIN series s ON s.series_id = r.series_id \
             WHERE r.metric = $1 AND r.window_label = $2 AND s.metric = $1 \
             AND r.window_start = (SELECT max(w.window_start) FROM window_results w \
                                   WHERE w.metric = $1 AND w.window_label = $2) \
             ORDER BY r.series_id"
        )
    } else {
        // With a tag filter, the newest window of each matching series (one
        // probe of window_results_by_series each), so a rarely written series
        // never makes the query walk every newer window of the metric.
        arg(&mut args, tags_json(&query.tags))?;
        format!(
            "WITH sel AS MATERIALIZED (SELECT series_id, tags FROM series \
                                       WHERE metric = $1 AND tags @> $3::jsonb) \
             SELECT {RESULT_COLUMNS} FROM window_results r JOIN sel s ON s.series_id = r.series_id \
             WHERE r.metric = $1 AND r.window_label = $2 \
             AND r.window_start = (SELECT max(l.window_start) FROM sel CROSS JOIN LATERAL \
                 (SELECT w.window_start FROM window_results w \
                  WHERE w.series_id = sel.series_id AND w.metric = $1 AND w.window_label = $2 \
                  ORDER BY w.window_start DESC LIMIT 1) l) \
             ORDER BY r.series_id"
        )
    };
    Ok((sql, args))
}

/// The statement of [`Store::range`], newest first (the caller reverses), so
/// the limit keeps the newest windows and the primary key serves the order.
fn range_statement(query: &ResultQuery) -> Result<(String, PgArguments), StoreError> {
    let mut args = PgArguments::default();
    arg(&mut args, query.metric.clone())?;
    arg(&mut args, query.window.clone())?;
    arg(&mut args, query.from_ms)?;
    arg(&mut args, query.to_ms)?;
    arg(&mut args, i64::try_from(query.limit).unwrap_or(i64::MAX))?;
    let mut filter = String::new();
    if !query.tags.is_empty() {
        arg(&mut args, tags_json(&query.tags))?;
        filter.push_str(" AND s.tags @> $6::jsonb");
    }
    let sql = format!(
        "SELECT {RESULT_COLUMNS} FROM window_results r JOIN series s ON s.series_id = r.series_id \
         WHERE r.metric = $1 AND r.window_label = $2 AND r.window_start >= $3 AND r.window_start < $4 \
         AND s.metric = $1{filter} \
         ORDER BY r.window_start DESC, r.series_id DESC LIMIT $5"
    );
    Ok((sql, args))
}

/// COPY data is sent in pieces of about this many bytes, so a large commit is
/// streamed (and the server parses one piece while the next is encoded).
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// The column list of `window_results` in the order [`put_result`] writes it.
const RESULT_COPY_COLUMNS: &str = "metric, window_label, window_start, series_id, window_end, \
     count, sum, min, max, last, last_ts, sketch";

/// Data of `COPY ... FROM STDIN (FORMAT binary)`: a signature and header,
/// then per row a field count and length-prefixed big-endian fields, then
/// the trailer [`copy_in`] adds.
struct CopyData(Vec<u8>);

impl CopyData {
    fn new() -> CopyData {
        let mut buf = Vec::with_capacity(COPY_CHUNK_BYTES + 64 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        CopyData(buf)
    }

    fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) -> Result<(), sqlx::Error> {
        let len = i32::try_from(bytes.len())
            .map_err(|_| sqlx::Error::Encode("a COPY field longer than 2 GiB".into()))?;
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn int8(&mut self, value: i64) {
        self.0.extend_from_slice(&8i32.to_be_bytes());
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    fn float8(&mut self, value: f64) {
        self.0.extend_from_slice(&8i32.to_be_bytes());
        self.0.extend_from_slice(&value.to_be_bytes());
    }
}

/// Runs `statement` (a `COPY ... FROM STDIN (FORMAT binary)`) on `conn`,
/// streaming `rows` as `put` encodes them; returns the rows written.
async fn copy_in<T: Sync>(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    rows: &[T],
    put: fn(&mut CopyData, &T) -> Result<(), sqlx::Error>,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut data = CopyData::new();
    for row in rows {
        if let Err(e) = put(&mut data, row) {
            copy.abort(e.to_string()).await?;
            return Err(e);
        }
        if data.0.len() >= COPY_CHUNK_BYTES {
            let full = std::mem::replace(
                &mut data.0,
                Vec::with_capacity(COPY_CHUNK_BYTES + 64 * 1024),
            );
            copy.send(full).await?;
        }
    }
    data.0.extend_from_slice(&(-1i16).to_be_bytes());
    copy.send(data.0).await?;
    copy.finish().await
}

/// One `window_results` row, columns as in [`RESULT_COPY_COLUMNS`].
fn put_result(data: &mut CopyData, r: &&WindowResult) -> Result<(), sqlx::Error> {
    data.row(12);
    data.field(r.metric.as_bytes())?;
    data.field(r.window.as_bytes())?;
    data.int8(r.start_ms);
    data.int8(r.series_id.as_i64());
    data.int8(r.end_ms);
    data.int8(r.agg.count as i64);
    data.float8(r.agg.sum);
    data.float8(r.agg.min);
    data.float8(r.agg.max);
    data.float8(r.agg.last);
    data.int8(r.agg.last_ts);
    data.field(&r.agg.sketch_bytes())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Writes `rs` (one per key, in key order) merging each into the stored
/// window of its key (see [`super::merge_results`]): the slower path of a
/// commit, for batches holding a window that is already stored. New windows
/// are inserted; the stored ones are locked (`FOR UPDATE`, in key order, so
/// concurrent commits of two processors wait for each other rather than
/// overwrite each other), read, merged and written again. A window another
/// transaction inserts meanwhile makes the insert wait for that transaction,
/// then counts as stored. Returns the windows that were merged, as stored.
async fn merge_results_into(
    conn: &mut sqlx::PgConnection,
    rs: &[Cow<'_, WindowResult>],
) -> Result<Vec<WindowResult>, StoreError> {
    let refs: Vec<&WindowResult> = rs.iter().map(AsRef::as_ref).collect();
    let inserted: HashSet<(String, String, i64, i64)> = bind_results(
        sqlx::query(&insert_results(
            "DO NOTHING RETURNING metric, window_label, window_start, series_id",
        )),
        &refs,
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?
    .iter()
    .map(|row| Ok((col(row, 0)?, col(row, 1)?, col(row, 2)?, col(row, 3)?)))
    .collect::<Result<_, StoreError>>()?;
    let key = |r: &WindowResult| {
        (
            r.metric.clone(),
            r.window.clone(),
            r.start_ms,
            r.series_id.as_i64(),
        )
    };
    let mut merged: Vec<WindowResult> = rs
        .iter()
        .filter(|r| matches!(r, Cow::Owned(_)) && inserted.contains(&key(r)))
        .map(|r| r.clone().into_owned())
        .collect();
    let stored_before: Vec<&WindowResult> = refs
        .into_iter()
        .filter(|r| !inserted.contains(&key(r)))
        .collect();
    if stored_before.is_empty() {
        return Ok(merged);
    }
    let rows = sqlx::query(
        "SELECT r.metric, r.window_label, r.window_start, r.series_id, \
         r.count, r.sum, r.min, r.max, r.last, r.last_ts, r.sketch \
         FROM window_results r JOIN UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
         AS k(metric, window_label, window_start, series_id) \
         ON r.metric = k.metric AND r.window_label = k.window_label \
         AND r.window_start = k.window_start AND r.series_id = k.series_id \
         ORDER BY r.metric, r.window_label, r.window_start, r.series_id FOR UPDATE OF r",
    )
    .bind(
        stored_before
            .iter()
            .map(|r| r.metric.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        stored_before
            .iter()
            .map(|r| r.window.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(stored_before.iter().map(|r| r.start_ms).collect::<Vec<_>>())
    .bind(
        stored_before
            .iter()
            .map(|r| r.series_id.as_i64())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut stored: HashMap<(String, String, i64, i64), Aggregate> = HashMap::new();
    for row in &rows {
        let count: i64 = col(row, 4)?;
        let agg = Aggregate::from_parts(
            u64::try_from(count)
                .map_err(|_| StoreError::Corrupt(format!("window count {count}")))?,
            col(row, 5)?,
            col(row, 6)?,
            col(row, 7)?,
            col(row, 8)?,
            col(row, 9)?,
            &col::<Vec<u8>>(row, 10)?,
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        stored.insert(
            (col(row, 0)?, col(row, 1)?, col(row, 2)?, col(row, 3)?),
            agg,
        );
    }
    let updates: Vec<WindowResult> = stored_before
        .into_iter()
        .map(|r| match stored.get(&key(r)) {
            Some(agg) => merge_results(agg, r),
            None => r.clone(),
        })
        .collect();
    let refs: Vec<&WindowResult> = updates.iter().collect();
    bind_results(
        sqlx::query(&insert_results(
            "DO UPDATE SET window_end = EXCLUDED.window_end, count = EXCLUDED.count, \
             sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max, last = EXCLUDED.last, \
             last_ts = EXCLUDED.last_ts, sketch = EXCLUDED.sketch",
        )),
        &refs,
    )
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    merged.extend(updates);
    Ok(merged)
}

/// `INSERT INTO window_results ... ON CONFLICT (key) <on_conflict>` of the
/// arrays [`bind_results`] binds.
fn insert_results(on_conflict: &str) -> String {
    format!(
        "INSERT INTO window_results ({RESULT_COPY_COLUMNS}) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
         $6::bigint[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::bigint[], $12::bytea[]) \
         ON CONFLICT (metric, window_label, window_start, series_id) {on_conflict}"
    )
}

/// Binds `rs` column by column to an [`insert_results`] statement.
fn bind_results<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    rs: &[&WindowResult],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(rs.iter().map(|r| r.metric.clone()).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.window.clone()).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.start_ms).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.series_id.as_i64()).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.end_ms).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.count as i64).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.sum).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.min).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.max).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.last).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.last_ts).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.sketch_bytes()).collect::<Vec<_>>())
}

/// PostgreSQL/TimescaleDB-backed [`Store`].
pub struct PostgresStore {
    pool: PgPool,
    schema: String,
    /// `user@host:port/database`, for messages (never the password).
    target: String,
    mode: AtomicU8,
    /// Daily partitions known to exist (native mode).
    partitions: Mutex<HashSet<(TsTable, i64)>>,
    /// Series this store has committed (the store never deletes a series),
    /// so a commit sends only new ones: a processor names the same series
    /// in every commit, and their upsert cost about a tenth of writing the
    /// results (BENCHMARKS.md, "Window-result writes").
    known_series: Mutex<HashSet<i64>>,
    policies: Option<TimescalePolicies>,
    /// What the last policy install found, for `/readyz` (TimescaleDB mode).
    policy_status: Mutex<Option<String>>,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:pass@host:port/db`)
    /// for the tables of `schema` (see [`claim_schema`]). Call
    /// [`Store::migrate`] next.
    pub async fn connect(url: &str, schema: &str) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10));
        Self::connect_with(url, schema, pool).await
    }

    async fn connect_with(
        url: &str,
        schema: &str,
        pool: PgPoolOptions,
    ) -> Result<PostgresStore, StoreError> {
        check_schema(schema)?;
        let mut options = connect_options(url)?;
        if options.get_application_name().is_none() {
            options = options.application_name("pulse");
        }
        let target = match options.get_socket() {
            Some(socket) => format!(
                "{}@{}/{}",
                options.get_username(),
                socket.display(),
                options.get_database().unwrap_or("")
            ),
            None => format!(
                "{}@{}:{}/{}",
                options.get_username(),
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or(options.get_username())
            ),
        };
        let set_path = format!("SET search_path TO \"{schema}\"");
        let pool = pool
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move { conn.execute(set_path.as_str()).await.map(|_| ()) })
            })
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {target}: {}; check that the server runs and \
                     accepts connections there, that the database exists and that the user may log \
                     in (or fix the store url)",
                    options::connect_failure(&e)
                ))
            })?;
        let store = PostgresStore {
            pool,
            schema: schema.to_string(),
            target,
            mode: AtomicU8::new(MODE_UNKNOWN),
            partitions: Mutex::new(HashSet::new()),
            known_series: Mutex::new(HashSet::new()),
            policies: None,
            policy_status: Mutex::new(None),
        };
        let mut conn = store.pool.acquire().await.map_err(db_error)?;
        let (existing, available) = store.inspect(&mut conn).await?;
        drop(conn);
        store.set_mode(match existing.as_deref() {
            Some("p") => MODE_NATIVE,
            Some(_) => MODE_TIMESCALEDB,
            None if available => MODE_TIMESCALEDB,
            None => MODE_NATIVE,
        });
        Ok(store)
    }

    /// How the time series tables are stored: `"timescaledb"` (hypertables)
    /// or `"native-partitioning"` (daily range partitions). Before
    /// [`Store::migrate`] of a new schema this is what migrate will try.
    pub fn mode(&self) -> &'static str {
        match self.mode.load(Ordering::Relaxed) {
            MODE_TIMESCALEDB => "timescaledb",
            _ => "native-partitioning",
        }
    }

    /// Retention and compression to install as policies when the schema is
    /// (or becomes, at [`Store::migrate`]) TimescaleDB hypertables.
    pub fn with_timescale_policies(mut self, policies: TimescalePolicies) -> PostgresStore {
        self.policies = Some(policies);
        self
    }

    /// The schema this store's tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn native(&self) -> bool {
        self.mode.load(Ordering::Relaxed) != MODE_TIMESCALEDB
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }

    fn qualified(&self, name: &str) -> String {
        format!("\"{}\".\"{name}\"", self.schema)
    }

    /// The relkind of this schema's `raw_points` (if it exists) and whether
    /// the timescaledb extension is available.
    /// Runs on the caller's connection: under the migration lock that one is
    /// held, and taking a second from the pool there could wait on itself.
    async fn inspect(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<(Option<String>, bool), StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = 'raw_points'), \
                    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')",
        )
        .bind(&self.schema)
        .fetch_one(conn)
        .await
        .map_err(db_error)?;
        Ok((col(&row, 0)?, col(&row, 1)?))
    }

    fn unavailable_context(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("PostgreSQL at {}: {m}", self.target))
            }
            other => other,
        }
    }

    /// The body of `migrate`, run while holding the schema's advisory lock on `conn`.
    async fn migrate_locked(&self, conn: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        let schema = &self.schema;
        conn.execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
            .await
            .map_err(db_error)?;
        conn.execute(
            format!(
                "CREATE TABLE IF NOT EXISTS \"{schema}\".schema_migrations ( \
                     version    BIGINT PRIMARY KEY, \
                     name       TEXT NOT NULL, \
                     mode       TEXT NOT NULL, \
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            .as_str(),
        )
        .await
        .map_err(db_error)?;

        // A schema keeps its mode; a new one uses TimescaleDB when it can.
        let (existing, available) = self.inspect(&mut *conn).await?;
        let mode = match existing.as_deref() {
            Some("p") => MODE_NATIVE,
            Some(_) => MODE_TIMESCALEDB,
            None if available => {
                // Database-wide, so never in the pipeline's schema (dropping
                // that would drop the extension for every pipeline).
                let created = conn
                    .execute("CREATE EXTENSION IF NOT EXISTS timescaledb WITH SCHEMA public")
                    .await;
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
                )
                .fetch_one(&mut *conn)
                .await
                .map_err(db_error)?;
                if exists {
                    MODE_TIMESCALEDB
                } else {
                    tracing::warn!(
                        schema = %schema,
                        error = %created.err().map(|e| e.to_string()).unwrap_or_default(),
                        "timescaledb is available but cannot be created; using native partitioning"
                    );
                    MODE_NATIVE
                }
            }
            None => MODE_NATIVE,
        };
        self.set_mode(mode);

        let mut search_path = format!("\"{schema}\"");
        if mode == MODE_TIMESCALEDB {
            if let Some(ext) = timescale::extension_schema(&mut *conn).await? {
                search_path.push_str(&format!(", \"{}\"", ext.replace('"', "\"\"")));
            }
        }

        let applied: Vec<i64> = sqlx::query_scalar(
            format!("SELECT version FROM \"{schema}\".schema_migrations ORDER BY version").as_str(),
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        if let Some(newest) = applied.last()
            && *newest > MIGRATIONS.last().map_or(0, |m| m.version)
        {
            tracing::warn!(
                schema = %schema,
                version = newest,
                "the store schema is newer than this build; running with it unchanged"
            );
        }
        for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            let sql = if mode == MODE_TIMESCALEDB {
                migration.timescaledb
            } else {
                migration.native
            };
            let mut tx = sqlx::Connection::begin(&mut *conn)
                .await
                .map_err(db_error)?;
            sqlx::query("SELECT set_config('search_path', $1, true)")
                .bind(&search_path)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            (&mut *tx).execute(sql).await.map_err(|e| {
                StoreError::Other(format!(
                    "migration {} ({}) of schema {schema}: {e}",
                    migration.version, migration.name
                ))
            })?;
            sqlx::query(
                format!(
                    "INSERT INTO \"{schema}\".schema_migrations (version, name, mode) VALUES ($1, $2, $3)"
                )
                .as_str(),
            )
            .bind(migration.version)
            .bind(migration.name)
            .bind(self.mode())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            tracing::info!(schema = %schema, version = migration.version, name = migration.name, "applied store migration");
        }

        if let (false, Some(policies)) = (self.native(), &self.policies) {
            let status = timescale::install_policies(&mut *conn, schema, policies).await;
            *self.policy_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        }
        tracing::info!(
            schema = %schema,
            target = %self.target,
            mode = self.mode(),
            "store schema ready"
        );
        if self.native() {
            self.load_partitions().await?;
            let today = today();
            for table in [TsTable::Raw, TsTable::Results] {
                self.ensure_partitions(table, (today..=today + DAYS_AHEAD).collect())
                    .await?;
            }
        }
        Ok(())
    }

    /// Existing daily partitions of `table`, by name and day.
    async fn list_partitions(&self, table: TsTable) -> Result<Vec<(String, i64)>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent \
             JOIN pg_namespace n ON n.oid = p.relnamespace \
             WHERE n.nspname = $1 AND p.relname = $2",
        )
        .bind(&self.schema)
        .bind(table.name())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut parts: Vec<(String, i64)> = names
            .into_iter()
            .filter_map(|name| partition_day(table, &name).map(|day| (name, day)))
            .collect();
        parts.sort_by_key(|(_, day)| *day);
        Ok(parts)
    }

    async fn load_partitions(&self) -> Result<(), StoreError> {
        let mut found = Vec::new();
        for table in [TsTable::Raw, TsTable::Results] {
            found.extend(
                self.list_partitions(table)
                    .await?
                    .into_iter()
                    .map(|(_, day)| (table, day)),
            );
        }
        self.known().extend(found);
        Ok(())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<(TsTable, i64)>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the daily partitions of `days` not known to exist yet.
    async fn ensure_partitions(
        &self,
        table: TsTable,
        days: BTreeSet<i64>,
    ) -> Result<(), StoreError> {
        let missing: Vec<i64> = {
            let known = self.known();
            days.into_iter()
                .filter(|day| partitionable(*day) && !known.contains(&(table, *day)))
                .collect()
        };
        if missing.len() > MAX_NEW_PARTITIONS_PER_COMMIT {
            tracing::warn!(
                schema = %self.schema,
                table = table.name(),
                days = missing.len(),
                "a commit spans too many new days; the oldest go to the default partition"
            );
        }
        let skip = missing.len().saturating_sub(MAX_NEW_PARTITIONS_PER_COMMIT);
        for day in missing.into_iter().skip(skip) {
            self.create_partition(table, day).await?;
            self.known().insert((table, day));
        }
        Ok(())
    }

    /// Creates the partition of `table` for `day` unless it exists, moving the
    /// rows the DEFAULT partition holds for that day into it (attaching a
    /// partition over rows still in DEFAULT would fail).
    async fn create_partition(&self, table: TsTable, day: i64) -> Result<(), StoreError> {
        let name = partition_name(table, day);
        let part = self.qualified(&name);
        let parent = self.qualified(table.name());
        let default = self.qualified(&format!("{}_default", table.name()));
        let column = table.column();
        let (from, to) = (day * DAY_MS, (day + 1) * DAY_MS);

        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("{}:partitions", self.schema))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2)",
        )
        .bind(&self.schema)
        .bind(&name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        if exists {
            return tx.commit().await.map_err(db_error);
        }
        let ddl = format!(
            "SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'; \
             CREATE TABLE {part} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS); \
             WITH moved AS (DELETE FROM {default} WHERE {column} >= {from} AND {column} < {to} RETURNING *) \
             INSERT INTO {part} SELECT * FROM moved; \
             ALTER TABLE {parent} ATTACH PARTITION {part} FOR VALUES FROM ({from}) TO ({to});"
        );
        (&mut *tx).execute(ddl.as_str()).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        tracing::debug!(schema = %self.schema, partition = %name, "created partition");
        Ok(())
    }

    /// Drops the daily partitions of `table` wholly older than `cutoff`
    /// (for results: whose every window ended before it); returns the rows
    /// they held.
    async fn drop_partitions(
        &self,
        table: TsTable,
        cutoff: TimestampMs,
    ) -> Result<u64, StoreError> {
        let mut dropped = 0u64;
        for (name, day) in self.list_partitions(table).await? {
            if (day + 1) * DAY_MS > cutoff {
                break;
            }
            let part = self.qualified(&name);
            // Counted before the drop without locking the parent: nothing
            // writes into a day beyond retention, so the count is exact in
            // practice, and a long count never blocks commits or queries.
            let (rows, newest_end): (i64, Option<i64>) = match table {
                TsTable::Raw => (
                    sqlx::query_scalar(&format!("SELECT count(*) FROM {part}"))
                        .persistent(false)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_error)?,
                    None,
                ),
                TsTable::Results => {
                    let row = sqlx::query(&format!("SELECT count(*), max(window_end) FROM {part}"))
                        .persistent(false)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_error)?;
                    (col(&row, 0)?, col(&row, 1)?)
                }
            };
            if newest_end.is_some_and(|end| end >= cutoff) {
                continue; // a window reaching past the cutoff: rows are deleted instead
            }
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            let drop = format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'; DROP TABLE {part};");
            let outcome = (&mut *tx).execute(drop.as_str()).await;
            match outcome {
                Ok(_) => {
                    tx.commit().await.map_err(db_error)?;
                    self.known().remove(&(table, day));
                    dropped += rows as u64;
                    tracing::info!(schema = %self.schema, partition = %name, rows, "dropped expired partition");
                }
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                    tracing::warn!(schema = %self.schema, partition = %name,
                        "partition busy; deleting its expired rows instead");
                    break;
                }
                Err(e) => return Err(db_error(e)),
            }
        }
        Ok(dropped)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.unavailable_context(db_error(e)))?;
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(&self.schema)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        let outcome = self.migrate_locked(&mut conn).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&self.schema)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // Closing the session is what surely releases its lock.
            conn.close_on_drop();
        }
        outcome?;
        tracing::info!(schema = %self.schema, mode = self.mode(), target = %self.target, "PostgreSQL store ready");
        Ok(())
    }

    async fn load_checkpoint(&self, partitions: &[u32]) -> Result<Checkpoint, StoreError> {
        let mut ids: Vec<i64> = partitions.iter().map(|&p| i64::from(p)).collect();
        ids.sort_unstable();
        ids.dedup();
        // The take first, in its own transaction (rows in partition order, the
        // order commits lock them in): it waits for a commit holding a share
        // lock on the rows, and once it is in, every later commit of an
        // earlier owner is refused. The read below starts after it, so it sees
        // every commit that landed.
        let taken = sqlx::query(
            "INSERT INTO partition_owners (partition, generation) \
             SELECT UNNEST($1::bigint[]), 1 \
             ON CONFLICT (partition) DO UPDATE SET generation = partition_owners.generation + 1 \
             RETURNING partition, generation",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        // One snapshot, so offsets and open state always belong together.
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let rows = sqlx::query(
            "SELECT partition, next_offset, max_event_ts, watermark FROM checkpoints \
             WHERE partition = ANY($1) ORDER BY partition",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let open = sqlx::query(
            "SELECT partition, series_id, window_label, window_start, state FROM open_windows \
             WHERE partition = ANY($1) ORDER BY partition, series_id, window_label, window_start",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;

        let partition_of = |row: &PgRow| -> Result<u32, StoreError> {
            let p: i64 = col(row, 0)?;
            u32::try_from(p).map_err(|_| StoreError::Corrupt(format!("partition {p}")))
        };
        let mut checkpoint = Checkpoint::default();
        for row in &taken {
            let generation: i64 = col(row, 1)?;
            checkpoint.claims.push(Claim {
                partition: partition_of(row)?,
                generation: generation as u64,
            });
        }
        for row in &rows {
            let next: i64 = col(row, 1)?;
            checkpoint.partitions.push(PartitionCheckpoint {
                partition: partition_of(row)?,
                next_offset: u64::try_from(next)
                    .map_err(|_| StoreError::Corrupt(format!("next offset {next}")))?,
                max_event_ts: col(row, 2)?,
                watermark: col(row, 3)?,
            });
        }
        for row in &open {
            checkpoint.open.push(OpenWindowState {
                key: OpenWindowKey {
                    partition: partition_of(row)?,
                    series_id: SeriesId::from_i64(col(row, 1)?),
                    window: col(row, 2)?,
                    start_ms: col(row, 3)?,
                },
                state: col(row, 4)?,
            });
        }
        Ok(checkpoint)
    }

    async fn progress(&self, partitions: &[u32]) -> Result<Vec<PartitionCheckpoint>, StoreError> {
        let ids: Vec<i64> = partitions.iter().map(|&p| i64::from(p)).collect();
        let rows = sqlx::query(
            "SELECT partition, next_offset, max_event_ts, watermark FROM checkpoints \
             WHERE partition = ANY($1) ORDER BY partition",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let partition: i64 = col(row, 0)?;
            let next: i64 = col(row, 1)?;
            out.push(PartitionCheckpoint {
                partition: u32::try_from(partition)
                    .map_err(|_| StoreError::Corrupt(format!("partition {partition}")))?,
                next_offset: u64::try_from(next)
                    .map_err(|_| StoreError::Corrupt(format!("next offset {next}")))?,
                max_event_ts: col(row, 2)?,
                watermark: col(row, 3)?,
            });
        }
        Ok(out)
    }

    async fn commit(&self, commit: &Commit) -> Result<Vec<WindowResult>, StoreError> {
        // Partitions first, each in its own short transaction: DDL never sits
        // inside the commit, and an empty partition left by a failed commit is
        // harmless.
        if self.native() {
            let raw_days = commit
                .raw_points
                .iter()
                .map(|p| day_of(p.timestamp_ms))
                .collect();
            let result_days = commit.results.iter().map(|r| day_of(r.start_ms)).collect();
            self.ensure_partitions(TsTable::Raw, raw_days).await?;
            self.ensure_partitions(TsTable::Results, result_days)
                .await?;
        }

        let mut tx = self.pool.begin().await.map_err(db_error)?;

        // The fence: the writer's claims must still be current. The share
        // locks make a take wait until this transaction ends, so none can
        // slip in between this check and the commit.
        if !commit.claims.is_empty() {
            let mut claimed: Vec<i64> = commit
                .claims
                .iter()
                .map(|c| i64::from(c.partition))
                .collect();
            claimed.sort_unstable();
            claimed.dedup();
            let rows = sqlx::query(
                "SELECT partition, generation FROM partition_owners \
                 WHERE partition = ANY($1) ORDER BY partition FOR SHARE",
            )
            .bind(&claimed)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let mut current = Vec::with_capacity(rows.len());
            for row in &rows {
                let partition: i64 = col(row, 0)?;
                let generation: i64 = col(row, 1)?;
                current.push((partition as u32, generation as u64));
            }
            let stale = super::stale_claims(&commit.claims, &current);
            if !stale.is_empty() {
                tx.rollback().await.map_err(db_error)?;
                return Err(StoreError::Fenced { partitions: stale });
            }
        }

        // Series not committed before, sorted by id so concurrent commits
        // lock in one order.
        let mut series: BTreeMap<i64, (&str, &Tags)> = BTreeMap::new();
        for r in &commit.results {
            series.insert(r.series_id.as_i64(), (&r.metric, &r.tags));
        }
        for s in &commit.series {
            series
                .entry(s.series_id.as_i64())
                .or_insert((&s.metric, &s.tags));
        }
        {
            let known = self.known_series.lock().unwrap_or_else(|e| e.into_inner());
            series.retain(|id, _| !known.contains(id));
        }
        let new_series: Vec<i64> = series.keys().copied().collect();
        if !series.is_empty() {
            let metrics: Vec<&str> = series.values().map(|(m, _)| *m).collect();
            let tags: Vec<String> = series.values().map(|(_, t)| tags_json(t)).collect();
            sqlx::query(
                "INSERT INTO series (series_id, metric, tags) \
                 SELECT u.id, u.metric, u.tags::jsonb FROM UNNEST($1::bigint[], $2::text[], $3::text[]) \
                 AS u(id, metric, tags) ORDER BY u.id \
                 ON CONFLICT (series_id) DO NOTHING",
            )
            .bind(&new_series)
            .bind(&metrics)
            .bind(&tags)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }

        // Window results: one row per key, key order, merged on write.
        let rs = combine_results(&commit.results);
        let mut merged = Vec::new();
        if !rs.is_empty() {
            // A plain COPY first: a window is normally written once, and COPY
            // takes about half the time of an upsert (BENCHMARKS.md,
            // "Window-result writes"). A key that is already stored (late
            // points of a closed window, or the part of a window from another
            // partition) fails the COPY with a unique violation; then the
            // savepoint undoes it and the batch is merged into what is stored.
            (&mut *tx)
                .execute("SAVEPOINT pulse_results")
                .await
                .map_err(db_error)?;
            let statement =
                format!("COPY window_results ({RESULT_COPY_COLUMNS}) FROM STDIN (FORMAT binary)");
            let refs: Vec<&WindowResult> = rs.iter().map(AsRef::as_ref).collect();
            match copy_in(&mut tx, &statement, &refs, put_result).await {
                Ok(_) => {
                    merged.extend(
                        rs.iter()
                            .filter(|r| matches!(r, Cow::Owned(_)))
                            .map(|r| r.clone().into_owned()),
                    );
                }
                Err(e) if is_unique_violation(&e) => {
                    (&mut *tx)
                        .execute("ROLLBACK TO SAVEPOINT pulse_results")
                        .await
                        .map_err(db_error)?;
                    merged = merge_results_into(&mut tx, &rs).await?;
                }
                Err(e) => return Err(db_error(e)),
            }
        }

        if !commit.raw_points.is_empty() {
            // In the order of the `(series_id, ts)` index, so each series' new
            // rows go into the same index pages one after another: about 20 %
            // less server time than arrival order.
            let mut points: Vec<&super::RawPoint> = commit.raw_points.iter().collect();
            points.sort_unstable_by_key(|p| (p.series_id.as_i64(), p.timestamp_ms));
            copy_in(
                &mut tx,
                "COPY raw_points (series_id, ts, value) FROM STDIN (FORMAT binary)",
                &points,
                |data, p| {
                    data.row(3);
                    data.int8(p.series_id.as_i64());
                    data.int8(p.timestamp_ms);
                    data.float8(p.value);
                    Ok(())
                },
            )
            .await
            .map_err(db_error)?;
        }

        let mut open: BTreeMap<(i64, i64, &str, i64), &[u8]> = BTreeMap::new();
        for o in &commit.upsert_open {
            let k = &o.key;
            open.insert(
                (
                    i64::from(k.partition),
                    k.series_id.as_i64(),
                    &k.window,
                    k.start_ms,
                ),
                &o.state,
            );
        }
        if !open.is_empty() {
            sqlx::query(
                "INSERT INTO open_windows (partition, series_id, window_label, window_start, state) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bytea[]) \
                 ON CONFLICT (partition, series_id, window_label, window_start) \
                 DO UPDATE SET state = EXCLUDED.state",
            )
            .bind(open.keys().map(|k| k.0).collect::<Vec<_>>())
            .bind(open.keys().map(|k| k.1).collect::<Vec<_>>())
            .bind(open.keys().map(|k| k.2).collect::<Vec<_>>())
            .bind(open.keys().map(|k| k.3).collect::<Vec<_>>())
            .bind(open.values().copied().collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }

        if !commit.delete_open.is_empty() {
            let keys = &commit.delete_open;
            sqlx::query(
                "DELETE FROM open_windows o \
                 USING UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[]) \
                 AS d(partition, series_id, window_label, window_start) \
                 WHERE o.partition = d.partition AND o.series_id = d.series_id \
                 AND o.window_label = d.window_label AND o.window_start = d.window_start",
            )
            .bind(
                keys.iter()
                    .map(|k| i64::from(k.partition))
                    .collect::<Vec<_>>(),
            )
            .bind(
                keys.iter()
                    .map(|k| k.series_id.as_i64())
                    .collect::<Vec<_>>(),
            )
            .bind(keys.iter().map(|k| k.window.as_str()).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.start_ms).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }

        // Late counts, summed per key first (an upsert may touch a row once).
        let mut late: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for l in &commit.late {
            *late.entry((&l.metric, &l.window)).or_default() += l.count;
        }
        if !late.is_empty() {
            sqlx::query(
                "INSERT INTO late_points (metric, window_label, count) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
                 ON CONFLICT (metric, window_label) DO UPDATE SET count = late_points.count + EXCLUDED.count",
            )
            .bind(late.keys().map(|k| k.0).collect::<Vec<_>>())
            .bind(late.keys().map(|k| k.1).collect::<Vec<_>>())
            .bind(late.values().map(|&c| c as i64).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }

        if !commit.dead_letters.is_empty() {
            let d = &commit.dead_letters;
            sqlx::query(
                "INSERT INTO dead_letters (partition, \"offset\", reason, payload, received_at) \
                 SELECT *, $5 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bytea[]) \
                 ON CONFLICT (partition, \"offset\") DO UPDATE SET reason = EXCLUDED.reason, \
                 payload = EXCLUDED.payload, received_at = EXCLUDED.received_at",
            )
            .bind(d.iter().map(|l| i64::from(l.partition)).collect::<Vec<_>>())
            .bind(d.iter().map(|l| l.offset as i64).collect::<Vec<_>>())
            .bind(d.iter().map(|l| l.reason.as_str()).collect::<Vec<_>>())
            .bind(d.iter().map(|l| l.payload.as_slice()).collect::<Vec<_>>())
            .bind(pulse_core::now_ms())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }

        anomaly::postgres::write(&mut tx, &commit.anomalies, &commit.detectors).await?;

        let mut checkpoints: BTreeMap<u32, &PartitionCheckpoint> = BTreeMap::new();
        for p in &commit.partitions {
            checkpoints.insert(p.partition, p);
        }
        if !checkpoints.is_empty() {
            let cps: Vec<&PartitionCheckpoint> = checkpoints.into_values().collect();
            sqlx::query(
                "INSERT INTO checkpoints (partition, next_offset, max_event_ts, watermark) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                 ON CONFLICT (partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, \
                 max_event_ts = EXCLUDED.max_event_ts, watermark = EXCLUDED.watermark",
            )
            .bind(
                cps.iter()
                    .map(|p| i64::from(p.partition))
                    .collect::<Vec<_>>(),
            )
            .bind(cps.iter().map(|p| p.next_offset as i64).collect::<Vec<_>>())
            .bind(cps.iter().map(|p| p.max_event_ts).collect::<Vec<_>>())
            .bind(cps.iter().map(|p| p.watermark).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }

        tx.commit().await.map_err(db_error)?;
        self.known_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(new_series);
        Ok(merged)
    }

    async fn latest(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError> {
        let (sql, args) = latest_statement(query)?;
        let rows = sqlx::query_with(&sql, args)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(result_from_row).collect()
    }

    async fn range(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError> {
        let (sql, args) = range_statement(query)?;
        let rows = sqlx::query_with(&sql, args)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut results = rows
            .iter()
            .map(result_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        results.reverse();
        Ok(results)
    }

    async fn raw_points(
        &self,
        metric: &str,
        tags: &Tags,
        from_ms: TimestampMs,
        to_ms: TimestampMs,
    ) -> Result<Vec<Point>, StoreError> {
        let filter = if tags.is_empty() {
            ""
        } else {
            " AND s.tags @> $4::jsonb"
        };
        let sql = format!(
            "SELECT s.metric, s.tags::text, p.ts, p.value FROM raw_points p \
             JOIN series s ON s.series_id = p.series_id \
             WHERE s.metric = $1{filter} AND p.ts >= $2 AND p.ts < $3 ORDER BY p.ts, p.series_id"
        );
        let mut query = sqlx::query(&sql).bind(metric).bind(from_ms).bind(to_ms);
        if !tags.is_empty() {
            query = query.bind(tags_json(tags));
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(Point {
                    metric: col(row, 0)?,
                    tags: parse_tags(&col::<String>(row, 1)?)?,
                    timestamp_ms: col(row, 2)?,
                    value: col(row, 3)?,
                })
            })
            .collect()
    }

    async fn metrics(&self) -> Result<Vec<MetricInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.metric, count(*), \
             (SELECT max(r.window_end) FROM window_results r WHERE r.metric = s.metric) \
             FROM series s GROUP BY s.metric ORDER BY s.metric",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(MetricInfo {
                    name: col(row, 0)?,
                    series: col::<i64>(row, 1)? as u64,
                    last_window_end_ms: col(row, 2)?,
                })
            })
            .collect()
    }

    async fn late_counts(&self, metric: &str) -> Result<Vec<LateCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT window_label, count FROM late_points WHERE metric = $1 ORDER BY window_label",
        )
        .bind(metric)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(LateCount {
                    metric: metric.to_string(),
                    window: col(row, 0)?,
                    count: col::<i64>(row, 1)? as u64,
                })
            })
            .collect()
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT partition, \"offset\", reason, payload FROM dead_letters \
             ORDER BY received_at DESC, partition, \"offset\" DESC LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    partition: col::<i64>(row, 0)? as u32,
                    offset: col::<i64>(row, 1)? as u64,
                    reason: col(row, 2)?,
                    payload: col(row, 3)?,
                })
            })
            .collect()
    }

    async fn enforce_retention(
        &self,
        raw_before_ms: TimestampMs,
        results_before_ms: TimestampMs,
    ) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        // Dead letters are raw input too, kept as long as raw points.
        sqlx::query("DELETE FROM dead_letters WHERE received_at < $1")
            .bind(raw_before_ms)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        if self.native() {
            report.raw_points += self.drop_partitions(TsTable::Raw, raw_before_ms).await?;
            report.results += self
                .drop_partitions(TsTable::Results, results_before_ms)
                .await?;
        }
        let raw = sqlx::query("DELETE FROM raw_points WHERE ts < $1")
            .bind(raw_before_ms)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        // window_start < window_end, so the second condition only prunes partitions.
        let results =
            sqlx::query("DELETE FROM window_results WHERE window_end < $1 AND window_start < $1")
                .bind(results_before_ms)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        report.raw_points += raw.rows_affected();
        report.results += results.rows_affected();
        Ok(report)
    }

    async fn load_detectors(&self, partitions: &[u32]) -> Result<Vec<DetectorState>, StoreError> {
        anomaly::postgres::load_detectors(&self.pool, partitions).await
    }

    async fn anomalies(
        &self,
        query: &AnomalyQuery,
    ) -> Result<Vec<pulse_core::anomaly::Anomaly>, StoreError> {
        anomaly::postgres::query(&self.pool, query).await
    }

    async fn pending_deliveries(
        &self,
        partitions: &[u32],
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        anomaly::postgres::pending(&self.pool, partitions, limit).await
    }

    async fn mark_delivery(&self, seq: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
        anomaly::postgres::mark(&self.pool, seq, outcome).await
    }

    async fn ready(&self) -> Result<String, StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| {
                let policies = self
                    .policy_status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|status| format!("; {status}"))
                    .unwrap_or_default();
                format!(
                    "PostgreSQL at {} answers; schema {}, {}{policies}",
                    self.target,
                    self.schema,
                    self.mode()
                )
            })
            .map_err(|e| self.unavailable_context(db_error(e)))
    }
}

/// Helpers for tests that need a real PostgreSQL (or TimescaleDB).
#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::{TestDb, unique_name as unique_schema};
    use super::*;
    use crate::store::RawPoint;

    /// Runs each named store test once per mode: `native` against the plain
    /// PostgreSQL test database, `timescaledb` against TimescaleDB (see
    /// [`TestDb::timescale`], ignored unless asked for).
    macro_rules! in_both_modes {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                #[tokio::test]
                async fn native() {
                    if let Some(db) = super::TestDb::native_or_skip() {
                        super::$name(db).await;
                    }
                }

                #[tokio::test]
                #[ignore = "needs PULSE_TEST_TIMESCALE_URL (a database with the timescaledb extension); run with --ignored"]
                async fn timescaledb() {
                    super::$name(super::TestDb::timescale()).await;
                }
            }
        )*};
    }

    in_both_modes!(
        migrations_are_idempotent_and_safe_concurrently,
        a_window_written_again_merges_into_the_stored_one,
        partitions_are_created_on_demand_and_dropped_by_retention,
        latest_and_range_queries_use_indexes,
        policies_are_scheduled_with_the_configured_ages,
        writes_into_compressed_chunks_replace_and_add_rows,
    );

    /// The raw points and windows both retention tests commit: two days
    /// before the cutoff, around the cutoff's edge, and one day after.
    fn retention_fixture(old: i64, edge: i64, later: i64) -> Commit {
        Commit {
            raw_points: vec![
                point("cpu", old * DAY_MS + 1, 1.0),
                point("cpu", old * DAY_MS + 2, 2.0),
                point("cpu", edge, 3.0),
                point("cpu", edge + 7_200_000, 4.0),
                point("cpu", later * DAY_MS + 10, 5.0),
            ],
            results: vec![
                window("cpu", "a", old * DAY_MS),
                window("cpu", "b", old * DAY_MS),
                window("cpu", "a", edge),
                window("cpu", "a", edge + 7_200_000),
            ],
            ..Default::default()
        }
    }

    /// `(range start, range end)` of each chunk of `table`, in ms, sorted.
    async fn chunk_ranges(store: &PostgresStore, table: &str) -> Vec<(i64, i64)> {
        sqlx::query_as(
            "SELECT range_start_integer, range_end_integer FROM timescaledb_information.chunks \
             WHERE hypertable_schema = $1 AND hypertable_name = $2 ORDER BY 1",
        )
        .bind(&store.schema)
        .bind(table)
        .fetch_all(&store.pool)
        .await
        .unwrap()
    }

    /// Compresses every chunk of `table` now, as the compression policy
    /// does once they are old enough; returns how many are compressed.
    async fn compress_all(store: &PostgresStore, table: &str) -> i64 {
        let mut conn = store.pool.acquire().await.unwrap();
        let ext = timescale::extension_schema(&mut conn)
            .await
            .unwrap()
            .unwrap();
        let sql = format!(
            "SELECT \"{ext}\".compress_chunk(c, if_not_compressed => true) \
             FROM \"{ext}\".show_chunks('{}') c",
            store.qualified(table)
        );
        sqlx::query(&sql).execute(&mut *conn).await.unwrap();
        sqlx::query_scalar(
            "SELECT count(*) FROM timescaledb_information.chunks \
             WHERE hypertable_schema = $1 AND hypertable_name = $2 AND is_compressed",
        )
        .bind(&store.schema)
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
    }

    #[test]
    fn derived_schemas_pass_the_check() {
        for (ns, name) in [("x", "y"), ("Team-A", "web.v2"), ("ns", "prod☃")] {
            check_schema(&pulse_core::names::schema(ns, name)).unwrap();
        }
        check_schema(&pulse_core::names::schema(&"n".repeat(63), &"p".repeat(50))).unwrap();
    }

    #[test]
    fn invalid_schemas_are_refused() {
        for bad in ["", "Pulse", "a;drop", "9x", "pg_x", "a\"b", &"x".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partition_days_and_names_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for day in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        let day = days_from_civil(2026, 1, 29);
        assert_eq!(partition_name(TsTable::Raw, day), "raw_points_p20260129");
        assert_eq!(
            partition_day(TsTable::Raw, "raw_points_p20260129"),
            Some(day)
        );
        assert_eq!(
            partition_day(TsTable::Results, "raw_points_p20260129"),
            None
        );
        assert_eq!(partition_day(TsTable::Raw, "raw_points_p20261341"), None);
        assert_eq!(partition_day(TsTable::Raw, "raw_points_default"), None);
        assert_eq!(day_of(-1), -1);
        assert!(partitionable(0) && !partitionable(days_from_civil(10_000, 1, 1)));
    }

    #[tokio::test]
    async fn unreachable_database_is_unavailable_and_named() {
        let err = PostgresStore::connect("postgres://pulse@127.0.0.1:1/metricsdb", "pulse_x_y")
            .await
            .err()
            .expect("nothing listens on port 1");
        match err {
            StoreError::Unavailable(message) => {
                assert!(message.contains("127.0.0.1:1/metricsdb"), "{message}");
                assert!(message.contains("check that the server runs"), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            PostgresStore::connect("postgres://x@127.0.0.1:1/db", "Bad-Name").await,
            Err(StoreError::Other(_))
        ));
    }

    async fn table_count(store: &PostgresStore, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    async fn migrations_are_idempotent_and_safe_concurrently(db: TestDb) {
        let (one, two) = (unique_schema("mig_a"), unique_schema("mig_b"));
        db.run(&[&one, &two], async {
            let a1 = db.store(&one).await;
            let a2 = db.store(&one).await;
            let b = db.store(&two).await;
            let (r1, r2, r3) = tokio::join!(a1.migrate(), a2.migrate(), b.migrate());
            r1.unwrap();
            r2.unwrap();
            r3.unwrap();
            a1.migrate().await.unwrap();
            a2.migrate().await.unwrap();
            for store in [&a1, &b] {
                let versions: Vec<i64> =
                    sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
                        .fetch_all(&store.pool)
                        .await
                        .unwrap();
                assert_eq!(
                    versions,
                    vec![1, 2, 3, 4, 5],
                    "each schema has its own versions"
                );
                assert_eq!(store.mode(), db.mode());
                // The time series tables are what the mode makes them.
                let kinds: Vec<(String, String)> = sqlx::query_as(
                    "SELECT c.relname::text, c.relkind::text FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname IN ('raw_points', 'window_results') \
                     ORDER BY 1",
                )
                .bind(&store.schema)
                .fetch_all(&store.pool)
                .await
                .unwrap();
                let kind = if db.timescale { "r" } else { "p" };
                assert_eq!(
                    kinds,
                    [
                        ("raw_points".into(), kind.into()),
                        ("window_results".into(), kind.into())
                    ]
                );
                if db.timescale {
                    let dimensions: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT hypertable_name::text, column_name::text, integer_interval \
                         FROM timescaledb_information.dimensions WHERE hypertable_schema = $1 \
                         ORDER BY 1",
                    )
                    .bind(&store.schema)
                    .fetch_all(&store.pool)
                    .await
                    .unwrap();
                    assert_eq!(
                        dimensions,
                        [
                            ("raw_points".into(), "ts".into(), DAY_MS),
                            ("window_results".into(), "window_start".into(), DAY_MS)
                        ],
                        "hypertables with one-day chunks"
                    );
                }
            }
            // Each schema holds its own tables.
            a1.commit(&Commit {
                partitions: vec![PartitionCheckpoint {
                    partition: 0,
                    next_offset: 5,
                    max_event_ts: None,
                    watermark: None,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
            assert_eq!(a2.load_checkpoint(&[0]).await.unwrap().partitions.len(), 1);
            assert!(b.load_checkpoint(&[0]).await.unwrap().partitions.is_empty());
        })
        .await;
    }

    fn point(metric: &str, ts: i64, value: f64) -> RawPoint {
        RawPoint {
            series_id: SeriesId::of(metric, &[("host".to_string(), "a".to_string())].into()),
            timestamp_ms: ts,
            value,
        }
    }

    fn window(metric: &str, host: &str, start: i64) -> WindowResult {
        let tags: Tags = [("host".to_string(), host.to_string())].into();
        let mut agg = Aggregate::new();
        agg.add(1.0, start);
        WindowResult {
            series_id: SeriesId::of(metric, &tags),
            metric: metric.into(),
            tags,
            window: "1m".into(),
            start_ms: start,
            end_ms: start + 60_000,
            agg,
        }
    }

    /// Results go in with a plain COPY; a window already stored makes it
    /// fail, and the savepoint's fallback must then write the whole batch,
    /// merging the stored window with the new part, with the rest of the
    /// commit intact.
    async fn a_window_written_again_merges_into_the_stored_one(db: TestDb) {
        let schema = unique_schema("rewrite");
        db.run(&[&schema], async {
            let store = db.store(&schema).await;
            store.migrate().await.unwrap();
            let start = today() * DAY_MS;
            store
                .commit(&Commit {
                    results: vec![window("cpu", "a", start)],
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut again = window("cpu", "a", start);
            again.agg.add(5.0, start + 1);
            let merged = store
                .commit(&Commit {
                    results: vec![again, window("cpu", "b", start), window("mem", "a", start)],
                    raw_points: vec![point("cpu", start + 1, 5.0), point("cpu", start, 1.0)],
                    partitions: vec![PartitionCheckpoint {
                        partition: 0,
                        next_offset: 7,
                        max_event_ts: Some(start + 1),
                        watermark: None,
                    }],
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(
                merged
                    .iter()
                    .map(|r| (r.tags["host"].as_str(), r.agg.count))
                    .collect::<Vec<_>>(),
                [("a", 3)],
                "the commit names the merged window, as stored"
            );
            let query = ResultQuery {
                metric: "cpu".into(),
                window: "1m".into(),
                tags: Tags::new(),
                from_ms: start,
                to_ms: start + DAY_MS,
                limit: 10,
            };
            let stored = store.range(&query).await.unwrap();
            let summary: Vec<(String, u64, f64)> = stored
                .iter()
                .map(|r| (r.tags["host"].clone(), r.agg.count, r.agg.max))
                .collect();
            assert_eq!(
                summary,
                vec![("a".into(), 3, 5.0), ("b".into(), 1, 1.0)],
                "{stored:?}"
            );
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM window_results").await,
                3
            );
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM raw_points").await,
                2
            );
            let checkpoint = store.load_checkpoint(&[0]).await.unwrap();
            assert_eq!(checkpoint.partitions[0].next_offset, 7);
        })
        .await;
    }

    async fn partitions_are_created_on_demand_and_dropped_by_retention(db: TestDb) {
        let schema = unique_schema("parts");
        db.run(&[&schema], async {
            let store = db.store(&schema).await;
            store.migrate().await.unwrap();
            assert_eq!(store.mode(), db.mode());
            if db.timescale {
                chunks_are_created_on_demand_and_emptied_by_retention(&store).await;
                return;
            }
            let today = today();
            let exists = |table: TsTable, day: i64| {
                let store = &store;
                async move {
                    store
                        .list_partitions(table)
                        .await
                        .unwrap()
                        .iter()
                        .any(|(_, d)| *d == day)
                }
            };
            for day in today..=today + DAYS_AHEAD {
                assert!(exists(TsTable::Raw, day).await && exists(TsTable::Results, day).await);
            }

            // A row with no partition of its own lands in DEFAULT ...
            let later = today + 30;
            sqlx::query("INSERT INTO raw_points (series_id, ts, value) VALUES (1, $1, 1.0)")
                .bind(later * DAY_MS + 5)
                .execute(&store.pool)
                .await
                .unwrap();
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM raw_points_default").await,
                1
            );

            let old = today - 10;
            let edge = (today - 5) * DAY_MS; // retention cutoff - 1h
            let cutoff = edge + 3_600_000;
            store
                .commit(&retention_fixture(old, edge, later))
                .await
                .unwrap();
            // ... and moves into the partition made for that day later.
            assert!(exists(TsTable::Raw, later).await && exists(TsTable::Raw, old).await);
            assert!(exists(TsTable::Results, old).await);
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM raw_points_default").await,
                0
            );
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM window_results_default").await,
                0
            );
            let later_part = partition_name(TsTable::Raw, later);
            assert_eq!(
                table_count(&store, &format!("SELECT count(*) FROM {later_part}")).await,
                2
            );

            let report = store.enforce_retention(cutoff, cutoff).await.unwrap();
            assert_eq!(
                report,
                RetentionReport {
                    raw_points: 3,
                    results: 3
                },
                "two rows by dropping the old day's partition, one leftover row each"
            );
            assert!(!exists(TsTable::Raw, old).await && !exists(TsTable::Results, old).await);
            assert!(
                exists(TsTable::Raw, today - 5).await,
                "the partition of the cutoff stays"
            );
            assert!(exists(TsTable::Raw, today).await);
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM raw_points").await,
                3
            );
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM window_results").await,
                1
            );

            // A day whose partition was dropped is made again when written to.
            store
                .commit(&Commit {
                    raw_points: vec![point("cpu", old * DAY_MS + 3, 6.0)],
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(exists(TsTable::Raw, old).await);
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM raw_points_default").await,
                0
            );
        })
        .await;
    }

    async fn latest_and_range_queries_use_indexes(db: TestDb) {
        let schema = unique_schema("explain");
        db.run(&[&schema], async {
            let store = db.store(&schema).await;
            store.migrate().await.unwrap();
            let base = today() * DAY_MS;
            // 20 metrics x 50 series x 20 windows = 20,000 results.
            let mut results = Vec::new();
            for m in 0..20 {
                for s in 0..50 {
                    for w in 0..20 {
                        results.push(window(&format!("m{m}"), &format!("h{s}"), base + w * 60_000));
                    }
                }
            }
            store
                .commit(&Commit {
                    results,
                    ..Default::default()
                })
                .await
                .unwrap();
            sqlx::query("ANALYZE").execute(&store.pool).await.unwrap();
            // The tables holding the rows: daily partitions, or chunks.
            let populated: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid \
                 JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace \
                 WHERE n.nspname = $1 AND p.relname = 'window_results' AND c.reltuples > 0",
            )
            .bind(&schema)
            .fetch_all(&store.pool)
            .await
            .unwrap();
            assert_eq!(populated.len(), 1, "one day of rows: {populated:?}");

            let query = |tags: Tags| ResultQuery {
                metric: "m7".into(),
                window: "1m".into(),
                tags,
                from_ms: base,
                to_ms: base + DAY_MS,
                limit: 100,
            };
            let host: Tags = [("host".to_string(), "h3".to_string())].into();
            let statements = [
                ("latest", latest_statement(&query(Tags::new())).unwrap()),
                ("latest with tags", latest_statement(&query(host.clone())).unwrap()),
                ("range", range_statement(&query(Tags::new())).unwrap()),
                ("range with tags", range_statement(&query(host.clone())).unwrap()),
            ];
            for (what, (sql, args)) in statements {
                let plan: Vec<String> = sqlx::query_scalar_with(&format!("EXPLAIN {sql}"), args)
                    .fetch_all(&store.pool)
                    .await
                    .unwrap();
                let plan = plan.join("\n");
                assert!(plan.contains("Index"), "{what} uses an index:\n{plan}");
                for relation in &populated {
                    assert!(
                        !plan.contains(&format!("Seq Scan on {relation} ")),
                        "{what} scans {relation} sequentially:\n{plan}"
                    );
                }
            }

            // And the answers are right at this size.
            let latest = store.latest(&query(Tags::new())).await.unwrap();
            assert_eq!(latest.len(), 50);
            assert!(latest.iter().all(|r| r.start_ms == base + 19 * 60_000));
            let latest = store.latest(&query(host.clone())).await.unwrap();
            assert_eq!(latest.len(), 1);
            let range = store.range(&query(Tags::new())).await.unwrap();
            assert_eq!(range.len(), 100);
            assert!(range.iter().all(|r| r.start_ms >= base + 18 * 60_000));
            assert_eq!(store.range(&query(host)).await.unwrap().len(), 20);
        })
        .await;
    }

    /// TimescaleDB mode of the test above: a chunk per day written to, one
    /// day wide, and the retention pass deletes the same rows as natively.
    async fn chunks_are_created_on_demand_and_emptied_by_retention(store: &PostgresStore) {
        let today = today();
        let (old, later) = (today - 10, today + 30);
        let edge = (today - 5) * DAY_MS; // retention cutoff - 1h
        let cutoff = edge + 3_600_000;
        assert!(chunk_ranges(store, "raw_points").await.is_empty());
        store
            .commit(&retention_fixture(old, edge, later))
            .await
            .unwrap();
        let days = |days: &[i64]| -> Vec<(i64, i64)> {
            days.iter()
                .map(|d| (d * DAY_MS, (d + 1) * DAY_MS))
                .collect()
        };
        assert_eq!(
            chunk_ranges(store, "raw_points").await,
            days(&[old, today - 5, later])
        );
        assert_eq!(
            chunk_ranges(store, "window_results").await,
            days(&[old, today - 5])
        );

        let report = store.enforce_retention(cutoff, cutoff).await.unwrap();
        assert_eq!(
            report,
            RetentionReport {
                raw_points: 3,
                results: 3
            }
        );
        assert_eq!(
            table_count(store, "SELECT count(*) FROM raw_points").await,
            2
        );
        assert_eq!(
            table_count(store, "SELECT count(*) FROM window_results").await,
            1
        );
    }

    fn policies(days: u64) -> TimescalePolicies {
        TimescalePolicies {
            raw_retention: Duration::from_secs(7 * 86_400),
            result_retention: Duration::from_secs(days * 86_400),
            compress_after: Duration::from_secs(2 * 86_400),
        }
    }

    /// The jobs TimescaleDB scheduled on the store's tables:
    /// `(table, kind, age in ms)`, sorted.
    async fn jobs(store: &PostgresStore) -> Vec<(String, String, i64)> {
        sqlx::query_as(
            "SELECT hypertable_name::text, proc_name::text, \
                    COALESCE(config->>'drop_after', config->>'compress_after')::bigint \
             FROM timescaledb_information.jobs WHERE hypertable_schema = $1 ORDER BY 1, 2",
        )
        .bind(&store.schema)
        .fetch_all(&store.pool)
        .await
        .unwrap()
    }

    /// Policies are installed (with the pool's `search_path` holding only
    /// the pipeline's schema), scheduled with the configured ages, replaced
    /// when the config changes, and said in `/readyz`; natively there are none.
    async fn policies_are_scheduled_with_the_configured_ages(db: TestDb) {
        let schema = unique_schema("policies");
        db.run(&[&schema], async {
            let store = db
                .store(&schema)
                .await
                .with_timescale_policies(policies(90));
            store.migrate().await.unwrap();
            let ready = store.ready().await.unwrap();
            if !db.timescale {
                assert!(!ready.contains("TimescaleDB"), "{ready}");
                return;
            }
            assert!(
                ready.contains("TimescaleDB retention and compression policies scheduled"),
                "{ready}"
            );
            let day = DAY_MS;
            let expected = |result_days: i64| {
                vec![
                    ("raw_points".into(), "policy_compression".into(), 2 * day),
                    ("raw_points".into(), "policy_retention".into(), 7 * day),
                    (
                        "window_results".into(),
                        "policy_compression".into(),
                        2 * day,
                    ),
                    (
                        "window_results".into(),
                        "policy_retention".into(),
                        result_days * day,
                    ),
                ]
            };
            assert_eq!(jobs(&store).await, expected(90));
            let settings: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT c.relname::text, s.segmentby, s.orderby \
                 FROM timescaledb_information.hypertable_compression_settings s \
                 JOIN pg_class c ON c.oid = s.hypertable \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 ORDER BY 1",
            )
            .bind(&schema)
            .fetch_all(&store.pool)
            .await
            .unwrap();
            assert_eq!(
                settings,
                [
                    ("raw_points".into(), "series_id".into(), "ts".into()),
                    (
                        "window_results".into(),
                        "metric,window_label".into(),
                        "window_start DESC,series_id DESC".into()
                    ),
                ]
            );
            drop(store);

            // A restart with another retention replaces the job, once.
            let store = db
                .store(&schema)
                .await
                .with_timescale_policies(policies(30));
            store.migrate().await.unwrap();
            assert_eq!(jobs(&store).await, expected(30));
        })
        .await;
    }

    /// A late point rewrites a window whose chunk is compressed already:
    /// the COPY, its merging fallback and raw points all write into it.
    async fn writes_into_compressed_chunks_replace_and_add_rows(db: TestDb) {
        let schema = unique_schema("compressed");
        db.run(&[&schema], async {
            let store = db
                .store(&schema)
                .await
                .with_timescale_policies(policies(90));
            store.migrate().await.unwrap();
            let start = (today() - 3) * DAY_MS;
            store
                .commit(&Commit {
                    results: vec![window("cpu", "a", start), window("cpu", "b", start)],
                    raw_points: vec![point("cpu", start, 1.0)],
                    ..Default::default()
                })
                .await
                .unwrap();
            if db.timescale {
                assert_eq!(compress_all(&store, "window_results").await, 1);
                assert_eq!(compress_all(&store, "raw_points").await, 1);
            }
            // The late point's partial of window a.
            let mut again = window("cpu", "a", start);
            again.agg = Aggregate::new();
            again.agg.add(7.0, start + 5);
            // A new window into the compressed chunk: COPY.
            store
                .commit(&Commit {
                    results: vec![window("cpu", "a", start + 60_000)],
                    raw_points: vec![point("cpu", start + 5, 7.0)],
                    ..Default::default()
                })
                .await
                .unwrap();
            // A stored window again: COPY fails, the merge rewrites it.
            store
                .commit(&Commit {
                    results: vec![again],
                    ..Default::default()
                })
                .await
                .unwrap();
            let query = ResultQuery {
                metric: "cpu".into(),
                window: "1m".into(),
                tags: Tags::new(),
                from_ms: start,
                to_ms: start + DAY_MS,
                limit: 10,
            };
            let stored: Vec<(String, i64, u64, f64)> = store
                .range(&query)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.tags["host"].clone(), r.start_ms, r.agg.count, r.agg.max))
                .collect();
            assert_eq!(
                stored,
                [
                    ("a".into(), start, 2, 7.0),
                    ("b".into(), start, 1, 1.0),
                    ("a".into(), start + 60_000, 1, 1.0)
                ]
            );
            let latest = store.latest(&query).await.unwrap();
            assert_eq!(latest.len(), 1);
            assert_eq!(latest[0].start_ms, start + 60_000);
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM window_results").await,
                3
            );
            assert_eq!(
                table_count(&store, "SELECT count(*) FROM raw_points").await,
                2
            );
        })
        .await;
    }
}
