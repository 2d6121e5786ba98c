//! `pgdr recover --scenario NAME`: a disaster scenario's runbook for real. The plan
//! first (which backup, which WAL, which servers are made where, what is switched),
//! a confirmation unless `--yes`, then the steps with a timestamped log; the report
//! goes to `verifications/`, `[notify]` and `--json`. Run again after a failure or
//! an interruption, it resumes from its state file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;

use super::Ctx;
use crate::cli::{RecoverArgs, ScenarioInputs};
use crate::exit::Exit;
use crate::runbook::Runbook;
use crate::runbook::engine::{self, RecoverOptions};

/// The flags given, as runbook inputs.
pub fn given_inputs(i: &ScenarioInputs) -> Result<BTreeMap<String, String>> {
    let mut given = BTreeMap::new();
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| std::path::absolute(p).unwrap_or(p.clone()).display().to_string())
    };
    let pairs = [
        ("target_time", i.target_time.clone()),
        ("data_dir", path(&i.data_dir)),
        ("port", i.port.map(|p| p.to_string())),
        ("listen", i.listen.clone()),
        ("standby_data_dir", path(&i.standby_data_dir)),
        ("standby_port", i.standby_port.map(|p| p.to_string())),
        ("tables", i.tables.clone()),
        ("database", i.database.clone()),
        ("scratch_dir", path(&i.scratch_dir)),
        ("old_data_dir", path(&i.old_data_dir)),
        ("restore_as", i.restore_as.clone()),
        ("old_primary_is_down", i.old_primary_is_down.then(|| "yes".to_string())),
    ];
    for (k, v) in pairs {
        if let Some(v) = v {
            given.insert(k.to_string(), v);
        }
    }
    for s in &i.set {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| crate::usage!("--set {s:?}: expected NAME=VALUE"))?;
        given.insert(k.trim().to_string(), v.to_string());
    }
    Ok(given)
}

pub async fn run(ctx: &Ctx, args: RecoverArgs) -> Result<Exit> {
    let runbook = Runbook::load(&args.scenario, None)?;
    let mut given = given_inputs(&args.inputs)?;
    let mut found = None;
    if args.find.asked() {
        if given.contains_key("target_time") {
            return Err(crate::usage!(
                "--target-time and --dropped/--truncated/--deleted/--updated both name the moment: give one"
            ));
        }
        if !runbook.inputs.contains_key("target_time") {
            return Err(crate::usage!(
                "the {} runbook takes no recovery target: --dropped/--truncated/--deleted/--updated are for data-loss",
                runbook.name
            ));
        }
        let m = find_loss(ctx, &args, &given).await?;
        given.insert(
            "target_time".into(),
            format!("{}{}", crate::restore::target::BEFORE_LSN, m.target.lsn),
        );
        found = Some(m);
    }
    let inputs = runbook.resolve_inputs(&given)?;
    let state_file = args.state.clone().unwrap_or_else(|| {
        PathBuf::from("/var/lib/pgdr/recover").join(format!("{}-{}.json", ctx.config.cluster, runbook.name))
    });
    let opts = RecoverOptions {
        runbook,
        inputs,
        dry_run: args.dry_run,
        state_file,
        jobs: args.jobs.max(1),
        resume: args.resume,
    };
    let prepared = engine::prepare(&ctx.config, &opts).await?;
    if !ctx.json && !opts.dry_run {
        if let Some(m) = &found {
            println!(
                "wal-search found the loss: xid {} committed {} at {} (timeline {}) — {} in database {:?}: {}",
                m.xid,
                m.commit_time.format("%Y-%m-%d %H:%M:%S%.6fZ"),
                m.commit_lsn,
                m.timeline,
                m.table,
                m.database,
                m.what()
            );
            println!(
                "recovery stops just before it (--target-lsn {} --target-exclusive)",
                m.commit_lsn
            );
        }
        println!("{} ({}) — the plan:", opts.runbook.title, opts.runbook.source);
        print!("{prepared}");
        if prepared.resumed > 0 {
            println!(
                "resuming: {} of {} steps were done by an earlier run ({})",
                prepared.resumed,
                opts.runbook.steps.len(),
                opts.state_file.display()
            );
        }
    }
    if !opts.dry_run && !ctx.confirm(args.yes, &format!("Run the {} recovery?", opts.runbook.name))? {
        eprintln!("pgdr: nothing was changed");
        return Ok(Exit::Failure);
    }
    if !opts.dry_run {
        // Cut off half-way, PgBouncer could stay paused; a second Ctrl-C still stops.
        crate::process::hold_signals("the recovery");
    }
    let json = ctx.json;
    let mut say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    let report = engine::execute(&ctx.config, &opts, prepared, &mut say).await?;
    if ctx.json || opts.dry_run {
        ctx.print_report(&report);
    } else {
        // The steps were printed as they ran.
        println!("{}", report.summary());
    }
    Ok(if report.ok { Exit::Success } else { Exit::Failure })
}

