//! Catch-up from the old primary's own `pg_wal`, when both data directories are on
//! this host: a standby that neither streamed nor found in the archive what the old
//! primary wrote last (the archiver never ships the segment being written) gets those
//! segments copied into its `pg_wal`, where its startup process looks between
//! attempts at the archive and the stream.
//!
//! Only after a clean stop of the old primary (its shutdown checkpoint says where the
//! WAL ends), and only into a directory proven to be the running standby's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use crate::postgres::wal::{Lsn, Segment};

/// What the standby says about itself, to recognise its data directory on this host.
pub struct StandbySelf {
    pub system_id: String,
    pub data_directory: String,
    pub port: u16,
    pub segment_size: u64,
}

/// `dir` is the data directory of the running standby that answered: the same
/// system, the path the server itself reports, and a live postmaster on its port.
/// Anything less and the old primary's WAL could land in some other cluster.
pub fn check_standby_dir(dir: &Path, standby: &StandbySelf) -> Result<String> {
    let canon = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("{} cannot be read", p.display()));
    let dir = canon(dir)?;
    let theirs = canon(Path::new(&standby.data_directory))?;
    if dir != theirs {
        return Err(anyhow!(
            "{} is not the standby's data directory (it reports {})",
            dir.display(),
            standby.data_directory
        ));
    }
    let system_id = crate::postgres::datadir::control_system_identifier(&dir)
        .with_context(|| format!("{} is not a data directory (global/pg_control)", dir.display()))?;
    if system_id != standby.system_id {
        return Err(anyhow!(
            "{} belongs to system {system_id}, the standby to {}",
            dir.display(),
            standby.system_id
        ));
    }
    let pid_file = std::fs::read_to_string(dir.join("postmaster.pid"))
        .with_context(|| format!("{} has no postmaster.pid: no server runs there", dir.display()))?;
    let mut lines = pid_file.lines();
    let pid: i32 = lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    let port: Option<u16> = lines.nth(2).and_then(|l| l.trim().parse().ok());
    if pid <= 1 || !crate::process::exists(pid) || port != Some(standby.port) {
        return Err(anyhow!(
            "the server running in {} is not the one on port {} (postmaster.pid)",
            dir.display(),
            standby.port
        ));
    }
    // What is copied must be the standby's to read: a segment it cannot open makes
    // it stop. pgdr gives it away as root, or must be that user.
    let (uid, _) = wal_owner(&dir)?;
    let me = crate::repo::owner::me();
    if me != 0 && me != uid {
        return Err(anyhow!(
            "{}/pg_wal belongs to {}, and pgdr runs as {}: run the failover as {} (or root) to give the standby WAL",
            dir.display(),
            crate::repo::owner::user_name(uid),
            crate::repo::owner::user_name(me),
            crate::repo::owner::user_name(uid)
        ));
    }
    Ok(format!(
        "{} is the standby's data directory: if it falls short, it is given the old primary's WAL from its pg_wal",
        dir.display()
    ))
}

/// The timeline the old primary last wrote on: its shutdown checkpoint's
/// `ThisTimeLineID`, at offset 48 of pg_control (`checkPointCopy` starts at 40 with
/// the 8-byte redo pointer).
fn control_timeline(data_dir: &Path) -> Result<u32> {
    let control = std::fs::read(data_dir.join("global/pg_control"))
        .with_context(|| format!("reading {}/global/pg_control", data_dir.display()))?;
    let bytes: [u8; 4] = control
        .get(48..52)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("{}/global/pg_control is too short", data_dir.display()))?;
    Ok(u32::from_ne_bytes(bytes))
}

/// Copy the old primary's segments from the one holding `from` to the one holding
/// `to` into the standby's `pg_wal`, each through a temporary name and a rename, owned
/// by `postgres` when pgdr runs as root. Returns the names copied. A segment missing
/// from the old `pg_wal` is an error: what follows it could not be replayed anyway.
pub fn copy_segments(old_dir: &Path, standby_dir: &Path, from: Lsn, to: Lsn, segment_size: u64) -> Result<Vec<String>> {
    let timeline = control_timeline(old_dir)?;
    let owner = wal_owner(standby_dir)?;
    let last = Segment::containing(timeline, to, segment_size);
    let mut segment = Segment::containing(timeline, from, segment_size);
    // The segment the standby stopped in may be recycled on the old primary already
    // (it was archived, and the standby has it): start at the first one still there.
    while segment < last && !old_dir.join("pg_wal").join(segment.name(segment_size)).is_file() {
        segment = segment.next();
    }
    let mut copied = Vec::new();
    while segment <= last {
        let name = segment.name(segment_size);
        let source = old_dir.join("pg_wal").join(&name);
        let dest = standby_dir.join("pg_wal").join(&name);
        copy_one(&source, &dest, owner)
            .with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
        copied.push(name);
        segment = segment.next();
    }
    Ok(copied)
}

/// The owner of a data directory's `pg_wal`: whom the server runs as.
fn wal_owner(data_dir: &Path) -> Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(data_dir.join("pg_wal"))
        .with_context(|| format!("{}/pg_wal cannot be read", data_dir.display()))?;
    Ok((meta.uid(), meta.gid()))
}

fn copy_one(source: &Path, dest: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    let tmp: PathBuf = dest.with_extension("pgdr-feed");
    let _ = std::fs::remove_file(&tmp);
    let mut input = std::fs::File::open(source)?;
    let mut output = crate::disk::create_private_file(&tmp)?;
    std::io::copy(&mut input, &mut output)?;
    output.sync_all()?;
    if crate::repo::owner::me() == 0 {
        std::os::unix::fs::fchown(&output, Some(uid), Some(gid))?;
    }
    drop(output);
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_segment_between_the_two_positions() {
        let old = tempfile::tempdir().unwrap();
        let standby = tempfile::tempdir().unwrap();
        for d in [old.path(), standby.path()] {
            std::fs::create_dir_all(d.join("pg_wal")).unwrap();
            std::fs::create_dir_all(d.join("global")).unwrap();
        }
        let mut control = vec![0u8; 512];
        control[48..52].copy_from_slice(&3u32.to_ne_bytes());
        std::fs::write(old.path().join("global/pg_control"), &control).unwrap();
        let size = 16 * 1024 * 1024;
        for n in 4..=7u64 {
            let name = Segment { timeline: 3, number: n }.name(size);
            std::fs::write(old.path().join("pg_wal").join(name), n.to_string()).unwrap();
        }
        let copied = copy_segments(old.path(), standby.path(), Lsn(5 * size + 10), Lsn(6 * size + 99), size).unwrap();
        assert_eq!(copied, vec!["000000030000000000000005", "000000030000000000000006"]);
        assert_eq!(
            std::fs::read_to_string(standby.path().join("pg_wal/000000030000000000000006")).unwrap(),
            "6"
        );
        assert!(!standby.path().join("pg_wal/000000030000000000000007").exists());
        // A gap in the old pg_wal is an error, not a silent stop.
        let err = copy_segments(old.path(), standby.path(), Lsn(7 * size), Lsn(8 * size + 1), size).unwrap_err();
        assert!(format!("{err:#}").contains("000000030000000000000008"), "{err:#}");
    }
}
