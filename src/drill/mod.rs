//! `pgdr drill --scenario NAME`: rehearse a disaster scenario end to end on scratch
//! resources, and measure it. The drill builds a scratch "production": a cluster
//! (initdb, 127.0.0.1 and a private socket only) archiving with `pgdr wal-push` into
//! an area of the configured repositories of its own (`<cluster>-drill-<time>`), a
//! physical backup (copied to the DR copy for a region drill), PgBouncer in front, a
//! pgbench workload and a client that records every commit it got acknowledged. It
//! injects the scenario's failure, runs the same runbook `recover` runs, and measures:
//! - RTO: from the failure to a query served through PgBouncer by the recovered
//!   service, and per step;
//! - RPO: acknowledged commits missing afterwards, from the client's log.
//!
//! Both are compared with the runbook's targets. Everything the drill made (servers,
//! PgBouncer, directories, its repository areas) is removed at the end, on failure
//! and on Ctrl-C too. The report goes to `verifications/` of the real repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::postgres::{Lsn, PgTarget, PgTools};
use crate::runbook::Runbook;
use crate::runbook::engine::{self, RecoverOptions, RecoverReport};
use crate::server::free_port;
use crate::server::scratch::{self, Logins, ScratchDir};
use crate::steps::{Log, StepLog};

mod derive;
mod env;
mod inject;
pub mod report;
mod workload;

use derive::*;
use env::*;
use inject::*;
pub use report::{DataCheck, DrillReport, Rpo, Summary};
use workload::*;

/// The disaster scenarios of the deployment plan a drill rehearses: each has a
/// runbook of the same name, and a failure the drill knows how to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Bad data written over good: recover to a point in time before it.
    DatabaseCorruption,
    /// Rows and a table deleted: bring them back from a scratch copy.
    DataLoss,
    /// The primary server lost: promote a standby or restore a new primary.
    DatabaseFailure,
    /// The primary region lost, its repository with it: recover from a copy.
    RegionFailure,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::DatabaseCorruption,
        Scenario::DataLoss,
        Scenario::DatabaseFailure,
        Scenario::RegionFailure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::DatabaseCorruption => "database-corruption",
            Scenario::DataLoss => "data-loss",
            Scenario::DatabaseFailure => "database-failure",
            Scenario::RegionFailure => "region-failure",
        }
    }

    /// The scenario a runbook rehearses, by its name.
    pub fn of(runbook: &Runbook) -> Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == runbook.name)
            .ok_or_else(|| {
                crate::usage!(
                    "the drill knows how to inject the failures of {} — the runbook {} is named {:?}",
                    Scenario::ALL.map(Scenario::name).join(", "),
                    runbook.source,
                    runbook.name
                )
            })
    }
}

#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub runbook: Runbook,
    /// Where the scratch directory goes (default: the system's temp directory).
    pub work_dir: Option<PathBuf>,
    /// pgbench scale of the scratch production.
    pub scale: u32,
    /// The copy a region drill recovers from (default: the first configured).
    pub copy: Option<String>,
    pub jobs: usize,
    /// archive_timeout of the scratch production, seconds: it bounds the RPO of a
    /// lost server.
    pub archive_timeout: u64,
}

/// Run a drill; the report says pass or fail. Errors are for a drill that could not
/// be set up at all.
///
/// prepare → build production → inject → recover → measure → tear down. Teardown
/// runs whatever happened before it, on Ctrl-C too.
pub async fn run(config: &Config, opts: &DrillOptions, say: &mut dyn FnMut(String)) -> Result<DrillReport> {
    let mut drill = Drill::prepare(config, opts)?;
    let outcome = tokio::select! {
        r = drill.rehearse(say) => r,
        sig = crate::process::shutdown_signal() => Err(anyhow!("interrupted by {sig}: the drill was stopped and torn down")),
    };
    if let Err(e) = &outcome {
        drill.report.error = Some(format!("{e:#}"));
    }
    let report = drill.tear_down(say).await;
    let event = format!("drill-{}", report.scenario);
    crate::repo::verification::store_event_report(config, &event, report.started, &report).await;
    let summary = report.to_string();
    crate::notify::send(
        config,
        &format!("pgdr: {}", summary.lines().last().unwrap_or("drill finished")),
    )
    .await;
    Ok(report)
}

