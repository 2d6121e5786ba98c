//! pg_waldump's output as wal-search reads it: any lines, fed through the parser and
//! the table lineage, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgdr::walsearch::{lineage::Lineage, waldump};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lineage = Lineage::default();
    for line in text.lines() {
        let _ = waldump::lsn_of(line);
        if let Some(record) = waldump::parse(line) {
            let _ = lineage.apply(record);
        }
    }
});
