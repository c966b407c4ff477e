//! The embedded store: SQLite through sqlx, for `pulse up` and fast tests.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use async_trait::async_trait;
use pulse_core::{Aggregate, Point, SeriesId, Tags, TimestampMs, WindowResult};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{
    columns,
    AnomalyQuery, Checkpoint, Claim, Commit, DeadLetter, Delivery, DeliveryOutcome, DetectorState,
    LateCount, MetricInfo, OpenWindowKey, OpenWindowState, PartitionCheckpoint, ResultQuery,
    RetentionReport, Store, StoreError, anomaly, combine_results, merge_results,
};

/// Rows per multi-row statement; 20 parameters each stays below SQLite's
/// limit of 32 766.
const CHUNK: usize = 1_000;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    pool: SqlitePool,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Opens (or creates) the database file at `path`. Call [`Store::migrate`] next.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let pool = crate::sqlite::open_pool(path, "store")
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(SqliteStore { pool })
    }
}

/// The SQL condition selecting `query`'s series, joined as `s`. The tag filter
/// is one JSON bind matched through `json_each`, so the statement has the same
/// size (and expression depth) however many filters are given.
fn push_series_filter(sql: &mut QueryBuilder<'_, Sqlite>, metric: &str, tags: &Tags) {
    sql.push(" s.metric = ").push_bind(metric.to_string());
    if !tags.is_empty() {
        let filter = serde_json::to_string(tags).expect("string pairs serialize");
        sql.push(" AND (SELECT count(*) FROM json_each(s.tags) t JOIN json_each(")
            .push_bind(filter)
            .push(") f ON t.key = f.key AND t.value = f.value) = ")
            .push_bind(i64::try_from(tags.len()).unwrap_or(i64::MAX));
    }
}

/// `SELECT <the columns [`result_from_row`] reads> FROM ... WHERE `.
fn select_results() -> String {
    format!(
        "SELECT r.series_id, r.metric, s.tags, r.window_label, r.window_start, r.window_end, {} \
         FROM window_results r JOIN series s ON s.series_id = r.series_id WHERE ",
        columns::agg_columns("r")
    )
}

fn result_from_row(row: &SqliteRow) -> Result<WindowResult, StoreError> {
    let tags: String = row.get(2);
    let tags: Tags = serde_json::from_str(&tags)
        .map_err(|e| StoreError::Corrupt(format!("series tags: {e}")))?;
    let agg = columns::aggregate_at(row, 6)?;
    Ok(WindowResult {
        series_id: SeriesId::from_i64(row.get(0)),
        metric: row.get(1),
        tags,
        window: row.get(3),
        start_ms: row.get(4),
        end_ms: row.get(5),
        agg,
    })
}

