//! Physical restore, as a library: [`plan`] refuses everything that can be refused
//! before a byte is written (which backup precedes the target, whether the WAL chain
//! to it is there, whether the directory is free), then [`execute`] lays the files down
//! in parallel (each checked), writes the recovery settings and, when asked, starts the
//! server and watches its recovery to the end. `recover` and `drill` show the plan
//! before they execute it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use chrono::Utc;

use crate::config::Config;
use crate::physical::{self, Placement};
use crate::postgres::recovery::{self, RecoveryOptions, RecoveryTarget, TargetAction};
use crate::postgres::{Lsn, PgTarget, PgTools, Segment, TimelineId};
use crate::progress::{Progress, human_bytes, human_rate};
use crate::repo::archive::{TimelineChoice, Until};
use crate::repo::lock::UseLease;
use crate::repo::manifest::{PhysicalInfo, PhysicalMethod};
use crate::repo::{Manifest, Repo};
use crate::restore::report::{PhysicalRestoreReport, RecoveryReport};
use crate::restore::target::Target;
use crate::server;
use crate::usage;

/// Which timeline recovery follows (`--target-timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetTimeline {
    /// Production's timeline, never a fork (see `repo::archive::choose_timeline`).
    #[default]
    Latest,
    /// The backup's own timeline.
    Current,
    Id(TimelineId),
}

impl FromStr for TargetTimeline {
    type Err = anyhow::Error;

    fn from_str(raw: &str) -> Result<TargetTimeline> {
        match raw {
            "latest" => Ok(TargetTimeline::Latest),
            "current" => Ok(TargetTimeline::Current),
            n => n
                .parse()
                .map(TargetTimeline::Id)
                .map_err(|_| usage!("--target-timeline {n:?}: expected latest, current or a number")),
        }
    }
}

impl TargetTimeline {
    fn resolve(self, info: &PhysicalInfo) -> Option<TimelineId> {
        match self {
            TargetTimeline::Latest => None,
            TargetTimeline::Current => Some(info.timeline),
            TargetTimeline::Id(t) => Some(t),
        }
    }
}

/// Where and how a restored server listens when it is started (`--start`).
#[derive(Debug, Clone)]
pub struct Listen {
    pub port: u16,
    /// listen_addresses; empty for the Unix socket only.
    pub addresses: String,
    pub socket_dir: Option<PathBuf>,
    /// A scratch copy's own hba_file, trusting only its private socket.
    pub scratch_hba: bool,
}

/// A physical restore, validated.
#[derive(Debug, Clone)]
pub struct PhysicalRestoreOptions {
    /// `LABEL`, `latest` or `tag:TAG`: `latest` means the newest backup that precedes
    /// the target.
    pub backup: String,
    /// The data directory to create (absolute).
    pub to: PathBuf,
    pub target: Target,
    pub action: TargetAction,
    pub exclusive: bool,
    pub timeline: TargetTimeline,
    pub standby: bool,
    pub primary_conninfo: Option<String>,
    /// A standby's replication slot on its primary.
    pub primary_slot_name: Option<String>,
    /// Rewrite only what differs in a non-empty directory.
    pub delta: bool,
    /// Tablespace OID → where it goes instead of its original place.
    pub tablespace_map: BTreeMap<String, PathBuf>,
    /// Keep archiving on: the restored server is the new primary.
    pub archive: bool,
    /// With `archive`: its promotion declares its timeline production's. Off for a
    /// recovery runbook, which declares it at its switch.
    pub declare: bool,
    /// Parallel restore workers.
    pub jobs: usize,
    /// Start the server and wait for its recovery to end.
    pub start: Option<Listen>,
}

/// `--tablespace-map OID=DIR`, each.
pub fn parse_tablespace_map(raw: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    let mut map = BTreeMap::new();
    for m in raw {
        let (oid, path) = m
            .split_once('=')
            .ok_or_else(|| usage!("--tablespace-map {m:?}: expected OID=DIR"))?;
        map.insert(oid.to_string(), PathBuf::from(path));
    }
    Ok(map)
}

