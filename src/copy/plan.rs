//! What one copy lacks, decided before anything is written to it: the primary and the
//! copy are each listed once, and every WAL file, timeline declaration and backup
//! object the copy does not have becomes an `Item` to send. Only reads happen here.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow};

use super::{Expect, Item, listed, wal_listing};
use crate::repo::manifest::Manifest;
use crate::repo::{BackupLabel, Repo, catalog, layout};
use crate::storage::{DynStorage, ObjectKey, ObjectMeta};

/// The copy's objects, by key.
pub(super) type Have = HashMap<ObjectKey, ObjectMeta>;

/// The primary repository as this run sees it.
pub(super) struct Primary {
    /// The stored size of every object under backups/.
    sizes: HashMap<ObjectKey, u64>,
    scan: catalog::Scan,
    /// `--backup`: the one backup to copy, with the older backups an incremental
    /// refers to (a copy is never missing a parent); `None`: every backup.
    wanted: Option<Vec<BackupLabel>>,
    /// WAL and history files, in archive order.
    pub(super) wal: Vec<ObjectMeta>,
    /// Timeline declarations (primary and abandoned).
    timelines: Vec<ObjectMeta>,
}

/// Lists the primary: its backups, then its WAL, then its timeline declarations.
pub(super) async fn list_primary(source: &Repo, backup: Option<&str>) -> Result<Primary> {
    // Backups first, WAL after: a backup that commits in between is not copied by this
    // run, and every backup that is has its WAL (archived before its manifest) in the
    // WAL listing.
    let backup_listing = source.storage.list(layout::BACKUPS).await?;
    let sizes: HashMap<ObjectKey, u64> = backup_listing.iter().map(|m| (m.key.clone(), m.size)).collect();
    let scan = catalog::scan_listing(backup_listing);
    let wanted: Option<Vec<BackupLabel>> = match backup {
        None => None,
        Some(selector) => {
            let manifests = source.manifests().await?;
            let chosen = catalog::resolve(&manifests, selector, None)?;
            let mut labels = vec![chosen.label.clone()];
            for older in chosen.physical.as_ref().map(|p| p.chain()).unwrap_or_default() {
                let found = manifests.iter().find(|m| m.label.as_str() == older).ok_or_else(|| {
                    anyhow!(
                        "{} is an incremental backup and needs {older}, which is missing from the primary — its chain is broken; nothing was copied",
                        chosen.label
                    )
                })?;
                labels.push(found.label.clone());
            }
            Some(labels)
        }
    };
    let wal = wal_listing(&source.storage).await?;
    let timelines: Vec<ObjectMeta> = source
        .storage
        .list(layout::TIMELINES)
        .await?
        .into_iter()
        .filter(|m| {
            layout::parse_timeline_declaration(&m.key).is_some() || layout::parse_timeline_abandoned(&m.key).is_some()
        })
        .collect();
    Ok(Primary {
        sizes,
        scan,
        wanted,
        wal,
        timelines,
    })
}

/// What the copy has, listed once; what it lacks is copied.
pub(super) async fn list_copy(dest: &DynStorage) -> Result<Have> {
    let mut have = listed(dest, layout::WAL).await?;
    have.extend(listed(dest, layout::TIMELINES).await?);
    have.extend(listed(dest, layout::BACKUPS).await?);
    Ok(have)
}

/// One backup's part of a copy: objects already in the copy that must be checked
/// (the backup is not committed there, so an earlier run may have died before reading
/// them back), its missing objects, then (when the backup is not complete in the copy
/// yet) its manifest's stored bytes, written last.
pub(super) struct BackupCopy {
    pub(super) label: BackupLabel,
    pub(super) recheck: Vec<Item>,
    pub(super) items: Vec<Item>,
    pub(super) manifest: Option<Vec<u8>>,
    /// The manifest, parsed: a re-keyed copy writes its own, with the new stored
    /// tallies and key id.
    pub(super) parsed: Option<Manifest>,
}

