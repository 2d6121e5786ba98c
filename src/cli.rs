//! The command line: the only file that knows clap. It parses, sets up logging and the
//! runtime, runs one command and maps its outcome to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands;
use crate::exit::{self, Exit};
use crate::repo::BackupKind;

#[derive(Debug, Parser)]
#[command(
    name = "pgdr",
    version,
    about = "PostgreSQL backup and disaster recovery",
    max_term_width = 100
)]
pub struct Cli {
    /// Configuration file (default: $PGDR_CONFIG)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of the human summary
    #[arg(long, global = true)]
    pub json: bool,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this cluster's repository (repo.json); optionally generate a key file
    Init(InitArgs),
    /// Pre-flight checks: PostgreSQL, tools, repository, key, disk, orphans
    Check(CheckArgs),
    /// Take a backup
    Backup(BackupArgs),
    /// List backups, newest first
    List(ListArgs),
    /// Restore a backup
    Restore(RestoreArgs),
    /// Stream any stored object's plaintext to stdout
    Cat(CatArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Write a new random repository key to FILE (mode 0600) and use it
    #[arg(long, value_name = "FILE")]
    pub generate_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Delete orphaned backups (no manifest, untouched for an hour)
    #[arg(long)]
    pub clean_orphans: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Kind of backup
    #[arg(long, value_enum, default_value_t = BackupKind::Logical)]
    pub kind: BackupKind,
    /// Database to back up (repeatable; default: all databases)
    #[arg(long = "database", short = 'd', value_name = "NAME", conflicts_with = "all")]
    pub databases: Vec<String>,
    /// Back up every database (the default when no --database is given)
    #[arg(long)]
    pub all: bool,
    /// Tag the backup (repeatable), e.g. deploy-20261230_0900
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Which backup: a label, `latest`, or `tag:NAME`
    #[arg(long, default_value = "latest", value_name = "LABEL|latest|tag:TAG")]
    pub backup: String,
    /// Kind of backup to restore
    #[arg(long, value_enum, default_value_t = BackupKind::Logical)]
    pub kind: BackupKind,
    /// Which database of the backup (default: its only one)
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Restore into this database (created if missing; default: the original name)
    #[arg(long, value_name = "NEW")]
    pub to_database: Option<String>,
    /// Restore only these tables (repeatable), as schema.name
    #[arg(long = "table", value_name = "SCHEMA.NAME")]
    pub tables: Vec<String>,
    /// Parallel pg_restore jobs (stages the dump in a temporary file)
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Drop and recreate objects in a non-empty target database
    #[arg(long)]
    pub clean: bool,
    /// Also restore roles and tablespaces (pg_dumpall --globals-only) first
    #[arg(long)]
    pub globals: bool,
    /// Restore only roles and tablespaces
    #[arg(long, conflicts_with_all = ["database", "to_database", "tables", "clean"])]
    pub globals_only: bool,
    /// Do not restore object ownership (for targets without the original roles)
    #[arg(long)]
    pub no_owner: bool,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// Object key inside the cluster's area, e.g. backups/LABEL/databases/app.dump
    /// (a leading LABEL/ is taken as backups/LABEL/)
    pub key: String,
}

fn init_logging(format: LogFormat) {
    let level = std::env::var("PGDR_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage as u8
            } else {
                Exit::Success as u8
            });
        }
    };
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgdr: error: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Failure as u8);
        }
    };
    let outcome = runtime.block_on(commands::run(cli));
    // Do not wait for stray background work (e.g. a download nobody reads any more).
    runtime.shutdown_background();
    match outcome {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => {
            eprintln!("pgdr: error: {err:#}");
            ExitCode::from(exit::classify(&err) as u8)
        }
    }
}
