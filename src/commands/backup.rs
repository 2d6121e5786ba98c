//! `pgdr backup`: flags → [`BackupOptions`], one backup, its report.

use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use crate::backup::{self, BackupOptions};
use crate::cli::BackupArgs;
use crate::exit::Exit;

pub async fn run(ctx: &Ctx, args: BackupArgs) -> Result<Exit> {
    let opts = BackupOptions {
        kind: args.kind,
        method: args.method,
        databases: args.databases,
        tags: args.tags,
        keep: args.keep,
        jobs: args.jobs.unwrap_or(BackupOptions::default().jobs),
        spread_checkpoint: args.spread_checkpoint,
        lock_wait: Duration::from_secs(args.lock_wait),
        backup_type: args.backup_type,
        from_standby: args.from_standby,
    }
    .validate()?;
    let report = backup::run(&ctx.config, &opts).await?;
    ctx.print_report(&report);
    Ok(Exit::Success)
}
