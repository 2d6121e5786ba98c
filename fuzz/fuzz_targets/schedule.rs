//! Schedule files (jobs with cron expressions, time zones, commands).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pgdr::schedule::parse(&String::from_utf8_lossy(data), "fuzz.toml");
});
