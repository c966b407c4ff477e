//! The database schema of a pipeline: migrated with the store's own migration
//! code (so the operator, the processor and `pulse up` can never disagree on
//! the tables), dropped for `deletionPolicy: Delete`.

use std::time::Duration;

use async_trait::async_trait;
use pulse_core::names;
use pulse_engine::store::postgres::{PostgresStore, claim_schema, owned_schema};
use pulse_engine::store::{Store, StoreError};
use sqlx::{Connection, Executor, PgConnection};

/// Why a schema admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaAdminError {
    /// The database did not answer: retried with backoff.
    #[error(
        "the database is unreachable while {operation} schema {schema}: {detail}; check the URL in the \
         Secret named by spec.database.urlSecretRef and that the server accepts connections"
    )]
    Unavailable {
        schema: String,
        operation: &'static str,
        detail: String,
    },
    /// The database answered with an error (permissions, a broken schema).
    #[error(
        "the database refused {operation} schema {schema}: {detail}; the user of the URL needs CREATE on the \
         database (and ownership of the schema to drop it)"
    )]
    Failed {
        schema: String,
        operation: &'static str,
        detail: String,
    },
}

impl SchemaAdminError {
    /// A short CamelCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SchemaAdminError::Unavailable { .. } => "DatabaseUnavailable",
            SchemaAdminError::Failed { .. } => "DatabaseRefused",
        }
    }
}

/// Migrates and drops pipeline schemas. One implementation talks to
/// PostgreSQL ([`PostgresSchemaAdmin`]); tests use fakes.
#[async_trait]
pub trait SchemaAdmin: Send + Sync {
    /// The schema of pipeline `(namespace, name)`, claimed for it (its own,
    /// or the one an earlier release gave it: `claim_schema`).
    async fn claim(
        &self,
        url: &str,
        namespace: &str,
        name: &str,
    ) -> Result<String, SchemaAdminError>;
    /// The schema the pipeline has claimed, if any: the one its cleanup drops.
    async fn owned(
        &self,
        url: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, SchemaAdminError>;
    /// Creates or upgrades the tables of `schema`; safe to run any number of
    /// times, also concurrently.
    async fn migrate(&self, url: &str, schema: &str) -> Result<(), SchemaAdminError>;
    /// Drops `schema` and everything in it; a missing schema counts as dropped.
    async fn drop_schema(&self, url: &str, schema: &str) -> Result<(), SchemaAdminError>;
}

/// [`SchemaAdmin`] on PostgreSQL/TimescaleDB through the store's own code.
#[derive(Debug, Default, Clone, Copy)]
pub struct PostgresSchemaAdmin;

/// How long dropping a schema may wait for a connection and for the migration
/// lock before the attempt counts as failed (and is retried).
const DROP_TIMEOUT: Duration = Duration::from_secs(30);

#[async_trait]
impl SchemaAdmin for PostgresSchemaAdmin {
    async fn claim(
        &self,
        url: &str,
        namespace: &str,
        name: &str,
    ) -> Result<String, SchemaAdminError> {
        claim_schema(url, namespace, name)
            .await
            .map_err(|e| store_error(&names::schema(namespace, name), "claiming", e))
    }

    async fn owned(
        &self,
        url: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, SchemaAdminError> {
        owned_schema(url, namespace, name)
            .await
            .map_err(|e| store_error(&names::schema(namespace, name), "looking up", e))
    }

    async fn migrate(&self, url: &str, schema: &str) -> Result<(), SchemaAdminError> {
        let operation = "migrating";
        let store = PostgresStore::connect(url, schema)
            .await
            .map_err(|e| store_error(schema, operation, e))?;
        store
            .migrate()
            .await
            .map_err(|e| store_error(schema, operation, e))
    }

    async fn drop_schema(&self, url: &str, schema: &str) -> Result<(), SchemaAdminError> {
        let operation = "dropping";
        if !is_plain_identifier(schema) {
            return Err(SchemaAdminError::Failed {
                schema: schema.to_string(),
                operation,
                detail: "not a schema name the operator makes".into(),
            });
        }
        let unavailable = |detail: String| SchemaAdminError::Unavailable {
            schema: schema.to_string(),
            operation,
            detail,
        };
        let failed = |e: sqlx::Error| SchemaAdminError::Failed {
            schema: schema.to_string(),
            operation,
            detail: e.to_string(),
        };
        let options = pulse_engine::store::postgres::connect_options(url)
            .map_err(|e| unavailable(e.to_string()))?;
        let mut conn = tokio::time::timeout(DROP_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| unavailable(format!("no connection within {DROP_TIMEOUT:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        // The same advisory lock as the store's migration, so a processor
        // migrating at this moment finishes before the schema goes.
        let statement = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let outcome = tokio::time::timeout(DROP_TIMEOUT, async {
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(schema)
                .execute(&mut *tx)
                .await?;
            tx.execute(statement.as_str()).await?;
            tx.commit().await
        })
        .await;
        let _ = conn.close().await;
        match outcome {
            Err(_) => Err(unavailable(format!(
                "the drop did not finish within {DROP_TIMEOUT:?} (a long migration or open \
                 transaction holds the schema)"
            ))),
            Ok(result) => result.map_err(failed),
        }
    }
}

/// Whether `name` needs no quoting beyond the double quotes the statement adds:
/// what `names::schema` makes, `[a-z0-9_]`, at most 63 bytes.
fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn store_error(schema: &str, operation: &'static str, error: StoreError) -> SchemaAdminError {
    match error {
        StoreError::Unavailable(detail) => SchemaAdminError::Unavailable {
            schema: schema.to_string(),
            operation,
            detail,
        },
        other => SchemaAdminError::Failed {
            schema: schema.to_string(),
            operation,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_schema_names_are_dropped() {
        assert!(is_plain_identifier("pulse_shop_checkout"));
        assert!(!is_plain_identifier("pulse\"; DROP DATABASE x; --"));
        assert!(!is_plain_identifier(""));
        assert!(!is_plain_identifier(&"a".repeat(64)));
    }

    #[tokio::test]
    async fn dropping_with_an_unsafe_name_is_refused_before_connecting() {
        let error = PostgresSchemaAdmin
            .drop_schema("postgres://nobody@127.0.0.1:1/none", "Bad Name")
            .await
            .expect_err("unsafe name");
        assert_eq!(error.reason(), "DatabaseRefused");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable() {
        let error = PostgresSchemaAdmin
            .migrate("postgres://nobody@127.0.0.1:1/none", "pulse_shop_checkout")
            .await
            .expect_err("nothing listens on port 1");
        assert_eq!(error.reason(), "DatabaseUnavailable", "{error}");
    }
}