/// What [`execute`] will do, decided and checked: the backup, the WAL it needs and the
/// timeline it follows. Its `Display` is what a DBA reads before saying yes.
pub struct RestorePlan {
    repo: Repo,
    pub manifest: Manifest,
    /// The directory holds an interrupted restore: rewrite what differs.
    pub resume: bool,
    /// The last archived segment of the checked chain.
    pub chain_end: Segment,
    pub timeline: TimelineChoice,
    /// `recovery_target_timeline` as written: a number, or `latest` for a standby
    /// with no fork in the archive.
    pub recovery_timeline: String,
    /// Bytes of data files to lay down.
    pub bytes: u64,
    restore_command: String,
}

impl RestorePlan {
    fn info(&self) -> &PhysicalInfo {
        self.manifest.physical.as_ref().expect("checked by plan")
    }

    /// The first WAL segment recovery reads (the backup's start).
    pub fn wal_from(&self) -> String {
        let info = self.info();
        Segment::containing(info.timeline, info.start_lsn, info.segment_size).name(info.segment_size)
    }

    pub fn wal_until(&self) -> String {
        self.chain_end.name(self.info().segment_size)
    }

    /// One line for a plan a DBA confirms: the backup, what is laid down, the WAL.
    pub fn headline(&self) -> String {
        format!(
            "backup {} ({} to lay down), WAL {} … {} from the archive ({} segments)",
            self.manifest.label,
            crate::progress::human_bytes(self.bytes),
            self.wal_from(),
            self.wal_until(),
            self.wal_segments()
        )
    }

    /// WAL segments from the backup's start to the end of the checked chain, counted
    /// by position (timeline switches on the way do not add any).
    fn wal_segments(&self) -> u64 {
        let size = self.info().segment_size.max(1);
        let from = self.info().start_lsn.0 / size;
        let until = self.chain_end.start_lsn(size).0 / size;
        until.saturating_sub(from) + 1
    }
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timelines in the archive: {}; following {}",
            self.timeline
                .seen
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.timeline.why
        )?;
        for fork in &self.timeline.forks {
            write!(f, "\nnot following {fork}")?;
        }
        Ok(())
    }
}

/// The restore_command for the restored server: this binary and this configuration
/// file, nothing else. Environment overrides are not carried over: a password in
/// `PGDR_POSTGRES_URL` or a webhook URL would land in postgresql.auto.conf and in the
/// argv of every `wal-fetch`, readable on disk and in `ps`.
pub fn restore_command(config: &Config) -> Result<String> {
    let file = config.file().ok_or_else(|| {
        usage!("a physical restore writes restore_command = 'pgdr --config FILE wal-fetch …' — run it with --config FILE (or PGDR_CONFIG)")
    })?;
    // The server's wal-fetch reads the file only: an override that points this restore
    // at another archive (PGDR_CLUSTER, PGDR_REPOSITORY_URL) would have the server
    // replay from one archive and fetch WAL from another.
    if let Some(file_only) = config.file_alone()? {
        let differ = config.archive_differences(&file_only);
        if !differ.is_empty() {
            return Err(usage!(
                "PGDR_* environment overrides change {} from {}, but the restored server's `wal-fetch` reads only that file — put the values in a configuration file and restore with --config FILE",
                differ.join(", "),
                file.display()
            ));
        }
    }
    if config.repository.key_file.is_none() {
        return Err(usage!(
            "the restored server fetches WAL with `pgdr wal-fetch`, which needs [repository] key_file (PGDR_KEY cannot be passed on) — set key_file, readable by the postgres user"
        ));
    }
    let exe = std::env::current_exe().context("locating the pgdr binary")?;
    let sh = crate::process::sh_quote;
    let file = std::path::absolute(&file).unwrap_or(file);
    // Restored from a copy, the server fetches from that copy: the primary region
    // may be gone.
    let repository = config
        .selected_repository()
        .map(|name| format!(" --repository {}", sh(name)))
        .unwrap_or_default();
    Ok(format!(
        "{} --config {}{repository} wal-fetch \"%f\" \"%p\"",
        sh(&exe.to_string_lossy()),
        sh(&file.to_string_lossy())
    ))
}

