//! Retention: native mode drops whole daily partitions past the cutoff
//! first (cheap, no dead rows), then both modes delete the leftovers (rows
//! of a partition that could not be dropped, or of the DEFAULT partition;
//! TimescaleDB's own retention policy drops chunks on its schedule). Resolved
//! anomalies and delivered outbox rows go too (`anomaly::postgres::retain`).

use pulse_core::TimestampMs;

use super::PostgresStore;
use super::mode::Mode;
use super::partitions::TsTable;
use super::sql::db_error;
#[cfg(doc)]
use crate::store::Store;
use crate::store::{RetentionReport, StoreError};

impl PostgresStore {
    /// The body of [`Store::enforce_retention`].
    pub(super) async fn expire(
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
        if self.mode.get() == Mode::Native {
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
        (report.anomalies, report.deliveries) =
            crate::store::anomaly::postgres::retain(&self.pool, raw_before_ms, results_before_ms)
                .await?;
        Ok(report)
    }
}
