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

impl DrillReport {
    /// A report with nothing measured yet: the drill fills it in as it goes.
    pub(super) fn new(scenario: Scenario, runbook: &Runbook, started: DateTime<Utc>) -> DrillReport {
        DrillReport {
            scenario: scenario.name().to_string(),
            title: runbook.title.clone(),
            ok: false,
            started,
            failure_at: None,
            target_time: None,
            target_chosen: None,
            rto_seconds: None,
            rto_target_seconds: runbook.targets.rto_minutes * 60,
            rto_met: false,
            rpo: None,
            served_by: None,
            steps: Vec::new(),
            recover: None,
            checks: Vec::new(),
            seconds: 0.0,
            error: None,
        }
    }
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

/// The RPO from the client's log of acknowledged commits (id, when, the WAL position
/// just after) and the ids present after the recovery: what was lost, what of that
/// the archive had held (must be none), the loss in time, and what a point-in-time
/// recovery discarded by design.
pub(super) fn measure_rpo(
    log: &[(i64, DateTime<Utc>, Lsn)],
    present: &std::collections::HashSet<i64>,
    injected: &Injected,
    started: DateTime<Utc>,
    target_seconds: u64,
) -> Rpo {
    let before: Vec<&(i64, DateTime<Utc>, Lsn)> = log.iter().filter(|(_, at, _)| *at < injected.keep_before).collect();
    let lost: Vec<i64> = before
        .iter()
        .filter(|(id, _, _)| !present.contains(id))
        .map(|(id, _, _)| *id)
        .collect();
    // What the archive had must all be there: a commit lost from before the end of
    // the last archived segment is data pgdr lost.
    let lost_archived = match injected.archived_until {
        Some(end) => before
            .iter()
            .filter(|(id, _, lsn)| *lsn <= end && !present.contains(id))
            .count() as u64,
        None => lost.len() as u64,
    };
    // The RPO in time: from the last commit kept with everything before it to the failure.
    let first_lost = lost.first().copied();
    let kept_until = before
        .iter()
        .take_while(|(id, _, _)| Some(*id) != first_lost)
        .last()
        .map(|(_, at, _)| *at);
    let seconds = match (first_lost, kept_until) {
        (None, _) => 0.0,
        (Some(_), Some(at)) => (injected.failure_at - at).num_milliseconds().max(0) as f64 / 1000.0,
        (Some(_), None) => (injected.failure_at - started).num_milliseconds() as f64 / 1000.0,
    };
    // A recovery to a point in time (no lost server: nothing archived to measure
    // against) discards what came after its target on purpose.
    let discarded_by_design = match injected.archived_until {
        Some(_) => 0,
        None => log
            .iter()
            .filter(|(id, at, _)| *at >= injected.keep_before && !present.contains(id))
            .count() as u64,
    };
    Rpo {
        discarded_by_design,
        acknowledged: before.len() as u64,
        lost: lost.len() as u64,
        lost_archived,
        archived_until: injected.archived_until.map(|l| l.to_string()),
        seconds,
        target_seconds,
        met: lost_archived == 0
            && if target_seconds == 0 {
                lost.is_empty()
            } else {
                seconds <= target_seconds as f64
            },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn injected(keep_before: i64, failure_at: i64, archived_until: Option<u64>) -> Injected {
        Injected {
            failure_at: at(failure_at),
            t_fail: Instant::now(),
            inputs: BTreeMap::new(),
            keep_before: at(keep_before),
            archived_until: archived_until.map(Lsn),
            expect: Vec::new(),
        }
    }

    /// Commits 1..=10, one a second, at WAL positions 100, 200, ...
    fn log() -> Vec<(i64, DateTime<Utc>, Lsn)> {
        (1..=10).map(|i| (i, at(i), Lsn(i as u64 * 100))).collect()
    }

    fn present(ids: impl IntoIterator<Item = i64>) -> std::collections::HashSet<i64> {
        ids.into_iter().collect()
    }

    #[test]
    fn nothing_lost_is_rpo_zero() {
        let r = measure_rpo(&log(), &present(1..=10), &injected(11, 11, Some(1000)), at(0), 0);
        assert_eq!(
            (r.acknowledged, r.lost, r.lost_archived, r.discarded_by_design),
            (10, 0, 0, 0)
        );
        assert_eq!(r.seconds, 0.0);
        assert!(r.met);
    }

    #[test]
    fn a_point_in_time_recovery_discards_by_design_and_loses_nothing() {
        // Target before commit 7: commits 7..=10 are gone on purpose.
        let r = measure_rpo(&log(), &present(1..=6), &injected(7, 11, None), at(0), 0);
        assert_eq!((r.acknowledged, r.lost, r.discarded_by_design), (6, 0, 4));
        assert!(r.met);
    }

    #[test]
    fn a_lost_server_loses_only_what_was_never_archived() {
        // Archived up to commit 8's position; 9 and 10 were only on the lost server.
        let r = measure_rpo(&log(), &present(1..=8), &injected(11, 11, Some(800)), at(0), 5);
        assert_eq!((r.lost, r.lost_archived, r.discarded_by_design), (2, 0, 0));
        assert_eq!(r.seconds, 3.0, "from commit 8 (kept) to the failure");
        assert!(r.met, "3 s within a 5 s target");
        let strict = measure_rpo(&log(), &present(1..=8), &injected(11, 11, Some(800)), at(0), 0);
        assert!(!strict.met, "a zero target allows no loss");
    }

    #[test]
    fn losing_an_archived_commit_always_fails() {
        // Commit 5 was archived (position 500 <= 800) and is missing.
        let r = measure_rpo(
            &log(),
            &present((1..=10).filter(|i| *i != 5)),
            &injected(11, 11, Some(800)),
            at(0),
            3600,
        );
        assert_eq!((r.lost, r.lost_archived), (1, 1));
        assert!(!r.met);
    }
}
