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
        ScheduleCommand::Check(f) => check(&f, ctx.json),
        ScheduleCommand::Crontab(f) => crontab(&f, ctx),
    }
}

/// Validate and show the next five runs of every job, in UTC and the job's zone.
pub fn check(args: &ScheduleFileArgs, json_out: bool) -> Result<Exit> {
    let jobs = schedule::load(&args.file)?;
    let now = Utc::now();
    if json_out {
        let v: Vec<_> = jobs
            .iter()
            .map(|j| {
                json!({
                    "name": j.name, "cron": j.cron, "timezone": j.timezone.name(), "command": j.command,
                    "args": j.args, "timeout": format_duration(j.timeout), "retries": j.retries,
                    "catch_up": format_duration(j.catch_up),
                    "next": j.next_runs(now, 5).iter().map(|t| t.to_rfc3339()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(Exit::Success);
    }
    println!("{}: {} job(s), valid", args.file.display(), jobs.len());
    for j in &jobs {
        println!(
            "\n{} — `pgdr {} {}` — cron {:?} ({}), timeout {}, {} retr{}, catch-up {}",
            j.name,
            j.command,
            j.args.join(" "),
            j.cron,
            j.timezone.name(),
            format_duration(j.timeout),
            j.retries,
            if j.retries == 1 { "y" } else { "ies" },
            format_duration(j.catch_up)
        );
        for t in j.next_runs(now, 5) {
            println!(
                "  {}   {} {}",
                t.format("%a %Y-%m-%d %H:%M:%S UTC"),
                t.with_timezone(&j.timezone).format("%a %Y-%m-%d %H:%M:%S"),
                j.timezone.name()
            );
        }
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
