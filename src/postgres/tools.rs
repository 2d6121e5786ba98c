//! PostgreSQL's client tools (`pg_dump`, `pg_restore`, `psql`, …) as streaming child
//! processes. Their stdout is a `Read` that fails at EOF if the tool failed; their
//! stdin is a `Write` whose `finish` waits for the tool and checks its exit status.
//! Connection settings reach them only through the environment.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Result, anyhow};

use super::PgTarget;
use crate::usage;

/// Where the tools are: the configured `bin_dir`, else the directory of `pg_dump` on
/// PATH, then `pg_config --bindir`, then Debian's /usr/lib/postgresql/<newest>/bin.
#[derive(Debug, Clone)]
pub struct PgTools {
    dirs: Vec<PathBuf>,
}

fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

impl PgTools {
    pub fn locate(configured: Option<&Path>) -> Result<PgTools> {
        if let Some(dir) = configured {
            if !dir.join("pg_dump").is_file() {
                return Err(usage!(
                    "[postgres] bin_dir {} does not contain pg_dump — point it at PostgreSQL's bin directory",
                    dir.display()
                ));
            }
            return Ok(PgTools {
                dirs: vec![dir.to_path_buf()],
            });
        }
        let mut dirs = Vec::new();
        if let Some(dump) = on_path("pg_dump") {
            dirs.extend(dump.parent().map(Path::to_path_buf));
        }
        if let Some(pg_config) = on_path("pg_config")
            && let Ok(out) = Command::new(pg_config).arg("--bindir").output()
            && out.status.success()
        {
            dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
        if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut versions: Vec<(u32, PathBuf)> = entries
                .flatten()
                .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
                .collect();
            versions.sort();
            dirs.extend(versions.into_iter().rev().map(|(_, p)| p));
        }
        dirs.dedup();
        if !dirs.iter().any(|d| d.join("pg_dump").is_file()) {
            return Err(usage!(
                "PostgreSQL client tools not found: install them (e.g. apt-get install postgresql-client) or set [postgres] bin_dir"
            ));
        }
        Ok(PgTools { dirs })
    }