/// Everything one copy lacks, in the order it is sent.
#[derive(Default)]
pub(super) struct CopyPlan {
    /// WAL and history files, then timeline declarations.
    pub(super) wal_items: Vec<Item>,
    /// Backups, oldest first.
    pub(super) backups: Vec<BackupCopy>,
    /// Backups complete in the copy already.
    pub(super) backups_present: usize,
    /// Objects in the copy already.
    pub(super) present: u64,
}

/// What `have` (the copy) says about an object of the primary.
enum There {
    Missing,
    Same,
    Differs(u64),
}

/// A re-keyed copy's objects differ in size from the primary's (other headers):
/// there, only presence counts.
fn there(have: &Have, key: &ObjectKey, size: u64, rekeyed: bool) -> There {
    match have.get(key) {
        None => There::Missing,
        Some(m) if m.size == size || rekeyed => There::Same,
        Some(m) => There::Differs(m.size),
    }
}

/// What the copy `name` at `dest` (holding `have`) lacks of the primary. Refuses a
/// copy whose WAL differs from the primary's.
pub(super) async fn plan(
    source: &Repo,
    primary: &Primary,
    have: &Have,
    rekeyed: bool,
    dest: &DynStorage,
    name: &str,
) -> Result<CopyPlan> {
    let mut plan = CopyPlan::default();
    let conflicts = plan.add_wal(primary, have, rekeyed);

    // Backups, oldest first; each with its authenticated manifest.
    let mut labels = primary.scan.complete.clone();
    labels.sort();
    for label in labels {
        if primary.wanted.as_ref().is_some_and(|w| !w.contains(&label)) {
            continue;
        }
        plan.add_backup(source, primary, have, rekeyed, label).await?;
    }
    if !conflicts.is_empty() {
        return Err(anyhow!(
            "{} object(s) in {} differ from the primary and are never overwritten: {} — another cluster may be copying there; check copy {name:?}",
            conflicts.len(),
            dest.describe(),
            conflicts.join(", ")
        ));
    }
    Ok(plan)
}

impl CopyPlan {
    /// The WAL and history files the copy lacks, then the timeline declarations it
    /// lacks or holds in another version. Returns the WAL files it holds with another
    /// size: those are never overwritten.
    fn add_wal(&mut self, primary: &Primary, have: &Have, rekeyed: bool) -> Vec<String> {
        let mut conflicts = Vec::new();
        for meta in &primary.wal {
            match there(have, &meta.key, meta.size, rekeyed) {
                There::Same => self.present += 1,
                There::Differs(theirs) => conflicts.push(format!(
                    "{} ({theirs} bytes in the copy, {} in the primary)",
                    meta.key, meta.size
                )),
                There::Missing => self.wal_items.push(Item {
                    key: meta.key.clone(),
                    size: meta.size,
                    expect: Expect::Sealed,
                    mutable: false,
                }),
            }
        }
        for meta in &primary.timelines {
            match there(have, &meta.key, meta.size, rekeyed) {
                There::Same => self.present += 1,
                There::Differs(_) | There::Missing => self.wal_items.push(Item {
                    key: meta.key.clone(),
                    size: meta.size,
                    expect: Expect::Sealed,
                    mutable: true,
                }),
            }
        }
        conflicts
    }

