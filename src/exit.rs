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

/// Which exit code an error chain deserves.
pub fn classify(err: &anyhow::Error) -> Exit {
    if err.chain().any(|e| e.is::<UsageError>()) {
        Exit::Usage
    } else {
        Exit::Failure
    }
}
