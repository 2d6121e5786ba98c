//! The `validate` op: `pg_amcheck` and SQL checks against a server a step made (the
//! runbook's checks for it; a new primary also the configuration's `[verify]` checks).

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};

use super::StepCx;
use crate::postgres::PgTools;
use crate::runbook::{Check, Step};

/// A `validate` step's parameters.
pub(super) struct ValidateStep {
    server: String,
    /// `pg_amcheck --heapallindexed` first (unless `amcheck = false`).
    amcheck: bool,
}

impl ValidateStep {
    pub(super) fn parse(step: &Step, inputs: &BTreeMap<String, String>) -> ValidateStep {
        ValidateStep {
            server: step.param("server", inputs),
            amcheck: step.param("amcheck", inputs) != "false",
        }
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "server {:?}: {}SQL checks",
            self.server,
            if self.amcheck {
                "pg_amcheck --heapallindexed, "
            } else {
                ""
            }
        )
    }

    pub(super) async fn run(&self, checks: &[Check], cx: &mut StepCx<'_>) -> Result<String> {
        let config = cx.config;
        let s = cx.server(&self.server)?.clone();
        let name = &self.server;
        let target = s.target(config)?;
        let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
        let mut done = Vec::new();
        if self.amcheck {
            crate::verify::amcheck(&tools, &target).await?;
            done.push("pg_amcheck --heapallindexed: no corruption".to_string());
        }
        let mut n = 0;
        for c in checks.iter().filter(|c| c.server == *name) {
            let sql = crate::runbook::fill(&c.sql, cx.inputs);
            crate::verify::run_check(&target, &c.database, &c.name, &sql, &c.expect)
                .await
                .with_context(|| format!("check {:?}", c.name))?;
            n += 1;
        }
        // The configuration's own checks describe production: a new primary
        // must pass them too.
        if s.role == "primary" {
            for (i, c) in config.verify.check.iter().enumerate() {
                let cname = c.name.clone().unwrap_or_else(|| format!("check {}", i + 1));
                let db = c.database.clone().unwrap_or_else(|| "postgres".into());
                crate::verify::run_check(&target, &db, &cname, &c.sql, &c.expected_text())
                    .await
                    .with_context(|| format!("[verify] check {cname:?}"))?;
                n += 1;
            }
        }
        if n > 0 {
            done.push(format!("{n} SQL checks passed"));
        }
        if done.is_empty() {
            // Never a ✓ for a validation that looked at nothing.
            return Err(anyhow!(
                "nothing was validated on server {name:?}: set amcheck = true or add [[checks]] for it"
            ));
        }
        Ok(done.join("; "))
    }
}