/// Writes a commit's window results, merging each into the stored window of
/// its key (see [`super::merge_results`]): new windows are inserted, and only
/// the keys already stored are read, merged and written again. The commit's
/// earlier writes hold SQLite's write lock, so nothing changes in between.
/// Returns the windows that were merged, as stored.
async fn write_results(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    results: &[WindowResult],
) -> Result<Vec<WindowResult>, StoreError> {
    let mut merged = Vec::new();
    for chunk in combine_results(results).chunks(CHUNK) {
        let mut sql = insert_results(chunk);
        sql.push(
            " ON CONFLICT (metric, window_label, window_start, series_id) DO NOTHING \
             RETURNING metric, window_label, window_start, series_id",
        );
        let rows = sql
            .build()
            .fetch_all(&mut **tx)
            .await
            .map_err(unavailable)?;
        let inserted: HashSet<(String, String, i64, i64)> = rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect();
        let mut stored_before = Vec::new();
        for r in chunk {
            let key = (
                r.metric.clone(),
                r.window.clone(),
                r.start_ms,
                r.series_id.as_i64(),
            );
            if !inserted.contains(&key) {
                stored_before.push(r.as_ref());
            } else if matches!(r, Cow::Owned(_)) {
                merged.push(r.clone().into_owned());
            }
        }
        if stored_before.is_empty() {
            continue;
        }
        let mut sql = QueryBuilder::<Sqlite>::new(format!(
            "SELECT metric, window_label, window_start, series_id, {} FROM window_results \
             WHERE (metric, window_label, window_start, series_id) IN (VALUES ",
            columns::AGG_COLUMNS
        ));
        let mut keys = sql.separated(", ");
        for r in &stored_before {
            keys.push("(")
                .push_bind_unseparated(r.metric.clone())
                .push_unseparated(", ")
                .push_bind_unseparated(r.window.clone())
                .push_unseparated(", ")
                .push_bind_unseparated(r.start_ms)
                .push_unseparated(", ")
                .push_bind_unseparated(r.series_id.as_i64())
                .push_unseparated(")");
        }
        sql.push(")");
        let rows = sql
            .build()
            .fetch_all(&mut **tx)
            .await
            .map_err(unavailable)?;
        let mut stored: BTreeMap<(String, String, i64, i64), Aggregate> = BTreeMap::new();
        for row in &rows {
            let agg = columns::aggregate_at(row, 4)?;
            stored.insert((row.get(0), row.get(1), row.get(2), row.get(3)), agg);
        }
        let updates: Vec<Cow<'_, WindowResult>> = stored_before
            .iter()
            .map(|r| {
                let key = (
                    r.metric.clone(),
                    r.window.clone(),
                    r.start_ms,
                    r.series_id.as_i64(),
                );
                Cow::Owned(match stored.get(&key) {
                    Some(agg) => merge_results(agg, r),
                    None => (*r).clone(),
                })
            })
            .collect();
        let mut sql = insert_results(&updates);
        sql.push(format!(
            " ON CONFLICT (metric, window_label, window_start, series_id) DO UPDATE SET \
             window_end = excluded.window_end, {}",
            columns::WRITE_COLUMNS
                .split(", ")
                .map(|c| format!("{c} = excluded.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        sql.build().execute(&mut **tx).await.map_err(unavailable)?;
        merged.extend(updates.into_iter().map(Cow::into_owned));
    }
    Ok(merged)
}

/// `INSERT INTO window_results (...) VALUES (...), ...` of `rows`.
fn insert_results<'a>(rows: &'a [Cow<'a, WindowResult>]) -> QueryBuilder<'a, Sqlite> {
    let mut sql = QueryBuilder::<Sqlite>::new(format!(
        "INSERT INTO window_results (metric, window_label, window_start, series_id, window_end, {}) ",
        columns::WRITE_COLUMNS
    ));
    sql.push_values(rows, |mut b, r| {
        let [p50, p90, p95, p99] = columns::percentiles(&r.agg);
        b.push_bind(r.metric.as_str())
            .push_bind(r.window.as_str())
            .push_bind(r.start_ms)
            .push_bind(r.series_id.as_i64())
            .push_bind(r.end_ms)
            .push_bind(r.agg.count as i64)
            .push_bind(r.agg.sum)
            .push_bind(r.agg.min)
            .push_bind(r.agg.max)
            .push_bind(r.agg.last)
            .push_bind(r.agg.last_ts)
            .push_bind(r.agg.sketch_bytes())
            .push_bind(r.agg.kind.code())
            .push_bind(r.agg.first)
            .push_bind(r.agg.first_ts)
            .push_bind(r.agg.increase)
            .push_bind(p50)
            .push_bind(p90)
            .push_bind(p95)
            .push_bind(p99);
    });
    sql
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Other(format!("migrating the embedded store: {e}")))
    }

    async fn load_checkpoint(&self, partitions: &[u32]) -> Result<Checkpoint, StoreError> {
        let mut checkpoint = Checkpoint::default();
        // The bump is the transaction's first statement, so it holds the
        // write lock from there on: the reads below see every commit that
        // landed before, and none lands in between.
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        for &partition in partitions {
            let generation: i64 = sqlx::query_scalar(
                "INSERT INTO partition_owners (partition, generation) VALUES (?, 1) \
                 ON CONFLICT (partition) DO UPDATE SET generation = generation + 1 \
                 RETURNING generation",
            )
            .bind(i64::from(partition))
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            checkpoint.claims.push(Claim {
                partition,
                generation: generation as u64,
            });
        }
        for &partition in partitions {
            let row = sqlx::query(
                "SELECT next_offset, max_event_ts, watermark FROM checkpoints WHERE partition = ?",
            )
            .bind(i64::from(partition))
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            if let Some(row) = row {
                checkpoint.partitions.push(PartitionCheckpoint {
                    partition,
                    next_offset: row.get::<i64, _>(0) as u64,
                    max_event_ts: row.get(1),
                    watermark: row.get(2),
                });
            }
            let open = sqlx::query(
                "SELECT series_id, window_label, window_start, state FROM open_windows WHERE partition = ?",
            )
            .bind(i64::from(partition))
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
            checkpoint
                .open
                .extend(open.into_iter().map(|row| OpenWindowState {
                    key: OpenWindowKey {
                        partition,
                        series_id: SeriesId::from_i64(row.get(0)),
                        window: row.get(1),
                        start_ms: row.get(2),
                    },
                    state: row.get(3),
                }));
            checkpoint
                .marks
                .extend(super::marks::sqlite::load(&mut tx, partition).await?);
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(checkpoint)
    }

    async fn progress(&self, partitions: &[u32]) -> Result<Vec<PartitionCheckpoint>, StoreError> {
        let mut out = Vec::new();
        for &partition in partitions {
            let row = sqlx::query(
                "SELECT next_offset, max_event_ts, watermark FROM checkpoints WHERE partition = ?",
            )
            .bind(i64::from(partition))
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            out.extend(row.map(|row| PartitionCheckpoint {
                partition,
                next_offset: row.get::<i64, _>(0) as u64,
                max_event_ts: row.get(1),
                watermark: row.get(2),
            }));
        }
        Ok(out)
    }

    async fn commit(&self, commit: &Commit) -> Result<Vec<WindowResult>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;

        let mut series: BTreeMap<SeriesId, (&str, &Tags)> = BTreeMap::new();
        for r in &commit.results {
            series.insert(r.series_id, (&r.metric, &r.tags));
        }
        for s in &commit.series {
            series.entry(s.series_id).or_insert((&s.metric, &s.tags));
        }
        let series: Vec<_> = series.into_iter().collect();
        for chunk in series.chunks(CHUNK) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "INSERT OR IGNORE INTO series (series_id, metric, tags) ",
            );
            sql.push_values(chunk, |mut b, (id, (metric, tags))| {
                b.push_bind(id.as_i64())
                    .push_bind(metric.to_string())
                    .push_bind(serde_json::to_string(tags).unwrap_or_default());
            });
            sql.build().execute(&mut *tx).await.map_err(unavailable)?;
        }

        let merged = write_results(&mut tx, &commit.results).await?;

        for chunk in commit.raw_points.chunks(CHUNK * 4) {
            let mut sql =
                QueryBuilder::<Sqlite>::new("INSERT INTO raw_points (series_id, ts, value) ");
            sql.push_values(chunk, |mut b, p| {
                b.push_bind(p.series_id.as_i64())
                    .push_bind(p.timestamp_ms)
                    .push_bind(p.value);
            });
            sql.build().execute(&mut *tx).await.map_err(unavailable)?;
        }

        for chunk in commit.upsert_open.chunks(CHUNK) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "INSERT INTO open_windows (partition, series_id, window_label, window_start, state) ",
            );
            sql.push_values(chunk, |mut b, o| {
                b.push_bind(i64::from(o.key.partition))
                    .push_bind(o.key.series_id.as_i64())
                    .push_bind(&o.key.window)
                    .push_bind(o.key.start_ms)
                    .push_bind(&o.state);
            });
            sql.push(" ON CONFLICT (partition, series_id, window_label, window_start) DO UPDATE SET state = excluded.state");
            sql.build().execute(&mut *tx).await.map_err(unavailable)?;
        }

        for key in &commit.delete_open {
            sqlx::query(
                "DELETE FROM open_windows WHERE partition = ? AND series_id = ? AND window_label = ? AND window_start = ?",
            )
            .bind(i64::from(key.partition))
            .bind(key.series_id.as_i64())
            .bind(&key.window)
            .bind(key.start_ms)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }

        for late in &commit.late {
            sqlx::query(
                "INSERT INTO late_points (metric, window_label, count) VALUES (?, ?, ?) \
                 ON CONFLICT (metric, window_label) DO UPDATE SET count = count + excluded.count",
            )
            .bind(&late.metric)
            .bind(&late.window)
            .bind(late.count as i64)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }

        let received_at = pulse_core::now_ms();
        for d in &commit.dead_letters {
            sqlx::query(
                "INSERT OR REPLACE INTO dead_letters (partition, \"offset\", reason, payload, received_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(i64::from(d.partition))
            .bind(d.offset as i64)
            .bind(&d.reason)
            .bind(&d.payload)
            .bind(received_at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }

        anomaly::sqlite::write(&mut tx, &commit.anomalies, &commit.detectors).await?;
        super::marks::sqlite::write(&mut tx, &commit.upsert_marks, &commit.delete_marks).await?;

        for p in &commit.partitions {
            sqlx::query(
                "INSERT INTO checkpoints (partition, next_offset, max_event_ts, watermark) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset, \
                 max_event_ts = excluded.max_event_ts, watermark = excluded.watermark",
            )
            .bind(i64::from(p.partition))
            .bind(p.next_offset as i64)
            .bind(p.max_event_ts)
            .bind(p.watermark)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }

        // Checked last: after the writes above the transaction holds the
        // write lock, so no take can land between this check and the commit.
        if !commit.claims.is_empty() {
            let rows = sqlx::query("SELECT partition, generation FROM partition_owners")
                .fetch_all(&mut *tx)
                .await
                .map_err(unavailable)?;
            let current: Vec<(u32, u64)> = rows
                .iter()
                .map(|r| (r.get::<i64, _>(0) as u32, r.get::<i64, _>(1) as u64))
                .collect();
            let stale = super::stale_claims(&commit.claims, &current);
            if !stale.is_empty() {
                tx.rollback().await.map_err(unavailable)?;
                return Err(StoreError::Fenced { partitions: stale });
            }
        }

        tx.commit().await.map_err(unavailable)?;
        Ok(merged)
    }

    async fn latest(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError> {
        let mut sql = QueryBuilder::<Sqlite>::new(select_results());
        push_series_filter(&mut sql, &query.metric, &query.tags);
        sql.push(" AND r.window_label = ")
            .push_bind(query.window.clone());
        sql.push(" AND r.window_start = (SELECT MAX(r.window_start) FROM window_results r JOIN series s ON s.series_id = r.series_id WHERE ");
        push_series_filter(&mut sql, &query.metric, &query.tags);
        sql.push(" AND r.window_label = ")
            .push_bind(query.window.clone())
            .push(")");
        sql.push(" AND r.metric = ").push_bind(query.metric.clone());
        let rows = sql
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(result_from_row).collect()
    }

    async fn range(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError> {
        let mut sql = QueryBuilder::<Sqlite>::new(select_results());
        push_series_filter(&mut sql, &query.metric, &query.tags);
        sql.push(" AND r.metric = ").push_bind(query.metric.clone());
        sql.push(" AND r.window_label = ")
            .push_bind(query.window.clone());
        sql.push(" AND r.window_start >= ").push_bind(query.from_ms);
        sql.push(" AND r.window_start < ").push_bind(query.to_ms);
        sql.push(" ORDER BY r.window_start DESC, r.series_id LIMIT ")
            .push_bind(query.limit as i64);
        let rows = sql
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
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
        let mut sql = QueryBuilder::<Sqlite>::new(
            "SELECT s.metric, s.tags, p.ts, p.value FROM raw_points p JOIN series s ON s.series_id = p.series_id WHERE ",
        );
        push_series_filter(&mut sql, metric, tags);
        sql.push(" AND p.ts >= ")
            .push_bind(from_ms)
            .push(" AND p.ts < ")
            .push_bind(to_ms);
        sql.push(" ORDER BY p.ts, p.rowid");
        let rows = sql
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let tags: String = row.get(1);
                Ok(Point {
                    metric: row.get(0),
                    tags: serde_json::from_str(&tags)
                        .map_err(|e| StoreError::Corrupt(format!("series tags: {e}")))?,
                    timestamp_ms: row.get(2),
                    value: row.get(3),
                    kind: pulse_core::MetricKind::Gauge,
                    sketch: None,
                })
            })
            .collect()
    }

    async fn metrics(&self) -> Result<Vec<MetricInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.metric, COUNT(*), (SELECT MAX(r.window_end) FROM window_results r WHERE r.metric = s.metric), \
             (SELECT r.kind FROM window_results r WHERE r.metric = s.metric ORDER BY r.window_end DESC LIMIT 1) \
             FROM series s GROUP BY s.metric ORDER BY s.metric",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                Ok(MetricInfo {
                    name: row.get(0),
                    series: row.get::<i64, _>(1) as u64,
                    last_window_end_ms: row.get(2),
                    kind: row
                        .get::<Option<i32>, _>(3)
                        .map(columns::kind)
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn late_counts(&self, metric: &str) -> Result<Vec<LateCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT window_label, count FROM late_points WHERE metric = ? ORDER BY window_label",
        )
        .bind(metric)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|row| LateCount {
                metric: metric.to_string(),
                window: row.get(0),
                count: row.get::<i64, _>(1) as u64,
            })
            .collect())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT partition, \"offset\", reason, payload FROM dead_letters \
             ORDER BY received_at DESC, partition, \"offset\" DESC LIMIT ?",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|row| DeadLetter {
                partition: row.get::<i64, _>(0) as u32,
                offset: row.get::<i64, _>(1) as u64,
                reason: row.get(2),
                payload: row.get(3),
            })
            .collect())
    }

    async fn enforce_retention(
        &self,
        raw_before_ms: TimestampMs,
        results_before_ms: TimestampMs,
    ) -> Result<RetentionReport, StoreError> {
        let raw = sqlx::query("DELETE FROM raw_points WHERE ts < ?")
            .bind(raw_before_ms)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        // Dead letters are raw input too, kept as long as raw points.
        sqlx::query("DELETE FROM dead_letters WHERE received_at < ?")
            .bind(raw_before_ms)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        let results = sqlx::query("DELETE FROM window_results WHERE window_end < ?")
            .bind(results_before_ms)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        let (anomalies, deliveries) =
            anomaly::sqlite::retain(&self.pool, raw_before_ms, results_before_ms).await?;
        Ok(RetentionReport {
            raw_points: raw.rows_affected(),
            results: results.rows_affected(),
            anomalies,
            deliveries,
        })
    }

    async fn load_detectors(&self, partitions: &[u32]) -> Result<Vec<DetectorState>, StoreError> {
        anomaly::sqlite::load_detectors(&self.pool, partitions).await
    }

    async fn anomalies(
        &self,
        query: &AnomalyQuery,
    ) -> Result<Vec<pulse_core::anomaly::Anomaly>, StoreError> {
        anomaly::sqlite::query(&self.pool, query).await
    }

    async fn pending_deliveries(
        &self,
        partitions: &[u32],
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        anomaly::sqlite::pending(&self.pool, partitions, limit).await
    }

    async fn mark_delivery(&self, seq: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
        anomaly::sqlite::mark(&self.pool, seq, outcome).await
    }

    async fn ready(&self) -> Result<String, StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| "embedded SQLite store answers".to_string())
            .map_err(unavailable)
    }
}
