//! `pgdr verify`: flags → [`VerifyOptions`], one restore test, its report; a failed
//! test exits 1 after the report is printed.

use anyhow::{Result, anyhow};

use super::Ctx;
use crate::cli::VerifyArgs;
use crate::exit::Exit;
use crate::verify::{self, VerifyOptions};

pub async fn run(ctx: &Ctx, args: VerifyArgs) -> Result<Exit> {
    // A label says its kind (`…-L`, `…-F`): `verify --backup LABEL` needs no more.
    let kind = args
        .kind
        .unwrap_or_else(|| match args.backup.parse::<crate::repo::BackupLabel>() {
            Ok(label) => label.kind(),
            Err(_) => {
                // Restore's default for `latest` is logical: say which one this is.
                if !ctx.json {
                    println!(
                        "verifying the {} physical backup (the default; --kind logical for a logical one)",
                        if args.backup == "latest" { "latest" } else { "chosen" }
                    );
                }
                crate::repo::BackupKind::Physical
            }
        });
    let opts = VerifyOptions {
        backup: args.backup,
        kind,
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
