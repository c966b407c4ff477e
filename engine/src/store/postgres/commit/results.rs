//! Window results, the part of a commit that merges: a plain binary COPY
//! when every window is new, and when one is stored already, an upsert that
//! merges each part into the stored window (see [`merge_results`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use pulse_core::{Aggregate, WindowResult};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Executor, PgConnection, Postgres};

use super::super::copy::{CopyData, copy_in};
use super::super::sql::{col, db_error, is_unique_violation};
use crate::store::{StoreError, columns, combine_results, merge_results};

/// The column list of `window_results` in the order [`put_result`] writes it.
fn result_copy_columns() -> String {
    format!(
        "metric, window_label, window_start, series_id, window_end, {}",
        columns::WRITE_COLUMNS
    )
}

/// Writes `results` (parts of one window combined first, in key order) and
/// returns the windows that were merged with another part, as stored.
pub(super) async fn write(
    tx: &mut PgConnection,
    results: &[WindowResult],
) -> Result<Vec<WindowResult>, StoreError> {
    let rs = combine_results(results);
    if rs.is_empty() {
        return Ok(Vec::new());
    }
    // A plain COPY first: a window is normally written once, and COPY
    // takes about half the time of an upsert (BENCHMARKS.md,
    // "Window-result writes"). A key that is already stored (late
    // points of a closed window, or the part of a window from another
    // partition) fails the COPY with a unique violation; then the
    // savepoint undoes it and the batch is merged into what is stored.
    tx.execute("SAVEPOINT pulse_results")
        .await
        .map_err(db_error)?;
    let statement = format!(
        "COPY window_results ({}) FROM STDIN (FORMAT binary)",
        result_copy_columns()
    );
    let refs: Vec<&WindowResult> = rs.iter().map(AsRef::as_ref).collect();
    match copy_in(tx, &statement, &refs, put_result).await {
        Ok(_) => Ok(rs
            .iter()
            .filter(|r| matches!(r, Cow::Owned(_)))
            .map(|r| r.clone().into_owned())
            .collect()),
        Err(e) if is_unique_violation(&e) => {
            tx.execute("ROLLBACK TO SAVEPOINT pulse_results")
                .await
                .map_err(db_error)?;
            merge_results_into(tx, &rs).await
        }
        Err(e) => Err(db_error(e)),
    }
}

/// One `window_results` row, columns as in [`result_copy_columns`].
fn put_result(data: &mut CopyData, r: &&WindowResult) -> Result<(), sqlx::Error> {
    data.row(5 + columns::WRITE_COLUMN_COUNT as i16);
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
    data.field(&r.agg.sketch_bytes())?;
    data.int4(r.agg.kind.code());
    data.float8(r.agg.first);
    data.int8(r.agg.first_ts);
    data.float8(r.agg.increase);
    for p in columns::percentiles(&r.agg) {
        match p {
            Some(p) => data.float8(p),
            None => data.null(),
        }
    }
    Ok(())
}

/// Writes `rs` (one per key, in key order) merging each into the stored
/// window of its key (see [`merge_results`]): the slower path of a
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
    let rows = sqlx::query(&format!(
        "SELECT r.metric, r.window_label, r.window_start, r.series_id, {} \
         FROM window_results r JOIN UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
         AS k(metric, window_label, window_start, series_id) \
         ON r.metric = k.metric AND r.window_label = k.window_label \
         AND r.window_start = k.window_start AND r.series_id = k.series_id \
         ORDER BY r.metric, r.window_label, r.window_start, r.series_id FOR UPDATE OF r",
        columns::agg_columns("r")
    ))
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
        let agg = columns::aggregate_at(row, 4)?;
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
        sqlx::query(&insert_results(&format!(
            "DO UPDATE SET window_end = EXCLUDED.window_end, {}",
            columns::WRITE_COLUMNS
                .split(", ")
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
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
        "INSERT INTO window_results ({}) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
         $6::bigint[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::bigint[], $12::bytea[], \
         $13::int4[], $14::float8[], $15::bigint[], $16::float8[], \
         $17::float8[], $18::float8[], $19::float8[], $20::float8[]) \
         ON CONFLICT (metric, window_label, window_start, series_id) {on_conflict}",
        result_copy_columns()
    )
}

/// Binds `rs` column by column to an [`insert_results`] statement.
fn bind_results<'q>(
    query: Query<'q, Postgres, PgArguments>,
    rs: &[&WindowResult],
) -> Query<'q, Postgres, PgArguments> {
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
        .bind(rs.iter().map(|r| r.agg.kind.code()).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.first).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.first_ts).collect::<Vec<_>>())
        .bind(rs.iter().map(|r| r.agg.increase).collect::<Vec<_>>())
        .bind(percentile_column(rs, 0))
        .bind(percentile_column(rs, 1))
        .bind(percentile_column(rs, 2))
        .bind(percentile_column(rs, 3))
}

/// The `i`th of [`columns::percentiles`] of every result.
fn percentile_column(rs: &[&WindowResult], i: usize) -> Vec<Option<f64>> {
    rs.iter().map(|r| columns::percentiles(&r.agg)[i]).collect()
}
