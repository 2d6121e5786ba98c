//! Reading a runbook file and checking it whole before anything runs: every step's
//! operation and fields, every input it uses declared, every server it names made by
//! an earlier step, every check against a server some step makes. An error names the
//! file, the line and the field.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::{Check, InputSpec, NotifySpec, Op, Runbook, Step, Targets};
use crate::usage;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    server: String,
    #[serde(default)]
    database: Option<String>,
    sql: String,
    expect: toml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunbook {
    name: String,
    title: String,
    #[serde(default)]
    needs_copy: bool,
    targets: Targets,
    #[serde(default)]
    inputs: BTreeMap<String, InputSpec>,
    steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    checks: Vec<Spanned<RawCheck>>,
    #[serde(default)]
    notify: NotifySpec,
}

impl Runbook {
    /// Parse and check a whole runbook; errors name `source:line` and the field.
    pub fn parse(text: &str, source: &str) -> Result<Runbook> {
        let raw: RawRunbook = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(":{}", line_of(text, s.start)))
                .unwrap_or_default();
            usage!(
                "invalid runbook {source}{at}: {}",
                e.message().trim().replace('\n', " ")
            )
        })?;
        let doc = Doc { text, source };
        check_input_specs(&raw.inputs, source)?;
        if raw.steps.is_empty() {
            return Err(usage!("invalid runbook {source}: it has no [[steps]]"));
        }
        // The servers made by the steps so far (and not torn down).
        let mut servers: Vec<String> = Vec::new();
        let mut steps = Vec::new();
        for (i, table) in raw.steps.iter().enumerate() {
            steps.push(parse_step(&doc, i, table, &raw.inputs, &mut servers)?);
        }
        let checks = parse_checks(&doc, &raw.checks, &steps)?;
        check_notify(&raw.notify, &raw.inputs, source)?;
        Ok(Runbook {
            name: raw.name,
            title: raw.title,
            source: source.to_string(),
            needs_copy: raw.needs_copy,
            targets: raw.targets,
            inputs: raw.inputs,
            steps,
            checks,
            notify: raw.notify,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|b| **b == b'\n').count() + 1
}

/// `{name}` references in a template.
fn references(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    out
}

fn value_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A runbook's text and where it came from, for errors that name `source:line`.
struct Doc<'a> {
    text: &'a str,
    source: &'a str,
}

impl Doc<'_> {
    fn bad(&self, offset: usize, what: String) -> anyhow::Error {
        usage!("invalid runbook {}:{}: {what}", self.source, line_of(self.text, offset))
    }
}

/// One `[[steps]]` table as written, every key and value with its place.
type RawStep = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// Input names are plain identifiers, and every input says what it is for.
fn check_input_specs(inputs: &BTreeMap<String, InputSpec>, source: &str) -> Result<()> {
    for (name, spec) in inputs {
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(usage!(
                "invalid runbook {source}: input {name:?}: names are lower-case letters, digits and '_'"
            ));
        }
        if spec.help.trim().is_empty() {
            return Err(usage!("invalid runbook {source}: input {name:?} needs a help text"));
        }
    }
    Ok(())
}

/// Step `i` (from 0), checked: a known op, a name, the op's fields and only those,
/// inputs it declares, and servers made by an earlier step. `servers` is updated with
/// the servers it makes or tears down.
fn parse_step(
    doc: &Doc,
    i: usize,
    table: &Spanned<RawStep>,
    inputs: &BTreeMap<String, InputSpec>,
    servers: &mut Vec<String>,
) -> Result<Step> {
    let start = table.span().start;
    let at = |key: &str| {
        table
            .get_ref()
            .keys()
            .find(|k| k.get_ref() == key)
            .map(|k| k.span().start)
            .unwrap_or(start)
    };
    let get = |key: &str| table.get_ref().iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v);
    let Some(op_value) = get("op") else {
        return Err(doc.bad(start, format!("step {} has no `op`", i + 1)));
    };
    let op_text = value_text(op_value.get_ref()).unwrap_or_default();
    let Some(op) = Op::parse(&op_text) else {
        return Err(doc.bad(
            op_value.span().start,
            format!(
                "step {}: field `op`: unknown operation {op_text:?} (expected restore, validate, fence, standby, switch, copy-back or teardown)",
                i + 1
            ),
        ));
    };
    let name = match get("name").map(|v| (v.span().start, value_text(v.get_ref()))) {
        Some((_, Some(n))) if !n.trim().is_empty() => n,
        Some((offset, _)) => return Err(doc.bad(offset, format!("step {}: field `name` must be a text", i + 1))),
        None => return Err(doc.bad(start, format!("step {} ({op}) has no `name`", i + 1))),
    };
    let params = step_params(doc, &name, op, table, inputs)?;
    for r in op.server_refs() {
        let server = &params[*r];
        if !servers.contains(server) {
            return Err(doc.bad(
                at(r),
                format!(
                    "step {name:?}: field `{r}`: no earlier step makes a server {server:?} (a restore or standby step with server = {server:?})"
                ),
            ));
        }
    }
    if op == Op::Restore {
        let role = &params["role"];
        if role != "primary" && role != "scratch" {
            return Err(doc.bad(
                at("role"),
                format!("step {name:?}: field `role` is \"primary\" or \"scratch\", not {role:?}"),
            ));
        }
        if role == "primary" && !params.contains_key("port") {
            return Err(doc.bad(start, format!("step {name:?}: a new primary needs the field `port`")));
        }
    }
    if let Some(v) = params.get("amcheck")
        && v != "true"
        && v != "false"
    {
        return Err(doc.bad(
            at("amcheck"),
            format!("step {name:?}: field `amcheck` is true or false"),
        ));
    }
    if matches!(op, Op::Restore | Op::Standby) {
        let server = params["server"].clone();
        if servers.contains(&server) {
            return Err(doc.bad(at("server"), format!("step {name:?}: server {server:?} is made twice")));
        }
        servers.push(server);
    }
    if op == Op::Teardown {
        servers.retain(|s| *s != params["server"]);
    }
    Ok(Step {
        name,
        op,
        line: line_of(doc.text, start),
        params,
    })
}

