//! Backups of a pipeline's schema, done by Pulse itself rather than `pg_dump`:
//!
//! * **Export** ([`PostgresStore::snapshot`]): one `REPEATABLE READ READ
//!   ONLY` transaction, so every table is read from the same snapshot (a
//!   checkpoint's offsets always match the windows and points it stored),
//!   each table as `COPY (SELECT …) TO STDOUT` in text form. The `SELECT`
//!   form reads partitioned tables and TimescaleDB hypertables whole, where a
//!   plain `COPY table` would refuse or read only the parent.
//! * **Import** ([`PostgresStore::restore_session`]): after [`Store::migrate`]
//!   has laid the schema out (native partitions or hypertables, whichever
//!   this server supports), every table is filled by `COPY … FROM STDIN` in
//!   one transaction, and serial sequences are moved past the restored rows.
//!   A failure anywhere (a checksum that does not match, a lost connection)
//!   rolls the whole restore back.
//!
//! Why not `pg_dump`: the image would need a `pg_dump` of the server's major
//! version (an older one refuses a newer server), its output re-creates the
//! schema with the DDL of the server it came from (a TimescaleDB dump needs
//! the extension's pre/post-restore hooks to load anywhere), and row counts and
//! checksums per table would need parsing its archive. The export here needs
//! nothing but the connection Pulse already has, and the schema a restore
//! lands in is always the one this release's migrations make.
//!
//! [`Store::migrate`]: crate::store::Store::migrate

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use sqlx::{Executor, Postgres, Transaction};

use super::PostgresStore;
use super::sql::db_error;
use crate::store::StoreError;

/// The table of applied migrations: made again by `migrate`, never backed up.
const MIGRATIONS_TABLE: &str = "schema_migrations";

/// One table of a backup: its name and its columns, in the order of its rows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableShape {
    pub name: String,
    pub columns: Vec<String>,
}

impl TableShape {
    /// `"a", "b"`: the column list of a `COPY`.
    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote(c.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An identifier in double quotes (a quote in it doubled).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A read-only snapshot of one schema, open until dropped.
pub struct Snapshot {
    tx: Transaction<'static, Postgres>,
    schema: String,
}

/// A restore in progress: one transaction, committed by [`Restore::finish`].
pub struct Restore {
    tx: Transaction<'static, Postgres>,
    schema: String,
}

impl PostgresStore {
    /// Opens a snapshot of this store's schema for a backup.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.unavailable_context(db_error(e)))?;
        (&mut *tx)
            .execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db_error)?;
        Ok(Snapshot {
            tx,
            schema: self.schema.clone(),
        })
    }

    /// Starts a restore into this store's schema, which [`Store::migrate`]
    /// has made. Refuses a schema that holds rows already, unless `replace`:
    /// then its tables are emptied in the restore's own transaction (nothing
    /// is lost if the restore fails).
    ///
    /// [`Store::migrate`]: crate::store::Store::migrate
    pub async fn restore_session(&self, replace: bool) -> Result<Restore, StoreError> {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.unavailable_context(db_error(e)))?;
        let mut restore = Restore {
            tx,
            schema: self.schema.clone(),
        };
        let tables = tables(&mut restore.tx, &restore.schema).await?;
        for table in &tables {
            let name = qualified(&restore.schema, &table.name);
            if replace {
                (&mut *restore.tx)
                    .execute(format!("TRUNCATE {name}").as_str())
                    .await
                    .map_err(db_error)?;
                continue;
            }
            let any: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {name})"))
                .fetch_one(&mut *restore.tx)
                .await
                .map_err(db_error)?;
            if any {
                return Err(StoreError::Other(format!(
                    "schema {} already holds data (table {}): restore into an empty schema, \
                     drop this one first (DROP SCHEMA \"{}\" CASCADE) with the pipeline stopped, \
                     or pass --replace to empty it in the restore's transaction",
                    restore.schema, table.name, restore.schema
                )));
            }
        }
        Ok(restore)
    }
}

/// `"schema"."table"`.
fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

