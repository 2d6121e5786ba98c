//! `pgdr restore --kind physical --to DIR`: pick the backup that precedes the target,
//! check the WAL chain to it, lay the files down in parallel (each checked), write the
//! recovery settings, and with `--start` run the recovery and report where it ended.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::json;

use super::Ctx;
use crate::cli::{RestoreArgs, TargetAction, TargetKeyword};
use crate::exit::Exit;
use crate::physical::{self, Placement};
use crate::postgres::recovery::{self, RecoveryOptions, RecoveryTarget};
use crate::postgres::{Lsn, PgTarget, PgTools};
use crate::progress::{Progress, human_bytes, human_rate};
use crate::repo::archive::Until;
use crate::repo::manifest::{PhysicalInfo, PhysicalMethod};
use crate::repo::{BackupKind, Manifest, Repo, catalog};
use crate::usage;

/// Parse a recovery target time: RFC 3339, or PostgreSQL's `YYYY-MM-DD HH:MM:SS[.f]+TZ`.
/// A time zone is required: a DBA at 3 a.m. must not guess which one was meant.
pub fn parse_target_time(raw: &str) -> Result<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = DateTime::<FixedOffset>::parse_from_str(raw, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    if let Some(base) = raw.strip_suffix(" UTC").or_else(|| raw.strip_suffix("Z"))
        && let Ok(t) = chrono::NaiveDateTime::parse_from_str(base.trim(), "%Y-%m-%d %H:%M:%S%.f")
    {
        return Ok(t.and_utc());
    }
    Err(usage!(
        "--target-time {raw:?} is not a time with a time zone, e.g. 2026-11-26T02:00:00Z or '2026-11-26 02:00:00+00'"
    ))
}

fn target_of(args: &RestoreArgs) -> Result<(RecoveryTarget, Option<DateTime<Utc>>, Option<Lsn>)> {
    if let Some(t) = &args.target_time {
        let time = parse_target_time(t)?;
        let pg = time.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
        return Ok((RecoveryTarget::Time(pg), Some(time), None));
    }
    if let Some(l) = &args.target_lsn {
        let lsn: Lsn = l.parse().map_err(|e: String| usage!("--target-lsn {e}"))?;
        return Ok((RecoveryTarget::Lsn(lsn.to_string()), None, Some(lsn)));
    }
    if let Some(x) = &args.target_xid {
        if x.parse::<u64>().is_err() {
            return Err(usage!("--target-xid {x:?} is not a transaction id"));
        }
        return Ok((RecoveryTarget::Xid(x.clone()), None, None));
    }
    if let Some(n) = &args.target_name {
        return Ok((RecoveryTarget::Name(n.clone()), None, None));
    }
    Ok(match args.target {
        Some(TargetKeyword::Immediate) => (RecoveryTarget::Immediate, None, None),
        _ => (RecoveryTarget::Latest, None, None),
    })
}

/// Without `--backup`: the newest backup that finished before the target. Never fall
/// back silently to something else (pgbackrest#1582).
fn choose<'a>(
    manifests: &'a [Manifest],
    selector: Option<&str>,
    time: Option<DateTime<Utc>>,
    lsn: Option<Lsn>,
) -> Result<&'a Manifest> {
    if let Some(selector) = selector {
        let m = catalog::resolve(manifests, selector, Some(BackupKind::Physical))?;
        if let Some(time) = time
            && m.stop_time > time
        {
            return Err(usage!(
                "backup {} finished at {}, after the target time {} — it cannot be rewound; choose an older backup or omit --backup",
                m.label,
                m.stop_time.to_rfc3339(),
                time.to_rfc3339()
            ));
        }
        return Ok(m);
    }
    let physical: Vec<&Manifest> = manifests.iter().filter(|m| m.kind == BackupKind::Physical).collect();
    if physical.is_empty() {
        return Err(usage!(
            "there is no physical backup in the repository — run `pgdr backup --kind physical` first"
        ));
    }
    let found = physical.iter().find(|m| {
        let info = m.physical.as_ref();
        time.is_none_or(|t| m.stop_time <= t) && lsn.is_none_or(|l| info.is_some_and(|i| i.stop_lsn <= l))
    });
    found.copied().ok_or_else(|| {
        let oldest = physical.last().expect("not empty");
        usage!(
            "no physical backup finished before the target ({}) — the oldest, {}, finished at {}",
            time.map(|t| t.to_rfc3339())
                .or(lsn.map(|l| format!("LSN {l}")))
                .unwrap_or_default(),
            oldest.label,
            oldest.stop_time.to_rfc3339()
        )
    })
}

/// The pid of a live postmaster whose pid file is in `dir`, if any.
fn running_postmaster(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks for existence; EPERM means it exists.
    let alive = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    alive.then_some(pid)
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(usage!("cannot read {}: {e}", path.display())),
    }
}

