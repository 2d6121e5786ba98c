//! What a physical backup reports: `--json` prints it (the scheduler and scripts
//! read it), and its `Display` is the one-line human summary.

use std::fmt;

use serde::Serialize;

use crate::postgres::{Lsn, TimelineId};
use crate::progress::{human_bytes, human_rate};
use crate::repo::manifest::PhysicalMethod;
use crate::repo::{BackupLabel, Manifest};

#[derive(Debug, Clone, Serialize)]
pub struct PhysicalBackupReport {
    pub label: BackupLabel,
    pub kind: &'static str,
    /// Only for `--method basebackup`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'static str>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl PhysicalBackupReport {
    /// The report of a committed physical backup's manifest.
    pub fn of(manifest: &Manifest) -> PhysicalBackupReport {
        let info = manifest.physical.as_ref().expect("a physical manifest");
        let basebackup = info.method == PhysicalMethod::Basebackup;
        let elapsed = (manifest.stop_time - manifest.start_time).to_std().unwrap_or_default();
        PhysicalBackupReport {
            label: manifest.label.clone(),
            kind: "physical",
            method: basebackup.then_some("basebackup"),
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
        }
    }
}

impl fmt::Display for PhysicalBackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
