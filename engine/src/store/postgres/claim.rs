//! Which schema a pipeline's tables live in, and which pipeline owns a schema.
//!
//! Every schema Pulse uses carries its owner in its comment
//! (`pulse pipeline {"namespace":…,"name":…}`). Releases before the
//! injective names put a pipeline in `names::legacy_schema`, which two
//! pipelines could share (`a-b`/`c` and `a`/`b-c` both had `pulse_a_b_c`).
//! After an upgrade a pipeline keeps that schema, with its offsets and data,
//! when it exists and no other pipeline has claimed it: the first pipeline to
//! start claims it, and every other one that maps to it gets its own new
//! schema. Claims run under one advisory lock, so two cannot both win.

use pulse_core::names;
use sqlx::{Connection, PgConnection, Row};

use super::db_error;
use crate::store::StoreError;

/// Key of the advisory lock every claim holds (`hashtext` of it).
const CLAIM_LOCK: &str = "pulse schema claims";
/// How every owner comment starts; other comments do not mark an owner.
const OWNER_PREFIX: &str = "pulse pipeline ";

/// Who holds a schema, as far as this pipeline is concerned.
#[derive(Debug, PartialEq)]
enum Holder {
    Missing,
    /// Exists without an owner: made by an earlier release (or by hand).
    Nobody,
    Us,
    Other(String),
}

