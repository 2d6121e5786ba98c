//! The `copy-back` op: bring lost tables (or their missing rows) back from a scratch
//! copy into the live database, each under a new name if the runbook says so. The
//! copying itself is `restore::copy_back`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::StepCx;
use crate::config::Config;
use crate::postgres::PgTarget;
use crate::restore::copy_back::{Table, copy_back};
use crate::runbook::{Step, parse_table};

/// A `copy-back` step's parameters.
pub(super) struct CopyBackStep {
    /// The scratch server the tables come from.
    from: String,
    /// `postgres` unless the step names one.
    database: String,
    /// `schema.table,…` as written: each is checked as its turn comes.
    tables: String,
    /// `schema.table=schema.new_name,…` (the data-loss runbook's `restore_as`).
    rename: String,
}

impl CopyBackStep {
    pub(super) fn parse(step: &Step, inputs: &BTreeMap<String, String>) -> CopyBackStep {
        let database = step.param("database", inputs);
        CopyBackStep {
            from: step.param("from", inputs),
            database: if database.is_empty() {
                "postgres".into()
            } else {
                database
            },
            tables: step.param("tables", inputs),
            rename: step.param("rename", inputs),
        }
    }

    pub(super) fn describe(&self, config: &Config) -> Result<String> {
        let live = PgTarget::from_config(config.postgres.url.as_deref())?;
        Ok(format!(
            "{} into database {} of the live server {} (absent tables whole; present ones get their missing rows by primary key)",
            self.tables,
            self.database,
            live.describe()
        ))
    }

    pub(super) async fn run(&self, cx: &mut StepCx<'_>) -> Result<String> {
        let config = cx.config;
        let from = cx.server(&self.from)?.clone();
        let renames = parse_renames(&self.rename)?;
        let live = PgTarget::from_config(config.postgres.url.as_deref())?;
        let mut lines = Vec::new();
        for t in self.tables.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let table = parse_table(t)?;
            let rename = renames
                .iter()
                .find(|(from, _)| *from == table)
                .map(|(_, to)| to.clone());
            let r = copy_back(
                config,
                &from.target(config)?,
                &live,
                &self.database,
                &table,
                rename.as_ref(),
            )
            .await
            .with_context(|| format!("bringing back {}.{}", table.0, table.1))?;
            lines.push(format!("{}: {} ({} rows)", r.table, r.action, r.rows));
            cx.restored.retain(|x| x.table != r.table);
            cx.restored.push(r);
        }
        Ok(lines.join("; "))
    }
}

/// `schema.table=schema.new_name,…` (the data-loss runbook's `restore_as`).
fn parse_renames(raw: &str) -> Result<Vec<(Table, Table)>> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (a, b) = pair
                .split_once('=')
                .ok_or_else(|| crate::usage!("--restore-as {pair:?}: expected schema.table=schema.new_name"))?;
            Ok((parse_table(a.trim())?, parse_table(b.trim())?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_are_pairs_of_tables() {
        let r = parse_renames(" public.orders=public.orders_back , items=x.items ").unwrap();
        assert_eq!(
            r,
            vec![
                (
                    ("public".into(), "orders".into()),
                    ("public".into(), "orders_back".into())
                ),
                (("public".into(), "items".into()), ("x".into(), "items".into())),
            ]
        );
        assert!(parse_renames("").unwrap().is_empty());
        assert!(parse_renames("public.orders").is_err());
    }
}