/// The archive_command of a new primary restored from a copy: `wal-push` into the
/// repository this restore reads (same rules as [`restore_command`]).
pub fn archive_command(config: &Config) -> Result<String> {
    let fetch = restore_command(config)?;
    let base = fetch
        .strip_suffix(" wal-fetch \"%f\" \"%p\"")
        .ok_or_else(|| anyhow!("unexpected restore_command {fetch:?}"))?;
    Ok(format!("{base} wal-push \"%p\""))
}

/// The pid of a live postmaster whose pid file is in `dir`, if any.
fn running_postmaster(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    crate::process::exists(pid).then_some(pid)
}

/// `dir` is a PostgreSQL data directory of the cluster `system_identifier`:
/// PG_VERSION, and pg_control naming that system. Otherwise why not, in words that
/// name the directory and what is in it.
fn recognise_data_dir(dir: &Path, system_identifier: &str) -> std::result::Result<(), String> {
    let some_entries = || {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let more = names.len() > 3;
        names.truncate(3);
        format!("{}{}", names.join(", "), if more { ", …" } else { "" })
    };
    if !dir.join("PG_VERSION").is_file() {
        return Err(format!(
            "{} is not a PostgreSQL data directory (no PG_VERSION; it holds {})",
            dir.display(),
            some_entries()
        ));
    }
    match crate::postgres::datadir::control_system_identifier(dir) {
        Ok(found) if found == system_identifier => Ok(()),
        Ok(found) => Err(format!(
            "{} is the data directory of another cluster (system identifier {found}; this repository's is {system_identifier})",
            dir.display()
        )),
        Err(e) => Err(format!(
            "{} has no readable global/pg_control ({e}), so it cannot be told to be this cluster's",
            dir.display()
        )),
    }
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(usage!("cannot read {}: {e}", path.display())),
    }
}

