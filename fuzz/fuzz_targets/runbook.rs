//! Runbooks (scenarios/*.toml): parsed and checked with file:line errors, never a
//! panic; inputs of one that parses are resolved too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pgdr::runbook::Runbook::parse(&String::from_utf8_lossy(data), "fuzz.toml") {
        let _ = r.resolve_inputs(&Default::default());
    }
});
