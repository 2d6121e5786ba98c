//! Starting a restored data directory as a server and watching its recovery to the
//! end: promoted, paused at the target, running as a standby, or shut down. Servers
//! run as the `postgres` OS user, with only the environment they need
//! (`postgres::server_env`), listening only where they are told.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::postgres::{PgTarget, PgTools};
use crate::usage;

pub mod scratch;

/// How to start a restored server; validated by `start_and_wait`.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub data_dir: PathBuf,
    pub port: u16,
    /// listen_addresses: host names or addresses, comma-separated; empty for the
    /// Unix socket only (then `socket_dir` is required).
    pub listen: String,
    pub socket_dir: Option<PathBuf>,
    /// Start with an hba_file of its own that trusts the (private) socket: for
    /// scratch copies only, with `listen` empty and a 0700 `socket_dir`.
    pub scratch_hba: bool,
    /// A standby: done once it runs and replays, not when recovery ends.
    pub standby: bool,
    /// recovery_target_action = shutdown: the server stopping is the success.
    pub shutdown_at_target: bool,
    pub bin_dir: Option<PathBuf>,
    /// Whom pgdr connects as to watch (its address and port are replaced).
    pub connect: PgTarget,
    /// The repository is S3: the server's wal-fetch needs the `AWS_*` variables.
    pub s3: bool,
}

/// Where a started server's recovery ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reached {
    pub state: String,
    pub lsn: String,
    pub timeline: u32,
    pub last_replay: Option<String>,
    pub seconds: f64,
}

/// The lines of `data_dir/pg_hba.conf` that let a TCP client in without a password
/// (`host… trust`), as "line N: text". A restored copy carries production's file:
/// fine for production behind its network, not for a copy on a host others reach.
pub fn trusted_tcp_lines(data_dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(data_dir.join("pg_hba.conf")) else {
        return Vec::new();
    };
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let words: Vec<&str> = line.split('#').next().unwrap_or("").split_whitespace().collect();
            let host = words.first().is_some_and(|w| w.starts_with("host"));
            // host DB USER ADDRESS [MASK] METHOD [OPTIONS]: the method is the first
            // word after the address that is not a mask.
            let method = words.iter().skip(4).find(|w| !w.contains('.') && !w.contains(':'));
            (host && method == Some(&"trust")).then(|| format!("line {}: {}", i + 1, line.trim()))
        })
        .collect()
}

/// Start the restored server as `postgres` and wait until recovery reaches its end:
/// promoted, paused at the target, or shut down. A server that dies on the way (the
/// target was not reached, WAL is missing) is reported with its own words.
pub async fn start_and_wait(opts: &StartOptions) -> Result<Reached> {
    let dir = opts.data_dir.as_path();
    let tools = PgTools::locate(opts.bin_dir.as_deref())?;
    use crate::postgres::datadir::{RECOVERY_LOG, RECOVERY_LOG_OLD};
    let log = dir.join(RECOVERY_LOG);
    // The server's words are read from this start only: an earlier start's log (or one
    // a backup carried in) is kept beside it, not mistaken for this one.
    if log.exists() {
        std::fs::rename(&log, dir.join(RECOVERY_LOG_OLD))
            .with_context(|| format!("moving the earlier {} aside", log.display()))?;
    }
    let pg_opts = server_options(opts)?;
    let started = pg_ctl_start(&tools, dir, &log, &pg_opts, opts.s3)?;
    wait_for_postmaster(dir, &log).await?;
    watch_recovery(opts, &log, started).await
}

/// The server's settings on pg_ctl's command line: port, listen_addresses, socket
/// directory and, for a scratch copy, an hba_file of its own (written here).
fn server_options(opts: &StartOptions) -> Result<String> {
    let port = opts.port;
    // Never the source's listen_addresses ('*' on many primaries): a restored copy
    // holds production data and must not be reachable from elsewhere unless asked.
    let listen = opts.listen.as_str();
    if listen.is_empty() && opts.socket_dir.is_none() {
        return Err(usage!("--listen '' (Unix socket only) needs --socket-dir DIR"));
    }
    if listen.contains(|c: char| !(c.is_ascii_alphanumeric() || ".:,-*".contains(c))) {
        return Err(usage!(
            "--listen {listen:?}: expected host names or addresses, comma-separated"
        ));
    }
    let mut pg_opts = format!("-p {port} -c listen_addresses='{listen}'");
    if let Some(sock) = &opts.socket_dir {
        pg_opts.push_str(&format!(" -k {}", crate::process::sh_quote(&sock.to_string_lossy())));
    }
    if opts.scratch_hba {
        pg_opts.push_str(&scratch_hba(opts)?);
    }
    Ok(pg_opts)
}

