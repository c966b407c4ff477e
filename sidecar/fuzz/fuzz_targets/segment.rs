//! Any file content: scanning it as a segment never panics, and what it
//! returns lies within the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_sidecar::buffer::segment::scan;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, scan)) = scan(data) {
        assert!(scan.valid_len <= data.len());
        let payload: usize = scan.records.iter().map(|r| r.payload.len()).sum();
        assert!(payload <= data.len());
    }
});
