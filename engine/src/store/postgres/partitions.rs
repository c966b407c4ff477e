//! Daily partitions (native mode): their names, and the DDL that creates
//! them ahead and on demand and drops them at retention. Partition DDL runs
//! in short transactions of its own, never inside a commit, and waits at
//! most [`DDL_LOCK_TIMEOUT`] for a lock, so it never queues the tables.

use std::collections::{BTreeSet, HashSet};
use std::sync::MutexGuard;

use pulse_core::TimestampMs;
use sqlx::Executor;

use super::PostgresStore;
use super::calendar::{DAY_MS, civil_from_days, days_from_civil, today};
use super::sql::{col, db_error};
use crate::store::StoreError;

/// Daily partitions created ahead by `migrate`: today and this many days after.
pub(super) const DAYS_AHEAD: i64 = 7;
/// New partitions one commit may create per table; rows of further days go to
/// the DEFAULT partition (a guard against a batch of absurd timestamps).
const MAX_NEW_PARTITIONS_PER_COMMIT: usize = 64;
/// How long partition DDL waits for a lock before giving up (and the commit
/// or retention pass is retried), so DDL never queues the whole table behind it.
const DDL_LOCK_TIMEOUT: &str = "10s";

/// The two time-partitioned tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum TsTable {
    Raw,
    Results,
}

impl TsTable {
    /// The partitioned (parent) table.
    pub(super) fn name(self) -> &'static str {
        match self {
            TsTable::Raw => "raw_points",
            TsTable::Results => "window_results",
        }
    }

    /// The time column it is partitioned by, in ms.
    fn column(self) -> &'static str {
        match self {
            TsTable::Raw => "ts",
            TsTable::Results => "window_start",
        }
    }
}

/// Days that get their own partition (years 1000..=9999, so names keep 8
/// digits); rows of other days land in the DEFAULT partition.
fn partitionable(day: i64) -> bool {
    (days_from_civil(1000, 1, 1)..=days_from_civil(9999, 12, 31)).contains(&day)
}

/// `raw_points_p20260129`: the partition of `table` holding UTC day `day`.
pub(super) fn partition_name(table: TsTable, day: i64) -> String {
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

impl PostgresStore {
    /// Creates the partitions of today and the next [`DAYS_AHEAD`] days
    /// (and learns which exist), so commits rarely wait for DDL.
    pub(super) async fn prepare_partitions(&self) -> Result<(), StoreError> {
        self.load_partitions().await?;
        let today = today();
        for table in [TsTable::Raw, TsTable::Results] {
            self.ensure_partitions(table, (today..=today + DAYS_AHEAD).collect())
                .await?;
        }
        Ok(())
    }

    /// Existing daily partitions of `table`, by name and day.
    pub(super) async fn list_partitions(
        &self,
        table: TsTable,
    ) -> Result<Vec<(String, i64)>, StoreError> {
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

    /// Learns the daily partitions that exist already.
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

    fn known(&self) -> MutexGuard<'_, HashSet<(TsTable, i64)>> {
        pulse_core::sync::lock(&self.partitions)
    }

    /// Creates the daily partitions of `days` not known to exist yet.
    pub(super) async fn ensure_partitions(
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
    pub(super) async fn drop_partitions(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_and_days_round_trip() {
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
        assert!(partitionable(0) && !partitionable(days_from_civil(10_000, 1, 1)));
    }
}
