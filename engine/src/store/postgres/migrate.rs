//! Migrations: a small versioned list of SQL files (`migrations/postgres/`)
//! embedded in the binary and recorded in the schema's own
//! `schema_migrations` table, applied under
//! `pg_advisory_lock(hashtext(schema))`, so any number of processes may
//! migrate at once and every schema of a database migrates on its own.

use sqlx::{Executor, PgConnection};

use super::PostgresStore;
use super::mode::Mode;
use super::sql::{col, db_error};
use super::timescale;
use crate::store::StoreError;

/// One versioned migration; `native` and `timescaledb` differ only where the
/// time series tables are made.
struct Migration {
    version: i64,
    name: &'static str,
    native: &'static str,
    timescaledb: &'static str,
}

const INITIAL: &str = include_str!("../../../migrations/postgres/0001_initial.sql");

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
        native: include_str!("../../../migrations/postgres/0002_timeseries.native.sql"),
        timescaledb: include_str!("../../../migrations/postgres/0002_timeseries.timescaledb.sql"),
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
    Migration {
        version: 6,
        name: "batch_marks",
        native: BATCH_MARKS,
        timescaledb: BATCH_MARKS,
    },
    Migration {
        version: 7,
        name: "metric_kinds",
        native: METRIC_KINDS,
        timescaledb: METRIC_KINDS,
    },
];
const METRIC_KINDS: &str = include_str!("../../../migrations/postgres/0007_metric_kinds.sql");
const BATCH_MARKS: &str = include_str!("../../../migrations/postgres/0006_batch_marks.sql");
const ANOMALIES: &str = include_str!("../../../migrations/postgres/0005_anomalies.sql");
const DEAD_LETTERS: &str = include_str!("../../../migrations/postgres/0003_dead_letters.sql");
const PARTITION_OWNERS: &str =
    include_str!("../../../migrations/postgres/0004_partition_owners.sql");

impl PostgresStore {
    /// `Store::migrate`: applies the missing migrations holding the schema's
    /// advisory lock, then installs the TimescaleDB policies or creates the
    /// daily partitions ahead.
    pub(super) async fn migrate_schema(&self) -> Result<(), StoreError> {
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

    /// The relkind of this schema's `raw_points` (if it exists) and whether
    /// the timescaledb extension is available.
    /// Runs on the caller's connection: under the migration lock that one is
    /// held, and taking a second from the pool there could wait on itself.
    pub(super) async fn inspect(
        &self,
        conn: &mut PgConnection,
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

    /// The body of `migrate`, run while holding the schema's advisory lock on `conn`.
    async fn migrate_locked(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
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

        let mode = self.settle_mode(&mut *conn).await?;
        self.mode.set(mode);
        self.apply_migrations(&mut *conn, mode).await?;

        if let (Mode::TimescaleDb, Some(policies)) = (mode, &self.policies) {
            let status = timescale::install_policies(&mut *conn, schema, policies).await;
            *pulse_core::sync::lock(&self.policy_status) = Some(status);
        }
        tracing::info!(
            schema = %schema,
            target = %self.target,
            mode = self.mode(),
            "store schema ready"
        );
        if mode == Mode::Native {
            self.prepare_partitions().await?;
        }
        Ok(())
    }

    /// The mode to migrate in: an existing schema keeps its own; a new one
    /// uses TimescaleDB when the extension exists or can be created.
    async fn settle_mode(&self, conn: &mut PgConnection) -> Result<Mode, StoreError> {
        let (existing, available) = self.inspect(&mut *conn).await?;
        if let Some(relkind) = existing {
            return Ok(Mode::of_relkind(&relkind));
        }
        if !available {
            return Ok(Mode::Native);
        }
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
            return Ok(Mode::TimescaleDb);
        }
        tracing::warn!(
            schema = %self.schema,
            error = %created.err().map(|e| e.to_string()).unwrap_or_default(),
            "timescaledb is available but cannot be created; using native partitioning"
        );
        Ok(Mode::Native)
    }

    /// Applies, each in its own transaction, the migrations this schema's
    /// `schema_migrations` does not list yet, in the SQL of `mode`.
    async fn apply_migrations(
        &self,
        conn: &mut PgConnection,
        mode: Mode,
    ) -> Result<(), StoreError> {
        let schema = &self.schema;
        let mut search_path = format!("\"{schema}\"");
        if mode == Mode::TimescaleDb
            && let Some(ext) = timescale::extension_schema(&mut *conn).await?
        {
            search_path.push_str(&format!(", \"{}\"", ext.replace('"', "\"\"")));
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
            let sql = match mode {
                Mode::TimescaleDb => migration.timescaledb,
                Mode::Native => migration.native,
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
            .bind(mode.name())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            tracing::info!(schema = %schema, version = migration.version, name = migration.name, "applied store migration");
        }
        Ok(())
    }
}
