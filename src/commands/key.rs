//! `pgdr key rotate [--rewrap]`, `pgdr key rewrap`, `pgdr key list`.

use anyhow::Result;

use super::Ctx;
use crate::cli::{KeyArgs, KeyCommand};
use crate::exit::Exit;
use crate::rekey::{self, RotateOptions};

pub async fn run(ctx: &Ctx, args: KeyArgs) -> Result<Exit> {
    match args.command {
        KeyCommand::Rotate(a) => {
            let report = rekey::rotate(&ctx.config, &RotateOptions { rewrap: a.rewrap }).await?;
            ctx.print_report(&report);
            let failed = report.rewrap.as_ref().is_some_and(|r| !r.failed.is_empty());
            Ok(if failed { Exit::Failure } else { Exit::Success })
        }
        KeyCommand::Rewrap => {
            let report = rekey::rewrap(&ctx.config).await?;
            ctx.print_report(&report);
            Ok(if report.failed.is_empty() {
                Exit::Success
            } else {
                Exit::Failure
            })
        }
        KeyCommand::List => {
            ctx.print_report(&rekey::list(&ctx.config).await?);
            Ok(Exit::Success)
        }
    }
}
