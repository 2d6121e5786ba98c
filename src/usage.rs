//! An error that is the DBA's input or configuration to fix (exit 2), as opposed to
//! an operation that failed (exit 1). Any layer may raise one; only the CLI maps it to
//! its exit code (`exit::classify`).

use std::fmt;

/// Marks an error as the user's input or configuration being wrong. Wrap it in
/// `anyhow` like any other error (`usage!`).
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
        anyhow::Error::new($crate::usage::UsageError(format!($($arg)*)))
    };
}
