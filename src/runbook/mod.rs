//! Runbooks: the plan's disaster scenarios as TOML files (`scenarios/*.toml`), read
//! and checked whole before anything runs. A runbook names its recovery targets, the
//! inputs it needs, ordered steps (each one of pgdr's operations with its
//! parameters), SQL checks and notifications. `parse` reads and checks one, `steps`
//! holds what each operation does, `engine` executes one (`recover`); `drill`
//! rehearses one on scratch resources.
//!
//! An invalid runbook is refused with its file, line and field.

pub mod engine;
mod parse;
pub mod steps;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::usage;

/// The four scenarios of the plan, built in; a file of the same name in a directory
/// the DBA passes replaces one, and a path runs any adapted copy.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "database-corruption",
        include_str!("../../scenarios/database-corruption.toml"),
    ),
    ("data-loss", include_str!("../../scenarios/data-loss.toml")),
    (
        "database-failure",
        include_str!("../../scenarios/database-failure.toml"),
    ),
    ("region-failure", include_str!("../../scenarios/region-failure.toml")),
];

pub fn built_in_names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(n, _)| *n).collect()
}

/// The plan's recovery targets for a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// The plan's own words ("4-8 h").
    pub plan: String,
    pub rto_minutes: u64,
    pub rpo_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    Path,
    Port,
    Time,
    Text,
    Tables,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub help: String,
    pub kind: InputKind,
    /// Optional inputs have a default ("" for "not given").
    pub default: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    pub success: Option<String>,
    pub failure: Option<String>,
}

/// What a step does: one of pgdr's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// A physical restore started as a server: a new primary or a scratch copy.
    Restore,
    /// `pg_amcheck` and the runbook's checks against a server.
    Validate,
    /// Stop the old primary (its data directory on this host).
    Fence,
    /// A streaming standby of a server, built from the latest backup.
    Standby,
    /// Move application connections (`[switch]`) to a server.
    Switch,
    /// Bring lost tables or rows back from a scratch copy into the live database.
    CopyBack,
    /// Stop a scratch server and remove it.
    Teardown,
}

impl Op {
    fn parse(raw: &str) -> Option<Op> {
        Some(match raw {
            "restore" => Op::Restore,
            "validate" => Op::Validate,
            "fence" => Op::Fence,
            "standby" => Op::Standby,
            "switch" => Op::Switch,
            "copy-back" => Op::CopyBack,
            "teardown" => Op::Teardown,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Restore => "restore",
            Op::Validate => "validate",
            Op::Fence => "fence",
            Op::Standby => "standby",
            Op::Switch => "switch",
            Op::CopyBack => "copy-back",
            Op::Teardown => "teardown",
        }
    }

    /// (required, optional) parameters besides `name` and `op`.
    fn params(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Op::Restore => (&["server", "role", "to", "target"], &["port", "listen"]),
            Op::Validate => (&["server"], &["amcheck"]),
            Op::Fence => (&["data_dir"], &["declared_down"]),
            Op::Standby => (&["of", "server", "to", "port"], &["listen", "slot"]),
            Op::Switch => (&["to"], &[]),
            Op::CopyBack => (&["from", "tables"], &["database", "rename"]),
            Op::Teardown => (&["server"], &[]),
        }
    }

    /// The parameters that name a server an earlier step made.
    fn server_refs(self) -> &'static [&'static str] {
        match self {
            Op::Validate | Op::Teardown => &["server"],
            Op::Standby => &["of"],
            Op::Switch => &["to"],
            Op::CopyBack => &["from"],
            Op::Restore | Op::Fence => &[],
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated step: its parameters are templates (`{input}`), filled per run.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub op: Op,
    pub line: usize,
    params: BTreeMap<String, String>,
}

impl Step {
    /// A parameter with the inputs filled in ("" if the step does not set it).
    pub fn param(&self, key: &str, inputs: &BTreeMap<String, String>) -> String {
        self.params.get(key).map(|t| fill(t, inputs)).unwrap_or_default()
    }

    /// Every parameter with the inputs filled in: what the step will really do.
    pub fn filled(&self, inputs: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        self.params.iter().map(|(k, t)| (k.clone(), fill(t, inputs))).collect()
    }
}

/// A validated SQL check.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub server: String,
    pub database: String,
    pub sql: String,
    pub expect: String,
}

/// A runbook, checked whole: every step's operation and parameters, every input it
/// uses declared, every server it names made by an earlier step.
#[derive(Debug, Clone)]
pub struct Runbook {
    pub name: String,
    pub title: String,
    /// Where it came from (a built-in name or a file), for messages.
    pub source: String,
    pub needs_copy: bool,
    pub targets: Targets,
    pub inputs: BTreeMap<String, InputSpec>,
    pub steps: Vec<Step>,
    pub checks: Vec<Check>,
    pub notify: NotifySpec,
}

