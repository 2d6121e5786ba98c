//! Scratch clusters: the directories and servers pgdr makes for itself and throws
//! away (verify's restore target, a drill's production and recovered servers).
//!
//! - `ScratchDir` is the private directory they live in. Whatever happens, dropping
//!   it stops every server in it, kills the pgdr children its servers left running
//!   (a detached WAL pusher or prefetcher) and removes it.
//! - `init` and `start` make and start a cluster in it: as the postgres OS user, with
//!   the environment a server gets, reachable on a private socket and over TCP only
//!   with a password pgdr holds.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, anyhow};

use crate::postgres::PgTools;
use crate::postgres::recovery::conf_literal;

/// A private (0700) directory of scratch servers, owned by the postgres OS user when
/// pgdr runs as root; torn down when dropped.
pub struct ScratchDir {
    dir: PathBuf,
    pg_ctl: PathBuf,
}

impl ScratchDir {
    /// A new directory `<prefix>XXXXXX` in `parent` (default: the temp directory).
    pub fn new(tools: &PgTools, prefix: &str, parent: Option<&Path>) -> Result<ScratchDir> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&parent)
            .with_context(|| format!("creating a scratch directory in {}", parent.display()))?
            .keep();
        let scratch = ScratchDir {
            dir,
            pg_ctl: tools.path("pg_ctl")?,
        };
        crate::disk::give_to_postgres(&scratch.dir)?;
        Ok(scratch)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Stop (immediately) every server whose data directory is directly in here, and
    /// kill what their archive and restore commands left running.
    pub fn stop_servers(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.path().join("postmaster.pid").exists() {
                    super::stop_immediate(&self.pg_ctl, &e.path());
                }
            }
        }
        kill_strays(&self.dir);
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        self.stop_servers();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGKILL every pgdr process (but this one) whose command line mentions `dir`.
fn kill_strays(dir: &Path) {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let Ok(exe) = std::env::current_exe() else { return };
    let exe = exe.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.starts_with(&format!("{exe} ")) && text.contains(&needle) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Who may log in to a scratch cluster. Both trust its private socket only.
pub enum Logins<'a> {
    /// Nothing over TCP.
    SocketOnly,
    /// Over TCP, `postgres` with the password in `pwfile` (scram).
    Password { pwfile: &'a Path },
}

/// initdb a new cluster in `data` (superuser `postgres`, UTF8, no fsync of its files).
pub async fn init(tools: &PgTools, data: &Path, logins: Logins<'_>) -> Result<()> {
    let mut initdb = tokio::process::Command::new(tools.path("initdb")?);
    initdb
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "--auth-local=trust", "-E", "UTF8", "--no-sync"]);
    match logins {
        Logins::SocketOnly => initdb.arg("--auth-host=reject"),
        Logins::Password { pwfile } => initdb
            .arg("--auth-host=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display())),
    };
    run_as_postgres(initdb, "initdb", false).await
}

/// Append `settings` to the cluster's postgresql.conf: numbers as they are, anything
/// else quoted as the file wants it.
pub fn configure(data: &Path, settings: &[(&str, String)]) -> Result<()> {
    use std::io::Write;
    let mut text = String::from("\n# pgdr scratch cluster\n");
    for (name, value) in settings {
        let number = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        let value = if number { value.clone() } else { conf_literal(value) };
        text.push_str(&format!("{name} = {value}\n"));
    }
    let conf = data.join("postgresql.conf");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", conf.display()))
}

/// `pg_ctl start`, waiting up to 60 s; the server logs to `log`. `s3`: its
/// environment keeps the AWS settings its archive_command needs.
pub async fn start(tools: &PgTools, data: &Path, log: &Path, s3: bool) -> Result<()> {
    let mut start = tokio::process::Command::new(tools.path("pg_ctl")?);
    start
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "60", "start"]);
    run_as_postgres(start, "pg_ctl start", s3).await
}

/// Run a PostgreSQL tool as the postgres OS user with a server's environment (no
/// PG* variable of pgdr's own); an error carries what it printed. Killed if the
/// caller is abandoned.
pub async fn run_as_postgres(mut cmd: tokio::process::Command, what: &str, s3: bool) -> Result<()> {
    crate::process::as_postgres_async(&mut cmd);
    cmd.env_clear()
        .envs(crate::postgres::server_env(s3))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd.output().await.with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
