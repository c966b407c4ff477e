//! Any exposition text: parsing and mapping it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_sidecar::parse::prometheus::{parse, to_points};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let exposition = parse(&text);
    let _ = to_points(exposition.samples, 1_721_199_945_000);
});
