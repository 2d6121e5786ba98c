//! Executing a runbook (`recover`, and the recovery half of `drill`): [`prepare`]
//! checks the inputs and every step that can be checked before anything changes
//! (which backup, which WAL, free directories, `[switch]`), and returns the plan a
//! DBA reads before saying yes; [`execute`] runs the steps in order with a
//! timestamped log, records each step in a state file as it starts and ends, and
//! stops at the first failure with the next thing to do. Run again after fixing the
//! cause, it resumes: finished steps are skipped, a half-done one is undone and run
//! anew. The report goes to `verifications/` and to `[notify]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::steps::dirs::{self, Made};
use super::steps::{self, Server, StepCx};
use super::{Op, Runbook, Step, Targets};
use crate::config::Config;
use crate::restore::copy_back::TableRestore;
use crate::steps::StepLog;

#[derive(Debug, Clone)]
pub struct RecoverOptions {
    pub runbook: Runbook,
    /// Resolved (`Runbook::resolve_inputs`).
    pub inputs: BTreeMap<String, String>,
    pub dry_run: bool,
    /// Where progress is kept for a resumed run.
    pub state_file: PathBuf,
    pub jobs: usize,
    /// Resume an unfinished recovery whose state was last written long ago.
    pub resume: bool,
}

/// An unfinished state older than this is not resumed without `--resume`: it may be
/// an earlier incident a DBA finished by hand.
const STALE_STATE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Started,
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub op: Op,
    pub status: Status,
    pub started: Option<DateTime<Utc>>,
    pub seconds: f64,
    pub detail: String,
    /// A restore an earlier run left half done followed this timeline: every later
    /// attempt follows it too, not a timeline that attempt may have started (kept
    /// here because the next attempt may be killed before writing it anywhere else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<crate::postgres::TimelineId>,
    /// The step's parameters with the inputs filled in; a resume needs the same.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Directories this recovery created for the step (recorded before they were
    /// made): the only ones an undo may remove.
    #[serde(default)]
    pub created: Vec<Made>,
}

/// A recovery's progress on disk (JSON, written atomically after every change).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// This recovery's own id: what it created is recorded under it.
    #[serde(default)]
    pub id: String,
    pub scenario: String,
    pub inputs: BTreeMap<String, String>,
    /// The repository it reads (`primary` or a copy's name).
    pub repository: String,
    pub started: DateTime<Utc>,
    pub steps: Vec<StepState>,
    pub servers: BTreeMap<String, Server>,
    #[serde(default)]
    pub restored: Vec<TableRestore>,
    pub finished: Option<DateTime<Utc>>,
}

impl State {
    fn load(path: &Path) -> Result<Option<State>> {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
                crate::usage!(
                    "the recovery state file {} is damaged ({e}) — move it away to start over",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(self).expect("state serialises");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// A checked recovery, ready to run: the plan and where it starts.
pub struct Prepared {
    pub state: State,
    pub plan: Vec<String>,
    /// Steps already done by an earlier, interrupted run.
    pub resumed: usize,
    /// Held from the plan to the end: one run per state file.
    _lock: Option<std::fs::File>,
}

/// Lock `<state file>.lock` for this run; another run holding it is a refusal.
fn lock_state(state_file: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    if let Some(dir) = state_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let path = state_file.with_extension("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(crate::usage!(
            "another pgdr recover is running with the state file {} — wait for it, or stop it first",
            state_file.display()
        ));
    }
    Ok(f)
}

impl fmt::Display for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.plan.iter().enumerate() {
            writeln!(f, "  {}. {line}", i + 1)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverReport {
    pub scenario: String,
    pub title: String,
    pub runbook: String,
    pub repository: String,
    pub inputs: BTreeMap<String, String>,
    pub dry_run: bool,
    pub ok: bool,
    /// Steps skipped because an earlier run had done them.
    pub resumed_steps: usize,
    pub started: DateTime<Utc>,
    pub seconds: f64,
    pub targets: Targets,
    /// The whole recovery (from its first start, over resumed runs) within the RTO.
    pub rto_met: Option<bool>,
    pub plan: Vec<String>,
    pub steps: Vec<StepLog>,
    pub servers: BTreeMap<String, Server>,
    pub restored: Vec<TableRestore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// What a new primary restored to a point in time leaves out by design: every
    /// commit after its target. Said, so that a clean run never hides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<String>,
    pub state_file: PathBuf,
}

impl fmt::Display for RecoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            writeln!(f, "{} ({}) — the plan:", self.title, self.runbook)?;
            for (i, line) in self.plan.iter().enumerate() {
                writeln!(f, "  {}. {line}", i + 1)?;
            }
            return write!(f, "dry run: nothing was changed");
        }
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        write!(f, "{}", self.summary())
    }
}

