//! What each runbook operation does, composed from the library: a restore started as
//! a server (`restore::physical`), validation (`verify::amcheck`, SQL checks), a
//! fence (`failover::fence_data_dir`), a standby (`failover::standby`), a switch
//! (`switch`), bringing lost data back from a scratch copy, and tearing a scratch
//! server down. Each step either checks its own postcondition or can be run again:
//! a step a killed run left half done is undone (`undo_partial`) and run anew.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, anyhow};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};

use super::{Op, Step, parse_table};
use crate::config::Config;
use crate::postgres::recovery::TargetAction;
use crate::postgres::{PgTarget, PgTools};
use crate::restore::physical::{self, Listen, PhysicalRestoreOptions, TargetTimeline};
use crate::server::free_port;
use crate::switch::{self, Endpoint};

/// A server a step made: where it runs and what it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Server {
    pub data_dir: PathBuf,
    /// Its socket directory (`<data_dir>.sock`): for a scratch copy the only way in.
    pub socket_dir: PathBuf,
    /// Where others (PgBouncer, a standby) reach it; empty for a scratch copy.
    pub host: String,
    pub port: u16,
    /// primary, standby or scratch.
    pub role: String,
}

impl Server {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// How pgdr connects to it: through its socket, as the configured user.
    pub fn target(&self, config: &Config) -> Result<PgTarget> {
        Ok(PgTarget::from_config(config.postgres.url.as_deref())?
            .with_address(&self.socket_dir.display().to_string(), self.port))
    }
}

/// What one table got back (`copy-back`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRestore {
    pub table: String,
    /// "copied whole" (it was absent) or "missing rows put back".
    pub action: String,
    /// Rows the live table gained.
    pub rows: u64,
    /// Rows in the table as it was at the target.
    pub rows_at_target: u64,
}

/// Everything a step may read or record.
pub struct StepCx<'a> {
    pub config: &'a Config,
    pub inputs: &'a BTreeMap<String, String>,
    pub jobs: usize,
    pub servers: &'a mut BTreeMap<String, Server>,
    pub restored: &'a mut Vec<TableRestore>,
    pub say: &'a mut dyn FnMut(String),
    /// A restore redone after an interruption follows the timeline the first attempt
    /// chose: that attempt may have promoted and archived a timeline of its own.
    pub pinned_timeline: Option<crate::postgres::TimelineId>,
}

pub fn socket_dir_for(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "server".into());
    data_dir.with_file_name(format!("{name}.sock"))
}

/// The host others reach a server on: the first of its listen addresses.
fn reach_host(listen: &str) -> String {
    match listen.split(',').next().map(str::trim).unwrap_or("") {
        "" | "*" | "0.0.0.0" | "::" => "localhost".to_string(),
        h => h.to_string(),
    }
}

fn port_param(step: &Step, inputs: &BTreeMap<String, String>) -> Result<Option<u16>> {
    let raw = step.param("port", inputs);
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| crate::usage!("step {:?}: port {raw:?} is not a port number", step.name))
}

/// The restore a `restore` step asks for (the port of a scratch copy is chosen when
/// it runs).
pub fn restore_options(
    step: &Step,
    inputs: &BTreeMap<String, String>,
    jobs: usize,
    port: u16,
) -> Result<PhysicalRestoreOptions> {
    let to = PathBuf::from(step.param("to", inputs));
    if !to.is_absolute() {
        return Err(crate::usage!(
            "step {:?}: `to` must be an absolute path, not {:?}",
            step.name,
            to
        ));
    }
    let (target, exclusive) = crate::restore::target::parse_step_target(&step.param("target", inputs))?;
    let scratch = step.param("role", inputs) == "scratch";
    let listen = if scratch {
        String::new()
    } else {
        let l = step.param("listen", inputs);
        if l.is_empty() { "localhost".to_string() } else { l }
    };
    Ok(PhysicalRestoreOptions {
        backup: "latest".into(),
        to: to.clone(),
        target,
        action: TargetAction::Promote,
        exclusive,
        timeline: TargetTimeline::Latest,
        standby: false,
        primary_conninfo: None,
        primary_slot_name: None,
        delta: false,
        tablespace_map: Default::default(),
        // A scratch copy never archives into the repository; a new primary does.
        archive: !scratch,
        // Declared production's at the switch, not at promotion: an attempt given up
        // before it is never followed.
        declare: false,
        jobs,
        start: Some(Listen {
            port,
            addresses: listen,
            socket_dir: Some(socket_dir_for(&to)),
            scratch_hba: scratch,
        }),
    })
}

