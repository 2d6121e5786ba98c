//! The command line: the only file that knows clap. It parses, sets up logging and the
//! runtime, runs one command and maps its outcome to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands;
use crate::exit::{self, Exit};
use crate::postgres::recovery::TargetAction;
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
    /// Use this repository: `primary`, or the name of a [[repository.copies]] entry
    /// (read from a copy alone, e.g. when the primary region is down)
    #[arg(long, global = true, value_name = "NAME", env = "PGDR_REPOSITORY")]
    pub repository: Option<String>,
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
    Restore(Box<RestoreArgs>),
    /// Stream any stored object's plaintext to stdout
    Cat(CatArgs),
    /// Apply retention: remove old backups and WAL (report what stays and why)
    Expire(ExpireArgs),
    /// Restore test: restore into a scratch cluster and check its integrity
    Verify(VerifyArgs),
    /// Copy backups and WAL to the repository's copies (other regions)
    Copy(CopyArgs),
    /// Move application connections to another server (PgBouncer and/or a hook)
    Switch(SwitchArgs),
    /// Streaming standbys built from backups
    Standby(StandbyArgs),
    /// Fence the old primary, promote a standby, switch connections, report the RPO
    Failover(FailoverArgs),
    /// Execute a disaster scenario's runbook for real: plan, confirmation, steps, report
    Recover(RecoverArgs),
    /// Rehearse a disaster scenario on scratch resources; measure RTO and RPO
    Drill(DrillArgs),
    /// Find the transaction that dropped, truncated, deleted from or updated a table,
    /// in the archived WAL, and the restore target just before it
    WalSearch(WalSearchArgs),
    /// The repository key: rotate it, re-wrap stored objects, list the keys in use
    Key(KeyArgs),
    /// Run, check or export the job schedule
    Schedule(ScheduleArgs),
    /// Print Prometheus metrics once (for a textfile collector)
    Metrics(MetricsArgs),
    /// How far back and forward a restore can go, WAL gaps, archive and copy health,
    /// the last drills: as text, --json, or one self-contained HTML page (--html FILE)
    Report(ReportArgs),
    /// archive_command: store one WAL file (archive_command = 'pgdr wal-push %p')
    WalPush(WalPushArgs),
    /// restore_command: fetch one WAL file (restore_command = 'pgdr wal-fetch %f %p')
    WalFetch(WalFetchArgs),
    /// Background prefetcher started by wal-fetch
    #[command(hide = true)]
    WalPrefetch(WalPrefetchArgs),
    /// Background pusher started by wal-push
    #[command(hide = true)]
    WalPushAhead(WalPushAheadArgs),
}

/// A runbook's inputs, as flags (`--set NAME=VALUE` for any other).
#[derive(Debug, Args, Default)]
pub struct ScenarioInputs {
    /// The failure point: recovery stops there (e.g. 2026-12-01T10:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// Data directory for the new primary
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Port of the new primary
    #[arg(long)]
    pub port: Option<u16>,
    /// listen_addresses of the new servers (as PgBouncer reaches them)
    #[arg(long, value_name = "ADDRESSES")]
    pub listen: Option<String>,
    /// Data directory for the new primary's standby
    #[arg(long, value_name = "DIR")]
    pub standby_data_dir: Option<PathBuf>,
    /// Port of the standby
    #[arg(long)]
    pub standby_port: Option<u16>,
    /// Tables to bring back (data-loss), comma-separated schema.name
    #[arg(long, alias = "table", value_name = "TABLES")]
    pub tables: Option<String>,
    /// The database those tables are in
    #[arg(long)]
    pub database: Option<String>,
    /// Where the scratch cluster goes (data-loss)
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Bring tables back whole under other names (data-loss): schema.table=schema.new,…
    #[arg(long, value_name = "MAP")]
    pub restore_as: Option<String>,
    /// The old primary's data directory on this host: fenced (stopped) before the switch
    #[arg(long, value_name = "DIR")]
    pub old_data_dir: Option<PathBuf>,
    /// Your word that the old primary is down and cannot take writes, when pgdr cannot
    /// stop it here (--old-data-dir); the report records it
    #[arg(long)]
    pub old_primary_is_down: bool,
    /// Any other input of the runbook
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}

