//! `pgdr wal-push %p` — PostgreSQL's `archive_command`. Exit 0 only once the file is
//! durably in the repository (see `archive::push` and `archive::spool`).

use anyhow::Result;

use super::Ctx;
use crate::archive;
use crate::cli::{WalPushAheadArgs, WalPushArgs};
use crate::exit::Exit;

pub async fn run(ctx: &Ctx, args: WalPushArgs) -> Result<Exit> {
    archive::push::archive(&ctx.config, &args.path).await?;
    Ok(Exit::Success)
}

/// The detached pusher (`wal-push-ahead`, started by `wal-push`).
pub async fn push_ahead(ctx: &Ctx, args: WalPushAheadArgs) -> Result<Exit> {
    archive::spool::drain(&ctx.config, &args.wal_dir).await?;
    Ok(Exit::Success)
}
