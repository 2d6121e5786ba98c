//! `pgdr list`: the repository's inventory, newest first.

use anyhow::Result;

use super::Ctx;
use crate::cli::ListArgs;
use crate::exit::Exit;
use crate::repo::{Repo, inventory};

pub async fn run(ctx: &Ctx, args: ListArgs) -> Result<Exit> {
    if args.restore_points {
        ctx.print_report(&crate::walsearch::restore_points(&ctx.config, args.timeline).await?);
        return Ok(Exit::Success);
    }
    let repo = Repo::open(&ctx.config).await?;
    if args.verifications {
        ctx.print_report(&crate::repo::verification::history(&repo, args.limit).await?);
        return Ok(Exit::Success);
    }
    ctx.print_report(&inventory::read(&repo).await?);
    Ok(Exit::Success)
}
