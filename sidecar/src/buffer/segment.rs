//! The segment file format, pure: bytes in, records out.
//!
//! ```text
//! segment = header record*
//! header  = "PSEG" version:u8 codec:u8 reserved:u16 created_ms:i64      (16 bytes, little endian)
//! record  = len:u32 points:u32 crc:u32 payload[len]                     (12 + len bytes)
//! ```
//!
//! `crc` is CRC-32 (IEEE) over `points` and `payload`. A payload is one
//! compressed frame (zstd or gzip, the segment's codec) of NDJSON points. Since
//! both formats allow concatenated frames, a segment's payloads laid end to end
//! are a valid request body for the gateway, sent without recompressing.
//!
//! Records are only ever appended. A crash can leave a partial record at the
//! end (a torn tail): [`scan`] stops at the first record that is incomplete or
//! fails its checksum, and everything before it is intact.

use crate::config::Compression;

pub const MAGIC: &[u8; 4] = b"PSEG";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
pub const RECORD_HEADER_LEN: usize = 12;
/// No record is larger: a length above this is corruption, not data.
pub const MAX_RECORD_LEN: usize = 256 << 20;

/// The fixed start of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub codec: Compression,
    /// When the segment was opened; the forward delay is measured from here.
    pub created_ms: i64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5] = match self.codec {
            Compression::Zstd => 1,
            Compression::Gzip => 2,
        };
        out[8..].copy_from_slice(&self.created_ms.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Header, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "{} bytes is shorter than a segment header",
                bytes.len()
            ));
        }
        if &bytes[..4] != MAGIC {
            return Err("not a segment file (bad magic)".into());
        }
        if bytes[4] != VERSION {
            return Err(format!("unknown segment version {}", bytes[4]));
        }
        let codec = match bytes[5] {
            1 => Compression::Zstd,
            2 => Compression::Gzip,
            other => return Err(format!("unknown codec {other}")),
        };
        let mut created = [0u8; 8];
        created.copy_from_slice(&bytes[8..HEADER_LEN]);
        Ok(Header {
            codec,
            created_ms: i64::from_le_bytes(created),
        })
    }
}

/// Appends one record to `out`.
pub fn encode_record(points: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&points.to_le_bytes());
    out.extend_from_slice(&checksum(points, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(points: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&points.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// One intact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub points: u32,
    pub payload: &'a [u8],
}

/// What a scan of a segment's bytes found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan<'a> {
    pub records: Vec<Record<'a>>,
    /// Bytes of the segment up to the end of the last intact record.
    pub valid_len: usize,
    /// Why the scan stopped before the end, if it did.
    pub stopped: Option<&'static str>,
}

impl Scan<'_> {
    pub fn points(&self) -> u64 {
        self.records.iter().map(|r| u64::from(r.points)).sum()
    }
}

/// Reads the records of a whole segment (header included), stopping at the
/// first incomplete or corrupt one.
pub fn scan(bytes: &[u8]) -> Result<(Header, Scan<'_>), String> {
    let header = Header::decode(bytes)?;
    let mut scan = Scan {
        valid_len: HEADER_LEN,
        ..Scan::default()
    };
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + RECORD_HEADER_LEN) else {
            scan.stopped = Some("incomplete record header");
            break;
        };
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (len, points, crc) = (word(0) as usize, word(4), word(8));
        if len > MAX_RECORD_LEN {
            scan.stopped = Some("impossible record length");
            break;
        }
        let start = at + RECORD_HEADER_LEN;
        let Some(payload) = bytes.get(start..start + len) else {
            scan.stopped = Some("incomplete record");
            break;
        };
        if checksum(points, payload) != crc {
            scan.stopped = Some("checksum mismatch");
            break;
        }
        scan.records.push(Record { points, payload });
        at = start + len;
        scan.valid_len = at;
    }
    Ok((header, scan))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn segment(records: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Header {
            codec: Compression::Zstd,
            created_ms: 1_721_199_945_000,
        }
        .encode()
        .to_vec();
        for (points, payload) in records {
            encode_record(*points, payload, &mut out);
        }
        out
    }

    #[test]
    fn header_round_trips_and_rejects_foreign_files() {
        let header = Header {
            codec: Compression::Gzip,
            created_ms: 42,
        };
        assert_eq!(Header::decode(&header.encode()).unwrap(), header);
        assert!(Header::decode(b"PSEG").is_err());
        assert!(Header::decode(&[0u8; 16]).is_err());
    }

    #[test]
    fn a_torn_tail_keeps_every_record_before_it() {
        let bytes = segment(&[(3, b"abc".to_vec()), (2, b"de".to_vec())]);
        let full = scan(&bytes).unwrap().1;
        assert_eq!(full.records.len(), 2);
        assert_eq!(full.points(), 5);
        assert_eq!(full.valid_len, bytes.len());
        for cut in HEADER_LEN..bytes.len() {
            let (_, torn) = scan(&bytes[..cut]).unwrap();
            let first_end = HEADER_LEN + RECORD_HEADER_LEN + 3;
            let expected = if cut >= first_end { 1 } else { 0 };
            assert_eq!(torn.records.len(), expected, "cut at {cut}");
            assert_eq!(
                torn.stopped.is_some(),
                cut != HEADER_LEN && cut != first_end
            );
        }
    }

    #[test]
    fn a_flipped_bit_stops_the_scan_at_that_record() {
        let mut bytes = segment(&[(1, b"one".to_vec()), (1, b"two".to_vec())]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let (_, scan) = scan(&bytes).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.stopped, Some("checksum mismatch"));
    }

    proptest! {
        #[test]
        fn records_round_trip(records in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..64)), 0..8)) {
            let bytes = segment(&records);
            let (_, scan) = scan(&bytes).unwrap();
            let got: Vec<(u32, Vec<u8>)> = scan.records.iter().map(|r| (r.points, r.payload.to_vec())).collect();
            prop_assert_eq!(got, records);
            prop_assert_eq!(scan.stopped, None);
        }

        #[test]
        fn any_damage_yields_a_prefix_and_never_panics(
            records in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..32)), 1..6),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut bytes = segment(&records);
            let at = flip.index(bytes.len() - HEADER_LEN) + HEADER_LEN;
            bytes[at] ^= 0x5a;
            let end = cut.index(bytes.len() + 1);
            if let Ok((_, scan)) = scan(&bytes[..end]) {
                prop_assert!(scan.records.len() <= records.len());
                for (got, want) in scan.records.iter().zip(&records) {
                    prop_assert_eq!(got.points, want.0);
                    prop_assert_eq!(got.payload, &want.1[..]);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = scan(&bytes);
        }
    }
}
