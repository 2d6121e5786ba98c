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
    /// The CA certificates (PEM) that verify-ca/verify-full check the server against;
    /// `system` for the system's roots. libpq's default: ~/.postgresql/root.crt.
    pub sslrootcert: Option<String>,
    /// libpq's `passfile` (or `PGPASSFILE`): where passwords are looked up, instead
    /// of ~/.pgpass.
    pub passfile: Option<String>,
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
    let me = crate::process::me();
    let name = crate::process::user_name(me);
    // No passwd entry: libpq would fail too; "postgres" is the likely login.
    if name == me.to_string() {
        "postgres".to_string()
    } else {
        name
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
            sslrootcert: env("PGSSLROOTCERT"),
            passfile: env("PGPASSFILE"),
        }
    }

    fn from_url(url: &str) -> Result<PgTarget> {
        // tokio-postgres knows neither verify-ca/verify-full nor sslrootcert: pgdr
        // takes libpq's TLS parameters out and handles them itself.
        let (url, tls) = take_tls_params(url);
        if let Some(mode) = tls.sslmode.as_deref()
            && !SSL_MODES.contains(&mode)
        {
            return Err(usage!(
                "[postgres] url has sslmode={mode:?}: expected one of {}",
                SSL_MODES.join(", ")
            ));
        }
        // Never echo the URL: it may hold a password.
        let config = tokio_postgres::Config::from_str(&url)
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
        let sslmode = tls.sslmode.or_else(|| env("PGSSLMODE"));
        Ok(PgTarget {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            dbname: config.get_dbname().map(str::to_string).unwrap_or_else(|| user.clone()),
            password: config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()),
            user,
            sslmode,
            sslrootcert: tls.sslrootcert.or_else(|| env("PGSSLROOTCERT")),
            passfile: tls.passfile.or_else(|| env("PGPASSFILE")),
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
            .or_else(|| pgpass_lookup(self.passfile.as_deref(), &self.host, self.port, dbname, &self.user))
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
            let detail = one_line(&e);
            let hint = if detail.contains("certificate") || detail.contains("CertificateError") {
                "the server's certificate did not verify: check sslrootcert (the CA that signed it) and, for sslmode=verify-full, that the host name pgdr connects to is in the certificate"
            } else {
                "is the server running? check [postgres] url"
            };
            anyhow::Error::new(ConnectFailed {
                message: format!(
                    "cannot connect to PostgreSQL at {} (database {dbname:?}): {detail} — {hint}",
                    self.describe(),
                ),
                code: e.code().cloned(),
            })
        };
        // TLS as libpq's sslmode says: off for `disable`; offered (`prefer`) or required
        // (`require`) without checking the certificate, as libpq does; required and
        // checked against sslrootcert for `verify-ca` (the chain) and `verify-full`
        // (the chain and the host name).
        if let Some(mode @ ("verify-ca" | "verify-full")) = self.sslmode.as_deref() {
            config.ssl_mode(SslMode::Require);
            let connector = verifying_connector(mode == "verify-full", self.sslrootcert.as_deref())?;
            let (client, connection) = config.connect(connector).await.map_err(failed)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("postgres connection ended: {e}");
                }
            });
            return Ok(client);
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
        if let Some(root) = &self.sslrootcert {
            vars.push(("PGSSLROOTCERT".to_string(), root.clone()));
        }
        if let Some(file) = &self.passfile {
            vars.push(("PGPASSFILE".to_string(), file.clone()));
        }
        vars
    }
}

const SSL_MODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// libpq's TLS parameters found in a connection string.
#[derive(Debug, Default, PartialEq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    /// Not TLS, but like them unknown to tokio-postgres: libpq's password file.
    passfile: Option<String>,
}