/// Replace `{name}` with the input's value.
pub fn fill(template: &str, inputs: &BTreeMap<String, String>) -> String {
    let mut out = template.to_string();
    for (name, value) in inputs {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

impl Runbook {
    /// `NAME` (built in, or `NAME.toml` in `dir`) or a path to a file.
    pub fn load(scenario: &str, dir: Option<&Path>) -> Result<Runbook> {
        let as_path = Path::new(scenario);
        if scenario.ends_with(".toml") || scenario.contains('/') {
            let text = std::fs::read_to_string(as_path)
                .map_err(|e| usage!("cannot read the runbook {}: {e}", as_path.display()))?;
            return Runbook::parse(&text, &as_path.display().to_string());
        }
        if let Some(dir) = dir {
            let file = dir.join(format!("{scenario}.toml"));
            if file.is_file() {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| usage!("cannot read the runbook {}: {e}", file.display()))?;
                return Runbook::parse(&text, &file.display().to_string());
            }
        }
        match BUILT_IN.iter().find(|(n, _)| *n == scenario) {
            Some((name, text)) => Runbook::parse(text, &format!("scenarios/{name}.toml (built in)")),
            None => Err(usage!(
                "no scenario {scenario:?}: the scenarios are {} (or pass a runbook file, e.g. ./my-scenario.toml)",
                built_in_names().join(", ")
            )),
        }
    }

    /// The inputs of a run: the given values checked by kind, defaults filled in.
    /// Unknown and missing inputs are refused, naming the flag to use.
    pub fn resolve_inputs(&self, given: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
        for name in given.keys() {
            if !self.inputs.contains_key(name) {
                return Err(usage!(
                    "the {} runbook has no input {name:?} (its inputs: {})",
                    self.name,
                    self.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let missing: Vec<String> = self
            .inputs
            .iter()
            .filter(|(name, spec)| !given.contains_key(*name) && spec.default.is_none())
            .map(|(name, spec)| format!("{} ({})", input_flag(name), spec.help))
            .collect();
        if !missing.is_empty() {
            return Err(usage!("the {} runbook needs {}", self.name, missing.join("; ")));
        }
        let mut out = BTreeMap::new();
        for (name, spec) in &self.inputs {
            let value = given.get(name).or(spec.default.as_ref()).cloned().unwrap_or_default();
            if !value.is_empty() {
                check_kind(name, spec.kind, &value)?;
            }
            out.insert(name.clone(), value);
        }
        Ok(out)
    }
}

/// The command-line flag that sets an input.
pub fn input_flag(name: &str) -> String {
    match name {
        "target_time" | "data_dir" | "port" | "standby_data_dir" | "standby_port" | "tables" | "database"
        | "scratch_dir" | "old_data_dir" | "listen" | "restore_as" => format!("--{}", name.replace('_', "-")),
        "old_primary_is_down" => "--old-primary-is-down".to_string(),
        _ => format!("--set {name}=VALUE"),
    }
}

fn check_kind(name: &str, kind: InputKind, value: &str) -> Result<()> {
    let flag = input_flag(name);
    match kind {
        InputKind::Path => {
            if !Path::new(value).is_absolute() {
                return Err(usage!("{flag} {value:?}: give an absolute path"));
            }
        }
        InputKind::Port => {
            if value.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
                return Err(usage!("{flag} {value:?}: not a port number"));
            }
        }
        InputKind::Time => {
            // A time, or the point wal-search found (`recover --deleted`, …).
            crate::restore::target::parse_step_target(value).map_err(|e| usage!("{flag}: {e:#}"))?;
        }
        InputKind::Tables => {
            for t in value.split(',') {
                parse_table(t.trim()).map_err(|e| usage!("{flag}: {e:#}"))?;
            }
        }
        InputKind::Text => {}
    }
    Ok(())
}

/// `schema.name` (or `name`, in `public`), as plain identifiers.
pub fn parse_table(raw: &str) -> Result<(String, String)> {
    let (schema, name) = raw.split_once('.').unwrap_or(("public", raw));
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() < 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    if ok(schema) && ok(name) {
        Ok((schema.to_string(), name.to_string()))
    } else {
        Err(usage!(
            "{raw:?} is not a table name (schema.name, letters, digits and '_')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_runbooks_are_valid() {
        for name in built_in_names() {
            let r = Runbook::load(name, None).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(r.name, name);
            assert!(!r.steps.is_empty());
        }
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let text =
            include_str!("../../scenarios/database-failure.toml").replace("target = \"latest\"", "tagret = \"latest\"");
        let e = Runbook::parse(&text, "x.toml").unwrap_err().to_string();
        let line = text.lines().position(|l| l.starts_with("tagret")).unwrap() + 1;
        assert!(e.contains(&format!("x.toml:{line}:")), "{e}");
        assert!(e.contains("unknown field `tagret`"), "{e}");
    }

    #[test]
    fn undeclared_input_and_unknown_server_are_refused() {
        let text = include_str!("../../scenarios/database-failure.toml").replace("{standby_port}", "{stanby_port}");
        let e = Runbook::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("{stanby_port}"), "{e}");
        let text = include_str!("../../scenarios/database-failure.toml").replace("to = \"new\"", "to = \"old\"");
        let e = Runbook::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("field `to`") && e.contains("\"old\""), "{e}");
    }

    #[test]
    fn inputs_are_checked_by_kind() {
        let r = Runbook::load("database-corruption", None).unwrap();
        let mut given = BTreeMap::new();
        given.insert("data_dir".to_string(), "/srv/new".to_string());
        let e = r.resolve_inputs(&given).unwrap_err().to_string();
        assert!(e.contains("--target-time"), "{e}");
        given.insert("target_time".to_string(), "yesterday-ish".to_string());
        assert!(r.resolve_inputs(&given).is_err());
        given.insert("target_time".to_string(), "2026-12-01T10:00:00Z".to_string());
        let inputs = r.resolve_inputs(&given).unwrap();
        assert_eq!(inputs["port"], "5432");
        given.insert("bogus".to_string(), "1".to_string());
        assert!(r.resolve_inputs(&given).is_err());
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert_eq!(
            parse_table("public.orders").unwrap(),
            ("public".into(), "orders".into())
        );
        assert_eq!(parse_table("orders").unwrap(), ("public".into(), "orders".into()));
        assert!(parse_table("x; DROP TABLE y").is_err());
        assert!(parse_table("a.b.c").is_err());
    }
}
