//! What a physical backup copies from a data directory, following PostgreSQL's docs
//! ("Making a Base Backup Using the Low Level API") and basebackup.c: everything but
//! WAL, runtime state, temporary files and the non-init forks of unlogged relations.
//! Tablespaces (symlinks in pg_tblspc) are followed and included.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Directories kept, but empty, in a backup.
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// The log of a server pgdr restored and started, in its data directory.
pub const RECOVERY_LOG: &str = "pgdr-recovery.log";
/// The log of the start before.
pub const RECOVERY_LOG_OLD: &str = "pgdr-recovery.log.old";

/// Files never copied, at the top level.
const SKIP_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "recovery.signal",
    "standby.signal",
    "recovery.done",
    "current_logfiles",
    "postgresql.auto.conf.tmp",
    // A restored copy's one-time `--archive` marker: a backup of that server must not
    // carry it into later restores (see `recovery::NEW_PRIMARY_MARKER`).
    crate::postgres::recovery::NEW_PRIMARY_MARKER,
    // The log pgdr gives a server it restored and started: that server's history, not
    // the cluster's. Carried into a backup, its old FATAL lines made the next
    // restore's start look failed.
    RECOVERY_LOG,
    RECOVERY_LOG_OLD,
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirEntry {
    /// Relative to the data directory; tablespace contents under `pg_tblspc/<oid>/`.
    pub path: String,
    pub mode: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: String,
    /// Where the tablespace lived on the source host.
    pub location: PathBuf,
}

#[derive(Debug, Clone)]
pub struct FileToCopy {
    pub path: String,
    pub source: PathBuf,
    pub size: u64,
    pub mode: u32,
    /// A piece of a large file: copy from `start`, `len` bytes (`None`: to the end).
    pub start: u64,
    pub len: Option<u64>,
    /// Scattered parts of the file, copied one after the other into one piece
    /// (`[start, end)` file positions, sorted; an incremental's changed blocks).
    /// When set, `start` is the first one's start and `len` their total.
    pub extents: Option<Vec<[u64; 2]>>,
}

#[derive(Debug, Default)]
pub struct Listing {
    pub dirs: Vec<DirEntry>,
    pub files: Vec<FileToCopy>,
    pub tablespaces: Vec<Tablespace>,
}

fn is_temp(name: &str) -> bool {
    name.starts_with("pgsql_tmp")
}

/// `t<digits>_<digits>[...]`: a temporary relation's file.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let mut parts = rest.splitn(2, '_');
    let backend = parts.next().unwrap_or("");
    let rel = parts.next().unwrap_or("");
    !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && rel.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

/// The relfilenode a relation fork file belongs to: `16384`, `16384.1`, `16384_fsm`.
fn relfilenode(name: &str) -> Option<&str> {
    let end = name.find(|c: char| !c.is_ascii_digit()).unwrap_or(name.len());
    (end > 0).then(|| &name[..end])
}

/// List what to copy from `data_dir`.
pub fn list(data_dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    walk(data_dir, "", &mut listing, true)?;
    let tblspc = data_dir.join("pg_tblspc");
    if let Ok(entries) = std::fs::read_dir(&tblspc) {
        for entry in entries.flatten() {
            let oid = entry.file_name().to_string_lossy().into_owned();
            let link = entry.path();
            let location = match std::fs::read_link(&link) {
                Ok(target) => target,
                Err(_) => link.clone(), // an in-place tablespace (a real directory)
            };
            listing.tablespaces.push(Tablespace {
                oid: oid.clone(),
                location,
            });
            let rel = format!("pg_tblspc/{oid}");
            let meta = std::fs::metadata(&link)?;
            listing.dirs.push(DirEntry {
                path: rel.clone(),
                mode: meta.permissions().mode() & 0o7777,
            });
            walk(&link, &rel, &mut listing, false)?;
        }
    }
    listing.dirs.sort_by(|a, b| a.path.cmp(&b.path));
    listing.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(listing)
}

