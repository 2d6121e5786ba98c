//! What a backup reports: `--json` prints it (the scheduler and scripts read it back
//! into these types), and its `Display` is the one-line human summary.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::postgres::{Lsn, TimelineId};
use crate::progress::{human_bytes, human_rate};
use crate::repo::manifest::PhysicalMethod;
use crate::repo::{BackupKind, BackupLabel, Manifest};

/// Either kind of backup's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BackupReport {
    Physical(PhysicalBackupReport),
    Logical(LogicalBackupReport),
}

impl BackupReport {
    pub fn label(&self) -> &BackupLabel {
        match self {
            BackupReport::Physical(r) => &r.label,
            BackupReport::Logical(r) => &r.label,
        }
    }

    pub fn stored_bytes(&self) -> u64 {
        match self {
            BackupReport::Physical(r) => r.stored_bytes,
            BackupReport::Logical(r) => r.stored_bytes,
        }
    }
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupReport::Physical(r) => r.fmt(f),
            BackupReport::Logical(r) => r.fmt(f),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogicalBackupReport {
    pub label: BackupLabel,
    pub kind: BackupKind,
    pub tags: Vec<String>,
    pub databases: Vec<String>,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub seconds: f64,
    /// Where it went, as `Storage::describe` says it.
    pub repository: String,
}

impl LogicalBackupReport {
    /// The report of a committed logical backup's manifest.
    pub fn of(manifest: &Manifest, elapsed: std::time::Duration, repository: String) -> LogicalBackupReport {
        LogicalBackupReport {
            label: manifest.label.clone(),
            kind: BackupKind::Logical,
            tags: manifest.tags.clone(),
            databases: manifest.databases.iter().map(|d| d.name.clone()).collect(),
            plain_bytes: manifest.plain_size(),
            stored_bytes: manifest.stored_size(),
            seconds: elapsed.as_secs_f64(),
            repository,
        }
    }
}

impl fmt::Display for LogicalBackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backup {}: {} database(s), {} dumped → {} stored ({:.1}x) in {:.1} s ({})",
            self.label,
            self.databases.len(),
            human_bytes(self.plain_bytes),
            human_bytes(self.stored_bytes),
            self.plain_bytes as f64 / self.stored_bytes.max(1) as f64,
            self.seconds,
            human_rate(self.plain_bytes, std::time::Duration::from_secs_f64(self.seconds))
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhysicalBackupReport {
    pub label: BackupLabel,
    pub kind: BackupKind,
    /// Only for `--method basebackup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<PhysicalMethod>,
    pub tags: Vec<String>,
    pub files: usize,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: TimelineId,
    pub wal_start: String,
    pub wal_stop: String,
    /// Only for pgdr's own copy (pg_basebackup's time is its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// `full` or `incr`.
    #[serde(default)]
    pub backup_type: String,
    /// An incremental: its parent, chain, and what it took from where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<crate::repo::manifest::Incremental>,
}

impl PhysicalBackupReport {
    /// The report of a committed physical backup's manifest.
    pub fn of(manifest: &Manifest) -> PhysicalBackupReport {
        let info = manifest.physical.as_ref().expect("a physical manifest");
        let basebackup = info.method == PhysicalMethod::Basebackup;
        let elapsed = (manifest.stop_time - manifest.start_time).to_std().unwrap_or_default();
        PhysicalBackupReport {
            label: manifest.label.clone(),
            kind: BackupKind::Physical,
            method: basebackup.then_some(PhysicalMethod::Basebackup),
            tags: manifest.tags.clone(),
            files: info.files.len(),
            plain_bytes: manifest.plain_size(),
            stored_bytes: manifest.stored_size(),
            start_lsn: info.start_lsn,
            stop_lsn: info.stop_lsn,
            timeline: info.timeline,
            wal_start: info.wal_start.clone(),
            wal_stop: info.wal_stop.clone(),
            seconds: (!basebackup).then_some(elapsed.as_secs_f64()),
            backup_type: info.backup_type().to_string(),
            incremental: info.incremental.clone(),
        }
    }
}

impl fmt::Display for PhysicalBackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = &self.incremental {
            let whole: Vec<String> = i.whole_files.iter().map(|(why, n)| format!("{n} {why}")).collect();
            writeln!(
                f,
                "incremental on {} (WAL {} .. {}): {} changed block(s) stored, {} referred to in {}; files stored whole: {}",
                i.parent,
                i.wal_from,
                i.wal_to,
                i.changed_blocks,
                human_bytes(i.referenced_bytes),
                i.chain.join(", "),
                if whole.is_empty() {
                    "none".to_string()
                } else {
                    whole.join(", ")
                }
            )?;
        }
        match self.seconds {
            Some(secs) => write!(
                f,
                "backup {}: {} files, {} copied → {} stored ({:.1}x) in {:.1} s ({}); WAL {}..{} archived",
                self.label,
                self.files,
                human_bytes(self.plain_bytes),
                human_bytes(self.stored_bytes),
                self.plain_bytes as f64 / self.stored_bytes.max(1) as f64,
                secs,
                human_rate(self.plain_bytes, std::time::Duration::from_secs_f64(secs)),
                self.wal_start,
                self.wal_stop
            ),
            None => write!(
                f,
                "backup {} (pg_basebackup): {} files, {} streamed → {} stored; WAL {}..{} archived",
                self.label,
                self.files,
                human_bytes(self.plain_bytes),
                human_bytes(self.stored_bytes),
                self.wal_start,
                self.wal_stop
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_reports_read_back_as_what_they_are() {
        let manifest = crate::repo::manifest::test_support::physical_manifest(
            "20261126T020000Z-F",
            "2026-11-26T02:10:00Z".parse().unwrap(),
            crate::postgres::Lsn(0x3000028),
        );
        let physical = BackupReport::Physical(PhysicalBackupReport::of(&manifest));
        let text = serde_json::to_string(&physical).unwrap();
        assert!(text.contains(r#""kind":"physical""#), "{text}");
        let back: BackupReport = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, BackupReport::Physical(_)));
        assert_eq!(back.stored_bytes(), manifest.stored_size());

        let logical = BackupReport::Logical(LogicalBackupReport {
            label: manifest.label.clone(),
            kind: BackupKind::Logical,
            tags: vec!["t".into()],
            databases: vec!["app".into()],
            plain_bytes: 10,
            stored_bytes: 4,
            seconds: 1.5,
            repository: "file:///r".into(),
        });
        let text = serde_json::to_string(&logical).unwrap();
        let back: BackupReport = serde_json::from_str(&text).unwrap();
        assert!(
            matches!(back, BackupReport::Logical(ref r) if r.databases == ["app"]),
            "{back:?}"
        );
        assert_eq!(back.stored_bytes(), 4);
    }
}
