//! `pgdr drill --scenario NAME`: rehearse a scenario on scratch resources and print
//! its measured RTO and RPO against the plan's targets (`crate::drill`).

use anyhow::Result;

use super::Ctx;
use crate::cli::DrillArgs;
use crate::drill::{self, DrillOptions};
use crate::exit::Exit;
use crate::runbook::Runbook;

pub async fn run(ctx: &Ctx, args: DrillArgs) -> Result<Exit> {
    let opts = DrillOptions {
        runbook: Runbook::load(&args.scenario, None)?,
        work_dir: args.work_dir,
        scale: args.scale.max(1),
        copy: args.copy,
        jobs: args.jobs.max(1),
        archive_timeout: args.archive_timeout.max(1),
    };
    let json = ctx.json;
    let mut say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    let report = drill::run(&ctx.config, &opts, &mut say).await?;
    if ctx.json {
        ctx.print_report(&report);
    } else {
        // The steps were printed as they ran.
        println!("{}", report.summary());
    }
    Ok(if report.ok { Exit::Success } else { Exit::Failure })
}
