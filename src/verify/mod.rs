//! The restore test (`pgdr verify`, weekly from the scheduler). Restore a backup into a scratch cluster (a
//! temporary directory and a free port, run as `postgres`), start it, and check it:
//! every file's SHA-256 (physical), every table's row count against the manifest
//! (logical), `pg_amcheck --heapallindexed` on every database, and the user's own SQL
//! checks. The report goes to `verifications/` in the repository; the scratch cluster
//! is always removed, on failure and on Ctrl-C too.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use chrono::Utc;
use serde::Serialize;

use crate::config::Config;
use crate::postgres::{PgTarget, PgTools};
use crate::repo::verification::{Step, VerifyReport};
use crate::repo::{BackupKind, Manifest, Repo, catalog, layout};
use crate::restore::logical::LogicalRestoreReport;
use crate::restore::report::PhysicalRestoreReport;
use crate::server::scratch::{self, Logins, ScratchDir};
use crate::storage::PutMode;

/// Which backup to test.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// `LABEL`, `latest` or `tag:TAG`.
    pub backup: String,
    pub kind: BackupKind,
    /// Restore workers (physical).
    pub jobs: Option<u32>,
}

/// A finished restore test: the stored report and where it was stored.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOutcome {
    #[serde(flatten)]
    pub stored: VerifyReport,
    /// Its key in the repository.
    #[serde(rename = "report")]
    pub key: String,
}

impl VerifyOutcome {
    /// The first failed step, as `name: detail` (empty when all passed).
    pub fn first_failure(&self) -> String {
        self.stored
            .steps
            .iter()
            .find(|s| !s.ok)
            .map(|s| format!("{}: {}", s.name, s.detail))
            .unwrap_or_default()
    }
}

impl std::fmt::Display for VerifyOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.stored.steps {
            writeln!(
                f,
                "{} {} ({:.1} s): {}",
                if s.ok { "✓" } else { "✗" },
                s.name,
                s.seconds,
                s.detail
            )?;
        }
        write!(
            f,
            "restore test of {}: {} — report {}",
            self.stored.label,
            if self.stored.ok { "passed" } else { "FAILED" },
            self.key
        )
    }
}

/// Verify's scratch directory: the restored cluster in `data`, its private socket in
/// `sock`. Stopped and removed when dropped, whatever happened.
struct Scratch {
    dir: ScratchDir,
}

impl Scratch {
    fn new(tools: &PgTools) -> Result<Scratch> {
        let dir = ScratchDir::new(tools, "pgdr-verify-", None)?;
        // Scratch clusters hold production data with trust authentication: they listen
        // only on a Unix socket in this private (0700) directory.
        crate::disk::create_server_dir(&dir.join("sock"))?;
        Ok(Scratch { dir })
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }
}

/// `pgdr` itself, with this configuration, as a child (killed if verify is abandoned).
fn pgdr(config: &Config) -> Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    if let Some(file) = config.file() {
        cmd.arg("--config").arg(file);
    }
    // The restore test of a copy restores from that copy.
    if let Some(name) = config.selected_repository() {
        cmd.arg("--repository").arg(name);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    Ok(cmd)
}

/// Run a child to completion; its report (`--json` on stdout) on success, its last
/// stderr line as error.
async fn run_json<R: serde::de::DeserializeOwned>(mut cmd: tokio::process::Command) -> Result<R> {
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().await?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("failed").trim();
        return Err(anyhow!("{}", line.strip_prefix("pgdr: error: ").unwrap_or(line)));
    }
    serde_json::from_slice(&out.stdout).context("reading the child's report")
}

struct Steps {
    steps: Vec<Step>,
}

impl Steps {
    /// Record a step; its error (if any) becomes the detail.
    fn record<T>(&mut self, name: &str, started: Instant, result: &Result<T>, ok_detail: impl FnOnce(&T) -> String) {
        let (ok, detail) = match result {
            Ok(v) => (true, ok_detail(v)),
            Err(e) => (false, format!("{e:#}")),
        };
        self.steps.push(Step {
            name: name.to_string(),
            ok,
            seconds: started.elapsed().as_secs_f64(),
            detail,
        });
    }
}

/// Restore the backup into a scratch cluster, check it, store the report in the
/// repository and return it. A failed check is a report with `ok: false` (and a
/// notification), not an error; errors are for when no test could be run at all.
pub async fn run(config: &Config, opts: &VerifyOptions) -> Result<VerifyOutcome> {
    let repo = Repo::open(config).await?;
    let manifests = repo.manifests().await?;
    let manifest = match catalog::resolve(&manifests, &opts.backup, Some(opts.kind)) {
        Ok(m) => m.clone(),
        Err(e) => return Err(repo.explain_missing(&opts.backup, e).await),
    };
    // expire leaves the backup (and its WAL) while the test runs.
    let lease = crate::repo::lock::UseLease::acquire(&repo, std::slice::from_ref(&manifest.label), "verify").await?;
    let result = run_leased(config, opts, &repo, manifest).await;
    lease.release().await;
    result
}

