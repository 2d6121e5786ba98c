//! The WAL prefetcher: after a segment, a detached `pgdr wal-prefetch` fetches the
//! next ones in parallel into `pg_wal/.pgdr-prefetch/`, so replay is not bound by one
//! round trip per segment. `fetch` takes a prefetched file from there first.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::postgres::wal::LongPageHeader;
use crate::postgres::{Segment, WalFile};
use crate::repo;
use crate::storage;

pub const PREFETCH_DIR: &str = ".pgdr-prefetch";
const PREFETCH_PARALLEL: usize = 4;

/// Start a detached `pgdr wal-prefetch` for the segments after `file`, unless one is
/// still running.
pub fn start(config: &Config, file: &WalFile, dest: &Path, dir: &Path) {
    let Ok(header) = LongPageHeader::read(dest) else { return };
    let seg_size = header.segment_size as u64;
    if !seg_size.is_power_of_two() || std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(pid) = std::fs::read_to_string(dir.join(".lock"))
        && let Ok(pid) = pid.trim().parse::<i32>()
        // SAFETY: kill with signal 0 only checks for existence; a pid of another user
        // (EPERM) is not our prefetcher.
        && unsafe { libc::kill(pid, 0) } == 0
    {
        return; // a prefetcher is at work
    }
    let Some(mut cmd) = crate::process::pgdr_again(config) else {
        return;
    };
    cmd.args([
        "wal-prefetch",
        "--after",
        file.name(),
        "--segment-size",
        &seg_size.to_string(),
        "--dir",
    ])
    .arg(dir);
    if let Ok(child) = crate::process::spawn_detached(cmd, None) {
        let _ = std::fs::write(dir.join(".lock"), child.id().to_string());
    }
}

/// The detached prefetcher's work: fetch the `[wal] prefetch` segments after `after`
/// (of `segment_size`) into `dir`, in parallel, dropping those replay has passed.
pub async fn run(config: &Config, after: &str, segment_size: u64, dir: &Path) -> Result<()> {
    let Some(first) = Segment::parse(after, segment_size) else {
        return Ok(());
    };
    let storage = storage::open(&config.repository, &config.cluster).await?;
    let keys = repo::bound_keyring(config, &storage).await?;
    // Drop what recovery has gone past.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if WalFile::parse(&name).is_some() && name.as_str() <= after {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut wanted: Vec<PathBuf> = Vec::new();
    let mut seg = first;
    for _ in 0..config.wal.prefetch {
        seg = seg.next();
        let path = dir.join(seg.name(segment_size));
        if !path.exists() {
            wanted.push(path);
        }
    }
    let mut tasks = JoinSet::new();
    for path in wanted {
        while tasks.len() >= PREFETCH_PARALLEL {
            if let Some(Ok(Ok(false))) = tasks.join_next().await {
                break; // the archive ends here
            }
        }
        let storage = storage.clone();
        let keys = keys.clone();
        tasks.spawn(async move {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let file = WalFile::parse(&name).ok_or_else(|| anyhow!("bad name"))?;
            super::fetch::fetch_into(&storage, &keys, &file, &path).await
        });
    }
    while tasks.join_next().await.is_some() {}
    let _ = std::fs::remove_file(dir.join(".lock"));
    Ok(())
}
