//! `pgdr metrics`: the scheduler's /metrics, printed once (for a textfile collector).

use anyhow::Result;

use super::Ctx;
use crate::cli::MetricsArgs;
use crate::exit::Exit;
use crate::repo::Repo;
use crate::schedule::{history, metrics};

pub async fn run(ctx: &Ctx, args: MetricsArgs) -> Result<Exit> {
    let repo = Repo::open(&ctx.config).await?;
    let path = args.history.map(Ok).unwrap_or_else(|| ctx.config.history_file())?;
    let jobs = history::states(&history::read(&path));
    print!("{}", metrics::render(&ctx.config, &repo, &jobs).await);
    Ok(Exit::Success)
}
