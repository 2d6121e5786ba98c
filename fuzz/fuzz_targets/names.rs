//! WAL, timeline, LSN and label names, keys as typed for `cat`, timeline histories
//! and recovery targets: any text is parsed without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgdr::postgres::{Lsn, Segment, WalFile};
use pgdr::repo::BackupLabel;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();
    if let Some(f) = WalFile::parse(s) {
        let _ = f.log_dir();
        let _ = pgdr::repo::layout::wal_file(&f);
    }
    for size in [1u64 << 20, 16 << 20, 1 << 30] {
        if let Some(seg) = Segment::parse(s, size) {
            let _ = seg.name(size);
            let _ = seg.start_lsn(size);
        }
    }
    if let Ok(lsn) = s.parse::<Lsn>() {
        assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
    }
    if let Ok(label) = s.parse::<BackupLabel>() {
        let _ = label.time();
        let _ = pgdr::repo::layout::manifest(&label);
    }
    if let Ok(key) = pgdr::repo::layout::user_key(s) {
        let _ = pgdr::repo::layout::parse_wal_key(&key);
        let _ = pgdr::repo::layout::parse_backup_key(&key);
    }
    let _ = pgdr::repo::archive::parse_history(s);
    let _ = pgdr::restore::target::parse_target_time(s);
    let _ = pgdr::restore::target::parse_step_target(s);
});