/// Take `sslmode` and `sslrootcert` out of a connection string (URL or key=value
/// form); the rest goes to tokio-postgres as it was.
fn take_tls_params(url: &str) -> (String, TlsParams) {
    let mut tls = TlsParams::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            tls.sslmode = Some(value);
            true
        }
        "sslrootcert" => {
            tls.sslrootcert = Some(value);
            true
        }
        "passfile" => {
            tls.passfile = Some(value);
            true
        }
        _ => false,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), tls);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned();
                !take(k, v)
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, tls);
    }
    // key=value pairs separated by spaces; a value may be single-quoted.
    let mut kept = Vec::new();
    let mut chars = url.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut raw = String::new();
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            raw.push('=');
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.next_if_eq(&'\'').is_some() {
                raw.push('\'');
                while let Some(c) = chars.next() {
                    raw.push(c);
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                raw.push(n);
                                value.push(n);
                            }
                        }
                        '\'' => break,
                        _ => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    raw.push(c);
                    value.push(c);
                }
            }
        }
        if !take(&key, value) {
            kept.push(format!("{key}{raw}"));
        }
    }
    (kept.join(" "), tls)
}

/// A connector that checks the server's certificate against the CAs in `rootcert`
/// (libpq's default ~/.postgresql/root.crt; `system`: the system's roots), and with
/// `full` also that it names the host connected to.
fn verifying_connector(full: bool, rootcert: Option<&str>) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::sync::Arc;

    let mode = if full { "verify-full" } else { "verify-ca" };
    let path = match rootcert {
        Some(p) => p.to_string(),
        None => env("HOME")
            .map(|h| format!("{h}/.postgresql/root.crt"))
            .unwrap_or_else(|| "~/.postgresql/root.crt".into()),
    };
    let mut roots = rustls::RootCertStore::empty();
    if path == "system" {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    } else {
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| {
                usage!("sslmode={mode} needs the CA certificate to check the server against: cannot read {path} ({e}) — set sslrootcert in [postgres] url or PGSSLROOTCERT")
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| usage!("{path} is not a PEM certificate file: {e}"))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| usage!("{path} holds a certificate rustls cannot use as a root: {e}"))?;
        }
    }
    if roots.is_empty() {
        return Err(usage!(
            "sslmode={mode}: no CA certificate in {path} — set sslrootcert to the PEM file of the CA that signed the server's certificate"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| usage!("cannot use the CA certificates in {path}: {e}"))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        if full { verifier } else { Arc::new(ChainOnly(verifier)) };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// verify-ca: the certificate must chain to a trusted CA; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(std::sync::Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        // The chain is checked before the name: a name error means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
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
fn pgpass_lookup(passfile: Option<&str>, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let path = passfile
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

/// PostgreSQL is up and refused the login: waiting will not help.
pub fn is_refused_login(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| c.downcast_ref::<ConnectFailed>().is_some_and(|c| c.is_refused_login()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_forms() {
        let (rest, tls) = take_tls_params(
            "postgresql://u@db.example:5432/app?sslmode=verify-full&connect_timeout=5&sslrootcert=%2Fetc%2Fca%20x.pem",
        );
        assert_eq!(rest, "postgresql://u@db.example:5432/app?connect_timeout=5");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/etc/ca x.pem"));
        let (rest, tls) = take_tls_params("postgresql://u@h/app?sslmode=require");
        assert_eq!(
            (rest.as_str(), tls.sslmode.as_deref()),
            ("postgresql://u@h/app", Some("require"))
        );
        let (rest, tls) =
            take_tls_params("host=h port=5 sslmode = verify-ca sslrootcert='/a b/c\\'d.pem' password='x y'");
        assert_eq!(rest, "host=h port=5 password='x y'");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/a b/c'd.pem"));
        let t = PgTarget::from_url("postgresql://u@127.0.0.1/app?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!(t.sslmode.as_deref(), Some("verify-full"));
        assert!(
            t.child_env(None)
                .contains(&("PGSSLROOTCERT".to_string(), "/ca.pem".to_string()))
        );
        assert!(PgTarget::from_url("postgresql://u@h/app?sslmode=verify-all").is_err());
    }

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
