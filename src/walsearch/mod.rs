//! `wal-search`: when did this happen? Finds the transactions that dropped,
//! truncated, deleted from or updated a table, in the archived WAL, and the restore
//! target that stops just before each. Also lists named restore points.
//!
//! Tables are named through the relation catalog a backup records
//! (`postgres/catalog.rs`); WAL from that backup on is read with `pg_waldump`
//! (`stream.rs`), and the table's file is followed through every rewrite since
//! (`lineage.rs`).

pub mod lineage;
pub mod stream;
pub mod waldump;

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::postgres::{Lsn, PgTools, Segment, TimelineId};
use crate::repo::archive::{self, Stretch, Until};
use crate::repo::{Manifest, Repo};
use crate::usage;
pub use lineage::Change;

/// What to look for.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// `schema.name` (or a bare name: any schema).
    pub tables: Vec<String>,
    pub database: Option<String>,
    pub changes: Vec<Change>,
    /// Deletes and updates of fewer rows are not reported.
    pub min_rows: u64,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub timeline: Option<TimelineId>,
    /// Where segments are unpacked (a private directory is made inside).
    pub work_dir: Option<PathBuf>,
}

/// The restore target that stops just before a transaction.
#[derive(Debug, Clone, Serialize)]
pub struct StopBefore {
    /// Recover up to, not including, this commit record.
    pub lsn: Lsn,
    pub exclusive: bool,
    pub xid: u32,
    pub timeline: TimelineId,
    /// The commit before it: `--target-lsn` this (inclusive) keeps that one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_commit_lsn: Option<Lsn>,
    /// The options for `pgdr restore` (or `recover`).
    pub restore_args: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Match {
    pub xid: u32,
    pub commit_time: DateTime<Utc>,
    pub commit_lsn: Lsn,
    pub timeline: TimelineId,
    pub database: String,
    pub table: String,
    pub change: Change,
    /// Rows deleted or updated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Rows written into the table's new file in the same transaction.
    #[serde(skip_serializing_if = "is_zero")]
    pub rows_written_after: u64,
    pub target: StopBefore,
    /// Why this match is not certain, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ambiguous: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Match {
    pub fn what(&self) -> String {
        match (self.change, self.rows) {
            (Change::Deleted, Some(n)) => format!("{n} row(s) deleted"),
            (Change::Updated, Some(n)) => format!("{n} row(s) updated"),
            (Change::Truncated, _) if self.rows_written_after > 0 => format!(
                "truncated, then {} row(s) written into the new file (a TRUNCATE and INSERT, or a rewriting ALTER TABLE)",
                self.rows_written_after
            ),
            (Change::Rewritten, _) => "rewritten (VACUUM FULL or CLUSTER: no rows lost)".into(),
            (c, _) => c.as_str().into(),
        }
    }
}

/// Where the search read.
#[derive(Debug, Clone, Serialize)]
pub struct Searched {
    /// The backup whose catalog named the tables.
    pub from_backup: String,
    pub from_lsn: Lsn,
    pub to_lsn: Option<Lsn>,
    pub timeline: TimelineId,
    pub timelines: Vec<TimelineId>,
    pub segments: usize,
    pub bytes: u64,
    pub records: u64,
    /// Whether every archived segment of the window was read.
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub tables: Vec<String>,
    pub changes: Vec<Change>,
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    pub searched: Searched,
    /// Newest first.
    pub matches: Vec<Match>,
    pub warnings: Vec<String>,
}

impl fmt::Display for SearchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let changes: Vec<&str> = self.changes.iter().map(|c| c.as_str()).collect();
        writeln!(
            f,
            "wal-search: {} ({}) since {}{}",
            self.tables.join(", "),
            changes.join(", "),
            self.since.format("%Y-%m-%d %H:%M:%SZ"),
            self.until
                .map(|u| format!(" until {}", u.format("%Y-%m-%d %H:%M:%SZ")))
                .unwrap_or_default()
        )?;
        let s = &self.searched;
        writeln!(
            f,
            "  read {} WAL segment(s) on timeline(s) {} from {} (backup {}){}",
            s.segments,
            s.timelines.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
            s.from_lsn,
            s.from_backup,
            s.to_lsn.map(|l| format!(" to {l}")).unwrap_or_default()
        )?;
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        if self.matches.is_empty() {
            return write!(f, "no transaction in the window matches");
        }
        if self.matches.len() > 1 {
            writeln!(
                f,
                "{} transactions match, newest first — check which one was the loss:",
                self.matches.len()
            )?;
        } else {
            writeln!(f, "1 transaction matches:")?;
        }
        for (i, m) in self.matches.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(
                f,
                "  xid {}  committed {}  at {} (timeline {})",
                m.xid,
                m.commit_time.format("%Y-%m-%d %H:%M:%S%.6fZ"),
                m.commit_lsn,
                m.timeline
            )?;
            writeln!(f, "    {} in database {:?}: {}", m.table, m.database, m.what())?;
            if let Some(why) = &m.ambiguous {
                writeln!(f, "    AMBIGUOUS: {why}")?;
            }
            write!(
                f,
                "    restore to just before it: pgdr restore --to DIR {}",
                m.target.restore_args
            )?;
            if let Some(prev) = m.target.previous_commit_lsn {
                write!(f, "\n    (or keep the commit before it: --target-lsn {prev})")?;
            }
        }
        Ok(())
    }
}

