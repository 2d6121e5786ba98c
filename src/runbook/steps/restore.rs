//! The `restore` op: a physical restore started as a server, either the new primary
//! (archiving, reachable by others) or a scratch copy (private socket, no archiving);
//! and undoing one a killed run left half done, giving up any timeline it promoted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::dirs::{self, Made, absent, check_undo_allowed, socket_dir_for};
use super::{Server, StepCx, parse_port, reach_host};
use crate::config::Config;
use crate::postgres::TimelineId;
use crate::postgres::recovery::TargetAction;
use crate::restore::physical::{self, Listen, PhysicalRestoreOptions, TargetTimeline};
use crate::restore::target::Target;
use crate::runbook::Step;
use crate::server::free_port;

/// A `restore` step's parameters, checked.
pub(super) struct RestoreStep {
    /// The name later steps know the server by.
    server: String,
    scratch: bool,
    to: PathBuf,
    target: Target,
    exclusive: bool,
    /// `None`: a scratch copy's port is chosen when it runs.
    port: Option<u16>,
    /// Empty for a scratch copy, which listens on its socket only.
    listen: String,
}

impl RestoreStep {
    pub(super) fn parse(step: &Step, inputs: &BTreeMap<String, String>) -> Result<RestoreStep> {
        let port = parse_port(&step.name, &step.param("port", inputs))?;
        let to = PathBuf::from(step.param("to", inputs));
        if !to.is_absolute() {
            return Err(crate::usage!(
                "step {:?}: `to` must be an absolute path, not {:?}",
                step.name,
                to
            ));
        }
        let (target, exclusive) = crate::restore::target::parse_step_target(&step.param("target", inputs))?;
        let scratch = step.param("role", inputs) == "scratch";
        let listen = if scratch {
            String::new()
        } else {
            let l = step.param("listen", inputs);
            if l.is_empty() { "localhost".to_string() } else { l }
        };
        Ok(RestoreStep {
            server: step.param("server", inputs),
            scratch,
            to,
            target,
            exclusive,
            port,
            listen,
        })
    }

    /// The restore this step asks for, on `port`.
    fn options(&self, jobs: usize, port: u16) -> PhysicalRestoreOptions {
        PhysicalRestoreOptions {
            backup: "latest".into(),
            to: self.to.clone(),
            target: self.target.clone(),
            action: TargetAction::Promote,
            exclusive: self.exclusive,
            timeline: TargetTimeline::Latest,
            standby: false,
            primary_conninfo: None,
            primary_slot_name: None,
            delta: false,
            tablespace_map: Default::default(),
            // A scratch copy never archives into the repository; a new primary does.
            archive: !self.scratch,
            // Declared production's at the switch, not at promotion: an attempt given up
            // before it is never followed.
            declare: false,
            jobs,
            start: Some(Listen {
                port,
                addresses: self.listen.clone(),
                socket_dir: Some(socket_dir_for(&self.to)),
                scratch_hba: self.scratch,
            }),
        }
    }

    pub(super) async fn describe(&self, config: &Config, jobs: usize) -> Result<String> {
        let port = self.port.unwrap_or(0);
        let opts = self.options(jobs, port);
        let plan = physical::plan(config, &opts).await?;
        let role = if self.scratch {
            "a scratch copy (private socket, no archiving, no subscriptions or pg_cron jobs, removed at the end)"
                .to_string()
        } else {
            format!(
                "the new primary, listening on {}:{}, archiving into {} and keeping production's subscriptions and scheduled jobs (its timeline is declared production's at the switch)",
                self.listen, port, config.repository.url
            )
        };
        Ok(format!(
            "into {} as {role}; recovery to {}:\n      {}\n      {}",
            opts.to.display(),
            opts.target.recovery,
            plan.headline(),
            plan.to_string().replace('\n', "\n      ")
        ))
    }

