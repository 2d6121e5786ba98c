//! The stored-object decoder (header, key id, wrapped key, chunk framing, zstd):
//! any bytes from a repository are opened without a panic, and only an authentic
//! object yields plaintext. Seeded with real objects of tests/fixtures/format1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgdr::pipeline::{Keyring, RepoKey, open_sealed};
use pgdr::storage::ObjectKey;

fuzz_target!(|data: &[u8]| {
    let key = RepoKey::from_hex(include_str!("../../tests/fixtures/format1/repo.key"), "fixture").unwrap();
    let keys = Keyring::new(key);
    for name in [
        "backups/20261201T234528Z-L/databases/app.dump",
        "backups/20261201T234528Z-L/manifest.json",
        "backups/20261201T234528Z-L/globals.sql",
    ] {
        let _ = open_sealed(data, &ObjectKey::new(name).unwrap(), &keys);
    }
    let _ = pgdr::pipeline::seal::peek_key_id(data);
});
