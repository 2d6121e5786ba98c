//! What a physical restore reports: `--json` prints it, `verify` (which runs the
//! restore as a child, for isolation) parses it back into the same type.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::repo::BackupLabel;
use crate::repo::archive::TimelineChoice;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhysicalRestoreReport {
    pub backup: BackupLabel,
    pub to: PathBuf,
    pub target: String,
    pub files_written: u64,
    pub files_unchanged: u64,
    pub files_removed: u64,
    pub bytes_written: u64,
    /// The last archived segment of the checked chain.
    pub wal_available_until: String,
    pub restore_seconds: f64,
    pub timeline: TimelineChoice,
    /// Whether the copy keeps archiving (`--archive`: a new primary).
    pub archiving: bool,
    /// With `--start`: where recovery ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Where a started server's recovery ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryReport {
    pub state: String,
    pub lsn: String,
    pub timeline: u32,
    pub last_replayed: Option<String>,
    pub seconds: f64,
}

impl From<crate::server::Reached> for RecoveryReport {
    fn from(r: crate::server::Reached) -> RecoveryReport {
        RecoveryReport {
            state: r.state,
            lsn: r.lsn,
            timeline: r.timeline,
            last_replayed: r.last_replay,
            seconds: r.seconds,
        }
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovery finished: {} at LSN {} on timeline {}",
            self.state, self.lsn, self.timeline
        )?;
        if let Some(t) = &self.last_replayed {
            write!(f, ", last replayed transaction at {t}")?;
        }
        Ok(())
    }
}
