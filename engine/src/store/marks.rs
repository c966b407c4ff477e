//! Batch marks: what a processor remembers of the idempotency keys each
//! partition has taken (see `pulse_core::idempotency`). The processor owns
//! their meaning and encoding; the store keeps them opaque, per partition and
//! key, written in the commit's transaction and read with the checkpoint.

use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::StoreError;

/// The mark of one batch key on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMark {
    pub partition: u32,
    pub key: [u8; 16],
    /// Encoded by the processor.
    pub state: Vec<u8>,
}

/// A mark to forget: its partition and key.
pub type BatchMarkKey = (u32, [u8; 16]);

fn key_of(partition: u32, bytes: Vec<u8>) -> Result<BatchMark, StoreError> {
    let key: [u8; 16] = bytes.as_slice().try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "batch mark of partition {partition}: key of {} bytes, expected 16",
            bytes.len()
        ))
    })?;
    Ok(BatchMark {
        partition,
        key,
        state: Vec::new(),
    })
}

/// Rows per statement: 3 parameters each, far below both engines' limits.
const CHUNK: usize = 1_000;

pub(super) mod sqlite {
    use super::*;

    fn unavailable(e: sqlx::Error) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }

    pub async fn load(
        tx: &mut sqlx::SqliteConnection,
        partition: u32,
    ) -> Result<Vec<BatchMark>, StoreError> {
        let rows = sqlx::query("SELECT batch_key, state FROM batch_marks WHERE partition = ?")
            .bind(i64::from(partition))
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|row| {
                let mut mark = key_of(partition, row.get(0))?;
                mark.state = row.get(1);
                Ok(mark)
            })
            .collect()
    }

    pub async fn write(
        tx: &mut sqlx::SqliteConnection,
        upsert: &[BatchMark],
        delete: &[BatchMarkKey],
    ) -> Result<(), StoreError> {
        for chunk in upsert.chunks(CHUNK) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "INSERT INTO batch_marks (partition, batch_key, state) ",
            );
            sql.push_values(chunk, |mut b, m| {
                b.push_bind(i64::from(m.partition))
                    .push_bind(m.key.to_vec())
                    .push_bind(m.state.clone());
            });
            sql.push(" ON CONFLICT (partition, batch_key) DO UPDATE SET state = excluded.state");
            sql.build().execute(&mut *tx).await.map_err(unavailable)?;
        }
        for (partition, key) in delete {
            sqlx::query("DELETE FROM batch_marks WHERE partition = ? AND batch_key = ?")
                .bind(i64::from(*partition))
                .bind(key.to_vec())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

pub(super) mod postgres {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::postgres::{col, db_error};

    pub async fn load(
        tx: &mut sqlx::PgConnection,
        partitions: &[i64],
    ) -> Result<Vec<BatchMark>, StoreError> {
        let rows = sqlx::query(
            "SELECT partition, batch_key, state FROM batch_marks WHERE partition = ANY($1) \
             ORDER BY partition, batch_key",
        )
        .bind(partitions)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let p: i64 = col(row, 0)?;
                let partition =
                    u32::try_from(p).map_err(|_| StoreError::Corrupt(format!("partition {p}")))?;
                let mut mark = key_of(partition, col(row, 1)?)?;
                mark.state = col(row, 2)?;
                Ok(mark)
            })
            .collect()
    }

    pub async fn write(
        tx: &mut sqlx::PgConnection,
        upsert: &[BatchMark],
        delete: &[BatchMarkKey],
    ) -> Result<(), StoreError> {
        // One row per key (an upsert may touch a row once), in key order.
        let rows: BTreeMap<(u32, [u8; 16]), &[u8]> = upsert
            .iter()
            .map(|m| ((m.partition, m.key), m.state.as_slice()))
            .collect();
        let rows: Vec<_> = rows.into_iter().collect();
        for chunk in rows.chunks(CHUNK) {
            let mut sql = QueryBuilder::<Postgres>::new(
                "INSERT INTO batch_marks (partition, batch_key, state) ",
            );
            sql.push_values(chunk, |mut b, ((partition, key), state)| {
                b.push_bind(i64::from(*partition))
                    .push_bind(key.to_vec())
                    .push_bind(state.to_vec());
            });
            sql.push(" ON CONFLICT (partition, batch_key) DO UPDATE SET state = EXCLUDED.state");
            sql.build().execute(&mut *tx).await.map_err(db_error)?;
        }
        if !delete.is_empty() {
            sqlx::query(
                "DELETE FROM batch_marks m USING UNNEST($1::bigint[], $2::bytea[]) AS d(partition, batch_key) \
                 WHERE m.partition = d.partition AND m.batch_key = d.batch_key",
            )
            .bind(delete.iter().map(|(p, _)| i64::from(*p)).collect::<Vec<_>>())
            .bind(delete.iter().map(|(_, k)| k.to_vec()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        Ok(())
    }
}
