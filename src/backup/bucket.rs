//! The object store a backup goes to: any S3-compatible store, configured by
//! the standard `AWS_*` variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`), through the
//! `object_store` crate. Objects stream up as multipart uploads of
//! [`PART_SIZE`] with at most [`PARTS_IN_FLIGHT`] parts in flight, so a
//! backup's memory does not grow with the data.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use super::location::Location;

/// Bytes of one multipart part (S3 needs at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once.
pub const PARTS_IN_FLIGHT: usize = 2;

/// A bucket and the errors of talking to it, named for the reader.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket` (at the endpoint, when one is set), for messages.
    target: String,
}

impl Bucket {
    /// The bucket of `location`, with credentials, region and endpoint from
    /// the environment. Path-style requests (what MinIO, Ceph and most other
    /// S3-compatible stores want); plain HTTP only when the endpoint says so.
    pub fn from_env(location: &Location) -> Result<Bucket, String> {
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|e| !e.is_empty());
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&location.bucket);
        if let Some(endpoint) = &endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let target = match &endpoint {
            Some(endpoint) => format!("s3://{} at {endpoint}", location.bucket),
            None => format!("s3://{}", location.bucket),
        };
        let store = builder.build().map_err(|e| {
            format!(
                "cannot use {target}: {e}; set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and \
                 AWS_REGION (and AWS_ENDPOINT_URL for a store other than AWS S3)"
            )
        })?;
        Ok(Bucket {
            store: Arc::new(store),
            target,
        })
    }

    fn fail(&self, what: &str, object: &str, e: object_store::Error) -> String {
        format!(
            "{what} {object} in {}: {e}; check the bucket exists, the credentials may read and \
             write it, and AWS_ENDPOINT_URL/AWS_REGION point at the right store",
            self.target
        )
    }

    /// Every object name under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        let path = (!prefix.is_empty()).then(|| Path::from(prefix));
        self.store
            .list(path.as_ref())
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|e| self.fail("cannot list", prefix, e))
    }

    /// A multipart writer for `object`.
    pub fn writer(&self, object: &str) -> BufWriter {
        BufWriter::with_capacity(self.store.clone(), Path::from(object), PART_SIZE)
            .with_max_concurrency(PARTS_IN_FLIGHT)
    }

    /// Maps a write error of `object`.
    pub fn write_failed(&self, object: &str, e: std::io::Error) -> String {
        format!(
            "cannot write {object} in {}: {e}; check the bucket exists and the credentials may \
             write to it",
            self.target
        )
    }

    /// Writes a small object in one request.
    pub async fn put(&self, object: &str, bytes: Vec<u8>) -> Result<(), String> {
        self.store
            .put(&Path::from(object), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.fail("cannot write", object, e))
    }

    /// Reads a small object whole.
    pub async fn get(&self, object: &str) -> Result<Bytes, String> {
        let result = self
            .store
            .get(&Path::from(object))
            .await
            .map_err(|e| self.fail("cannot read", object, e))?;
        result
            .bytes()
            .await
            .map_err(|e| self.fail("cannot read", object, e))
    }

    /// Streams `object`.
    pub async fn stream(
        &self,
        object: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + use<>, String> {
        let result = self
            .store
            .get(&Path::from(object))
            .await
            .map_err(|e| self.fail("cannot read", object, e))?;
        Ok(result.into_stream().map_err(std::io::Error::other))
    }

    /// Deletes `object`.
    pub async fn delete(&self, object: &str) -> Result<(), String> {
        self.store
            .delete(&Path::from(object))
            .await
            .map_err(|e| self.fail("cannot delete", object, e))
    }
}
