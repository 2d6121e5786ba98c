//! Exit codes (docs/ARCHITECTURE.md): 0 success, 1 failure, 2 usage or configuration,
//! 126 for wal-fetch to stop a recovery. This is the top of the error arrows: it maps
//! the typed errors of every layer to a code, and nothing below imports it.

use crate::usage::UsageError;

/// The process exit codes pgdr uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    Failure = 1,
    Usage = 2,
    /// wal-fetch only: the archived file is damaged. PostgreSQL treats exit codes above
    /// 125 as fatal and stops recovery, instead of taking "not there" for the end of
    /// the archive and promoting too early.
    AbortRecovery = 126,
}

/// Which exit code an error chain deserves.
pub fn classify(err: &anyhow::Error) -> Exit {
    // Everything RepoError names is the DBA's setup to fix: usage. So is a key this
    // host lacks.
    let setup = err.chain().any(|e| {
        e.is::<UsageError>()
            || e.is::<crate::pipeline::MissingKey>()
            || e.downcast_ref::<crate::repo::RepoError>().is_some_and(|r| r.is_setup())
    });
    if setup { Exit::Usage } else { Exit::Failure }
}

/// What `wal-fetch` answers PostgreSQL: 0 the file is in place; 1 the archive
/// positively does not have it (the end of the archive); 126 anything else, which
/// stops recovery (PostgreSQL treats exit codes above 125 as fatal) instead of letting
/// it promote early; except a standby, which gets 1 for a passing failure and asks
/// again. A damaged file stops even a standby.
pub fn wal_fetch(
    outcome: &Result<crate::archive::fetch::Fetched, crate::archive::fetch::FetchError>,
    standby: bool,
) -> Exit {
    use crate::archive::fetch::{FetchError, Fetched};
    match outcome {
        Ok(Fetched::Found) => Exit::Success,
        Ok(Fetched::Absent) => Exit::Failure,
        Err(FetchError::Damaged(_)) => Exit::AbortRecovery,
        Err(FetchError::WrongCluster(_) | FetchError::Unavailable(_)) if standby => Exit::Failure,
        Err(FetchError::WrongCluster(_) | FetchError::Unavailable(_)) => Exit::AbortRecovery,
    }
}
