//! What each runbook operation does, composed from the library, one file per op: a
//! restore started as a server (`restore`, through `restore::physical`), validation
//! (`validate`: `verify::amcheck`, SQL checks), a fence (`fence`:
//! `failover::fence_data_dir`), a standby (`standby`: `failover::standby`), a switch
//! (`switch`), bringing lost data back from a scratch copy (`copy_back`, through
//! `restore::copy_back`), and tearing a scratch server down (`teardown`). Each op's
//! parameters are read once into a small struct. The directories steps make and
//! remove are `dirs`.
//!
//! Each step either checks its own postcondition or can be run again: a step a killed
//! run left half done is undone (`undo_partial`) and run anew.

mod copy_back;
pub mod dirs;
mod fence;
mod restore;
mod standby;
mod switch;
mod teardown;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use self::copy_back::CopyBackStep;
use self::dirs::Made;
use self::fence::FenceBasis;
use self::restore::RestoreStep;
use self::standby::StandbyStep;
use self::switch::SwitchStep;
use self::teardown::TeardownStep;
use self::validate::ValidateStep;
use super::{Check, Op, Step};
use crate::config::Config;
use crate::postgres::{PgTarget, TimelineId};
use crate::restore::copy_back::TableRestore;
use crate::switch::Endpoint;

/// A server a step made: where it runs and what it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Server {
    pub data_dir: PathBuf,
    /// Its socket directory (`<data_dir>.sock`): for a scratch copy the only way in.
    pub socket_dir: PathBuf,
    /// Where others (PgBouncer, a standby) reach it; empty for a scratch copy.
    pub host: String,
    pub port: u16,
    /// primary, standby or scratch.
    pub role: String,
}

impl Server {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// How pgdr connects to it: through its socket, as the configured user.
    pub fn target(&self, config: &Config) -> Result<PgTarget> {
        Ok(PgTarget::from_config(config.postgres.url.as_deref())?
            .with_address(&self.socket_dir.display().to_string(), self.port))
    }
}

/// Everything a step may read or record.
pub struct StepCx<'a> {
    pub config: &'a Config,
    pub inputs: &'a BTreeMap<String, String>,
    pub jobs: usize,
    pub servers: &'a mut BTreeMap<String, Server>,
    pub restored: &'a mut Vec<TableRestore>,
    pub say: &'a mut dyn FnMut(String),
    /// A restore redone after an interruption follows the timeline the first attempt
    /// chose: that attempt may have promoted and archived a timeline of its own.
    pub pinned_timeline: Option<TimelineId>,
}

impl StepCx<'_> {
    /// A server an earlier step made, by name.
    fn server(&self, name: &str) -> Result<&Server> {
        self.servers
            .get(name)
            .ok_or_else(|| anyhow!("server {name:?} is not running (the step that makes it has not run)"))
    }
}

/// The host others reach a server on: the first of its listen addresses.
fn reach_host(listen: &str) -> String {
    match listen.split(',').next().map(str::trim).unwrap_or("") {
        "" | "*" | "0.0.0.0" | "::" => "localhost".to_string(),
        h => h.to_string(),
    }
}

/// A step's `port` as written (`raw`), if it sets one.
fn parse_port(step: &str, raw: &str) -> Result<Option<u16>> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| crate::usage!("step {step:?}: port {raw:?} is not a port number"))
}

/// The data directory a step makes (a restore's or a standby's `to`), which the
/// engine records before it is made and an undo may empty; `None` for the other ops.
pub fn own_dir(step: &Step, inputs: &BTreeMap<String, String>) -> Option<PathBuf> {
    matches!(step.op, Op::Restore | Op::Standby).then(|| PathBuf::from(step.param("to", inputs)))
}

/// One line of the plan for a step (without touching anything).
pub async fn describe(step: &Step, config: &Config, inputs: &BTreeMap<String, String>, jobs: usize) -> Result<String> {
    match step.op {
        Op::Restore => RestoreStep::parse(step, inputs)?.describe(config, jobs).await,
        Op::Validate => Ok(ValidateStep::parse(step, inputs).describe()),
        Op::Fence => FenceBasis::parse(step, inputs)?.describe(config).await,
        Op::Standby => StandbyStep::parse(step, inputs).describe(),
        Op::Switch => SwitchStep::parse(step, inputs).describe(config).await,
        Op::CopyBack => CopyBackStep::parse(step, inputs).describe(config),
        Op::Teardown => Ok(TeardownStep::parse(step, inputs).describe()),
    }
}

/// Run one step; its one-line result.
pub async fn run(step: &Step, checks: &[Check], cx: &mut StepCx<'_>) -> Result<String> {
    let inputs = cx.inputs;
    match step.op {
        Op::Restore => RestoreStep::parse(step, inputs)?.run(cx).await,
        Op::Validate => ValidateStep::parse(step, inputs).run(checks, cx).await,
        Op::Fence => FenceBasis::parse(step, inputs)?.run(cx.config).await,
        Op::Standby => StandbyStep::parse(step, inputs).run(cx).await,
        Op::Switch => SwitchStep::parse(step, inputs).run(cx).await,
        Op::CopyBack => CopyBackStep::parse(step, inputs).run(cx).await,
        Op::Teardown => TeardownStep::parse(step, inputs).run(cx),
    }
}

/// A step a killed run started and did not finish: undo what it left (a half-laid
/// data directory, a server it started) so that it can run again from the start.
/// Only what this recovery recorded as made by it is removed; anything else is a
/// refusal that says what to do.
pub async fn undo_partial(step: &Step, cx: &mut StepCx<'_>, created: &[Made], id: &str) -> Result<Option<String>> {
    // Only a restore or a standby leaves anything behind to undo.
    let Some(dir) = own_dir(step, cx.inputs) else {
        return Ok(None);
    };
    match step.op {
        Op::Restore => restore::undo(&dir, cx, created, id).await,
        Op::Standby => standby::undo(&dir, cx.config, created, id),
        Op::Validate | Op::Fence | Op::Switch | Op::CopyBack | Op::Teardown => Ok(None),
    }
}

/// The timeline a restore step an earlier run left half done followed, as its
/// directory's configuration names it: read (and kept in the state file) before that
/// directory is removed.
pub fn partial_timeline(step: &Step, inputs: &BTreeMap<String, String>) -> Option<TimelineId> {
    (step.op == Op::Restore)
        .then(|| restore::written_timeline(Path::new(&step.param("to", inputs))))
        .flatten()
}
