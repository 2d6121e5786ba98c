//! `pgdr switch --to HOST:PORT`: the plan, a confirmation, the switch (PgBouncer
//! and/or the hook), its timestamped report, a notification; exit 1 if it failed.

use anyhow::Result;

use super::Ctx;
use crate::cli::SwitchArgs;
use crate::exit::Exit;
use crate::switch::{self, SwitchOptions};

pub async fn run(ctx: &Ctx, args: SwitchArgs) -> Result<Exit> {
    let opts = SwitchOptions {
        to: args.to.parse()?,
        from: args.old.as_deref().map(str::parse).transpose()?,
        dry_run: args.dry_run,
    };
    let mut plan = switch::plan(&ctx.config, &opts)?;
    let checks = switch::preflight(&ctx.config, &mut plan).await;
    if !ctx.json {
        print!("{checks}{plan}");
    }
    checks.require("the switch")?;
    if !opts.dry_run && !ctx.confirm(args.yes, &format!("Switch application connections to {}?", opts.to))? {
        eprintln!("pgdr: nothing was changed");
        return Ok(Exit::Failure);
    }
    if !opts.dry_run {
        // Cut off half-way, PgBouncer would stay paused.
        crate::process::hold_signals("the switch");
    }
    let started = chrono::Utc::now();
    let report = switch::run(&ctx.config, &plan, opts.dry_run).await?;
    if !opts.dry_run {
        let what = match &report.error {
            None => format!(
                "switched application connections to {} in {:.1} s",
                report.to, report.seconds
            ),
            Some(e) => format!("switch to {} FAILED: {e}", report.to),
        };
        crate::notify::send(&ctx.config, &format!("pgdr: {what}")).await;
        crate::repo::verification::store_event_report(&ctx.config, "switch", started, &report).await;
    }
    ctx.print_report(&report);
    Ok(if report.ok { Exit::Success } else { Exit::Failure })
}
