//! `pgdr check`: every pre-flight check, one line each; exit 1 if any failed.

use anyhow::Result;

use super::Ctx;
use crate::check::{self, CheckOptions};
use crate::cli::CheckArgs;
use crate::exit::Exit;

pub async fn run(ctx: &Ctx, args: CheckArgs) -> Result<Exit> {
    let report = check::run(
        &ctx.config,
        &CheckOptions {
            clean_orphans: args.clean_orphans,
        },
    )
    .await;
    ctx.print_report(&report);
    Ok(if report.ok { Exit::Success } else { Exit::Failure })
}
