//! The failover's first phase: every check that can be made without changing
//! anything (the standby, the fence, the switch), and the plan shown before the DBA
//! confirms.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use super::{FailoverOptions, FencePlan, feed, fence, target};
use crate::config::Config;
use crate::preflight::Checks;
use crate::switch;

/// Everything `execute` needs, found out without changing anything.
pub struct Prepared {
    pub checks: Checks,
    /// `None` when no fence can be proven or declared (a failed check says why).
    pub fence: Option<FencePlan>,
    pub switch: Option<switch::SwitchPlan>,
    pub(super) standby: tokio_postgres::Client,
    /// The standby's data directory (checked) and the segment size, to give it the
    /// old primary's WAL from `pg_wal` when it falls short.
    pub(super) feed: Option<(PathBuf, u64)>,
}

/// Check the standby, decide the fence and check the switch; nothing is changed.
/// Only a standby that cannot be asked at all is an `Err`; every other finding is a
/// check in `Prepared::checks`.
pub async fn prepare(config: &Config, opts: &FailoverOptions) -> Result<Prepared> {
    let mut checks = Checks::default();
    let standby = connect_standby(config, opts).await?;
    let state = ask_standby(&standby, opts).await?;
    if !state.in_recovery {
        return Err(crate::usage!(
            "{} is not a standby (it is not in recovery) — name the standby to promote with --to",
            opts.to
        ));
    }
    if opts.old.as_ref() == Some(&opts.to) {
        return Err(crate::usage!("--old and --to name the same server {}", opts.to));
    }
    let local_feed = local_feed(opts, &state, &mut checks);
    checks.record("standby", standby_check(opts, &state, local_feed.is_some()));
    let fence = fence::prepare(
        config,
        opts.old.as_ref(),
        opts.old_data_dir.as_deref(),
        opts.old_primary_is_down,
        &state.system_id,
        &mut checks,
    )
    .await;
    let switch = plan_switch(config, opts, &mut checks).await;
    Ok(Prepared {
        checks,
        fence,
        switch,
        standby,
        feed: local_feed,
    })
}

/// The standby, connected within 10 s.
async fn connect_standby(config: &Config, opts: &FailoverOptions) -> Result<tokio_postgres::Client> {
    let reached = tokio::time::timeout(
        Duration::from_secs(10),
        target(config, &opts.to)?.connect(Some("postgres")),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "the standby {} did not answer within 10 s; nothing was changed",
            opts.to
        )
    })?;
    reached.with_context(|| format!("the standby {}; nothing was changed", opts.to))
}

/// What the standby says of itself.
struct StandbyState {
    in_recovery: bool,
    system_id: String,
    /// pg_stat_wal_receiver's status, empty with no WAL receiver.
    receiver: String,
    restore_command: String,
    paused: bool,
    /// Its recovery_target settings, joined; empty when it has none.
    recovery_target: String,
    data_directory: String,
    port: String,
    segment_size: String,
}

async fn ask_standby(standby: &tokio_postgres::Client, opts: &FailoverOptions) -> Result<StandbyState> {
    let row = standby
        .query_one(
            "SELECT pg_is_in_recovery(), (SELECT system_identifier::text FROM pg_control_system()), \
             coalesce((SELECT status FROM pg_stat_wal_receiver), ''), current_setting('restore_command'), \
             CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
             concat_ws(' ', nullif(current_setting('recovery_target'), ''), nullif(current_setting('recovery_target_time'), ''), \
               nullif(current_setting('recovery_target_lsn'), ''), nullif(current_setting('recovery_target_xid'), ''), \
               nullif(current_setting('recovery_target_name'), '')), \
             current_setting('data_directory'), current_setting('port'), \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')",
            &[],
        )
        .await
        .map_err(crate::postgres::conn::db_err(format!("asking the standby {}", opts.to)))?;
    Ok(StandbyState {
        in_recovery: row.get(0),
        system_id: row.get(1),
        receiver: row.get(2),
        restore_command: row.get(3),
        paused: row.get(4),
        recovery_target: row.get(5),
        data_directory: row.get(6),
        port: row.get(7),
        segment_size: row.get(8),
    })
}

