//! The `standby` op: a streaming standby of a server a step made, built from the
//! latest backup (`failover::standby`); and undoing one a killed run left half done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use super::dirs::{self, Made, absent, check_undo_allowed, socket_dir_for};
use super::{Server, StepCx, parse_port, reach_host};
use crate::config::Config;
use crate::restore::physical::Listen;
use crate::runbook::Step;

/// A `standby` step's parameters.
pub(super) struct StandbyStep {
    /// The step's name, for messages.
    step: String,
    /// The server it follows.
    of: String,
    /// The name later steps know it by.
    server: String,
    to: PathBuf,
    /// As written: checked when the step runs.
    port: String,
    listen: String,
    slot: Option<String>,
}

impl StandbyStep {
    pub(super) fn parse(step: &Step, inputs: &BTreeMap<String, String>) -> StandbyStep {
        let slot = step.param("slot", inputs);
        StandbyStep {
            step: step.name.clone(),
            of: step.param("of", inputs),
            server: step.param("server", inputs),
            to: PathBuf::from(step.param("to", inputs)),
            port: step.param("port", inputs),
            listen: match step.param("listen", inputs) {
                l if l.is_empty() => "localhost".to_string(),
                l => l,
            },
            slot: (!slot.is_empty()).then_some(slot),
        }
    }

    pub(super) fn describe(&self) -> Result<String> {
        let to = &self.to;
        if to.exists() && std::fs::read_dir(to).map(|mut d| d.next().is_some()).unwrap_or(true) {
            return Err(crate::usage!(
                "the standby's directory {} is not empty — choose another --standby-data-dir",
                to.display()
            ));
        }
        Ok(format!(
            "a streaming standby of server {:?} in {}, port {}, from the latest backup",
            self.of,
            to.display(),
            self.port
        ))
    }

    pub(super) async fn run(&self, cx: &mut StepCx<'_>) -> Result<String> {
        let config = cx.config;
        let primary = cx.server(&self.of)?.clone();
        let port = parse_port(&self.step, &self.port)?.ok_or_else(|| anyhow!("the standby step needs a port"))?;
        // The standby catches up from the archive first: the primary's current
        // segment (a new primary's first on its timeline) must be there.
        {
            let c = primary.target(config)?.connect(Some("postgres")).await?;
            crate::postgres::server::archive_current_wal(&c)
                .await
                .context("archiving the primary's current WAL segment for the standby")?;
        }
        let sock = socket_dir_for(&self.to);
        dirs::make_socket_dir(&sock, false)?;
        let report = crate::failover::standby::create(
            config,
            &crate::failover::standby::StandbyOptions {
                to: self.to.clone(),
                primary: primary.endpoint(),
                slot: self.slot.clone(),
                listen: Listen {
                    port,
                    addresses: self.listen.clone(),
                    socket_dir: Some(sock.clone()),
                    scratch_hba: false,
                },
                backup: "latest".into(),
                jobs: cx.jobs,
            },
            cx.say,
        )
        .await?;
        cx.servers.insert(
            self.server.clone(),
            Server {
                data_dir: self.to.clone(),
                socket_dir: sock,
                host: reach_host(&self.listen),
                port,
                role: "standby".into(),
            },
        );
        Ok(report.to_string())
    }
}

/// Undo a standby a killed run left half done in `dir` (only if this recovery made
/// it).
pub(super) fn undo(dir: &Path, config: &Config, created: &[Made], id: &str) -> Result<Option<String>> {
    if absent(dir)? {
        return Ok(None);
    }
    check_undo_allowed(dir, created, id)?;
    dirs::empty_server_dir(config, dir).map(Some)
}