/// Decide and check everything; write nothing.
pub async fn plan(config: &Config, opts: &PhysicalRestoreOptions) -> Result<RestorePlan> {
    let restore_command = restore_command(config)?;
    let dir = opts.to.as_path();
    let repo = Repo::open(config).await?;
    let manifests = repo.manifests().await?;
    let manifest = match crate::restore::choose::backup_for(
        &manifests,
        opts.backup.as_str().ne("latest").then_some(opts.backup.as_str()),
        opts.target.time,
        opts.target.lsn,
        opts.target.xid,
    ) {
        Ok(m) => m.clone(),
        Err(e) => return Err(repo.explain_missing(opts.backup.as_str(), e).await),
    };
    repo.check_manifest_identity(&manifest)?;
    let info = manifest
        .physical
        .as_ref()
        .ok_or_else(|| anyhow!("{} has no physical section", manifest.label))?;
    if opts.delta && info.method == PhysicalMethod::Basebackup {
        return Err(usage!(
            "--delta is not available for {}, which was taken with --method basebackup — restore into an empty directory",
            manifest.label
        ));
    }
    physical::validate_paths(info)?;
    if let Some(pid) = running_postmaster(dir) {
        return Err(usage!(
            "{} is the data directory of a running server (postmaster pid {pid}) — stop it first (pg_ctl -D {} stop), or restore somewhere else",
            dir.display(),
            crate::process::sh_quote(&dir.to_string_lossy())
        ));
    }
    // A directory an interrupted restore left (its marker says so) is rewritten
    // where it differs, as with --delta: running the same command again finishes it.
    let resume = !opts.delta && dir.join(physical::RESTORE_MARKER).is_file();
    if resume && info.method == PhysicalMethod::Basebackup {
        return Err(usage!(
            "{} holds an interrupted restore of another backup's files, and {} was taken with --method basebackup, which cannot be resumed — remove the directory's contents and run the restore again",
            dir.display(),
            manifest.label
        ));
    }
    if !is_empty_dir(dir)? && !resume {
        // --delta deletes what the backup does not have: only ever in a data
        // directory of this very cluster.
        let ours = recognise_data_dir(dir, &repo.info.system_identifier);
        match (opts.delta, ours) {
            (true, Ok(())) => {}
            (true, Err(why)) => {
                return Err(usage!(
                    "--delta rewrites a data directory of this cluster, removing what the backup does not have, and {why} — nothing was changed: restore into a new or empty directory"
                ));
            }
            (false, Ok(())) => {
                return Err(usage!(
                    "{} is not empty (a data directory of this cluster) — restore into a new directory, or pass --delta to rewrite only what differs",
                    dir.display()
                ));
            }
            (false, Err(why)) => {
                return Err(usage!("{why} — restore into a new or empty directory"));
            }
        }
    }
    for ts in &info.tablespaces {
        let mapped = opts.tablespace_map.contains_key(&ts.oid);
        let location = opts.tablespace_map.get(&ts.oid).unwrap_or(&ts.location);
        // --delta skips the emptiness check only where the DBA named the place: an
        // unmapped tablespace goes back to its original location, which on the
        // primary's host is the live tablespace.
        if (!(opts.delta || resume) || !mapped) && !is_empty_dir(location)? {
            return Err(usage!(
                "tablespace {} would be restored into {}, which is not empty — remap it with --tablespace-map {}=DIR",
                ts.oid,
                location.display(),
                ts.oid
            ));
        }
    }
    let timeline = opts.timeline.resolve(info);
    // How much WAL must be there. For xid and restore-point targets only the backup's
    // own WAL can be checked; PostgreSQL reports a target it could not reach.
    let until = match (&opts.target.recovery, opts.target.time, opts.target.lsn) {
        (_, Some(t), _) => Until::Time(t),
        (_, _, Some(l)) => Until::Lsn(l),
        (RecoveryTarget::Latest, _, _) => Until::Newest,
        _ => Until::Lsn(info.stop_lsn),
    };
    let (chain_end, choice) = physical::check_wal_chain(&repo, info, timeline, until).await?;
    // Written as a number, so PostgreSQL's own `latest` (the highest-numbered
    // timeline) cannot pick a fork. A standby keeps `latest` to follow future
    // promotions, unless a fork is in the archive.
    let recovery_timeline = if opts.standby && choice.forks.is_empty() && timeline.is_none() {
        "latest".to_string()
    } else {
        choice.followed.to_string()
    };
    let bytes = info.files.iter().map(|f| f.size).sum();
    Ok(RestorePlan {
        repo,
        manifest,
        resume,
        chain_end,
        timeline: choice,
        recovery_timeline,
        bytes,
        restore_command,
    })
}

/// Carry out a plan: lay the files down, write the recovery settings, and with
/// `opts.start` run the recovery. `say` receives the lines a person watching wants to
/// read on the way (the verb prints them unless `--json`).
pub async fn execute(
    config: &Config,
    opts: &PhysicalRestoreOptions,
    plan: RestorePlan,
    say: &mut dyn FnMut(String),
) -> Result<PhysicalRestoreReport> {
    // expire leaves the backup, and the WAL from its start, while this runs.
    let lease = UseLease::acquire(&plan.repo, std::slice::from_ref(&plan.manifest.label), "restore").await?;
    let result = execute_leased(config, opts, plan, say).await;
    lease.release().await;
    result
}

