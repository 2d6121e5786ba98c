//! Fencing the old primary: making sure it can no longer commit a write before a
//! standby is promoted. An old primary pgdr cannot reach is *unknown*, never *down*:
//! a refused login, a timeout or a network split all look the same from here. A
//! fence is therefore proven (`pg_ctl status` in its data directory on this host, or
//! `[switch] fence_command` exiting 0, or a reachable server made read-only) or
//! declared by the DBA (`--old-primary-is-down`), and the report says which.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::postgres::Lsn;
use crate::preflight::Checks;
use crate::switch::Endpoint;

/// How long an old primary has to answer before it counts as not reached.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// How the old primary will be fenced, decided before anything changes.
#[derive(Debug, Clone)]
pub enum FencePlan {
    /// A fast stop of its data directory on this host, proven by `pg_ctl status`;
    /// taken back (started again) only if it was running.
    StopDataDir { dir: PathBuf, was_running: bool },
    /// `[switch] fence_command` (a STONITH, a cloud API call), which must exit 0.
    Command { command: String, old: Option<Endpoint> },
    /// Reached: `default_transaction_read_only = on`, reload, sessions ended.
    ReadOnly(Endpoint),
    /// The DBA's word (`--old-primary-is-down`): nothing is done to it.
    DeclaredDown { old: Option<Endpoint> },
}

impl fmt::Display for FencePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FencePlan::StopDataDir { dir, .. } => write!(f, "fast stop of {}, proven by pg_ctl status", dir.display()),
            FencePlan::Command { command, .. } => write!(f, "run [switch] fence_command {command:?}; it must exit 0"),
            FencePlan::ReadOnly(old) => write!(
                f,
                "{old}: default_transaction_read_only = on, reload, end its sessions — a WEAK fence: a client may still SET default_transaction_read_only = off and write; stop it as soon as you can"
            ),
            FencePlan::DeclaredDown { old } => write!(
                f,
                "none: you declared the old primary{} down (--old-primary-is-down); pgdr cannot prove it",
                old.as_ref().map(|o| format!(" {o}")).unwrap_or_default()
            ),
        }
    }
}

/// What proved, after the fence, that the old primary takes no more writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "proof", rename_all = "kebab-case")]
pub enum FenceProof {
    /// `pg_ctl status` says no server runs in its data directory.
    Stopped { data_dir: PathBuf },
    /// `[switch] fence_command` exited 0.
    Command,
    /// Read-only for new transactions, sessions ended; weak (see `FencePlan`).
    ReadOnly { sessions_ended: i64 },
    /// Nothing was checked: the DBA declared it down.
    DeclaredByDba,
}

impl FenceProof {
    /// Whether the fence leaves the old primary able to write in some way.
    pub fn is_weak(&self) -> bool {
        matches!(self, FenceProof::ReadOnly { .. } | FenceProof::DeclaredByDba)
    }
}

impl fmt::Display for FenceProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceProof::Stopped { data_dir } => write!(
                f,
                "stopped {} (fast; pg_ctl status: no server running)",
                data_dir.display()
            ),
            FenceProof::Command => f.write_str("fence_command exited 0"),
            FenceProof::ReadOnly { sessions_ended } => write!(
                f,
                "read-only (default_transaction_read_only = on), {sessions_ended} session(s) ended — weak: a session may still override the default; stop it as soon as you can"
            ),
            FenceProof::DeclaredByDba => {
                f.write_str("not fenced by pgdr: the DBA declared the old primary down (--old-primary-is-down)")
            }
        }
    }
}

/// The old primary, reached within `REACH_TIMEOUT`: whether it is in recovery, its
/// system identifier and where its WAL stands.
async fn reach(config: &Config, old: &Endpoint) -> Result<(bool, String, Lsn)> {
    let t = super::target(config, old)?;
    let asked = async {
        let c = t.connect(Some("postgres")).await?;
        let row = c
            .query_one(
                "SELECT pg_is_in_recovery(), (SELECT system_identifier::text FROM pg_control_system()), \
                 CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text",
                &[],
            )
            .await
            .map_err(crate::postgres::conn::db_err(format!("asking {old} where it stands")))?;
        let lsn: String = row.get(2);
        anyhow::Ok((row.get(0), row.get(1), lsn.parse::<Lsn>().map_err(|e| anyhow!("{e}"))?))
    };
    tokio::time::timeout(REACH_TIMEOUT, asked)
        .await
        .map_err(|_| anyhow!("{old} did not answer within {} s", REACH_TIMEOUT.as_secs()))?
}

