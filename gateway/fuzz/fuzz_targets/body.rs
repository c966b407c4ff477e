//! Any body under any content encoding: decoding and parsing it never panics,
//! stays within the limits, and accounts for every point exactly once, under
//! its own index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_core::codec::body::{BodyError, decode_content_within, parse_points_within};
use pulse_core::validate::Limits;

const ENCODINGS: [Option<&str>; 5] = [None, Some("gzip"), Some("zstd"), Some("identity"), Some("br")];
const MAX_DECODED: usize = 1 << 20;
const MAX_POINTS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let encoding = ENCODINGS[usize::from(selector) % ENCODINGS.len()];
    let mut charged = 0usize;
    let mut charge = |n: usize| -> Result<(), BodyError> {
        charged += n;
        Ok(())
    };
    let Ok(text) = decode_content_within(encoding, body, MAX_DECODED, &mut charge) else {
        return;
    };
    assert!(text.len() <= MAX_DECODED);
    let Ok(batch) = parse_points_within(&text, &Limits::default(), MAX_POINTS, 1_721_199_945_000, &mut charge) else {
        return;
    };
    let mut indices: Vec<usize> = batch.points.iter().map(|p| p.index).collect();
    indices.extend(batch.errors.iter().map(|e| e.index));
    indices.sort_unstable();
    let count = indices.len();
    indices.dedup();
    assert_eq!(indices.len(), count, "an index is used twice");
    assert!(count <= MAX_POINTS);
    // Every index below the count is accounted for (no point lost).
    assert!(indices.iter().enumerate().all(|(i, &index)| i == index));
});