/// The phases of a restore, under the lease: mark the directory, lay the files down,
/// write the recovery settings, hand the files to `postgres`, unmark, report; then,
/// with `--start`, start the server and check where its recovery ended.
async fn execute_leased(
    config: &Config,
    opts: &PhysicalRestoreOptions,
    plan: RestorePlan,
    say: &mut dyn FnMut(String),
) -> Result<PhysicalRestoreReport> {
    let dir = &opts.to;
    let started = Instant::now();
    let delta = opts.delta || plan.resume;
    let marker = mark_in_progress(dir, &plan, say)?;
    let placement = Placement {
        data_dir: dir.clone(),
        tablespaces: opts.tablespace_map.clone(),
    };
    let stats = lay_files(config, opts, &plan, &placement, delta, marker.is_some()).await?;
    write_settings(config, opts, &plan)?;
    physical::set_ownership(&placement, crate::process::postgres_owner())?;
    // Complete: no longer an interrupted restore.
    if let Some(marker) = &marker {
        std::fs::remove_file(marker).with_context(|| format!("removing {}", marker.display()))?;
    }
    let restore_secs = started.elapsed().as_secs_f64();
    let mut report = restored(opts, &plan, &stats, delta, started, restore_secs, say);
    let Some(listen) = &opts.start else {
        say_how_to_start(opts, say);
        return Ok(report);
    };
    let recovery = start(config, opts, &plan, listen, &mut report.warnings, say).await?;
    report.recovery = Some(recovery);
    Ok(report)
}

/// Creates the directory and, for pgdr's own copy, writes the restore marker; returns
/// the marker's path when there is one.
fn mark_in_progress(dir: &Path, plan: &RestorePlan, say: &mut dyn FnMut(String)) -> Result<Option<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if plan.resume {
        say(format!(
            "{} holds an interrupted restore: rewriting only what differs",
            dir.display()
        ));
    }
    // pgdr's own copy can be resumed; pg_basebackup's tar is checked whole by
    // pg_verifybackup, which would take the marker for a stray file.
    let marker = dir.join(physical::RESTORE_MARKER);
    let marked = plan.info().method == PhysicalMethod::Local;
    if marked {
        std::fs::write(&marker, format!("{}\n", plan.manifest.label))
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    Ok(marked.then_some(marker))
}

/// Lays the backup's files down (pgdr's bundles or pg_basebackup's tar), with a
/// progress bar. A failure says whether the same command finishes the job (`marked`).
async fn lay_files(
    config: &Config,
    opts: &PhysicalRestoreOptions,
    plan: &RestorePlan,
    placement: &Placement,
    delta: bool,
    marked: bool,
) -> Result<physical::RestoreStats> {
    let dir = &opts.to;
    let manifest = &plan.manifest;
    let info = plan.info();
    let repo = &plan.repo;
    let progress = Progress::start(Some(plan.bytes));
    progress.set_message(format!("{} → {}", manifest.label, dir.display()));
    let stats = match info.method {
        PhysicalMethod::Local => {
            physical::restore_files(repo, manifest, info, placement, opts.jobs, delta, progress.counter()).await
        }
        PhysicalMethod::Basebackup => {
            let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
            physical::restore_tar(repo, manifest, dir, &tools, progress.counter()).await
        }
    };
    progress.finish();
    stats.with_context(|| {
        if marked {
            format!(
                "restoring {} into {} (it stopped part-way: the same command again finishes it, or remove what it wrote with rm -rf {})",
                manifest.label,
                dir.display(),
                crate::process::sh_quote(&dir.to_string_lossy())
            )
        } else {
            format!(
                "restoring {} into {} (what it wrote is not usable: remove it with rm -rf {} before restoring again)",
                manifest.label,
                dir.display(),
                crate::process::sh_quote(&dir.to_string_lossy())
            )
        }
    })
}

/// Writes backup_label and the recovery settings into the restored directory.
fn write_settings(config: &Config, opts: &PhysicalRestoreOptions, plan: &RestorePlan) -> Result<()> {
    let dir = &opts.to;
    // PostgreSQL recreates the tablespace links from tablespace_map; pgdr made them
    // already (possibly remapped), so only backup_label is written.
    std::fs::write(dir.join("backup_label"), &plan.info().backup_label)?;
    let _ = std::fs::remove_file(dir.join("tablespace_map"));
    let options = RecoveryOptions {
        restore_command: plan.restore_command.clone(),
        target: opts.target.recovery.clone(),
        action: opts.action,
        exclusive: opts.exclusive,
        timeline: Some(plan.recovery_timeline.clone()),
        standby: opts.standby,
        primary_conninfo: opts.primary_conninfo.clone(),
        primary_slot_name: opts.primary_slot_name.clone(),
        archive: opts.archive,
        declare: opts.declare,
        // Restored from a copy, a new primary archives into that copy: the primary
        // region may be gone.
        archive_command: match config.selected_repository() {
            Some(_) if opts.archive => Some(archive_command(config)?),
            _ => None,
        },
    };
    recovery::write(
        dir,
        &options,
        &format!("restored from {} at {}", plan.manifest.label, Utc::now().to_rfc3339()),
    )?;
    Ok(())
}