fn walk(dir: &Path, rel: &str, listing: &mut Listing, top: bool) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // A directory that vanished during the backup (a dropped database).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        names.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
    }
    // Unlogged relations: those with an init fork; only the init fork is copied.
    let unlogged: HashSet<String> = names
        .iter()
        .filter_map(|(n, _)| {
            n.strip_suffix("_init")
                .filter(|r| r.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
        .collect();
    for (name, path) in names {
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if is_temp(&name) || name.starts_with(".pgdr") {
            continue;
        }
        if top && rel.is_empty() && name == "pg_tblspc" {
            listing.dirs.push(DirEntry {
                path: child_rel,
                mode: meta.permissions().mode() & 0o7777,
            });
            continue; // walked separately
        }
        if meta.is_dir() || (meta.file_type().is_symlink() && path.is_dir()) {
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
            listing.dirs.push(DirEntry {
                path: child_rel.clone(),
                mode,
            });
            if top && rel.is_empty() && EMPTY_DIRS.contains(&name.as_str()) {
                continue;
            }
            walk(&path, &child_rel, listing, top)?;
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        if top && rel.is_empty() && SKIP_TOP_FILES.contains(&name.as_str()) {
            continue;
        }
        if name == "pg_internal.init" || is_temp_relation(&name) {
            continue;
        }
        if !name.ends_with("_init")
            && let Some(node) = relfilenode(&name)
            && unlogged.contains(node)
        {
            continue;
        }
        listing.files.push(FileToCopy {
            path: child_rel,
            source: path,
            size: meta.len(),
            mode: meta.permissions().mode() & 0o7777,
            start: 0,
            len: None,
            extents: None,
        });
    }
    Ok(())
}

/// The system identifier in `global/pg_control` (its first 8 bytes, native endian).
pub fn control_system_identifier(data_dir: &Path) -> io::Result<String> {
    let control = std::fs::read(data_dir.join("global/pg_control"))?;
    let bytes: [u8; 8] = control
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "pg_control is too short"))?;
    Ok(u64::from_ne_bytes(bytes).to_string())
}

/// After a clean shutdown, the shutdown checkpoint's LSN from pg_control: the last
/// record the server wrote. `None` when pg_control's state is not "shut down" (a crash
/// or an immediate stop: the checkpoint there is older than the WAL). `state` is at
/// offset 16 (after the system identifier and two version numbers), `checkPoint` at 32
/// (after the state, padding and the time).
pub fn control_shutdown_checkpoint(data_dir: &Path) -> io::Result<Option<super::Lsn>> {
    const DB_SHUTDOWNED: u32 = 1;
    let control = std::fs::read(data_dir.join("global/pg_control"))?;
    let short = || io::Error::new(io::ErrorKind::InvalidData, "pg_control is too short");
    let state: [u8; 4] = control.get(16..20).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
    let lsn: [u8; 8] = control.get(32..40).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
    Ok((u32::from_ne_bytes(state) == DB_SHUTDOWNED).then(|| super::Lsn(u64::from_ne_bytes(lsn))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_what_postgres_says_to_skip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in [
            "base/1",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "base/1/pgsql_tmp",
            "pg_tblspc",
        ] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "pgdr-recovery.log",
            "pgdr-recovery.log.old",
            "global/pg_control",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            "base/1/1259",
            "base/1/1259_fsm",
            "base/1/16384",
            "base/1/16384.1",
            "base/1/16384_fsm",
            "base/1/16384_init",
            "base/1/t3_16390",
            "base/1/pg_internal.init",
            "base/1/pgsql_tmp/tmp1",
        ] {
            std::fs::write(p.join(f), b"x").unwrap();
        }
        let l = list(p).unwrap();
        let files: Vec<&str> = l.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            files,
            vec![
                "PG_VERSION",
                "base/1/1259",
                "base/1/1259_fsm",
                "base/1/16384_init",
                "global/pg_control"
            ]
        );
        let dirs: Vec<&str> = l.dirs.iter().map(|d| d.path.as_str()).collect();
        assert!(dirs.contains(&"pg_wal") && dirs.contains(&"pg_stat_tmp") && !dirs.contains(&"pg_wal/archive_status"));
    }
}
