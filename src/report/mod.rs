//! `pgdr report`: what a DBA asks first in an incident, from the repository alone —
//! which backups exist (and their chains), how far back and forward a restore can go
//! on each timeline and where the archive has gaps, how fresh the archive and each
//! copy are, when verification and each drill last passed, and what `expire` would
//! remove next. `--json` is the data; the HTML page (`html`) renders exactly that.
//!
//! It only reads: listings, manifests and reports, and the server's archiver
//! statistics when the server answers. Nothing it cannot read stops it: each part
//! says what was wrong instead.

pub mod html;
pub mod window;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::repo::{Repo, archive, catalog, layout};

/// The whole report: one entry per repository (the primary, then each copy).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: DateTime<Utc>,
    pub cluster: String,
    /// pg_stat_archiver of the configured server, when it answers; else why not.
    pub server: Option<ServerArchive>,
    pub server_error: Option<String>,
    pub repositories: Vec<RepoReport>,
}

/// The archiver's view from the server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerArchive {
    pub last_archived_at: Option<DateTime<Utc>>,
    pub archived_count: i64,
    pub failed_count: i64,
    pub last_failed_at: Option<DateTime<Utc>>,
    /// Segments ready and not archived yet: the archive lag, in segments.
    pub ready: i64,
}

/// One repository.
#[derive(Debug, Clone, Serialize)]
pub struct RepoReport {
    /// `primary` or the copy's name.
    pub name: String,
    pub place: String,
    /// Why the repository could not be read at all.
    pub error: Option<String>,
    pub backups: Vec<BackupRow>,
    /// Manifests that cannot be read: these backups cannot be restored.
    pub damaged: Vec<Damaged>,
    pub timelines: Vec<window::Timeline>,
    /// The earliest and latest point any restore can reach, over all timelines.
    pub earliest: Option<DateTime<Utc>>,
    pub latest: Option<DateTime<Utc>>,
    pub archive: Option<ArchiveHealth>,
    /// A copy's lag behind the primary (None for the primary), or why it is unknown.
    pub copy_lag: Option<CopyLag>,
    pub copy_lag_error: Option<String>,
    /// Restore tests, drills, recoveries, switches: newest first.
    pub history: Vec<crate::repo::verification::HistoryEntry>,
    /// The newest drill of each scenario, with its steps.
    pub drills: Vec<DrillSummary>,
    pub expire: Option<ExpireNext>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    pub label: String,
    pub why: String,
}