/// Says what was restored and whether the copy archives, and returns the report so
/// far (no recovery yet).
fn restored(
    opts: &PhysicalRestoreOptions,
    plan: &RestorePlan,
    stats: &physical::RestoreStats,
    delta: bool,
    started: Instant,
    restore_secs: f64,
    say: &mut dyn FnMut(String),
) -> PhysicalRestoreReport {
    let dir = &opts.to;
    let manifest = &plan.manifest;
    say(if opts.archive {
        format!(
            "archiving stays on: this copy will archive its new timeline into {} as the new primary, and it keeps production's subscriptions and scheduled jobs",
            plan.repo.storage.describe()
        )
    } else {
        "archiving is off in the restored copy (archive_mode = off), so it cannot write into the repository, and no subscription or pg_cron job runs in it (max_logical_replication_workers = 0, cron.launch_active_jobs = off); restore with --archive for a new primary".to_string()
    });

    let wal_until = plan.wal_until();
    let target = &opts.target.recovery;
    say(format!(
        "restored {} into {}: {} files ({}) in {:.1} s ({}){}; recovery to {} configured, WAL archived up to {}",
        manifest.label,
        dir.display(),
        stats.files_written,
        human_bytes(stats.bytes_written),
        restore_secs,
        human_rate(stats.bytes_written, started.elapsed()),
        if delta {
            format!(", {} unchanged, {} removed", stats.files_unchanged, stats.files_removed)
        } else {
            String::new()
        },
        target,
        wal_until
    ));
    PhysicalRestoreReport {
        backup: manifest.label.clone(),
        to: dir.clone(),
        target: target.to_string(),
        files_written: stats.files_written,
        files_unchanged: stats.files_unchanged,
        files_removed: stats.files_removed,
        bytes_written: stats.bytes_written,
        wal_available_until: wal_until,
        restore_seconds: restore_secs,
        timeline: plan.timeline.clone(),
        archiving: opts.archive,
        recovery: None,
        warnings: Vec::new(),
    }
}

/// Without `--start`: how to start the copy without colliding with production.
fn say_how_to_start(opts: &PhysicalRestoreOptions, say: &mut dyn FnMut(String)) {
    // Its postgresql.conf still carries production's port: started as it is on
    // production's host, it would collide with production (or take its place).
    let port = server::free_port().unwrap_or(5433);
    say(format!(
        "start it on a port of its own (its postgresql.conf still says production's): pg_ctl -D {} -o '-p {port}' start{}",
        crate::process::sh_quote(&opts.to.to_string_lossy()),
        if opts.archive {
            ""
        } else {
            " — a copy: archiving is off"
        }
    ));
}

