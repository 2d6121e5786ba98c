//! Restore-test reports in `verifications/<time>-<label>.json`: what was restored, how
//! long each step took, every check and its result.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{BackupKind, BackupLabel, Repo, layout};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    pub seconds: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub label: BackupLabel,
    pub kind: BackupKind,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub ok: bool,
    pub steps: Vec<Step>,
}

/// The newest report of each backup (report names start with their UTC time, so
/// names sort by time).
pub async fn latest_reports(repo: &Repo) -> Result<BTreeMap<BackupLabel, VerifyReport>> {
    let mut objects = repo.storage.list(layout::VERIFICATIONS).await?;
    objects.sort_by(|a, b| b.key.cmp(&a.key));
    let mut out = BTreeMap::new();
    for meta in objects {
        let Some(label) = layout::parse_verification(&meta.key) else {
            continue;
        };
        if out.contains_key(&label) {
            continue;
        }
        let data = crate::pipeline::load_bytes(&repo.storage, &meta.key, &repo.keys).await?;
        if let Ok(report) = serde_json::from_slice::<VerifyReport>(&data) {
            out.insert(label, report);
        }
    }
    Ok(out)
}