async fn run_leased(
    config: &Config,
    opts: &VerifyOptions,
    repo: &Repo,
    manifest: crate::repo::Manifest,
) -> Result<VerifyOutcome> {
    let repo = repo.clone();
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let started = Utc::now();
    let mut steps = Steps { steps: Vec::new() };
    let scratch = Scratch::new(&tools)?;

    // The checks run until Ctrl-C / SIGTERM; either way the scratch cluster goes.
    let work = verify_into(config, &manifest, &tools, &scratch, opts, &mut steps);
    let interrupted = tokio::select! {
        _ = work => None,
        s = crate::process::shutdown_signal() => Some(s),
    };
    if let Some(signal) = interrupted {
        steps.steps.push(Step {
            name: "interrupted".into(),
            ok: false,
            seconds: 0.0,
            detail: format!("stopped by {signal}"),
        });
    }
    drop(scratch);

    let report = VerifyReport {
        label: manifest.label.clone(),
        kind: manifest.kind,
        started,
        finished: Utc::now(),
        ok: steps.steps.iter().all(|s| s.ok),
        steps: steps.steps,
    };
    let report_key = layout::verification(&started, &manifest.label);
    let body = serde_json::to_vec_pretty(&report).expect("report serialises");
    repo.store()
        .bytes(&report_key, "verification.json", body, PutMode::Overwrite)
        .await
        .context("writing the verification report")?;
    let outcome = VerifyOutcome {
        stored: report,
        key: report_key.to_string(),
    };
    if !outcome.stored.ok {
        crate::notify::send(
            config,
            &format!(
                "pgdr: restore test of {} FAILED: {}",
                outcome.stored.label,
                outcome.first_failure()
            ),
        )
        .await;
    }
    Ok(outcome)
}

async fn verify_into(
    config: &Config,
    manifest: &Manifest,
    tools: &PgTools,
    scratch: &Scratch,
    opts: &VerifyOptions,
    steps: &mut Steps,
) {
    let Ok(port) = crate::server::free_port() else { return };
    let restored = match manifest.kind {
        BackupKind::Physical => restore_physical(config, manifest, scratch, port, opts, steps).await,
        BackupKind::Logical => restore_logical(config, manifest, tools, scratch, port, steps).await,
    };
    if !restored {
        return;
    }
    let base = match PgTarget::from_config(config.postgres.url.as_deref()) {
        Ok(t) => t,
        Err(_) => return,
    };
    let target = base.with_address(&scratch.sock().display().to_string(), port);

    // pg_amcheck --heapallindexed on every database (amcheck installed in the copy).
    let t = Instant::now();
    let amcheck = amcheck(tools, &target).await;
    steps.record("amcheck", t, &amcheck, |_| {
        "pg_amcheck --heapallindexed: no corruption in any database".into()
    });

    // The user's own checks.
    for (i, check) in config.verify.check.iter().enumerate() {
        let t = Instant::now();
        let name = check.name.clone().unwrap_or_else(|| format!("check {}", i + 1));
        let db = check.database.clone().unwrap_or_else(|| "postgres".into());
        let result = run_check(&target, &db, &name, &check.sql, &check.expected_text()).await;
        steps.record(&format!("sql: {name}"), t, &result, |v| {
            format!("returned {v:?} as expected")
        });
    }
}

async fn restore_physical(
    config: &Config,
    manifest: &Manifest,
    scratch: &Scratch,
    port: u16,
    opts: &VerifyOptions,
    steps: &mut Steps,
) -> bool {
    let t = Instant::now();
    let result = async {
        let mut cmd = pgdr(config)?;
        cmd.args([
            "restore",
            "--kind",
            "physical",
            "--json",
            "--target",
            "latest",
            "--no-archive",
            "--start",
            "--listen=",
            "--scratch-hba",
        ])
        .args(["--backup", manifest.label.as_str()])
        .arg("--to")
        .arg(scratch.data())
        .args(["--port", &port.to_string()])
        .arg("--socket-dir")
        .arg(scratch.sock());
        if let Some(jobs) = opts.jobs {
            cmd.args(["--jobs", &jobs.to_string()]);
        }
        run_json::<PhysicalRestoreReport>(cmd).await
    }
    .await;
    steps.record("restore", t, &result, |r| {
        let recovery = r
            .recovery
            .as_ref()
            .map(|v| format!("recovery {} at LSN {} on timeline {}", v.state, v.lsn, v.timeline))
            .unwrap_or_else(|| "recovery not reported".into());
        format!(
            "{} files restored, every SHA-256 matched the manifest; {recovery}",
            r.files_written
        )
    });
    result.is_ok()
}

