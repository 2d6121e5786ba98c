//! What a client sends to the metrics endpoint: any bytes, cut anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pgdr::schedule::metrics::route(data);
});
