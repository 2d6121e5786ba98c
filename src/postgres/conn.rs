//! Connection settings. They come from `[postgres] url` (a libpq URL or key=value
//! string) or, without one, from libpq's own variables (PGHOST, PGPORT, PGUSER,
//! PGPASSWORD, PGDATABASE). The same settings reach pgdr's own connections
//! (tokio-postgres, which also gets the password from .pgpass here) and the child
//! tools (through environment variables: a password never appears in argv).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, NoTls};

use crate::usage;

#[derive(Clone)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    pub dbname: String,
    pub sslmode: Option<String>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({})", self.describe())
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn os_user() -> String {
    // SAFETY: geteuid has no preconditions; getpwuid's result is copied out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return "postgres".to_string();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}

impl PgTarget {
    pub fn from_config(url: Option<&str>) -> Result<PgTarget> {
        match url {
            Some(url) => PgTarget::from_url(url),
            None => Ok(PgTarget::from_env()),
        }
    }

    fn from_env() -> PgTarget {
        let user = env("PGUSER").unwrap_or_else(os_user);
        let host = env("PGHOST").unwrap_or_else(|| {
            if std::path::Path::new("/var/run/postgresql").is_dir() {
                "/var/run/postgresql".to_string()
            } else {
                "localhost".to_string()
            }
        });
        PgTarget {
            host,
            port: env("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432),
            dbname: env("PGDATABASE").unwrap_or_else(|| user.clone()),
            user,
            password: env("PGPASSWORD"),
            sslmode: env("PGSSLMODE"),
        }
    }

    fn from_url(url: &str) -> Result<PgTarget> {
        // Never echo the URL: it may hold a password.
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| usage!("[postgres] url is not a valid connection string: {e}"))?;
        let host = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect::<Vec<_>>();
        let host = if host.is_empty() {
            PgTarget::from_env().host
        } else {
            host.join(",")
        };
        let user = config
            .get_user()
            .map(str::to_string)
            .unwrap_or_else(|| env("PGUSER").unwrap_or_else(os_user));
        let sslmode = match config.get_ssl_mode() {
            SslMode::Disable => Some("disable".to_string()),
            SslMode::Require => Some("require".to_string()),
            _ => env("PGSSLMODE"),
        };
        Ok(PgTarget {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            dbname: config.get_dbname().map(str::to_string).unwrap_or_else(|| user.clone()),
            password: config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()),
            user,
            sslmode,
        })
    }

    /// The same credentials, pointed at another server (a restored copy).
    pub fn with_address(&self, host: &str, port: u16) -> PgTarget {
        PgTarget {
            host: host.to_string(),
            port,
            ..self.clone()
        }
    }

    /// host:port and user, for messages (no password).
    pub fn describe(&self) -> String {
        format!("{}:{} as {}", self.host, self.port, self.user)
    }

    /// The password a replication connection (a standby's walreceiver) would use:
    /// from the settings, or the password file's entry for the `replication` database.
    pub fn password_for_replication(&self) -> Option<String> {
        self.password_for("replication")
    }

    /// The password from the settings, or else from the password file.
    fn password_for(&self, dbname: &str) -> Option<String> {
        self.password
            .clone()
            .or_else(|| pgpass_lookup(&self.host, self.port, dbname, &self.user))
    }

    /// Connect pgdr itself to `dbname` (the configured database if `None`). A failure
    /// is a [`ConnectFailed`], which tells a refused login from a server not there yet.
    pub async fn connect(&self, dbname: Option<&str>) -> Result<Client> {
        let dbname = dbname.unwrap_or(&self.dbname);
        let mut config = tokio_postgres::Config::new();
        for host in self.host.split(',') {
            if host.starts_with('/') {
                config.host_path(host);
            } else {
                config.host(host);
            }
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(dbname)
            .application_name("pgdr")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = self.password_for(dbname) {
            config.password(password);
        }
        let failed = |e: tokio_postgres::Error| {
            anyhow::Error::new(ConnectFailed {
                message: format!(
                    "cannot connect to PostgreSQL at {} (database {dbname:?}): {} — is the server running? check [postgres] url",
                    self.describe(),
                    one_line(&e)
                ),
                code: e.code().cloned(),
            })
        };
        // TLS as libpq's sslmode says: off for `disable`, otherwise offered (`prefer`)
        // or required (`require`). Like libpq without a root certificate, the server
        // certificate is not verified; verify-ca/verify-full are left to libpq's tools.
        if let Some(mode @ ("verify-ca" | "verify-full")) = self.sslmode.as_deref() {
            return Err(usage!(
                "sslmode={mode}: pgdr's own connection cannot verify the server certificate yet — use sslmode=require (encrypted; PostgreSQL's tools still verify per libpq's settings)"
            ));
        }
        if self.sslmode.as_deref() == Some("disable") {
            config.ssl_mode(SslMode::Disable);
            let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("postgres connection ended: {e}");
                }
            });
            return Ok(client);
        }
        config.ssl_mode(if self.sslmode.as_deref() == Some("require") {
            SslMode::Require
        } else {
            SslMode::Prefer
        });
        let (client, connection) = config.connect(tls_connector()).await.map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Environment for a child tool connecting to `dbname`. Everything goes through
    /// libpq's variables, so no secret reaches the command line.
    pub fn child_env(&self, dbname: Option<&str>) -> Vec<(String, String)> {
        let mut vars = vec![
            ("PGHOST".to_string(), self.host.clone()),
            ("PGPORT".to_string(), self.port.to_string()),
            ("PGUSER".to_string(), self.user.clone()),
            ("PGDATABASE".to_string(), dbname.unwrap_or(&self.dbname).to_string()),
            ("PGAPPNAME".to_string(), "pgdr".to_string()),
        ];
        if let Some(password) = &self.password {
            vars.push(("PGPASSWORD".to_string(), password.clone()));
        }
        if let Some(mode) = &self.sslmode {
            vars.push(("PGSSLMODE".to_string(), mode.clone()));
        }
        vars
    }
}

