//! One file per verb. Each is a thin composition of config, repo, pipeline, storage
//! and postgres; none of them juggles channels or formats object keys by hand.

mod backup;
mod cat;
mod check;
mod copy;
mod drill;
mod expire;
mod failover;
mod init;
mod key;
mod list;
mod metrics;
mod recover;
mod report;
mod restore;
mod schedule;
mod standby;
mod switch;
mod verify;
mod wal_fetch;
mod wal_push;
mod wal_search;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::exit::Exit;

/// What every command gets: the loaded configuration and the output mode.
pub struct Ctx {
    pub config: Config,
    pub json: bool,
}

impl Ctx {
    /// Print a JSON value on stdout (for `--json`).
    pub fn print_json(&self, value: &serde_json::Value) {
        println!("{}", serde_json::to_string_pretty(value).expect("JSON serialises"));
    }

    /// Ask before something destructive: yes with `--yes`; otherwise a `y` typed at
    /// the terminal. Without a terminal (cron, scripts) and without `--yes`, refuse.
    pub fn confirm(&self, yes: bool, question: &str) -> Result<bool> {
        use std::io::{BufRead, IsTerminal, Write};
        if yes {
            return Ok(true);
        }
        if !std::io::stdin().is_terminal() {
            return Err(crate::usage!(
                "{question} needs confirmation: run it at a terminal, or pass --yes"
            ));
        }
        eprint!("{question} [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
    }

    /// An operation's report: as JSON with `--json`, else its human summary.
    pub fn print_report<R: serde::Serialize + std::fmt::Display>(&self, report: &R) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(report).expect("JSON serialises"));
        } else {
            println!("{report}");
        }
    }
}

/// The repository owner's own jobs, which write the repository and are refused when
/// run as anyone else (see `repo::owner`). Restores, verifications, drills and the
/// emergency verbs may run as root: what they write is given to the owner.
fn owners_job(command: &Command) -> Option<&'static str> {
    use crate::cli::{KeyCommand, ScheduleCommand};
    match command {
        Command::Backup(_) => Some("backup"),
        Command::Expire(a) if !a.dry_run => Some("expire"),
        Command::Copy(a) if !a.dry_run => Some("copy"),
        Command::Key(a) if !matches!(a.command, KeyCommand::List) => Some("key"),
        Command::Schedule(a) if matches!(a.command, ScheduleCommand::Run(_)) => Some("schedule run"),
        Command::WalPush(_) | Command::WalPushAhead(_) => Some("wal-push"),
        _ => None,
    }
}

pub async fn run(cli: Cli) -> Result<Exit> {
    // Checking a schedule file needs no pgdr configuration.
    if let Command::Schedule(args) = &cli.command
        && let crate::cli::ScheduleCommand::Check(f) = &args.command
    {
        // With the configuration when there is one: a job it cannot run fails.
        let config = Config::load(cli.config.as_deref())
            .ok()
            .and_then(|mut c| match &cli.repository {
                Some(name) => c.select_repository(name).ok().map(|_| c),
                None => Some(c),
            });
        return schedule::check(f, cli.json, config.as_ref());
    }
    let config = Config::load(cli.config.as_deref());
    // `init --generate-key` may run before a configuration exists.
    if let Command::Init(args) = &cli.command
        && config.is_err()
        && args.generate_key.is_some()
    {
        return init::generate_only(args, cli.json);
    }
    let mut config = config?;
    if let Some(name) = &cli.repository {
        config.select_repository(name)?;
    }
    if let Some(verb) = owners_job(&cli.command) {
        crate::repo::owner::require(&config, verb)?;
    }
    let ctx = Ctx { config, json: cli.json };
    match cli.command {
        Command::Init(args) => init::run(&ctx, args).await,
        Command::Check(args) => check::run(&ctx, args).await,
        Command::Backup(args) => backup::run(&ctx, args).await,
        Command::List(args) => list::run(&ctx, args).await,
        Command::Restore(args) => restore::run(&ctx, *args).await,
        Command::Cat(args) => cat::run(&ctx, args).await,
        Command::Expire(args) => expire::run(&ctx, args).await,
        Command::Verify(args) => verify::run(&ctx, args).await,
        Command::Copy(args) => copy::run(&ctx, args).await,
        Command::Switch(args) => switch::run(&ctx, args).await,
        Command::Standby(args) => standby::run(&ctx, args).await,
        Command::Failover(args) => failover::run(&ctx, args).await,
        Command::Recover(args) => recover::run(&ctx, args).await,
        Command::Drill(args) => drill::run(&ctx, args).await,
        Command::WalSearch(args) => wal_search::run(&ctx, args).await,
        Command::Key(args) => key::run(&ctx, args).await,
        Command::Schedule(args) => schedule::run(&ctx, args).await,
        Command::Metrics(args) => metrics::run(&ctx, args).await,
        Command::Report(args) => report::run(&ctx, args).await,
        Command::WalPush(args) => wal_push::run(&ctx, args).await,
        Command::WalFetch(args) => wal_fetch::run(&ctx, args).await,
        Command::WalPrefetch(args) => wal_fetch::prefetch(&ctx, args).await,
        Command::WalPushAhead(args) => wal_push::push_ahead(&ctx, args).await,
    }
}