/// A directory the server's owner can enter, 0700 for a scratch copy.
fn make_socket_dir(dir: &Path, private: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(if private { 0o700 } else { 0o755 })
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::set_permissions(
        dir,
        std::fs::Permissions::from_mode(if private { 0o700 } else { 0o755 }),
    )?;
    if let Some((uid, gid)) = crate::process::postgres_owner() {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Stop whatever runs in `dir` (immediately: it is being thrown away).
fn stop_immediate(config: &Config, dir: &Path) {
    if let Ok(tools) = PgTools::locate(config.postgres.bin_dir.as_deref())
        && let Ok(pg_ctl) = tools.path("pg_ctl")
    {
        crate::server::stop_immediate(&pg_ctl, dir);
    }
}

/// Remove a server a step made: stop it, delete its data and socket directories.
/// Whether `remove_server` keeps the (emptied) data directory itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeepDir {
    Yes,
    No,
}

/// Stop the server in `dir`, then remove its data (and `dir` itself unless `keep`)
/// and its socket directory.
fn remove_server(config: &Config, dir: &Path, keep: KeepDir) -> Result<()> {
    stop_immediate(config, dir);
    if keep == KeepDir::Yes {
        empty_dir(dir)?;
    }
    let remove = if keep == KeepDir::Yes {
        vec![socket_dir_for(dir)]
    } else {
        vec![dir.to_path_buf(), socket_dir_for(dir)]
    };
    for d in remove {
        match std::fs::remove_dir_all(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", d.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Nothing at `path` (not even a dangling link); an error looking is an error.
pub fn absent(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(anyhow!("cannot tell whether {} exists: {e}", path.display())),
    }
}

/// The timeline a restored directory promoted onto, past the one it `followed`: its
/// own newest history file in pg_wal (a recovery that follows a fixed timeline never
/// fetches a higher one).
fn promoted_timeline(dir: &Path, followed: crate::postgres::TimelineId) -> Option<crate::postgres::TimelineId> {
    std::fs::read_dir(dir.join("pg_wal"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let tli = name.strip_suffix(".history")?;
            (tli.len() == 8).then(|| u32::from_str_radix(tli, 16).ok()).flatten()
        })
        .filter(|t| *t > followed)
        .max()
}

/// Remove everything inside `dir`, keeping `dir`.
fn empty_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// A directory this recovery made: where, and which one (inode, birth time).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Made {
    pub path: PathBuf,
    /// `None`: about to be made (the run may have been killed right after).
    #[serde(default)]
    pub inode: Option<u64>,
    #[serde(default)]
    pub born_ns: Option<i128>,
}

impl Made {
    pub fn intended(path: &Path) -> Made {
        Made {
            path: path.to_path_buf(),
            inode: None,
            born_ns: None,
        }
    }
}

fn identity(path: &Path) -> Result<(u64, Option<i128>)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128);
    Ok((meta.ino(), born))
}

/// Create `dir` (0700, the server's owner) for a step and say which directory it is.
pub fn make_own_dir(dir: &Path) -> Result<Made> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::disk::create_server_dir(dir)?;
    known_dir(dir)
}

/// An empty directory that was there already (a mount point, say): the step's to
/// fill and, if interrupted, to empty again.
pub fn known_dir(dir: &Path) -> Result<Made> {
    let (inode, born_ns) = identity(dir)?;
    Ok(Made {
        path: dir.to_path_buf(),
        inode: Some(inode),
        born_ns,
    })
}

/// `dir` is a directory with nothing in it.
pub fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// An interrupted step's directory may be removed only when it is the very directory
/// this recovery made; anything else at that path is someone else's.
pub fn check_undo_allowed(dir: &Path, created: &[Made], id: &str) -> Result<()> {
    if absent(dir)? {
        return Ok(());
    }
    // Nothing in it: nothing to lose.
    let empty = is_empty_dir(dir);
    if empty {
        return Ok(());
    }
    let (inode, born) = identity(dir)?;
    if created.iter().any(|m| {
        m.path == dir
            && match m.inode {
                Some(i) => i == inode && (m.born_ns.is_none() || m.born_ns == born),
                None => empty,
            }
    }) {
        return Ok(());
    }
    Err(crate::usage!(
        "{} exists and was not created by this recovery ({id}): pgdr removes only what it made — if it is a half-made copy of yours, remove it yourself; otherwise choose another directory, or move the state file away to start a new recovery",
        dir.display()
    ))
}