/// A named restore point found in the archive.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePoint {
    pub name: String,
    pub lsn: Lsn,
    pub timeline: TimelineId,
    pub time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestorePointsReport {
    pub searched: Searched,
    pub restore_points: Vec<RestorePoint>,
    pub warnings: Vec<String>,
}

impl fmt::Display for RestorePointsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if self.restore_points.is_empty() {
            return write!(
                f,
                "no restore points in the archived WAL from {} ({} segment(s) read)",
                self.searched.from_lsn, self.searched.segments
            );
        }
        writeln!(f, "{:<28} {:<28} {:<14} TIMELINE", "NAME", "TIME", "LSN")?;
        for (i, p) in self.restore_points.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{:<28} {:<28} {:<14} {}",
                p.name,
                p.time
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string())
                    .unwrap_or_else(|| "?".into()),
                p.lsn.to_string(),
                p.timeline
            )?;
        }
        Ok(())
    }
}

/// The backup a search starts from, with where its WAL starts.
struct Baseline<'a> {
    manifest: &'a Manifest,
    timeline: TimelineId,
    start: Lsn,
    segment_size: u64,
}

fn baseline_of(m: &Manifest) -> Option<Baseline<'_>> {
    if let Some(p) = &m.physical {
        return Some(Baseline {
            manifest: m,
            timeline: p.timeline,
            start: p.start_lsn,
            segment_size: p.segment_size,
        });
    }
    let first = m
        .catalog
        .iter()
        .filter(|c| c.timeline > 0 && c.lsn.0 > 0)
        .min_by_key(|c| c.lsn)?;
    Some(Baseline {
        manifest: m,
        timeline: first.timeline,
        start: first.lsn,
        segment_size: 16 << 20,
    })
}

/// The plan of WAL to read from `base`, along the followed timeline.
struct Route {
    plan: stream::Plan,
    path: Vec<Stretch>,
    followed: TimelineId,
    complete: bool,
    warnings: Vec<String>,
}

async fn route(
    repo: &Repo,
    base: &Baseline<'_>,
    timeline: Option<TimelineId>,
    until: Option<DateTime<Utc>>,
) -> Result<Route> {
    let seg = base.segment_size;
    let listing = archive::list(&repo.storage).await?;
    let mut warnings = Vec::new();
    let followed = match timeline {
        Some(t) => t,
        None => {
            let branches = listing.branches(&repo.storage, &repo.keys, base.timeline).await?;
            let declared = archive::declarations(&repo.storage).await?;
            let choice = listing.choose_timeline(base.timeline, base.start, &branches, &declared, seg);
            warnings.extend(choice.forks.iter().map(|f| format!("not searched: {f}")));
            choice.followed
        }
    };
    let path = listing.path_to(&repo.storage, &repo.keys, followed).await?;
    let until = until.map(Until::Time).unwrap_or(Until::Newest);
    let start = Segment::containing(base.timeline, base.start, seg);
    let ranges = listing.required_ranges(start, &path, seg, until)?;
    let gap = listing.gap_runs(&ranges, seg, 1).into_iter().next();
    let mut files = Vec::new();
    let mut complete = true;
    'ranges: for (tli, first, last) in ranges {
        for number in first..=last {
            let name = Segment { timeline: tli, number }.name(seg);
            if !listing.segments.contains_key(&name) {
                if let Some((from, to)) = &gap {
                    warnings.push(format!(
                        "WAL {} to {} is missing from the archive: nothing after {} was searched",
                        from.name(seg),
                        to.name(seg),
                        Lsn(from.number * seg)
                    ));
                }
                complete = false;
                break 'ranges;
            }
            files.push((name, number));
        }
    }
    Ok(Route {
        plan: stream::Plan {
            files,
            timeline: followed,
            start: base.start,
            segment_size: seg,
        },
        path,
        followed,
        complete,
        warnings,
    })
}

