//! The binary `COPY ... FROM STDIN` encoder: the fastest way into
//! PostgreSQL for the rows a commit writes in bulk (window results, raw
//! points), streamed in pieces so a large commit never sits in memory twice.

use sqlx::PgConnection;

/// COPY data is sent in pieces of about this many bytes, so a large commit is
/// streamed (and the server parses one piece while the next is encoded).
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// Data of `COPY ... FROM STDIN (FORMAT binary)`: a signature and header,
/// then per row a field count and length-prefixed big-endian fields, then
/// the trailer [`copy_in`] adds.
pub(super) struct CopyData(Vec<u8>);

impl CopyData {
    fn new() -> CopyData {
        let mut buf = Vec::with_capacity(COPY_CHUNK_BYTES + 64 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        CopyData(buf)
    }

    /// Starts a row of `fields` fields.
    pub(super) fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    /// A variable-length field (text, bytea).
    pub(super) fn field(&mut self, bytes: &[u8]) -> Result<(), sqlx::Error> {
        let len = i32::try_from(bytes.len())
            .map_err(|_| sqlx::Error::Encode("a COPY field longer than 2 GiB".into()))?;
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    /// A `bigint` field.
    pub(super) fn int8(&mut self, value: i64) {
        self.0.extend_from_slice(&8i32.to_be_bytes());
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    /// A `double precision` field.
    pub(super) fn float8(&mut self, value: f64) {
        self.0.extend_from_slice(&8i32.to_be_bytes());
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    /// An `integer` field.
    pub(super) fn int4(&mut self, value: i32) {
        self.0.extend_from_slice(&4i32.to_be_bytes());
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    /// A `NULL` field.
    pub(super) fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }
}

/// Runs `statement` (a `COPY ... FROM STDIN (FORMAT binary)`) on `conn`,
/// streaming `rows` as `put` encodes them; returns the rows written.
pub(super) async fn copy_in<T: Sync>(
    conn: &mut PgConnection,
    statement: &str,
    rows: &[T],
    put: fn(&mut CopyData, &T) -> Result<(), sqlx::Error>,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut data = CopyData::new();
    for row in rows {
        if let Err(e) = put(&mut data, row) {
            copy.abort(e.to_string()).await?;
            return Err(e);
        }
        if data.0.len() >= COPY_CHUNK_BYTES {
            let full = std::mem::replace(
                &mut data.0,
                Vec::with_capacity(COPY_CHUNK_BYTES + 64 * 1024),
            );
            copy.send(full).await?;
        }
    }
    data.0.extend_from_slice(&(-1i16).to_be_bytes());
    copy.send(data.0).await?;
    copy.finish().await
}
