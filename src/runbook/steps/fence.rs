//! The `fence` op: stop the old primary (its data directory on this host, proven by
//! `pg_ctl status`), or record that the DBA declared it down. Never "nothing to fence".

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;

use crate::config::Config;
use crate::runbook::Step;

/// What a fence step rests on: a data directory to stop here, or the DBA's word.
pub(super) enum FenceBasis {
    DataDir(PathBuf),
    Declared,
}

/// A fence needs a data directory here or the DBA's declaration; neither is a
/// refusal, never "nothing to fence".
fn fence_basis(data_dir: &str, declared_down: &str) -> Result<FenceBasis> {
    let declared = match declared_down.trim() {
        "" | "no" | "false" => false,
        "yes" | "true" => true,
        other => return Err(crate::usage!("the fence step's declared_down is {other:?}: yes or no")),
    };
    match (data_dir.is_empty(), declared) {
        (false, _) => Ok(FenceBasis::DataDir(PathBuf::from(data_dir))),
        (true, true) => Ok(FenceBasis::Declared),
        (true, false) => Err(crate::usage!(
            "the old primary is not fenced: pgdr cannot prove it is down — give its data directory on this host with --old-data-dir (it is stopped and pg_ctl status proves it), or, if you know it cannot take writes (host powered off, isolated), pass --old-primary-is-down"
        )),
    }
}

impl FenceBasis {
    /// A `fence` step's parameters (`data_dir`, `declared_down`), checked.
    pub(super) fn parse(step: &Step, inputs: &BTreeMap<String, String>) -> Result<FenceBasis> {
        fence_basis(&step.param("data_dir", inputs), &step.param("declared_down", inputs))
    }

    pub(super) async fn describe(&self, config: &Config) -> Result<String> {
        Ok(match self {
            FenceBasis::DataDir(d) => {
                let running = crate::failover::check_old_data_dir(config, d).await?;
                format!(
                    "fast stop of {} ({}), proven by pg_ctl status",
                    d.display(),
                    if running {
                        "a server runs there"
                    } else {
                        "no server runs there now"
                    }
                )
            }
            FenceBasis::Declared => {
                "none by pgdr: you declared the old primary down (--old-primary-is-down); the report records it"
                    .to_string()
            }
        })
    }

    pub(super) async fn run(&self, config: &Config) -> Result<String> {
        match self {
            FenceBasis::DataDir(dir) => crate::failover::fence_data_dir(config, dir).await,
            FenceBasis::Declared => {
                Ok("not fenced by pgdr: the DBA declared the old primary down (--old-primary-is-down)".into())
            }
        }
    }
}
