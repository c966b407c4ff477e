//! A backup's manifest (what, when, which schema, row counts, checksums) and
//! the tally that counts and hashes a table's rows as they stream by.

use pulse_engine::store::postgres::TableShape;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this release writes and reads.
pub const FORMAT: u32 = 1;

/// `PREFIX/NAME/manifest.json`: written last, so its presence marks a
/// complete backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    /// When the snapshot was taken (RFC 3339, UTC).
    pub created_at: String,
    pub pulse_version: String,
    /// The pipeline it came from.
    pub namespace: String,
    pub pipeline: String,
    /// The PostgreSQL schema it was read from.
    pub schema: String,
    /// Its newest applied migration: a restore needs a Pulse that has it.
    pub schema_version: i64,
    /// How the rows were read: one snapshot for every table.
    pub consistency: String,
    /// How each table's object is compressed.
    pub compression: String,
    pub tables: Vec<TableEntry>,
}

/// One table of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    #[serde(flatten)]
    pub shape: TableShape,
    /// The object's name inside the backup (`<table>.copy.zst`).
    pub object: String,
    #[serde(flatten)]
    pub tally: Summary,
}

/// Rows, bytes and SHA-256 of a table's `COPY` text (before compression).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Counts and hashes `COPY` text chunk by chunk.
#[derive(Default)]
pub struct Tally {
    rows: u64,
    bytes: u64,
    hash: Sha256,
}

impl Tally {
    /// Adds a chunk. In `COPY` text form every row ends in a newline and a
    /// newline inside a value is written `\n`, so newlines count rows.
    pub fn add(&mut self, chunk: &[u8]) {
        self.rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        self.bytes += chunk.len() as u64;
        self.hash.update(chunk);
    }

    pub fn summary(&self) -> Summary {
        Summary {
            rows: self.rows,
            bytes: self.bytes,
            sha256: hex(&self.hash.clone().finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Manifest {
    /// Reads a manifest, refusing formats this release does not know.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("{what} is not a Pulse backup manifest: {e}"))?;
        if manifest.format != FORMAT {
            return Err(format!(
                "{what} has manifest format {}, this Pulse reads format {FORMAT}: restore it with \
                 the Pulse release that wrote it",
                manifest.format
            ));
        }
        Ok(manifest)
    }
}

impl TableEntry {
    /// Compares what a restore read with what the backup recorded.
    pub fn check(&self, read: &Summary) -> Result<(), String> {
        if *read == self.tally {
            return Ok(());
        }
        Err(format!(
            "the backup of table {} is damaged: it should hold {} rows, {} bytes, sha256 {}, but \
             {} rows, {} bytes, sha256 {} were read; nothing was restored",
            self.shape.name,
            self.tally.rows,
            self.tally.bytes,
            self.tally.sha256,
            read.rows,
            read.bytes,
            read.sha256
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_rows_across_chunks_and_hashes_the_text() {
        let mut whole = Tally::default();
        whole.add(b"1\ta\\nb\n2\tc\n");
        let mut split = Tally::default();
        split.add(b"1\ta\\nb\n2");
        split.add(b"\tc\n");
        assert_eq!(whole.summary(), split.summary());
        assert_eq!(whole.summary().rows, 2);
        assert_eq!(whole.summary().bytes, 11);
        // sha256 of the empty text: a table without rows.
        assert_eq!(
            Tally::default().summary().sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_manifest_round_trips_and_unknown_formats_are_refused() {
        let mut tally = Tally::default();
        tally.add(b"7\n");
        let manifest = Manifest {
            format: FORMAT,
            name: "20261201T000000.000Z".into(),
            created_at: "2026-12-01T00:00:00.000Z".into(),
            pulse_version: "0.1.0".into(),
            namespace: "ns".into(),
            pipeline: "p".into(),
            schema: "pulse_ns__p".into(),
            schema_version: 6,
            consistency: "one REPEATABLE READ snapshot".into(),
            compression: "zstd".into(),
            tables: vec![TableEntry {
                shape: TableShape {
                    name: "series".into(),
                    columns: vec!["id".into()],
                },
                object: "series.copy.zst".into(),
                tally: tally.summary(),
            }],
        };
        let json = serde_json::to_vec(&manifest).unwrap();
        assert_eq!(Manifest::parse(&json, "m").unwrap(), manifest);
        let entry = &manifest.tables[0];
        assert!(entry.check(&tally.summary()).is_ok());
        assert!(entry.check(&Tally::default().summary()).is_err());
        let newer = String::from_utf8(json)
            .unwrap()
            .replace("\"format\":1", "\"format\":2");
        assert!(
            Manifest::parse(newer.as_bytes(), "m")
                .unwrap_err()
                .contains("format 2")
        );
    }
}
