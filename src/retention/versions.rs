//! Retention on a versioned bucket (S3 Object Lock). There a delete only hides an
//! object behind a delete marker: its versions stay, locked for the bucket's retention
//! days, so a stolen credential cannot destroy backups inside that window. `expire`
//! records what it removes in a purge list (`expired/…`, sealed like every object, so
//! nobody without the repository key can add to it) and removes the versions of those
//! keys for good once their retention has ended.
//!
//! Which versions go:
//! - of a key that still has a current version: the older versions (overwritten by
//!   pgdr: repo.json after a key rotation, objects after a rewrap), once unlocked;
//! - of a key without a current version: all of them, once unlocked — only if a purge
//!   list names the key or it is pgdr's bookkeeping (leases, probes, keep marks).
//!
//! Any other key without a current version was deleted by someone other than pgdr:
//! its versions are kept, and the report names it — the mark of an attack, or of a
//! cleanup by hand, that the DBA must look at.

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use serde::Serialize;

use crate::pipeline;
use crate::repo::{Repo, layout};
use crate::storage::{ObjectKey, ObjectLock, ObjectVersion};

/// What happened to old versions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionsReport {
    /// The bucket's default retention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<ObjectLock>,
    /// Versions and delete markers removed for good.
    pub removed: usize,
    /// Versions still under retention: removed by a later `expire`.
    pub locked: usize,
    /// Keys deleted by someone other than pgdr (no current version, in no purge list).
    pub deleted_outside_pgdr: Vec<String>,
}

/// Write the purge list for `keys` before they are deleted (a run killed after it
/// leaves keys listed but not deleted: their current version is never touched).
pub async fn record(repo: &Repo, keys: &[ObjectKey]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    let data = serde_json::to_vec(&names).expect("key list serialises");
    let key = layout::purge_list(&chrono::Utc::now());
    repo.store()
        .bytes(&key, "purge list", data, crate::storage::PutMode::CreateNew)
        .await?;
    Ok(())
}

/// Remove the versions the rules above let go.
pub async fn purge(repo: &Repo, lock: Option<ObjectLock>) -> Result<VersionsReport> {
    let versions = repo.storage.versions("").await?;
    let mut by_key: BTreeMap<ObjectKey, Vec<&ObjectVersion>> = BTreeMap::new();
    for v in &versions {
        by_key.entry(v.key.clone()).or_default().push(v);
    }
    // The purge lists that are current, and what they name.
    let mut lists: Vec<(ObjectKey, Vec<String>)> = Vec::new();
    for (key, vs) in &by_key {
        if !key.as_str().starts_with(layout::EXPIRED) || !vs.iter().any(|v| v.is_latest && !v.delete_marker) {
            continue;
        }
        match pipeline::load_bytes(&repo.storage, key, &repo.keys).await {
            Ok(data) => match serde_json::from_slice::<Vec<String>>(&data) {
                Ok(names) => lists.push((key.clone(), names)),
                Err(e) => tracing::warn!("{key} is not a purge list ({e}); ignored"),
            },
            Err(e) => tracing::warn!("{key} cannot be read ({e:#}); the versions it names are kept"),
        }
    }
    let expired: HashSet<&str> = lists
        .iter()
        .flat_map(|(_, names)| names.iter().map(String::as_str))
        .collect();

    let mut report = VersionsReport {
        lock,
        ..VersionsReport::default()
    };
    let mut left: HashSet<ObjectKey> = HashSet::new();
    for (key, vs) in &by_key {
        let current = vs.iter().any(|v| v.is_latest && !v.delete_marker);
        let purgeable = current || expired.contains(key.as_str()) || layout::is_bookkeeping(key);
        if !purgeable {
            if vs.iter().any(|v| !v.delete_marker) {
                report.deleted_outside_pgdr.push(key.to_string());
            }
            left.insert(key.clone());
            continue;
        }
        let mut data_left = 0;
        for v in vs.iter().filter(|v| !v.delete_marker) {
            if current && v.is_latest {
                continue;
            }
            match repo.storage.delete_version(key, &v.version_id).await? {
                None => report.removed += 1,
                Some(_) => {
                    report.locked += 1;
                    data_left += 1;
                }
            }
        }
        // Delete markers go once nothing is left behind them (they hide nothing then).
        if data_left == 0 {
            for v in vs.iter().filter(|v| v.delete_marker) {
                if repo.storage.delete_version(key, &v.version_id).await?.is_none() {
                    report.removed += 1;
                }
            }
        }
        if current || data_left > 0 {
            left.insert(key.clone());
        }
    }
    // A purge list whose keys are all gone for good has done its work.
    for (list, names) in &lists {
        let done = names
            .iter()
            .all(|n| ObjectKey::new(n.clone()).is_ok_and(|k| !left.contains(&k)));
        if done {
            repo.storage.delete(std::slice::from_ref(list)).await?;
        }
    }
    Ok(report)
}
