//! Any query string on the dashboard's three parameter sets: parsing it never
//! panics, and what it accepts is within the limits (tag filters, group-by
//! keys, the range span).
#![no_main]

#[path = "../../src/instant.rs"]
#[allow(dead_code)]
mod instant;
#[path = "../../src/params.rs"]
#[allow(dead_code)]
mod params;

use libfuzzer_sys::fuzz_target;
use params::{
    KnownWindows, LatestParams, LatestRequest, LiveFilter, LiveParams, MAX_GROUP_BY, MAX_RANGE_MS,
    RangeParams, RangeRequest,
};
use pulse_core::result::MAX_TAG_FILTERS;

fuzz_target!(|data: &[u8]| {
    let windows = KnownWindows::from_config(&pulse_core::config::Config::default());
    if let Ok(params) = serde_urlencoded::from_bytes::<RangeParams>(data) {
        if let Ok(request) = RangeRequest::parse(&params, &windows, 1_721_199_945_000) {
            assert!(request.tags.len() <= MAX_TAG_FILTERS);
            assert!(request.group_by.len() <= MAX_GROUP_BY);
            assert!(request.from_ms <= request.to_ms);
            assert!(request.to_ms - request.from_ms <= MAX_RANGE_MS);
        }
    }
    if let Ok(params) = serde_urlencoded::from_bytes::<LatestParams>(data) {
        if let Ok(request) = LatestRequest::parse(&params, &windows) {
            assert!(request.tags.len() <= MAX_TAG_FILTERS);
        }
    }
    if let Ok(params) = serde_urlencoded::from_bytes::<LiveParams>(data) {
        let _ = LiveFilter::parse(&params, &windows);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = instant::parse(text);
    }
});
