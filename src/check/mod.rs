//! The pre-flight checks of the user's plan, for pgdr's part (`pgdr check`): the
//! server and its tools, the repository (ours, keyed, writable), disk space, orphaned
//! backups (`orphans`, removed on request under the backup lock) and WAL archiving with
//! its continuity (`wal`). Each check is one line, ✓ or ✗ (⚠ for things to look at that
//! are not failures).

mod disk;
mod orphans;
mod repository;
mod wal;

use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::postgres::{PgTarget, PgTools, server};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "warning")]
    Warn,
    #[serde(rename = "failed")]
    Fail,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "⚠",
            Status::Fail => "✗",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckLine {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

/// Every check's line; `ok` is false when any failed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckReport {
    pub ok: bool,
    pub checks: Vec<CheckLine>,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .checks
            .iter()
            .map(|c| format!("{} {}: {}", c.status.mark(), c.check, c.detail))
            .collect();
        f.write_str(&lines.join("\n"))
    }
}

impl CheckReport {
    fn add(&mut self, status: Status, name: &str, detail: impl Into<String>) {
        self.checks.push(CheckLine {
            check: name.to_string(),
            status,
            detail: detail.into(),
        });
    }

    fn result<T>(&mut self, name: &str, r: Result<T>, ok: impl FnOnce(&T) -> String) -> Option<T> {
        match r {
            Ok(v) => {
                self.add(Status::Ok, name, ok(&v));
                Some(v)
            }
            Err(e) => {
                self.add(Status::Fail, name, format!("{e:#}"));
                None
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Remove the objects of backups that never got a manifest (under the backup lock).
    pub clean_orphans: bool,
}

/// Run every check; a failed check is a line of the report, not an error.
pub async fn run(config: &Config, opts: &CheckOptions) -> CheckReport {
    let mut report = CheckReport::default();
    report.add(Status::Ok, "configuration", format!("loaded from {}", config.source));
    let server_info = server_checks(config, &mut report).await;
    let storage = repository::checks(config, server_info.as_ref(), &mut report).await;
    disk::checks(config, &mut report);
    if let Some(storage) = &storage {
        orphans::checks(config, storage, opts.clean_orphans, &mut report).await;
        chains(config, &mut report).await;
        copies(config, storage, &mut report).await;
    }
    if server_info.is_some() {
        primary(config, &mut report).await;
        wal::checks(config, &mut report).await;
    }
    report.ok = !report.checks.iter().any(|c| c.status == Status::Fail);
    report
}

/// The server is the repository's primary, not a restored copy of it or a server
/// archiving elsewhere (the same test a backup makes before writing anything).
async fn primary(config: &Config, report: &mut CheckReport) {
    let found = async {
        let repo = crate::repo::Repo::open(config).await?;
        let target = PgTarget::from_config(config.postgres.url.as_deref())?;
        let client = target.connect(None).await?;
        let looks = crate::backup::source::look(&client).await?;
        let why = crate::backup::source::not_the_primary(config, &repo, &looks, &target.describe()).await?;
        anyhow::Ok((why, looks, target.describe()))
    }
    .await;
    match found {
        Ok((Some(why), _, _)) => report.add(Status::Fail, "primary", why),
        Ok((None, looks, server)) => report.add(
            Status::Ok,
            "primary",
            format!(
                "{server} is {} (timeline {}, last archived {})",
                if looks.in_recovery {
                    "a standby, not a copy pgdr restored"
                } else {
                    "the repository's primary"
                },
                looks.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                looks.last_archived.as_deref().unwrap_or("nothing yet")
            ),
        ),
        // The repository or server lines above already say what failed.
        Err(e) => tracing::debug!("primary check skipped: {e:#}"),
    }
}

/// Every incremental backup's chain is whole: each older backup it refers to is in
/// the repository and readable.
async fn chains(config: &Config, report: &mut CheckReport) {
    let Ok(repo) = crate::repo::Repo::open(config).await else {
        return; // the repository lines above say why
    };
    let Ok(manifests) = repo.manifests().await else {
        return;
    };
    let mut incrementals = 0;
    let mut broken = Vec::new();
    for m in &manifests {
        let Some(p) = &m.physical else { continue };
        if p.incremental.is_none() {
            continue;
        }
        incrementals += 1;
        let missing: Vec<&str> = p
            .chain()
            .iter()
            .filter(|l| !manifests.iter().any(|o| o.label.as_str() == l.as_str()))
            .map(|l| l.as_str())
            .collect();
        if !missing.is_empty() {
            broken.push(format!("{} needs {}", m.label, missing.join(", ")));
        }
    }
    if !broken.is_empty() {
        report.add(
            Status::Fail,
            "chains",
            format!(
                "incremental backup(s) with a broken chain, which cannot be restored: {} — the missing backups are gone or their manifests unreadable; take a full backup (pgdr backup --kind physical --type full)",
                broken.join("; ")
            ),
        );
    } else if incrementals > 0 {
        report.add(
            Status::Ok,
            "chains",
            format!("{incrementals} incremental backup(s), every chain whole"),
        );
    }
}

/// Each repository copy: reachable, and how far behind the primary's WAL.
async fn copies(config: &Config, primary: &crate::storage::DynStorage, report: &mut CheckReport) {
    for (name, lag) in crate::copy::lags(config, primary).await {
        let check = format!("copy {name}");
        match lag {
            Ok(lag) if lag.segments == 0 => report.add(Status::Ok, &check, "has every WAL file of the primary"),
            Ok(lag) => report.add(
                Status::Warn,
                &check,
                format!(
                    "{} WAL file(s) behind the primary{} — run `pgdr copy --to {name}`",
                    lag.segments,
                    lag.seconds.map(|s| format!(" ({s:.0} s)")).unwrap_or_default()
                ),
            ),
            Err(e) => report.add(Status::Fail, &check, format!("{e:#}")),
        }
    }
}

/// PostgreSQL reachable, its client tools found, and their versions compatible.
async fn server_checks(config: &Config, report: &mut CheckReport) -> Option<server::ServerInfo> {
    let target = PgTarget::from_config(config.postgres.url.as_deref());
    let server_info = match target {
        Ok(target) => {
            let connected = async {
                let client = target.connect(None).await?;
                server::server_info(&client).await
            }
            .await;
            report.result("postgres", connected, |s| {
                format!("PostgreSQL {} reachable at {}", s.version, target.describe())
            })
        }
        Err(e) => {
            report.add(Status::Fail, "postgres", format!("{e:#}"));
            None
        }
    };
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref()).and_then(|t| Ok((t.major_version()?, t)));
    if let Some((major, _)) = report.result("tools", tools, |(m, _)| format!("pg_dump {m}"))
        && let Some(s) = &server_info
    {
        if major == s.major() {
            report.add(
                Status::Ok,
                "versions",
                format!("server and client tools are both PostgreSQL {major}"),
            );
        } else if major > s.major() {
            report.add(
                Status::Warn,
                "versions",
                format!(
                    "client tools {major} are newer than server {}; dumps work, but prefer matching versions",
                    s.major()
                ),
            );
        } else {
            report.add(
                Status::Fail,
                "versions",
                format!(
                    "client tools {major} are older than server {} — set [postgres] bin_dir to version {} tools",
                    s.major(),
                    s.major()
                ),
            );
        }
    }
    server_info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_prints_marks_and_serialises_status_words() {
        let mut r = CheckReport::default();
        r.add(Status::Ok, "a", "fine");
        r.add(Status::Warn, "b", "look");
        r.add(Status::Fail, "c", "broken");
        assert_eq!(r.to_string(), "✓ a: fine\n⚠ b: look\n✗ c: broken");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["checks"][1]["status"], "warning");
        assert_eq!(json["checks"][2]["check"], "c");
        let back: CheckReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.checks[2].status, Status::Fail);
    }
}
