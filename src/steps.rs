//! The step log of a long operation (failover, switch, a recovery, a drill): each
//! step with when it started, how long it took, whether it worked and what it said.
//! Printed as it goes, kept in the operation's report.

use std::fmt;
use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One step, as it happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: String,
    pub started: DateTime<Utc>,
    pub seconds: f64,
    pub ok: bool,
    pub detail: String,
}

impl fmt::Display for StepLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Start and end: a ✓ is a step done, and when it was done matters as much.
        let ended = self.started + chrono::Duration::milliseconds((self.seconds * 1000.0) as i64);
        write!(
            f,
            "{}–{} {} {} ({:.2} s): {}",
            self.started.format("%H:%M:%S%.3f"),
            ended.format("%H:%M:%S%.3f"),
            if self.ok { "✓" } else { "✗" },
            self.step,
            self.seconds,
            self.detail
        )
    }
}

/// The steps of one operation, in order; `operation` prefixes their log lines.
pub struct Log {
    operation: &'static str,
    pub steps: Vec<StepLog>,
}

impl Log {
    pub fn new(operation: &'static str) -> Log {
        Log {
            operation,
            steps: Vec::new(),
        }
    }

    /// Run one step and record when it started, how long it took and what it said.
    pub async fn step<T>(
        &mut self,
        name: &str,
        work: impl std::future::Future<Output = Result<(T, String)>>,
    ) -> Result<T> {
        let started = Utc::now();
        let t = Instant::now();
        let r = work.await;
        let (ok, detail) = match &r {
            Ok((_, d)) => (true, d.clone()),
            Err(e) => (false, format!("{e:#}")),
        };
        tracing::info!("{}: {name}: {}", self.operation, if ok { "ok" } else { "failed" });
        self.steps.push(StepLog {
            step: name.to_string(),
            started,
            seconds: t.elapsed().as_secs_f64(),
            ok,
            detail,
        });
        r.map(|(v, _)| v)
    }
}
