//! `pgdr schedule run|check|crontab --file F`.

use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use serde_json::json;

use super::Ctx;
use crate::cli::{ScheduleArgs, ScheduleCommand, ScheduleFileArgs};
use crate::exit::Exit;
use crate::schedule::{self, daemon, format_duration};

pub async fn run(ctx: &Ctx, args: ScheduleArgs) -> Result<Exit> {
    match args.command {
        ScheduleCommand::Run(run) => {
            let jobs = schedule::load(&run.file)?;
            let listen = run
                .listen
                .or_else(|| ctx.config.schedule.listen.clone())
                .unwrap_or_else(|| "127.0.0.1:9187".to_string());
            let history = run.history.map(Ok).unwrap_or_else(|| ctx.config.history_file())?;
            daemon::run(
                ctx.config.clone(),
                daemon::Options {
                    jobs,
                    history,
                    listen,
                    grace: Duration::from_secs(run.grace),
                },
            )
            .await?;
            Ok(Exit::Success)
        }
        ScheduleCommand::Check(f) => check(&f, ctx.json, Some(&ctx.config)),
        ScheduleCommand::Crontab(f) => crontab(&f, ctx),
    }
}

/// Why `job` cannot run under this configuration, if it cannot: its arguments do not
/// parse as pgdr's, or it needs what the configuration lacks (a copy job without
/// copies). Without a configuration only the arguments are checked.
fn cannot_run(job: &schedule::Job, config: Option<&crate::config::Config>) -> Option<String> {
    use clap::Parser;
    let argv = std::iter::once("pgdr".to_string())
        .chain(job.command.split_whitespace().map(str::to_string))
        .chain(job.args.iter().cloned());
    let cli = match crate::cli::Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let said = e.to_string();
            let first = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            return Some(format!(
                "`pgdr {} {}` does not parse: {first}",
                job.command,
                job.args.join(" ")
            ));
        }
    };
    let config = config?;
    if let crate::cli::Command::Copy(copy) = &cli.command {
        let names: Vec<&str> = config.repository.copies.iter().map(|c| c.name.as_str()).collect();
        if names.is_empty() {
            return Some("this configuration has no [[repository.copies]]: there is nothing to copy to".into());
        }
        if let Some(to) = &copy.to
            && !names.contains(&to.as_str())
        {
            return Some(format!(
                "no copy named {to:?} (the configured copies are {})",
                names.join(", ")
            ));
        }
    }
    None
}

/// Validate the schedule (against the configuration, when there is one) and show one
/// row per job with its next runs (UTC; the job's own zone too when it has another).
/// A job that cannot run fails the check.
pub fn check(args: &ScheduleFileArgs, json_out: bool, config: Option<&crate::config::Config>) -> Result<Exit> {
    let jobs = schedule::load(&args.file)?;
    let now = Utc::now();
    let problems: Vec<Option<String>> = jobs.iter().map(|j| cannot_run(j, config)).collect();
    let failing = problems.iter().filter(|p| p.is_some()).count();
    if json_out {
        let v: Vec<_> = jobs
            .iter()
            .zip(&problems)
            .map(|(j, problem)| {
                json!({
                    "name": j.name, "cron": j.cron, "timezone": j.timezone.name(), "command": j.command,
                    "args": j.args, "timeout": format_duration(j.timeout), "retries": j.retries,
                    "catch_up": format_duration(j.catch_up),
                    "next": j.next_runs(now, 5).iter().map(|t| t.to_rfc3339()).collect::<Vec<_>>(),
                    "ok": problem.is_none(),
                    "problem": problem,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!(
            "{}: {} job(s){}",
            args.file.display(),
            jobs.len(),
            if config.is_some() {
                ", checked against the configuration"
            } else {
                " (no configuration found: commands checked, not what they need — pass --config FILE)"
            }
        );
        let command = |j: &schedule::Job| format!("pgdr {} {}", j.command, j.args.join(" ")).trim().to_string();
        let wide = |f: &dyn Fn(&schedule::Job) -> String, title: &str| {
            jobs.iter()
                .map(|j| f(j).chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        };
        let (wn, wc, wk) = (
            wide(&|j| j.name.clone(), "JOB"),
            wide(&command, "COMMAND"),
            wide(&|j| j.cron.clone(), "CRON"),
        );
        println!(
            "{:<wn$}  {:<wc$}  {:<wk$}  {:<16}  {:<16}  {:<8}  STATUS",
            "JOB", "COMMAND", "CRON", "NEXT RUN (UTC)", "THEN (UTC)", "TIMEOUT"
        );
        for (j, problem) in jobs.iter().zip(&problems) {
            let next = j.next_runs(now, 2);
            let at = |i: usize| {
                next.get(i)
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let zone = if j.timezone.name() == "UTC" {
                String::new()
            } else {
                next.first()
                    .map(|t| {
                        format!(
                            " ({} {})",
                            t.with_timezone(&j.timezone).format("%H:%M"),
                            j.timezone.name()
                        )
                    })
                    .unwrap_or_default()
            };
            println!(
                "{:<wn$}  {:<wc$}  {:<wk$}  {:<16}  {:<16}  {:<8}  {}{zone}",
                j.name,
                command(j),
                j.cron,
                at(0),
                at(1),
                format_duration(j.timeout),
                match problem {
                    None => "ok".to_string(),
                    Some(p) => format!("CANNOT RUN: {p}"),
                }
            );
        }
    }
    if failing > 0 {
        let first = jobs
            .iter()
            .zip(&problems)
            .find_map(|(j, p)| p.as_ref().map(|p| format!("{}: {p}", j.name)))
            .unwrap_or_default();
        return Err(crate::usage!(
            "{} — {failing} job(s) of {} cannot run ({first})",
            args.file.display(),
            jobs.len()
        ));
    }
    Ok(Exit::Success)
}

/// Equivalent crontab lines, for those who prefer system cron (with flock against
/// overlapping runs; the repository lease is then not used).
pub fn crontab(args: &ScheduleFileArgs, ctx: &Ctx) -> Result<Exit> {
    let jobs = schedule::load(&args.file)?;
    let exe = std::env::current_exe()?;
    let config = ctx
        .config
        .file()
        .map(|f| format!(" --config {}", f.display()))
        .unwrap_or_default();
    println!(
        "# pgdr jobs from {} — install with `crontab -e` (system cron has no seconds field)",
        args.file.display()
    );
    let mut zone = String::new();
    for j in &jobs {
        let fields: Vec<&str> = j.cron.split_whitespace().collect();
        let (seconds, five) = match fields.len() {
            5 => ("0", fields.join(" ")),
            6 | 7 => (fields[0], fields[1..6].join(" ")),
            _ => ("0", j.cron.clone()),
        };
        if j.timezone.name() != zone {
            zone = j.timezone.name().to_string();
            println!("CRON_TZ={zone}");
        }
        if seconds != "0" {
            println!(
                "# {}: cron runs at minute granularity; the seconds field {seconds:?} is dropped",
                j.name
            );
        }
        println!(
            "{five} flock -n /run/lock/pgdr-{}.lock timeout {} {}{config} {} {}",
            j.name,
            j.timeout.as_secs(),
            exe.display(),
            j.command,
            j.args.join(" ")
        );
    }
    Ok(Exit::Success)
}
