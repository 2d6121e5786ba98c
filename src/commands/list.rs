//! `pgdr list`: the repository's inventory, newest first.

use anyhow::Result;

use super::Ctx;
use crate::cli::ListArgs;
use crate::exit::Exit;
use crate::repo::{Repo, inventory};

pub async fn run(ctx: &Ctx, _args: ListArgs) -> Result<Exit> {
    let repo = Repo::open(&ctx.config).await?;
    ctx.print_report(&inventory::read(&repo).await?);
    Ok(Exit::Success)
}
