//! The `switch` op: move application connections (`[switch]`: PgBouncer, a hook) to a
//! server a step made, then declare its timeline production's.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};

use super::StepCx;
use crate::config::Config;
use crate::runbook::Step;
use crate::switch;

/// A `switch` step's parameters.
pub(super) struct SwitchStep {
    /// The server connections go to.
    to: String,
}

impl SwitchStep {
    pub(super) fn parse(step: &Step, inputs: &BTreeMap<String, String>) -> SwitchStep {
        SwitchStep {
            to: step.param("to", inputs),
        }
    }

    pub(super) async fn describe(&self, config: &Config) -> Result<String> {
        if config.switch.pgbouncer_admin_url.is_none() && config.switch.hook.is_none() {
            return Err(crate::usage!(
                "the runbook switches connections, but [switch] configures neither pgbouncer_admin_url nor hook — configure [switch], or adapt the runbook"
            ));
        }
        // Found out now, before any step: a switch that cannot be made must not
        // be discovered after the old primary was fenced.
        let (checks, _) = switch::preflight_settings(config).await;
        checks.require("the runbook's switch step")?;
        let targets: Vec<String> = config
            .switch
            .pgbouncer_databases
            .iter()
            .cloned()
            .chain(config.switch.hook.iter().map(|_| "the [switch] hook".to_string()))
            .collect();
        Ok(format!(
            "to server {:?} ({})",
            self.to,
            if targets.is_empty() {
                "PgBouncer".to_string()
            } else {
                targets.join(", ")
            }
        ))
    }

    pub(super) async fn run(&self, cx: &mut StepCx<'_>) -> Result<String> {
        let config = cx.config;
        let to = cx.server(&self.to)?.endpoint();
        let mut plan = switch::plan(
            config,
            &switch::SwitchOptions {
                to: to.clone(),
                from: None,
                dry_run: false,
            },
        )?;
        let checks = switch::preflight(config, &mut plan).await;
        for c in &checks.0 {
            (cx.say)(c.to_string());
        }
        checks.require("the switch")?;
        let report = switch::run(config, &plan, false).await?;
        for s in &report.steps {
            (cx.say)(s.to_string());
        }
        if let Some(e) = &report.error {
            return Err(anyhow!("switching to {to} failed: {e}"));
        }
        // Production's from now on: `latest` follows its timeline.
        let new = cx.server(&self.to)?.clone();
        let c = new.target(config)?.connect(Some("postgres")).await?;
        let tli = crate::postgres::server::current_timeline(&c).await?;
        let declared = match crate::repo::Repo::open(config).await {
            Ok(repo) => repo.declare_primary_timeline(tli, "pgdr recover (switch)").await,
            Err(e) => Err(e),
        };
        Ok(match declared {
            Ok(()) => format!("application connections go to {to}; its timeline {tli} is declared production's"),
            Err(e) => format!(
                "application connections go to {to}; WARNING: its timeline {tli} could not be declared in the repository ({e:#}) — until it is, `restore --target latest` may not follow it"
            ),
        })
    }
}
