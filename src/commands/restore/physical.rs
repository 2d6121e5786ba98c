//! `pgdr restore --kind physical --to DIR`: pick the backup that precedes the target,
//! check the WAL chain to it, lay the files down in parallel (each checked), write the
//! recovery settings, and with `--start` run the recovery and report where it ended.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use chrono::Utc;

use crate::cli::{RestoreArgs, TargetAction, TargetKeyword};
use crate::commands::Ctx;
use crate::exit::Exit;
use crate::physical::{self, Placement};
use crate::postgres::recovery::{self, RecoveryOptions, RecoveryTarget};
use crate::postgres::{Lsn, PgTarget, PgTools};
use crate::progress::{Progress, human_bytes, human_rate};
use crate::repo::Repo;
use crate::repo::archive::Until;
use crate::repo::manifest::{PhysicalInfo, PhysicalMethod};
use crate::restore::report::{PhysicalRestoreReport, RecoveryReport};
use crate::restore::target::{Target, TargetSpec};
use crate::server;
use crate::usage;

/// The pid of a live postmaster whose pid file is in `dir`, if any.
fn running_postmaster(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    crate::process::exists(pid).then_some(pid)
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(usage!("cannot read {}: {e}", path.display())),
    }
}

/// The restore_command for the restored server: this binary and this configuration
/// file, nothing else. Environment overrides are not carried over: a password in
/// `PGDR_POSTGRES_URL` or a webhook URL would land in postgresql.auto.conf and in the
/// argv of every `wal-fetch`, readable on disk and in `ps`.
fn restore_command(ctx: &Ctx) -> Result<String> {
    let config = ctx.config.file().ok_or_else(|| {
        usage!("a physical restore writes restore_command = 'pgdr --config FILE wal-fetch …' — run it with --config FILE (or PGDR_CONFIG)")
    })?;
    // The server's wal-fetch reads the file only: an override that points this restore
    // at another archive (PGDR_CLUSTER, PGDR_REPOSITORY_URL) would have the server
    // replay from one archive and fetch WAL from another.
    if let Some(file_only) = ctx.config.file_only()? {
        let differ = ctx.config.archive_differences(&file_only);
        if !differ.is_empty() {
            return Err(usage!(
                "PGDR_* environment overrides change {} from {}, but the restored server's `wal-fetch` reads only that file — put the values in a configuration file and restore with --config FILE",
                differ.join(", "),
                config.display()
            ));
        }
    }
    if ctx.config.repository.key_file.is_none() {
        return Err(usage!(
            "the restored server fetches WAL with `pgdr wal-fetch`, which needs [repository] key_file (PGDR_KEY cannot be passed on) — set key_file, readable by the postgres user"
        ));
    }
    let exe = std::env::current_exe().context("locating the pgdr binary")?;
    let sh = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let config = std::path::absolute(&config).unwrap_or(config);
    Ok(format!(
        "{} --config {} wal-fetch \"%f\" \"%p\"",
        sh(&exe.to_string_lossy()),
        sh(&config.to_string_lossy())
    ))
}