/// The schema of pipeline `(namespace, name)`, claimed for it: its own
/// [`names::schema`] when that exists or when nothing else is found (created
/// here, empty), else its earlier release's schema when that exists and is
/// not another pipeline's. Run by every role before it opens the store.
pub async fn claim_schema(url: &str, namespace: &str, name: &str) -> Result<String, StoreError> {
    let owner = owner_comment(namespace, name);
    let new = names::schema(namespace, name);
    let legacy = names::legacy_schema(namespace, name);
    let mut conn = connect(url).await?;
    let mut tx = conn.begin().await.map_err(db_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(CLAIM_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    let chosen = match holder(&mut tx, &new, &owner).await? {
        Holder::Us => new,
        Holder::Other(other) => {
            return Err(StoreError::Other(format!(
                "schema {new} of pipeline {namespace}/{name} is marked as belonging to another \
                 pipeline ({other}); drop or rename it, or fix its COMMENT"
            )));
        }
        Holder::Nobody => {
            set_owner(&mut tx, &new, &owner).await?;
            new
        }
        Holder::Missing => match holder(&mut tx, &legacy, &owner).await? {
            Holder::Us => legacy,
            Holder::Nobody => {
                set_owner(&mut tx, &legacy, &owner).await?;
                tracing::info!(
                    message = "Kept the schema of an earlier release for this pipeline.",
                    schema = legacy,
                    namespace,
                    name
                );
                legacy
            }
            Holder::Missing | Holder::Other(_) => {
                let create = format!("CREATE SCHEMA IF NOT EXISTS \"{new}\"");
                sqlx::query(&create)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                set_owner(&mut tx, &new, &owner).await?;
                new
            }
        },
    };
    tx.commit().await.map_err(db_error)?;
    let _ = conn.close().await;
    Ok(chosen)
}

/// The schema pipeline `(namespace, name)` has claimed, if any: what its
/// cleanup may drop. A schema nobody claimed is never its.
pub async fn owned_schema(
    url: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let owner = owner_comment(namespace, name);
    let mut conn = connect(url).await?;
    let mut found = None;
    for schema in [
        names::schema(namespace, name),
        names::legacy_schema(namespace, name),
    ] {
        if holder(&mut conn, &schema, &owner).await? == Holder::Us {
            found = Some(schema);
            break;
        }
    }
    let _ = conn.close().await;
    Ok(found)
}

async fn connect(url: &str) -> Result<PgConnection, StoreError> {
    PgConnection::connect_with(&super::connect_options(url)?)
        .await
        .map_err(|e| match db_error(e) {
            StoreError::Other(m) => StoreError::Unavailable(m),
            other => other,
        })
}

/// The owner comment of a pipeline: a prefix and the pair as JSON, exact.
fn owner_comment(namespace: &str, name: &str) -> String {
    let pair = serde_json::json!({ "namespace": namespace, "name": name });
    format!("{OWNER_PREFIX}{pair}")
}

async fn holder(conn: &mut PgConnection, schema: &str, owner: &str) -> Result<Holder, StoreError> {
    let row = sqlx::query(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1",
    )
    .bind(schema)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    let Some(row) = row else {
        return Ok(Holder::Missing);
    };
    let comment: Option<String> = row
        .try_get(0)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(match comment {
        Some(c) if c == owner => Holder::Us,
        Some(c) if c.starts_with(OWNER_PREFIX) => Holder::Other(c),
        _ => Holder::Nobody,
    })
}

/// Marks `schema` as `owner`'s; the server quotes both (`format` with `%I`, `%L`).
async fn set_owner(conn: &mut PgConnection, schema: &str, owner: &str) -> Result<(), StoreError> {
    let statement: String =
        sqlx::query_scalar("SELECT format('COMMENT ON SCHEMA %I IS %L', $1, $2)")
            .bind(schema)
            .bind(owner)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
    sqlx::query(&statement)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dropping_schemas, pg_url_or_skip, unique_name};
    use super::*;

    async fn exec(url: &str, sql: &str) {
        let mut conn = PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }

    /// Two pipelines that shared one schema under the earlier names: the
    /// first to start keeps it, the other gets its own, each stays with its
    /// choice, and each owns only its own.
    #[tokio::test]
    async fn a_shared_legacy_schema_goes_to_one_pipeline_only() {
        let Some(url) = pg_url_or_skip() else { return };
        // unique_name is [a-z0-9_]; the pairs differ only in where the `-` is.
        let tag = unique_name("claim");
        let (first, second) = ((format!("{tag}-b"), "c"), (tag.clone(), "b-c"));
        let legacy = names::legacy_schema(&first.0, first.1);
        assert_eq!(legacy, names::legacy_schema(&second.0, second.1));
        let (new_first, new_second) = (
            names::schema(&first.0, first.1),
            names::schema(&second.0, second.1),
        );
        let schemas = [legacy.as_str(), new_first.as_str(), new_second.as_str()];
        dropping_schemas(&url, &schemas, async {
            exec(&url, &format!("CREATE SCHEMA \"{legacy}\"")).await;
            assert_eq!(owned_schema(&url, &first.0, first.1).await.unwrap(), None);
            let a = claim_schema(&url, &first.0, first.1).await.unwrap();
            assert_eq!(a, legacy, "the earlier release's schema is kept");
            let b = claim_schema(&url, &second.0, second.1).await.unwrap();
            assert_eq!(b, names::schema(&second.0, second.1), "not shared");
            assert_eq!(claim_schema(&url, &first.0, first.1).await.unwrap(), a);
            assert_eq!(claim_schema(&url, &second.0, second.1).await.unwrap(), b);
            assert_eq!(
                owned_schema(&url, &first.0, first.1).await.unwrap(),
                Some(a)
            );
            assert_eq!(
                owned_schema(&url, &second.0, second.1).await.unwrap(),
                Some(b)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_new_pipeline_gets_its_own_schema_even_when_names_need_quoting() {
        let Some(url) = pg_url_or_skip() else { return };
        let ns = format!("{}'\"x", unique_name("claim"));
        let schema = names::schema(&ns, "o'brien");
        dropping_schemas(&url, &[schema.as_str()], async {
            assert_eq!(claim_schema(&url, &ns, "o'brien").await.unwrap(), schema);
            assert_eq!(
                owned_schema(&url, &ns, "o'brien").await.unwrap(),
                Some(schema.clone())
            );
            assert_eq!(owned_schema(&url, &ns, "other").await.unwrap(), None);
        })
        .await;
    }
}