/// One drill while it runs: what it was asked, what it found, its scratch world and
/// what it has measured so far.
struct Drill<'a> {
    /// The configuration file alone: what the drill's configuration derives from.
    file: Config,
    opts: &'a DrillOptions,
    scenario: Scenario,
    /// The copy a region drill recovers from.
    copy: Option<String>,
    tools: PgTools,
    pgbouncer: PathBuf,
    /// The drill's area in each repository (its configuration's `cluster`).
    cluster: String,
    config_file: PathBuf,
    env: Env,
    acks: Acks,
    stop: Arc<AtomicBool>,
    writer: Option<tokio::task::JoinHandle<()>>,
    report: DrillReport,
    t0: Instant,
}

/// The scratch production, once it runs.
struct Production {
    port: u16,
    password: String,
    data: PathBuf,
    sock: PathBuf,
    target: PgTarget,
}

impl<'a> Drill<'a> {
    /// Check everything the drill needs before making anything, then make its
    /// scratch directory and its repository areas.
    fn prepare(config: &Config, opts: &'a DrillOptions) -> Result<Drill<'a>> {
        let scenario = Scenario::of(&opts.runbook)?;
        // The primary repository as the file names it, whatever `--repository` chose.
        let path = config.file().ok_or_else(|| {
            crate::usage!("a drill derives its configuration from the configuration file: run it with --config FILE")
        })?;
        let file = Config::load_file(&path)?;
        let copy = match scenario {
            Scenario::RegionFailure => Some(region_copy(&file, opts)?),
            _ => None,
        };
        let tools = PgTools::locate(file.postgres.bin_dir.as_deref())?;
        for tool in ["initdb", "pg_ctl", "pgbench", "pg_amcheck"] {
            tools.path(tool)?;
        }
        let pgbouncer = find_pgbouncer()?;
        key_readable_by_postgres(&file)?;

        let started = Utc::now();
        let scratch = ScratchDir::new(
            &tools,
            &format!("pgdr-drill-{}-", scenario.name()),
            opts.work_dir.as_deref(),
        )?;
        let env = Env {
            scratch,
            bouncer: None,
            bouncer_port: free_port()?,
            workload: None,
        };
        let cluster = format!("{}-drill-{}", config.cluster, started.format("%Y%m%dT%H%M%SZ"));
        make_areas(&file, &cluster)?;
        Ok(Drill {
            file,
            opts,
            scenario,
            copy,
            tools,
            pgbouncer,
            config_file: env.path("pgdr.toml"),
            cluster,
            env,
            acks: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            writer: None,
            report: DrillReport::new(scenario, &opts.runbook, started),
            t0: Instant::now(),
        })
    }

    /// Build production, inject the failure, recover with the runbook, measure.
    async fn rehearse(&mut self, say: &mut dyn FnMut(String)) -> Result<()> {
        let mut log = Log::new("drill");
        let staged = async {
            let production = log.step("production", self.build_production()).await?;
            log.step("data and backup", self.load_and_back_up(&production)).await?;
            log.step("pgbouncer and workload", self.start_service(&production))
                .await?;
            let injected = log.step("inject the failure", self.inject(&production)).await?;
            anyhow::Ok((production, injected))
        }
        .await;
        for s in &log.steps {
            say(s.to_string());
        }
        self.report.steps.append(&mut log.steps);
        let (production, injected) = staged?;
        self.note_target(&injected);
        let (drill_config, new_server) = self.recover(&injected, say).await?;
        self.measure(&production, &injected, &drill_config, new_server.as_ref())
            .await
    }

    /// The scratch production: initdb, archiving with `pgdr wal-push` into the
    /// drill's area, started as postgres. Trust only on its private socket; over TCP
    /// a password only this drill holds (its postgres user can read the repository
    /// key).
    async fn build_production(&self) -> Result<(Production, String)> {
        let (port, data, sock) = (free_port()?, self.env.path("production"), self.env.path("sock"));
        crate::disk::create_server_dir(&sock)?;
        crate::disk::create_server_dir(&self.env.path("spool"))?;
        let password = self.env.make_password()?;
        let pwfile = self.env.path("pwfile");
        let made = scratch::init(&self.tools, &data, Logins::Password { pwfile: &pwfile }).await;
        std::fs::remove_file(&pwfile).context("removing the drill's password file for initdb")?;
        made?;
        write_config(
            &self.config_file,
            &drill_config(&self.file, &self.cluster, &self.env, port),
        )?;
        let sh = crate::process::sh_quote;
        let archive_command = format!(
            "{} --config {} wal-push \"%p\"",
            sh(&std::env::current_exe()?.to_string_lossy()),
            sh(&self.config_file.to_string_lossy())
        );
        scratch::configure(
            &data,
            &[
                ("port", port.to_string()),
                ("listen_addresses", "127.0.0.1".into()),
                ("unix_socket_directories", sock.display().to_string()),
                ("archive_mode", "on".into()),
                ("archive_command", archive_command),
                ("archive_timeout", self.opts.archive_timeout.to_string()),
                ("wal_level", "replica".into()),
                ("max_wal_senders", "10".into()),
                ("max_connections", "60".into()),
            ],
        )?;
        let s3 = matches!(self.file.repository.parsed_url(), Ok(crate::config::RepoUrl::S3 { .. }));
        scratch::start(&self.tools, &data, &self.env.path("production.log"), s3).await?;
        let target = PgTarget::from_config(Some(&self.env.url(port, "postgres")))?
            .with_address(&sock.display().to_string(), port);
        let detail = format!(
            "initdb and start: port {port}, archiving into the repository area {:?}",
            self.cluster
        );
        let production = Production {
            port,
            password,
            data,
            sock,
            target,
        };
        Ok((production, detail))
    }

    /// pgbench's tables, the drill's own, a physical backup (and its copy, for a
    /// region drill).
    async fn load_and_back_up(&self, production: &Production) -> Result<((), String)> {
        pgdr_child(&self.config_file, &["init"]).await?;
        let mut bench = tokio::process::Command::new(self.tools.path("pgbench")?);
        bench
            .args(["-i", "-q", "-s", &self.opts.scale.to_string(), "-h"])
            .arg(&production.sock)
            .args(["-p", &production.port.to_string(), "-U", "postgres", "postgres"]);
        scratch::run_as_postgres(bench, "pgbench -i", false).await?;
        let c = production.target.connect(Some("postgres")).await?;
        c.batch_execute(
            "CREATE TABLE drill_ledger (id bigint PRIMARY KEY, amount numeric NOT NULL, note text);
             INSERT INTO drill_ledger SELECT g, g * 1.5, 'entry ' || g FROM generate_series(1, 3000) g;
             CREATE TABLE drill_archive (id bigint PRIMARY KEY, payload text);
             INSERT INTO drill_archive SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
             CREATE TABLE drill_acks (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());",
        )
        .await?;
        let full = pgdr_child(&self.config_file, &["backup", "--kind", "physical", "--type", "full"]).await?;
        // Production takes a weekly full and daily incrementals: the drill restores
        // such a chain, a full and an incremental on it taken after more changes.
        c.batch_execute(
            "UPDATE drill_archive SET payload = md5(payload) WHERE id % 7 = 0;
             UPDATE drill_ledger SET note = note || ' (changed after the full backup)' WHERE id % 5 = 0;
             CREATE TABLE drill_after_full AS SELECT g AS id FROM generate_series(1, 500) g;",
        )
        .await?;
        let incr = pgdr_child(&self.config_file, &["backup", "--kind", "physical", "--type", "incr"]).await?;
        let label = |v: &serde_json::Value| v["label"].as_str().unwrap_or("?").to_string();
        let mut detail = format!(
            "pgbench scale {}, drill tables, physical backup {} and incremental {} on it",
            self.opts.scale,
            label(&full),
            label(&incr)
        );
        if let Some(copy) = &self.copy {
            pgdr_child(&self.config_file, &["copy", "--to", copy]).await?;
            detail.push_str(&format!(", copied to {copy:?}"));
        }
        Ok(((), detail))
    }

    /// PgBouncer in front, the pgbench workload and the client that logs every
    /// commit it got acknowledged.
    async fn start_service(&mut self, production: &Production) -> Result<((), String)> {
        let pb = self.env.path("pgbouncer");
        crate::disk::create_server_dir(&pb)?;
        crate::disk::write_private_file(
            &pb.join("userlist.txt"),
            &format!("\"postgres\" \"{}\"\n", production.password),
        )?;
        let ini = format!(
            "; pgdr drill\n[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {}\nunix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {}\nadmin_users = postgres\npool_mode = transaction\nlogfile = {}\npidfile = {}\nignore_startup_parameters = extra_float_digits\nserver_login_retry = 1\n",
            production.port,
            self.env.bouncer_port,
            pb.join("userlist.txt").display(),
            pb.join("pgbouncer.log").display(),
            pb.join("pgbouncer.pid").display()
        );
        std::fs::write(pb.join("pgbouncer.ini"), ini)?;
        crate::disk::give_to_postgres(&pb.join("pgbouncer.ini"))?;
        let mut cmd = std::process::Command::new(&self.pgbouncer);
        cmd.arg(pb.join("pgbouncer.ini"))
            .env_clear()
            .envs(crate::postgres::server_env(false))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::process::as_postgres(&mut cmd);
        self.env.bouncer = Some(cmd.spawn().context("starting pgbouncer")?);
        let port = self.env.bouncer_port;
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                return Err(anyhow!("pgbouncer did not listen on port {port} within 20 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut bench = tokio::process::Command::new(self.tools.path("pgbench")?);
        bench
            .args(["-n", "-c", "2", "-j", "1", "-T", "86400", "-R", "40", "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-U", "postgres", "postgres"])
            .env_clear()
            .envs(crate::postgres::server_env(false))
            .env("PGPASSFILE", self.env.path("pgpass"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        self.env.workload = Some(bench.spawn().context("starting pgbench")?);
        let bouncer = PgTarget::from_config(Some(&self.env.url(port, "postgres")))?;
        self.writer = Some(start_writer(bouncer, self.acks.clone(), self.stop.clone()));
        // Let the workload and the commit log run for a while.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let n = self.acks.lock().expect("ack log").len();
        if n == 0 {
            return Err(anyhow!(
                "no commit through PgBouncer was acknowledged in 3 s — see {}",
                pb.join("pgbouncer.log").display()
            ));
        }
        Ok((
            (),
            format!("PgBouncer on 127.0.0.1:{port}, pgbench at 40 tps, {n} commits acknowledged so far"),
        ))
    }

    async fn inject(&self, production: &Production) -> Result<(Injected, String)> {
        let i = inject(
            self.scenario,
            &self.env,
            &production.target,
            &production.data,
            &self.config_file,
            self.copy.as_deref(),
        )
        .await?;
        let detail = format!("failure at {}", i.failure_at.to_rfc3339());
        Ok((i, detail))
    }

    /// A point-in-time drill says which target it chose, and why.
    fn note_target(&mut self, injected: &Injected) {
        self.report.failure_at = Some(injected.failure_at);
        if injected.keep_before < injected.failure_at && injected.archived_until.is_none() {
            self.report.target_time = Some(injected.keep_before);
            self.report.target_chosen = Some(format!(
                "{:.1} s before the failure, chosen by the drill",
                (injected.failure_at - injected.keep_before).num_milliseconds() as f64 / 1000.0
            ));
        }
    }

    /// The same runbook `recover` runs, on the drill's configuration (reading from
    /// the copy, for a region drill). Returns that configuration and the server the
    /// recovery made, if it made one.
    async fn recover(
        &mut self,
        injected: &Injected,
        say: &mut dyn FnMut(String),
    ) -> Result<(Config, Option<crate::runbook::steps::Server>)> {
        let mut drill_config = Config::load_file(&self.config_file)?;
        if let Some(c) = &self.copy {
            drill_config.select_repository(c)?;
        }
        let ropts = RecoverOptions {
            runbook: self.opts.runbook.clone(),
            inputs: self.opts.runbook.resolve_inputs(&injected.inputs)?,
            dry_run: false,
            state_file: self.env.path("recover-state.json"),
            jobs: self.opts.jobs,
            resume: false,
        };
        let prepared = engine::prepare(&drill_config, &ropts).await?;
        say(format!("recovery plan:\n{prepared}"));
        let recovered = engine::execute(&drill_config, &ropts, prepared, say).await?;
        let ok = recovered.ok;
        let new_server = recovered.servers.get("new").cloned();
        self.report.recover = Some(recovered);
        if !ok {
            return Err(anyhow!("the recovery failed (see its steps)"));
        }
        Ok((drill_config, new_server))
    }

    /// RTO: until PgBouncer serves a write from the recovered server. Then the data
    /// checks, and RPO from the client's commit log.
    async fn measure(
        &mut self,
        production: &Production,
        injected: &Injected,
        drill_config: &Config,
        new_server: Option<&crate::runbook::steps::Server>,
    ) -> Result<()> {
        let expect_port = new_server.map_or(production.port, |s| s.port);
        let served_port = self.served_from(expect_port).await?;
        let rto = injected.t_fail.elapsed().as_secs_f64();
        self.report.rto_seconds = Some(rto);
        self.report.rto_met = rto <= self.report.rto_target_seconds as f64;
        self.report.served_by = Some(format!("127.0.0.1:{served_port}"));

        let c = match new_server {
            Some(s) => s.target(drill_config)?.connect(Some("postgres")).await?,
            None => {
                PgTarget::from_config(Some(&self.env.url(expect_port, "postgres")))?
                    .connect(Some("postgres"))
                    .await?
            }
        };
        for (name, sql, want) in &injected.expect {
            let found = hash(&c, sql).await?;
            self.report.checks.push(DataCheck {
                name: name.clone(),
                ok: &found == want && !want.is_empty(),
                expected: want.clone(),
                found,
            });
        }
        // The log first: every commit in it was acknowledged before the table is read.
        let log_now = self.acks.lock().expect("ack log").clone();
        let present: std::collections::HashSet<i64> = c
            .query("SELECT id FROM drill_acks", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        self.report.rpo = Some(report::measure_rpo(
            &log_now,
            &present,
            injected,
            self.report.started,
            self.opts.runbook.targets.rpo_seconds,
        ));
        Ok(())
    }

    /// Wait (60 s at most) until PgBouncer serves, from `port`, a query and a write.
    async fn served_from(&self, port: u16) -> Result<String> {
        let bouncer = PgTarget::from_config(Some(&self.env.url(self.env.bouncer_port, "postgres")))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let asked = async {
                let c = bouncer.connect(Some("postgres")).await?;
                let p = hash(&c, "SELECT current_setting('port')").await?;
                // Served means a write goes through, too.
                c.simple_query("INSERT INTO drill_acks (id) VALUES (-1) ON CONFLICT DO NOTHING")
                    .await?;
                anyhow::Ok(p)
            };
            match tokio::time::timeout(Duration::from_secs(10), asked).await {
                Ok(Ok(p)) if p == port.to_string() => return Ok(p),
                _ if Instant::now() > deadline => {
                    return Err(anyhow!(
                        "PgBouncer does not serve from port {port} within 60 s of the recovery"
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Stop everything the drill started and remove its directory and repository
    /// areas; then the verdict.
    async fn tear_down(mut self, say: &mut dyn FnMut(String)) -> DrillReport {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.writer.take() {
            w.abort();
        }
        let t = Instant::now();
        let t_started = Utc::now();
        self.env.stop_servers();
        let removed = remove_areas(&self.config_file).await;
        let dir = self.env.scratch.path().display().to_string();
        let detail = match &removed {
            Ok(n) => format!("servers and PgBouncer stopped, {dir} removed, {n} repository objects removed"),
            Err(e) => format!(
                "servers and PgBouncer stopped, {dir} removed; the drill's repository area could not be removed: {e:#}"
            ),
        };
        drop(self.env);
        let mut report = self.report;
        report.steps.push(StepLog {
            step: "teardown".into(),
            started: t_started,
            seconds: t.elapsed().as_secs_f64(),
            ok: removed.is_ok(),
            detail,
        });
        say(report.steps.last().map(|s| s.to_string()).unwrap_or_default());
        report.seconds = self.t0.elapsed().as_secs_f64();
        report.ok = report.error.is_none()
            && report.recover.as_ref().is_some_and(|r| r.ok)
            && report.checks.iter().all(|c| c.ok)
            && report.rto_met
            && report.rpo.as_ref().is_some_and(|r| r.met);
        report
    }
}

/// The copy a region drill recovers from: `--copy`, or the first configured.
fn region_copy(config: &Config, opts: &DrillOptions) -> Result<String> {
    let name = match &opts.copy {
        Some(c) => c.clone(),
        None => config
            .repository
            .copies
            .first()
            .map(|c| c.name.clone())
            .ok_or_else(|| {
                crate::usage!(
                    "the region-failure drill recovers from a copy in another region: configure a [[repository.copies]] entry"
                )
            })?,
    };
    config.repository.copy(&name)?;
    Ok(name)
}

fn find_pgbouncer() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
        .ok_or_else(|| crate::usage!("pgbouncer not found: the drill puts PgBouncer in front of its scratch production — install it (Debian: apt-get install pgbouncer)"))
}

/// The scratch production archives as the postgres user: it must read the key.
fn key_readable_by_postgres(config: &Config) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (Some((uid, gid)), Some(key)) = (crate::process::postgres_owner(), &config.repository.key_file) else {
        return Ok(());
    };
    let readable = std::fs::metadata(key).is_ok_and(|m| {
        let mode = m.mode();
        (m.uid() == uid && mode & 0o400 != 0) || (m.gid() == gid && mode & 0o040 != 0) || mode & 0o004 != 0
    });
    if !readable {
        return Err(crate::usage!(
            "the drill's servers archive as the postgres user, which cannot read the key file {} — chown it to postgres (mode 0600), as archive_command needs anyway",
            key.display()
        ));
    }
    Ok(())
}

/// The drill's area in each local repository, made now and given to the postgres
/// user, who archives into it (the drill's pgdr children run as postgres too).
fn make_areas(config: &Config, cluster: &str) -> Result<()> {
    let mut repos = vec![config.repository.clone()];
    for c in &config.repository.copies {
        repos.push(config.repository.copy(&c.name)?);
    }
    for r in &repos {
        if let Ok(crate::config::RepoUrl::Local(root)) = r.parsed_url() {
            let area = root.join(cluster);
            std::fs::create_dir_all(&area).with_context(|| format!("creating {}", area.display()))?;
            crate::disk::give_to_postgres(&area)?;
        }
    }
    Ok(())
}

/// Remove the drill's areas of the repository and of every copy.
async fn remove_areas(config_file: &Path) -> Result<usize> {
    // A region drill pointed the primary nowhere; the original says where it was.
    let original = config_file.with_extension("toml.orig");
    let file = if original.exists() {
        original
    } else {
        config_file.to_path_buf()
    };
    if !file.exists() {
        return Ok(0);
    }
    let config = Config::load_file(&file)?;
    // Never anything but a drill's own area.
    if !config.cluster.contains("-drill-") {
        return Err(anyhow!(
            "refusing to remove the repository area {:?}: not a drill's",
            config.cluster
        ));
    }
    let mut repos = vec![config.repository.clone()];
    for c in &config.repository.copies {
        repos.push(config.repository.copy(&c.name)?);
    }
    let mut n = 0;
    for r in repos {
        let storage = crate::storage::open(&r, &config.cluster).await?;
        let keys: Vec<_> = storage.list("").await?.into_iter().map(|m| m.key).collect();
        n += keys.len();
        for chunk in keys.chunks(500) {
            storage.delete(chunk).await?;
        }
        // A local area's own directory, now empty (the store prunes those below it).
        if let Ok(crate::config::RepoUrl::Local(root)) = r.parsed_url() {
            match std::fs::remove_dir(root.join(&config.cluster)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(anyhow!("removing {}: {e}", root.join(&config.cluster).display()));
                }
                _ => {}
            }
        }
    }
    Ok(n)
}
