//! `pgdr wal-search`: typed options from the flags, one search, its report.

use anyhow::Result;

use super::Ctx;
use crate::cli::WalSearchArgs;
use crate::exit::Exit;
use crate::restore::target::parse_target_time;
use crate::walsearch::{self, Change, SearchOptions};

pub async fn run(ctx: &Ctx, args: WalSearchArgs) -> Result<Exit> {
    let opts = options(&args)?;
    let report = walsearch::search(&ctx.config, &opts).await?;
    ctx.print_report(&report);
    Ok(Exit::Success)
}

pub fn options(args: &WalSearchArgs) -> Result<SearchOptions> {
    let mut changes = Vec::new();
    for (on, change) in [
        (args.dropped, Change::Dropped),
        (args.truncated, Change::Truncated),
        (args.deleted, Change::Deleted),
        (args.updated, Change::Updated),
    ] {
        if on {
            changes.push(change);
        }
    }
    if args.any || changes.is_empty() {
        changes = vec![
            Change::Dropped,
            Change::Truncated,
            Change::Rewritten,
            Change::Deleted,
            Change::Updated,
        ];
    }
    let time = |flag: &str, raw: &Option<String>| -> Result<_> {
        raw.as_deref()
            .map(|t| {
                parse_target_time(t).map_err(|_| {
                    crate::usage!("--{flag} {t:?} is not a time with a time zone, e.g. 2026-11-26T02:00:00Z")
                })
            })
            .transpose()
    };
    Ok(SearchOptions {
        tables: args.tables.clone(),
        database: args.database.clone(),
        changes,
        min_rows: args.min_rows,
        since: time("since", &args.since)?,
        until: time("until", &args.until)?,
        timeline: args.timeline,
        work_dir: args.work_dir.clone(),
    })
}
