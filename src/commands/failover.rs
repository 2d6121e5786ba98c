//! `pgdr failover --to HOST:PORT`: the plan, a confirmation, fence → promote → verify →
//! switch → RPO; the report goes to `verifications/` and `--json`, and is notified.

use anyhow::Result;

use super::Ctx;
use crate::cli::FailoverArgs;
use crate::exit::Exit;
use crate::failover::{self, FailoverOptions};
use crate::switch::{self, SwitchOptions};

pub async fn run(ctx: &Ctx, args: FailoverArgs) -> Result<Exit> {
    let opts = FailoverOptions {
        to: args.to.parse()?,
        old: args.old.as_deref().map(str::parse).transpose()?,
        old_data_dir: args.old_data_dir.map(|d| std::path::absolute(&d).unwrap_or(d)),
        dry_run: args.dry_run,
    };
    let s = &ctx.config.switch;
    let switch_plan = if s.pgbouncer_admin_url.is_some() || s.hook.is_some() {
        Some(switch::plan(
            &ctx.config,
            &SwitchOptions {
                to: opts.to.clone(),
                from: opts.old.clone(),
                dry_run: opts.dry_run,
            },
        )?)
    } else {
        None
    };
    if !ctx.json {
        print!("{}", failover::plan_text(&opts, switch_plan.as_ref()));
    }
    if !opts.dry_run && !ctx.confirm(args.yes, &format!("Fail over to {}?", opts.to))? {
        eprintln!("pgdr: nothing was changed");
        return Ok(Exit::Failure);
    }
    if !opts.dry_run {
        // Cut off half-way, PgBouncer would stay paused.
        crate::process::hold_signals("the failover");
    }
    let started = chrono::Utc::now();
    let report = failover::run(&ctx.config, &opts, switch_plan.as_ref()).await?;
    if !opts.dry_run {
        failover::store_report(&ctx.config, "failover", started, &report).await;
        let what = match &report.error {
            None => format!(
                "failover to {} done in {:.1} s, RPO {} bytes",
                report.new_primary,
                report.seconds,
                report
                    .rpo_bytes
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "unknown".into())
            ),
            Some(e) => format!("failover to {} FAILED: {e}", report.new_primary),
        };
        crate::notify::send(&ctx.config, &format!("pgdr: {what}")).await;
    }
    ctx.print_report(&report);
    Ok(if report.ok { Exit::Success } else { Exit::Failure })
}
