//! The production store: PostgreSQL through sqlx, one schema per pipeline.
//!
//! * **Schema**: every table lives in the pipeline's schema
//!   (`pulse_core::names::schema`, or an earlier release's schema the
//!   pipeline claimed: [`claim_schema`]), set as the `search_path` of every
//!   pooled connection, so two pipelines share a database without sharing a
//!   table. Its name is checked once, at connect ([`ident`]).
//! * **Migrations** ([`migrate`]): versioned SQL files embedded in the
//!   binary, applied under an advisory lock per schema.
//! * **Modes** ([`mode`]): with the `timescaledb` extension available,
//!   `raw_points` and `window_results` are hypertables (one-day chunks;
//!   retention and compression are TimescaleDB policies, see [`timescale`],
//!   and the retention pass deletes rows as well). Otherwise they are
//!   natively range-partitioned by day on their time column ([`partitions`],
//!   [`calendar`]), with partitions created ahead (today .. +7 days) and on
//!   demand before a commit writes into a new day, plus a DEFAULT partition
//!   as a safety net; retention drops whole partitions, then deletes
//!   leftovers ([`retention`]). A schema keeps the mode it was created with.
//! * **Writes** ([`commit`]): one [`Store::commit`] is one transaction, one
//!   statement per table: that transaction is the exactly-once guarantee.
//!   Window results and raw points go in with a binary `COPY` ([`copy`];
//!   results fall back to an `UNNEST` upsert when a window is already
//!   stored), the rest as `UNNEST` arrays.
//! * **Reads**: checkpoints and the owner fence ([`checkpoint`]), the query
//!   API ([`query`]).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pulse_core::{Point, Tags, TimestampMs, WindowResult};
use sqlx::Executor;
use sqlx::postgres::{PgPool, PgPoolOptions};

mod backup;
mod calendar;
mod checkpoint;
mod claim;
mod commit;
mod copy;
mod ident;
mod migrate;
mod mode;
mod options;
mod partitions;
mod query;
mod retention;
mod sql;
mod timescale;

pub use backup::{Restore, Snapshot, TableShape};
pub use claim::{claim_schema, owned_schema};
pub use options::connect_options;
pub(in crate::store) use sql::{col, db_error};
pub use timescale::TimescalePolicies;

use super::{
    AnomalyQuery, Checkpoint, Commit, DeadLetter, Delivery, DeliveryOutcome, DetectorState,
    LateCount, MetricInfo, PartitionCheckpoint, ResultQuery, RetentionReport, Store, StoreError,
    anomaly,
};
use mode::{Mode, ModeCell};
use partitions::TsTable;

/// PostgreSQL/TimescaleDB-backed [`Store`].
pub struct PostgresStore {
    pool: PgPool,
    schema: String,
    /// `user@host:port/database`, for messages (never the password).
    target: String,
    mode: ModeCell,
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
        ident::check_schema(schema)?;
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
            mode: ModeCell::new(Mode::Native),
            partitions: Mutex::new(HashSet::new()),
            known_series: Mutex::new(HashSet::new()),
            policies: None,
            policy_status: Mutex::new(None),
        };
        let mut conn = store.pool.acquire().await.map_err(db_error)?;
        let (existing, available) = store.inspect(&mut conn).await?;
        drop(conn);
        // What `migrate` will find or try: the existing schema's mode, or
        // TimescaleDB where the extension is available.
        store.mode.set(match existing {
            Some(relkind) => Mode::of_relkind(&relkind),
            None if available => Mode::TimescaleDb,
            None => Mode::Native,
        });
        Ok(store)
    }

    /// How the time series tables are stored: `"timescaledb"` (hypertables)
    /// or `"native-partitioning"` (daily range partitions). Before
    /// [`Store::migrate`] of a new schema this is what migrate will try.
    pub fn mode(&self) -> &'static str {
        self.mode.get().name()
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

    /// `"schema"."name"`: a table of this store's schema, for DDL.
    fn qualified(&self, name: &str) -> String {
        format!("\"{}\".\"{name}\"", self.schema)
    }

    /// Names the server in an `Unavailable` error, for the operator reading it.
    fn unavailable_context(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("PostgreSQL at {}: {m}", self.target))
            }
            other => other,
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_schema().await
    }

    async fn load_checkpoint(&self, partitions: &[u32]) -> Result<Checkpoint, StoreError> {
        checkpoint::load_checkpoint(&self.pool, partitions).await
    }

    async fn progress(&self, partitions: &[u32]) -> Result<Vec<PartitionCheckpoint>, StoreError> {
        checkpoint::progress(&self.pool, partitions).await
    }

    async fn commit(&self, commit: &Commit) -> Result<Vec<WindowResult>, StoreError> {
        self.write_commit(commit).await
    }

    async fn latest(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError> {
        query::latest(&self.pool, query).await
    }

    async fn range(&self, query: &ResultQuery) -> Result<Vec<WindowResult>, StoreError> {
        query::range(&self.pool, query).await
    }

    async fn raw_points(
        &self,
        metric: &str,
        tags: &Tags,
        from_ms: TimestampMs,
        to_ms: TimestampMs,
    ) -> Result<Vec<Point>, StoreError> {
        query::raw_points(&self.pool, metric, tags, from_ms, to_ms).await
    }

    async fn metrics(&self) -> Result<Vec<MetricInfo>, StoreError> {
        query::metrics(&self.pool).await
    }

    async fn late_counts(&self, metric: &str) -> Result<Vec<LateCount>, StoreError> {
        query::late_counts(&self.pool, metric).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        query::dead_letters(&self.pool, limit).await
    }

    async fn enforce_retention(
        &self,
        raw_before_ms: TimestampMs,
        results_before_ms: TimestampMs,
    ) -> Result<RetentionReport, StoreError> {
        self.expire(raw_before_ms, results_before_ms).await
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
                let policies = pulse_core::sync::lock(&self.policy_status)
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
mod tests;
#[cfg(test)]
mod views_tests;