/// A backup's row.
#[derive(Debug, Clone, Serialize)]
pub struct BackupRow {
    pub label: String,
    pub kind: String,
    /// `full` or `incr` (physical).
    pub backup_type: Option<String>,
    pub parent: Option<String>,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub seconds: f64,
    pub stored_bytes: u64,
    pub plain_bytes: u64,
    pub timeline: Option<u32>,
    pub keep: bool,
    /// `verified`, `verification failed`, `not verified`, `chain broken` (a parent is
    /// missing) or `WAL missing` (its own WAL is not all archived).
    pub status: String,
    pub verified_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveHealth {
    pub last_segment: Option<String>,
    pub last_archived_at: Option<DateTime<Utc>>,
    pub age_seconds: Option<f64>,
    pub segments: u64,
    pub gaps: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyLag {
    pub segments_behind: u64,
    pub seconds_behind: Option<f64>,
}

/// A scenario's newest drill.
#[derive(Debug, Clone, Serialize)]
pub struct DrillSummary {
    pub scenario: String,
    pub started: DateTime<Utc>,
    pub ok: bool,
    pub rto_seconds: Option<f64>,
    pub rto_target_seconds: u64,
    pub rto_met: bool,
    pub rpo_seconds: Option<f64>,
    pub rpo_target_seconds: Option<u64>,
    pub rpo_met: Option<bool>,
    pub lost_commits: Option<u64>,
    /// Where the time went: the drill's set-up, the recovery's steps, the checks.
    pub steps: Vec<StepTime>,
    /// The newest drill of this scenario that passed.
    pub last_passed: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepTime {
    pub step: String,
    pub seconds: f64,
    pub ok: bool,
    /// Part of the recovery (counted in the RTO) rather than the drill's set-up.
    pub recovery: bool,
}

/// What `expire` would remove next, and why.
#[derive(Debug, Clone, Serialize)]
pub struct ExpireNext {
    pub backups: Vec<ExpireDecision>,
    pub wal_segments: usize,
    pub wal_anchor: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpireDecision {
    pub label: String,
    pub reason: String,
}

/// Read everything the report shows. Never fails: what cannot be read is said.
pub async fn build(config: &Config) -> Report {
    let now = Utc::now();
    let mut repositories = Vec::new();
    let primary = repository(config, "primary", None, now).await;
    repositories.push(primary);
    if !config.repository.copies.is_empty() {
        let lags = match crate::storage::open(&config.repository, &config.cluster).await {
            Ok(storage) => crate::copy::lags(config, &storage).await,
            Err(e) => config
                .repository
                .copies
                .iter()
                .map(|c| (c.name.clone(), Err(anyhow::anyhow!("{e:#}"))))
                .collect(),
        };
        for copy in &config.repository.copies {
            let mut selected = config.clone();
            let mut r = match selected.select_repository(&copy.name) {
                Ok(()) => repository(&selected, &copy.name, Some(&copy.name), now).await,
                Err(e) => failed(&copy.name, String::new(), format!("{e:#}")),
            };
            match lags.iter().find(|(n, _)| n == &copy.name).map(|(_, l)| l) {
                Some(Ok(l)) => {
                    r.copy_lag = Some(CopyLag {
                        segments_behind: l.segments,
                        seconds_behind: l.seconds,
                    })
                }
                Some(Err(e)) => r.copy_lag_error = Some(format!("{e:#}")),
                None => r.copy_lag_error = Some("not measured".into()),
            }
            repositories.push(r);
        }
    }
    let stats = async {
        let target = crate::postgres::PgTarget::from_config(config.postgres.url.as_deref())?;
        crate::postgres::server::archiver_stats(&target).await
    };
    // A server that does not answer must not hold the page up.
    let stats = async {
        tokio::time::timeout(std::time::Duration::from_secs(5), stats)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the server did not answer within 5 s")))
    };
    let (server, server_error) = match stats.await {
        Ok((last, archived, failed, last_failed, ready)) => {
            let at = |t: Option<f64>| t.and_then(|s| DateTime::from_timestamp_millis((s * 1000.0) as i64));
            let stats = ServerArchive {
                last_archived_at: at(last),
                archived_count: archived,
                failed_count: failed,
                last_failed_at: at(last_failed),
                ready,
            };
            (Some(stats), None)
        }
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    Report {
        generated_at: now,
        cluster: config.cluster.clone(),
        server,
        server_error,
        repositories,
    }
}

fn failed(name: &str, place: String, error: String) -> RepoReport {
    RepoReport {
        name: name.to_string(),
        place,
        error: Some(error),
        backups: Vec::new(),
        damaged: Vec::new(),
        timelines: Vec::new(),
        earliest: None,
        latest: None,
        archive: None,
        copy_lag: None,
        copy_lag_error: None,
        history: Vec::new(),
        drills: Vec::new(),
        expire: None,
    }
}

/// One repository's part of the report (`config` selects it).
async fn repository(config: &Config, name: &str, copy: Option<&str>, now: DateTime<Utc>) -> RepoReport {
    let place = config.repository.url.clone();
    let repo = match Repo::open(config).await {
        Ok(r) => r,
        Err(e) => return failed(name, place, format!("{e:#}")),
    };
    let place = repo.storage.describe();
    let scan = match catalog::scan(&repo.storage).await {
        Ok(s) => s,
        Err(e) => return failed(name, place, format!("listing the backups: {e:#}")),
    };
    let (manifests, damaged) = match catalog::load_scanned_all(&repo.storage, &repo.keys, &scan).await {
        Ok(x) => x,
        Err(e) => return failed(name, place, format!("reading the manifests: {e:#}")),
    };
    let listing = archive::list(&repo.storage).await;
    let verified = crate::repo::verification::latest_reports(&repo)
        .await
        .unwrap_or_default();
    let segment_size = manifests
        .iter()
        .find_map(|m| m.physical.as_ref().map(|p| p.segment_size))
        .filter(|s| crate::postgres::wal::valid_segment_size(*s))
        .unwrap_or(crate::postgres::wal::DEFAULT_SEGMENT_SIZE);

    // Timelines, gaps and spans.
    // A backup whose chain is broken reaches nothing.
    let whole = |p: &crate::repo::manifest::PhysicalInfo| {
        p.chain()
            .iter()
            .all(|l| manifests.iter().any(|o| o.label.as_str() == l.as_str()))
    };
    let marks: Vec<window::BackupMark> = manifests
        .iter()
        .filter_map(|m| {
            let p = m.physical.as_ref().filter(|p| whole(p))?;
            let start = crate::postgres::Segment::parse(&p.wal_start, segment_size)?;
            let stop = crate::postgres::Segment::parse(&p.wal_stop, segment_size)?;
            Some(window::BackupMark {
                label: m.label.to_string(),
                timeline: p.timeline,
                stop_time: m.stop_time,
                wal_start: start.number,
                wal_stop: stop.number,
            })
        })
        .collect();
    let (timelines, archive_health) = match &listing {
        Ok(listing) => {
            let mut histories = BTreeMap::new();
            for (tli, file) in &listing.histories {
                let key = layout::wal_file(&crate::postgres::WalFile::History(file.clone()));
                let parsed = crate::pipeline::load_bytes(&repo.storage, &key, &repo.keys)
                    .await
                    .ok()
                    .and_then(|d| archive::parse_history(&String::from_utf8_lossy(&d)).ok());
                if let Some(&(parent, lsn)) = parsed.as_ref().and_then(|h| h.last()) {
                    histories.insert(*tli, (parent, lsn));
                }
            }
            let timelines = window::timelines(&listing.segments, segment_size, &histories, &marks);
            let newest = listing
                .segments
                .iter()
                .max_by_key(|(n, at)| (*at, n.as_str()))
                .map(|(n, at)| (n.clone(), *at));
            let health = ArchiveHealth {
                last_segment: newest.as_ref().map(|(n, _)| n.clone()),
                last_archived_at: newest.as_ref().and_then(|(_, at)| *at),
                age_seconds: newest
                    .as_ref()
                    .and_then(|(_, at)| *at)
                    .map(|at| (now - at).num_milliseconds() as f64 / 1000.0),
                segments: listing.segments.len() as u64,
                gaps: timelines.iter().map(|t| t.gaps.len()).sum(),
            };
            (timelines, Some(health))
        }
        Err(_) => (Vec::new(), None),
    };
    let unrestorable: Vec<&String> = timelines.iter().flat_map(|t| &t.unrestorable_backups).collect();

    let backups = manifests
        .iter()
        .map(|m| {
            let p = m.physical.as_ref();
            let chain_missing = p.is_some_and(|p| {
                p.chain()
                    .iter()
                    .any(|l| !manifests.iter().any(|o| o.label.as_str() == l.as_str()))
            });
            let verdict = verified.get(&m.label);
            let status = if chain_missing {
                "chain broken"
            } else if unrestorable.iter().any(|l| l.as_str() == m.label.as_str()) {
                "WAL missing"
            } else {
                match verdict {
                    Some(v) if v.ok => "verified",
                    Some(_) => "verification failed",
                    None => "not verified",
                }
            };
            BackupRow {
                label: m.label.to_string(),
                kind: m.kind.to_string(),
                backup_type: p.map(|p| p.backup_type().to_string()),
                parent: p.and_then(|p| p.incremental.as_ref().map(|i| i.parent.clone())),
                start_time: m.start_time,
                stop_time: m.stop_time,
                seconds: (m.stop_time - m.start_time).num_milliseconds() as f64 / 1000.0,
                stored_bytes: m.stored_size(),
                plain_bytes: m.plain_size(),
                timeline: p.map(|p| p.timeline),
                keep: scan.keep.contains(&m.label),
                status: status.to_string(),
                verified_at: verdict.map(|v| v.finished),
            }
        })
        .collect();

    let history = crate::repo::verification::history(&repo, 200)
        .await
        .map(|h| h.entries)
        .unwrap_or_default();
    let drills = drills(&repo, &history).await;

    // What expire would do now (the plan only: nothing is taken or removed).
    let expire = match (&listing, copy) {
        (Ok(listing), None) => {
            let in_use = crate::repo::lock::in_use(&repo).await.unwrap_or_default();
            let plan = crate::retention::plan::plan(&config.retention, &manifests, &scan.keep, &in_use, listing, now);
            Some(ExpireNext {
                backups: plan
                    .backups
                    .iter()
                    .filter(|d| !d.keep)
                    .map(|d| ExpireDecision {
                        label: d.label.to_string(),
                        reason: d.reason.clone(),
                    })
                    .collect(),
                wal_segments: if damaged.is_empty() { plan.wal_remove.len() } else { 0 },
                wal_anchor: plan.wal_anchor.clone(),
            })
        }
        _ => None,
    };

    let earliest = timelines
        .iter()
        .flat_map(|t| t.restorable.first())
        .map(|s| s.from)
        .min();
    let latest = timelines.iter().flat_map(|t| t.restorable.last()).map(|s| s.to).max();
    RepoReport {
        name: name.to_string(),
        place,
        error: listing
            .as_ref()
            .err()
            .map(|e| format!("listing the WAL archive: {e:#}")),
        backups,
        damaged: damaged
            .into_iter()
            .map(|d| Damaged {
                label: d.label.to_string(),
                why: d.why,
            })
            .collect(),
        timelines,
        earliest,
        latest,
        archive: archive_health,
        copy_lag: None,
        copy_lag_error: None,
        history,
        drills,
        expire,
    }
}

/// The newest drill of each scenario, read from its report, with the newest that
/// passed from the history.
async fn drills(repo: &Repo, history: &[crate::repo::verification::HistoryEntry]) -> Vec<DrillSummary> {
    let mut newest: BTreeMap<&str, &crate::repo::verification::HistoryEntry> = BTreeMap::new();
    for e in history.iter().filter(|e| e.kind == "drill") {
        newest.entry(e.subject.as_str()).or_insert(e);
    }
    let mut out = Vec::new();
    for (scenario, entry) in newest {
        let key = crate::storage::ObjectKey::new(&entry.report);
        let report = match key {
            Ok(key) => crate::pipeline::load_bytes(&repo.storage, &key, &repo.keys)
                .await
                .ok()
                .and_then(|d| serde_json::from_slice::<crate::drill::report::DrillReport>(&d).ok()),
            Err(_) => None,
        };
        let last_passed = history
            .iter()
            .filter(|e| e.kind == "drill" && e.subject == scenario && e.ok == Some(true))
            .map(|e| e.started)
            .max();
        let Some(d) = report else {
            out.push(DrillSummary {
                scenario: scenario.to_string(),
                started: entry.started,
                ok: entry.ok == Some(true),
                rto_seconds: entry.rto_seconds,
                rto_target_seconds: 0,
                rto_met: false,
                rpo_seconds: None,
                rpo_target_seconds: None,
                rpo_met: None,
                lost_commits: entry.rpo_lost_commits,
                steps: Vec::new(),
                last_passed,
            });
            continue;
        };
        let mut steps: Vec<StepTime> = Vec::new();
        let step = |s: &crate::steps::StepLog, recovery: bool| StepTime {
            step: s.step.clone(),
            seconds: s.seconds,
            ok: s.ok,
            recovery,
        };
        // The drill's own steps (set-up, failure, measurement), with the recovery's
        // steps where the recovery ran.
        let recovery_steps: Vec<StepTime> = d
            .recover
            .as_ref()
            .map(|r| r.steps.iter().map(|s| step(s, true)).collect())
            .unwrap_or_default();
        let mut inserted = false;
        for s in &d.steps {
            if !inserted && d.failure_at.is_some_and(|f| s.started >= f) {
                steps.extend(recovery_steps.iter().cloned());
                inserted = true;
            }
            steps.push(step(s, false));
        }
        if !inserted {
            steps.extend(recovery_steps);
        }
        out.push(DrillSummary {
            scenario: scenario.to_string(),
            started: d.started,
            ok: d.ok,
            rto_seconds: d.rto_seconds,
            rto_target_seconds: d.rto_target_seconds,
            rto_met: d.rto_met,
            rpo_seconds: d.rpo.as_ref().map(|r| r.seconds),
            rpo_target_seconds: d.rpo.as_ref().map(|r| r.target_seconds),
            rpo_met: d.rpo.as_ref().map(|r| r.met),
            lost_commits: d.rpo.as_ref().map(|r| r.lost),
            steps,
            last_passed,
        });
    }
    out
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |at: &DateTime<Utc>| at.format("%Y-%m-%d %H:%M:%S").to_string();
        writeln!(f, "cluster {} — report of {} UTC", self.cluster, t(&self.generated_at))?;
        match (&self.server, &self.server_error) {
            (Some(s), _) => writeln!(
                f,
                "server: {} segment(s) waiting to be archived, {} failure(s) since the statistics reset{}",
                s.ready,
                s.failed_count,
                s.last_failed_at
                    .map(|at| format!(", the last at {}", t(&at)))
                    .unwrap_or_default()
            )?,
            (None, e) => writeln!(f, "server: not reachable ({})", e.as_deref().unwrap_or("-"))?,
        }
        for r in &self.repositories {
            writeln!(f, "\n== {} ({})", r.name, r.place)?;
            if let Some(e) = &r.error {
                writeln!(f, "  cannot be read in full: {e}")?;
            }
            if let Some(e) = &r.copy_lag_error {
                writeln!(f, "  copy lag unknown: {e}")?;
            }
            if let Some(lag) = &r.copy_lag {
                writeln!(
                    f,
                    "  copy lag: {} segment(s){}",
                    lag.segments_behind,
                    lag.seconds_behind.map(|s| format!(", {s:.0} s")).unwrap_or_default()
                )?;
            }
            match (&r.earliest, &r.latest) {
                (Some(a), Some(b)) => writeln!(f, "  a restore can reach {} … {}", t(a), t(b))?,
                _ => writeln!(f, "  no physical backup with its WAL: no point-in-time restore")?,
            }
            for tl in &r.timelines {
                let spans: Vec<String> = tl
                    .restorable
                    .iter()
                    .map(|s| format!("{} … {} (from {})", t(&s.from), t(&s.to), s.from_backup))
                    .collect();
                writeln!(
                    f,
                    "  timeline {}: {} segment(s) {} … {}; restorable: {}",
                    tl.timeline,
                    tl.segments,
                    tl.first_segment.as_deref().unwrap_or("-"),
                    tl.last_segment.as_deref().unwrap_or("-"),
                    if spans.is_empty() {
                        "nothing".to_string()
                    } else {
                        spans.join("; ")
                    }
                )?;
                for g in &tl.gaps {
                    writeln!(
                        f,
                        "    GAP: {} missing, {} … {}",
                        g.missing, g.first_missing, g.last_missing
                    )?;
                }
            }
            for d in &r.damaged {
                writeln!(f, "  DAMAGED manifest {}: {}", d.label, d.why)?;
            }
            let bad: Vec<&BackupRow> = r
                .backups
                .iter()
                .filter(|b| b.status != "verified" && b.status != "not verified")
                .collect();
            writeln!(f, "  {} backup(s); {} with a problem", r.backups.len(), bad.len())?;
            for b in bad {
                writeln!(f, "    {}: {}", b.label, b.status)?;
            }
            for d in &r.drills {
                writeln!(
                    f,
                    "  drill {}: {} at {}, RTO {} (target {} s){}",
                    d.scenario,
                    if d.ok { "passed" } else { "FAILED" },
                    t(&d.started),
                    d.rto_seconds.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into()),
                    d.rto_target_seconds,
                    d.lost_commits
                        .map(|n| format!(", {n} acknowledged commit(s) lost"))
                        .unwrap_or_default()
                )?;
            }
            if let Some(e) = &r.expire {
                writeln!(
                    f,
                    "  expire would remove {} backup(s) and {} WAL segment(s)",
                    e.backups.len(),
                    e.wal_segments
                )?;
            }
        }
        Ok(())
    }
}
