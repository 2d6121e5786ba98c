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
use crate::postgres::recovery::conf_literal;
use crate::postgres::{Lsn, PgTarget, PgTools};
use crate::runbook::Runbook;
use crate::runbook::engine::{self, RecoverOptions, RecoverReport};
use crate::server::free_port;
use crate::steps::{Log, StepLog};

mod derive;
mod env;
mod inject;
mod report;
mod workload;

use derive::*;
use env::*;
use inject::*;
pub use report::{DataCheck, DrillReport, Rpo, Summary};
use workload::*;

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

const SCENARIOS: &[&str] = &["database-corruption", "data-loss", "database-failure", "region-failure"];

/// Run a drill; the report says pass or fail. Errors are for a drill that could not
/// be set up at all.
pub async fn run(config: &Config, opts: &DrillOptions, say: &mut dyn FnMut(String)) -> Result<DrillReport> {
    let scenario = opts.runbook.name.clone();
    if !SCENARIOS.contains(&scenario.as_str()) {
        return Err(crate::usage!(
            "the drill knows how to inject the failures of {} — the runbook {} is named {scenario:?}",
            SCENARIOS.join(", "),
            opts.runbook.source
        ));
    }
    let user = config.file_table()?.ok_or_else(|| {
        crate::usage!("a drill derives its configuration from the configuration file: run it with --config FILE")
    })?;
    let copy = if scenario == "region-failure" {
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
        Some(name)
    } else {
        None
    };
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let pgbouncer = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
        .ok_or_else(|| crate::usage!("pgbouncer not found: the drill puts PgBouncer in front of its scratch production — install it (Debian: apt-get install pgbouncer)"))?;
    for tool in ["initdb", "pg_ctl", "pgbench", "pg_amcheck"] {
        tools.path(tool)?;
    }

    // The scratch production archives as the postgres user: it must read the key.
    if let (Some((uid, gid)), Some(key)) = (crate::process::postgres_owner(), &config.repository.key_file) {
        use std::os::unix::fs::MetadataExt;
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
    }
    let started = Utc::now();
    let t0 = Instant::now();
    let stamp = started.format("%Y%m%dT%H%M%SZ").to_string();
    let parent = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix(&format!("pgdr-drill-{scenario}-"))
        .tempdir_in(&parent)
        .with_context(|| format!("creating a scratch directory in {}", parent.display()))?
        .keep();
    chown_postgres(&dir)?;
    let mut env = Env {
        dir,
        pg_ctl: tools.path("pg_ctl")?,
        bouncer: None,
        bouncer_port: free_port()?,
        workload: None,
        keep_dir: false,
    };
    let cluster = format!("{}-drill-{stamp}", config.cluster);
    // A local repository's drill area belongs to the postgres user, who archives
    // into it (the drill's pgdr children run as postgres too).
    let mut repos = vec![config.repository.clone()];
    for c in &config.repository.copies {
        repos.push(config.repository.copy(&c.name)?);
    }
    for r in &repos {
        if let Ok(crate::config::RepoUrl::Local(root)) = r.parsed_url() {
            let area = root.join(&cluster);
            std::fs::create_dir_all(&area).with_context(|| format!("creating {}", area.display()))?;
            chown_postgres(&area)?;
        }
    }
    let config_file = env.path("pgdr.toml");
    let mut report = DrillReport {
        scenario: scenario.clone(),
        title: opts.runbook.title.clone(),
        ok: false,
        started,
        failure_at: None,
        target_time: None,
        target_chosen: None,
        rto_seconds: None,
        rto_target_seconds: opts.runbook.targets.rto_minutes * 60,
        rto_met: false,
        rpo: None,
        served_by: None,
        steps: Vec::new(),
        recover: None,
        checks: Vec::new(),
        seconds: 0.0,
        error: None,
    };
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = None;
    let outcome = {
        let body = drill_body(
            config,
            opts,
            &user,
            &cluster,
            &config_file,
            copy.as_deref(),
            &tools,
            &pgbouncer,
            &mut env,
            &acks,
            &stop,
            &mut writer,
            &mut report,
            say,
        );
        tokio::select! {
            r = body => r,
            sig = crate::process::shutdown_signal() => Err(anyhow!("interrupted by {sig}: the drill was stopped and torn down")),
        }
    };
    if let Err(e) = &outcome {
        report.error = Some(format!("{e:#}"));
    }
    // Teardown, whatever happened.
    stop.store(true, Ordering::SeqCst);
    if let Some(w) = writer {
        w.abort();
    }
    let t = Instant::now();
    let t_started = Utc::now();
    env.stop_servers();
    let removed = remove_areas(&config_file).await;
    let detail = match &removed {
        Ok(n) => format!(
            "servers and PgBouncer stopped, {} removed, {n} repository objects removed",
            env.dir.display()
        ),
        Err(e) => format!(
            "servers and PgBouncer stopped, {} removed; the drill's repository area could not be removed: {e:#}",
            env.dir.display()
        ),
    };
    drop(env);
    report.steps.push(StepLog {
        step: "teardown".into(),
        started: t_started,
        seconds: t.elapsed().as_secs_f64(),
        ok: removed.is_ok(),
        detail,
    });
    say(report.steps.last().map(|s| s.to_string()).unwrap_or_default());
    report.seconds = t0.elapsed().as_secs_f64();
    report.ok = report.error.is_none()
        && report.recover.as_ref().is_some_and(|r| r.ok)
        && report.checks.iter().all(|c| c.ok)
        && report.rto_met
        && report.rpo.as_ref().is_some_and(|r| r.met);
    crate::repo::verification::store_event_report(config, &format!("drill-{scenario}"), started, &report).await;
    let summary = report.to_string();
    crate::notify::send(
        config,
        &format!("pgdr: {}", summary.lines().last().unwrap_or("drill finished")),
    )
    .await;
    Ok(report)
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
    let config = Config::load_file_only(&file)?;
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

#[allow(clippy::too_many_arguments)]
async fn drill_body(
    config: &Config,
    opts: &DrillOptions,
    user: &toml::Table,
    cluster: &str,
    config_file: &Path,
    copy: Option<&str>,
    tools: &PgTools,
    pgbouncer: &Path,
    env: &mut Env,
    acks: &Acks,
    stop: &Arc<AtomicBool>,
    writer: &mut Option<tokio::task::JoinHandle<()>>,
    report: &mut DrillReport,
    say: &mut dyn FnMut(String),
) -> Result<()> {
    let scenario = opts.runbook.name.as_str();
    let mut log = Log::new("drill");
    let s3 = matches!(config.repository.parsed_url(), Ok(crate::config::RepoUrl::S3 { .. }));
    let port = free_port()?;
    let production = env.path("production");
    let sock = env.path("sock");
    let result = async {
        // 1. The scratch production.
        let password = log.step("production", async {
            crate::disk::create_server_dir(&sock)?;
            crate::disk::create_server_dir(&env.path("spool"))?;
            // Trust only on the private socket; over TCP a password (scram), which
            // only this drill holds: its postgres user can read the repository key.
            let password = env.make_password()?;
            let mut initdb = tokio::process::Command::new(tools.path("initdb")?);
            initdb
                .arg("-D")
                .arg(&production)
                .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"])
                .arg(format!("--pwfile={}", env.path("pwfile").display()));
            crate::process::as_postgres_async(&mut initdb);
            initdb.env_clear().envs(crate::postgres::server_env(false));
            let made = run_tool(initdb, "initdb").await;
            std::fs::remove_file(env.path("pwfile")).context("removing the drill's password file for initdb")?;
            made?;
            write_config(config_file, &drill_config_table(config, user, cluster, env, port)?)?;
            let exe = std::env::current_exe()?;
            let sh = crate::process::sh_quote;
            let archive_command = format!(
                "{} --config {} wal-push \"%p\"",
                sh(&exe.to_string_lossy()),
                sh(&config_file.to_string_lossy())
            );
            let conf = format!(
                "\n# pgdr drill\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = {}\narchive_mode = on\narchive_command = {}\narchive_timeout = {}\nwal_level = replica\nmax_wal_senders = 10\nmax_connections = 60\n",
                conf_literal(&sock.display().to_string()),
                conf_literal(&archive_command),
                opts.archive_timeout
            );
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(production.join("postgresql.conf"))?
                .write_all(conf.as_bytes())?;
            let mut start = tokio::process::Command::new(tools.path("pg_ctl")?);
            start
                .arg("-D")
                .arg(&production)
                .arg("-l")
                .arg(env.path("production.log"))
                .args(["-w", "-t", "60", "start"]);
            crate::process::as_postgres_async(&mut start);
            start.env_clear().envs(crate::postgres::server_env(s3));
            run_tool(start, "pg_ctl start").await?;
            Ok((password, format!("initdb and start: port {port}, archiving into the repository area {cluster:?}")))
        })
        .await?;
        let prod_target = PgTarget::from_config(Some(&env.url(port, "postgres")))?
            .with_address(&sock.display().to_string(), port);
        log.step("data and backup", async {
            pgdr_child(config_file, &["init"]).await?;
            let mut bench = tokio::process::Command::new(tools.path("pgbench")?);
            bench
                .args(["-i", "-q", "-s", &opts.scale.to_string(), "-h"])
                .arg(&sock)
                .args(["-p", &port.to_string(), "-U", "postgres", "postgres"])
                .env_clear()
                .envs(crate::postgres::server_env(false));
            run_tool(bench, "pgbench -i").await?;
            let c = prod_target.connect(Some("postgres")).await?;
            c.batch_execute(
                "CREATE TABLE drill_ledger (id bigint PRIMARY KEY, amount numeric NOT NULL, note text);
                 INSERT INTO drill_ledger SELECT g, g * 1.5, 'entry ' || g FROM generate_series(1, 3000) g;
                 CREATE TABLE drill_archive (id bigint PRIMARY KEY, payload text);
                 INSERT INTO drill_archive SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
                 CREATE TABLE drill_acks (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());",
            )
            .await?;
            let backup = pgdr_child(config_file, &["backup", "--kind", "physical"]).await?;
            let label = backup["label"].as_str().unwrap_or("?").to_string();
            let mut detail = format!("pgbench scale {}, drill tables, physical backup {label}", opts.scale);
            if let Some(copy) = copy {
                pgdr_child(config_file, &["copy", "--to", copy]).await?;
                detail.push_str(&format!(", copied to {copy:?}"));
            }
            Ok(((), detail))
        })
        .await?;
        // 2. PgBouncer in front, the workload and the client that logs its commits.
        log.step("pgbouncer and workload", async {
            let pb = env.path("pgbouncer");
            std::fs::create_dir(&pb)?;
            chown_postgres(&pb)?;
            write_private(&pb.join("userlist.txt"), &format!("\"postgres\" \"{password}\"\n"))?;
            let ini = format!(
                "; pgdr drill\n[databases]\npostgres = host=127.0.0.1 port={port} dbname=postgres\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {}\nunix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {}\nadmin_users = postgres\npool_mode = transaction\nlogfile = {}\npidfile = {}\nignore_startup_parameters = extra_float_digits\nserver_login_retry = 1\n",
                env.bouncer_port,
                pb.join("userlist.txt").display(),
                pb.join("pgbouncer.log").display(),
                pb.join("pgbouncer.pid").display()
            );
            std::fs::write(pb.join("pgbouncer.ini"), ini)?;
            chown_postgres(&pb.join("pgbouncer.ini"))?;
            let mut cmd = std::process::Command::new(pgbouncer);
            cmd.arg(pb.join("pgbouncer.ini"))
                .env_clear()
                .envs(crate::postgres::server_env(false))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            crate::process::as_postgres(&mut cmd);
            env.bouncer = Some(cmd.spawn().context("starting pgbouncer")?);
            let deadline = Instant::now() + Duration::from_secs(20);
            while tokio::net::TcpStream::connect(("127.0.0.1", env.bouncer_port)).await.is_err() {
                if Instant::now() > deadline {
                    return Err(anyhow!("pgbouncer did not listen on port {} within 20 s", env.bouncer_port));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut bench = tokio::process::Command::new(tools.path("pgbench")?);
            bench
                .args(["-n", "-c", "2", "-j", "1", "-T", "86400", "-R", "40", "-h", "127.0.0.1"])
                .args(["-p", &env.bouncer_port.to_string(), "-U", "postgres", "postgres"])
                .env_clear()
                .envs(crate::postgres::server_env(false))
                .env("PGPASSFILE", env.path("pgpass"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            env.workload = Some(bench.spawn().context("starting pgbench")?);
            let bouncer = PgTarget::from_config(Some(&env.url(env.bouncer_port, "postgres")))?;
            *writer = Some(start_writer(bouncer, acks.clone(), stop.clone()));
            // Let the workload and the commit log run for a while.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let n = acks.lock().expect("ack log").len();
            if n == 0 {
                return Err(anyhow!("no commit through PgBouncer was acknowledged in 3 s — see {}", pb.join("pgbouncer.log").display()));
            }
            Ok(((), format!("PgBouncer on 127.0.0.1:{}, pgbench at 40 tps, {n} commits acknowledged so far", env.bouncer_port)))
        })
        .await?;
        // 3. The failure.
        let injected = log
            .step("inject the failure", async {
                let i = inject(scenario, env, &prod_target, &production, config_file, copy).await?;
                let detail = format!("failure at {}", i.failure_at.to_rfc3339());
                Ok((i, detail))
            })
            .await?;
        report.failure_at = Some(injected.failure_at);
        if injected.keep_before < injected.failure_at && injected.archived_until.is_none() {
            report.target_time = Some(injected.keep_before);
            report.target_chosen = Some(format!(
                "{:.1} s before the failure, chosen by the drill",
                (injected.failure_at - injected.keep_before).num_milliseconds() as f64 / 1000.0
            ));
        }
        Ok::<_, anyhow::Error>(injected)
    }
    .await;
    for s in &log.steps {
        say(s.to_string());
    }
    report.steps.append(&mut log.steps);
    let injected = result?;

    // 4. The same runbook recover runs, on the drill's configuration.
    let mut drill_config = Config::load_file_only(config_file)?;
    if let Some(c) = copy {
        drill_config.select_repository(c)?;
    }
    let inputs = opts.runbook.resolve_inputs(&injected.inputs)?;
    let ropts = RecoverOptions {
        runbook: opts.runbook.clone(),
        inputs,
        dry_run: false,
        state_file: env.path("recover-state.json"),
        jobs: opts.jobs,
        resume: false,
    };
    let prepared = engine::prepare(&drill_config, &ropts).await?;
    say(format!("recovery plan:\n{prepared}"));
    let recovered = engine::execute(&drill_config, &ropts, prepared, say).await?;
    let recover_ok = recovered.ok;
    let new_server = recovered.servers.get("new").cloned();
    report.recover = Some(recovered);
    if !recover_ok {
        return Err(anyhow!("the recovery failed (see its steps)"));
    }

    // 5. Measure: the service through PgBouncer, then data and commits.
    let expect_port = match &new_server {
        Some(s) => s.port,
        None => port,
    };
    let bouncer = PgTarget::from_config(Some(&env.url(env.bouncer_port, "postgres")))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let served_port = loop {
        let asked = async {
            let c = bouncer.connect(Some("postgres")).await?;
            let p = hash(&c, "SELECT current_setting('port')").await?;
            // Served means a write goes through, too.
            c.simple_query("INSERT INTO drill_acks (id) VALUES (-1) ON CONFLICT DO NOTHING")
                .await?;
            anyhow::Ok(p)
        };
        match tokio::time::timeout(Duration::from_secs(10), asked).await {
            Ok(Ok(p)) if p == expect_port.to_string() => break p,
            _ if Instant::now() > deadline => {
                return Err(anyhow!(
                    "PgBouncer does not serve from port {expect_port} within 60 s of the recovery"
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let rto = injected.t_fail.elapsed().as_secs_f64();
    report.rto_seconds = Some(rto);
    report.rto_met = rto <= report.rto_target_seconds as f64;
    report.served_by = Some(format!("127.0.0.1:{served_port}"));

    let service = PgTarget::from_config(Some(&env.url(expect_port, "postgres")))?;
    let c = match &new_server {
        Some(s) => s.target(&drill_config)?.connect(Some("postgres")).await?,
        None => service.connect(Some("postgres")).await?,
    };
    for (name, sql, want) in &injected.expect {
        let found = hash(&c, sql).await?;
        report.checks.push(DataCheck {
            name: name.clone(),
            ok: &found == want && !want.is_empty(),
            expected: want.clone(),
            found,
        });
    }
    // The log first: every commit in it was acknowledged before the table is read.
    let log_now = acks.lock().expect("ack log").clone();
    let present: std::collections::HashSet<i64> = c
        .query("SELECT id FROM drill_acks", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    report.rpo = Some(report::measure_rpo(
        &log_now,
        &present,
        &injected,
        report.started,
        opts.runbook.targets.rpo_seconds,
    ));
    Ok(())
}
