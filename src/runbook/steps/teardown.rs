//! The `teardown` op: stop a scratch server a step made and remove its directories.

use std::collections::BTreeMap;

use anyhow::Result;

use super::StepCx;
use super::dirs::{KeepDir, remove_server};
use crate::runbook::Step;

/// A `teardown` step's parameters.
pub(super) struct TeardownStep {
    server: String,
}

impl TeardownStep {
    pub(super) fn parse(step: &Step, inputs: &BTreeMap<String, String>) -> TeardownStep {
        TeardownStep {
            server: step.param("server", inputs),
        }
    }

    pub(super) fn describe(&self) -> String {
        format!("server {:?} stopped and removed", self.server)
    }

    pub(super) fn run(&self, cx: &mut StepCx<'_>) -> Result<String> {
        let name = &self.server;
        let Some(s) = cx.servers.get(name).cloned() else {
            return Ok(format!("server {name:?} is already gone"));
        };
        remove_server(cx.config, &s.data_dir, KeepDir::No)?;
        cx.servers.remove(name);
        Ok(format!("stopped and removed {}", s.data_dir.display()))
    }
}