/// With `--start`: warns of production's password-less TCP lines, starts the server,
/// waits for its recovery, and refuses a recovery that ended before the archive's WAL.
async fn start(
    config: &Config,
    opts: &PhysicalRestoreOptions,
    plan: &RestorePlan,
    listen: &Listen,
    warnings: &mut Vec<String>,
    say: &mut dyn FnMut(String),
) -> Result<RecoveryReport> {
    let dir = &opts.to;
    if let Some(warning) = open_hba_warning(dir, listen) {
        say(format!("warning: {warning}"));
        warnings.push(warning);
    }
    let reached = server::start_and_wait(&server::StartOptions {
        data_dir: dir.clone(),
        port: listen.port,
        listen: listen.addresses.clone(),
        socket_dir: listen.socket_dir.clone(),
        scratch_hba: listen.scratch_hba,
        standby: opts.standby,
        shutdown_at_target: opts.action == TargetAction::Shutdown,
        bin_dir: config.postgres.bin_dir.clone(),
        connect: PgTarget::from_config(config.postgres.url.as_deref())?,
        s3: matches!(config.repository.parsed_url(), Ok(crate::config::RepoUrl::S3 { .. })),
    })
    .await
    .with_context(|| {
        format!(
            "{} holds the restored files and the server's log (pgdr-recovery.log) — read the log; to start over, stop the server if it still runs (pg_ctl -D {} stop) and remove the directory (rm -rf {})",
            dir.display(),
            crate::process::sh_quote(&dir.to_string_lossy()),
            crate::process::sh_quote(&dir.to_string_lossy())
        )
    })?;
    if let (Some(want), Ok(got)) = (must_reach(opts, plan), reached.lsn.parse::<Lsn>())
        && got < want
    {
        return Err(anyhow!(
            "recovery stopped short: the server reached LSN {got} on timeline {}, but the archive holds WAL up to {} ({}) — transactions after {got} are missing from this copy; see {} and do not use it as a replacement",
            reached.timeline,
            want,
            plan.wal_until(),
            dir.join("pgdr-recovery.log").display()
        ));
    }
    let recovery = RecoveryReport::from(reached);
    say(recovery.to_string());
    Ok(recovery)
}

/// A copy that keeps production's pg_hba.conf and listens on TCP lets in, without a
/// password, whoever production trusted: the warning, when that is so.
fn open_hba_warning(dir: &Path, listen: &Listen) -> Option<String> {
    if listen.scratch_hba || listen.addresses.trim().is_empty() {
        return None;
    }
    let trusted = server::trusted_tcp_lines(dir);
    if trusted.is_empty() {
        return None;
    }
    Some(format!(
        "this copy keeps production's pg_hba.conf, which lets TCP clients in without a password ({}); it listens on {}:{} — anyone who can reach that logs in to a copy of production: start it with --listen '' --socket-dir DIR, or edit {}",
        trusted.join("; "),
        listen.addresses,
        listen.port,
        dir.join("pg_hba.conf").display()
    ))
}

/// The LSN recovery must reach for the copy to hold all the WAL the archive has.
fn must_reach(opts: &PhysicalRestoreOptions, plan: &RestorePlan) -> Option<Lsn> {
    // Recovery that ends before the WAL the archive holds lost data on the way
    // (an unreachable archive read as its end, say): say so, loudly.
    // A standby never ends recovery (it reports where it is, not where it stops);
    // an exclusive LSN target stops just before its record, somewhere in the
    // segment holding it.
    let segment_size = plan.info().segment_size;
    match (&opts.target.recovery, opts.target.lsn) {
        _ if opts.standby => None,
        (RecoveryTarget::Latest, _) => Some(plan.chain_end.start_lsn(segment_size)),
        (_, Some(l)) if opts.exclusive => Some(Lsn(l.0 - l.0 % segment_size)),
        (_, Some(l)) => Some(l),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_timeline_parses_words_and_numbers() {
        assert_eq!("latest".parse::<TargetTimeline>().unwrap(), TargetTimeline::Latest);
        assert_eq!("current".parse::<TargetTimeline>().unwrap(), TargetTimeline::Current);
        assert_eq!("3".parse::<TargetTimeline>().unwrap(), TargetTimeline::Id(3));
        let e = "three".parse::<TargetTimeline>().unwrap_err();
        assert!(crate::exit::classify(&e) == crate::exit::Exit::Usage);
    }

    #[test]
    fn tablespace_map_needs_oid_equals_dir() {
        let m = parse_tablespace_map(&["16384=/srv/ts".to_string()]).unwrap();
        assert_eq!(m["16384"], PathBuf::from("/srv/ts"));
        let e = parse_tablespace_map(&["16384:/srv/ts".to_string()]).unwrap_err();
        assert!(crate::exit::classify(&e) == crate::exit::Exit::Usage);
    }
}
