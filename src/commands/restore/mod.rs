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
    let labelled = args.backup.parse::<crate::repo::BackupLabel>().ok().map(|l| l.kind());
    let kind = match (args.kind, labelled, args.to.is_some()) {
        (Some(asked), Some(has), _) if asked != has => {
            return Err(crate::usage!(
                "backup {} is a {} backup, not a {} one — {}",
                args.backup,
                has,
                asked,
                match has {
                    BackupKind::Physical => "restore it into a data directory with --kind physical --to DIR",
                    BackupKind::Logical =>
                        "restore it into the server of [postgres] url without --kind physical and --to",
                }
            ));
        }
        (Some(kind), _, _) => kind,
        (None, Some(BackupKind::Physical), false) => {
            return Err(crate::usage!(
                "backup {} is a physical backup: restore it into a data directory with --kind physical --to DIR",
                args.backup
            ));
        }
        (None, Some(kind), _) => kind,
        (None, None, true) => BackupKind::Physical,
        (None, None, false) => {
            if !ctx.json {
                println!(
                    "restoring the {} logical backup (the default; --kind physical --to DIR for a physical one)",
                    if args.backup == "latest" { "latest" } else { "chosen" }
                );
            }
            BackupKind::Logical
        }
    };
    if kind == BackupKind::Physical || args.to.is_some() {
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
        tablespace_map: args
            .tablespace_map
            .iter()
            .map(|m| {
                m.split_once('=')
                    .filter(|(n, d)| !n.is_empty() && !d.is_empty())
                    .map(|(n, d)| (n.to_string(), d.to_string()))
                    .ok_or_else(|| crate::usage!("--tablespace-map {m:?}: expected NAME=DIR"))
            })
            .collect::<Result<Vec<_>>>()?,
        no_tablespaces: args.no_tablespaces,
    };
    opts.check()?;
    let report = logical::run(&ctx.config, &opts).await?;
    ctx.print_report(&report);
    Ok(Exit::Success)
}
