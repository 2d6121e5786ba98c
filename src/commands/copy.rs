//! `pgdr copy [--to NAME] [--backup all|LABEL] [--dry-run]`: bring the repository's
//! copies up to date; the report says what moved and how far each copy is behind.

use anyhow::Result;

use super::Ctx;
use crate::cli::CopyArgs;
use crate::copy::{self, CopyOptions};
use crate::exit::Exit;

pub async fn run(ctx: &Ctx, args: CopyArgs) -> Result<Exit> {
    let opts = CopyOptions {
        to: args.to,
        backup: (args.backup != "all").then_some(args.backup),
        dry_run: args.dry_run,
        jobs: args.jobs.unwrap_or_else(copy::default_jobs).max(1),
    };
    let report = copy::run(&ctx.config, &opts).await?;
    ctx.print_report(&report);
    Ok(Exit::Success)
}