/// Data loss without a known moment: wal-search finds the transaction that lost
/// the tables' data, and recovery stops just before it.
#[derive(Debug, Args, Default)]
pub struct FindLoss {
    /// Find the transaction that dropped the table(s)
    #[arg(long, help_heading = "Finding the moment (instead of --target-time)")]
    pub dropped: bool,
    /// Find the transaction that truncated them
    #[arg(long, help_heading = "Finding the moment (instead of --target-time)")]
    pub truncated: bool,
    /// Find the transaction that deleted rows from them
    #[arg(long, help_heading = "Finding the moment (instead of --target-time)")]
    pub deleted: bool,
    /// Find the transaction that updated rows of them
    #[arg(long, help_heading = "Finding the moment (instead of --target-time)")]
    pub updated: bool,
    /// Deletes and updates of fewer rows do not count
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        help_heading = "Finding the moment (instead of --target-time)"
    )]
    pub min_rows: u64,
    /// Search from this time (default: the WAL retention window)
    #[arg(
        long,
        value_name = "TIME",
        help_heading = "Finding the moment (instead of --target-time)"
    )]
    pub since: Option<String>,
    /// When several transactions match: the one to stop before
    #[arg(
        long,
        value_name = "XID",
        help_heading = "Finding the moment (instead of --target-time)"
    )]
    pub before_xid: Option<u32>,
}

impl FindLoss {
    pub fn asked(&self) -> bool {
        self.dropped || self.truncated || self.deleted || self.updated
    }
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// database-corruption, data-loss, database-failure, region-failure, or a runbook file
    #[arg(long, value_name = "NAME|FILE")]
    pub scenario: String,
    #[command(flatten)]
    pub inputs: ScenarioInputs,
    #[command(flatten)]
    pub find: FindLoss,
    /// Parallel restore workers
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Progress file of this recovery; a run interrupted resumes from it
    /// (default /var/lib/pgdr/recover/CLUSTER-SCENARIO.json)
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Resume an unfinished recovery whose state file was last written over 6 h ago
    #[arg(long)]
    pub resume: bool,
    /// Show the plan, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// database-corruption, data-loss, database-failure, region-failure, or a runbook file
    #[arg(long, value_name = "NAME|FILE")]
    pub scenario: String,
    /// pgbench scale of the scratch production
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// Where the scratch directory goes (default: the temp directory)
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The copy a region drill recovers from (default: the first configured)
    #[arg(long, value_name = "NAME")]
    pub copy: Option<String>,
    /// archive_timeout of the scratch production, seconds (bounds the RPO of a lost server)
    #[arg(long, default_value_t = 10)]
    pub archive_timeout: u64,
    /// Parallel restore workers
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
}

#[derive(Debug, Args)]
pub struct WalPushAheadArgs {
    /// PostgreSQL's pg_wal directory
    #[arg(long)]
    pub wal_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Replace the repository key: new objects use a new key (written to key_file), the
    /// old one moves to `<key_file>.retired/` and still decrypts what it encrypted
    Rotate(KeyRotateArgs),
    /// Move every stored object onto the current key (rewrites headers, not data)
    Rewrap,
    /// The keys this repository has used, and which of them this host holds
    List,
}

#[derive(Debug, Args)]
pub struct KeyRotateArgs {
    /// Then re-wrap every stored object's data key under the new key (`key rewrap`)
    #[arg(long)]
    pub rewrap: bool,
}

#[derive(Debug, Args)]
pub struct StandbyArgs {
    #[command(subcommand)]
    pub command: StandbyCommand,
}

#[derive(Debug, Subcommand)]
pub enum StandbyCommand {
    /// Build a streaming standby from the latest backup plus WAL, start it, wait until it streams
    Create(StandbyCreateArgs),
}

