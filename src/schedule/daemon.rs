//! `pgdr schedule run`: the long-running scheduler. Each job runs as a child `pgdr`
//! process (its own timeout, its own crash), never twice at once — within this process
//! by its running flag, across processes and hosts by a lease in the repository. On
//! SIGTERM/SIGINT it starts nothing new, lets running jobs finish within the grace
//! period, then stops them with SIGTERM (a backup stopped so leaves no manifest, hence
//! nothing visible).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use super::Job;
use super::history::{self, Entry, JobState, Outcome};
use crate::config::Config;
use crate::repo::Repo;
use crate::repo::lock::{Lease, holder_id};

const LEASE_TTL: Duration = Duration::from_secs(60);
const LEASE_RENEW: Duration = Duration::from_secs(20);
/// After SIGTERM, how long a job gets before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(30);

pub struct Options {
    pub jobs: Vec<Job>,
    pub history: PathBuf,
    pub listen: String,
    pub grace: Duration,
}

/// State shared by the loop, the job tasks and the metrics endpoint.
#[derive(Default)]
pub struct Shared {
    /// Running jobs and the pid of their child.
    pub running: HashMap<String, Option<u32>>,
    pub jobs: BTreeMap<String, JobState>,
}

pub type SharedState = Arc<Mutex<Shared>>;