impl RecoverReport {
    /// The outcome without the step log (which was printed as it happened).
    pub fn summary(&self) -> RecoverSummary<'_> {
        RecoverSummary(self)
    }
}

pub struct RecoverSummary<'a>(&'a RecoverReport);

impl fmt::Display for RecoverSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        for t in &r.restored {
            writeln!(
                f,
                "  {}: {} — {} rows (the table had {} at the target)",
                t.table, t.action, t.rows, t.rows_at_target
            )?;
        }
        match &r.error {
            Some(e) => {
                write!(f, "recovery {} STOPPED: {e}", r.scenario)?;
                if let Some(n) = &r.next {
                    write!(f, "\nnext: {n}")?;
                }
                Ok(())
            }
            None => {
                if let Some(d) = &r.discarded {
                    writeln!(f, "discarded by design: {d}")?;
                }
                write!(
                    f,
                    "recovery {} done in {:.1} s (RTO target {} min, plan {}: {})",
                    r.scenario,
                    r.seconds,
                    r.targets.rto_minutes,
                    r.targets.plan,
                    if r.rto_met == Some(true) { "met" } else { "MISSED" }
                )
            }
        }
    }
}

/// The window a recovery gives up on purpose: a new primary restored to a moment
/// before the failure holds nothing committed after it.
fn discarded_window(runbook: &Runbook, inputs: &BTreeMap<String, String>) -> Option<String> {
    runbook
        .steps
        .iter()
        .filter(|s| s.op == Op::Restore && s.param("role", inputs) == "primary")
        .map(|s| s.param("target", inputs))
        .find(|t| !matches!(t.as_str(), "" | "latest" | "immediate"))
        .map(|target| {
            format!(
                "every transaction committed after {target} is not in the new primary; the old primary's WAL still holds them (pgdr wal-search --since '{target}' lists them)"
            )
        })
}

/// Check everything that can be checked, load or start the state, and build the
/// plan. Nothing is changed.
pub async fn prepare(config: &Config, opts: &RecoverOptions) -> Result<Prepared> {
    let runbook = &opts.runbook;
    let repository = config.selected_repository().unwrap_or("primary").to_string();
    if runbook.needs_copy && config.selected_repository().is_none() {
        return Err(crate::usage!(
            "the {} runbook recovers from a copy in another region, using nothing from the lost one — pass --repository NAME (one of [[repository.copies]])",
            runbook.name
        ));
    }
    let fresh = fresh_state(runbook, &opts.inputs, &repository);
    let lock = if opts.dry_run {
        None
    } else {
        Some(lock_state(&opts.state_file)?)
    };
    let state = match State::load(&opts.state_file)? {
        Some(old) if old.finished.is_none() => resumable(old, &fresh, opts)?,
        _ => fresh,
    };
    let resumed = state.steps.iter().filter(|s| s.status == Status::Done).count();
    let plan = plan_lines(config, opts, &state).await?;
    Ok(Prepared {
        state,
        plan,
        resumed,
        _lock: lock,
    })
}

/// The state of a recovery that has not started: every step pending.
fn fresh_state(runbook: &Runbook, inputs: &BTreeMap<String, String>, repository: &str) -> State {
    State {
        id: format!("{:016x}", rand::random::<u64>()),
        scenario: runbook.name.clone(),
        inputs: inputs.clone(),
        repository: repository.to_string(),
        started: Utc::now(),
        steps: runbook
            .steps
            .iter()
            .map(|s| StepState {
                name: s.name.clone(),
                op: s.op,
                status: Status::Pending,
                started: None,
                seconds: 0.0,
                detail: String::new(),
                timeline: None,
                params: s.filled(inputs),
                created: Vec::new(),
            })
            .collect(),
        servers: BTreeMap::new(),
        restored: Vec::new(),
        finished: None,
    }
}

