//! A piece's digest, as its manifest record names it: BLAKE3 for backups of format 3
//! on (about a fifth of SHA-256's CPU, which bounded restores), SHA-256 for older
//! ones and for pg_basebackup's records.

use std::io::{self, Read, Seek};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::repo::manifest::FileRecord;

/// Hashes a piece's bytes as they stream past.
pub enum PieceHasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(Sha256),
}

/// Tests: new backups hash their pieces with SHA-256 and write the manifest format
/// older builds wrote (`PGDR_TEST_PIECE_DIGEST=sha256`), to check that such backups,
/// and chains that mix both, still restore.
pub fn legacy_sha256() -> bool {
    std::env::var_os("PGDR_TEST_PIECE_DIGEST").is_some_and(|v| v == "sha256")
}

impl PieceHasher {
    /// BLAKE3 (only a test asks for the older SHA-256).
    pub fn new() -> PieceHasher {
        if legacy_sha256() {
            return PieceHasher::Sha256(Sha256::new());
        }
        PieceHasher::Blake3(Box::new(blake3::Hasher::new()))
    }

    /// Into the record: the digest, in the field of its algorithm.
    pub fn record_into(self, record: &mut FileRecord) {
        match self {
            h @ PieceHasher::Blake3(_) => record.blake3 = Some(h.finish()),
            h @ PieceHasher::Sha256(_) => record.sha256 = h.finish(),
        }
    }

    /// The digest `record` was written with.
    pub fn for_record(record: &FileRecord) -> PieceHasher {
        match record.blake3 {
            Some(_) => PieceHasher::Blake3(Box::new(blake3::Hasher::new())),
            None => PieceHasher::Sha256(Sha256::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            PieceHasher::Blake3(h) => {
                h.update(bytes);
            }
            PieceHasher::Sha256(h) => h.update(bytes),
        }
    }

    /// The digest, in hex.
    pub fn finish(self) -> String {
        match self {
            PieceHasher::Blake3(h) => h.finalize().to_hex().to_string(),
            PieceHasher::Sha256(h) => hex::encode(h.finalize()),
        }
    }
}

impl Default for PieceHasher {
    fn default() -> Self {
        PieceHasher::new()
    }
}

/// The digest `record` expects, and its algorithm's name.
pub fn expected(record: &FileRecord) -> (&'static str, &str) {
    match &record.blake3 {
        Some(b) => ("blake3", b.as_str()),
        None => ("sha256", record.sha256.as_str()),
    }
}

/// Whether a record's digest is well-formed: 64 hex digits of the algorithm it names
/// (a manifest without one could not be checked at all).
pub fn well_formed(record: &FileRecord) -> bool {
    let (_, hex) = expected(record);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether the `record.size` bytes of the file at `path` from `record.file_offset`
/// are the piece `record` describes (a delta restore leaves such a piece alone).
pub fn on_disk_matches(path: &Path, record: &FileRecord) -> io::Result<bool> {
    let mut file = std::fs::File::open(path)?;
    file.seek(io::SeekFrom::Start(record.file_offset))?;
    let mut file = file.take(record.size);
    let mut hasher = PieceHasher::for_record(record);
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        seen += n as u64;
    }
    Ok(seen == record.size && hasher.finish().eq_ignore_ascii_case(expected(record).1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers for both algorithms, and a delta check that reads only its range.
    #[test]
    fn known_digests_and_ranges() {
        let mut h = PieceHasher::new();
        h.update(b"abc");
        assert_eq!(
            h.finish(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        let mut h = PieceHasher::Sha256(Sha256::new());
        h.update(b"abc");
        assert_eq!(
            h.finish(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"xxabcyy").unwrap();
        let mut r = crate::repo::manifest::test_support::file_record("f", 3);
        r.file_offset = 2;
        r.sha256 = String::new();
        r.blake3 = Some("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85".into());
        assert!(well_formed(&r));
        assert!(on_disk_matches(&path, &r).unwrap());
        r.file_offset = 1;
        assert!(!on_disk_matches(&path, &r).unwrap());
        r.file_offset = 5; // the file ends first
        assert!(!on_disk_matches(&path, &r).unwrap());
        r.blake3 = Some("not hex".into());
        assert!(!well_formed(&r));
    }
}