/// The one transaction the search names; several, none, or an ambiguous one is for
/// the DBA to decide, with the candidates listed.
async fn find_loss(ctx: &Ctx, args: &RecoverArgs, given: &BTreeMap<String, String>) -> Result<crate::walsearch::Match> {
    use crate::walsearch::{Change, SearchOptions};
    let f = &args.find;
    let tables: Vec<String> = given
        .get("tables")
        .map(|t| {
            t.split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if tables.is_empty() {
        return Err(crate::usage!(
            "name the table(s) whose loss to find with --table schema.name"
        ));
    }
    let mut changes = Vec::new();
    for (on, c) in [
        (f.dropped, Change::Dropped),
        (f.truncated, Change::Truncated),
        (f.deleted, Change::Deleted),
        (f.updated, Change::Updated),
    ] {
        if on {
            changes.push(c);
        }
    }
    let since = f
        .since
        .as_deref()
        .map(|t| {
            crate::restore::target::parse_target_time(t)
                .map_err(|_| crate::usage!("--since {t:?} is not a time with a time zone, e.g. 2026-11-26T02:00:00Z"))
        })
        .transpose()?;
    let opts = SearchOptions {
        tables,
        database: given.get("database").cloned(),
        changes,
        min_rows: f.min_rows,
        since,
        until: None,
        timeline: None,
        work_dir: None,
    };
    let report = crate::walsearch::search(&ctx.config, &opts).await?;
    let candidates: Vec<&crate::walsearch::Match> = report
        .matches
        .iter()
        .filter(|m| f.before_xid.is_none_or(|x| m.xid == x))
        .collect();
    let list = |ms: &[&crate::walsearch::Match]| {
        ms.iter()
            .map(|m| {
                format!(
                    "xid {} at {} ({}: {})",
                    m.xid,
                    m.commit_time.format("%Y-%m-%d %H:%M:%SZ"),
                    m.table,
                    m.what()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match candidates.as_slice() {
        [] if f.before_xid.is_some() => Err(crate::usage!(
            "no matching transaction has xid {} — the matches: {}",
            f.before_xid.unwrap_or_default(),
            list(&report.matches.iter().collect::<Vec<_>>())
        )),
        [] => Err(crate::usage!(
            "wal-search found no such transaction in the archived WAL ({} segment(s) from {}){} — give --target-time, or widen the search with --since",
            report.searched.segments,
            report.searched.from_lsn,
            if report.warnings.is_empty() {
                String::new()
            } else {
                format!(" [{}]", report.warnings.join("; "))
            }
        )),
        [one] if one.ambiguous.is_none() => Ok((*one).clone()),
        [one] => Err(crate::usage!(
            "the transaction found is ambiguous: {} — see `pgdr wal-search`, then give --target-time",
            one.ambiguous.clone().unwrap_or_default()
        )),
        many => Err(crate::usage!(
            "{} transactions match: {} — choose the one to stop before with --before-xid",
            many.len(),
            list(many)
        )),
    }
}