/// `--scratch-hba`: writes an hba_file that trusts the private socket, and returns the
/// setting that points the server at it.
fn scratch_hba(opts: &StartOptions) -> Result<String> {
    let dir = opts.data_dir.as_path();
    // Trust is safe only where nobody else can connect: no TCP, and a socket
    // directory only its owner can enter.
    use std::os::unix::fs::PermissionsExt;
    let private = opts
        .socket_dir
        .as_ref()
        .and_then(|s| std::fs::metadata(s).ok())
        .is_some_and(|m| {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: geteuid has no preconditions.
            let owner = crate::process::postgres_owner().map_or(unsafe { libc::geteuid() }, |(uid, _)| uid);
            m.is_dir() && m.permissions().mode() & 0o077 == 0 && m.uid() == owner
        });
    if !opts.listen.is_empty() || !private {
        return Err(usage!(
            "--scratch-hba needs --listen '' and a --socket-dir of mode 0700"
        ));
    }
    let hba = dir.join("pgdr-scratch-hba.conf");
    std::fs::write(
        &hba,
        "# pgdr: a scratch copy, reachable only on its private socket\nlocal all all trust\n",
    )
    .with_context(|| format!("writing {}", hba.display()))?;
    if let Some((uid, gid)) = crate::process::postgres_owner() {
        std::os::unix::fs::chown(&hba, Some(uid), Some(gid))?;
    }
    Ok(format!(
        " -c {}",
        crate::process::sh_quote(&format!("hba_file={}", hba.display()))
    ))
}

