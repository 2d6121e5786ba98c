//! What is in the repository: complete backups (those with a manifest), orphans
//! (objects under a label with no manifest: a failed or running backup), and how a
//! user's selector (`LABEL`, `latest`, `tag:T`) picks one.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::label::{BackupKind, BackupLabel};
use super::layout;
use super::manifest::Manifest;
use crate::pipeline::{self, Keyring};
use crate::storage::{DynStorage, ObjectKey};
use crate::usage;

/// Objects under a label that has no manifest.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub label: BackupLabel,
    pub objects: Vec<ObjectKey>,
    pub bytes: u64,
    pub newest: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub struct Scan {
    pub complete: Vec<BackupLabel>,
    pub orphans: Vec<Orphan>,
    /// Backups marked keep.
    pub keep: std::collections::BTreeSet<BackupLabel>,
    /// Every object of each complete backup.
    pub objects: BTreeMap<BackupLabel, Vec<ObjectKey>>,
}

/// List `backups/` once and sort labels into complete and orphaned.
pub async fn scan(storage: &DynStorage) -> Result<Scan> {
    Ok(scan_listing(storage.list(layout::BACKUPS).await?))
}

/// As `scan`, from a listing of `backups/` the caller already has.
pub fn scan_listing(objects: Vec<crate::storage::ObjectMeta>) -> Scan {
    let mut keep = std::collections::BTreeSet::new();
    let mut by_label: BTreeMap<BackupLabel, (bool, Orphan)> = BTreeMap::new();
    for meta in objects {
        let Some((label, name)) = layout::parse_backup_key(&meta.key) else {
            tracing::warn!("skipping {}: not a key pgdr writes under backups/", meta.key);
            continue;
        };
        let is_manifest = layout::is_manifest(name);
        if layout::is_keep_mark(name) {
            keep.insert(label.clone());
        }
        let entry = by_label.entry(label.clone()).or_insert_with(|| {
            (
                false,
                Orphan {
                    label,
                    objects: Vec::new(),
                    bytes: 0,
                    newest: None,
                },
            )
        });
        entry.0 |= is_manifest;
        entry.1.bytes += meta.size;
        entry.1.newest = entry.1.newest.max(meta.modified);
        entry.1.objects.push(meta.key);
    }
    let mut scan = Scan {
        keep,
        ..Default::default()
    };
    for (label, (complete, orphan)) in by_label {
        if complete {
            scan.objects.insert(label.clone(), orphan.objects);
            scan.complete.push(label);
        } else {
            scan.orphans.push(orphan);
        }
    }
    scan
}

/// The commit point of a backup: its manifest, never written over another (on a
/// store that ignores If-None-Match, `Repo::open` put `storage::no_overwrite` in
/// between, which looks first).
pub async fn write_manifest(repo: &super::Repo, manifest: &Manifest) -> Result<()> {
    let key = layout::manifest(&manifest.label);
    let data = serde_json::to_vec(manifest).expect("manifest serialises");
    repo.store()
        .bytes(&key, "manifest.json", data, crate::storage::PutMode::CreateNew)
        .await?;
    Ok(())
}

pub async fn load_manifest(storage: &DynStorage, keys: &Keyring, label: &BackupLabel) -> Result<Manifest> {
    let data = pipeline::load_bytes(storage, &layout::manifest(label), keys).await?;
    let manifest: Manifest =
        serde_json::from_slice(&data).with_context(|| format!("the manifest of {label} is not valid JSON"))?;
    if manifest.format > crate::repo::manifest::MANIFEST_FORMAT_NEWEST {
        return Err(anyhow::anyhow!(
            "the manifest of {label} has format {}, newer than this pgdr reads ({}) — use the pgdr that wrote it",
            manifest.format,
            crate::repo::manifest::MANIFEST_FORMAT_NEWEST
        ));
    }
    Ok(manifest)
}

/// Every complete backup's manifest, newest first (by start time, then label).
pub async fn load_manifests(storage: &DynStorage, keys: &Keyring) -> Result<Vec<Manifest>> {
    load_scanned(storage, keys, &scan(storage).await?).await
}

/// A backup whose manifest cannot be read or parsed, and why.
#[derive(Debug, Clone)]
pub struct DamagedManifest {
    pub label: BackupLabel,
    pub why: String,
}

/// The manifests of a scan's complete backups, newest first (one listing serves both
/// the manifests and the scan's orphans and keep marks). A damaged manifest is
/// skipped with a warning: one bad object must not hide every other backup.
pub async fn load_scanned(storage: &DynStorage, keys: &Keyring, scan: &Scan) -> Result<Vec<Manifest>> {
    Ok(load_scanned_all(storage, keys, scan).await?.0)
}

