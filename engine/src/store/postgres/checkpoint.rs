//! Checkpoints and the owner fence on the read side: loading a partition's
//! checkpoint takes it (bumps its owner generation) before reading, and
//! the read is one snapshot, so offsets and open window state always
//! belong together.

use pulse_core::SeriesId;
use sqlx::postgres::{PgPool, PgRow};

use super::sql::{col, db_error};
#[cfg(doc)]
use crate::store::Store;
use crate::store::{
    Checkpoint, Claim, OpenWindowKey, OpenWindowState, PartitionCheckpoint, StoreError,
};

/// Takes `partitions` and reads their checkpoints ([`Store::load_checkpoint`]).
pub(super) async fn load_checkpoint(
    pool: &PgPool,
    partitions: &[u32],
) -> Result<Checkpoint, StoreError> {
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
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    // One snapshot, so offsets and open state always belong together.
    let mut tx = pool.begin().await.map_err(db_error)?;
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

/// The stored progress of `partitions`, without taking them ([`Store::progress`]).
pub(super) async fn progress(
    pool: &PgPool,
    partitions: &[u32],
) -> Result<Vec<PartitionCheckpoint>, StoreError> {
    let ids: Vec<i64> = partitions.iter().map(|&p| i64::from(p)).collect();
    let rows = sqlx::query(
        "SELECT partition, next_offset, max_event_ts, watermark FROM checkpoints \
         WHERE partition = ANY($1) ORDER BY partition",
    )
    .bind(&ids)
    .fetch_all(pool)
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