/// A step a killed run started and did not finish: undo what it left (a half-laid
/// data directory, a server it started) so that it can run again from the start.
/// Only what this recovery recorded as made by it is removed; anything else is a
/// refusal that says what to do.
pub async fn undo_partial(step: &Step, cx: &mut StepCx<'_>, created: &[Made], id: &str) -> Result<Option<String>> {
    match step.op {
        Op::Restore | Op::Standby => {
            let dir = PathBuf::from(step.param("to", cx.inputs));
            if !absent(&dir)? {
                check_undo_allowed(&dir, created, id)?;
                // A timeline the attempt promoted onto is given up with it: no later
                // restore may follow it.
                let abandoned = match (step.op, cx.pinned_timeline) {
                    (Op::Restore, Some(followed)) => promoted_timeline(&dir, followed),
                    _ => None,
                };
                if let Some(tli) = abandoned {
                    crate::repo::Repo::open(cx.config)
                        .await?
                        .abandon_timeline(tli, &format!("pgdr recover {id}: an interrupted attempt, redone"))
                        .await
                        .with_context(|| format!("recording timeline {tli} of the interrupted attempt as abandoned"))?;
                    (cx.say)(format!(
                        "timeline {tli}, made by the interrupted attempt, is recorded as abandoned"
                    ));
                }
                // Emptied, not removed: the directory stays the one recorded as made.
                remove_server(cx.config, &dir, KeepDir::Yes)?;
                return Ok(Some(format!(
                    "removed what was in {} (left half done by the interrupted run)",
                    dir.display()
                )));
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// The timeline a restore step an earlier run left half done followed, as its
/// directory's configuration names it: read (and kept in the state file) before that
/// directory is removed.
pub fn partial_timeline(step: &Step, inputs: &BTreeMap<String, String>) -> Option<crate::postgres::TimelineId> {
    (step.op == Op::Restore)
        .then(|| written_timeline(Path::new(&step.param("to", inputs))))
        .flatten()
}

/// The `recovery_target_timeline` pgdr wrote into a restored directory, if a number.
fn written_timeline(dir: &Path) -> Option<crate::postgres::TimelineId> {
    let conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).ok()?;
    conf.lines().rev().find_map(|l| {
        let (name, value) = l.split_once('=')?;
        (name.trim() == "recovery_target_timeline")
            .then(|| value.trim().trim_matches('\'').parse().ok())
            .flatten()
    })
}

/// What a fence step rests on: a data directory to stop here, or the DBA's word.
enum FenceBasis {
    DataDir(PathBuf),
    Declared,
}

/// A fence needs a data directory here or the DBA's declaration; neither is a
/// refusal, never "nothing to fence".
fn fence_basis(data_dir: &str, declared_down: &str) -> Result<FenceBasis> {
    let declared = match declared_down.trim() {
        "" | "no" | "false" => false,
        "yes" | "true" => true,
        other => return Err(crate::usage!("the fence step's declared_down is {other:?}: yes or no")),
    };
    match (data_dir.is_empty(), declared) {
        (false, _) => Ok(FenceBasis::DataDir(PathBuf::from(data_dir))),
        (true, true) => Ok(FenceBasis::Declared),
        (true, false) => Err(crate::usage!(
            "the old primary is not fenced: pgdr cannot prove it is down — give its data directory on this host with --old-data-dir (it is stopped and pg_ctl status proves it), or, if you know it cannot take writes (host powered off, isolated), pass --old-primary-is-down"
        )),
    }
}

/// One line of the plan for a step (without touching anything).
pub async fn describe(step: &Step, config: &Config, inputs: &BTreeMap<String, String>, jobs: usize) -> Result<String> {
    let p = |k: &str| step.param(k, inputs);
    Ok(match step.op {
        Op::Restore => {
            let port = port_param(step, inputs)?.unwrap_or(0);
            let opts = restore_options(step, inputs, jobs, port)?;
            let plan = physical::plan(config, &opts).await?;
            let role = if p("role") == "scratch" {
                "a scratch copy (private socket, no archiving, no subscriptions or pg_cron jobs, removed at the end)"
                    .to_string()
            } else {
                format!(
                    "the new primary, listening on {}:{}, archiving into {} and keeping production's subscriptions and scheduled jobs (its timeline is declared production's at the switch)",
                    opts.start.as_ref().map(|l| l.addresses.clone()).unwrap_or_default(),
                    port,
                    config.repository.url
                )
            };
            format!(
                "into {} as {role}; recovery to {}:\n      {}\n      {}",
                opts.to.display(),
                opts.target.recovery,
                plan.headline(),
                plan.to_string().replace('\n', "\n      ")
            )
        }
        Op::Validate => format!(
            "server {:?}: {}SQL checks",
            p("server"),
            if p("amcheck") != "false" {
                "pg_amcheck --heapallindexed, "
            } else {
                ""
            }
        ),
        Op::Fence => match fence_basis(&p("data_dir"), &p("declared_down"))? {
            FenceBasis::DataDir(d) => {
                let running = crate::failover::check_old_data_dir(config, &d).await?;
                format!(
                    "fast stop of {} ({}), proven by pg_ctl status",
                    d.display(),
                    if running {
                        "a server runs there"
                    } else {
                        "no server runs there now"
                    }
                )
            }
            FenceBasis::Declared => {
                "none by pgdr: you declared the old primary down (--old-primary-is-down); the report records it"
                    .to_string()
            }
        },
        Op::Standby => {
            let to = PathBuf::from(p("to"));
            if to.exists() && std::fs::read_dir(&to).map(|mut d| d.next().is_some()).unwrap_or(true) {
                return Err(crate::usage!(
                    "the standby's directory {} is not empty — choose another --standby-data-dir",
                    to.display()
                ));
            }
            format!(
                "a streaming standby of server {:?} in {}, port {}, from the latest backup",
                p("of"),
                to.display(),
                p("port")
            )
        }
        Op::Switch => {
            if config.switch.pgbouncer_admin_url.is_none() && config.switch.hook.is_none() {
                return Err(crate::usage!(
                    "the runbook switches connections, but [switch] configures neither pgbouncer_admin_url nor hook — configure [switch], or adapt the runbook"
                ));
            }
            // Found out now, before any step: a switch that cannot be made must not
            // be discovered after the old primary was fenced.
            let (checks, _) = switch::preflight_settings(config).await;
            checks.require("the runbook's switch step")?;
            let targets: Vec<String> = config
                .switch
                .pgbouncer_databases
                .iter()
                .cloned()
                .chain(config.switch.hook.iter().map(|_| "the [switch] hook".to_string()))
                .collect();
            format!(
                "to server {:?} ({})",
                p("to"),
                if targets.is_empty() {
                    "PgBouncer".to_string()
                } else {
                    targets.join(", ")
                }
            )
        }
        Op::CopyBack => {
            let live = PgTarget::from_config(config.postgres.url.as_deref())?;
            format!(
                "{} into database {} of the live server {} (absent tables whole; present ones get their missing rows by primary key)",
                p("tables"),
                database(step, inputs),
                live.describe()
            )
        }
        Op::Teardown => format!("server {:?} stopped and removed", p("server")),
    })
}

fn database(step: &Step, inputs: &BTreeMap<String, String>) -> String {
    let d = step.param("database", inputs);
    if d.is_empty() { "postgres".into() } else { d }
}

fn server<'s>(cx: &'s StepCx<'_>, step: &Step, key: &str) -> Result<&'s Server> {
    let name = step.param(key, cx.inputs);
    cx.servers
        .get(&name)
        .ok_or_else(|| anyhow!("server {name:?} is not running (the step that makes it has not run)"))
}

/// Run one step; its one-line result.
pub async fn run(step: &Step, checks: &[super::Check], cx: &mut StepCx<'_>) -> Result<String> {
    let config = cx.config;
    match step.op {
        Op::Restore => {
            let scratch = step.param("role", cx.inputs) == "scratch";
            let port = match port_param(step, cx.inputs)? {
                Some(p) => p,
                None => free_port()?,
            };
            let mut opts = restore_options(step, cx.inputs, cx.jobs, port)?;
            if let Some(tli) = cx.pinned_timeline {
                (cx.say)(format!(
                    "following timeline {tli}, as the interrupted attempt did (a timeline that attempt may have started is not followed)"
                ));
                opts.timeline = TargetTimeline::Id(tli);
            }
            let sock = socket_dir_for(&opts.to);
            let plan = physical::plan(config, &opts).await?;
            (cx.say)(plan.to_string());
            make_socket_dir(&sock, scratch)?;
            let report = physical::execute(config, &opts, plan, cx.say).await?;
            // Tests: die here like kill -9 would, the files down and the server up,
            // the step not recorded as done.
            if std::env::var_os("PGDR_TEST_RECOVER_KILL_IN_RESTORE").is_some() {
                // SAFETY: raising a signal at ourselves has no preconditions.
                unsafe { libc::raise(libc::SIGKILL) };
            }
            let listen = opts.start.as_ref().map(|l| l.addresses.clone()).unwrap_or_default();
            cx.servers.insert(
                step.param("server", cx.inputs),
                Server {
                    data_dir: opts.to.clone(),
                    socket_dir: sock,
                    host: if scratch { String::new() } else { reach_host(&listen) },
                    port,
                    role: if scratch { "scratch" } else { "primary" }.into(),
                },
            );
            let recovery = report
                .recovery
                .as_ref()
                .map(|r| format!("recovery {} at LSN {} on timeline {}", r.state, r.lsn, r.timeline))
                .unwrap_or_default();
            Ok(format!(
                "restored {} into {} (port {port}); {recovery}",
                report.backup,
                opts.to.display()
            ))
        }
        Op::Validate => {
            let s = server(cx, step, "server")?.clone();
            let name = step.param("server", cx.inputs);
            let target = s.target(config)?;
            let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
            let mut done = Vec::new();
            if step.param("amcheck", cx.inputs) != "false" {
                crate::verify::amcheck(&tools, &target).await?;
                done.push("pg_amcheck --heapallindexed: no corruption".to_string());
            }
            let mut n = 0;
            for c in checks.iter().filter(|c| c.server == name) {
                let sql = super::fill(&c.sql, cx.inputs);
                crate::verify::run_check(&target, &c.database, &c.name, &sql, &c.expect)
                    .await
                    .with_context(|| format!("check {:?}", c.name))?;
                n += 1;
            }
            // The configuration's own checks describe production: a new primary
            // must pass them too.
            if s.role == "primary" {
                for (i, c) in config.verify.check.iter().enumerate() {
                    let cname = c.name.clone().unwrap_or_else(|| format!("check {}", i + 1));
                    let db = c.database.clone().unwrap_or_else(|| "postgres".into());
                    crate::verify::run_check(&target, &db, &cname, &c.sql, &c.expected_text())
                        .await
                        .with_context(|| format!("[verify] check {cname:?}"))?;
                    n += 1;
                }
            }
            if n > 0 {
                done.push(format!("{n} SQL checks passed"));
            }
            if done.is_empty() {
                // Never a ✓ for a validation that looked at nothing.
                return Err(anyhow!(
                    "nothing was validated on server {name:?}: set amcheck = true or add [[checks]] for it"
                ));
            }
            Ok(done.join("; "))
        }
        Op::Fence => match fence_basis(
            &step.param("data_dir", cx.inputs),
            &step.param("declared_down", cx.inputs),
        )? {
            FenceBasis::DataDir(dir) => crate::failover::fence_data_dir(config, &dir).await,
            FenceBasis::Declared => {
                Ok("not fenced by pgdr: the DBA declared the old primary down (--old-primary-is-down)".into())
            }
        },
        Op::Standby => {
            let primary = server(cx, step, "of")?.clone();
            let to = PathBuf::from(step.param("to", cx.inputs));
            let port = port_param(step, cx.inputs)?.ok_or_else(|| anyhow!("the standby step needs a port"))?;
            let listen = match step.param("listen", cx.inputs) {
                l if l.is_empty() => "localhost".to_string(),
                l => l,
            };
            let slot = step.param("slot", cx.inputs);
            // The standby catches up from the archive first: the primary's current
            // segment (a new primary's first on its timeline) must be there.
            {
                let c = primary.target(config)?.connect(Some("postgres")).await?;
                crate::postgres::server::archive_current_wal(&c)
                    .await
                    .context("archiving the primary's current WAL segment for the standby")?;
            }
            let sock = socket_dir_for(&to);
            make_socket_dir(&sock, false)?;
            let report = crate::failover::standby::create(
                config,
                &crate::failover::standby::StandbyOptions {
                    to: to.clone(),
                    primary: primary.endpoint(),
                    slot: (!slot.is_empty()).then_some(slot),
                    listen: Listen {
                        port,
                        addresses: listen.clone(),
                        socket_dir: Some(sock.clone()),
                        scratch_hba: false,
                    },
                    backup: "latest".into(),
                    jobs: cx.jobs,
                },
                cx.say,
            )
            .await?;
            cx.servers.insert(
                step.param("server", cx.inputs),
                Server {
                    data_dir: to,
                    socket_dir: sock,
                    host: reach_host(&listen),
                    port,
                    role: "standby".into(),
                },
            );
            Ok(report.to_string())
        }
        Op::Switch => {
            let to = server(cx, step, "to")?.endpoint();
            let mut plan = switch::plan(
                config,
                &switch::SwitchOptions {
                    to: to.clone(),
                    from: None,
                    dry_run: false,
                },
            )?;
            let checks = switch::preflight(config, &mut plan).await;
            for c in &checks.0 {
                (cx.say)(c.to_string());
            }
            checks.require("the switch")?;
            let report = switch::run(config, &plan, false).await?;
            for s in &report.steps {
                (cx.say)(s.to_string());
            }
            if let Some(e) = &report.error {
                return Err(anyhow!("switching to {to} failed: {e}"));
            }
            // Production's from now on: `latest` follows its timeline.
            let new = server(cx, step, "to")?.clone();
            let c = new.target(config)?.connect(Some("postgres")).await?;
            let tli = crate::postgres::server::current_timeline(&c).await?;
            let declared = match crate::repo::Repo::open(config).await {
                Ok(repo) => repo.declare_primary_timeline(tli, "pgdr recover (switch)").await,
                Err(e) => Err(e),
            };
            Ok(match declared {
                Ok(()) => format!("application connections go to {to}; its timeline {tli} is declared production's"),
                Err(e) => format!(
                    "application connections go to {to}; WARNING: its timeline {tli} could not be declared in the repository ({e:#}) — until it is, `restore --target latest` may not follow it"
                ),
            })
        }
        Op::CopyBack => {
            let from = server(cx, step, "from")?.clone();
            let db = database(step, cx.inputs);
            let tables = step.param("tables", cx.inputs);
            let renames = parse_renames(&step.param("rename", cx.inputs))?;
            let live = PgTarget::from_config(config.postgres.url.as_deref())?;
            let mut lines = Vec::new();
            for t in tables.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let table = parse_table(t)?;
                let rename = renames
                    .iter()
                    .find(|(from, _)| *from == table)
                    .map(|(_, to)| to.clone());
                let r = copy_back(config, &from.target(config)?, &live, &db, &table, rename.as_ref())
                    .await
                    .with_context(|| format!("bringing back {}.{}", table.0, table.1))?;
                lines.push(format!("{}: {} ({} rows)", r.table, r.action, r.rows));
                cx.restored.retain(|x| x.table != r.table);
                cx.restored.push(r);
            }
            Ok(lines.join("; "))
        }
        Op::Teardown => {
            let name = step.param("server", cx.inputs);
            let Some(s) = cx.servers.get(&name).cloned() else {
                return Ok(format!("server {name:?} is already gone"));
            };
            remove_server(config, &s.data_dir, KeepDir::No)?;
            cx.servers.remove(&name);
            Ok(format!("stopped and removed {}", s.data_dir.display()))
        }
    }
}

/// `schema.table=schema.new_name,…` (the data-loss runbook's `restore_as`).
/// A table as (schema, name).
type Table = (String, String);

fn parse_renames(raw: &str) -> Result<Vec<(Table, Table)>> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (a, b) = pair
                .split_once('=')
                .ok_or_else(|| crate::usage!("--restore-as {pair:?}: expected schema.table=schema.new_name"))?;
            Ok((parse_table(a.trim())?, parse_table(b.trim())?))
        })
        .collect()
}