/// As `load_scanned`, with the damaged manifests named. Only an unreachable
/// repository is an error.
pub async fn load_scanned_all(
    storage: &DynStorage,
    keys: &Keyring,
    scan: &Scan,
) -> Result<(Vec<Manifest>, Vec<DamagedManifest>)> {
    let mut manifests = Vec::with_capacity(scan.complete.len());
    let mut damaged = Vec::new();
    for label in &scan.complete {
        match load_manifest(storage, keys, label).await {
            Ok(m) if m.label == *label => manifests.push(m),
            Ok(m) => damaged.push(DamagedManifest {
                label: label.clone(),
                why: format!("the manifest names another backup, {}", m.label),
            }),
            Err(e) if is_unreachable(&e) => return Err(e),
            // A retired key taken away: `pgdr check` and `pgdr key list` say so.
            Err(e) if crate::pipeline::is_missing_key(&e) => {
                tracing::info!("backup {label} is skipped: {e:#}");
                damaged.push(DamagedManifest {
                    label: label.clone(),
                    why: format!("{e:#}"),
                });
            }
            Err(e) => {
                tracing::warn!("backup {label} is damaged and skipped: {e:#}");
                damaged.push(DamagedManifest {
                    label: label.clone(),
                    why: format!("{e:#}"),
                });
            }
        }
    }
    sort_newest_first(&mut manifests);
    Ok((manifests, damaged))
}

/// A storage failure (the repository did not answer), as opposed to a bad object.
fn is_unreachable(e: &anyhow::Error) -> bool {
    crate::storage::is_unreachable(e)
}

pub fn sort_newest_first(manifests: &mut [Manifest]) {
    manifests.sort_by(|a, b| b.start_time.cmp(&a.start_time).then_with(|| b.label.cmp(&a.label)));
}

/// Pick a backup: a label, `latest`, or `tag:NAME` (the newest with that tag),
/// optionally only of one kind. `manifests` must be newest first.
pub fn resolve<'a>(manifests: &'a [Manifest], selector: &str, kind: Option<BackupKind>) -> Result<&'a Manifest> {
    let of_kind = |m: &&Manifest| kind.is_none_or(|k| m.kind == k);
    let kind_word = kind.map(|k| format!("{k} ")).unwrap_or_default();
    let missing = |why: String| crate::repo::RepoError::NoSuchBackup { why, kind };
    if selector == "latest" {
        return manifests.iter().find(of_kind).ok_or_else(|| {
            missing(format!(
                "there is no {kind_word}backup in the repository yet — run `pgdr backup` first"
            ))
            .into()
        });
    }
    if let Some(tag) = selector.strip_prefix("tag:") {
        return manifests
            .iter()
            .filter(of_kind)
            .find(|m| m.tags.iter().any(|t| t == tag))
            .ok_or_else(|| missing(format!("no {kind_word}backup is tagged {tag:?} — see `pgdr list`")).into());
    }
    let label: BackupLabel = selector
        .parse()
        .map_err(|e: String| usage!("--backup {e}; use a label from `pgdr list`, `latest` or `tag:NAME`"))?;
    let found = manifests.iter().find(|m| m.label == label).ok_or_else(|| {
        missing(format!(
            "backup {label} does not exist (or has no manifest) — see `pgdr list`"
        ))
    })?;
    if let Some(k) = kind
        && found.kind != k
    {
        return Err(missing(format!("backup {label} is a {} backup, not {k}", found.kind)).into());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::test_support::physical_manifest;

    #[test]
    fn resolve_selectors() {
        let t = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let mut logical = physical_manifest("20261126T030000Z-L", t("2026-11-26T03:10:00Z"), crate::postgres::Lsn(0));
        logical.kind = BackupKind::Logical;
        logical.physical = None;
        logical.tags = vec!["before-upgrade".into()];
        let ms = vec![
            logical,
            physical_manifest(
                "20261126T020000Z-F",
                t("2026-11-26T02:10:00Z"),
                crate::postgres::Lsn(0x5000000),
            ),
        ];
        let label = |r: Result<&Manifest>| r.unwrap().label.to_string();
        assert_eq!(label(resolve(&ms, "latest", None)), "20261126T030000Z-L");
        assert_eq!(
            label(resolve(&ms, "latest", Some(BackupKind::Physical))),
            "20261126T020000Z-F"
        );
        assert_eq!(label(resolve(&ms, "tag:before-upgrade", None)), "20261126T030000Z-L");
        assert!(resolve(&ms, "tag:before-upgrade", Some(BackupKind::Physical)).is_err());
        assert_eq!(label(resolve(&ms, "20261126T020000Z-F", None)), "20261126T020000Z-F");
        let usage = |r: Result<&Manifest>| crate::exit::classify(&r.unwrap_err()) == crate::exit::Exit::Usage;
        assert!(usage(resolve(&ms, "20261126T020000Z-L", Some(BackupKind::Logical))));
        assert!(usage(resolve(&ms, "20261126T030000Z-L", Some(BackupKind::Physical))));
        assert!(usage(resolve(&ms, "not-a-label", None)));
        assert!(usage(resolve(&[], "latest", None)));
    }
}