/// Decide how to fence, checking everything that can be checked first; each check
/// goes into `checks`. `None` when no fence can be proven or declared (a failed check
/// says why and what to do).
pub async fn prepare(
    config: &Config,
    old: Option<&Endpoint>,
    old_data_dir: Option<&Path>,
    declared_down: bool,
    standby_system_id: &str,
    checks: &mut Checks,
) -> Option<FencePlan> {
    if let Some(dir) = old_data_dir {
        let checked = check_data_dir(config, dir, standby_system_id).await;
        let plan = checked.as_ref().ok().map(|&running| FencePlan::StopDataDir {
            dir: dir.to_path_buf(),
            was_running: running,
        });
        checks.record(
            "old primary's data directory",
            checked.map(|running| {
                format!(
                    "{} is the standby's cluster; {}",
                    dir.display(),
                    if running {
                        "a server runs there: it will be stopped (fast)"
                    } else {
                        "no server runs there"
                    }
                )
            }),
        );
        return plan;
    }
    let reached = match old {
        Some(o) => Some(reach(config, o).await),
        None => None,
    };
    if let (Some(o), Some(Ok((in_recovery, system_id, _)))) = (old, &reached) {
        // It answers: whatever else is configured, it is not down, and it must be the
        // standby's primary.
        let wrong = if declared_down {
            Some(format!(
                "{o} answers: it is not down — drop --old-primary-is-down, and let pgdr fence it (it is made read-only) or stop it first"
            ))
        } else if system_id != standby_system_id {
            Some(format!(
                "{o} is another cluster (system identifier {system_id}, the standby's is {standby_system_id}) — name the standby's primary with --old"
            ))
        } else if *in_recovery {
            Some(format!(
                "{o} is in recovery (a standby itself), not the primary — name the primary with --old"
            ))
        } else {
            None
        };
        if let Some(why) = wrong {
            checks.fail("old primary", why);
            return None;
        }
    }
    if let Some(command) = &config.switch.fence_command {
        checks.pass(
            "fence",
            format!("[switch] fence_command {command:?} is the fence; it must exit 0"),
        );
        return Some(FencePlan::Command {
            command: command.clone(),
            old: old.cloned(),
        });
    }
    match (old, reached) {
        (Some(o), Some(Ok(_))) => {
            checks.pass(
                "old primary",
                format!("{o} answers as the standby's primary; it will be made read-only (a weak fence)"),
            );
            Some(FencePlan::ReadOnly(o.clone()))
        }
        (Some(o), Some(Err(e))) if declared_down => {
            checks.pass(
                "old primary",
                format!("{o} does not answer ({e:#}); down on your word (--old-primary-is-down)"),
            );
            Some(FencePlan::DeclaredDown { old: Some(o.clone()) })
        }
        (Some(o), Some(Err(e))) => {
            checks.fail(
                "old primary",
                format!(
                    "{o} could not be reached ({e:#}); that does not prove it is down (a refused login, a full server or a network split look the same) — stop it and pass --old-data-dir when its data directory is on this host, configure [switch] fence_command, or, if you know it cannot take writes, pass --old-primary-is-down"
                ),
            );
            None
        }
        _ if declared_down => {
            checks.pass("old primary", "not given; down on your word (--old-primary-is-down)");
            Some(FencePlan::DeclaredDown { old: None })
        }
        _ => {
            checks.fail(
                "old primary",
                "not given: pgdr cannot fence what it does not know — name it with --old HOST:PORT and/or --old-data-dir DIR, configure [switch] fence_command, or, if you know it cannot take writes, pass --old-primary-is-down",
            );
            None
        }
    }
}

/// `dir` holds `PG_VERSION` and `global/pg_control`; an error reading them is an
/// error, never "not there".
fn check_data_dir_exists(dir: &Path) -> Result<()> {
    for must in ["PG_VERSION", "global/pg_control"] {
        match std::fs::metadata(dir.join(must)) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(anyhow!(
                    "{} is not a data directory ({must} is not a file)",
                    dir.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(anyhow!(
                    "{} is not a PostgreSQL data directory (no {must}) — check --old-data-dir",
                    dir.display()
                ));
            }
            Err(e) => {
                return Err(anyhow!(
                    "cannot tell whether {} is a data directory: {must}: {e}",
                    dir.display()
                ));
            }
        }
    }
    Ok(())
}

/// The old primary's data directory is one, of the standby's cluster, and `pg_ctl
/// status` can tell whether a server runs there (the answer).
pub(super) async fn check_data_dir(config: &Config, dir: &Path, standby_system_id: &str) -> Result<bool> {
    check_data_dir_exists(dir)?;
    let system_id = crate::postgres::datadir::control_system_identifier(dir)
        .with_context(|| format!("reading {}/global/pg_control", dir.display()))?;
    if system_id != standby_system_id {
        return Err(anyhow!(
            "{} holds another cluster (system identifier {system_id}, the standby's is {standby_system_id}) — check --old-data-dir",
            dir.display()
        ));
    }
    pg_ctl_status(config, dir).await
}