/// An unfinished recovery found in the state file, if this run may go on with it:
/// the same scenario, inputs, repository and steps, and not stale (or `--resume`).
fn resumable(old: State, fresh: &State, opts: &RecoverOptions) -> Result<State> {
    let same_steps = old.steps.len() == fresh.steps.len()
        && old
            .steps
            .iter()
            .zip(&fresh.steps)
            // A state from before parameters were recorded has none to compare.
            .all(|(a, b)| a.name == b.name && a.op == b.op && (a.params.is_empty() || a.params == b.params));
    if old.scenario != fresh.scenario || old.inputs != fresh.inputs || old.repository != fresh.repository || !same_steps
    {
        return Err(crate::usage!(
            "an unfinished recovery ({} from {}, started {}) is recorded in {} with other inputs or steps — finish it with the same inputs, or move the state file away to start over",
            old.scenario,
            old.repository,
            old.started.format("%Y-%m-%d %H:%M:%S UTC"),
            opts.state_file.display()
        ));
    }
    let age = std::fs::metadata(&opts.state_file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    if age > STALE_STATE && !opts.resume {
        return Err(crate::usage!(
            "an unfinished recovery ({}, started {}) was last written {} h ago in {} — if it is this incident, run again with --resume; if it was finished by hand, move the state file away to start a new one",
            old.id,
            old.started.format("%Y-%m-%d %H:%M:%S UTC"),
            age.as_secs() / 3600,
            opts.state_file.display()
        ));
    }
    Ok(old)
}

/// One line per step: done earlier, to be undone and run again, or what it will do.
async fn plan_lines(config: &Config, opts: &RecoverOptions, state: &State) -> Result<Vec<String>> {
    let runbook = &opts.runbook;
    let mut plan = Vec::new();
    for (step, st) in runbook.steps.iter().zip(&state.steps) {
        let line = match (st.status, steps::own_dir(step, &opts.inputs)) {
            (Status::Done, _) => format!("{} — done earlier ({})", step.name, st.detail),
            // A half-done restore is undone first; its directory is not free yet.
            (Status::Started | Status::Failed, Some(to)) => {
                dirs::check_undo_allowed(&to, &st.created, &state.id)
                    .with_context(|| format!("step {:?} (line {} of {})", step.name, step.line, runbook.source))?;
                format!(
                    "{} — interrupted earlier: {} (made by this recovery, {}) is removed and the step runs again",
                    step.name,
                    to.display(),
                    state.id
                )
            }
            _ => format!(
                "{}: {}",
                step.name,
                steps::describe(step, config, &opts.inputs, opts.jobs)
                    .await
                    .with_context(|| format!("step {:?} (line {} of {})", step.name, step.line, runbook.source))?
            ),
        };
        plan.push(line);
    }
    Ok(plan)
}

/// Run the prepared recovery. A failed step is in the report (`ok: false`, with
/// `next`), not an `Err`; the report is stored in `verifications/` and notified.
pub async fn execute(
    config: &Config,
    opts: &RecoverOptions,
    prepared: Prepared,
    say: &mut dyn FnMut(String),
) -> Result<RecoverReport> {
    let runbook = &opts.runbook;
    let t0 = Instant::now();
    let Prepared {
        mut state,
        plan,
        resumed,
        _lock,
    } = prepared;
    let mut report = start_report(opts, &state, plan, resumed);
    if opts.dry_run {
        return Ok(report);
    }
    state.save(&opts.state_file)?;
    for (i, step) in runbook.steps.iter().enumerate() {
        if state.steps[i].status == Status::Done {
            report.steps.push(StepLog {
                step: step.name.clone(),
                started: state.steps[i].started.unwrap_or(state.started),
                seconds: 0.0,
                ok: true,
                detail: format!("done earlier: {}", state.steps[i].detail),
            });
            continue;
        }
        let log = run_step(config, opts, &mut state, i, step, say).await?;
        let failed = (!log.ok).then(|| log.detail.clone());
        report.steps.push(log);
        if let Some(detail) = failed {
            report.ok = false;
            report.error = Some(format!(
                "step {} ({}, line {}) failed: {detail}",
                i + 1,
                step.name,
                step.line
            ));
            report.next = Some(format!(
                "fix the cause and run the same command again: finished steps are skipped, this one starts over ({})",
                opts.state_file.display()
            ));
            break;
        }
    }
    if report.ok {
        state.finished = Some(Utc::now());
        state.save(&opts.state_file)?;
    }
    report.servers = state.servers.clone();
    report.restored = state.restored.clone();
    report.seconds = t0.elapsed().as_secs_f64();
    if report.ok {
        // Over every run of this recovery, from the first.
        let total = (Utc::now() - state.started).num_milliseconds() as f64 / 1000.0;
        report.rto_met = Some(total <= runbook.targets.rto_minutes as f64 * 60.0);
    }
    crate::repo::verification::store_event_report(
        config,
        &format!("recover-{}", runbook.name),
        report.started,
        &report,
    )
    .await;
    notify_outcome(config, opts, &report).await;
    if !report.ok && report.error.is_none() {
        return Err(anyhow!("recovery failed"));
    }
    Ok(report)
}

/// The report before any step has run: what was planned, and what a point-in-time
/// recovery discards by design.
fn start_report(opts: &RecoverOptions, state: &State, plan: Vec<String>, resumed: usize) -> RecoverReport {
    let runbook = &opts.runbook;
    RecoverReport {
        scenario: runbook.name.clone(),
        title: runbook.title.clone(),
        runbook: runbook.source.clone(),
        repository: state.repository.clone(),
        inputs: opts.inputs.clone(),
        dry_run: opts.dry_run,
        ok: true,
        resumed_steps: resumed,
        started: state.started,
        seconds: 0.0,
        targets: runbook.targets.clone(),
        rto_met: None,
        plan,
        steps: Vec::new(),
        servers: BTreeMap::new(),
        restored: Vec::new(),
        error: None,
        next: None,
        discarded: discarded_window(runbook, &opts.inputs),
        state_file: opts.state_file.clone(),
    }
}

/// Run step `i`, which is not done: mark it started, record the directory it makes,
/// undo what an interrupted attempt left, run it, and save its outcome. A failed
/// step is a log line with `ok: false`; an `Err` is a state file that cannot be
/// written.
async fn run_step(
    config: &Config,
    opts: &RecoverOptions,
    state: &mut State,
    i: usize,
    step: &Step,
    say: &mut dyn FnMut(String),
) -> Result<StepLog> {
    let interrupted = matches!(state.steps[i].status, Status::Started | Status::Failed);
    let started = Utc::now();
    let t = Instant::now();
    state.steps[i].status = Status::Started;
    state.steps[i].started = Some(started);
    state.save(&opts.state_file)?;
    say(format!("{} ▶ {} ({})", started.format("%H:%M:%S"), step.name, step.op));
    // Remember (on disk, before its directory goes) the timeline an interrupted
    // attempt followed; the first attempt's choice wins over later ones.
    if interrupted && state.steps[i].timeline.is_none() {
        state.steps[i].timeline = steps::partial_timeline(step, &opts.inputs);
        if state.steps[i].timeline.is_some() {
            state.save(&opts.state_file)?;
        }
    }
    if let Some(to) = steps::own_dir(step, &opts.inputs) {
        record_own_dir(state, i, &to, &opts.state_file)?;
    }
    let pinned = state.steps[i].timeline;
    let created = state.steps[i].created.clone();
    let recovery_id = state.id.clone();
    let mut cx = StepCx {
        config,
        inputs: &opts.inputs,
        jobs: opts.jobs,
        servers: &mut state.servers,
        restored: &mut state.restored,
        say,
        pinned_timeline: pinned,
    };
    let outcome = async {
        if interrupted && let Some(undone) = steps::undo_partial(step, &mut cx, &created, &recovery_id).await? {
            (cx.say)(undone);
        }
        steps::run(step, &opts.runbook.checks, &mut cx).await
    }
    .await;
    let seconds = t.elapsed().as_secs_f64();
    let (ok, detail) = match &outcome {
        Ok(d) => (true, d.clone()),
        Err(e) => (false, format!("{e:#}")),
    };
    state.steps[i].status = if ok { Status::Done } else { Status::Failed };
    state.steps[i].seconds = seconds;
    state.steps[i].detail = detail.clone();
    state.save(&opts.state_file)?;
    let log = StepLog {
        step: step.name.clone(),
        started,
        seconds,
        ok,
        detail,
    };
    say(log.to_string());
    Ok(log)
}

/// Record step `i`'s data directory `to` as this recovery's, making it if absent.
/// Recorded (on disk) before they are made: an undo removes only these. The data
/// directory is made here, and known by its identity (inode and birth time), so a
/// directory someone else put at the same path later is never taken for it.
fn record_own_dir(state: &mut State, i: usize, to: &Path, state_file: &Path) -> Result<()> {
    if !dirs::absent(to)? && dirs::is_empty_dir(to) && !state.steps[i].created.iter().any(|m| m.path == to) {
        state.steps[i].created.push(dirs::known_dir(to)?);
    } else if dirs::absent(to)? {
        // The intent first: killed between this and the next save, an empty
        // directory at `to` is ours.
        state.steps[i].created.retain(|m| m.path != to);
        state.steps[i].created.push(Made::intended(to));
        state.save(state_file)?;
        let made = dirs::make_own_dir(to)?;
        state.steps[i].created.retain(|m| m.path != to);
        state.steps[i].created.push(made);
    }
    state.save(state_file)
}

/// Tell `[notify]` how the recovery ended, in the runbook's words where it has them.
async fn notify_outcome(config: &Config, opts: &RecoverOptions, report: &RecoverReport) {
    let runbook = &opts.runbook;
    let template = if report.ok {
        &runbook.notify.success
    } else {
        &runbook.notify.failure
    };
    let mut message = template
        .as_ref()
        .map(|t| super::fill(t, &opts.inputs))
        .unwrap_or_else(|| {
            format!(
                "pgdr: recovery {} {}",
                runbook.name,
                if report.ok { "done" } else { "FAILED" }
            )
        });
    if let Some(e) = &report.error {
        message.push_str(&format!(": {e}"));
    }
    crate::notify::send(config, &message).await;
}
