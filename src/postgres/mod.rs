//! Everything that talks to PostgreSQL: connection settings (`conn`), its client
//! tools as streaming child processes (`tools`), and catalog queries (`server`).
//! This module never touches storage: it yields and consumes byte streams.

pub mod catalog;
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

/// A database name as a libpq connection string that names exactly that database.
/// Tools take `--dbname` as a connection string when it contains `=`: a database
/// called `host=elsewhere` would send the password to another host, and
/// `dbname=prod` would restore into (and with --clean, over) another database.
pub fn conninfo_dbname(name: &str) -> String {
    format!("dbname='{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The environment a server process pgdr starts (a restored copy, a scratch
/// cluster) gets: only what PostgreSQL and its restore_command need. Never the
/// repository key, passwords or webhook URLs; S3 credentials only when its
/// restore_command must reach S3.
pub fn server_env(with_aws: bool) -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            matches!(k.as_str(), "PATH" | "HOME" | "LANG" | "TZ" | "TMPDIR" | "PGDR_LOG")
                || k.starts_with("LC_")
                || (with_aws && k.starts_with("AWS_"))
                // The trust the DBA's own pgdr commands have (rustls reads these as
                // the system's roots): a restored server's wal-fetch keeps it.
                || (with_aws && matches!(k.as_str(), "SSL_CERT_FILE" | "SSL_CERT_DIR"))
        })
        .collect()
}

#[cfg(test)]
mod conninfo_tests {
    #[test]
    fn database_names_stay_names() {
        assert_eq!(super::conninfo_dbname("app"), "dbname='app'");
        assert_eq!(super::conninfo_dbname("host=x"), "dbname='host=x'");
        assert_eq!(super::conninfo_dbname(r"a'b\c"), r"dbname='a\'b\\c'");
    }
}
