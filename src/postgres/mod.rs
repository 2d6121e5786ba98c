//! Everything that talks to PostgreSQL: connection settings (`conn`), its client
//! tools as streaming child processes (`tools`), and catalog queries (`server`).
//! This module never touches storage: it yields and consumes byte streams.

pub mod conn;
pub mod datadir;
pub mod recovery;
pub mod server;
pub mod tools;
pub mod wal;

pub use conn::PgTarget;
pub use server::{ServerInfo, TableRows};
pub use tools::PgTools;
pub use wal::{Lsn, Segment, TimelineId, WalFile};

/// Quote an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
