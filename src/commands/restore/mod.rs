//! `pgdr restore`: flags → options, one restore (logical, or physical with `--to` or
//! `--kind physical`), its report.

mod physical;

use anyhow::Result;

use crate::cli::RestoreArgs;
use crate::commands::Ctx;
use crate::exit::Exit;
use crate::repo::BackupKind;
use crate::restore::logical::{self, LogicalRestoreOptions};

pub async fn run(ctx: &Ctx, args: RestoreArgs) -> Result<Exit> {
    if args.kind == BackupKind::Physical || args.to.is_some() {
        return physical::run(ctx, args).await;
    }
    let opts = LogicalRestoreOptions {
        tables: args
            .tables
            .iter()
            .map(|t| logical::parse_table(t))
            .collect::<Result<Vec<_>>>()?,
        backup: args.backup,
        database: args.database,
        to_database: args.to_database,
        jobs: args.jobs.unwrap_or(1),
        clean: args.clean,
        no_owner: args.no_owner,
        globals: args.globals,
        globals_only: args.globals_only,
    };
    opts.check()?;
    let report = logical::run(&ctx.config, &opts).await?;
    ctx.print_report(&report);
    Ok(Exit::Success)
}
