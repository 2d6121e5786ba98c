//! `pgdr verify`: flags → [`VerifyOptions`], one restore test, its report; a failed
//! test exits 1 after the report is printed.

use anyhow::{Result, anyhow};

use super::Ctx;
use crate::cli::VerifyArgs;
use crate::exit::Exit;
use crate::verify::{self, VerifyOptions};

pub async fn run(ctx: &Ctx, args: VerifyArgs) -> Result<Exit> {
    let opts = VerifyOptions {
        backup: args.backup,
        kind: args.kind,
        jobs: args.jobs,
    };
    let outcome = verify::run(&ctx.config, &opts).await?;
    ctx.print_report(&outcome);
    if outcome.stored.ok {
        Ok(Exit::Success)
    } else {
        Err(anyhow!(
            "restore test of {} failed: {}",
            outcome.stored.label,
            outcome.first_failure()
        ))
    }
}
