//! `pulse backup` and `pulse restore`: a pipeline's PostgreSQL schema to an
//! S3-compatible bucket and back.
//!
//! A backup reads every table from one snapshot ([`PostgresStore::snapshot`]),
//! streams each through zstd into its own multipart object, writes the
//! manifest last ([`manifest`]), then prunes backups beyond the keep count
//! ([`location`]). A restore reads the manifest, lays the schema out with this
//! release's migrations, and copies every table back in one transaction,
//! checking rows and checksums before it commits.

mod bucket;
pub mod location;
pub mod manifest;

use std::sync::Mutex;

use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::tokio::write::ZstdEncoder;
use futures::{StreamExt, TryStreamExt};
use pulse_core::config::Config;
use pulse_engine::store::Store;
use pulse_engine::store::postgres::{
    PostgresStore, Snapshot, TableShape, claim_schema, owned_schema,
};
use tokio::io::AsyncWriteExt;
use tokio_util::io::{ReaderStream, StreamReader};

use bucket::Bucket;
use location::{Location, MANIFEST};
use manifest::{FORMAT, Manifest, TableEntry, Tally};

/// What a backup's snapshot guarantees, as the manifest says it.
const CONSISTENCY: &str = "one REPEATABLE READ READ ONLY transaction for every table";
/// Bytes read from a decompressed object at a time during a restore.
const RESTORE_CHUNK: usize = 256 * 1024;

/// The PostgreSQL URL of `config`; backups need the production store.
fn database_url(config: &Config) -> Result<&str, String> {
    config.storage.database_url.as_deref().ok_or_else(|| {
        "backups are of the PostgreSQL store, and this config has none (storage.database_url): \
         the embedded SQLite store is one file, copy <storage.data_dir>/store.db while pulse is \
         stopped instead"
            .to_string()
    })
}

/// `pulse backup`: returns the manifest written and the backups pruned.
pub async fn backup(
    config: &Config,
    to: &str,
    keep: Option<usize>,
) -> Result<(Manifest, Vec<String>), String> {
    let location = location::parse(to, false)?;
    if keep == Some(0) {
        return Err("--keep 0 would delete the backup just made: keep at least 1".into());
    }
    let url = database_url(config)?;
    let pipeline = &config.pipeline;
    let schema = owned_schema(url, &pipeline.namespace, &pipeline.name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "pipeline {}/{} has no schema in this database yet: nothing to back up (a \
                 processor creates it on its first start)",
                pipeline.namespace, pipeline.name
            )
        })?;
    let bucket = Bucket::from_env(&location)?;
    let store = PostgresStore::connect(url, &schema)
        .await
        .map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now();
    let name = location::backup_name(now);
    let mut snapshot = store.snapshot().await.map_err(|e| e.to_string())?;
    let schema_version = snapshot.schema_version().await.map_err(|e| e.to_string())?;
    let mut tables = Vec::new();
    for shape in snapshot.tables().await.map_err(|e| e.to_string())? {
        let object = format!("{}.copy.zst", shape.name);
        let tally = upload_table(
            &mut snapshot,
            &shape,
            &bucket,
            &location.object(&name, &object),
        )
        .await?;
        tables.push(TableEntry {
            shape,
            object,
            tally,
        });
    }
    drop(snapshot);
    let manifest = Manifest {
        format: FORMAT,
        name: name.clone(),
        created_at: humantime::format_rfc3339_millis(now).to_string(),
        pulse_version: env!("CARGO_PKG_VERSION").to_string(),
        namespace: pipeline.namespace.clone(),
        pipeline: pipeline.name.clone(),
        schema,
        schema_version,
        consistency: CONSISTENCY.to_string(),
        compression: "zstd".to_string(),
        tables,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    bucket.put(&location.object(&name, MANIFEST), json).await?;
    let pruned = match keep {
        Some(keep) => prune(&bucket, &location, keep).await?,
        None => Vec::new(),
    };
    Ok((manifest, pruned))
}