/// The `postgres` OS user, when pgdr runs as root and must hand the files over.
pub fn postgres_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions; getpwnam's result is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let name = std::ffi::CString::new("postgres").expect("no NUL");
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
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
    let (target, time, lsn) = target_of(&args)?;
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
    let manifest = choose(
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
    physical::set_ownership(&placement, postgres_owner())?;
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

    let mut report = json!({
        "backup": manifest.label,
        "to": dir,
        "target": target.to_string(),
        "files_written": stats.files_written,
        "files_unchanged": stats.files_unchanged,
        "files_removed": stats.files_removed,
        "bytes_written": stats.bytes_written,
        "wal_available_until": chain_end.name(info.segment_size),
        "restore_seconds": restore_secs,
        "timeline": choice,
        "archiving": args.archive,
    });
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
        let reached = start_and_wait(ctx, &dir, &args).await?;
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
        if !ctx.json {
            println!(
                "recovery finished: {} at LSN {} on timeline {}{}",
                reached.state,
                reached.lsn,
                reached.timeline,
                reached
                    .last_replay
                    .as_ref()
                    .map(|t| format!(", last replayed transaction at {t}"))
                    .unwrap_or_default()
            );
        }
        report["recovery"] = json!({
            "state": reached.state,
            "lsn": reached.lsn,
            "timeline": reached.timeline,
            "last_replayed": reached.last_replay,
            "seconds": reached.seconds,
        });
    } else if !ctx.json {
        println!("start it with: pg_ctl -D {} start", dir.display());
    }
    if ctx.json {
        ctx.print_json(&report);
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

struct Reached {
    state: String,
    lsn: String,
    timeline: u32,
    last_replay: Option<String>,
    seconds: f64,
}

/// Start the restored server as `postgres` and wait until recovery reaches its end:
/// promoted, paused at the target, or shut down. A server that dies on the way (the
/// target was not reached, WAL is missing) is reported with its own words.
async fn start_and_wait(ctx: &Ctx, dir: &Path, args: &RestoreArgs) -> Result<Reached> {
    let port = args.port.expect("checked");
    let tools = PgTools::locate(ctx.config.postgres.bin_dir.as_deref())?;
    let log = dir.join("pgdr-recovery.log");
    // Never the source's listen_addresses ('*' on many primaries): a restored copy
    // holds production data and must not be reachable from elsewhere unless asked.
    let listen = args.listen.as_deref().unwrap_or("127.0.0.1");
    if listen.is_empty() && args.socket_dir.is_none() {
        return Err(usage!("--listen '' (Unix socket only) needs --socket-dir DIR"));
    }
    if listen.contains(|c: char| !(c.is_ascii_alphanumeric() || ".:,-*".contains(c))) {
        return Err(usage!(
            "--listen {listen:?}: expected host names or addresses, comma-separated"
        ));
    }
    let mut opts = format!("-p {port} -c listen_addresses='{listen}'");
    if let Some(sock) = &args.socket_dir {
        opts.push_str(&format!(" -k {}", sock.display()));
    }
    if args.scratch_hba {
        // Trust is safe only where nobody else can connect: no TCP, and a socket
        // directory only its owner can enter.
        use std::os::unix::fs::PermissionsExt;
        let private = args
            .socket_dir
            .as_ref()
            .and_then(|s| std::fs::metadata(s).ok())
            .is_some_and(|m| m.is_dir() && m.permissions().mode() & 0o077 == 0);
        if !listen.is_empty() || !private {
            return Err(usage!(
                "--scratch-hba needs --listen '' and a --socket-dir of mode 0700"
            ));
        }
        let hba = dir.join("pgdr-scratch-hba.conf");
        std::fs::write(
            &hba,
            "# pgdr: a scratch copy, reachable only on its private socket\nlocal all all trust\n",
        )
        .with_context(|| format!("writing {}", hba.display()))?;
        if let Some((uid, gid)) = postgres_owner() {
            std::os::unix::fs::chown(&hba, Some(uid), Some(gid))?;
        }
        opts.push_str(&format!(" -c hba_file='{}'", hba.display()));
    }
    let mut cmd = std::process::Command::new(tools.path("pg_ctl")?);
    // -W: pg_ctl would give up after 60 s, long before a big recovery is done; this
    // function does the waiting.
    cmd.arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .args(["-W", "-o", &opts, "start"]);
    let s3 = matches!(
        ctx.config.repository.parsed_url(),
        Ok(crate::config::RepoUrl::S3 { .. })
    );
    cmd.env_clear()
        .envs(crate::postgres::server_env(s3))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some((uid, gid)) = postgres_owner() {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    let started = Instant::now();
    let out = cmd.output().map_err(|e| anyhow!("cannot run pg_ctl: {e}"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(anyhow!(
            "pg_ctl start failed: {}",
            said.lines().next().unwrap_or("").trim()
        ));
    }
    // The postmaster writes its pid file when it is up; until then there is nothing
    // to watch.
    let appear = Instant::now() + Duration::from_secs(60);
    while !dir.join("postmaster.pid").exists() {
        if Instant::now() > appear || recovery_log_says(&log, "FATAL:") {
            return Err(anyhow!(
                "the restored server stopped during recovery: {}",
                fatal_line(&log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = PgTarget::from_config(ctx.config.postgres.url.as_deref())?;
    let target = base.with_address(&watch_address(listen, args.socket_dir.as_deref()), port);
    let deadline = started + Duration::from_secs(24 * 3600);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !dir.join("postmaster.pid").exists() {
            if args.target_action == TargetAction::Shutdown && recovery_log_says(&log, "shutting down") {
                return Ok(Reached {
                    state: "shut down at the target".into(),
                    lsn: "-".into(),
                    timeline: 0,
                    last_replay: None,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            return Err(anyhow!(
                "the restored server stopped during recovery: {}",
                fatal_line(&log)
            ));
        }
        let client = match target.connect(Some("postgres")).await {
            Ok(client) => client,
            Err(e) if crate::exit::is_refused_login(&e) => {
                return Err(e.context(format!(
                    "the restored server is up but refuses pgdr's login (its pg_hba.conf is the source's), so recovery cannot be watched; it keeps running — see {}",
                    log.display()
                )));
            }
            Err(_) if Instant::now() > deadline => {
                return Err(anyhow!("recovery did not finish within 24 h; see {}", log.display()));
            }
            Err(_) => continue,
        };
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), \
                 CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'not paused' END, \
                 (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
                 (SELECT timeline_id FROM pg_control_checkpoint()), \
                 pg_last_xact_replay_timestamp()::text",
                &[],
            )
            .await;
        let Ok(row) = row else { continue };
        let in_recovery: bool = row.get(0);
        let pause: String = row.get(1);
        let done_state = if !in_recovery {
            Some("promoted")
        } else if pause == "paused" {
            Some("paused at the target")
        } else if args.standby && started.elapsed() > Duration::from_secs(1) {
            Some("running as a standby")
        } else {
            None
        };
        if let Some(state) = done_state {
            // After a promotion the checkpoint may still show the old timeline.
            let timeline = if in_recovery {
                row.get::<_, i32>(3) as u32
            } else {
                client
                    .query_one("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)", &[])
                    .await
                    .ok()
                    .and_then(|r| u32::from_str_radix(&r.get::<_, String>(0), 16).ok())
                    .unwrap_or(row.get::<_, i32>(3) as u32)
            };
            return Ok(Reached {
                state: state.to_string(),
                lsn: row.get(2),
                timeline,
                last_replay: row.get(4),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        if Instant::now() > deadline {
            return Err(anyhow!("recovery did not finish within 24 h; see {}", log.display()));
        }
    }
}

/// Where pgdr connects to watch the restored server: the first address it listens
/// on (a wildcard means this host's loopback), or its socket when it listens on none.
fn watch_address(listen: &str, socket_dir: Option<&Path>) -> String {
    let first = listen.split(',').map(str::trim).find(|a| !a.is_empty());
    match (first, socket_dir) {
        (None, Some(sock)) => sock.display().to_string(),
        (None, None) | (Some("*" | "0.0.0.0"), _) => "127.0.0.1".to_string(),
        (Some("::"), _) => "::1".to_string(),
        (Some(addr), _) => addr.to_string(),
    }
}

fn recovery_log_says(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle))
}

fn fatal_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rfind(|l| l.contains("FATAL:") || l.contains("PANIC:"))
        .map(|l| {
            l.split_once("FATAL:")
                .or(l.split_once("PANIC:"))
                .map(|(_, m)| m.trim())
                .unwrap_or(l)
                .to_string()
        })
        .unwrap_or_else(|| format!("see {}", log.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_where_it_listens() {
        let sock = Path::new("/run/pgdr-sock");
        assert_eq!(watch_address("127.0.0.1", Some(sock)), "127.0.0.1");
        assert_eq!(watch_address("10.0.0.5,127.0.0.1", None), "10.0.0.5");
        assert_eq!(watch_address("::1", None), "::1");
        assert_eq!(watch_address("*", None), "127.0.0.1");
        assert_eq!(watch_address("::", None), "::1");
        assert_eq!(watch_address("", Some(sock)), "/run/pgdr-sock");
    }

    #[test]
    fn target_times_need_a_zone() {
        let want = "2026-11-26T02:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(parse_target_time("2026-11-26T02:00:00Z").unwrap(), want);
        assert_eq!(parse_target_time("2026-11-26 03:00:00+01").unwrap(), want);
        assert_eq!(parse_target_time("2026-11-26 02:00:00.000+00:00").unwrap(), want);
        assert_eq!(parse_target_time("2026-11-26 02:00:00 UTC").unwrap(), want);
        assert!(parse_target_time("2026-11-26 02:00:00").is_err());
        assert!(parse_target_time("yesterday").is_err());
    }
}
