//! Points to the gateway's wire format: NDJSON lines of the original contract
//! (`{"metric_name":..,"value":..,"timestamp":<unix secs>,"tags":{..}}`),
//! compressed as one zstd or gzip frame. The gateway decodes it with the same
//! `pulse_core::codec::body` code the sidecar's own HTTP receiver uses.

use std::io::Write;

use pulse_core::Point;
use pulse_core::codec::json::write_point;

use crate::config::Compression;

/// Appends one NDJSON line per point to `out` (the shape of
/// `pulse_core::codec::json`, with the point's kind and sketch); returns the
/// number of lines.
pub fn ndjson(points: &[Point], out: &mut Vec<u8>) -> usize {
    let mut written = 0;
    for point in points {
        let start = out.len();
        // Writing into a Vec only fails if serialisation itself does, which a
        // validated point cannot make it; undo a partial line all the same.
        if write_point(point, out).is_ok() {
            out.push(b'\n');
            written += 1;
        } else {
            out.truncate(start);
        }
    }
    written
}

/// Compresses with a reusable context: zstd level 1 (fast; most of the gain
/// on repetitive metric text) or gzip level 1.
pub struct Compressor {
    codec: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Compressor {
    pub fn new(codec: Compression) -> std::io::Result<Compressor> {
        let zstd = match codec {
            Compression::Zstd => Some(zstd::bulk::Compressor::new(1)?),
            Compression::Gzip => None,
        };
        Ok(Compressor { codec, zstd })
    }

    pub fn codec(&self) -> Compression {
        self.codec
    }

    /// One complete frame holding `data`.
    pub fn compress(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.compress_into(data, &mut out)?;
        Ok(out)
    }

    /// Replaces the content of `out` with one complete frame holding `data`;
    /// a reused `out` saves an allocation per record.
    pub fn compress_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        out.clear();
        match &mut self.zstd {
            Some(zstd) => {
                out.reserve(zstd::compress_bound(data.len()));
                zstd.compress_to_buffer(data, out)?;
                Ok(())
            }
            None => {
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                encoder.write_all(data)?;
                encoder.finish().map(|_| ())
            }
        }
    }
}

/// The `Content-Encoding` of a body in `codec`.
pub fn content_encoding(codec: Compression) -> &'static str {
    match codec {
        Compression::Zstd => "zstd",
        Compression::Gzip => "gzip",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use pulse_core::codec::body::{decode_content, parse_points};
    use pulse_core::validate::Limits;

    use super::*;

    const NOW: i64 = 1_721_199_945_000;

    fn arb_point() -> impl Strategy<Value = Point> {
        (
            "[a-zA-Z_][a-zA-Z0-9_.:-]{0,30}",
            prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_.-]{0,12}", "[^\\p{Cc}]{1,20}", 0..5),
            any::<f64>().prop_filter("finite", |v| v.is_finite()),
            (NOW - 86_000_000)..(NOW + 500_000),
        )
            .prop_map(|(metric, tags, value, timestamp_ms)| Point {
                metric,
                tags,
                value,
                timestamp_ms,
                kind: pulse_core::MetricKind::Gauge,
                sketch: None,
            })
    }

    proptest! {
        /// What the sidecar sends, the gateway's own parser reads back
        /// unchanged, also as concatenated frames (how segments are sent).
        #[test]
        fn points_round_trip_through_the_gateway_parser(
            first in prop::collection::vec(arb_point(), 1..20),
            second in prop::collection::vec(arb_point(), 1..20),
            gzip in any::<bool>(),
        ) {
            let codec = if gzip { Compression::Gzip } else { Compression::Zstd };
            let mut compressor = Compressor::new(codec).unwrap();
            let mut body = Vec::new();
            for points in [&first, &second] {
                let mut text = Vec::new();
                prop_assert_eq!(ndjson(points, &mut text), points.len());
                body.extend(compressor.compress(&text).unwrap());
            }
            let decoded = decode_content(Some(content_encoding(codec)), &body, 1 << 24).unwrap();
            let batch = parse_points(&decoded, &Limits::default(), 100_000, NOW).unwrap();
            prop_assert!(batch.errors.is_empty(), "{:?}", batch.errors);
            let expected: Vec<Point> = first.iter().chain(&second).cloned().collect();
            prop_assert_eq!(batch.points.len(), expected.len());
            for (got, want) in batch.points.iter().zip(&expected) {
                let got = &got.point;
                prop_assert_eq!(&got.metric, &want.metric);
                prop_assert_eq!(&got.tags, &want.tags);
                prop_assert_eq!(got.timestamp_ms, want.timestamp_ms);
                // The sidecar writes the shortest exact form (ryu) and the
                // gateway reads the nearest double: bit for bit.
                prop_assert_eq!(got.value.to_bits(), want.value.to_bits());
            }
        }
    }
}
