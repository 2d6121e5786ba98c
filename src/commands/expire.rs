//! `pgdr expire [--dry-run]`: apply `[retention]` and print what was removed and what
//! was kept and why; or set and clear keep marks (`--keep LABEL`, `--unkeep LABEL`).

use anyhow::Result;

use super::Ctx;
use crate::cli::ExpireArgs;
use crate::exit::Exit;
use crate::repo::BackupLabel;
use crate::retention::{self, ExpireOptions};
use crate::usage;

pub async fn run(ctx: &Ctx, args: ExpireArgs) -> Result<Exit> {
    if !args.keep.is_empty() || !args.unkeep.is_empty() {
        let parse = |raw: &Vec<String>| {
            raw.iter()
                .map(|r| r.parse::<BackupLabel>().map_err(|e: String| usage!("{e}")))
                .collect::<Result<Vec<_>>>()
        };
        let report = retention::mark(&ctx.config, &parse(&args.keep)?, &parse(&args.unkeep)?).await?;
        ctx.print_report(&report);
        return Ok(Exit::Success);
    }
    let report = retention::expire(&ctx.config, &ExpireOptions { dry_run: args.dry_run }).await?;
    for (label, why) in &report.damaged {
        eprintln!(
            "pgdr: warning: backup {label} has a damaged manifest ({why}); it is kept, and no WAL is removed while it is there"
        );
    }
    ctx.print_report(&report);
    Ok(Exit::Success)
}