    /// One backup: when it is not complete in the copy, its objects and its manifest;
    /// its keep mark in any case. Nothing is added for a backup the copy has whole.
    async fn add_backup(
        &mut self,
        source: &Repo,
        primary: &Primary,
        have: &Have,
        rekeyed: bool,
        label: BackupLabel,
    ) -> Result<()> {
        let manifest_key = layout::manifest(&label);
        let keep = layout::keep_mark(&label);
        let mut backup = BackupCopy {
            label: label.clone(),
            recheck: Vec::new(),
            items: Vec::new(),
            manifest: None,
            parsed: None,
        };
        if have.contains_key(&manifest_key) {
            self.backups_present += 1;
            self.present += primary
                .scan
                .objects
                .get(&label)
                .map_or(0, |keys| keys.iter().filter(|k| **k != keep).count() as u64);
        } else {
            let (data, m) = read_manifest(source, &manifest_key, &label).await?;
            self.add_objects(&mut backup, &m, primary, have, rekeyed)?;
            backup.manifest = Some(data);
            backup.parsed = Some(m);
        }
        // A keep mark travels with its backup.
        if let Some(size) = primary.sizes.get(&keep) {
            match there(have, &keep, *size, rekeyed) {
                There::Same => self.present += 1,
                There::Differs(_) | There::Missing => backup.items.push(Item {
                    key: keep,
                    size: *size,
                    expect: Expect::Sealed,
                    mutable: true,
                }),
            }
        }
        if !backup.items.is_empty() || !backup.recheck.is_empty() || backup.manifest.is_some() {
            self.backups.push(backup);
        }
        Ok(())
    }

    /// The objects manifest `m` names, for a backup not committed in the copy: the
    /// missing ones to send, the present ones to check.
    fn add_objects(
        &mut self,
        backup: &mut BackupCopy,
        m: &Manifest,
        primary: &Primary,
        have: &Have,
        rekeyed: bool,
    ) -> Result<()> {
        let label = &backup.label;
        for record in &m.objects {
            let key = layout::backup_object(label, &record.name)?;
            if !primary.sizes.contains_key(&key) {
                return Err(anyhow!(
                    "{key} is named by the manifest of {label} but missing from the primary repository — the backup is damaged there; it is not copied"
                ));
            }
            let item = Item {
                key: key.clone(),
                size: record.stored.size,
                expect: Expect::Stored {
                    stored: record.stored.clone(),
                    plain: record.plain.clone(),
                },
                mutable: false,
            };
            match there(have, &key, record.stored.size, rekeyed) {
                There::Same => {
                    self.present += 1;
                    backup.recheck.push(item);
                }
                // Not committed in the copy: whatever an earlier run left there is
                // checked and replaced if it is not the primary's object.
                There::Differs(_) => {
                    self.present += 1;
                    backup.recheck.push(item);
                }
                There::Missing => backup.items.push(item),
            }
        }
        Ok(())
    }

    /// Bytes this plan sends.
    pub(super) fn bytes(&self) -> u64 {
        self.wal_items.iter().map(|i| i.size).sum::<u64>()
            + self
                .backups
                .iter()
                .map(|b| {
                    b.items.iter().map(|i| i.size).sum::<u64>() + b.manifest.as_ref().map_or(0, |d| d.len() as u64)
                })
                .sum::<u64>()
    }

    /// Objects this plan sends.
    pub(super) fn objects(&self) -> u64 {
        self.wal_items.len() as u64
            + self
                .backups
                .iter()
                .map(|b| b.items.len() as u64 + u64::from(b.manifest.is_some()))
                .sum::<u64>()
    }
}

/// A backup's manifest in the primary, as stored and parsed; authenticated, and
/// checked to be this repository's.
async fn read_manifest(source: &Repo, manifest_key: &ObjectKey, label: &BackupLabel) -> Result<(Vec<u8>, Manifest)> {
    let data = source
        .storage
        .get(manifest_key)
        .await
        .with_context(|| format!("reading {manifest_key}"))?;
    let (plain, _) = crate::pipeline::open_sealed(&data, manifest_key, &source.keys)
        .with_context(|| format!("the manifest of {label} in the primary repository"))?;
    let m: Manifest =
        serde_json::from_slice(&plain).with_context(|| format!("the manifest of {label} is not valid JSON"))?;
    source.check_manifest_identity(&m)?;
    Ok((data.to_vec(), m))
}