pub async fn run(config: Config, opts: Options) -> Result<()> {
    let repo = Repo::open(&config).await?;
    let holder = holder_id();
    let entries = history::read(&opts.history);
    let shared: SharedState = Arc::new(Mutex::new(Shared {
        running: HashMap::new(),
        jobs: history::states(&entries),
    }));

    let listener = tokio::net::TcpListener::bind(&opts.listen).await.map_err(|e| {
        crate::usage!(
            "cannot listen on {} for /metrics: {e} — choose another with --listen",
            opts.listen
        )
    })?;
    tracing::info!(
        "serving the report page (/), /report.json, /metrics and /health on {}",
        opts.listen
    );
    let server = tokio::spawn(super::metrics::serve(
        listener,
        config.clone(),
        repo.clone(),
        shared.clone(),
    ));

    let ctx = Arc::new(JobContext {
        config: config.clone(),
        repo,
        holder,
        history: opts.history.clone(),
        shared: shared.clone(),
    });
    let mut tasks = JoinSet::new();
    let now = Utc::now();

    // Runs missed while the scheduler was down: made up once within catch_up,
    // reported as missed beyond it.
    for job in &opts.jobs {
        let last = shared
            .lock()
            .expect("state")
            .jobs
            .get(&job.name)
            .and_then(|s| s.last_scheduled);
        let window_start = now - chrono::Duration::from_std(job.catch_up).unwrap_or_default();
        let since = last.unwrap_or(window_start);
        let Some(missed) = job.last_due(since, now) else {
            continue;
        };
        if missed >= window_start && !job.catch_up.is_zero() {
            tracing::info!(job = %job.name, "catching up the run missed at {missed}");
            spawn_job(&mut tasks, &ctx, job.clone(), missed);
        } else {
            let entry = Entry {
                job: job.name.clone(),
                scheduled: missed,
                start: now,
                end: now,
                outcome: Outcome::Missed,
                attempts: 0,
                bytes: None,
                seconds: 0.0,
                detail: format!(
                    "missed while the scheduler was down; older than catch_up {}",
                    super::format_duration(job.catch_up)
                ),
            };
            tracing::warn!(job = %job.name, "run scheduled at {missed} was missed and is skipped (beyond catch_up)");
            ctx.record(&entry);
        }
    }

    let mut next: Vec<(Job, chrono::DateTime<Utc>)> = opts
        .jobs
        .iter()
        .filter_map(|j| j.next_run(now).map(|t| (j.clone(), t)))
        .collect();
    for (job, at) in &next {
        tracing::info!(job = %job.name, "next run at {at}");
    }
    // One signal listener for the whole loop: a listener made afresh each turn could
    // miss a signal that arrives between two turns.
    let mut shutdown = std::pin::pin!(crate::process::shutdown_signal());
    let signal = loop {
        let Some(soonest) = next.iter().map(|(_, t)| *t).min() else {
            break "no jobs left";
        };
        let wait = (soonest - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let now = Utc::now();
                for (job, at) in next.iter_mut() {
                    if *at <= now {
                        spawn_job(&mut tasks, &ctx, job.clone(), *at);
                        *at = job.next_run(now).unwrap_or(*at + chrono::Duration::days(3650));
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            s = &mut shutdown => break s,
        }
    };

    tracing::info!(
        "{signal}: starting no new jobs; waiting up to {} s for running ones",
        opts.grace.as_secs()
    );
    let deadline = Instant::now() + opts.grace;
    while !tasks.is_empty() && Instant::now() < deadline {
        let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), tasks.join_next()).await;
    }
    if !tasks.is_empty() {
        let pids: Vec<(String, u32)> = shared
            .lock()
            .expect("state")
            .running
            .iter()
            .filter_map(|(job, pid)| pid.map(|p| (job.clone(), p)))
            .collect();
        for (job, pid) in pids {
            tracing::warn!(job = %job, "grace period over: stopping it (SIGTERM)");
            // SAFETY: signalling a child we started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        while tasks.join_next().await.is_some() {}
    }
    server.abort();
    tracing::info!("scheduler stopped");
    Ok(())
}

struct JobContext {
    config: Config,
    repo: Repo,
    holder: String,
    history: PathBuf,
    shared: SharedState,
}

impl JobContext {
    /// The in-memory state (what /metrics serves) first, then the history file: whoever
    /// sees an outcome in the history finds it in /metrics too.
    fn record(&self, entry: &Entry) {
        self.shared
            .lock()
            .expect("state")
            .jobs
            .entry(entry.job.clone())
            .or_default()
            .apply(entry);
        if let Err(e) = history::append(&self.history, entry) {
            tracing::error!("cannot write the job history: {e:#}");
        }
    }
}

fn spawn_job(tasks: &mut JoinSet<()>, ctx: &Arc<JobContext>, job: Job, scheduled: chrono::DateTime<Utc>) {
    {
        let mut shared = ctx.shared.lock().expect("state");
        if shared.running.contains_key(&job.name) {
            drop(shared);
            let now = Utc::now();
            tracing::warn!(job = %job.name, "previous run still running: this one is skipped");
            ctx.record(&Entry {
                job: job.name.clone(),
                scheduled,
                start: now,
                end: now,
                outcome: Outcome::Skipped,
                attempts: 0,
                bytes: None,
                seconds: 0.0,
                detail: "the previous run is still running".into(),
            });
            return;
        }
        shared.running.insert(job.name.clone(), None);
    }
    let ctx = ctx.clone();
    tasks.spawn(async move {
        run_job(&ctx, &job, scheduled).await;
        ctx.shared.lock().expect("state").running.remove(&job.name);
    });
}

async fn run_job(ctx: &JobContext, job: &Job, scheduled: chrono::DateTime<Utc>) {
    let mut start = Utc::now();
    let mut started = Instant::now();
    let entry = |start: chrono::DateTime<Utc>,
                 started: Instant,
                 outcome: Outcome,
                 attempts: u32,
                 bytes: Option<u64>,
                 detail: String| Entry {
        job: job.name.clone(),
        scheduled,
        start,
        end: Utc::now(),
        outcome,
        attempts,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        detail,
    };
    let lease = match Lease::acquire(&ctx.repo, &format!("job-{}", job.name), &ctx.holder, LEASE_TTL).await {
        Ok(Ok(lease)) => lease,
        Ok(Err(holder)) => {
            tracing::warn!(job = %job.name, "already running on {holder}: skipped");
            ctx.record(&entry(
                start,
                started,
                Outcome::Skipped,
                0,
                None,
                format!("running on {holder}"),
            ));
            return;
        }
        Err(e) => {
            tracing::error!(job = %job.name, "cannot take the job lock: {e:#}");
            let e = entry(
                start,
                started,
                Outcome::Failure,
                0,
                None,
                format!("cannot take the job lock: {e:#}"),
            );
            ctx.record(&e);
            announce(ctx, job, &e).await;
            return;
        }
    };
    // The run starts once the lease is held: runs of one job never overlap in time.
    start = Utc::now();
    started = Instant::now();
    let lease = Arc::new(lease);
    let renewer = {
        let lease = lease.clone();
        let name = job.name.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_RENEW).await;
                match lease.renew().await {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(job = %name, "the job lease was lost"),
                    Err(e) => tracing::warn!(job = %name, "renewing the job lease: {e:#}"),
                }
            }
        })
    };

    tracing::info!(job = %job.name, "starting `pgdr {} {}`", job.command, job.args.join(" "));
    let mut attempt = 0;
    let (outcome, bytes, detail) = loop {
        attempt += 1;
        let (outcome, bytes, detail) = run_child(ctx, job).await;
        if outcome == Outcome::Success || outcome == Outcome::Aborted || attempt > job.retries {
            break (outcome, bytes, detail);
        }
        let backoff = job.retry_backoff * 2u32.saturating_pow(attempt - 1);
        tracing::warn!(job = %job.name, "attempt {attempt} failed ({detail}); retrying in {} s", backoff.as_secs());
        tokio::time::sleep(backoff).await;
    };
    let e = entry(start, started, outcome.clone(), attempt, bytes, detail);
    renewer.abort();
    if let Err(e) = lease.release().await {
        tracing::warn!(job = %job.name, "releasing the job lease: {e:#}");
    }
    match outcome {
        Outcome::Success => tracing::info!(job = %job.name, "succeeded in {:.1} s", e.seconds),
        _ => tracing::error!(job = %job.name, "{:?} after {attempt} attempt(s): {}", outcome, e.detail),
    }
    let previous_failures = ctx
        .shared
        .lock()
        .expect("state")
        .jobs
        .get(&job.name)
        .map(|s| s.consecutive_failures)
        .unwrap_or(0);
    ctx.record(&e);
    if outcome != Outcome::Success {
        announce(ctx, job, &e).await;
    } else if previous_failures > 0 {
        crate::notify::send(
            &ctx.config,
            &format!(
                "pgdr: job {} recovered: it succeeded after {previous_failures} failed run(s)",
                job.name
            ),
        )
        .await;
    }
}

