//! pg_waldump's output as wal-search and incremental backups read it: any lines, fed
//! through the parser, the table lineage and the changed-block reader, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgdr::physical::incremental::Changes;
use pgdr::walsearch::{lineage::Lineage, waldump};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lineage = Lineage::default();
    let mut changes = Changes::default();
    for line in text.lines() {
        changes.feed(line);
        let _ = waldump::lsn_of(line);
        if let Some(record) = waldump::parse(line) {
            let _ = lineage.apply(record);
        }
    }
    changes.settle();
});
