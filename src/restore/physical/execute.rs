//! A physical restore's execution, once `plan` has refused everything it could: lay
//! the files down, write the recovery settings, and (with `--start`) start the server
//! and watch its recovery to the end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use chrono::Utc;

use crate::config::Config;
use crate::physical::{self, OnDisk, Placement};
use crate::postgres::recovery::{self, RecoveryOptions, RecoveryTarget, TargetAction};
use crate::postgres::{Lsn, PgTarget, PgTools};
use crate::progress::{Progress, human_bytes, human_rate};
use crate::repo::lock::UseLease;
use crate::repo::manifest::PhysicalMethod;
use crate::restore::report::{PhysicalRestoreReport, RecoveryReport};
use crate::server;

use super::*;

/// Carry out a plan: lay the files down, write the recovery settings, and with
/// `opts.start` run the recovery. `say` receives the lines a person watching wants to
/// read on the way (the verb prints them unless `--json`).
pub async fn execute(
    config: &Config,
    opts: &PhysicalRestoreOptions,
    plan: RestorePlan,
    say: &mut dyn FnMut(String),
) -> Result<PhysicalRestoreReport> {
    // expire leaves the backup (and the older ones an incremental takes blocks from),
    // and the WAL from its start, while this runs.
    let mut leased = vec![plan.manifest.label.clone()];
    leased.extend(plan.chain.iter().map(|m| m.label.clone()));
    let lease = UseLease::acquire(&plan.repo, &leased, "restore").await?;
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
    let unflushed = plan.unfinished.as_ref().is_some_and(|u| u.unflushed);
    let on_disk = match (unflushed, opts.delta || plan.resume) {
        (true, _) => OnDisk::Rewrite,
        (false, true) => OnDisk::Delta,
        (false, false) => OnDisk::Empty,
    };
    let delta = on_disk != OnDisk::Empty;
    // Every tablespace's place: where --tablespace-map puts it, or where it was.
    let placement = Placement {
        data_dir: dir.clone(),
        tablespaces: plan
            .info()
            .tablespaces
            .iter()
            .map(|ts| {
                let location = opts.tablespace_map.get(&ts.oid).unwrap_or(&ts.location);
                (ts.oid.clone(), location.clone())
            })
            .collect(),
    };
    let markers = mark_in_progress(&placement, &plan, say)?;
    let stats = lay_files(config, opts, &plan, &placement, on_disk, !markers.is_empty()).await?;
    write_settings(config, opts, &plan)?;
    physical::set_ownership(&placement, crate::process::postgres_owner())?;
    // Complete: no longer an interrupted restore. The data directory's marker goes
    // first: a tablespace's left behind by a crash here is a stray dot file (no backup
    // lists it), not a restore that looks unfinished.
    if let Some((first, rest)) = markers.split_first() {
        std::fs::remove_file(first).with_context(|| format!("removing {}", first.display()))?;
        for marker in rest {
            if let Err(e) = std::fs::remove_file(marker) {
                say(format!("warning: cannot remove {}: {e}", marker.display()));
            }
        }
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

/// Creates the directory and, for pgdr's own copy, writes the restore marker into it
/// and into each tablespace's place; returns the markers' paths, the data directory's
/// first (none for pg_basebackup's tar).
fn mark_in_progress(placement: &Placement, plan: &RestorePlan, say: &mut dyn FnMut(String)) -> Result<Vec<PathBuf>> {
    let dir = &placement.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if plan.resume {
        say(format!(
            "{} holds an interrupted restore: rewriting only what differs",
            dir.display()
        ));
    }
    // pgdr's own copy can be resumed; pg_basebackup's tar is checked whole by
    // pg_verifybackup, which would take the marker for a stray file.
    if plan.info().method != PhysicalMethod::Local {
        return Ok(Vec::new());
    }
    // A resumed restore keeps its id (its tablespace places' markers carry it), and
    // that a flush failed, until it is done.
    let unfinished = plan.unfinished.clone().unwrap_or_default();
    let id = unfinished.id.unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
    let marker = dir.join(physical::RESTORE_MARKER);
    physical::write_marker(
        &marker,
        &physical::restore_marker_text(plan.manifest.label.as_str(), &id, unfinished.unflushed),
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    let mut markers = vec![marker];
    // A tablespace's place is written too, perhaps where it was on the old host: its
    // marker carries the id, so that the same command can finish there.
    let places: std::collections::BTreeSet<&PathBuf> = placement.tablespaces.values().collect();
    for location in places {
        std::fs::create_dir_all(location).with_context(|| format!("creating {}", location.display()))?;
        let marker = physical::tablespace_marker(location);
        let text = format!("{}\n{}\nid {id}\n", plan.manifest.label, dir.display());
        physical::write_marker(&marker, &text).with_context(|| format!("writing {}", marker.display()))?;
        markers.push(marker);
    }
    Ok(markers)
}

/// Lays the backup's files down (pgdr's bundles or pg_basebackup's tar), with a
/// progress bar. A failure says whether the same command finishes the job (`marked`).
async fn lay_files(
    config: &Config,
    opts: &PhysicalRestoreOptions,
    plan: &RestorePlan,
    placement: &Placement,
    on_disk: OnDisk,
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
            physical::restore_files(
                repo,
                manifest,
                &plan.chain,
                placement,
                opts.jobs,
                on_disk,
                progress.counter(),
            )
            .await
        }
        PhysicalMethod::Basebackup => {
            let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
            physical::restore_tar(repo, manifest, dir, &tools, progress.counter()).await
        }
    };
    progress.finish();
    // What it wrote: the directory and every tablespace's place.
    let places: std::collections::BTreeSet<&PathBuf> =
        std::iter::once(dir).chain(placement.tablespaces.values()).collect();
    let places: Vec<String> = places
        .into_iter()
        .map(|p| crate::process::sh_quote(&p.to_string_lossy()))
        .collect();
    stats.with_context(|| {
        if marked {
            format!(
                "restoring {} into {} (it stopped part-way: the same command again finishes it, or remove what it wrote with rm -rf {})",
                manifest.label,
                dir.display(),
                places.join(" ")
            )
        } else {
            format!(
                "restoring {} into {} (what it wrote is not usable: remove it with rm -rf {} before restoring again)",
                manifest.label,
                dir.display(),
                places.join(" ")
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