/// A rustls connector that encrypts without verifying the server's certificate, as
/// libpq does for sslmode=prefer/require.
fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct Unverified(std::sync::Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for Unverified {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Unverified(provider)))
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// The full error chain of a driver error on one line.
pub fn one_line(e: &tokio_postgres::Error) -> String {
    let mut msg = e.to_string();
    if let Some(db) = e.as_db_error() {
        msg = format!("{}: {}", db.severity(), db.message());
    } else {
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
    }
    msg
}

/// Look a password up in PGPASSFILE or ~/.pgpass, libpq's way (first match wins,
/// `*` matches anything, `\` escapes).
fn pgpass_lookup(host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let path = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host.split(',').next().unwrap_or(host)
    };
    let port = port.to_string();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() != 5 {
            continue;
        }
        let matches = |field: &str, value: &str| field == "*" || field == value;
        if matches(&fields[0], host)
            && matches(&fields[1], &port)
            && matches(&fields[2], dbname)
            && matches(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("non-empty").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            _ => fields.last_mut().expect("non-empty").push(c),
        }
    }
    fields
}

/// `map_err` helper: a driver error with what pgdr was doing, on one line.
pub fn db_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> anyhow::Error {
    let what = what.into();
    move |e| anyhow!("{what}: {}", one_line(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_and_child_env() {
        let t = PgTarget::from_url("postgresql://alice:s3cret@127.0.0.1:6543/app").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str(), t.dbname.as_str()),
            ("127.0.0.1", 6543, "alice", "app")
        );
        assert!(!t.describe().contains("s3cret"));
        assert!(!format!("{t:?}").contains("s3cret"));
        let env = t.child_env(Some("other"));
        assert!(env.contains(&("PGDATABASE".to_string(), "other".to_string())));
        assert!(env.contains(&("PGPASSWORD".to_string(), "s3cret".to_string())));
    }

    #[test]
    fn pgpass_fields_unescape() {
        assert_eq!(split_pgpass(r"h:5432:*:u:pa\:ss"), vec!["h", "5432", "*", "u", "pa:ss"]);
    }
}

/// A connection attempt that failed, with the server's SQLSTATE if it answered.
#[derive(Debug)]
pub struct ConnectFailed {
    message: String,
    code: Option<tokio_postgres::error::SqlState>,
}

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectFailed {}

impl ConnectFailed {
    /// The server is up and refused the login (pg_hba, password): waiting will not
    /// help.
    pub fn is_refused_login(&self) -> bool {
        use tokio_postgres::error::SqlState;
        self.code
            .as_ref()
            .is_some_and(|c| *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION || *c == SqlState::INVALID_PASSWORD)
    }
}
