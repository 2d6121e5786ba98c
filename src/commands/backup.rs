//! `pgdr backup`: flags → [`BackupOptions`], one backup, its report.

use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use crate::backup::{self, BackupOptions};
use crate::cli::BackupArgs;
use crate::exit::Exit;

pub async fn run(ctx: &Ctx, args: BackupArgs) -> Result<Exit> {
    let opts = BackupOptions::new(
        args.kind,
        args.method,
        args.databases,
        args.tags,
        args.keep,
        args.jobs,
        args.spread_checkpoint,
        Duration::from_secs(args.lock_wait),
    )?;
    let report = backup::run(&ctx.config, &opts).await?;
    ctx.print_report(&report);
    Ok(Exit::Success)
}