pub async fn run(ctx: &Ctx, args: RestoreArgs) -> Result<Exit> {
    let dir = args
        .to
        .clone()
        .ok_or_else(|| usage!("a physical restore needs --to DIR, the data directory to create"))?;
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let Target {
        recovery: target,
        time,
        lsn,
    } = Target::parse(&TargetSpec {
        time: args.target_time.as_deref(),
        lsn: args.target_lsn.as_deref(),
        xid: args.target_xid.as_deref(),
        name: args.target_name.as_deref(),
        immediate: args.target == Some(TargetKeyword::Immediate),
    })?;
    if args.start && args.port.is_none() {
        return Err(usage!(
            "--start needs --port P, so the restored server does not collide with a running one"
        ));
    }
    let mut tablespace_map = BTreeMap::new();
    for m in &args.tablespace_map {
        let (oid, path) = m
            .split_once('=')
            .ok_or_else(|| usage!("--tablespace-map {m:?}: expected OID=DIR"))?;
        tablespace_map.insert(oid.to_string(), PathBuf::from(path));
    }
    let restore_command = restore_command(ctx)?;

    // Everything that can be refused is refused before the directory is touched.
    let repo = Repo::open(&ctx.config).await?;
    let manifests = repo.manifests().await?;
    let manifest = crate::restore::choose::backup_for(
        &manifests,
        args.backup.as_str().ne("latest").then_some(args.backup.as_str()),
        time,
        lsn,
    )?;
    repo.check_manifest_identity(manifest)?;
    let info = manifest
        .physical
        .as_ref()
        .ok_or_else(|| anyhow!("{} has no physical section", manifest.label))?;
    if args.delta && info.method == PhysicalMethod::Basebackup {
        return Err(usage!(
            "--delta is not available for {}, which was taken with --method basebackup — restore into an empty directory",
            manifest.label
        ));
    }
    physical::validate_paths(info)?;
    if let Some(pid) = running_postmaster(&dir) {
        return Err(usage!(
            "{} is the data directory of a running server (postmaster pid {pid}) — stop it first (pg_ctl -D {} stop), or restore somewhere else",
            dir.display(),
            dir.display()
        ));
    }
    if !args.delta && !is_empty_dir(&dir)? {
        return Err(usage!(
            "{} is not empty — restore into a new directory, or pass --delta to rewrite only what differs",
            dir.display()
        ));
    }
    for ts in &info.tablespaces {
        let mapped = tablespace_map.contains_key(&ts.oid);
        let location = tablespace_map.get(&ts.oid).unwrap_or(&ts.location);
        // --delta skips the emptiness check only where the DBA named the place: an
        // unmapped tablespace goes back to its original location, which on the
        // primary's host is the live tablespace.
        if (!args.delta || !mapped) && !is_empty_dir(location)? {
            return Err(usage!(
                "tablespace {} would be restored into {}, which is not empty — remap it with --tablespace-map {}=DIR",
                ts.oid,
                location.display(),
                ts.oid
            ));
        }
    }
    let timeline = parse_timeline(args.target_timeline.as_deref(), info)?;
    // How much WAL must be there. For xid and restore-point targets only the backup's
    // own WAL can be checked; PostgreSQL reports a target it could not reach.
    let until = match (&target, time, lsn) {
        (_, Some(t), _) => Until::Time(t),
        (_, _, Some(l)) => Until::Lsn(l),
        (RecoveryTarget::Latest, _, _) => Until::Newest,
        _ => Until::Lsn(info.stop_lsn),
    };
    let (chain_end, choice) = physical::check_wal_chain(&repo, info, timeline, until).await?;
    if !ctx.json {
        println!(
            "timelines in the archive: {}; following {}",
            choice.seen.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
            choice.why
        );
        for fork in &choice.forks {
            println!("not following {fork}");
        }
    }
    // Written as a number, so PostgreSQL's own `latest` (the highest-numbered
    // timeline) cannot pick a fork. A standby keeps `latest` to follow future
    // promotions, unless a fork is in the archive.
    let recovery_timeline = if args.standby && choice.forks.is_empty() && timeline.is_none() {
        "latest".to_string()
    } else {
        choice.followed.to_string()
    };

    let started = Instant::now();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let placement = Placement {
        data_dir: dir.clone(),
        tablespaces: tablespace_map,
    };
    let jobs = args
        .jobs
        .map(|j| j as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let total: u64 = info.files.iter().map(|f| f.size).sum();
    let progress = Progress::start(Some(total));
    progress.set_message(format!("{} → {}", manifest.label, dir.display()));
    let stats = match info.method {
        PhysicalMethod::Local => {
            physical::restore_files(&repo, manifest, info, &placement, jobs, args.delta, progress.counter()).await
        }
        PhysicalMethod::Basebackup => {
            let tools = PgTools::locate(ctx.config.postgres.bin_dir.as_deref())?;
            physical::restore_tar(&repo, manifest, &dir, &tools, progress.counter()).await
        }
    };
    progress.finish();
    let stats = stats.with_context(|| format!("restoring {} into {}", manifest.label, dir.display()))?;

    // PostgreSQL recreates the tablespace links from tablespace_map; pgdr made them
    // already (possibly remapped), so only backup_label is written.
    std::fs::write(dir.join("backup_label"), &info.backup_label)?;
    let _ = std::fs::remove_file(dir.join("tablespace_map"));
    let options = RecoveryOptions {
        restore_command,
        target: target.clone(),
        action: args.target_action.as_str().to_string(),
        exclusive: args.target_exclusive,
        timeline: Some(recovery_timeline),
        standby: args.standby,
        primary_conninfo: args.primary_conninfo.clone(),
        archive: args.archive,
    };
    recovery::write(
        &dir,
        &options,
        &format!("restored from {} at {}", manifest.label, Utc::now().to_rfc3339()),
    )?;
    physical::set_ownership(&placement, crate::process::postgres_owner())?;
    let restore_secs = started.elapsed().as_secs_f64();
    if !ctx.json {
        if args.archive {
            println!(
                "archiving stays on: this copy will archive its new timeline into {} as the new primary",
                repo.storage.describe()
            );
        } else {
            println!(
                "archiving is off in the restored copy (archive_mode = off), so it cannot write into the repository; restore with --archive for a new primary"
            );
        }
    }

    let mut report = PhysicalRestoreReport {
        backup: manifest.label.clone(),
        to: dir.clone(),
        target: target.to_string(),
        files_written: stats.files_written,
        files_unchanged: stats.files_unchanged,
        files_removed: stats.files_removed,
        bytes_written: stats.bytes_written,
        wal_available_until: chain_end.name(info.segment_size),
        restore_seconds: restore_secs,
        timeline: choice,
        archiving: args.archive,
        recovery: None,
    };
    if !ctx.json {
        println!(
            "restored {} into {}: {} files ({}) in {:.1} s ({}){}; recovery to {} configured, WAL archived up to {}",
            manifest.label,
            dir.display(),
            stats.files_written,
            human_bytes(stats.bytes_written),
            restore_secs,
            human_rate(stats.bytes_written, started.elapsed()),
            if args.delta {
                format!(", {} unchanged, {} removed", stats.files_unchanged, stats.files_removed)
            } else {
                String::new()
            },
            target,
            chain_end.name(info.segment_size)
        );
    }
    if args.start {
        let reached = server::start_and_wait(&server::StartOptions {
            data_dir: dir.clone(),
            port: args.port.expect("checked"),
            listen: args.listen.clone().unwrap_or_else(|| "127.0.0.1".to_string()),
            socket_dir: args.socket_dir.clone(),
            scratch_hba: args.scratch_hba,
            standby: args.standby,
            shutdown_at_target: args.target_action == TargetAction::Shutdown,
            bin_dir: ctx.config.postgres.bin_dir.clone(),
            connect: PgTarget::from_config(ctx.config.postgres.url.as_deref())?,
            s3: matches!(
                ctx.config.repository.parsed_url(),
                Ok(crate::config::RepoUrl::S3 { .. })
            ),
        })
        .await?;
        // Recovery that ends before the WAL the archive holds lost data on the way
        // (an unreachable archive read as its end, say): say so, loudly.
        // A standby never ends recovery (it reports where it is, not where it stops);
        // an exclusive LSN target stops just before its record, somewhere in the
        // segment holding it.
        let must_reach = match (&target, lsn) {
            _ if args.standby => None,
            (RecoveryTarget::Latest, _) => Some(chain_end.start_lsn(info.segment_size)),
            (_, Some(l)) if args.target_exclusive => Some(Lsn(l.0 - l.0 % info.segment_size)),
            (_, Some(l)) => Some(l),
            _ => None,
        };
        if let (Some(want), Ok(got)) = (must_reach, reached.lsn.parse::<Lsn>())
            && got < want
        {
            return Err(anyhow!(
                "recovery stopped short: the server reached LSN {got} on timeline {}, but the archive holds WAL up to {} ({}) — transactions after {got} are missing from this copy; see {} and do not use it as a replacement",
                reached.timeline,
                want,
                chain_end.name(info.segment_size),
                dir.join("pgdr-recovery.log").display()
            ));
        }
        let recovery = RecoveryReport::from(reached);
        if !ctx.json {
            println!("{recovery}");
        }
        report.recovery = Some(recovery);
    } else if !ctx.json {
        println!("start it with: pg_ctl -D {} start", dir.display());
    }
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report).expect("report serialises"));
    }
    Ok(Exit::Success)
}

fn parse_timeline(raw: Option<&str>, info: &PhysicalInfo) -> Result<Option<u32>> {
    match raw {
        None | Some("latest") => Ok(None),
        Some("current") => Ok(Some(info.timeline)),
        Some(n) => n
            .parse()
            .map(Some)
            .map_err(|_| usage!("--target-timeline {n:?}: expected latest, current or a number")),
    }
}
