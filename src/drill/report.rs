//! What a drill reports: RTO, RPO (what was lost and what was discarded by design),
//! the data checks, the steps; and its summary.

use super::*;

/// Acknowledged commits against what survived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rpo {
    /// Commits the client had acknowledged before the failure (before the failure
    /// point, for a restore to a point in time).
    pub acknowledged: u64,
    /// Of those, the ones missing after the recovery.
    pub lost: u64,
    /// Of the lost, the ones whose commit the archive held (must be 0).
    pub lost_archived: u64,
    /// A lost server: the end of the last WAL segment the repository the recovery
    /// reads holds, listed after the kill.
    pub archived_until: Option<String>,
    /// Commits acknowledged after the recovery's target (a point-in-time recovery
    /// goes back to before the failure) and missing afterwards: discarded by design,
    /// and counted here so that "0 lost" never hides them.
    #[serde(default)]
    pub discarded_by_design: u64,
    /// From the last commit kept with everything before it, to the failure.
    pub seconds: f64,
    pub target_seconds: u64,
    pub met: bool,
}

/// A comparison of data before the failure and after the recovery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataCheck {
    pub name: String,
    pub ok: bool,
    pub expected: String,
    pub found: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub scenario: String,
    pub title: String,
    pub ok: bool,
    pub started: DateTime<Utc>,
    /// When the failure was injected.
    pub failure_at: Option<DateTime<Utc>>,
    /// A point-in-time drill's recovery target, and how it was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_chosen: Option<String>,
    /// Failure to validated service through PgBouncer.
    pub rto_seconds: Option<f64>,
    pub rto_target_seconds: u64,
    pub rto_met: bool,
    pub rpo: Option<Rpo>,
    /// The server PgBouncer hands clients to after the recovery.
    pub served_by: Option<String>,
    /// The drill's own steps: set-up, failure, measurement, teardown.
    pub steps: Vec<StepLog>,
    pub recover: Option<RecoverReport>,
    pub checks: Vec<DataCheck>,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl std::fmt::Display for DrillReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        write!(f, "{}", self.summary())
    }
}

impl DrillReport {
    /// The outcome without the step log (which was printed as it happened).
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }
}

pub struct Summary<'a>(&'a DrillReport);

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        for c in &s.checks {
            writeln!(
                f,
                "{} {}{}",
                if c.ok { "✓" } else { "✗" },
                c.name,
                if c.ok {
                    String::new()
                } else {
                    format!(": expected {}, found {}", c.expected, c.found)
                }
            )?;
        }
        if let Some(e) = &s.error {
            writeln!(f, "error: {e}")?;
        }
        let rto = s
            .rto_seconds
            .map(|s| format!("{s:.1} s"))
            .unwrap_or_else(|| "not reached".into());
        if let (Some(t), Some(how)) = (&s.target_time, &s.target_chosen) {
            writeln!(
                f,
                "recovery target: {} ({how})",
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )?;
        }
        writeln!(
            f,
            "RTO measures from the injected failure{} to the first query the recovered service answered through PgBouncer; detecting the failure and deciding to recover are not in it",
            s.failure_at
                .map(|t| format!(" ({})", t.format("%H:%M:%S%.3f UTC")))
                .unwrap_or_default()
        )?;
        if s.rpo.is_some() {
            writeln!(
                f,
                "RPO counts the commits the drill's client had acknowledged (from the start of its workload{}) that are missing afterwards",
                if s.target_time.is_some() {
                    " to the recovery target"
                } else {
                    " to the failure"
                }
            )?;
        }
        write!(
            f,
            "drill {}: {} — RTO {rto} (target {} min: {})",
            s.scenario,
            if s.ok { "PASSED" } else { "FAILED" },
            s.rto_target_seconds / 60,
            if s.rto_met { "met" } else { "missed" }
        )?;
        if let Some(r) = &s.rpo {
            write!(
                f,
                "; RPO {} of {} acknowledged commits lost ({} of them archived), {:.1} s (target {} s: {})",
                r.lost,
                r.acknowledged,
                r.lost_archived,
                r.seconds,
                r.target_seconds,
                if r.met { "met" } else { "missed" }
            )?;
            if r.discarded_by_design > 0 {
                write!(
                    f,
                    "; {} commit(s) acknowledged after the recovery target were discarded by design",
                    r.discarded_by_design
                )?;
            }
        }
        if let Some(s) = &s.served_by {
            write!(f, "; PgBouncer serves from {s}")?;
        }
        Ok(())
    }
}
