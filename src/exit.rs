//! Exit codes, as documented in DESIGN.md: 0 success, 1 failure, 2 usage or configuration.

use std::fmt;

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

/// Marks an error as the user's input or configuration being wrong (exit 2), as opposed
/// to an operation that failed (exit 1). Wrap it in `anyhow` like any other error.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand: `return Err(usage!("..."))`.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::exit::UsageError(format!($($arg)*)))
    };
}

// Errors cross the library as `anyhow` chains with typed errors inside; this is the one
// place that looks into them. Callers ask a question ("was it not found?"), they do
// not downcast.

/// The storage error in the chain, if any.
pub fn storage_error(err: &anyhow::Error) -> Option<&crate::storage::StorageError> {
    err.chain()
        .find_map(|e| e.downcast_ref::<crate::storage::StorageError>())
}

/// Storage positively said the object is not there.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    matches!(storage_error(err), Some(crate::storage::StorageError::NotFound(_)))
}

/// A create-if-absent put found the object there.
pub fn is_already_exists(err: &anyhow::Error) -> bool {
    matches!(storage_error(err), Some(crate::storage::StorageError::AlreadyExists(_)))
}

/// A stored object failed its integrity checks (`pipeline::Damaged`).
pub fn is_damaged(err: &anyhow::Error) -> bool {
    chain_has::<crate::pipeline::Damaged>(err)
}

/// A stored object was sealed with a key this host does not hold.
pub fn is_missing_key(err: &anyhow::Error) -> bool {
    chain_has::<crate::pipeline::MissingKey>(err)
}

/// An error of type `T` anywhere in the chain: for a module's own small error types
/// (wal-fetch's `WrongCluster`), so the looking-into stays here.
pub fn chain_has<T: std::error::Error + Send + Sync + 'static>(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<T>())
}

/// The repository did not answer (as opposed to a bad object).
pub fn is_unreachable(err: &anyhow::Error) -> bool {
    use crate::storage::StorageError;
    matches!(
        storage_error(err),
        Some(StorageError::Unreachable(_) | StorageError::Transient(_) | StorageError::Interrupted { .. })
    )
}

/// A pipe to a child closed early (the child ended; its exit status says how).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// PostgreSQL is up and refused the login: waiting will not help.
pub fn is_refused_login(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<crate::postgres::conn::ConnectFailed>()
            .is_some_and(|c| c.is_refused_login())
    })
}

/// A local filesystem that cannot take what is written: full, over quota, read-only.
/// Asking the repository again does not help.
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|n| [libc::ENOSPC, libc::EDQUOT, libc::EROFS].contains(&n))
    })
}

/// This process ran out of file descriptors (EMFILE): its own limit, which waiting
/// does not raise.
pub fn is_out_of_files(err: &anyhow::Error) -> bool {
    has_os_error(err, libc::EMFILE)
}

/// An I/O error `code` anywhere in the chain, or its text in an error that kept only
/// the text.
fn has_os_error(err: &anyhow::Error, code: i32) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|n| n == code)
    }) || format!("{err:#}").contains(&format!("(os error {code})"))
}

/// The next step for an error, when its cause says more than its text does.
pub fn hint(err: &anyhow::Error) -> Option<&'static str> {
    if is_out_of_files(err) {
        Some("out of file descriptors: raise pgdr's open-file limit (`ulimit -n`, systemd `LimitNOFILE=`)")
    } else if has_os_error(err, libc::ENFILE) {
        Some("the system is out of file descriptors (fs.file-max): close what leaks them, or raise the limit")
    } else {
        None
    }
}

/// The storage error a reader carried through `io::Error` (a stream that broke off
/// while it was read), given back as itself; any other I/O error unchanged.
pub fn into_storage_error(err: std::io::Error) -> Result<crate::storage::StorageError, std::io::Error> {
    if !err.get_ref().is_some_and(|e| e.is::<crate::storage::StorageError>()) {
        return Err(err);
    }
    match err.into_inner().map(|e| e.downcast::<crate::storage::StorageError>()) {
        Some(Ok(storage)) => Ok(*storage),
        _ => Err(std::io::Error::other("a storage error that could not be unpacked")),
    }
}

/// The `SealError` inside an I/O error (a decrypting reader's), if that is what it is.
pub fn seal_error(err: &std::io::Error) -> Option<&crate::pipeline::seal::SealError> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<crate::pipeline::seal::SealError>())
}

/// A panic's message, whatever its payload type.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
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
