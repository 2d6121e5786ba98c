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
    let inputs = runbook.resolve_inputs(&given_inputs(&args.inputs)?)?;
    let state_file = args.state.clone().unwrap_or_else(|| {
        PathBuf::from("/var/lib/pgdr/recover").join(format!("{}-{}.json", ctx.config.cluster, runbook.name))
    });
    let opts = RecoverOptions {
        runbook,
        inputs,
        dry_run: args.dry_run,
        state_file,
        jobs: args.jobs.max(1),
    };
    let prepared = engine::prepare(&ctx.config, &opts).await?;
    if !ctx.json && !opts.dry_run {
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