    pub(super) async fn run(&self, cx: &mut StepCx<'_>) -> Result<String> {
        let config = cx.config;
        let port = match self.port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut opts = self.options(cx.jobs, port);
        if let Some(tli) = cx.pinned_timeline {
            (cx.say)(format!(
                "following timeline {tli}, as the interrupted attempt did (a timeline that attempt may have started is not followed)"
            ));
            opts.timeline = TargetTimeline::Id(tli);
        }
        let sock = socket_dir_for(&opts.to);
        let plan = physical::plan(config, &opts).await?;
        (cx.say)(plan.to_string());
        let chain = if plan.chain.is_empty() {
            String::new()
        } else {
            let labels: Vec<&str> = plan.chain.iter().map(|m| m.label.as_str()).collect();
            format!(" (an incremental, with blocks from {})", labels.join(", "))
        };
        dirs::make_socket_dir(&sock, self.scratch)?;
        let report = physical::execute(config, &opts, plan, cx.say).await?;
        // Tests: die here like kill -9 would, the files down and the server up,
        // the step not recorded as done.
        if std::env::var_os("PGDR_TEST_RECOVER_KILL_IN_RESTORE").is_some() {
            // SAFETY: raising a signal at ourselves has no preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        cx.servers.insert(
            self.server.clone(),
            Server {
                data_dir: opts.to.clone(),
                socket_dir: sock,
                host: if self.scratch {
                    String::new()
                } else {
                    reach_host(&self.listen)
                },
                port,
                role: if self.scratch { "scratch" } else { "primary" }.into(),
            },
        );
        let recovery = report
            .recovery
            .as_ref()
            .map(|r| format!("recovery {} at LSN {} on timeline {}", r.state, r.lsn, r.timeline))
            .unwrap_or_default();
        Ok(format!(
            "restored {}{chain} into {} (port {port}); {recovery}",
            report.backup,
            opts.to.display()
        ))
    }
}

/// Undo a restore a killed run left half done in `dir` (only if this recovery made
/// it): a timeline the attempt promoted onto is given up with it, so that no later
/// restore may follow it.
pub(super) async fn undo(dir: &Path, cx: &mut StepCx<'_>, created: &[Made], id: &str) -> Result<Option<String>> {
    if absent(dir)? {
        return Ok(None);
    }
    check_undo_allowed(dir, created, id)?;
    if let Some(tli) = cx.pinned_timeline.and_then(|followed| promoted_timeline(dir, followed)) {
        let repo = crate::repo::Repo::open(cx.config).await?;
        repo.abandon_timeline(tli, &format!("pgdr recover {id}: an interrupted attempt, redone"))
            .await
            .with_context(|| format!("recording timeline {tli} of the interrupted attempt as abandoned"))?;
        (cx.say)(format!(
            "timeline {tli}, made by the interrupted attempt, is recorded as abandoned"
        ));
        // Its history goes into the archive now, so that the redo's promotion picks
        // the next timeline: stored later (by the attempt's detached pusher), it would
        // refuse the redo's own history under the same name, and the redo's timeline
        // would never be declared (CI: crash::recoveries_killed_at_random_moments).
        let name = format!("{tli:08X}.history");
        let path = dir.join("pg_wal").join(&name);
        if path.is_file()
            && let Err(e) =
                crate::archive::push::push_one(&repo, &crate::postgres::WalFile::History(name.clone()), &path).await
        {
            (cx.say)(format!("could not archive {name} of the interrupted attempt: {e:#}"));
        }
    }
    dirs::empty_server_dir(cx.config, dir).map(Some)
}

/// The timeline a restored directory promoted onto, past the one it `followed`: its
/// own newest history file in pg_wal (a recovery that follows a fixed timeline never
/// fetches a higher one).
fn promoted_timeline(dir: &Path, followed: TimelineId) -> Option<TimelineId> {
    std::fs::read_dir(dir.join("pg_wal"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let tli = name.strip_suffix(".history")?;
            (tli.len() == 8).then(|| u32::from_str_radix(tli, 16).ok()).flatten()
        })
        .filter(|t| *t > followed)
        .max()
}

/// The `recovery_target_timeline` pgdr wrote into a restored directory, if a number.
pub(super) fn written_timeline(dir: &Path) -> Option<TimelineId> {
    let conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).ok()?;
    conf.lines().rev().find_map(|l| {
        let (name, value) = l.split_once('=')?;
        (name.trim() == "recovery_target_timeline")
            .then(|| value.trim().trim_matches('\'').parse().ok())
            .flatten()
    })
}