/// A name derived from `object` for the renamed copy: the old table's name at its
/// start replaced by the new one, within PostgreSQL's 63 bytes.
fn renamed(object: &str, old_table: &str, new_table: &str) -> String {
    let mut name = match object.strip_prefix(old_table) {
        Some(rest) => format!("{new_table}{rest}"),
        None => format!("{new_table}_{object}"),
    };
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// In the scratch copy (thrown away afterwards): give the table, its indexes (and so
/// the constraints they back) and its owned sequences the new names, so that its dump
/// restores beside the live table without a clash.
async fn rename_in_scratch(
    client: &mut tokio_postgres::Client,
    (schema, name): &(String, String),
    (new_schema, new_name): &(String, String),
) -> Result<()> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let tx = client.transaction().await?;
    let names = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    let indexes = names(
        tx.query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = $1::text::regclass",
            &[&qualified],
        )
        .await?,
    );
    let sequences = names(
        tx.query(
            "SELECT s.relname::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid \
             WHERE d.refobjid = $1::text::regclass AND d.classid = 'pg_class'::regclass \
             AND s.relkind = 'S' AND d.deptype IN ('a', 'i')",
            &[&qualified],
        )
        .await?,
    );
    let sch = quote_ident(schema);
    for i in &indexes {
        tx.batch_execute(&format!(
            "ALTER INDEX {sch}.{} RENAME TO {}",
            quote_ident(i),
            quote_ident(&renamed(i, name, new_name))
        ))
        .await?;
    }
    for s in &sequences {
        tx.batch_execute(&format!(
            "ALTER SEQUENCE {sch}.{} RENAME TO {}",
            quote_ident(s),
            quote_ident(&renamed(s, name, new_name))
        ))
        .await?;
    }
    tx.batch_execute(&format!("ALTER TABLE {qualified} RENAME TO {}", quote_ident(new_name)))
        .await?;
    if new_schema != schema {
        tx.batch_execute(&format!(
            "ALTER TABLE {sch}.{} SET SCHEMA {}",
            quote_ident(new_name),
            quote_ident(new_schema)
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn table_exists(client: &tokio_postgres::Client, (schema, name): &(String, String)) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[schema, name],
        )
        .await?
        .is_some())
}