    /// Full path of a tool; an error naming where it was looked for.
    pub fn path(&self, tool: &str) -> Result<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                usage!(
                    "{tool} not found in {} — install PostgreSQL's tools or set [postgres] bin_dir",
                    self.dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// Major version of the tools, from `pg_dump --version`.
    pub fn major_version(&self) -> Result<u32> {
        let out = Command::new(self.path("pg_dump")?)
            .arg("--version")
            .output()
            .map_err(|e| anyhow!("cannot run pg_dump --version: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        text.split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| anyhow!("cannot read the version of pg_dump from {text:?}"))
    }

    /// A command for `tool`, connected to `dbname` through the environment.
    pub fn command(&self, tool: &str, target: &PgTarget, dbname: Option<&str>) -> Result<Command> {
        let mut cmd = Command::new(self.path(tool)?);
        for var in [
            "PGPASSWORD",
            "PGSERVICE",
            "PGOPTIONS",
            "PGDATABASE",
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(target.child_env(dbname));
        Ok(cmd)
    }
}

/// The last lines a tool wrote to stderr, collected by a thread.
#[derive(Clone)]
pub struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    reader: Arc<Mutex<Option<JoinHandle<()>>>>,
}

const TAIL_LINES: usize = 40;

impl StderrTail {
    fn collect(tool: &str, stderr: impl Read + Send + 'static) -> StderrTail {
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let sink = lines.clone();
        let tool = tool.to_string();
        let handle = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                tracing::debug!(tool = %tool, "{line}");
                let mut lines = sink.lock().expect("stderr lock");
                if lines.len() == TAIL_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        StderrTail {
            lines,
            reader: Arc::new(Mutex::new(Some(handle))),
        }
    }

    /// Wait until the tool closed stderr, then return what it said.
    pub fn wait(&self) -> Vec<String> {
        if let Some(handle) = self.reader.lock().expect("stderr lock").take() {
            let _ = handle.join();
        }
        self.lines.lock().expect("stderr lock").iter().cloned().collect()
    }

    /// The most telling line: the first error, else the last line.
    pub fn summary(&self) -> String {
        let lines = self.wait();
        lines
            .iter()
            .find(|l| l.contains("error:") || l.contains("ERROR:") || l.contains("FATAL:"))
            .or(lines.last())
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    }
}

/// Why a tool failed, with the tail of its stderr.
#[derive(Debug, thiserror::Error)]
#[error("{tool} failed ({status}){detail}")]
pub struct ToolError {
    pub tool: String,
    pub status: String,
    pub detail: String,
}

fn tool_error(tool: &str, status: ExitStatus, stderr: &StderrTail) -> ToolError {
    let summary = stderr.summary();
    ToolError {
        tool: tool.to_string(),
        status: status.to_string(),
        detail: if summary.is_empty() {
            String::new()
        } else {
            format!(": {summary}")
        },
    }
}

fn spawn(tool: &str, mut cmd: Command, stdin: Stdio, stdout: Stdio) -> Result<(Child, StderrTail)> {
    cmd.stdin(stdin).stdout(stdout).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| anyhow!("cannot start {tool}: {e}"))?;
    let stderr = StderrTail::collect(tool, child.stderr.take().expect("stderr piped"));
    Ok((child, stderr))
}

/// A tool's stdout. At EOF it waits for the tool and turns a failed exit into an
/// error, so a consumer never mistakes a dump cut short for a complete one.
pub struct ChildReader {
    tool: String,
    child: Option<Child>,
    stdout: ChildStdout,
    stderr: StderrTail,
}

impl ChildReader {
    pub fn spawn(tool: &str, cmd: Command) -> Result<ChildReader> {
        let (mut child, stderr) = spawn(tool, cmd, Stdio::null(), Stdio::piped())?;
        let stdout = child.stdout.take().expect("stdout piped");
        Ok(ChildReader {
            tool: tool.to_string(),
            child: Some(child),
            stdout,
            stderr,
        })
    }

    pub fn stderr(&self) -> StderrTail {
        self.stderr.clone()
    }
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(mut child) = self.child.take()
        {
            let status = child.wait()?;
            if !status.success() {
                return Err(io::Error::other(tool_error(&self.tool, status, &self.stderr)));
            }
        }
        Ok(n)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        // Still running means the consumer gave up: stop the tool.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tool's stdin. `finish` closes it and waits for the tool. Dropping it only
/// closes stdin: the tool sees the end of its input and decides for itself (a
/// single-transaction restore rolls back), and a `ChildWaiter` can still learn how
/// it ended.
pub struct ChildWriter {
    stdin: Option<ChildStdin>,
    waiter: ChildWaiter,
}

/// Waits for a tool whose stdin is (or was) a `ChildWriter`.
#[derive(Clone)]
pub struct ChildWaiter {
    tool: String,
    child: Arc<Mutex<Option<Child>>>,
    stderr: StderrTail,
}

impl ChildWaiter {
    /// Wait for the tool; an error with its stderr if it failed.
    pub fn wait(&self) -> Result<()> {
        let Some(mut child) = self.child.lock().expect("child lock").take() else {
            return Ok(());
        };
        let status = child.wait()?;
        if !status.success() {
            return Err(tool_error(&self.tool, status, &self.stderr).into());
        }
        Ok(())
    }

    pub fn stderr(&self) -> &StderrTail {
        &self.stderr
    }
}

impl ChildWriter {
    pub fn spawn(tool: &str, cmd: Command) -> Result<ChildWriter> {
        let (mut child, stderr) = spawn(tool, cmd, Stdio::piped(), Stdio::null())?;
        let stdin = child.stdin.take();
        Ok(ChildWriter {
            stdin,
            waiter: ChildWaiter {
                tool: tool.to_string(),
                child: Arc::new(Mutex::new(Some(child))),
                stderr,
            },
        })
    }

    pub fn waiter(&self) -> ChildWaiter {
        self.waiter.clone()
    }

    /// Close stdin and wait; an error if the tool failed.
    pub fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        self.waiter.wait()
    }
}

impl Write for ChildWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.write(buf),
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin closed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.flush(),
            None => Ok(()),
        }
    }
}

/// Run a tool to completion, capturing stdout; an error with its stderr if it fails.
pub fn run_capture(tool: &str, mut cmd: Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot start {tool}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.contains("error"))
            .or(stderr.lines().last())
            .unwrap_or("");
        return Err(anyhow!("{tool} failed ({}): {}", out.status, line.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
