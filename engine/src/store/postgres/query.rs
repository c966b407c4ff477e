//! The read side: the statements of the query API (latest window, range,
//! raw points, metrics, late counts, dead letters) and the decoding of
//! their rows. The statements are built as values so tests can `EXPLAIN`
//! exactly what runs.

use pulse_core::{Point, SeriesId, Tags, TimestampMs, WindowResult};
use sqlx::postgres::{PgArguments, PgPool, PgRow};

use super::sql::{arg, col, db_error, parse_tags, tags_json};
#[cfg(doc)]
use crate::store::Store;
use crate::store::{DeadLetter, LateCount, MetricInfo, ResultQuery, StoreError, columns};

/// The columns [`result_from_row`] reads, of `window_results r JOIN series s`.
fn result_columns() -> String {
    format!(
        "r.series_id, r.metric, s.tags::text, r.window_label, r.window_start, r.window_end, {}",
        columns::agg_columns("r")
    )
}

/// A window result from a row of [`result_columns`].
fn result_from_row(row: &PgRow) -> Result<WindowResult, StoreError> {
    let tags = parse_tags(&col::<String>(row, 2)?)?;
    let agg = columns::aggregate_at(row, 6)?;
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
pub(super) fn latest_statement(query: &ResultQuery) -> Result<(String, PgArguments), StoreError> {
    let mut args = PgArguments::default();
    arg(&mut args, query.metric.clone())?;
    arg(&mut args, query.window.clone())?;
    let columns = result_columns();
    let sql = if query.tags.is_empty() {
        // max() over the primary key (metric, window_label, window_start, ...)
        // is one backward index probe per partition.
        format!(
            "SELECT {columns} FROM window_results r JOIN series s ON s.series_id = r.series_id \
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
             SELECT {columns} FROM window_results r JOIN sel s ON s.series_id = r.series_id \
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
pub(super) fn range_statement(query: &ResultQuery) -> Result<(String, PgArguments), StoreError> {
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
    let columns = result_columns();
    let sql = format!(
        "SELECT {columns} FROM window_results r JOIN series s ON s.series_id = r.series_id \
         WHERE r.metric = $1 AND r.window_label = $2 AND r.window_start >= $3 AND r.window_start < $4 \
         AND s.metric = $1{filter} \
         ORDER BY r.window_start DESC, r.series_id DESC LIMIT $5"
    );
    Ok((sql, args))
}

/// The newest window of the matching series ([`Store::latest`]).
pub(super) async fn latest(
    pool: &PgPool,
    query: &ResultQuery,
) -> Result<Vec<WindowResult>, StoreError> {
    let (sql, args) = latest_statement(query)?;
    let rows = sqlx::query_with(&sql, args)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
    rows.iter().map(result_from_row).collect()
}

/// Windows in a time range, oldest first ([`Store::range`]).
pub(super) async fn range(
    pool: &PgPool,
    query: &ResultQuery,
) -> Result<Vec<WindowResult>, StoreError> {
    let (sql, args) = range_statement(query)?;
    let rows = sqlx::query_with(&sql, args)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
    let mut results = rows
        .iter()
        .map(result_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    results.reverse();
    Ok(results)
}

/// Raw points of a metric in a time range ([`Store::raw_points`]).
pub(super) async fn raw_points(
    pool: &PgPool,
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
    let rows = query.fetch_all(pool).await.map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok(Point {
                metric: col(row, 0)?,
                tags: parse_tags(&col::<String>(row, 1)?)?,
                timestamp_ms: col(row, 2)?,
                value: col(row, 3)?,
                kind: pulse_core::MetricKind::Gauge,
                sketch: None,
            })
        })
        .collect()
}

/// Every metric with its series count and newest window end ([`Store::metrics`]).
pub(super) async fn metrics(pool: &PgPool) -> Result<Vec<MetricInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT s.metric, count(*), \
         (SELECT max(r.window_end) FROM window_results r WHERE r.metric = s.metric), \
         (SELECT r.kind FROM window_results r WHERE r.metric = s.metric \
          ORDER BY r.window_end DESC LIMIT 1) \
         FROM series s GROUP BY s.metric ORDER BY s.metric",
    )
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok(MetricInfo {
                name: col(row, 0)?,
                series: col::<i64>(row, 1)? as u64,
                last_window_end_ms: col(row, 2)?,
                kind: col::<Option<i32>>(row, 3)?
                    .map(columns::kind)
                    .transpose()?,
            })
        })
        .collect()
}

/// Late points counted per window of a metric ([`Store::late_counts`]).
pub(super) async fn late_counts(pool: &PgPool, metric: &str) -> Result<Vec<LateCount>, StoreError> {
    let rows = sqlx::query(
        "SELECT window_label, count FROM late_points WHERE metric = $1 ORDER BY window_label",
    )
    .bind(metric)
    .fetch_all(pool)
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

/// The newest dead letters ([`Store::dead_letters`]).
pub(super) async fn dead_letters(
    pool: &PgPool,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = sqlx::query(
        "SELECT partition, \"offset\", reason, payload FROM dead_letters \
         ORDER BY received_at DESC, partition, \"offset\" DESC LIMIT $1",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
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
