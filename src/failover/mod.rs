//! Failover to a standby (`pgdr failover`): fence the old primary (a fast stop of its
//! data directory when local, else read-only plus terminated sessions, or the
//! configured fence command), let the standby replay what reached it, promote it,
//! prove it takes writes, switch application connections (`crate::switch`), and report
//! the RPO (the old primary's last LSN against the standby's at promotion). Building a
//! standby from a backup is `standby`.

pub mod standby;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::postgres::{Lsn, PgTarget};
use crate::switch::{self, Endpoint, Log, StepLog, SwitchReport};

#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// The standby to promote.
    pub to: Endpoint,
    /// The old primary, fenced if reachable.
    pub old: Option<Endpoint>,
    /// The old primary's data directory, when it is on this host: fenced by a fast stop.
    pub old_data_dir: Option<PathBuf>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverReport {
    pub new_primary: Endpoint,
    pub old_primary: Option<Endpoint>,
    pub ok: bool,
    pub dry_run: bool,
    /// How the old primary was fenced.
    pub fenced: Option<String>,
    /// The old primary's last WAL position: its shutdown checkpoint after a clean stop,
    /// else the larger of what it said before and after the fence.
    pub old_lsn: Option<String>,
    /// The standby's replay position when it was promoted.
    pub promoted_at_lsn: Option<String>,
    /// WAL the standby had not replayed: the data lost, in bytes (0: none).
    pub rpo_bytes: Option<u64>,
    /// The newest commit the standby had replayed.
    pub last_replayed_commit: Option<String>,
    pub steps: Vec<StepLog>,
    pub switch: Option<SwitchReport>,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in self.steps.iter().chain(self.switch.iter().flat_map(|s| s.steps.iter())) {
            writeln!(f, "{s}")?;
        }
        if self.dry_run {
            return write!(f, "dry run: nothing was changed");
        }
        if let Some(e) = &self.error {
            return write!(f, "failover to {} FAILED: {e}", self.new_primary);
        }
        write!(
            f,
            "failover to {} done in {:.1} s; RPO: {}",
            self.new_primary,
            self.seconds,
            match (self.rpo_bytes, &self.old_lsn) {
                (Some(0), _) => "no data lost (the standby had replayed all the old primary's WAL)".to_string(),
                (Some(b), Some(old)) => format!(
                    "{b} bytes of WAL not replayed (old primary at {old}, standby promoted at {})",
                    self.promoted_at_lsn.as_deref().unwrap_or("?")
                ),
                _ => "unknown (the old primary could not be asked)".to_string(),
            }
        )
    }
}

/// What failover will do, before it does it.
pub fn plan_text(opts: &FailoverOptions, switch_plan: Option<&switch::SwitchPlan>) -> String {
    let mut out = format!("failover to {}:\n", opts.to);
    out.push_str(&match (&opts.old_data_dir, &opts.old) {
        (Some(dir), _) => format!("  1. fence the old primary: fast stop of {}\n", dir.display()),
        (None, Some(old)) => format!(
            "  1. fence the old primary {old}: default_transaction_read_only = on, reload, terminate its sessions\n"
        ),
        (None, None) => "  1. fence: no old primary given (--old / --old-data-dir): not fenced\n".to_string(),
    });
    out.push_str(&format!(
        "  2. let {} replay what reached it, then promote it (pg_promote)\n  3. write and read back a row in pgdr_failover_check\n",
        opts.to
    ));
    match switch_plan {
        Some(p) => out.push_str(&format!("  4. {p}")),
        None => out.push_str("  4. switch: nothing configured ([switch]); move application connections yourself\n"),
    }
    out.push_str("  5. report the RPO\n");
    out
}