/// The schema's tables that hold data (not partitions, not the migrations
/// table) and their columns, by name.
async fn tables(
    tx: &mut Transaction<'static, Postgres>,
    schema: &str,
) -> Result<Vec<TableShape>, StoreError> {
    let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, \
                array_agg(a.attname::text ORDER BY a.attnum) \
         FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND c.relname <> $2 \
         GROUP BY c.relname ORDER BY c.relname",
    )
    .bind(schema)
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|(name, columns)| TableShape { name, columns })
        .collect())
}

/// The newest migration applied to the schema.
async fn schema_version(
    tx: &mut Transaction<'static, Postgres>,
    schema: &str,
) -> Result<i64, StoreError> {
    let version: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT max(version) FROM {}",
        qualified(schema, MIGRATIONS_TABLE)
    ))
    .fetch_one(&mut **tx)
    .await
    .map_err(db_error)?;
    version.ok_or_else(|| {
        StoreError::Other(format!(
            "schema {schema} has no migrations applied: it is not a Pulse store yet"
        ))
    })
}

impl Snapshot {
    /// The schema's migration version (a restore needs a Pulse that has it).
    pub async fn schema_version(&mut self) -> Result<i64, StoreError> {
        schema_version(&mut self.tx, &self.schema).await
    }

    /// The tables to back up, by name.
    pub async fn tables(&mut self) -> Result<Vec<TableShape>, StoreError> {
        tables(&mut self.tx, &self.schema).await
    }

    /// The rows of `table` in `COPY` text form (one line per row), as the
    /// server sends them: chunks, never the whole table in memory.
    pub async fn copy_out(
        &mut self,
        table: &TableShape,
    ) -> Result<impl Stream<Item = Result<Bytes, StoreError>> + '_, StoreError> {
        let statement = format!(
            "COPY (SELECT {} FROM {}) TO STDOUT",
            table.column_list(),
            qualified(&self.schema, &table.name)
        );
        let stream = self.tx.copy_out_raw(&statement).await.map_err(db_error)?;
        Ok(stream.map_err(db_error))
    }
}

impl Restore {
    /// The schema's migration version after `migrate`.
    pub async fn schema_version(&mut self) -> Result<i64, StoreError> {
        schema_version(&mut self.tx, &self.schema).await
    }

    /// The tables the schema has, to check a backup's against.
    pub async fn tables(&mut self) -> Result<Vec<TableShape>, StoreError> {
        tables(&mut self.tx, &self.schema).await
    }

    /// Fills `table` from `COPY` text chunks (as [`Snapshot::copy_out`] gave
    /// them); returns the rows the server took. `check` runs after the last
    /// chunk and before the copy ends, so a backup object that turns out
    /// damaged never lands.
    pub async fn copy_in<S, E>(
        &mut self,
        table: &TableShape,
        chunks: S,
        check: impl FnOnce() -> Result<(), String>,
    ) -> Result<u64, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let statement = format!(
            "COPY {} ({}) FROM STDIN",
            qualified(&self.schema, &table.name),
            table.column_list()
        );
        let mut copy = self.tx.copy_in_raw(&statement).await.map_err(db_error)?;
        let mut chunks = std::pin::pin!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let message = format!("reading the backup of table {}: {e}", table.name);
                    copy.abort(message.clone()).await.ok();
                    return Err(StoreError::Other(message));
                }
            };
            copy.send(chunk).await.map_err(db_error)?;
        }
        if let Err(e) = check() {
            copy.abort(e.clone()).await.ok();
            return Err(StoreError::Corrupt(e));
        }
        copy.finish().await.map_err(db_error)
    }

    /// Moves every serial sequence past the restored rows, then commits.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        let serials: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND column_default LIKE 'nextval(%'",
        )
        .bind(&self.schema)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_error)?;
        for (table, column) in serials {
            let statement = format!(
                "SELECT setval(pg_get_serial_sequence($1, $2), \
                 COALESCE((SELECT max({}) FROM {}), 0) + 1, false)",
                quote(&column),
                qualified(&self.schema, &table)
            );
            sqlx::query(&statement)
                .bind(qualified(&self.schema, &table))
                .bind(&column)
                .execute(&mut *self.tx)
                .await
                .map_err(db_error)?;
        }
        self.tx.commit().await.map_err(db_error)
    }
}
