//! The manifest parser: any JSON (or not) is read without a panic; what parses
//! survives a round trip, and choosing a backup among it and checking its physical
//! records (paths, an incremental's references, extents and ranges) never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgdr::repo::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else { return };
    let text = serde_json::to_vec(&m).expect("a parsed manifest serialises");
    let again: Manifest = serde_json::from_slice(&text).expect("and parses again");
    assert_eq!(serde_json::to_vec(&again).unwrap(), text);
    if let Some(info) = &m.physical {
        if pgdr::physical::validate_paths(info).is_ok() {
            for f in &info.files {
                let _ = (f.end(), f.writes(), f.extents());
            }
        }
    }
    let all = vec![m];
    for selector in ["latest", "tag:x", "20261201T234528Z-L", ""] {
        let _ = pgdr::repo::catalog::resolve(&all, selector, None);
    }
});
