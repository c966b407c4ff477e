//! [`Store::commit`]: one checkpoint in one transaction, one statement per
//! table. That transaction is the exactly-once guarantee, so every step
//! below writes through it, in a fixed order: the owner fence first (a
//! stale writer is refused before it writes anything), then series, window
//! results, raw points, open window state, late counts, dead letters,
//! anomalies and detector state, and the bus offsets last.

use std::collections::BTreeMap;

use pulse_core::{Tags, WindowResult};
use sqlx::PgConnection;

use super::PostgresStore;
use super::calendar::day_of;
use super::copy::copy_in;
use super::mode::Mode;
use super::partitions::TsTable;
use super::sql::{col, db_error, tags_json};
#[cfg(doc)]
use crate::store::Store;
use crate::store::{
    Claim, Commit, DeadLetter, LateCount, OpenWindowKey, OpenWindowState, PartitionCheckpoint,
    RawPoint, StoreError, anomaly, stale_claims,
};

mod results;

impl PostgresStore {
    /// The body of [`Store::commit`].
    pub(super) async fn write_commit(
        &self,
        commit: &Commit,
    ) -> Result<Vec<WindowResult>, StoreError> {
        // Partitions first, each in its own short transaction: DDL never sits
        // inside the commit, and an empty partition left by a failed commit is
        // harmless.
        if self.mode.get() == Mode::Native {
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
        if let Err(e) = check_fence(&mut tx, &commit.claims).await {
            if matches!(e, StoreError::Fenced { .. }) {
                tx.rollback().await.map_err(db_error)?;
            }
            return Err(e);
        }
        let new_series = self.insert_new_series(&mut tx, commit).await?;
        let merged = results::write(&mut tx, &commit.results).await?;
        write_raw_points(&mut tx, &commit.raw_points).await?;
        upsert_open_windows(&mut tx, &commit.upsert_open).await?;
        delete_open_windows(&mut tx, &commit.delete_open).await?;
        add_late_counts(&mut tx, &commit.late).await?;
        write_dead_letters(&mut tx, &commit.dead_letters).await?;
        anomaly::postgres::write(&mut tx, &commit.anomalies, &commit.detectors).await?;
        crate::store::marks::postgres::write(&mut tx, &commit.upsert_marks, &commit.delete_marks)
            .await?;
        write_checkpoints(&mut tx, &commit.partitions).await?;
        tx.commit().await.map_err(db_error)?;

        pulse_core::sync::lock(&self.known_series).extend(new_series);
        Ok(merged)
    }

    /// Inserts the series of `commit` this store has not committed before,
    /// sorted by id so concurrent commits lock in one order; returns their
    /// ids, to remember once the transaction commits.
    async fn insert_new_series(
        &self,
        tx: &mut PgConnection,
        commit: &Commit,
    ) -> Result<Vec<i64>, StoreError> {
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
            let known = pulse_core::sync::lock(&self.known_series);
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
        Ok(new_series)
    }
}

/// The fence: the writer's claims must still be current, else the commit is
/// `Fenced`. The share locks make a take wait until this transaction ends,
/// so none can slip in between this check and the commit.
async fn check_fence(tx: &mut PgConnection, claims: &[Claim]) -> Result<(), StoreError> {
    if claims.is_empty() {
        return Ok(());
    }
    let mut claimed: Vec<i64> = claims.iter().map(|c| i64::from(c.partition)).collect();
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
    let stale = stale_claims(claims, &current);
    if stale.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Fenced { partitions: stale })
    }
}

/// Raw points by binary COPY, in the order of the `(series_id, ts)` index,
/// so each series' new rows go into the same index pages one after
/// another: about 20 % less server time than arrival order.
async fn write_raw_points(tx: &mut PgConnection, raw: &[RawPoint]) -> Result<(), StoreError> {
    if raw.is_empty() {
        return Ok(());
    }
    let mut points: Vec<&RawPoint> = raw.iter().collect();
    points.sort_unstable_by_key(|p| (p.series_id.as_i64(), p.timestamp_ms));
    copy_in(
        tx,
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
    Ok(())
}

/// Open window state, one row per key (the last state given wins).
async fn upsert_open_windows(
    tx: &mut PgConnection,
    upserts: &[OpenWindowState],
) -> Result<(), StoreError> {
    let mut open: BTreeMap<(i64, i64, &str, i64), &[u8]> = BTreeMap::new();
    for o in upserts {
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
    if open.is_empty() {
        return Ok(());
    }
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
    Ok(())
}

/// Deletes the state of windows that closed.
async fn delete_open_windows(
    tx: &mut PgConnection,
    keys: &[OpenWindowKey],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
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
    Ok(())
}

/// Adds late counts, summed per key first (an upsert may touch a row once).
async fn add_late_counts(tx: &mut PgConnection, counts: &[LateCount]) -> Result<(), StoreError> {
    let mut late: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for l in counts {
        *late.entry((&l.metric, &l.window)).or_default() += l.count;
    }
    if late.is_empty() {
        return Ok(());
    }
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
    Ok(())
}

/// Records that could not be decoded, kept by `(partition, offset)`.
async fn write_dead_letters(tx: &mut PgConnection, d: &[DeadLetter]) -> Result<(), StoreError> {
    if d.is_empty() {
        return Ok(());
    }
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
    Ok(())
}

/// The bus offsets and watermarks the commit covers, one row per partition
/// (the last given wins).
async fn write_checkpoints(
    tx: &mut PgConnection,
    partitions: &[PartitionCheckpoint],
) -> Result<(), StoreError> {
    let mut checkpoints: BTreeMap<u32, &PartitionCheckpoint> = BTreeMap::new();
    for p in partitions {
        checkpoints.insert(p.partition, p);
    }
    if checkpoints.is_empty() {
        return Ok(());
    }
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
    Ok(())
}