async fn announce(ctx: &JobContext, job: &Job, e: &Entry) {
    let what = match e.outcome {
        Outcome::Timeout => "timed out",
        Outcome::Aborted => "was stopped",
        _ => "FAILED",
    };
    crate::notify::send(&ctx.config, &format!("pgdr: job {} {what}: {}", job.name, e.detail)).await;
}

/// The bytes a job's report says it moved, read back into the verb's own report type:
/// stored bytes of a backup, restored bytes of a logical restore.
fn reported_bytes(command: &str, stdout: &str) -> Option<u64> {
    match command {
        "backup" => serde_json::from_str::<crate::backup::BackupReport>(stdout)
            .ok()
            .map(|r| r.stored_bytes()),
        "copy" => serde_json::from_str::<crate::copy::CopyReport>(stdout)
            .ok()
            .map(|r| r.copies.iter().map(|c| c.bytes_copied).sum()),
        "restore" => serde_json::from_str::<crate::restore::logical::LogicalRestoreReport>(stdout)
            .ok()
            .and_then(|r| r.database)
            .map(|d| d.bytes),
        _ => None,
    }
}

/// Run `pgdr <command> <args> --json` once, within the job's timeout.
async fn run_child(ctx: &JobContext, job: &Job) -> (Outcome, Option<u64>, String) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return (Outcome::Failure, None, format!("cannot find the pgdr binary: {e}")),
    };
    let mut cmd = tokio::process::Command::new(exe);
    if let Some(file) = ctx.config.file() {
        cmd.arg("--config").arg(file);
    }
    cmd.arg(&job.command).args(&job.args).arg("--json");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (Outcome::Failure, None, format!("cannot start pgdr: {e}")),
    };
    let pid = child.id();
    ctx.shared.lock().expect("state").running.insert(job.name.clone(), pid);
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let err_reader = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let (status, timed_out) = match tokio::time::timeout(job.timeout, child.wait()).await {
        Ok(status) => (status.ok(), false),
        Err(_) => {
            tracing::error!(job = %job.name, "exceeded its timeout of {}: stopping it", super::format_duration(job.timeout));
            if let Some(pid) = pid {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let status = match tokio::time::timeout(TERM_GRACE, child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    let _ = child.kill().await;
                    None
                }
            };
            (status, true)
        }
    };
    let stdout = out_reader.await.unwrap_or_default();
    let stderr = err_reader.await.unwrap_or_default();
    let last_err = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    let bytes = reported_bytes(&job.command, &stdout);
    if timed_out {
        return (
            Outcome::Timeout,
            bytes,
            format!("exceeded the timeout of {}", super::format_duration(job.timeout)),
        );
    }
    match status {
        Some(s) if s.success() => (Outcome::Success, bytes, String::new()),
        Some(s) if s.code().is_none() || last_err.contains("SIGTERM") => (
            Outcome::Aborted,
            bytes,
            if last_err.is_empty() {
                format!("stopped ({s})")
            } else {
                last_err
            },
        ),
        Some(s) => (
            Outcome::Failure,
            bytes,
            if last_err.is_empty() {
                format!("exited with {s}")
            } else {
                last_err
            },
        ),
        None => (Outcome::Failure, bytes, "lost the job process".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::reported_bytes;

    #[test]
    fn bytes_come_from_the_verbs_report_types() {
        let backup = r#"{"label":"20261126T020000Z-L","kind":"logical","tags":[],"databases":["app"],
            "plain_bytes":100,"stored_bytes":40,"seconds":1.0,"repository":"file:///r"}"#;
        assert_eq!(reported_bytes("backup", backup), Some(40));
        let restore = r#"{"backup":"20261126T020000Z-L","database":"app","to_database":"app",
            "created":true,"tables_checked":1,"rows":5,"bytes":900,"seconds":0.1}"#;
        assert_eq!(reported_bytes("restore", restore), Some(900));
        assert_eq!(reported_bytes("backup", "not json"), None);
        assert_eq!(reported_bytes("expire", backup), None);
    }
}
