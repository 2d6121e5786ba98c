//! Orphans: the objects of backups that never got a manifest (failed, killed, or still
//! running), and temporary files of interrupted writes.

use std::time::Duration;

use super::{CheckReport, Status};
use crate::config::{Config, RepoUrl};
use crate::progress::human_bytes;
use crate::repo::catalog;
use crate::storage::{DynStorage, local};

/// Orphans: objects of backups that never got a manifest; removed with
/// `--clean-orphans`, only under the backup lock.
pub(super) async fn checks(config: &Config, storage: &DynStorage, clean: bool, report: &mut CheckReport) {
    match catalog::scan(storage).await {
        Ok(scan) => {
            // A backup in progress has no manifest yet: only the backup lock tells
            // a running backup from a dead one (an age would not: a dump may run
            // for hours).
            let lock = if clean && !scan.orphans.is_empty() {
                match crate::repo::Repo::open(config).await {
                    Ok(repo) => Some(crate::repo::lock::BackupLock::acquire(&repo, Duration::ZERO).await),
                    Err(e) => Some(Err(e)),
                }
            } else {
                None
            };
            let locked = matches!(lock, Some(Ok(Ok(_))));
            if scan.orphans.is_empty() {
                report.add(
                    Status::Ok,
                    "orphans",
                    format!("{} complete backup(s), no orphans", scan.complete.len()),
                );
            } else if clean && !locked {
                let why = match &lock {
                    Some(Ok(Err(holder))) => format!("a backup is running ({holder}) and holds the backup lock"),
                    Some(Err(e)) => format!("the backup lock cannot be taken: {e:#}"),
                    _ => "the backup lock is held".to_string(),
                };
                report.add(
                    Status::Warn,
                    "orphans",
                    format!(
                        "{} backup(s) without a manifest left alone: {why} — run --clean-orphans again when no backup runs",
                        scan.orphans.len()
                    ),
                );
            } else if clean {
                // No backup runs (this process holds the lock): every orphan is dead.
                // Listed again under the lock: one that committed since the first
                // listing is complete now, not an orphan.
                let removed = async {
                    let now = catalog::scan(storage).await?;
                    let keys: Vec<_> = now.orphans.iter().flat_map(|o| o.objects.iter().cloned()).collect();
                    storage.delete(&keys).await?;
                    // A killed backup's half-written object is a temporary file,
                    // invisible to listings; with no backup running it is dead too.
                    if let Ok(RepoUrl::Local(path)) = config.repository.parsed_url() {
                        let backups = path.join(&config.cluster).join(crate::repo::layout::BACKUPS);
                        for temp in local::stale_temp_files(&backups) {
                            let _ = std::fs::remove_file(temp);
                        }
                    }
                    anyhow::Ok(now.orphans.len())
                }
                .await;
                match removed {
                    Ok(n) => report.add(Status::Ok, "orphans", format!("removed {n} orphaned backup(s)")),
                    Err(e) => report.add(Status::Fail, "orphans", format!("removing orphans: {e:#}")),
                }
            } else {
                let names: Vec<String> = scan
                    .orphans
                    .iter()
                    .map(|o| format!("{} ({})", o.label, human_bytes(o.bytes)))
                    .collect();
                report.add(
                    Status::Warn,
                    "orphans",
                    format!(
                        "{} backup(s) without a manifest (failed or running): {} — remove stale ones with `pgdr check --clean-orphans`",
                        names.len(),
                        names.join(", ")
                    ),
                );
            }
            if let Some(Ok(Ok(lock))) = lock {
                lock.release().await;
            }
        }
        Err(e) => report.add(Status::Fail, "orphans", format!("{e:#}")),
    }
    if let Ok(RepoUrl::Local(path)) = config.repository.parsed_url() {
        let temps = local::stale_temp_files(&path.join(&config.cluster));
        if !temps.is_empty() {
            report.add(
                Status::Warn,
                "temp files",
                format!(
                    "{} leftover temporary file(s) from interrupted writes, e.g. {}",
                    temps.len(),
                    temps[0].display()
                ),
            );
        }
    }
}
