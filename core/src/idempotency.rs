//! Idempotency keys: how a client names a batch so that the pipeline takes
//! each of its points once, however often the batch is sent.
//!
//! A client sends `Idempotency-Key: <key>` with an ingest request and, when
//! the body is a part of a larger batch it cut up, `Idempotency-Offset: <n>`:
//! the index of the body's first point within that batch. Every point then
//! carries a [`BatchRef`] on the bus: the key (hashed with the writer's
//! credentials, so two writers' keys never meet), the point's index within
//! the batch, and the index the request started at. The processor drops a
//! point whose `(key, index)` it has already taken (`processor::marks`).
//!
//! The header contract lives here, in one place, for the gateway that reads
//! it and the sidecar that writes it.

use xxhash_rust::xxh3::Xxh3;

/// The request header naming the batch.
pub const KEY_HEADER: &str = "idempotency-key";
/// The request header giving the index of the body's first point within the
/// batch the key names (default 0).
pub const OFFSET_HEADER: &str = "idempotency-offset";
/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Largest index of a point within a batch (offset plus index in the body).
pub const MAX_INDEX: u64 = u32::MAX as u64;

/// A batch's identity on the bus: 128 bits of the writer's scope and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchKey(pub [u8; 16]);

/// Where a point sits in a batch sent with an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRef {
    pub key: BatchKey,
    /// The point's index within the whole batch.
    pub index: u32,
    /// The index of the first point of the request that carried it
    /// (`Idempotency-Offset`). Indices from `start` to `index` that did not
    /// reach a partition were sent elsewhere or refused by the same request.
    pub start: u32,
}

/// Why an `Idempotency-Key` or `Idempotency-Offset` header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible ASCII characters \
         (no spaces, quotes or backslashes), optionally in double quotes; got {0}"
    )]
    BadKey(String),
    #[error("Idempotency-Offset must be a whole number from 0 to {MAX_INDEX}; got {0:?}")]
    BadOffset(String),
    #[error("Idempotency-Offset was given without an Idempotency-Key")]
    OffsetWithoutKey,
    #[error(
        "Idempotency-Offset {offset} leaves no room for a body of up to {max_points} points: \
         indices within a batch end at {MAX_INDEX}"
    )]
    NoRoom { offset: u32, max_points: usize },
}

/// A request's batch: the key as hashed for the bus and the offset of its
/// first point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBatch {
    pub key: BatchKey,
    pub offset: u32,
}

impl RequestBatch {
    /// Reads the two headers (`None` when absent). `scope` is what identifies
    /// the writer (its `Authorization` header), so equal keys of different
    /// writers stay apart; `max_points` is the most points a body may hold,
    /// which must all get an index.
    pub fn from_headers(
        key: Option<&[u8]>,
        offset: Option<&[u8]>,
        scope: &[u8],
        max_points: usize,
    ) -> Result<Option<RequestBatch>, KeyError> {
        let Some(key) = key else {
            return match offset {
                Some(_) => Err(KeyError::OffsetWithoutKey),
                None => Ok(None),
            };
        };
        let key = valid_key(key)?;
        let offset = match offset {
            None => 0,
            Some(raw) => std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| KeyError::BadOffset(String::from_utf8_lossy(raw).into_owned()))?,
        };
        if u64::from(offset) + (max_points as u64).saturating_sub(1) > MAX_INDEX {
            return Err(KeyError::NoRoom { offset, max_points });
        }
        Ok(Some(RequestBatch {
            key: batch_key(scope, key),
            offset,
        }))
    }

    /// The reference of the point at `index` within the request's body
    /// (below the `max_points` the headers were checked against).
    pub fn point(&self, index: usize) -> BatchRef {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        BatchRef {
            key: self.key,
            index: self.offset.saturating_add(index),
            start: self.offset,
        }
    }
}

/// The key's text without optional surrounding quotes (the IETF draft sends
/// it as a structured-field string), if it is within the contract.
fn valid_key(raw: &[u8]) -> Result<&[u8], KeyError> {
    let key = match raw {
        [b'"', inner @ .., b'"'] => inner,
        other => other,
    };
    let visible = |b: &u8| (0x21..=0x7e).contains(b) && *b != b'"' && *b != b'\\';
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.iter().all(visible) {
        let described = if raw.len() > MAX_KEY_BYTES + 2 {
            format!("{} bytes", raw.len())
        } else {
            format!("{:?}", String::from_utf8_lossy(raw))
        };
        return Err(KeyError::BadKey(described));
    }
    Ok(key)
}

/// The batch key of `key` sent by the writer `scope`: xxh3-128 over both,
/// each length-prefixed so no two pairs hash the same input.
pub fn batch_key(scope: &[u8], key: &[u8]) -> BatchKey {
    let mut hasher = Xxh3::new();
    hasher.update(&(scope.len() as u64).to_le_bytes());
    hasher.update(scope);
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    BatchKey(hasher.digest128().to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(key: &str, offset: Option<&str>) -> Result<Option<RequestBatch>, KeyError> {
        RequestBatch::from_headers(
            Some(key.as_bytes()),
            offset.map(str::as_bytes),
            b"Bearer a",
            10,
        )
    }

    #[test]
    fn keys_are_scoped_by_writer_and_quotes_are_optional() {
        let plain = batch("8e03978e-40d5-43e8", None).unwrap().unwrap();
        let quoted = batch("\"8e03978e-40d5-43e8\"", None).unwrap().unwrap();
        assert_eq!(plain, quoted);
        assert_eq!(plain.offset, 0);
        assert_ne!(batch_key(b"Bearer a", b"k"), batch_key(b"Bearer b", b"k"));
        assert_ne!(batch_key(b"ab", b"c"), batch_key(b"a", b"bc"));
    }

    #[test]
    fn bad_keys_and_offsets_are_refused_with_the_rule() {
        let long = "x".repeat(129);
        for bad in ["", "has space", "a\\b", "\"\"", long.as_str()] {
            let error = batch(bad, None).unwrap_err();
            assert!(matches!(error, KeyError::BadKey(_)), "{bad:?}: {error}");
            assert!(error.to_string().contains("1 to 128"));
        }
        assert!(batch(&"x".repeat(128), None).is_ok());
        assert!(matches!(
            batch("k", Some("-1")),
            Err(KeyError::BadOffset(_))
        ));
        assert!(matches!(
            batch("k", Some("4294967296")),
            Err(KeyError::BadOffset(_))
        ));
        assert_eq!(
            RequestBatch::from_headers(None, Some(b"3"), b"", 10),
            Err(KeyError::OffsetWithoutKey)
        );
        assert_eq!(RequestBatch::from_headers(None, None, b"", 10), Ok(None));
    }

    #[test]
    fn points_are_numbered_from_the_offset_with_room_for_a_whole_body() {
        let b = batch("k", Some("10")).unwrap().unwrap();
        let p = b.point(5);
        assert_eq!((p.index, p.start), (15, 10));
        let last = (u32::MAX - 9).to_string();
        assert_eq!(
            batch("k", Some(&last)).unwrap().unwrap().point(9).index,
            u32::MAX
        );
        let over = (u32::MAX - 8).to_string();
        assert!(matches!(
            batch("k", Some(&over)),
            Err(KeyError::NoRoom { .. })
        ));
    }
}
