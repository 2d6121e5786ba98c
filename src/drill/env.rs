//! The drill's scratch world: its directory, servers and PgBouncer (stopped and
//! removed on drop), private files, and the pgdr children it runs.

use super::*;

/// The scratch world; whatever happens, `Drop` stops its servers and PgBouncer and
/// removes its directory. The repository areas are removed by `teardown`.
pub(super) struct Env {
    pub(super) dir: PathBuf,
    pub(super) pg_ctl: PathBuf,
    pub(super) bouncer: Option<std::process::Child>,
    pub(super) bouncer_port: u16,
    pub(super) workload: Option<tokio::process::Child>,
    pub(super) keep_dir: bool,
}

impl Env {
    pub(super) fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
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
            write_private(&self.path(name), &text)?;
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
        for d in ["production", "new", "standby", "scratch"] {
            crate::server::stop_immediate(&self.pg_ctl, &self.path(d));
        }
        // What archive_command and restore_command left running on their own (a
        // detached WAL pusher or prefetcher of this drill).
        kill_strays(&self.dir);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_servers();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGKILL every pgdr process (but this one) whose command line mentions `dir`.
pub(super) fn kill_strays(dir: &Path) {
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

pub(super) fn chown_postgres(path: &Path) -> Result<()> {
    if let Some((uid, gid)) = crate::process::postgres_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// A new file only its owner (postgres) can read.
pub(super) fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = crate::disk::create_private_file(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    chown_postgres(path)
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

pub(super) async fn run_tool(mut cmd: tokio::process::Command, what: &str) -> Result<()> {
    cmd.stdin(Stdio::null())
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
