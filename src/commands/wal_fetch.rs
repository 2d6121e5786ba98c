//! `pgdr wal-fetch %f %p` — PostgreSQL's `restore_command` (see `archive::fetch`),
//! and the detached `wal-prefetch` it starts (see `archive::prefetch`).

use anyhow::Result;

use super::Ctx;
use crate::archive::fetch::{self, FetchError, Fetched};
use crate::cli::{WalFetchArgs, WalPrefetchArgs};
use crate::exit::{self, Exit};
use crate::postgres::WalFile;

/// PostgreSQL's contract (`exit::wal_fetch`): 0 the file is in place; 1 the archive
/// says it does not have it (the end of the archive); 126 anything else, which stops
/// a target recovery instead of letting it promote early and fork a timeline before
/// the data it has not replayed. A standby answers 1 instead and is asked again.
pub async fn run(ctx: &Ctx, args: WalFetchArgs) -> Result<Exit> {
    let Some(file) = WalFile::parse(&args.name) else {
        tracing::debug!("{} is not a WAL file name; nothing to fetch", args.name);
        return Ok(Exit::Failure);
    };
    let standby = fetch::on_standby(&args.path);
    let outcome = fetch::fetch(&ctx.config, &file, &args.path).await;
    let hint = match &outcome {
        Err(FetchError::Damaged(e) | FetchError::WrongCluster(e) | FetchError::Unavailable(e)) => {
            crate::os_error::hint(e)
        }
        Ok(_) => None,
    }
    .map(|h| format!(" ({h})"))
    .unwrap_or_default();
    match &outcome {
        Ok(Fetched::Found) => {}
        Ok(Fetched::Absent) => tracing::debug!("{file} is not in the archive"),
        Err(FetchError::Damaged(e)) => {
            eprintln!("pgdr: error: {e:#} — stopping recovery rather than replaying past it")
        }
        Err(e) if standby => eprintln!("pgdr: error: cannot fetch {file}: {e:#}{hint} — the standby will ask again"),
        Err(e) => eprintln!(
            "pgdr: error: cannot fetch {file} from the archive: {e:#}{hint} — stopping recovery rather than taking this for the end of the archive; fix the repository and start the server again"
        ),
    }
    Ok(exit::wal_fetch(&outcome, standby))
}

/// The detached prefetcher.
pub async fn prefetch(ctx: &Ctx, args: WalPrefetchArgs) -> Result<Exit> {
    crate::archive::prefetch::run(&ctx.config, &args.after, args.segment_size, &args.dir).await?;
    Ok(Exit::Success)
}
