//! The job history: one JSON line per job run (or skipped/missed run), appended by the
//! scheduler. It feeds catch-up after a restart and the job metrics.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Timeout,
    /// Not started: the previous run (here or on another scheduler) still runs.
    Skipped,
    /// A run missed while the scheduler was down, beyond the catch-up window.
    Missed,
    /// Stopped by the scheduler's shutdown.
    Aborted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub job: String,
    pub scheduled: DateTime<Utc>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub outcome: Outcome,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub bytes: Option<u64>,
    pub seconds: f64,
    #[serde(default)]
    pub detail: String,
}

pub fn append(path: &Path, entry: &Entry) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the job history {}", path.display()))?;
    let line = serde_json::to_string(entry).expect("history entry serialises");
    writeln!(file, "{line}")?;
    file.sync_data()?;
    Ok(())
}

/// Every entry; unreadable lines (a torn last line after a crash) are skipped.
pub fn read(path: &Path) -> Vec<Entry> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// What the metrics and catch-up need per job.
#[derive(Debug, Clone, Default)]
pub struct JobState {
    pub last_start: Option<DateTime<Utc>>,
    pub last_scheduled: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_outcome: Option<Outcome>,
    pub last_seconds: Option<f64>,
    pub consecutive_failures: u32,
    pub last_bytes: Option<u64>,
}

impl JobState {
    pub fn apply(&mut self, e: &Entry) {
        match e.outcome {
            Outcome::Skipped | Outcome::Missed => {
                self.last_scheduled = self.last_scheduled.max(Some(e.scheduled));
                return;
            }
            Outcome::Success => {
                self.last_success = Some(e.end);
                self.consecutive_failures = 0;
                if e.bytes.is_some() {
                    self.last_bytes = e.bytes;
                }
            }
            Outcome::Failure | Outcome::Timeout | Outcome::Aborted => self.consecutive_failures += 1,
        }
        self.last_start = Some(e.start);
        self.last_scheduled = self.last_scheduled.max(Some(e.scheduled));
        self.last_outcome = Some(e.outcome.clone());
        self.last_seconds = Some(e.seconds);
    }
}

pub fn states(entries: &[Entry]) -> BTreeMap<String, JobState> {
    let mut out: BTreeMap<String, JobState> = BTreeMap::new();
    for e in entries {
        out.entry(e.job.clone()).or_default().apply(e);
    }
    out
}
