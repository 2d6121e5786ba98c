//! Retention, as a library: `plan` decides (pure), `expire` carries the plan out
//! against the repository (or, for a dry run, against a store that only records
//! deletes), and `keep` holds the permanent keep marks that `mark` sets and clears.

mod keep;
pub mod plan;
pub mod versions;

use std::fmt;

use anyhow::{Context, Result};
use chrono::Utc;
use serde::Serialize;

use crate::config::Config;
use crate::postgres::WalFile;
use crate::repo::{BackupKind, BackupLabel, Repo, archive, catalog, layout};
use crate::storage::dry_run::DryRun;
use crate::storage::{DynStorage, ObjectKey, Refused};
use crate::usage;

pub use keep::{clear_keep, set_keep};
pub use plan::{Decision, Plan};

#[derive(Debug, Clone, Default)]
pub struct ExpireOptions {
    /// Decide and report, remove nothing.
    pub dry_run: bool,
}

/// What `expire` decided and did.
#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    pub dry_run: bool,
    pub backups: Vec<BackupDecision>,
    /// The oldest segment kept for point-in-time recovery, if any.
    pub wal_anchor: Option<String>,
    pub wal_to_remove: usize,
    /// Removed for real (0 on a dry run).
    pub wal_removed: usize,
    /// Objects the store refused to delete (e.g. S3 Object Lock).
    pub left_in_place: Vec<LeftInPlace>,
    /// Backups whose manifest is damaged: kept, and no WAL removed while they exist.
    #[serde(skip)]
    pub damaged: Vec<(BackupLabel, String)>,
    #[serde(skip)]
    pub backups_removed: usize,
    /// On a versioned bucket (Object Lock): what happened to old versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<versions::VersionsReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupDecision {
    pub label: BackupLabel,
    pub kind: BackupKind,
    pub keep: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeftInPlace {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ExpireReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would remove" } else { "removed" };
        let mut lines = Vec::new();
        for d in &self.backups {
            lines.push(format!(
                "{} {} {:<9} {}",
                if d.keep { "keep  " } else { "remove" },
                d.label,
                d.kind.to_string(),
                d.reason
            ));
        }
        match &self.wal_anchor {
            Some(anchor) => lines.push(format!(
                "WAL: {verb} {} segment(s); point-in-time recovery reaches back to {anchor}",
                if self.dry_run {
                    self.wal_to_remove
                } else {
                    self.wal_removed
                }
            )),
            None => lines.push(
                "WAL: all kept (no physical backup to anchor it, or a backup the store would not let go needs it)"
                    .into(),
            ),
        }
        if !self.dry_run {
            lines.push(format!("{verb} {} backup(s)", self.backups_removed));
        }
        if let Some(v) = &self.versions {
            if let Some(lock) = &v.lock {
                lines.push(format!(
                    "Object Lock: {} {} days — removed objects stay recoverable as versions for that long",
                    lock.mode, lock.days
                ));
            }
            lines.push(format!(
                "old versions: {} removed for good, {} still under retention",
                v.removed, v.locked
            ));
            if !v.deleted_outside_pgdr.is_empty() {
                lines.push(format!(
                    "WARNING: {} object(s) were deleted by something other than pgdr (their versions are kept; restore them by removing the delete markers): {}",
                    v.deleted_outside_pgdr.len(),
                    v.deleted_outside_pgdr.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        for r in &self.left_in_place {
            lines.push(format!(
                "left in place: {} ({}) — protected by the store (e.g. S3 Object Lock)",
                r.key, r.reason
            ));
        }
        f.write_str(&lines.join("\n"))
    }
}

/// Apply `[retention]`: remove what the rules let go, keep the rest, say why.
pub async fn expire(config: &Config, opts: &ExpireOptions) -> Result<ExpireReport> {
    let repo = Repo::open(config).await?;
    let scan = catalog::scan(&repo.storage).await?;
    let (manifests, damaged) = catalog::load_scanned_all(&repo.storage, &repo.keys, &scan).await?;
    let listing = archive::list(&repo.storage).await?;
    let in_use = crate::repo::lock::in_use(&repo).await?;
    let mut plan = plan::plan(&config.retention, &manifests, &scan.keep, &in_use, &listing, Utc::now());
    // What WAL a backup with an unreadable manifest needs is unknown: keep all of it,
    // and the backup itself, until it is repaired or removed by hand.
    if !damaged.is_empty() {
        plan.wal_remove.clear();
    }

    // A dry run takes the same path against a store that records deletes instead.
    let target: DynStorage = if opts.dry_run {
        std::sync::Arc::new(DryRun::new(repo.storage.clone()))
    } else {
        repo.storage.clone()
    };
    // A restore or copy that began after the plan was made: what it reads stays, and
    // so does all WAL (the plan did not know it needed any).
    if !opts.dry_run {
        let late = crate::repo::lock::in_use(&repo).await?;
        for decision in plan.backups.iter_mut().filter(|d| !d.keep) {
            if let Some(why) = late.get(&decision.label) {
                decision.keep = true;
                decision.reason = why.clone();
                plan.wal_remove.clear();
                plan.wal_anchor = None;
            }
        }
    }
    // A versioned bucket keeps what a delete hides: say what will go, for good, once
    // its retention ends (versions.rs).
    let versioning = if opts.dry_run {
        None
    } else {
        repo.storage.versioning().await?
    };
    if versioning.is_some() {
        let mut doomed: Vec<ObjectKey> = Vec::new();
        for decision in plan.backups.iter().filter(|d| !d.keep) {
            doomed.push(layout::manifest(&decision.label));
            doomed.extend(scan.objects.get(&decision.label).into_iter().flatten().cloned());
        }
        doomed.extend(
            plan.wal_remove
                .iter()
                .filter_map(|name| WalFile::parse(name))
                .map(|f| layout::wal_file(&f)),
        );
        doomed.sort();
        doomed.dedup();
        versions::record(&repo, &doomed)
            .await
            .context("writing the purge list")?;
    }
    let mut backups_removed = 0;
    let mut refused: Vec<Refused> = Vec::new();
    for decision in plan.backups.iter().filter(|d| !d.keep) {
        // The manifest goes first: a backup interrupted half-way through its
        // removal is an orphan, never a "complete" backup with holes.
        let manifest_key = layout::manifest(&decision.label);
        let kept = target.delete(std::slice::from_ref(&manifest_key)).await?;
        if !kept.is_empty() {
            // The backup stays complete: its data must not go while it is listed, nor
            // the WAL it needs (what that is was planned without it: keep all WAL).
            refused.extend(kept);
            plan.wal_remove.clear();
            plan.wal_anchor = None;
            continue;
        }
        let rest: Vec<ObjectKey> = scan
            .objects
            .get(&decision.label)
            .map(|keys| keys.iter().filter(|k| **k != manifest_key).cloned().collect())
            .unwrap_or_default();
        refused.extend(target.delete(&rest).await?);
        backups_removed += 1;
    }
    let keys: Vec<ObjectKey> = plan
        .wal_remove
        .iter()
        .filter_map(|name| WalFile::parse(name))
        .map(|f| layout::wal_file(&f))
        .collect();
    let before = refused.len();
    refused.extend(target.delete(&keys).await.context("removing expired WAL")?);
    // Reported as removed only when it was (a dry run removes nothing).
    let wal_removed = if opts.dry_run {
        0
    } else {
        keys.len() - (refused.len() - before)
    };
    let versions = match versioning {
        Some(v) => Some(versions::purge(&repo, v.lock).await.context("removing old versions")?),
        None => None,
    };
    Ok(ExpireReport {
        dry_run: opts.dry_run,
        backups: plan
            .backups
            .iter()
            .map(|d| BackupDecision {
                label: d.label.clone(),
                kind: d.kind,
                keep: d.keep,
                reason: d.reason.clone(),
            })
            .collect(),
        wal_anchor: plan.wal_anchor,
        wal_to_remove: plan.wal_remove.len(),
        wal_removed,
        left_in_place: refused
            .into_iter()
            .map(|r| LeftInPlace {
                key: r.key.to_string(),
                reason: r.reason,
            })
            .collect(),
        damaged: damaged.into_iter().map(|d| (d.label, d.why)).collect(),
        backups_removed,
        versions,
    })
}

/// Keep marks set and cleared by `expire --keep/--unkeep`.
#[derive(Debug, Clone, Serialize)]
pub struct MarkReport {
    pub keep: Vec<BackupLabel>,
    pub unkeep: Vec<BackupLabel>,
}

impl fmt::Display for MarkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .keep
            .iter()
            .map(|l| format!("{l} is marked keep: expire will never remove it"))
            .chain(self.unkeep.iter().map(|l| format!("{l} is no longer marked keep")))
            .collect();
        f.write_str(&lines.join("\n"))
    }
}

/// Set and clear keep marks; every label must name an existing backup (checked
/// before anything is written).
pub async fn mark(config: &Config, keep: &[BackupLabel], unkeep: &[BackupLabel]) -> Result<MarkReport> {
    let repo = Repo::open(config).await?;
    let manifests = repo.manifests().await?;
    for label in keep.iter().chain(unkeep) {
        if !manifests.iter().any(|m| &m.label == label) {
            return Err(usage!("backup {label} does not exist — see `pgdr list`"));
        }
    }
    for label in keep {
        set_keep(&repo, label).await?;
    }
    for label in unkeep {
        clear_keep(&repo, label).await?;
    }
    Ok(MarkReport {
        keep: keep.to_vec(),
        unkeep: unkeep.to_vec(),
    })
}