/// Streams one table through zstd into `object`; aborts the upload on error.
async fn upload_table(
    snapshot: &mut Snapshot,
    shape: &TableShape,
    bucket: &Bucket,
    object: &str,
) -> Result<manifest::Summary, String> {
    let mut tally = Tally::default();
    let mut encoder = ZstdEncoder::new(bucket.writer(object));
    let written: Result<(), String> = async {
        let rows = snapshot.copy_out(shape).await.map_err(|e| e.to_string())?;
        let mut rows = std::pin::pin!(rows);
        while let Some(chunk) = rows.next().await {
            let chunk = chunk.map_err(|e| format!("reading table {}: {e}", shape.name))?;
            tally.add(&chunk);
            encoder
                .write_all(&chunk)
                .await
                .map_err(|e| bucket.write_failed(object, e))?;
        }
        encoder
            .shutdown()
            .await
            .map_err(|e| bucket.write_failed(object, e))
    }
    .await;
    if let Err(e) = written {
        encoder.get_mut().abort().await.ok();
        return Err(e);
    }
    Ok(tally.summary())
}

/// Deletes every object of the backups beyond the newest `keep`.
async fn prune(bucket: &Bucket, location: &Location, keep: usize) -> Result<Vec<String>, String> {
    let objects = bucket.list(&location.prefix).await?;
    let doomed = location.survey(&objects).prune(keep);
    for name in &doomed {
        let inside = location.object(name, "");
        // The manifest first: a backup half deleted is no longer complete.
        let mut of_it: Vec<&String> = objects.iter().filter(|o| o.starts_with(&inside)).collect();
        of_it.sort_by_key(|o| !o.ends_with(MANIFEST));
        for object in of_it {
            bucket.delete(object).await?;
        }
    }
    Ok(doomed)
}

/// `pulse restore`: puts backup `from` (its newest when it names none) into
/// the config's pipeline schema; returns its manifest.
pub async fn restore(config: &Config, from: &str, replace: bool) -> Result<Manifest, String> {
    let location = location::parse(from, true)?;
    let url = database_url(config)?;
    let bucket = Bucket::from_env(&location)?;
    let survey = location.survey(&bucket.list(&location.prefix).await?);
    let name = match &location.name {
        Some(name) if survey.has(name) => name.clone(),
        Some(name) => {
            return Err(format!(
                "no complete backup {name} under s3://{}/{} (no {MANIFEST} there)",
                location.bucket, location.prefix
            ));
        }
        None => survey.latest().map(str::to_string).ok_or_else(|| {
            format!(
                "no backup under s3://{}/{}: nothing to restore",
                location.bucket, location.prefix
            )
        })?,
    };
    let manifest_object = location.object(&name, MANIFEST);
    let manifest = Manifest::parse(&bucket.get(&manifest_object).await?, &manifest_object)?;

    let pipeline = &config.pipeline;
    let schema = claim_schema(url, &pipeline.namespace, &pipeline.name)
        .await
        .map_err(|e| e.to_string())?;
    let store = PostgresStore::connect(url, &schema)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let mut session = store
        .restore_session(replace)
        .await
        .map_err(|e| e.to_string())?;
    let version = session.schema_version().await.map_err(|e| e.to_string())?;
    if manifest.schema_version > version {
        return Err(format!(
            "backup {name} has schema version {}, this Pulse knows up to {version}: restore it \
             with the Pulse release that made it ({}) or a newer one",
            manifest.schema_version, manifest.pulse_version
        ));
    }
    let present = session.tables().await.map_err(|e| e.to_string())?;
    for entry in &manifest.tables {
        let fits = present.iter().any(|t| {
            t.name == entry.shape.name && entry.shape.columns.iter().all(|c| t.columns.contains(c))
        });
        if !fits {
            return Err(format!(
                "backup {name} has table {} with columns {:?}, which schema {schema} cannot take",
                entry.shape.name, entry.shape.columns
            ));
        }
        let object = location.object(&name, &entry.object);
        let compressed = bucket.stream(&object).await?;
        let decoder = ZstdDecoder::new(StreamReader::new(compressed));
        let tally = Mutex::new(Tally::default());
        let chunks = ReaderStream::with_capacity(decoder, RESTORE_CHUNK).inspect_ok(|chunk| {
            tally.lock().unwrap_or_else(|e| e.into_inner()).add(chunk);
        });
        session
            .copy_in(&entry.shape, chunks, || {
                entry.check(&tally.lock().unwrap_or_else(|e| e.into_inner()).summary())
            })
            .await
            .map_err(|e| format!("restoring {object}: {e}"))?;
    }
    session.finish().await.map_err(|e| e.to_string())?;
    Ok(manifest)
}
