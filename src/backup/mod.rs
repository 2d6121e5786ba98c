//! Taking backups, as a library: `run` takes the repository's backup lock, takes a
//! logical (`logical`: pg_dumpall + one pg_dump per database) or physical
//! (`physical`: pgdr's own data-directory copy, or pg_basebackup's tar) backup, and
//! commits it (`commit`: the manifest last, only while the lock is still ours). The
//! verb turns command-line flags into [`BackupOptions`] and prints the [`BackupReport`].

mod commit;
mod incremental;
mod logical;
mod physical;
pub mod report;
pub mod source;
mod standby;

use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::repo::lock::BackupLock;
use crate::repo::manifest::PhysicalMethod;
use crate::repo::{BackupKind, Repo};
use crate::usage;

pub use report::{BackupReport, LogicalBackupReport, PhysicalBackupReport};

/// What to back up and how, validated.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub kind: BackupKind,
    /// Physical only.
    pub method: PhysicalMethod,
    /// Logical only; empty means every database.
    pub databases: Vec<String>,
    pub tags: Vec<String>,
    /// Mark the backup keep once committed.
    pub keep: bool,
    /// Parallel workers for pgdr's own physical copy.
    pub jobs: usize,
    pub spread_checkpoint: bool,
    /// How long to wait for another backup of the cluster to release the lock.
    pub lock_wait: Duration,
    /// Physical, `--method local`: full, or only what changed since a parent.
    pub backup_type: BackupType,
    /// Physical, `--method local`: read the files on `[postgres] standby_url`.
    pub from_standby: bool,
}

/// What a physical backup copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    /// Every file.
    #[default]
    Full,
    /// The blocks changed since the last full backup.
    Diff,
    /// The blocks changed since the last physical backup, full or not.
    Incr,
}

impl Default for BackupOptions {
    /// A logical backup of every database, one physical worker per core, no waiting
    /// for another backup's lock.
    fn default() -> BackupOptions {
        BackupOptions {
            kind: BackupKind::Logical,
            method: PhysicalMethod::Local,
            databases: Vec::new(),
            tags: Vec::new(),
            keep: false,
            jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            spread_checkpoint: false,
            lock_wait: Duration::ZERO,
            backup_type: BackupType::Full,
            from_standby: false,
        }
    }
}

impl BackupOptions {
    /// Check what can be checked without a server: tags, and that `databases` is only
    /// given to a logical backup; at least one worker.
    pub fn validate(mut self) -> Result<BackupOptions> {
        for tag in &self.tags {
            validate_tag(tag)?;
        }
        if self.kind == BackupKind::Physical && !self.databases.is_empty() {
            return Err(usage!(
                "--database is for logical backups; a physical backup copies the whole cluster"
            ));
        }
        if self.backup_type != BackupType::Full
            && (self.kind != BackupKind::Physical || self.method != PhysicalMethod::Local)
        {
            return Err(usage!(
                "--type incr and --type diff are for physical backups with --method local (pgdr reads the changed blocks itself)"
            ));
        }
        if self.from_standby && (self.kind != BackupKind::Physical || self.method != PhysicalMethod::Local) {
            return Err(usage!(
                "--from-standby is for physical backups with --method local (pgdr reads the standby's data directory on this host)"
            ));
        }
        self.jobs = self.jobs.max(1);
        Ok(self)
    }
}

fn validate_tag(tag: &str) -> Result<()> {
    let ok =
        !tag.is_empty() && tag.len() <= 100 && tag.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !ok {
        return Err(usage!(
            "--tag {tag:?}: use letters, digits, '-', '_', '.' or ':' (at most 100)"
        ));
    }
    Ok(())
}

/// Take one backup. Every backup of a cluster holds the repository's backup lock (a
/// lease under `locks/`), so two backups started in the same second cannot pick the
/// same label, and `check --clean-orphans` never removes a running backup's objects.
pub async fn run(config: &Config, opts: &BackupOptions) -> Result<BackupReport> {
    let repo = Repo::open(config).await?;
    // Before the lock: a backup of the wrong server writes nothing at all.
    source::require_primary(config, &repo).await?;
    let lock = match BackupLock::acquire(&repo, opts.lock_wait).await? {
        Ok(lock) => lock,
        Err(holder) => {
            return Err(anyhow::anyhow!(
                "another backup of cluster {:?} is running ({holder}) and holds the backup lock; waited {} s — try again when it is done, or raise --lock-wait",
                config.cluster,
                opts.lock_wait.as_secs()
            ));
        }
    };
    let outcome = match opts.kind {
        BackupKind::Logical => logical::run(config, opts, &repo, &lock)
            .await
            .map(BackupReport::Logical),
        BackupKind::Physical => physical::run(config, opts, &repo, &lock)
            .await
            .map(BackupReport::Physical),
    };
    let held = lock.still_held();
    lock.release().await;
    if !held && outcome.is_ok() {
        tracing::warn!("the backup lock expired while the backup ran (repository unreachable for minutes?)");
    }
    outcome
}

/// Run the copy until it ends or SIGTERM/SIGINT arrives; a signal becomes an error, so
/// the caller's cleanup runs (no manifest is written: nothing becomes visible).
async fn interruptible<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        r = work => r,
        s = crate::process::shutdown_signal() => Err(anyhow::anyhow!("interrupted by {s}")),
    }
}

/// The relation catalog of every database, for `wal-search`. A backup is worth more
/// than its catalog: a database that cannot be read is left out with a warning.
pub(crate) async fn read_catalogs(
    target: &crate::postgres::PgTarget,
    databases: &[String],
    timeline: Option<u32>,
) -> Vec<crate::postgres::catalog::DatabaseCatalog> {
    let mut out = Vec::new();
    for db in databases {
        let read = async {
            let client = target.connect(Some(db)).await?;
            crate::postgres::catalog::read(&client, db).await
        }
        .await;
        match read {
            Ok(mut catalog) => {
                if let Some(tli) = timeline {
                    catalog.timeline = tli;
                }
                out.push(catalog);
            }
            Err(e) => tracing::warn!(
                "database {db:?}: its relation catalog is not recorded, so wal-search cannot name its tables for WAL after this backup ({e:#})"
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kind: BackupKind, databases: &[&str], tags: &[&str]) -> Result<BackupOptions> {
        BackupOptions {
            kind,
            databases: databases.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            jobs: 0,
            ..BackupOptions::default()
        }
        .validate()
    }

    #[test]
    fn tags_are_checked_before_anything_runs() {
        assert!(opts(BackupKind::Logical, &[], &["deploy-2026.12:01_a"]).is_ok());
        for bad in ["", "has space", "semi;colon", &"x".repeat(101)] {
            let e = opts(BackupKind::Logical, &[], &[bad]).unwrap_err();
            assert!(crate::exit::classify(&e) == crate::exit::Exit::Usage, "{bad:?}: {e:#}");
        }
    }

    #[test]
    fn databases_are_for_logical_backups_and_jobs_is_at_least_one() {
        assert!(opts(BackupKind::Physical, &["app"], &[]).is_err());
        let o = opts(BackupKind::Logical, &["app"], &[]).unwrap();
        assert_eq!(o.jobs, 1);
    }
}