/// `pg_ctl status`: true when a server runs in `dir`, false when none does (exit 3);
/// anything else is an error, never "not running".
async fn pg_ctl_status(config: &Config, dir: &Path) -> Result<bool> {
    let tools = crate::postgres::PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let mut status = tokio::process::Command::new(tools.path("pg_ctl")?);
    status.arg("-D").arg(dir).arg("status");
    crate::process::as_postgres_async(&mut status);
    let out = status.output().await.context("running pg_ctl status")?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => Err(anyhow!(
            "pg_ctl status on {} exited with {}: {} — cannot tell whether a server runs there",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Carry out the fence. A fence that was tried and did not hold is an error:
/// promoting then would leave two primaries.
pub async fn fence(config: &Config, plan: &FencePlan) -> Result<FenceProof> {
    match plan {
        FencePlan::StopDataDir { dir, .. } => {
            stop_data_dir(config, dir).await?;
            Ok(FenceProof::Stopped { data_dir: dir.clone() })
        }
        FencePlan::Command { command, old } => {
            run_fence_command(config, command, old.as_ref()).await?;
            Ok(FenceProof::Command)
        }
        FencePlan::ReadOnly(old) => read_only(config, old).await,
        FencePlan::DeclaredDown { .. } => Ok(FenceProof::DeclaredByDba),
    }
}

/// Stop a primary whose data directory is on this host (fast), and prove with `pg_ctl
/// status` that nothing runs there any more.
pub async fn stop_data_dir(config: &Config, dir: &Path) -> Result<()> {
    let tools = crate::postgres::PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let mut stop = tokio::process::Command::new(tools.path("pg_ctl")?);
    stop.arg("-D").arg(dir).args(["-m", "fast", "-w", "-t", "60", "stop"]);
    crate::process::as_postgres_async(&mut stop);
    let out = stop.output().await.context("running pg_ctl stop")?;
    // Whatever stop said, `status` decides.
    if pg_ctl_status(config, dir).await? {
        return Err(anyhow!(
            "the old primary in {} is still running after pg_ctl stop ({}) — stop it by hand before promoting",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

async fn run_fence_command(config: &Config, command: &str, old: Option<&Endpoint>) -> Result<()> {
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("PGDR_FENCE_HOST", old.map(|e| e.host.clone()).unwrap_or_default())
        .env("PGDR_FENCE_PORT", old.map(|e| e.port.to_string()).unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let wait = Duration::from_secs(config.switch.hook_timeout_seconds);
    let out = tokio::time::timeout(wait, run)
        .await
        .map_err(|_| anyhow!("[switch] fence_command did not finish within {} s", wait.as_secs()))?
        .context("running [switch] fence_command")?;
    if !out.status.success() {
        return Err(anyhow!(
            "[switch] fence_command exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Make a reachable old primary read-only for new transactions and end its sessions;
/// a new session must see it.
async fn read_only(config: &Config, old: &Endpoint) -> Result<FenceProof> {
    let db_err = crate::postgres::conn::db_err;
    let c = tokio::time::timeout(REACH_TIMEOUT, super::target(config, old)?.connect(Some("postgres")))
        .await
        .map_err(|_| {
            anyhow!(
                "{old} did not answer within {} s; it was not fenced",
                REACH_TIMEOUT.as_secs()
            )
        })??;
    c.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .map_err(db_err(format!("fencing {old} (ALTER SYSTEM)")))?;
    c.query_one("SELECT pg_reload_conf()", &[])
        .await
        .map_err(db_err(format!("fencing {old} (reload)")))?;
    let sessions_ended: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend') t",
            &[],
        )
        .await
        .map_err(db_err(format!("fencing {old} (ending sessions)")))?
        .get(0);
    let check = super::target(config, old)?.connect(Some("postgres")).await?;
    let ro: String = check.query_one("SHOW default_transaction_read_only", &[]).await?.get(0);
    if ro != "on" {
        return Err(anyhow!(
            "{old} did not become read-only (default_transaction_read_only = {ro})"
        ));
    }
    Ok(FenceProof::ReadOnly { sessions_ended })
}

/// Where the old primary ended, read after the fence: its shutdown checkpoint after a
/// clean stop, its current position when it still answers (read-only). `None` when
/// it cannot be read: the RPO is then unknown, never "no data lost".
pub async fn end_of_wal(config: &Config, plan: &FencePlan) -> Option<Lsn> {
    match plan {
        FencePlan::StopDataDir { dir, .. } => match crate::postgres::datadir::control_shutdown_checkpoint(dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("cannot read {}/global/pg_control: {e}", dir.display());
                None
            }
        },
        FencePlan::ReadOnly(old) => reach(config, old).await.ok().map(|(_, _, lsn)| lsn),
        FencePlan::Command { .. } | FencePlan::DeclaredDown { .. } => None,
    }
}

/// Take the fence back when the standby was not promoted, so applications are not
/// left on a server pgdr stopped: start the stopped primary again with the options
/// it ran with (`postmaster.opts`), or reset its read-only setting. A fence command's
/// or the DBA's fence is theirs to undo.
pub async fn undo(config: &Config, plan: &FencePlan) -> Result<String> {
    match plan {
        FencePlan::StopDataDir {
            dir,
            was_running: false,
        } => Ok(format!(
            "{} was not running before the failover; it is left stopped",
            dir.display()
        )),
        FencePlan::StopDataDir { dir, was_running: true } => {
            let tools = crate::postgres::PgTools::locate(config.postgres.bin_dir.as_deref())?;
            let mut start = tokio::process::Command::new(tools.path("pg_ctl")?);
            start.arg("-D").arg(dir).args(["-w", "-t", "60", "-l"]);
            start.arg(dir.join("pgdr-restart.log"));
            if let Some(opts) = postmaster_opts(dir) {
                start.arg("-o").arg(opts);
            }
            start.arg("start").stdin(std::process::Stdio::null());
            crate::process::as_postgres_async(&mut start);
            let out = start.output().await.context("running pg_ctl start")?;
            if !out.status.success() {
                return Err(anyhow!(
                    "pg_ctl start -D {} failed ({}): start the old primary by hand",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(format!("the old primary in {} was started again", dir.display()))
        }
        FencePlan::ReadOnly(old) => {
            let c = super::target(config, old)?.connect(Some("postgres")).await?;
            c.batch_execute("ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()")
                .await
                .map_err(crate::postgres::conn::db_err(format!("taking the fence off {old}")))?;
            Ok(format!(
                "{old} takes writes again (default_transaction_read_only reset)"
            ))
        }
        FencePlan::Command { .. } => Ok("fence_command's fence is yours to undo".to_string()),
        FencePlan::DeclaredDown { .. } => Ok("nothing was done to the old primary".to_string()),
    }
}

/// The server options the stopped primary ran with, from `postmaster.opts` (the
/// command line, each argument double-quoted), without the program and its `-D`,
/// re-quoted for `pg_ctl -o` (which passes them through the shell).
fn postmaster_opts(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("postmaster.opts")).ok()?;
    let args = split_postmaster_opts(&text)?;
    let mut rest = Vec::new();
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-D" {
            it.next();
            continue;
        }
        rest.push(crate::process::sh_quote(&a));
    }
    Some(rest.join(" "))
}

/// `/bin/postgres "a" "b c"` → [/bin/postgres, a, b c] (PostgreSQL writes the
/// program as it is and every argument in double quotes); `None` on anything else.
fn split_postmaster_opts(text: &str) -> Option<Vec<String>> {
    let text = text.trim();
    let (program, args) = match text.find(" \"") {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, ""),
    };
    if program.is_empty() {
        return None;
    }
    let mut out = vec![program.to_string()];
    let mut chars = args.chars();
    loop {
        match chars.next() {
            None => return Some(out),
            Some(c) if c.is_whitespace() => continue,
            Some('"') => {
                let mut arg = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        c => arg.push(c),
                    }
                }
                out.push(arg);
            }
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmaster_opts_are_read_back_for_pg_ctl() {
        let text = "/usr/lib/postgresql/15/bin/postgres \"-D\" \"/x/my data\" \"-p\" \"5433\" \"-k\" \"/tmp/it's\"\n";
        assert_eq!(
            split_postmaster_opts(text).unwrap(),
            vec![
                "/usr/lib/postgresql/15/bin/postgres",
                "-D",
                "/x/my data",
                "-p",
                "5433",
                "-k",
                "/tmp/it's"
            ]
        );
        assert_eq!(split_postmaster_opts("/bin/postgres \"-D\" unquoted"), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postmaster.opts"), text).unwrap();
        assert_eq!(postmaster_opts(dir.path()).unwrap(), "'-p' '5433' '-k' '/tmp/it'\\''s'");
    }

    #[test]
    fn only_proven_fences_are_strong() {
        assert!(!FenceProof::Stopped { data_dir: "/d".into() }.is_weak());
        assert!(!FenceProof::Command.is_weak());
        assert!(FenceProof::ReadOnly { sessions_ended: 0 }.is_weak());
        assert!(FenceProof::DeclaredByDba.is_weak());
    }
}
