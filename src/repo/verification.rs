//! Restore-test reports in `verifications/<time>-<label>.json`: what was restored, how
//! long each step took, every check and its result. Beside them, the reports of
//! events (`<time>-switch`, `-failover`, `-recover-<scenario>`, `-drill-<scenario>`);
//! [`history`] reads them all for `pgdr list --verifications`.

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

/// One restore test, drill, recovery, switch or failover.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub started: DateTime<Utc>,
    /// restore-test, drill, recover, switch or failover.
    pub kind: String,
    /// The backup tested, or the scenario.
    pub subject: String,
    pub ok: Option<bool>,
    pub seconds: Option<f64>,
    /// A drill's measured recovery time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    /// A drill's acknowledged commits lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_lost_commits: Option<u64>,
    pub report: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub entries: Vec<HistoryEntry>,
}

impl std::fmt::Display for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.entries.is_empty() {
            return write!(
                f,
                "no restore tests, drills or recoveries yet (pgdr verify, pgdr drill)"
            );
        }
        writeln!(
            f,
            "{:<20}  {:<12}  {:<22}  {:<6}  {:>9}  {:>9}  {:>8}",
            "started (UTC)", "kind", "subject", "result", "took", "RTO", "RPO lost"
        )?;
        for e in &self.entries {
            let secs = |v: Option<f64>| v.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "{:<20}  {:<12}  {:<22}  {:<6}  {:>9}  {:>9}  {:>8}",
                e.started.format("%Y-%m-%d %H:%M:%S"),
                e.kind,
                e.subject,
                match e.ok {
                    Some(true) => "ok",
                    Some(false) => "FAILED",
                    None => "?",
                },
                secs(e.seconds),
                secs(e.rto_seconds),
                e.rpo_lost_commits.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            )?;
        }
        // RTO per scenario over time, oldest first.
        let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for e in self.entries.iter().rev().filter(|e| e.kind == "drill") {
            if let Some(rto) = e.rto_seconds {
                by.entry(e.subject.as_str())
                    .or_default()
                    .push(format!("{rto:.1} s ({})", e.started.format("%Y-%m-%d")));
            }
        }
        if !by.is_empty() {
            writeln!(f, "drill RTO per scenario, oldest first:")?;
            for (scenario, rtos) in by {
                writeln!(f, "  {scenario}: {}", rtos.join(", "))?;
            }
        }
        Ok(())
    }
}

/// The newest `limit` reports of every kind, newest first. A report that cannot be
/// read is listed with an unknown result rather than hidden.
pub async fn history(repo: &Repo, limit: usize) -> Result<History> {
    #[derive(Deserialize)]
    struct Any {
        #[serde(default)]
        ok: Option<bool>,
        #[serde(default)]
        seconds: Option<f64>,
        #[serde(default)]
        rto_seconds: Option<f64>,
        #[serde(default)]
        rpo: Option<Lost>,
        #[serde(default)]
        finished: Option<DateTime<Utc>>,
        #[serde(default)]
        started: Option<DateTime<Utc>>,
    }
    #[derive(Deserialize)]
    struct Lost {
        lost: u64,
    }
    let mut objects = repo.storage.list(layout::VERIFICATIONS).await?;
    objects.sort_by(|a, b| b.key.cmp(&a.key));
    let mut entries = Vec::new();
    for meta in objects.into_iter().take(limit) {
        let (started, kind, subject) = if let Some((at, event)) = layout::parse_event_report(&meta.key) {
            let (kind, subject) = match event.split_once('-') {
                Some((k @ ("drill" | "recover"), scenario)) => (k.to_string(), scenario.to_string()),
                _ => (event.to_string(), String::new()),
            };
            (at, kind, subject)
        } else if let Some(label) = layout::parse_verification(&meta.key) {
            (
                meta.modified.unwrap_or_default(),
                "restore-test".to_string(),
                label.to_string(),
            )
        } else {
            continue;
        };
        let any = crate::pipeline::load_bytes(&repo.storage, &meta.key, &repo.keys)
            .await
            .ok()
            .and_then(|d| serde_json::from_slice::<Any>(&d).ok());
        let (ok, seconds, rto, lost, started) = match any {
            Some(a) => {
                let secs = a.seconds.or_else(|| match (a.started, a.finished) {
                    (Some(s), Some(f)) => Some((f - s).num_milliseconds() as f64 / 1000.0),
                    _ => None,
                });
                (
                    a.ok,
                    secs,
                    a.rto_seconds,
                    a.rpo.map(|r| r.lost),
                    a.started.unwrap_or(started),
                )
            }
            None => (None, None, None, None, started),
        };
        entries.push(HistoryEntry {
            started,
            kind,
            subject,
            ok,
            seconds,
            rto_seconds: rto,
            rpo_lost_commits: lost,
            report: meta.key.to_string(),
        });
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.started));
    Ok(History { entries })
}

/// Store an operation's report (a failover, a switch, a recovery, a drill) under
/// `verifications/`, where `list --verifications` and the metrics find it. Best
/// effort: the operation is done whether or not its record can be written.
pub async fn store_event_report<R: Serialize>(
    config: &crate::config::Config,
    event: &str,
    started: DateTime<Utc>,
    report: &R,
) {
    let stored = async {
        let repo = Repo::open(config).await?;
        let data = serde_json::to_vec_pretty(report).expect("report serialises");
        repo.store()
            .bytes(
                &layout::event_report(&started, event),
                "report",
                data,
                crate::storage::PutMode::Overwrite,
            )
            .await?;
        anyhow::Ok(())
    };
    if let Err(e) = stored.await {
        tracing::warn!("the {event} report could not be stored in the repository: {e:#}");
    }
}
