//! The drill's scratch world: its directory, servers and PgBouncer (stopped and
//! removed on drop), private files, and the pgdr children it runs.

use super::*;

/// The scratch world: its directory (servers stopped, strays killed and everything
/// removed when dropped, whatever happens), PgBouncer and the workload. The
/// repository areas are removed by `tear_down`.
pub(super) struct Env {
    pub(super) scratch: ScratchDir,
    pub(super) bouncer: Option<std::process::Child>,
    pub(super) bouncer_port: u16,
    pub(super) workload: Option<tokio::process::Child>,
}

impl Env {
    pub(super) fn path(&self, p: &str) -> PathBuf {
        self.scratch.join(p)
    }

    /// A connection URL to the drill's servers on 127.0.0.1: they take TCP logins
    /// only with the drill's password, which is in its private password file.
    pub(super) fn url(&self, port: u16, db: &str) -> String {
        let passfile = self.path("pgpass");
        format!(
            "postgresql://postgres@127.0.0.1:{port}/{db}?sslmode=disable&passfile={}",
            percent_encoding::utf8_percent_encode(&passfile.to_string_lossy(), percent_encoding::NON_ALPHANUMERIC)
        )
    }

    /// A password of the drill's own for `postgres`, in a private password file
    /// (`url` names it) and in `pwfile` for initdb; never on a command line.
    pub(super) fn make_password(&self) -> Result<String> {
        let password = format!("{:032x}", rand::random::<u128>());
        for (name, text) in [
            ("pgpass", format!("*:*:*:postgres:{password}\n")),
            ("pwfile", format!("{password}\n")),
        ] {
            crate::disk::write_private_file(&self.path(name), &text)?;
        }
        Ok(password)
    }

    pub(super) fn stop_servers(&mut self) {
        if let Some(mut w) = self.workload.take() {
            let _ = w.start_kill();
        }
        if let Some(mut b) = self.bouncer.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        self.scratch.stop_servers();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // PgBouncer and the workload; the scratch directory's own drop does the rest.
        self.stop_servers();
    }
}

/// `pgdr --config FILE ARGS --json` as a child; its JSON report, or its last line.
pub(super) async fn pgdr_child(config_file: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("--config")
        .arg(config_file)
        .args(args)
        .arg("--json")
        .env_remove("PGDR_REPOSITORY")
        .env_remove("PGDR_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The drill's configuration is the file: no PGDR_* override may redirect it.
    for (k, _) in std::env::vars() {
        if k.starts_with("PGDR_") && k != "PGDR_KEY" && k != "PGDR_LOG" {
            cmd.env_remove(k);
        }
    }
    // As the server's own archive_command runs: what it stores, wal-push can extend.
    crate::process::as_postgres_async(&mut cmd);
    let out = cmd.output().await?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("failed").trim();
        return Err(anyhow!(
            "pgdr {}: {}",
            args.first().copied().unwrap_or(""),
            line.strip_prefix("pgdr: error: ").unwrap_or(line)
        ));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}
