//! Any request body, as protobuf and as JSON: decoding and mapping it never
//! panics, and the point limit holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_sidecar::parse::otlp::{Encoding, decode, to_points};

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        if let Ok(request) = decode(data, encoding) {
            if let Ok(mapped) = to_points(request, &["service.name".to_string()], 10_000, 0) {
                assert!(mapped.points.len() <= 10_000);
            }
        }
    }
});