/// Bring one table back from the scratch copy into the live database: whole if it is
/// absent there (pg_dump | pg_restore, in one transaction), else the rows it lacks,
/// matched by primary key (rows that exist now are not touched).
async fn copy_back(
    config: &Config,
    scratch: &PgTarget,
    live: &PgTarget,
    db: &str,
    table: &(String, String),
    rename: Option<&(String, String)>,
) -> Result<TableRestore> {
    let mut qualified = format!("{}.{}", quote_ident(&table.0), quote_ident(&table.1));
    let shown = format!("{}.{}", table.0, table.1);
    let mut from = scratch
        .connect(Some(db))
        .await
        .context("connecting to the scratch copy")?;
    // An earlier, interrupted run of this step may have renamed it in the scratch
    // copy already: it goes on from there.
    let renamed_before = match rename {
        Some(new) if !table_exists(&from, table).await? && table_exists(&from, new).await? => {
            qualified = format!("{}.{}", quote_ident(&new.0), quote_ident(&new.1));
            true
        }
        _ => false,
    };
    if !renamed_before && !table_exists(&from, table).await? {
        return Err(crate::usage!(
            "{shown} does not exist in the database as it was at the target time — check the table name and --target-time"
        ));
    }
    let at_target: i64 = from
        .query_one(&format!("SELECT count(*) FROM {qualified}"), &[])
        .await?
        .get(0);
    let mut to = live
        .connect(Some(db))
        .await
        .context("connecting to the live database")?;
    let mut whole_as = None;
    if let Some(new) = rename {
        let new_shown = format!("{}.{}", new.0, new.1);
        let new_qualified = format!("{}.{}", quote_ident(&new.0), quote_ident(&new.1));
        if table_exists(&to, new).await? {
            // Copied by an earlier run of this step, or a name already taken: never
            // written into.
            let rows: i64 = to
                .query_one(&format!("SELECT count(*) FROM {new_qualified}"), &[])
                .await?
                .get(0);
            if rows == at_target {
                return Ok(TableRestore {
                    table: shown,
                    action: format!("already copied whole as {new_shown}"),
                    rows: 0,
                    rows_at_target: at_target as u64,
                });
            }
            return Err(crate::usage!(
                "{new_shown} already exists in the live database — choose another name in --restore-as"
            ));
        }
        if !renamed_before {
            rename_in_scratch(&mut from, table, new).await?;
            crate::process::crash_point("copy-back-renamed");
        }
        qualified = new_qualified;
        whole_as = Some(new_shown);
    }
    if whole_as.is_some() || !table_exists(&to, table).await? {
        let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
        let mut dump = tokio::process::Command::new(tools.path("pg_dump")?);
        dump.args(["--format=custom", "--no-password"])
            .arg(format!("--table={qualified}"))
            .envs(scratch.child_env(Some(db)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut dump = dump.spawn().context("running pg_dump")?;
        let out: Stdio = dump
            .stdout
            .take()
            .ok_or_else(|| anyhow!("pg_dump has no stdout"))?
            .try_into()
            .context("piping pg_dump into pg_restore")?;
        let mut restore = tokio::process::Command::new(tools.path("pg_restore")?);
        restore
            .args(["--single-transaction", "--exit-on-error", "--no-password"])
            .arg(format!("--dbname={}", crate::postgres::conninfo_dbname(db)))
            .envs(live.child_env(Some(db)))
            .stdin(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let restored = restore.output().await.context("running pg_restore")?;
        let dumped = dump.wait_with_output().await?;
        if !dumped.status.success() {
            return Err(anyhow!(
                "pg_dump of the scratch copy failed: {}",
                String::from_utf8_lossy(&dumped.stderr).trim()
            ));
        }
        if !restored.status.success() {
            return Err(anyhow!(
                "pg_restore into the live database failed (nothing was changed): {}",
                String::from_utf8_lossy(&restored.stderr).trim()
            ));
        }
        let now: i64 = to
            .query_one(&format!("SELECT count(*) FROM {qualified}"), &[])
            .await?
            .get(0);
        return Ok(TableRestore {
            table: shown,
            action: match whole_as {
                Some(n) => format!("copied whole as {n}"),
                None => "copied whole (it was absent)".into(),
            },
            rows: now as u64,
            rows_at_target: at_target as u64,
        });
    }
    // Present: put back the rows it lacks, by primary key.
    let pk: Vec<String> = to
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
            &[&qualified],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if pk.is_empty() {
        return Err(crate::usage!(
            "{shown} exists in the live database and has no primary key, so missing rows cannot be told from present ones — rename or drop the live table and run again to copy it back whole"
        ));
    }
    let columns: Vec<String> = to
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            &[&qualified],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Identity columns GENERATED ALWAYS take the rows' own values back.
    let always_identity: bool = to
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped AND attidentity = 'a')",
            &[&qualified],
        )
        .await?
        .get(0);
    let overriding = if always_identity {
        "OVERRIDING SYSTEM VALUE "
    } else {
        ""
    };
    let cols = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let tx = to.transaction().await?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE pgdr_copy_back ON COMMIT DROP AS SELECT {cols} FROM {qualified} WITH NO DATA"
    ))
    .await?;
    let source = from
        .copy_out(&format!(
            "COPY (SELECT {cols} FROM {qualified}) TO STDOUT (FORMAT binary)"
        ))
        .await
        .context("reading the table from the scratch copy")?;
    let sink = tx
        .copy_in(&format!("COPY pgdr_copy_back ({cols}) FROM STDIN (FORMAT binary)"))
        .await?;
    futures::pin_mut!(source);
    futures::pin_mut!(sink);
    while let Some(chunk) = source.next().await {
        sink.send(chunk?).await?;
    }
    sink.finish().await?;
    let conflict = pk.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO {qualified} ({cols}) {overriding}SELECT {cols} FROM pgdr_copy_back ON CONFLICT ({conflict}) DO NOTHING"
            ),
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(TableRestore {
        table: shown,
        action: "missing rows put back".into(),
        rows: inserted,
        rows_at_target: at_target as u64,
    })
}