/// The old primary's pg_wal, copied into the standby's: both on this host. The
/// standby's data directory (checked) and its segment size, or `None` (a failed check
/// says why, when one was asked for).
fn local_feed(opts: &FailoverOptions, state: &StandbyState, checks: &mut Checks) -> Option<(PathBuf, u64)> {
    match (&opts.standby_data_dir, &opts.old_data_dir) {
        (None, _) => None,
        (Some(_), None) => {
            checks.fail(
                "standby data directory",
                "--standby-data-dir gives the standby the old primary's WAL from its pg_wal: it needs --old-data-dir too",
            );
            None
        }
        (Some(dir), Some(_)) => {
            let standby_self = feed::StandbySelf {
                system_id: state.system_id.clone(),
                data_directory: state.data_directory.clone(),
                port: state.port.parse().unwrap_or(0),
                segment_size: state.segment_size.parse().unwrap_or(0),
            };
            let found = feed::check_standby_dir(dir, &standby_self).and_then(|said| {
                if !crate::postgres::wal::valid_segment_size(standby_self.segment_size) {
                    Err(anyhow!("the standby's wal_segment_size could not be read"))
                } else {
                    Ok(said)
                }
            });
            let ok = found.is_ok();
            checks.record("standby data directory", found);
            ok.then(|| (dir.clone(), standby_self.segment_size))
        }
    }
}

/// The "standby" check: how it will catch up with the old primary, or why it cannot.
fn standby_check(opts: &FailoverOptions, state: &StandbyState, local_feed: bool) -> Result<String> {
    let recovery_target = &state.recovery_target;
    let feed = match (state.receiver.as_str(), state.restore_command.trim().is_empty()) {
        // Resumed there, its recovery would end at the target and promote it on its
        // own, outside the failover's order.
        _ if !recovery_target.is_empty() => Err(anyhow!(
            "it has a recovery target ({recovery_target}): a standby to fail over to follows its primary to the end — clear its recovery_target settings and reload"
        )),
        ("streaming", _) => Ok("streaming from its primary".to_string()),
        (r, false) => Ok(format!(
            "not streaming ({}); it replays from the archive (restore_command)",
            if r.is_empty() { "no WAL receiver" } else { r }
        )),
        (r, true) if local_feed => Ok(format!(
            "not streaming ({}) and no restore_command: it is given the old primary's WAL in its pg_wal",
            if r.is_empty() { "no WAL receiver" } else { r }
        )),
        (r, true) if opts.accept_data_loss => Ok(format!(
            "neither streams ({}) nor has a restore_command: it has only what it already received (--accept-data-loss)",
            if r.is_empty() { "no WAL receiver" } else { r }
        )),
        (r, true) => Err(anyhow!(
            "it neither streams ({}) nor has a restore_command, so it cannot catch up with the old primary — fix its primary_conninfo or restore_command, or pass --accept-data-loss",
            if r.is_empty() { "no WAL receiver" } else { r }
        )),
    };
    feed.map(|f| {
        format!(
            "{} is a standby of system {}, {f}{}",
            opts.to,
            state.system_id,
            if state.paused {
                "; its replay is paused (it is resumed to catch up)"
            } else {
                ""
            }
        )
    })
}

/// The switch, planned and checked, when one is configured ([switch]).
async fn plan_switch(config: &Config, opts: &FailoverOptions, checks: &mut Checks) -> Option<switch::SwitchPlan> {
    let s = &config.switch;
    if s.pgbouncer_admin_url.is_some() || s.hook.is_some() {
        match switch::plan(
            config,
            &switch::SwitchOptions {
                to: opts.to.clone(),
                from: opts.old.clone(),
                dry_run: opts.dry_run,
            },
        ) {
            Ok(mut plan) => {
                checks.extend(switch::preflight(config, &mut plan).await);
                Some(plan)
            }
            Err(e) => {
                checks.fail("switch", format!("{e:#}"));
                None
            }
        }
    } else {
        None
    }
}

/// What failover will do, and what was checked, before it does it.
pub fn plan_text(config: &Config, opts: &FailoverOptions, prepared: &Prepared) -> String {
    let mut out = format!("{}failover to {}:\n", prepared.checks, opts.to);
    match &prepared.fence {
        Some(plan) => out.push_str(&format!("  1. fence the old primary: {plan}\n")),
        None => {
            out.push_str("  1. fence the old primary: nothing proves or declares it down — refused (see the checks)\n")
        }
    }
    out.push_str(&format!(
        "  2. let {} replay everything the old primary wrote (at most {} s; {}), then promote it — the point of no return\n",
        opts.to,
        config.switch.catch_up_seconds,
        if opts.accept_data_loss {
            "if it cannot, it is promoted anyway (--accept-data-loss) and the loss reported"
        } else {
            "if it cannot, nothing is promoted and the fence is taken back"
        }
    ));
    if let Some((dir, _)) = &prepared.feed {
        out.push_str(&format!(
            "     (what it cannot get by streaming or from the archive is copied from the old primary's pg_wal into {}/pg_wal)\n",
            dir.display()
        ));
    }
    out.push_str("  3. write and read back a row in pgdr_failover_check\n");
    match &prepared.switch {
        Some(p) => out.push_str(&format!("  4. {p}")),
        None => out.push_str("  4. switch: nothing configured ([switch]); move application connections yourself\n"),
    }
    out.push_str("  5. declare the new timeline in the repository as the one `latest` follows; report the RPO\n");
    out
}