async fn restore_logical(
    config: &Config,
    manifest: &Manifest,
    tools: &PgTools,
    scratch: &Scratch,
    port: u16,
    steps: &mut Steps,
) -> bool {
    // A fresh cluster to restore into.
    let t = Instant::now();
    let made = init_cluster(tools, scratch, port).await;
    steps.record("scratch cluster", t, &made, |_| {
        format!("initdb and start on port {port}")
    });
    if made.is_err() {
        return false;
    }
    let url = format!(
        "host={} port={port} user=postgres dbname=postgres",
        scratch.sock().display()
    );
    let t = Instant::now();
    let globals = async {
        let mut cmd = pgdr(config)?;
        cmd.args([
            "restore",
            "--json",
            "--globals-only",
            "--backup",
            manifest.label.as_str(),
        ])
        .env("PGDR_POSTGRES_URL", &url);
        run_json::<LogicalRestoreReport>(cmd).await
    }
    .await;
    steps.record("globals", t, &globals, |r| {
        format!(
            "roles and tablespaces restored ({} statements failed, e.g. existing roles)",
            r.globals_statements_failed.unwrap_or(0)
        )
    });
    let mut all_ok = globals.is_ok();
    for db in &manifest.databases {
        let t = Instant::now();
        let result = async {
            let mut cmd = pgdr(config)?;
            cmd.args([
                "restore",
                "--json",
                "--backup",
                manifest.label.as_str(),
                "--database",
                &db.name,
            ])
            .args(["--to-database", &db.name, "--clean"])
            .env("PGDR_POSTGRES_URL", &url);
            let report = run_json::<LogicalRestoreReport>(cmd).await?;
            report
                .database
                .ok_or_else(|| anyhow!("the restore of {} reported no database", db.name))
        }
        .await;
        steps.record(&format!("restore {}", db.name), t, &result, |d| {
            format!(
                "{} tables, {} rows: every row count matches the manifest",
                d.tables_checked, d.rows
            )
        });
        all_ok &= result.is_ok();
    }
    all_ok
}

async fn init_cluster(tools: &PgTools, scratch: &Scratch, port: u16) -> Result<()> {
    let data = scratch.data();
    scratch::init(tools, &data, Logins::SocketOnly).await?;
    scratch::configure(
        &data,
        &[
            ("port", port.to_string()),
            ("unix_socket_directories", scratch.sock().display().to_string()),
            ("listen_addresses", String::new()),
            ("fsync", "off".into()),
        ],
    )?;
    scratch::start(tools, &data, &scratch.dir.join("server.log"), false).await
}

/// `pg_amcheck --all --heapallindexed` on the server at `target` (the amcheck
/// extension installed where missing): an error lists the first problems found.
pub async fn amcheck(tools: &PgTools, target: &PgTarget) -> Result<()> {
    let mut cmd = tokio::process::Command::new(tools.path("pg_amcheck")?);
    cmd.args(["--all", "--heapallindexed", "--install-missing", "--no-password"])
        .envs(target.child_env(Some("postgres")))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = cmd.output().await?;
    // Anything it prints is a finding, except the server's notices (`--install-missing`
    // on a database that already has amcheck: "extension \"amcheck\" already exists").
    let text: String = [&out.stdout[..], &out.stderr[..]]
        .iter()
        .flat_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.trim_start().starts_with("NOTICE:"))
        .map(|l| l + "\n")
        .collect();
    if !out.status.success() || !text.trim().is_empty() {
        let first: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(3).collect();
        return Err(anyhow!(
            "pg_amcheck reports corruption ({}): {}",
            out.status,
            first.join(" | ")
        ));
    }
    Ok(())
}

/// Run one SQL check: its first column of its first row must read `want`.
pub async fn run_check(target: &PgTarget, db: &str, name: &str, sql: &str, want: &str) -> Result<String> {
    let client = target.connect(Some(db)).await?;
    let rows = client
        .simple_query(sql)
        .await
        .map_err(crate::postgres::conn::db_err(name))?;
    let value = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "(no rows)".into());
    if value == want {
        Ok(value)
    } else {
        Err(anyhow!("got {value:?}, expected {want:?}"))
    }
}