/// A step's parameters besides `op` and `name`: each a field of its op, a text, a
/// number or true/false, using only declared inputs; every required one present.
fn step_params(
    doc: &Doc,
    name: &str,
    op: Op,
    table: &Spanned<RawStep>,
    inputs: &BTreeMap<String, InputSpec>,
) -> Result<BTreeMap<String, String>> {
    let (required, optional) = op.params();
    let mut params = BTreeMap::new();
    for (key, value) in table.get_ref() {
        let k = key.get_ref().as_str();
        if k == "op" || k == "name" {
            continue;
        }
        if !required.contains(&k) && !optional.contains(&k) {
            let mut all: Vec<&str> = required.iter().chain(optional.iter()).copied().collect();
            all.sort();
            return Err(doc.bad(
                key.span().start,
                format!(
                    "step {name:?}: unknown field `{k}` for op {op} (expected {})",
                    all.join(", ")
                ),
            ));
        }
        let Some(text) = value_text(value.get_ref()) else {
            return Err(doc.bad(
                value.span().start,
                format!("step {name:?}: field `{k}` must be a text, a number or true/false"),
            ));
        };
        for r in references(&text) {
            if !inputs.contains_key(r) {
                return Err(doc.bad(
                    value.span().start,
                    format!("step {name:?}: field `{k}` uses {{{r}}}, which is not an input of this runbook"),
                ));
            }
        }
        params.insert(k.to_string(), text);
    }
    for r in required {
        if !params.contains_key(*r) {
            return Err(doc.bad(
                table.span().start,
                format!("step {name:?} ({op}) needs the field `{r}`"),
            ));
        }
    }
    Ok(params)
}

/// The SQL checks, each against a server some step makes, expecting a text, a number
/// or true/false.
fn parse_checks(doc: &Doc, raw: &[Spanned<RawCheck>], steps: &[Step]) -> Result<Vec<Check>> {
    let source = doc.source;
    let mut checks = Vec::new();
    for c in raw {
        let line = line_of(doc.text, c.span().start);
        let c = c.get_ref();
        if !steps
            .iter()
            .any(|s| matches!(s.op, Op::Restore | Op::Standby) && s.params["server"] == c.server)
        {
            return Err(usage!(
                "invalid runbook {source}:{line}: check {:?}: field `server`: no step makes a server {:?}",
                c.name,
                c.server
            ));
        }
        let expect = match &c.expect {
            toml::Value::String(s) => s.clone(),
            toml::Value::Boolean(b) => if *b { "t" } else { "f" }.to_string(),
            toml::Value::Integer(i) => i.to_string(),
            _ => {
                return Err(usage!(
                    "invalid runbook {source}:{line}: check {:?}: field `expect` is a text, a number or true/false",
                    c.name
                ));
            }
        };
        checks.push(Check {
            name: c.name.clone(),
            server: c.server.clone(),
            database: c.database.clone().unwrap_or_else(|| "postgres".into()),
            sql: c.sql.clone(),
            expect,
        });
    }
    Ok(checks)
}

/// `[notify]` messages use only declared inputs.
fn check_notify(notify: &NotifySpec, inputs: &BTreeMap<String, InputSpec>, source: &str) -> Result<()> {
    for template in [&notify.success, &notify.failure].into_iter().flatten() {
        for r in references(template) {
            if !inputs.contains_key(r) {
                return Err(usage!(
                    "invalid runbook {source}: [notify] uses {{{r}}}, which is not an input of this runbook"
                ));
            }
        }
    }
    Ok(())
}
