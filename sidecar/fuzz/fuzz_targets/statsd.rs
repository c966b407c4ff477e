//! Any datagram: parsing and aggregating it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_sidecar::aggregate::Aggregator;
use pulse_sidecar::parse::statsd::parse_packet;

fuzz_target!(|data: &[u8]| {
    let mut aggregator = Aggregator::new(1000);
    for line in parse_packet(data).flatten() {
        let _ = aggregator.add(line);
    }
    let _ = aggregator.take_samples();
    let _ = aggregator.flush(1_721_199_945_000);
});
