//! Checks made before the point of no return. `failover`, `switch` and `recover`
//! gather every check that can be made before their first irreversible act (fence,
//! promote, rewrite, delete), show them in the plan, and refuse when one fails: the
//! refusal names the check and the way forward, and nothing has been changed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One check, as it came out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", if self.ok { "✓" } else { "✗" }, self.what, self.detail)
    }
}

/// The checks of one operation, in the order they were made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checks(pub Vec<Check>);

impl Checks {
    pub fn pass(&mut self, what: &str, detail: impl Into<String>) {
        self.0.push(Check {
            what: what.to_string(),
            ok: true,
            detail: detail.into(),
        });
    }

    pub fn fail(&mut self, what: &str, detail: impl Into<String>) {
        self.0.push(Check {
            what: what.to_string(),
            ok: false,
            detail: detail.into(),
        });
    }

    /// Record `result` under `what`: its text when it passed, the error when not.
    pub fn record(&mut self, what: &str, result: anyhow::Result<String>) {
        match result {
            Ok(d) => self.pass(what, d),
            Err(e) => self.fail(what, format!("{e:#}")),
        }
    }

    pub fn extend(&mut self, other: Checks) {
        self.0.extend(other.0);
    }

    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.0.iter().filter(|c| !c.ok)
    }

    /// `Ok` when every check passed; else a usage error (exit 2) naming each failed
    /// check, and that nothing was changed.
    pub fn require(&self, operation: &str) -> anyhow::Result<()> {
        let failed: Vec<String> = self.failed().map(|c| format!("{}: {}", c.what, c.detail)).collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(crate::usage!(
            "{operation} refused before changing anything — {}",
            failed.join("; ")
        ))
    }
}

impl fmt::Display for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        writeln!(f, "checked before anything is changed:")?;
        for c in &self.0 {
            writeln!(f, "  {c}")?;
        }
        Ok(())
    }
}