/// Keep an event's report (a switch, a failover) in `verifications/`; the repository
/// being out of reach does not fail the event (a warning says so).
pub async fn store_report<R: Serialize>(config: &Config, event: &str, started: chrono::DateTime<Utc>, report: &R) {
    let stored = async {
        let repo = crate::repo::Repo::open(config).await?;
        let data = serde_json::to_vec_pretty(report).expect("report serialises");
        repo.store()
            .bytes(
                &crate::repo::layout::event_report(&started, event),
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

fn target(config: &Config, at: &Endpoint) -> Result<PgTarget> {
    Ok(PgTarget::from_config(config.postgres.url.as_deref())?.with_address(&at.host, at.port))
}

/// Run the failover; a failure after it started is in the report (`ok: false`).
pub async fn run(
    config: &Config,
    opts: &FailoverOptions,
    switch_plan: Option<&switch::SwitchPlan>,
) -> Result<FailoverReport> {
    let started = Instant::now();
    let mut report = FailoverReport {
        new_primary: opts.to.clone(),
        old_primary: opts.old.clone(),
        ok: true,
        dry_run: opts.dry_run,
        fenced: None,
        old_lsn: None,
        promoted_at_lsn: None,
        rpo_bytes: None,
        last_replayed_commit: None,
        steps: Vec::new(),
        switch: None,
        seconds: 0.0,
        error: None,
    };
    // The standby must be one, and reachable, before anything is touched.
    let standby = target(config, &opts.to)?;
    let client = standby
        .connect(Some("postgres"))
        .await
        .with_context(|| format!("the standby {}", opts.to))?;
    let in_recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
    if !in_recovery {
        return Err(crate::usage!(
            "{} is not a standby (it is not in recovery) — name the standby to promote with --to",
            opts.to
        ));
    }
    if opts.dry_run {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // Queries through PgBouncer wait from here until the new primary takes them: the
    // old one is fenced meanwhile, and no client sees it refuse.
    let mut session = switch_plan
        .map(|p| switch::Session::new(config, p, false))
        .transpose()?;
    if let Some(s) = &mut session {
        s.pause().await;
        if s.failed() {
            report.ok = false;
            report.error = Some("PgBouncer could not be paused; nothing was fenced or promoted".to_string());
            report.switch = session.map(|s| s.report());
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
    }
    let mut log = Log { steps: Vec::new() };
    let outcome = failover_steps(config, opts, &client, &mut log, &mut report).await;
    report.steps = log.steps;
    match outcome {
        Err(e) => {
            report.ok = false;
            report.error = Some(format!("{e:#}"));
            let where_ = match (&report.fenced, report.steps.iter().any(|s| s.step == "promote" && s.ok)) {
                (_, true) => format!(
                    "{} was promoted but connections were not moved: run `pgdr switch --to {}`",
                    opts.to, opts.to
                ),
                (Some(how), false) => format!(
                    "the old primary was fenced ({how}) and {} was not promoted: fix the cause and run failover again, or restart the old primary",
                    opts.to
                ),
                (None, false) => "nothing was fenced or promoted".to_string(),
            };
            report.error = Some(format!("{e:#} — {where_}"));
            if let Some(mut s) = session {
                s.abandon(anyhow!("the failover stopped before the switch: {where_}"))
                    .await;
                report.switch = Some(s.report());
            }
        }
        Ok(()) => {
            if let Some(mut s) = session {
                s.complete().await;
                let r = s.report();
                if let Some(e) = &r.error {
                    report.ok = false;
                    report.error = Some(format!(
                        "the standby was promoted, but switching connections failed: {e}"
                    ));
                }
                report.switch = Some(r);
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn failover_steps(
    config: &Config,
    opts: &FailoverOptions,
    standby: &tokio_postgres::Client,
    log: &mut Log,
    report: &mut FailoverReport,
) -> Result<()> {
    // 1. Fence. Its last position first, for the RPO (read again after the fence).
    let old_lsn = |old: Endpoint| async move {
        let seen = async {
            let c = target(config, &old)?.connect(Some("postgres")).await?;
            let lsn: String = c.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
            anyhow::Ok(lsn.parse::<Lsn>().map_err(|e| anyhow!("{e}"))?)
        };
        tokio::time::timeout(Duration::from_secs(15), seen)
            .await
            .ok()
            .and_then(|r| r.ok())
    };
    let mut last: Option<Lsn> = match &opts.old {
        Some(old) => old_lsn(old.clone()).await,
        None => None,
    };
    let fenced = log
        .step("fence", async {
            let how = fence(config, opts).await?;
            Ok((how.clone(), how))
        })
        .await?;
    report.fenced = Some(fenced);
    // Where the old primary ended: after a clean stop its shutdown checkpoint (the
    // last record it wrote; trusted only when pg_control says "shut down"), else a
    // fresh look if it still answers (read-only, sessions ended).
    match &opts.old_data_dir {
        Some(dir) => match crate::postgres::datadir::control_shutdown_checkpoint(dir) {
            Ok(Some(checkpoint)) => last = Some(last.map_or(checkpoint, |l| l.max(checkpoint))),
            _ => {
                tracing::warn!(
                    "{} was not shut down cleanly: its last WAL position is not known",
                    dir.display()
                );
                last = None;
            }
        },
        None => {
            if let Some(old) = &opts.old
                && let Some(now) = old_lsn(old.clone()).await
            {
                last = Some(last.map_or(now, |l| l.max(now)));
            }
        }
    }
    report.old_lsn = last.map(|l| l.to_string());
    let caught_up = log
        .step("catch up", async {
            let want = report.old_lsn.as_deref().and_then(|l| l.parse::<Lsn>().ok());
            let deadline = Instant::now() + Duration::from_secs(config.switch.pause_timeout_seconds.max(10));
            loop {
                let row = standby
                    .query_one(
                        "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')::text, pg_last_xact_replay_timestamp()::text",
                        &[],
                    )
                    .await?;
                let (lsn, at): (String, Option<String>) = (row.get(0), row.get(1));
                let got = lsn.parse::<Lsn>().map_err(|e| anyhow!("{e}"))?;
                let done = want.is_none_or(|w| got >= w);
                if done || Instant::now() > deadline {
                    let detail = match want {
                        Some(w) if got >= w => format!("replayed to {got}, past the old primary's {w}"),
                        Some(w) => format!("replayed to {got}; the old primary was at {w}"),
                        None => format!("replayed to {got}"),
                    };
                    return Ok(((got, at), detail));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await?;
    let (promoted_at, last_commit) = caught_up;
    report.promoted_at_lsn = Some(promoted_at.to_string());
    report.last_replayed_commit = last_commit;
    if let Some(old) = report.old_lsn.as_deref().and_then(|l| l.parse::<Lsn>().ok()) {
        // A shutdown checkpoint record past what a standby replays is not data.
        report.rpo_bytes = Some(old.0.saturating_sub(promoted_at.0));
    }
    // 2. Promote.
    log.step("promote", async {
        let ok: bool = standby
            .query_one("SELECT pg_promote(wait => true, wait_seconds => 60)", &[])
            .await?
            .get(0);
        if !ok {
            return Err(anyhow!("pg_promote did not finish within 60 s — see the standby's log"));
        }
        Ok(((), format!("{} is a primary now", opts.to)))
    })
    .await?;
    // 3. It takes writes.
    log.step("verify writes", async {
        standby
            .batch_execute("CREATE TABLE IF NOT EXISTS pgdr_failover_check (at timestamptz PRIMARY KEY, note text)")
            .await?;
        let row = standby
            .query_one(
                "INSERT INTO pgdr_failover_check VALUES (clock_timestamp(), 'pgdr failover') RETURNING at::text",
                &[],
            )
            .await?;
        let at: String = row.get(0);
        let back = standby
            .query_opt(
                "SELECT 1 FROM pgdr_failover_check WHERE at = $1::text::timestamptz",
                &[&at],
            )
            .await?;
        if back.is_none() {
            return Err(anyhow!("the row written to pgdr_failover_check cannot be read back"));
        }
        Ok(((), "wrote and read back a row in pgdr_failover_check".to_string()))
    })
    .await?;
    Ok(())
}

/// Fence the old primary so it cannot take writes: stop it when its data directory
/// is here; else the fence command; else make it read-only and end its sessions.
/// A fence that was tried and did not hold is an error: promoting then would leave
/// two primaries.
async fn fence(config: &Config, opts: &FailoverOptions) -> Result<String> {
    if let Some(dir) = &opts.old_data_dir {
        return fence_data_dir(config, dir).await;
    }
    if let Some(cmd) = &config.switch.fence_command {
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env(
                "PGDR_FENCE_HOST",
                opts.old.as_ref().map(|e| e.host.clone()).unwrap_or_default(),
            )
            .env(
                "PGDR_FENCE_PORT",
                opts.old.as_ref().map(|e| e.port.to_string()).unwrap_or_default(),
            )
            .kill_on_drop(true)
            .output();
        let wait = Duration::from_secs(config.switch.hook_timeout_seconds);
        let out = tokio::time::timeout(wait, run)
            .await
            .map_err(|_| anyhow!("[switch] fence_command did not finish within {} s", wait.as_secs()))?
            .context("running [switch] fence_command")?;
        if !out.status.success() {
            return Err(anyhow!("[switch] fence_command exited with {}", out.status));
        }
        return Ok("fence_command exited 0".to_string());
    }
    let Some(old) = &opts.old else {
        return Ok("not fenced: no old primary given".to_string());
    };
    let reached = tokio::time::timeout(Duration::from_secs(15), target(config, old)?.connect(Some("postgres"))).await;
    let c = match reached {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Ok(format!(
                "{old} could not be reached to fence it ({e:#}); it is taken to be down"
            ));
        }
        Err(_) => return Ok(format!("{old} did not answer within 15 s; it is taken to be down")),
    };
    // Reached: from here every failure stops the failover.
    c.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .map_err(crate::postgres::conn::db_err(format!("fencing {old} (ALTER SYSTEM)")))?;
    c.query_one("SELECT pg_reload_conf()", &[])
        .await
        .map_err(crate::postgres::conn::db_err(format!("fencing {old} (reload)")))?;
    let ended: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend') t",
            &[],
        )
        .await
        .map_err(crate::postgres::conn::db_err(format!(
            "fencing {old} (ending sessions)"
        )))?
        .get(0);
    // A new session must see it.
    let check = target(config, old)?.connect(Some("postgres")).await?;
    let ro: String = check.query_one("SHOW default_transaction_read_only", &[]).await?.get(0);
    if ro != "on" {
        return Err(anyhow!(
            "{old} did not become read-only (default_transaction_read_only = {ro})"
        ));
    }
    Ok(format!(
        "{old} is read-only (default_transaction_read_only = on), {ended} session(s) ended; stop it as soon as you can: a session may still override the default"
    ))
}

/// Fence a primary whose data directory is on this host: a fast stop, and proof
/// (`pg_ctl status`) that nothing runs there any more.
pub async fn fence_data_dir(config: &Config, dir: &std::path::Path) -> Result<String> {
    if !dir.join("PG_VERSION").is_file() || !dir.join("global/pg_control").is_file() {
        return Err(crate::usage!(
            "--old-data-dir {} is not a PostgreSQL data directory (no PG_VERSION or global/pg_control)",
            dir.display()
        ));
    }
    let tools = crate::postgres::PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let pg_ctl = tools.path("pg_ctl")?;
    let mut stop = tokio::process::Command::new(&pg_ctl);
    stop.arg("-D").arg(dir).args(["-m", "fast", "-w", "-t", "60", "stop"]);
    crate::process::as_postgres_async(&mut stop);
    let out = stop.output().await.context("running pg_ctl stop")?;
    // Whatever stop said, `status` decides: exit 3 is "no server running".
    let mut status = tokio::process::Command::new(&pg_ctl);
    status.arg("-D").arg(dir).arg("status");
    crate::process::as_postgres_async(&mut status);
    let st = status.output().await.context("running pg_ctl status")?;
    if st.status.code() != Some(3) {
        return Err(anyhow!(
            "the old primary in {} is still running after pg_ctl stop ({}) — stop it by hand before promoting",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(format!("stopped {} (fast)", dir.display()))
}
