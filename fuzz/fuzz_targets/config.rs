//! The configuration file: any text is refused with an error or read, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(table) = text.parse::<toml::Table>() {
        let _ = pgdr::config::Config::from_table(table, "fuzz.toml");
    }
});
