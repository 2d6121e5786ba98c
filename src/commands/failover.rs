//! `pgdr failover --to HOST:PORT`: every check first (the standby, the fence, the
//! switch), the plan with those checks, a refusal if one failed, a confirmation, then
//! fence → catch up → promote → verify → switch → declare → RPO; the report goes to
//! `verifications/` and `--json`, and is notified.

use anyhow::Result;

use super::Ctx;
use crate::cli::FailoverArgs;
use crate::exit::Exit;
use crate::failover::{self, FailoverOptions};

pub async fn run(ctx: &Ctx, args: FailoverArgs) -> Result<Exit> {
    let opts = FailoverOptions {
        to: args.to.parse()?,
        old: args.old.as_deref().map(str::parse).transpose()?,
        old_data_dir: args.old_data_dir.map(|d| std::path::absolute(&d).unwrap_or(d)),
        standby_data_dir: args.standby_data_dir.map(|d| std::path::absolute(&d).unwrap_or(d)),
        old_primary_is_down: args.old_primary_is_down,
        accept_data_loss: args.accept_data_loss,
        dry_run: args.dry_run,
    };
    let prepared = failover::prepare(&ctx.config, &opts).await?;
    if !ctx.json {
        print!("{}", failover::plan_text(&ctx.config, &opts, &prepared));
    }
    prepared.checks.require("failover")?;
    if !opts.dry_run && !ctx.confirm(args.yes, &format!("Fail over to {}?", opts.to))? {
        eprintln!("pgdr: nothing was changed");
        return Ok(Exit::Failure);
    }
    if !opts.dry_run {
        // Cut off half-way, PgBouncer would stay paused.
        crate::process::hold_signals("the failover");
    }
    let started = chrono::Utc::now();
    let report = failover::execute(&ctx.config, &opts, prepared).await;
    if !opts.dry_run {
        crate::repo::verification::store_event_report(&ctx.config, "failover", started, &report).await;
        let what = match &report.error {
            None => format!(
                "failover to {} done in {:.1} s, RPO {}",
                report.new_primary,
                report.seconds,
                report
                    .rpo_bytes
                    .map(|b| format!("{b} bytes"))
                    .unwrap_or_else(|| "unknown".into())
            ),
            Some(e) => format!("failover to {} FAILED: {e}", report.new_primary),
        };
        crate::notify::send(&ctx.config, &format!("pgdr: {what}")).await;
    }
    ctx.print_report(&report);
    Ok(if report.ok { Exit::Success } else { Exit::Failure })
}