fn timeline_at(path: &[Stretch], lsn: Lsn) -> TimelineId {
    path.iter()
        .find(|s| s.end.is_none_or(|e| lsn < e))
        .map(|s| s.tli)
        .unwrap_or(0)
}

fn waldump_for(config: &Config, manifest: &Manifest) -> Result<PathBuf> {
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let tool = tools.path("pg_waldump")?;
    let out = std::process::Command::new(&tool).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let major: Option<u32> = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok());
    let wanted = manifest.pg_version_num / 10000;
    match major {
        Some(m) if m == wanted => Ok(tool),
        Some(m) => Err(usage!(
            "{} is PostgreSQL {m}'s, but the WAL is PostgreSQL {wanted}'s — set [postgres] bin_dir to PostgreSQL {wanted}'s bin directory",
            tool.display()
        )),
        None => Err(anyhow::anyhow!(
            "cannot read the version of {} from {text:?}",
            tool.display()
        )),
    }
}

fn work_dir(at: Option<&PathBuf>) -> Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix("pgdr-wal-search-");
    match at {
        Some(dir) => b.tempdir_in(dir),
        None => b.tempdir(),
    }
    .context("making a private directory for WAL segments")
}

/// The newest backup with a catalog that started at or before `since`; else the
/// oldest one with a catalog (and a warning that earlier WAL is not searched).
fn choose_baseline(manifests: &[Manifest], since: DateTime<Utc>) -> Result<(Baseline<'_>, Option<String>)> {
    let mut with_catalog: Vec<&Manifest> = manifests.iter().filter(|m| !m.catalog.is_empty()).collect();
    with_catalog.sort_by_key(|m| m.start_time);
    if with_catalog.is_empty() {
        return Err(usage!(
            "no backup in the repository records its relation catalog (backups taken before wal-search existed do not) — take a backup (`pgdr backup`); WAL from then on can be searched"
        ));
    }
    let chosen = with_catalog
        .iter()
        .rev()
        .filter(|m| m.start_time <= since)
        .find_map(|m| baseline_of(m));
    if let Some(b) = chosen {
        return Ok((b, None));
    }
    let oldest = with_catalog
        .iter()
        .find_map(|m| baseline_of(m))
        .ok_or_else(|| usage!("no backup with a catalog says where its WAL starts — take a physical backup"))?;
    let note = format!(
        "the window starts before the oldest backup with a catalog ({}, {}): WAL before it is not searched",
        oldest.manifest.label,
        oldest.manifest.start_time.format("%Y-%m-%d %H:%M:%SZ")
    );
    Ok((oldest, Some(note)))
}

