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
    Backup(Box<BackupEntry>),
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
    /// Physical backups: the WAL a restore of it needs at the least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalSpan>,
    /// Physical backups: `full`, or `incr` for one that refers to older backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_type: Option<String>,
    /// An incremental's parent, and every backup it needs (the full one first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// Backups of the chain that are not in the repository: it cannot be restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain_missing: Vec<String>,
}

/// A physical backup's WAL: from its start to its stop, as LSNs and segments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalSpan {
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_segment: String,
    pub stop_segment: String,
}

/// One timeline of the WAL archive: its first and last segment, and how many of
/// those between are missing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedTimeline {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub segments: u64,
    pub missing: u64,
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
    /// The archive per timeline (in the text; `--json` keeps its list of backups).
    #[serde(skip)]
    pub archive: Vec<ArchivedTimeline>,
}

/// The archive's range per timeline, from one listing of `wal/`.
async fn archived_timelines(repo: &Repo, segment_size: u64) -> Result<Vec<ArchivedTimeline>> {
    use crate::postgres::Segment;
    let listing = super::archive::list(&repo.storage).await?;
    let mut out: Vec<ArchivedTimeline> = Vec::new();
    for name in listing.segments.keys() {
        let Some(seg) = Segment::parse(name, segment_size) else {
            continue;
        };
        match out.last_mut() {
            Some(t) if t.timeline == seg.timeline => {
                let last = Segment::parse(&t.last, segment_size).map_or(seg.number, |l| l.number);
                t.missing += seg.number.saturating_sub(last + 1);
                t.last = name.clone();
                t.segments += 1;
            }
            _ => out.push(ArchivedTimeline {
                timeline: seg.timeline,
                first: name.clone(),
                last: name.clone(),
                segments: 1,
                missing: 0,
            }),
        }
    }
    Ok(out)
}

/// Read the inventory: one listing of `backups/` gives the manifests and keep marks.
pub async fn read(repo: &Repo) -> Result<Inventory> {
    let scan = catalog::scan(&repo.storage).await?;
    let (manifests, damaged) = catalog::load_scanned_all(&repo.storage, &repo.keys, &scan).await?;
    let verified = verification::latest_reports(repo).await.unwrap_or_default();
    let entries = manifests
        .iter()
        .map(|m| {
            Entry::Backup(Box::new(BackupEntry {
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
                wal: m.physical.as_ref().map(|p| WalSpan {
                    timeline: p.timeline,
                    start_lsn: p.start_lsn.to_string(),
                    stop_lsn: p.stop_lsn.to_string(),
                    start_segment: p.wal_start.clone(),
                    stop_segment: p.wal_stop.clone(),
                }),
                backup_type: m.physical.as_ref().map(|p| p.backup_type().to_string()),
                parent: m
                    .physical
                    .as_ref()
                    .and_then(|p| p.incremental.as_ref().map(|i| i.parent.clone())),
                chain: m.physical.as_ref().map(|p| p.chain().to_vec()).unwrap_or_default(),
                chain_missing: m
                    .physical
                    .as_ref()
                    .map(|p| {
                        p.chain()
                            .iter()
                            .filter(|l| !manifests.iter().any(|o| o.label.as_str() == l.as_str()))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
            }))
        })
        .chain(damaged.into_iter().map(|d| Entry::Damaged {
            label: d.label,
            damaged: d.why,
        }))
        .collect();
    let segment_size = manifests
        .iter()
        .find_map(|m| m.physical.as_ref().map(|p| p.segment_size))
        .filter(|s| crate::postgres::wal::valid_segment_size(*s))
        .unwrap_or(crate::postgres::wal::DEFAULT_SEGMENT_SIZE);
    Ok(Inventory {
        entries,
        place: repo.storage.describe(),
        archive: archived_timelines(repo, segment_size).await.unwrap_or_default(),
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
            if let Some(parent) = &b.parent {
                lines.push(format!(
                    "{:<20} incremental on {parent}; needs {}{}",
                    "",
                    b.chain.join(", "),
                    if b.chain_missing.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " — CHAIN BROKEN: {} missing, it cannot be restored",
                            b.chain_missing.join(", ")
                        )
                    }
                ));
            }
            if let Some(w) = &b.wal {
                lines.push(format!(
                    "{:<20} WAL {} ({}) .. {} ({}), timeline {}",
                    "", w.start_lsn, w.start_segment, w.stop_lsn, w.stop_segment, w.timeline
                ));
            }
        }
        if !self.archive.is_empty() {
            lines.push(String::new());
            lines.push("WAL ARCHIVE".to_string());
            for t in &self.archive {
                lines.push(format!(
                    "  timeline {}: {} .. {} ({} segment(s){})",
                    t.timeline,
                    t.first,
                    t.last,
                    t.segments,
                    if t.missing > 0 {
                        format!(", {} MISSING in between — `pgdr check` names them", t.missing)
                    } else {
                        String::new()
                    }
                ));
            }
        }
        f.write_str(&lines.join("\n"))
    }
}
