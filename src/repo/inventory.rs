//! What the repository holds, as `pgdr list` shows it: complete backups newest first,
//! each with its keep mark and latest restore test, and backups whose manifest is
//! damaged. A backup without a manifest does not exist here (`check` reports those).

use std::fmt;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{BackupKind, BackupLabel, Repo, catalog, verification};
use crate::progress::human_bytes;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Entry {
    Backup(BackupEntry),
    Damaged { label: BackupLabel, damaged: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupEntry {
    pub label: BackupLabel,
    pub kind: BackupKind,
    pub tags: Vec<String>,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub pg_version: String,
    pub stored_bytes: u64,
    pub plain_bytes: u64,
    pub databases: Vec<String>,
    pub keep: bool,
    pub verification: Option<Verdict>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub ok: bool,
    pub finished: DateTime<Utc>,
}

/// The inventory; serialises as the list of entries (`pgdr list --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Inventory {
    pub entries: Vec<Entry>,
    /// For the empty-repository line.
    #[serde(skip)]
    pub place: String,
}

/// Read the inventory: one listing of `backups/` gives the manifests and keep marks.
pub async fn read(repo: &Repo) -> Result<Inventory> {
    let scan = catalog::scan(&repo.storage).await?;
    let (manifests, damaged) = catalog::load_scanned_all(&repo.storage, &repo.keys, &scan).await?;
    let verified = verification::latest_reports(repo).await.unwrap_or_default();
    let entries = manifests
        .iter()
        .map(|m| {
            Entry::Backup(BackupEntry {
                label: m.label.clone(),
                kind: m.kind,
                tags: m.tags.clone(),
                start_time: m.start_time,
                stop_time: m.stop_time,
                pg_version: m.pg_version.clone(),
                stored_bytes: m.stored_size(),
                plain_bytes: m.plain_size(),
                databases: m.databases.iter().map(|d| d.name.clone()).collect(),
                keep: scan.keep.contains(&m.label),
                verification: verified.get(&m.label).map(|r| Verdict {
                    ok: r.ok,
                    finished: r.finished,
                }),
            })
        })
        .chain(damaged.into_iter().map(|d| Entry::Damaged {
            label: d.label,
            damaged: d.why,
        }))
        .collect();
    Ok(Inventory {
        entries,
        place: repo.storage.describe(),
    })
}

impl fmt::Display for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = Vec::new();
        let mut backups = Vec::new();
        for e in &self.entries {
            match e {
                Entry::Damaged { label, damaged } => lines.push(format!(
                    "DAMAGED {label}: {damaged} — it cannot be restored; `pgdr cat {label}/manifest.json` shows what is there"
                )),
                Entry::Backup(b) => backups.push(b),
            }
        }
        if backups.is_empty() {
            lines.push(format!("no backups in {} yet — run `pgdr backup`", self.place));
            return f.write_str(&lines.join("\n"));
        }
        lines.push(format!(
            "{:<20} {:<9} {:<20} {:>10}  {:<18} {:<24} TAGS",
            "LABEL", "KIND", "TIME (UTC)", "SIZE", "VERIFIED", "DATABASES"
        ));
        for b in backups {
            let mut dbs = b.databases.join(",");
            if dbs.chars().count() > 24 {
                dbs = format!("{}…", dbs.chars().take(23).collect::<String>());
            }
            if b.databases.is_empty() {
                dbs = "(whole cluster)".into();
            }
            let mut tags = b.tags.clone();
            if b.keep {
                tags.insert(0, "[keep]".into());
            }
            let verdict = b
                .verification
                .as_ref()
                .map(|v| {
                    format!(
                        "{} {}",
                        if v.ok { "ok" } else { "FAILED" },
                        v.finished.format("%Y-%m-%d")
                    )
                })
                .unwrap_or_else(|| "-".into());
            lines.push(format!(
                "{:<20} {:<9} {:<20} {:>10}  {:<18} {:<24} {}",
                b.label.as_str(),
                b.kind.to_string(),
                b.start_time.format("%Y-%m-%d %H:%M:%S").to_string(),
                human_bytes(b.stored_bytes),
                verdict,
                dbs,
                tags.join(",")
            ));
        }
        f.write_str(&lines.join("\n"))
    }
}