#[derive(Debug, Args)]
pub struct StandbyCreateArgs {
    /// The data directory to create
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The primary to stream from
    #[arg(long, value_name = "HOST:PORT")]
    pub primary: String,
    /// Port of the standby
    #[arg(long)]
    pub port: u16,
    /// listen_addresses of the standby (default 127.0.0.1)
    #[arg(long, value_name = "ADDRS")]
    pub listen: Option<String>,
    /// Unix socket directory of the standby
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,
    /// A physical replication slot on the primary (created if missing)
    #[arg(long, value_name = "NAME")]
    pub slot: Option<String>,
    /// Which backup: a label, `latest`, or `tag:NAME`
    #[arg(long, default_value = "latest", value_name = "LABEL|latest|tag:TAG")]
    pub backup: String,
    /// Parallel restore workers
    #[arg(long)]
    pub jobs: Option<usize>,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The standby to promote (as applications and PgBouncer reach it)
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// The old primary, fenced if reachable
    #[arg(long, value_name = "HOST:PORT")]
    pub old: Option<String>,
    /// The old primary's data directory, when it is on this host: fenced by a fast stop
    #[arg(long, value_name = "DIR")]
    pub old_data_dir: Option<PathBuf>,
    /// The standby's data directory, when it is on this host too: if it falls short,
    /// it is given the old primary's last WAL from --old-data-dir's pg_wal
    #[arg(long, value_name = "DIR", requires = "old_data_dir")]
    pub standby_data_dir: Option<PathBuf>,
    /// Your word that the old primary is down and cannot take writes (powered off,
    /// isolated): the fence when pgdr cannot prove it; the report records it
    #[arg(long)]
    pub old_primary_is_down: bool,
    /// Promote even if the standby cannot replay everything the old primary wrote;
    /// the report gives the bytes lost
    #[arg(long)]
    pub accept_data_loss: bool,
    /// Show the plan and its checks, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// The server applications go to
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// The server they leave (default: where PgBouncer points now)
    #[arg(long, value_name = "HOST:PORT")]
    pub old: Option<String>,
    /// Show the plan, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The copy to bring up to date (a [[repository.copies]] name); default: all
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,
    /// Which backups: `all`, a label, `latest`, or `tag:NAME` (WAL is always copied whole)
    #[arg(long, default_value = "all", value_name = "all|LABEL|latest|tag:TAG")]
    pub backup: String,
    /// Show what would be copied, copy nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Objects in flight at once
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// Show what would be removed, remove nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Mark a backup keep (never expired), then stop (repeatable)
    #[arg(long, value_name = "LABEL")]
    pub keep: Vec<String>,
    /// Clear a backup's keep mark, then stop (repeatable)
    #[arg(long, value_name = "LABEL")]
    pub unkeep: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Which backup: a label, `latest`, or `tag:NAME`
    #[arg(long, default_value = "latest", value_name = "LABEL|latest|tag:TAG")]
    pub backup: String,
    /// Kind of backup to verify (default: the label's own kind; physical for
    /// `latest` and tags)
    #[arg(long, value_enum)]
    pub kind: Option<BackupKind>,
    /// Parallel workers for the restore
    #[arg(long)]
    pub jobs: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    pub command: ScheduleCommand,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Run the schedule as a daemon
    Run(ScheduleRunArgs),
    /// Validate a schedule file and print the next runs of every job
    Check(ScheduleFileArgs),
    /// Print equivalent crontab lines
    Crontab(ScheduleFileArgs),
}

