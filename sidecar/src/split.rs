//! Cutting a batch into requests the gateway takes: pure, bytes in, pieces out.
//!
//! A segment is normally sent as it is, one request. When it holds more points
//! than the gateway takes per request (`forward.max_points_per_request`, the
//! pipeline's `limits.maxPointsPerRequest`), or the gateway answers `413`
//! anyway (a limit the sidecar was not told of, or a batch written before it
//! was), the batch is decompressed back to its NDJSON lines and cut at line
//! boundaries into pieces, each compressed again. A piece of one point that
//! is still too large is the only thing resending can never fix.

use std::io::Read;

use axum::body::Bytes;

use crate::config::Compression;
use crate::encode::Compressor;

/// Part of a batch, sent as one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Compressed NDJSON, one frame or several end to end.
    pub body: Bytes,
    pub points: u64,
    /// The index of its first point within the segment's batch: the
    /// request's `Idempotency-Offset`, so however the batch is cut, each point
    /// keeps one index under the segment's key.
    pub first: u64,
}

/// The NDJSON text of a compressed body, refusing to grow past `max` bytes
/// (a body that does is corrupt: the writer never makes one that large).
pub fn decompress(codec: Compression, body: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut text = Vec::new();
    let limit = max as u64 + 1;
    let read = match codec {
        Compression::Zstd => zstd::stream::read::Decoder::new(body)
            .and_then(|d| d.take(limit).read_to_end(&mut text)),
        Compression::Gzip => flate2::read::MultiGzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut text),
    };
    read.map_err(|e| format!("cannot decompress the batch: {e}"))?;
    if text.len() > max {
        return Err(format!("the batch decompresses to more than {max} bytes"));
    }
    Ok(text)
}

/// `text` cut at line ends into chunks of at most `max_points` lines and at
/// most `max_bytes` bytes; a line longer than `max_bytes` is a chunk alone.
/// Empty lines are not points and are left out.
pub fn split_lines(text: &[u8], max_points: usize, max_bytes: usize) -> Vec<(&[u8], u64)> {
    let (max_points, max_bytes) = (max_points.max(1) as u64, max_bytes.max(1));
    let mut chunks = Vec::new();
    let (mut start, mut end, mut points) = (0, 0, 0u64);
    for line in text.split_inclusive(|&b| b == b'\n') {
        let line_start = end;
        end += line.len();
        if line.iter().all(u8::is_ascii_whitespace) {
            if points == 0 {
                start = end;
            }
            continue;
        }
        if points > 0 && (points >= max_points || end - start > max_bytes) {
            chunks.push((&text[start..line_start], points));
            start = line_start;
            points = 0;
        }
        points += 1;
    }
    if points > 0 {
        chunks.push((&text[start..end], points));
    }
    chunks
}

/// `text` as compressed pieces within the limits, its first point at index
/// `first` of the batch.
pub fn pieces(
    codec: Compression,
    text: &[u8],
    max_points: usize,
    max_bytes: usize,
    first: u64,
) -> std::io::Result<Vec<Piece>> {
    let mut compressor = Compressor::new(codec)?;
    let mut next = first;
    split_lines(text, max_points, max_bytes)
        .into_iter()
        .map(|(chunk, points)| {
            let piece = Piece {
                body: Bytes::from(compressor.compress(chunk)?),
                points,
                first: next,
            };
            next += points;
            Ok(piece)
        })
        .collect()
}

/// `piece` cut in two halves by points (each also within `max_bytes`), after
/// the gateway refused it as too large; `max_text` bounds its decompression.
pub fn halve(
    codec: Compression,
    piece: &Piece,
    max_bytes: usize,
    max_text: usize,
) -> Result<Vec<Piece>, String> {
    let text = decompress(codec, &piece.body, max_text)?;
    let half = piece.points.div_ceil(2) as usize;
    pieces(codec, &text, half, max_bytes, piece.first)
        .map_err(|e| format!("cannot compress a piece: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("{{\"metric_name\":\"m\",\"value\":{i}}}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn chunks_hold_whole_lines_within_both_limits() {
        let text = lines(250);
        let chunks = split_lines(&text, 100, usize::MAX);
        let counts: Vec<u64> = chunks.iter().map(|c| c.1).collect();
        assert_eq!(counts, [100, 100, 50]);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.0.to_vec()).collect();
        assert_eq!(joined, text, "nothing lost, nothing repeated, in order");

        let line = lines(1).len();
        let chunks = split_lines(&text, 1000, line * 3);
        assert!(chunks.iter().all(|c| c.0.len() <= line * 3), "{chunks:?}");
        assert_eq!(chunks.iter().map(|c| c.1).sum::<u64>(), 250);
    }

    #[test]
    fn a_line_over_the_byte_limit_goes_alone_and_blank_lines_are_not_points() {
        let text = b"\n{\"a\":1}\n\n{\"long\":\"xxxxxxxxxxxxxxxxxxxx\"}\n{\"b\":2}";
        let chunks = split_lines(text, 10, 10);
        let counts: Vec<u64> = chunks.iter().map(|c| c.1).collect();
        assert_eq!(counts, [1, 1, 1]);
        assert!(split_lines(b"\n \n", 10, 10).is_empty());
    }

    #[test]
    fn pieces_and_halves_decompress_to_the_original_lines() {
        for codec in [Compression::Zstd, Compression::Gzip] {
            let text = lines(7);
            let whole = pieces(codec, &text, 100, usize::MAX, 0).unwrap();
            assert_eq!(whole.len(), 1);
            let halves = halve(codec, &whole[0], usize::MAX, 1 << 20).unwrap();
            assert_eq!(halves.iter().map(|p| p.points).collect::<Vec<_>>(), [4, 3]);
            assert_eq!(halves.iter().map(|p| p.first).collect::<Vec<_>>(), [0, 4]);
            let quarters = halve(codec, &halves[1], usize::MAX, 1 << 20).unwrap();
            assert_eq!(quarters.iter().map(|p| p.first).collect::<Vec<_>>(), [4, 6]);
            let mut again = Vec::new();
            for piece in &halves {
                again.extend(decompress(codec, &piece.body, 1 << 20).unwrap());
            }
            assert_eq!(again, text);
        }
    }

    #[test]
    fn a_body_that_decompresses_past_the_bound_is_refused() {
        let text = lines(100);
        let piece = &pieces(Compression::Zstd, &text, 1000, usize::MAX, 0).unwrap()[0];
        assert!(decompress(Compression::Zstd, &piece.body, 100).is_err());
        assert!(decompress(Compression::Gzip, b"not gzip", 100).is_err());
    }
}