/// Runs `pg_ctl start` as `postgres`, without waiting, and returns when it was run:
/// recovery is timed from then.
fn pg_ctl_start(tools: &PgTools, dir: &Path, log: &Path, pg_opts: &str, s3: bool) -> Result<Instant> {
    let mut cmd = std::process::Command::new(tools.path("pg_ctl")?);
    // -W: pg_ctl would give up after 60 s, long before a big recovery is done; this
    // function does the waiting.
    cmd.arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(log)
        .args(["-W", "-o", pg_opts, "start"]);
    cmd.env_clear()
        .envs(crate::postgres::server_env(s3))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    crate::process::as_postgres(&mut cmd);
    let started = Instant::now();
    let out = cmd.output().map_err(|e| anyhow!("cannot run pg_ctl: {e}"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(anyhow!(
            "pg_ctl start failed: {}",
            said.lines().next().unwrap_or("").trim()
        ));
    }
    Ok(started)
}

/// The postmaster writes its pid file when it is up; until then there is nothing
/// to watch.
async fn wait_for_postmaster(dir: &Path, log: &Path) -> Result<()> {
    let appear = Instant::now() + Duration::from_secs(60);
    while !dir.join("postmaster.pid").exists() {
        if Instant::now() > appear || recovery_log_says(log, "FATAL:") {
            return Err(anyhow!(
                "the restored server stopped during recovery: {}",
                fatal_line(log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Where recovery is: in recovery, the pause state, the replayed (or current) LSN, the
/// checkpoint's timeline, the last replayed transaction's time.
const RECOVERY_STATE: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'not paused' END, \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
     (SELECT timeline_id FROM pg_control_checkpoint()), \
     pg_last_xact_replay_timestamp()::text";

/// Polls the running server until its recovery ends (a standby: until it runs), it
/// stops, or 24 h pass.
async fn watch_recovery(opts: &StartOptions, log: &Path, started: Instant) -> Result<Reached> {
    let dir = opts.data_dir.as_path();
    let target = opts
        .connect
        .with_address(&watch_address(&opts.listen, opts.socket_dir.as_deref()), opts.port);
    let deadline = started + Duration::from_secs(24 * 3600);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !dir.join("postmaster.pid").exists() {
            return stopped(opts, log, started);
        }
        let client = match target.connect(Some("postgres")).await {
            Ok(client) => client,
            Err(e) if crate::postgres::conn::is_refused_login(&e) => {
                return Err(e.context(format!(
                    "the restored server is up but refuses pgdr's login (its pg_hba.conf is the source's), so recovery cannot be watched; it keeps running — see {}",
                    log.display()
                )));
            }
            Err(_) if Instant::now() > deadline => {
                return Err(anyhow!("recovery did not finish within 24 h; see {}", log.display()));
            }
            Err(_) => continue,
        };
        let Ok(row) = client.query_one(RECOVERY_STATE, &[]).await else {
            continue;
        };
        if let Some(reached) = done(&client, &row, opts.standby, started).await {
            return Ok(reached);
        }
        if Instant::now() > deadline {
            return Err(anyhow!("recovery did not finish within 24 h; see {}", log.display()));
        }
    }
}

/// The server stopped: the success when it was to shut down at the target and did,
/// else the log's own words.
fn stopped(opts: &StartOptions, log: &Path, started: Instant) -> Result<Reached> {
    if opts.shutdown_at_target && recovery_log_says(log, "shutting down") {
        return Ok(Reached {
            state: "shut down at the target".into(),
            lsn: "-".into(),
            timeline: 0,
            last_replay: None,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Err(anyhow!(
        "the restored server stopped during recovery: {}",
        fatal_line(log)
    ))
}

/// Where recovery ended, from a `RECOVERY_STATE` row: promoted, paused at the target,
/// or (a standby) running; `None` while it goes on.
async fn done(
    client: &tokio_postgres::Client,
    row: &tokio_postgres::Row,
    standby: bool,
    started: Instant,
) -> Option<Reached> {
    let in_recovery: bool = row.get(0);
    let pause: String = row.get(1);
    let state = if !in_recovery {
        "promoted"
    } else if pause == "paused" {
        "paused at the target"
    } else if standby && started.elapsed() > Duration::from_secs(1) {
        "running as a standby"
    } else {
        return None;
    };
    // After a promotion the checkpoint may still show the old timeline.
    let timeline = if in_recovery {
        row.get::<_, i32>(3) as u32
    } else {
        client
            .query_one("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)", &[])
            .await
            .ok()
            .and_then(|r| u32::from_str_radix(&r.get::<_, String>(0), 16).ok())
            .unwrap_or(row.get::<_, i32>(3) as u32)
    };
    Some(Reached {
        state: state.to_string(),
        lsn: row.get(2),
        timeline,
        last_replay: row.get(4),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Where pgdr connects to watch the restored server: the first address it listens
/// on (a wildcard means this host's loopback), or its socket when it listens on none.
fn watch_address(listen: &str, socket_dir: Option<&Path>) -> String {
    let first = listen.split(',').map(str::trim).find(|a| !a.is_empty());
    match (first, socket_dir) {
        (None, Some(sock)) => sock.display().to_string(),
        (None, None) | (Some("*" | "0.0.0.0"), _) => "127.0.0.1".to_string(),
        (Some("::"), _) => "::1".to_string(),
        (Some(addr), _) => addr.to_string(),
    }
}

fn recovery_log_says(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle))
}

fn fatal_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rfind(|l| l.contains("FATAL:") || l.contains("PANIC:"))
        .map(|l| {
            l.split_once("FATAL:")
                .or(l.split_once("PANIC:"))
                .map(|(_, m)| m.trim())
                .unwrap_or(l)
                .to_string()
        })
        .unwrap_or_else(|| format!("see {}", log.display()))
}

/// A free TCP port on 127.0.0.1 (for a scratch or newly made server), below the
/// kernel's ephemeral range: a port from there may be taken by any outgoing
/// connection before the server binds it.
pub fn free_port() -> Result<u16> {
    const LOW: u16 = 15000;
    const SPAN: u16 = 17000;
    let start = rand::random::<u16>() % SPAN;
    for i in 0..SPAN {
        let port = LOW + (start + i) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Stop whatever server runs in `dir` at once (`pg_ctl -m immediate`, as postgres):
/// for copies being thrown away. Nothing running is not an error.
/// SIGKILL a `pg_ctl … start` for `dir` still on its way (left by a killed pgdr) and
/// any server it started there: an orphaned `pg_ctl` that starts its server after
/// the directory was emptied would recreate its log there, or start on half-laid
/// files. Only `pg_ctl`, `postgres` and the shell `pg_ctl` runs it through, with
/// `-D` naming `dir`, are touched.
pub fn kill_starting(dir: &Path) {
    let needles = [
        format!("-D {}", dir.display()),
        format!("-D \"{}\"", dir.display()),
        format!("-D '{}'", dir.display()),
    ];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let program = text.split_whitespace().next().unwrap_or("");
        let name = program.rsplit('/').next().unwrap_or(program);
        let ours = matches!(name, "pg_ctl" | "postgres") || (name == "sh" && text.contains("postgres"));
        // The argument ends at the path: `-D /x` must not match `-D /x2`.
        let names_dir = needles.iter().any(|n| {
            text.match_indices(n.as_str())
                .any(|(i, _)| text[i + n.len()..].chars().next().is_none_or(|c| c == ' '))
        });
        if ours && names_dir {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

pub fn stop_immediate(pg_ctl: &Path, dir: &Path) {
    if !dir.join("postmaster.pid").exists() {
        return;
    }
    let mut cmd = std::process::Command::new(pg_ctl);
    cmd.arg("-D").arg(dir).args(["-m", "immediate", "-w", "stop"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    crate::process::as_postgres(&mut cmd);
    let _ = cmd.status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tcp_lines_that_trust() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust # initdb\nhost all all 10.0.0.0 255.0.0.0 trust\nhostssl all all ::1/128 scram-sha-256\n# host all all 0.0.0.0/0 trust\n",
        )
        .unwrap();
        let found = trusted_tcp_lines(d.path());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("line 2:"), "{found:?}");
        assert!(found[1].starts_with("line 3:"), "{found:?}");
    }

    #[test]
    fn watched_where_it_listens() {
        let sock = Path::new("/run/pgdr-sock");
        assert_eq!(watch_address("127.0.0.1", Some(sock)), "127.0.0.1");
        assert_eq!(watch_address("10.0.0.5,127.0.0.1", None), "10.0.0.5");
        assert_eq!(watch_address("::1", None), "::1");
        assert_eq!(watch_address("*", None), "127.0.0.1");
        assert_eq!(watch_address("::", None), "::1");
        assert_eq!(watch_address("", Some(sock)), "/run/pgdr-sock");
    }
}