/// Search the archived WAL.
pub async fn search(config: &Config, opts: &SearchOptions) -> Result<SearchReport> {
    if opts.tables.is_empty() {
        return Err(usage!("name the table to search for with --table schema.name"));
    }
    let now = Utc::now();
    let since = opts
        .since
        .unwrap_or_else(|| now - Duration::days(config.retention.wal_days.unwrap_or(7) as i64));
    if let Some(until) = opts.until
        && until < since
    {
        return Err(usage!("--until is before --since"));
    }
    let repo = Repo::open(config).await?;
    let manifests = repo.manifests().await?;
    let (base, note) = choose_baseline(&manifests, since)?;
    // Without --since the window is the retention window: a younger repository is
    // no news.
    let note = note.filter(|_| opts.since.is_some());
    let mut lineage = lineage::Lineage::from_catalogs(&base.manifest.catalog);
    let mut wanted = Vec::new();
    for t in &opts.tables {
        let found = lineage.find(t, opts.database.as_deref());
        if found.is_empty() {
            let dbs: Vec<&str> = base.manifest.catalog.iter().map(|c| c.name.as_str()).collect();
            return Err(usage!(
                "table {t:?} is not in the catalog of backup {} (databases {}): wal-search names tables as they were at a backup — check the name (schema.table{}), or search from a later backup with --since",
                base.manifest.label,
                dbs.join(", "),
                if opts.database.is_some() { ", --database" } else { "" }
            ));
        }
        wanted.extend(found);
    }
    let tool = waldump_for(config, base.manifest)?;
    let route = route(&repo, &base, opts.timeline, opts.until).await?;
    let work = work_dir(opts.work_dir.as_ref())?;
    let reader = stream::Reader {
        storage: &repo.storage,
        keys: &repo.keys,
        pg_waldump: tool,
        work: work.path(),
        rmgrs: stream::SEARCH_RMGRS,
    };
    let mut events = Vec::new();
    let scanned = reader
        .scan(&route.plan, |_, record, _| {
            for e in lineage.apply(record) {
                if wanted.contains(&e.table) {
                    events.push(e);
                }
            }
        })
        .await?;
    let mut matches: Vec<Match> = events
        .into_iter()
        // An ambiguous drop-or-truncate answers a search for either.
        .filter(|e| {
            opts.changes.contains(&e.change)
                || e.ambiguous.is_some()
                    && opts
                        .changes
                        .iter()
                        .any(|c| matches!(c, Change::Dropped | Change::Truncated))
        })
        .filter(|e| e.time >= since && opts.until.is_none_or(|u| e.time <= u))
        .filter(|e| !matches!(e.change, Change::Deleted | Change::Updated) || e.rows >= opts.min_rows.max(1))
        .map(|e| {
            let t = &lineage.tables[e.table];
            let timeline = timeline_at(&route.path, e.commit_lsn);
            Match {
                xid: e.xid,
                commit_time: e.time,
                commit_lsn: e.commit_lsn,
                timeline,
                database: t.database.clone(),
                table: t.qualified(),
                change: e.change,
                rows: matches!(e.change, Change::Deleted | Change::Updated).then_some(e.rows),
                rows_written_after: e.refilled,
                target: StopBefore {
                    lsn: e.commit_lsn,
                    exclusive: true,
                    xid: e.xid,
                    timeline: route.followed,
                    previous_commit_lsn: e.previous_commit,
                    restore_args: format!(
                        "--target-lsn {} --target-exclusive --target-timeline {}",
                        e.commit_lsn, route.followed
                    ),
                },
                ambiguous: e.ambiguous,
            }
        })
        .collect();
    matches.sort_by_key(|m| std::cmp::Reverse(m.commit_lsn));
    let mut warnings: Vec<String> = note.into_iter().collect();
    warnings.extend(route.warnings);
    warnings.extend(lineage.warnings.iter().cloned());
    let mut timelines: Vec<TimelineId> = route
        .path
        .iter()
        .map(|s| s.tli)
        .filter(|t| *t >= base.timeline)
        .collect();
    timelines.dedup();
    Ok(SearchReport {
        tables: opts.tables.clone(),
        changes: opts.changes.clone(),
        since,
        until: opts.until,
        searched: Searched {
            from_backup: base.manifest.label.to_string(),
            from_lsn: base.start,
            to_lsn: scanned.last_lsn,
            timeline: route.followed,
            timelines,
            segments: scanned.segments,
            bytes: scanned.bytes,
            records: scanned.records,
            complete: route.complete,
        },
        matches,
        warnings,
    })
}

/// Named restore points in the archived WAL, from the oldest backup on (a restore
/// point before every backup cannot be restored to).
pub async fn restore_points(config: &Config, timeline: Option<TimelineId>) -> Result<RestorePointsReport> {
    let repo = Repo::open(config).await?;
    let manifests = repo.manifests().await?;
    let base = manifests
        .iter()
        .filter(|m| m.physical.is_some())
        .min_by_key(|m| m.start_time)
        .and_then(baseline_of)
        .ok_or_else(|| {
            usage!("no physical backup in the repository: restore points can only be restored to from one")
        })?;
    let tool = waldump_for(config, base.manifest)?;
    let route = route(&repo, &base, timeline, None).await?;
    let work = work_dir(None)?;
    let reader = stream::Reader {
        storage: &repo.storage,
        keys: &repo.keys,
        pg_waldump: tool,
        work: work.path(),
        rmgrs: stream::SEARCH_RMGRS,
    };
    let seg = base.segment_size;
    let mut points = Vec::new();
    let scanned = reader
        .scan(&route.plan, |lsn, record, file| {
            if let waldump::Record::RestorePoint { name, .. } = record {
                let time = stream::restore_point_time(file, lsn, seg, &name);
                points.push(RestorePoint {
                    timeline: timeline_at(&route.path, lsn),
                    name,
                    lsn,
                    time,
                });
            }
        })
        .await?;
    let mut timelines: Vec<TimelineId> = route
        .path
        .iter()
        .map(|s| s.tli)
        .filter(|t| *t >= base.timeline)
        .collect();
    timelines.dedup();
    Ok(RestorePointsReport {
        searched: Searched {
            from_backup: base.manifest.label.to_string(),
            from_lsn: base.start,
            to_lsn: scanned.last_lsn,
            timeline: route.followed,
            timelines,
            segments: scanned.segments,
            bytes: scanned.bytes,
            records: scanned.records,
            complete: route.complete,
        },
        restore_points: points,
        warnings: route.warnings,
    })
}
