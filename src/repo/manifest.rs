//! The manifest: everything a restore needs to know about one backup, written last
//! as the backup's commit point, encrypted like every other object.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::label::{BackupKind, BackupLabel};
use crate::pipeline::ObjectRecord;
use crate::postgres::datadir::{DirEntry, Tablespace};
use crate::postgres::{Lsn, TableRows, TimelineId};

pub const MANIFEST_FORMAT: u32 = 1;
/// The format of an incremental backup's manifest (its records may refer to older
/// backups); the newest this pgdr reads.
pub const MANIFEST_FORMAT_INCREMENTAL: u32 = 2;
/// A physical backup pgdr copied itself: its pieces carry BLAKE3 digests (`blake3`)
/// instead of SHA-256 (the same check at a fraction of the CPU), and it may be
/// incremental. The newest format this pgdr reads.
pub const MANIFEST_FORMAT_BLAKE3: u32 = 3;
/// The newest manifest format this pgdr reads: a newer one is refused, not guessed at.
pub const MANIFEST_FORMAT_NEWEST: u32 = MANIFEST_FORMAT_BLAKE3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub label: BackupLabel,
    pub kind: BackupKind,
    #[serde(default)]
    pub tags: Vec<String>,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// e.g. "15.18"
    pub pg_version: String,
    pub pg_version_num: u32,
    pub system_identifier: String,
    pub key_id: String,
    pub compression: CompressionInfo,
    #[serde(default)]
    pub databases: Vec<DatabaseEntry>,
    /// Object name of `pg_dumpall --globals-only` output (roles, tablespaces).
    #[serde(default)]
    pub globals: Option<String>,
    /// Every data object of the backup, with plaintext and stored sizes and hashes.
    pub objects: Vec<ObjectRecord>,
    /// What a physical backup adds: WAL positions and the file list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalInfo>,
    /// Every user relation of every database, with the file node WAL names it by,
    /// read inside the backup (what `wal-search` starts from).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalog: Vec<crate::postgres::catalog::DatabaseCatalog>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhysicalInfo {
    /// How the files were taken: copied by pgdr (bundles) or streamed by pg_basebackup
    /// (one tar object, checked on restore by pg_verifybackup).
    #[serde(default)]
    pub method: PhysicalMethod,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: TimelineId,
    pub segment_size: u64,
    /// First and last WAL segment the backup needs to be consistent.
    pub wal_start: String,
    pub wal_stop: String,
    /// From `pg_backup_stop`, written into the restored data directory.
    pub backup_label: String,
    #[serde(default)]
    pub tablespace_map: Option<String>,
    pub dirs: Vec<DirEntry>,
    pub tablespaces: Vec<Tablespace>,
    pub files: Vec<FileRecord>,
    /// The oldest transaction still running just before the backup started (a 64-bit
    /// txid): every older one had ended, so its commit lies before the backup's WAL
    /// and a recovery from it cannot stop there (`--target-xid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xmin_before: Option<u64>,
    /// An incremental backup: its parent and what it took from the WAL between them.
    /// `None`: a full backup, which needs no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Incremental>,
}

/// What makes a backup incremental (docs/FORMAT.md, "Incremental backups").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incremental {
    /// The backup this one was taken against.
    pub parent: String,
    /// Every older backup whose bundles this one's files refer to, the full one
    /// first: a restore, copy or retention of this backup needs all of them.
    pub chain: Vec<String>,
    /// The WAL read for changed blocks: from the parent's start to this backup's.
    pub wal_from: Lsn,
    pub wal_to: Lsn,
    /// Blocks the WAL named in files this backup stores in part.
    pub changed_blocks: u64,
    /// Files stored whole, and why, counted by reason (new, truncated, fsm/vm, …).
    pub whole_files: std::collections::BTreeMap<String, u64>,
    /// Bytes referred to in older backups instead of stored again.
    pub referenced_bytes: u64,
}

impl PhysicalInfo {
    /// `full` or `incr`.
    pub fn backup_type(&self) -> &'static str {
        if self.incremental.is_some() { "incr" } else { "full" }
    }

    /// The backups this one needs besides itself, the full one first.
    pub fn chain(&self) -> &[String] {
        self.incremental.as_ref().map_or(&[], |i| i.chain.as_slice())
    }
}