#[derive(Debug, Args)]
pub struct ScheduleFileArgs {
    /// Schedule file
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ScheduleRunArgs {
    /// Schedule file
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Address for /metrics and /health (default from [schedule] listen, 127.0.0.1:9187)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Job history file, JSON lines (default from [schedule] history)
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// How long a running job may finish after SIGTERM before it is stopped
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Job history file to include job metrics from
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// Path of the WAL file (%p)
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// Name of the wanted file (%f)
    pub name: String,
    /// Where to put it (%p)
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct WalPrefetchArgs {
    #[arg(long)]
    pub after: String,
    #[arg(long)]
    pub segment_size: u64,
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Write a new random repository key to FILE (mode 0600) and use it
    #[arg(long, value_name = "FILE")]
    pub generate_key: Option<PathBuf>,
    /// S3 Object Lock: turn on versioning and keep every object version DAYS days, so
    /// that nobody — not a stolen credential either — can destroy backups meanwhile
    /// (the bucket must have been created with Object Lock, or be empty)
    #[arg(long, value_name = "DAYS")]
    pub object_lock: Option<u32>,
    /// compliance: nobody can shorten the lock; governance: users allowed to bypass
    /// governance retention can
    #[arg(long, value_enum, default_value_t = LockModeArg::Compliance, requires = "object_lock")]
    pub object_lock_mode: LockModeArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockModeArg {
    Compliance,
    Governance,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Delete orphaned backups (no manifest), unless a backup is running
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
    /// Parallel workers for a physical backup (default: one per core)
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Spread the starting checkpoint instead of forcing it (less I/O, slower start)
    #[arg(long)]
    pub spread_checkpoint: bool,
    /// Mark the backup keep: expire never removes it
    #[arg(long)]
    pub keep: bool,
    /// Physical: read the data directory here (local), or stream it with
    /// pg_basebackup when it is on another host (basebackup)
    #[arg(long, value_enum, default_value_t = crate::repo::manifest::PhysicalMethod::Local)]
    pub method: crate::repo::manifest::PhysicalMethod,
    /// Physical: full (every file), incr (the blocks changed since the last physical
    /// backup, found in the archived WAL) or diff (since the last full)
    #[arg(long = "type", value_enum, default_value_t = crate::backup::BackupType::Full)]
    pub backup_type: crate::backup::BackupType,
    /// Physical: read the data files on the standby of [postgres] standby_url (its
    /// data directory standby_data_dir), not on the primary; refused if it lags more
    /// than standby_max_lag_mb or follows another timeline
    #[arg(long)]
    pub from_standby: bool,
    /// How long to wait for another backup of this cluster to finish
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub lock_wait: u64,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The history of restore tests, drills (with RTO/RPO), recoveries and switches
    #[arg(long)]
    pub verifications: bool,
    /// At most this many reports (--verifications)
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Named restore points (pg_create_restore_point) in the archived WAL, with time
    /// and LSN, for restore --target-name
    #[arg(long, conflicts_with = "verifications")]
    pub restore_points: bool,
    /// Timeline to follow (--restore-points; default: as a restore would)
    #[arg(long, value_name = "TLI", requires = "restore_points")]
    pub timeline: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the report as one self-contained HTML page to FILE (`-` for stdout)
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct WalSearchArgs {
    /// The table, as schema.name (repeatable; a bare name matches any schema)
    #[arg(long = "table", value_name = "SCHEMA.NAME", required = true)]
    pub tables: Vec<String>,
    /// Only the table in this database
    #[arg(long)]
    pub database: Option<String>,
    /// Transactions that dropped the table
    #[arg(long)]
    pub dropped: bool,
    /// Transactions that truncated it
    #[arg(long)]
    pub truncated: bool,
    /// Transactions that deleted rows from it
    #[arg(long)]
    pub deleted: bool,
    /// Transactions that updated rows of it
    #[arg(long)]
    pub updated: bool,
    /// Any of those, and rewrites (VACUUM FULL, CLUSTER) too (the default)
    #[arg(long)]
    pub any: bool,
    /// Deletes and updates of fewer rows are not reported
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_rows: u64,
    /// From this time (default: the WAL retention window, [retention] wal_days)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Until this time (default: the newest archived WAL)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Timeline to follow (default: as a restore would)
    #[arg(long, value_name = "TLI")]
    pub timeline: Option<u32>,
    /// Where WAL segments are unpacked while read (a private directory inside; default: TMPDIR)
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Which backup: a label, `latest`, or `tag:NAME`
    #[arg(long, default_value = "latest", value_name = "LABEL|latest|tag:TAG")]
    pub backup: String,
    /// Kind of backup to restore (default: the label's own kind; logical for
    /// `latest` and tags, physical with --to)
    #[arg(long, value_enum)]
    pub kind: Option<BackupKind>,
    /// Which database of the backup (default: its only one)
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Restore into this database (created if missing; default: the original name)
    #[arg(long, value_name = "NEW")]
    pub to_database: Option<String>,
    /// Restore only these tables (repeatable), as schema.name
    #[arg(long = "table", value_name = "SCHEMA.NAME")]
    pub tables: Vec<String>,
    /// Parallel workers (logical: pg_restore jobs, staging the dump in a temporary
    /// file; physical: default one per core)
    #[arg(long)]
    pub jobs: Option<u32>,
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

    /// Physical: the data directory to restore into (created, or empty unless --delta)
    #[arg(long, value_name = "DIR", help_heading = "Physical restore")]
    pub to: Option<PathBuf>,
    /// Recover to this time (RFC 3339 or PostgreSQL syntax, with a time zone)
    #[arg(long, value_name = "TIME", help_heading = "Physical restore", group = "target_kind")]
    pub target_time: Option<String>,
    /// Recover to this LSN
    #[arg(long, value_name = "LSN", help_heading = "Physical restore", group = "target_kind")]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id
    #[arg(long, value_name = "XID", help_heading = "Physical restore", group = "target_kind")]
    pub target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point)
    #[arg(long, value_name = "NAME", help_heading = "Physical restore", group = "target_kind")]
    pub target_name: Option<String>,
    /// Recover to the end of the backup (immediate) or of the archive (latest)
    #[arg(long, value_enum, help_heading = "Physical restore", group = "target_kind")]
    pub target: Option<TargetKeyword>,
    /// What the server does at the target
    #[arg(long, value_enum, default_value_t = TargetAction::Promote, help_heading = "Physical restore")]
    pub target_action: TargetAction,
    /// Stop just before the target instead of just after it
    #[arg(long, help_heading = "Physical restore")]
    pub target_exclusive: bool,
    /// Timeline to follow: latest (default), current, or a number
    #[arg(long, value_name = "TLI", help_heading = "Physical restore")]
    pub target_timeline: Option<String>,
    /// Restore as a standby (standby.signal) that keeps following the archive
    #[arg(long, help_heading = "Physical restore")]
    pub standby: bool,
    /// Standby: connection string of the primary to stream from
    #[arg(long, value_name = "CONNINFO", help_heading = "Physical restore")]
    pub primary_conninfo: Option<String>,
    /// Rewrite only the files whose checksum differs, in a non-empty directory
    #[arg(long, help_heading = "Physical restore")]
    pub delta: bool,
    /// Put a tablespace in DIR instead of its original place (repeatable); physical:
    /// OID=DIR, logical (--globals, --globals-only): NAME=DIR
    #[arg(long = "tablespace-map", value_name = "OID|NAME=DIR")]
    pub tablespace_map: Vec<String>,
    /// Logical: leave tablespaces out (none created; objects go to the default one)
    #[arg(long, conflicts_with = "tablespace_map")]
    pub no_tablespaces: bool,
    /// Keep WAL archiving on: the restored server becomes the new primary and archives
    /// its new timeline into the repository (default: archive_mode = off in the copy)
    #[arg(long, help_heading = "Physical restore")]
    pub archive: bool,
    /// Archiving off in the restored copy: the default, accepted for older scripts
    #[arg(long, hide = true, conflicts_with = "archive")]
    pub no_archive: bool,
    /// Start the server and wait for recovery to finish
    #[arg(long, help_heading = "Physical restore")]
    pub start: bool,
    /// Port for --start
    #[arg(long, help_heading = "Physical restore")]
    pub port: Option<u16>,
    /// Unix socket directory for --start
    #[arg(long, value_name = "DIR", help_heading = "Physical restore")]
    pub socket_dir: Option<PathBuf>,
    /// listen_addresses for --start (default 127.0.0.1; '' for the Unix socket only)
    #[arg(long, value_name = "ADDRS", help_heading = "Physical restore")]
    pub listen: Option<String>,
    /// For verify's scratch copies: with --listen '' and a private --socket-dir, start
    /// with an hba_file of its own that trusts the socket (the source's pg_hba.conf
    /// may allow pgdr only by peer or password, or live outside the data directory)
    #[arg(long, hide = true, requires = "socket_dir")]
    pub scratch_hba: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKeyword {
    Immediate,
    Latest,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// Object key inside the cluster's area, e.g. backups/LABEL/databases/app.dump
    /// (a leading LABEL/ is taken as backups/LABEL/)
    pub key: String,
}

/// Logs go to stderr: warnings by default, everything from `info` up for the daemon
/// (whose log is its record); PGDR_LOG overrides.
fn init_logging(format: LogFormat, daemon: bool) {
    let default = if daemon {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    let level = std::env::var("PGDR_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(default);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The last resort: a panic is a bug, but the DBA still gets one line and exit 1,
/// never a backtrace (these machines set RUST_BACKTRACE=1).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = panic_message(info.payload());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("pgdr: error: internal error ({what}{place}) — nothing more was done; please report this");
        std::process::exit(failure_code() as i32);
    }));
}

/// The exit code of a failure that no command decided. For `wal-fetch` that is PostgreSQL's
/// contract: 1 means "the archive does not have it" and ends recovery as complete, so any
/// other failure (a bad configuration, bad arguments, a panic, no runtime) must be 126 and
/// stop recovery; except on a standby (`standby.signal` in the data directory, the parent
/// of the destination's pg_wal, where PostgreSQL runs the command), which asks again
/// after 1.
fn failure_code() -> u8 {
    wal_fetch_failure_code().unwrap_or(Exit::Failure as u8)
}

fn wal_fetch_failure_code() -> Option<u8> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // The subcommand: the first argument that is neither an option nor the value of
    // a global option that takes one.
    let mut rest = args.iter();
    let mut command = None;
    while let Some(a) = rest.next() {
        let a = a.to_string_lossy();
        if a == "--config" || a == "--log-format" {
            rest.next();
        } else if !a.starts_with('-') {
            command = Some(a.into_owned());
            break;
        }
    }
    if command.as_deref() != Some("wal-fetch") {
        return None;
    }
    let dest = args.last().map(std::path::PathBuf::from).unwrap_or_default();
    Some(if crate::archive::fetch::on_standby(&dest) {
        Exit::Failure as u8
    } else {
        Exit::AbortRecovery as u8
    })
}

pub fn main() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if !e.use_stderr() {
                Exit::Success as u8
            } else {
                wal_fetch_failure_code().unwrap_or(Exit::Usage as u8)
            });
        }
    };
    let daemon = matches!(&cli.command, Command::Schedule(s) if matches!(s.command, ScheduleCommand::Run(_)));
    init_logging(cli.log_format, daemon);
    crate::process::raise_open_file_limit();
    crate::process::bound_heap_growth();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let e = anyhow::Error::new(e).context("cannot start the runtime");
            eprintln!(
                "pgdr: error: {e:#}{}",
                crate::os_error::hint(&e).map(|h| format!(" — {h}")).unwrap_or_default()
            );
            return ExitCode::from(failure_code());
        }
    };
    let outcome = runtime.block_on(commands::run(cli));
    // Give abandoned work (an interrupted upload's writer thread) a moment to remove
    // its temporary file, but never hang on exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(3));
    match outcome {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => {
            let hint = crate::os_error::hint(&err)
                .map(|h| format!(" — {h}"))
                .unwrap_or_default();
            eprintln!("pgdr: error: {err:#}{hint}");
            ExitCode::from(wal_fetch_failure_code().unwrap_or(exit::classify(&err) as u8))
        }
    }
}

// The library's enums as command-line values: clap stays in this file.
impl ValueEnum for BackupKind {
    fn value_variants<'a>() -> &'a [Self] {
        &[BackupKind::Logical, BackupKind::Physical]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            BackupKind::Logical => "logical",
            BackupKind::Physical => "physical",
        }))
    }
}

impl ValueEnum for TargetAction {
    fn value_variants<'a>() -> &'a [Self] {
        &[TargetAction::Promote, TargetAction::Pause, TargetAction::Shutdown]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

impl ValueEnum for crate::repo::manifest::PhysicalMethod {
    fn value_variants<'a>() -> &'a [Self] {
        use crate::repo::manifest::PhysicalMethod;
        &[PhysicalMethod::Local, PhysicalMethod::Basebackup]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use crate::repo::manifest::PhysicalMethod;
        Some(match self {
            PhysicalMethod::Local => clap::builder::PossibleValue::new("local")
                .help("pgdr reads the data directory itself (on the database host)"),
            PhysicalMethod::Basebackup => clap::builder::PossibleValue::new("basebackup")
                .help("pg_basebackup streams it over a replication connection (from anywhere)"),
        })
    }
}

/// A panic's message, whatever its payload type.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}