impl PhysicalInfo {
    /// Whether transaction `xid` had ended before this backup started, as far as the
    /// backup knows. A 32-bit xid is compared the way PostgreSQL does, modulo 2^32.
    pub fn ended_before(&self, xid: u64) -> bool {
        let Some(xmin) = self.xmin_before else { return false };
        if xid > u32::MAX as u64 {
            return xid < xmin;
        }
        ((xid as u32).wrapping_sub(xmin as u32) as i32) < 0
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhysicalMethod {
    /// pgdr reads the data directory itself (on the database host).
    #[default]
    Local,
    /// pg_basebackup streams it over a replication connection (from anywhere).
    Basebackup,
}

/// The object a basebackup-method backup is stored in.
pub const BASE_TAR: &str = "data/base.tar";

/// One file of a physical backup: where it sits inside which bundle object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    /// The piece's SHA-256 (hex): backups of format 1 and 2, and `--method
    /// basebackup` (PostgreSQL's own manifest). Empty when `blake3` is given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// The piece's BLAKE3 digest (hex): backups of format 3 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    pub mode: u32,
    pub bundle: String,
    pub offset: u64,
    /// Where this piece starts in its file: large files are stored as several pieces
    /// (records with the same path), so that they copy and restore in parallel.
    #[serde(default)]
    pub file_offset: u64,
    /// An incremental backup's reference to an entry stored by an older backup of its
    /// chain: that backup's label (its bundle `bundle` holds the entry). `None`: this
    /// backup's own bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Of a referenced entry, the byte ranges of the file (`[start, end)`, in file
    /// positions, sorted, inside the entry) that this backup takes from it; the rest
    /// of the entry is older than a block this backup stores itself. `None`: all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<[u64; 2]>>,
    /// A piece of scattered parts of its file (an incremental's changed blocks): the
    /// file positions its bytes fill, in order (`[start, end)`, sorted, disjoint,
    /// their lengths adding up to `size`). `None`: one run from `file_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<[u64; 2]>>,
}

impl FileRecord {
    /// The file positions the piece's bytes fill, in order.
    pub fn extents(&self) -> Vec<[u64; 2]> {
        match &self.extents {
            Some(e) => e.clone(),
            None => vec![[self.file_offset, self.file_offset + self.size]],
        }
    }

    /// The file positions this record lays down: its ranges of a referred piece, or
    /// all of its own piece.
    pub fn writes(&self) -> Vec<[u64; 2]> {
        match &self.ranges {
            Some(r) => r.clone(),
            None => self.extents(),
        }
    }

    /// The end of what this record lays down: the file is at least this long.
    pub fn end(&self) -> u64 {
        self.writes().last().map_or(0, |r| r[1])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressionInfo {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseEntry {
    pub name: String,
    /// Object name of the dump (`pg_dump -Fc`).
    pub object: String,
    /// Exact row counts of every table, taken in the dump's own snapshot.
    pub tables: Vec<TableRows>,
    /// How the database was created, so a restore can create it the same way.
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(default)]
    pub collate: Option<String>,
    #[serde(default)]
    pub ctype: Option<String>,
}

impl Manifest {
    pub fn object(&self, name: &str) -> Option<&ObjectRecord> {
        self.objects.iter().find(|o| o.name == name)
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseEntry> {
        self.databases.iter().find(|d| d.name == name)
    }

    pub fn stored_size(&self) -> u64 {
        self.objects.iter().map(|o| o.stored.size).sum()
    }

    pub fn plain_size(&self) -> u64 {
        self.objects.iter().map(|o| o.plain.size).sum()
    }
}

/// Manifests for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A physical manifest that finished at `stop` (and `stop_lsn`).
    pub fn physical_manifest(
        label: &str,
        stop: chrono::DateTime<chrono::Utc>,
        stop_lsn: crate::postgres::Lsn,
    ) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            label: label.parse().unwrap(),
            kind: crate::repo::BackupKind::Physical,
            tags: vec![],
            start_time: stop - chrono::Duration::minutes(5),
            stop_time: stop,
            pg_version: "15".into(),
            pg_version_num: 150000,
            system_identifier: "1".into(),
            key_id: "k".into(),
            compression: CompressionInfo {
                algorithm: "zstd".into(),
                level: 3,
            },
            databases: vec![],
            globals: None,
            objects: vec![],
            physical: Some(PhysicalInfo {
                method: Default::default(),
                start_lsn: crate::postgres::Lsn(stop_lsn.0.saturating_sub(0x1000000)),
                stop_lsn,
                timeline: 1,
                segment_size: 16 << 20,
                wal_start: "000000010000000000000001".into(),
                wal_stop: "000000010000000000000002".into(),
                backup_label: String::new(),
                tablespace_map: None,
                dirs: vec![],
                tablespaces: vec![],
                files: vec![],
                xmin_before: None,
                incremental: None,
            }),
            catalog: vec![],
        }
    }

    /// A record of `size` bytes at the start of `path`, in bundle `b0`, with a
    /// well-formed (not a true) BLAKE3 digest.
    pub fn file_record(path: &str, size: u64) -> FileRecord {
        FileRecord {
            path: path.into(),
            size,
            sha256: String::new(),
            blake3: Some("0".repeat(64)),
            mode: 0o600,
            bundle: "b0".into(),
            offset: 0,
            file_offset: 0,
            backup: None,
            ranges: None,
            extents: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest survives its JSON form unchanged (what `write_manifest` stores and
    /// the catalog reads back).
    #[test]
    fn manifest_round_trip() {
        let m = test_support::physical_manifest(
            "20261126T020000Z-F",
            "2026-11-26T02:10:00Z".parse().unwrap(),
            crate::postgres::Lsn(0x5000028),
        );
        let json = serde_json::to_vec(&m).unwrap();
        let back: Manifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&m).unwrap());
        assert_eq!(back.physical.unwrap().stop_lsn, crate::postgres::Lsn(0x5000028));
    }
}
