//! Configuration: one TOML file (`--config` or `PGDR_CONFIG`), every field overridable
//! by a `PGDR_<SECTION>_<KEY>` environment variable. Unknown keys and bad values are
//! rejected with the file, the key and what was expected. Parsing happens once, here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::disk::private_dir;
use crate::usage;

mod env;
mod repository;

pub use repository::{RepoUrl, parse_repo_url};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this cluster's area in the repository.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    #[serde(default)]
    pub postgres: PostgresConfig,
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub wal: WalConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub switch: SwitchConfig,
    /// Where the configuration came from, for messages.
    #[serde(skip)]
    pub source: String,
    #[serde(skip)]
    file: Option<PathBuf>,
    /// The copy chosen with `--repository NAME`; `repository` then holds its settings.
    #[serde(skip)]
    selected: Option<String>,
}

fn default_cluster() -> String {
    "main".to_string()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq URL or key=value string; libpq's PG* variables and .pgpass also work.
    pub url: Option<String>,
    /// Where PostgreSQL's tools live; default: PATH, then `pg_config --bindir`.
    pub bin_dir: Option<PathBuf>,
    /// The data directory, for physical backups on the database host.
    pub data_dir: Option<PathBuf>,
    /// A standby of this primary that physical backups read their files from
    /// (`backup --from-standby`), keeping the backup's reads off the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_url: Option<String>,
    /// That standby's data directory, on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_data_dir: Option<PathBuf>,
    /// How far the standby may be behind the primary, in MiB of WAL, for a backup
    /// from it (default 64): further behind, the backup refuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_max_lag_mb: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `file:///path` or `s3://bucket/prefix`.
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub force_path_style: bool,
    /// File holding the repository key (64 hex characters); or `PGDR_KEY`.
    pub key_file: Option<PathBuf>,
    /// zstd level, 1..=19.
    #[serde(default = "default_level")]
    pub compress_level: i32,
    /// zstd worker threads; 0 means one per core.
    #[serde(default)]
    pub compress_threads: u32,
    /// Multipart part size in bytes (at least 5 MiB).
    pub s3_part_size: Option<u64>,
    /// Attempts per S3 request, including the first.
    #[serde(default = "default_attempts")]
    pub s3_max_attempts: u32,
    /// Seconds an S3 request may wait for the server's answer before it is given up
    /// (and retried, up to `s3_max_attempts`).
    #[serde(default = "default_s3_timeout")]
    pub s3_timeout_seconds: u64,
    /// The AWS profile whose credentials and settings to use (default: `AWS_PROFILE`,
    /// then `default`).
    pub profile: Option<String>,
    /// The certificate authority (PEM) an S3 endpoint behind a private CA is checked
    /// against, instead of the system's roots (MinIO, Ceph, an on-premises store).
    pub ca_file: Option<PathBuf>,
    /// Copies of this repository in other regions (`[[repository.copies]]`), kept
    /// up to date by `pgdr copy`.
    #[serde(default)]
    pub copies: Vec<CopyConfig>,
}

/// A copy of the repository, usually in another region: everything a restore needs
/// is copied there, so it can be restored from alone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CopyConfig {
    /// How commands name it: `--repository NAME`, `copy --to NAME`.
    pub name: String,
    /// `file:///path` or `s3://bucket/prefix`.
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub force_path_style: bool,
    pub profile: Option<String>,
    /// Its own certificate authority (see `repository.ca_file`); a copy elsewhere is
    /// not trusted through the primary's.
    pub ca_file: Option<PathBuf>,
    /// Its own key file; by default the primary's key (objects are copied as they are).
    pub key_file: Option<PathBuf>,
    /// `async` (default): WAL reaches the copy through `pgdr copy`; `sync`: `wal-push`
    /// also stores each segment in the copy before acknowledging it.
    #[serde(default)]
    pub wal: CopyWal,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyWal {
    #[default]
    Async,
    Sync,
}

fn default_level() -> i32 {
    3
}

fn default_attempts() -> u32 {
    4
}

fn default_s3_timeout() -> u64 {
    120
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub full_days: Option<u32>,
    pub full_count: Option<u32>,
    pub logical_days: Option<u32>,
    pub logical_count: Option<u32>,
    pub wal_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// Segments `wal-push` has in flight during a burst: the one asked for plus those
    /// already marked `.ready` after it. Their compression runs on as many at once as
    /// there are cores; the rest overlap storage round trips.
    #[serde(default = "default_push_parallel")]
    pub push_parallel: u32,
    /// Segments `wal-fetch` fetches ahead, in the background, during recovery.
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// Where `wal-push` remembers what it already stored ahead of PostgreSQL's asking.
    pub spool_dir: Option<PathBuf>,
    /// How long a physical backup waits for its last WAL segment to be archived.
    #[serde(default = "default_archive_timeout")]
    pub archive_timeout: u64,
    /// How long `wal-fetch` retries an archive that does not answer (timeouts, 5xx,
    /// 403, a full disk) before it stops recovery (exit 126) — or, on a standby,
    /// gives up until PostgreSQL asks again.
    #[serde(default = "default_fetch_retry_seconds")]
    pub fetch_retry_seconds: u64,
    /// How long `wal-push` waits for each `wal = "sync"` copy before acknowledging a
    /// file on the primary repository's strength alone.
    #[serde(default = "default_copy_timeout_seconds")]
    pub copy_timeout_seconds: u64,
    /// Copies `wal-fetch` reads from while the primary repository does not answer.
    #[serde(default)]
    pub fetch_fallback: Vec<String>,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            push_parallel: default_push_parallel(),
            prefetch: default_prefetch(),
            spool_dir: None,
            archive_timeout: default_archive_timeout(),
            fetch_retry_seconds: default_fetch_retry_seconds(),
            copy_timeout_seconds: default_copy_timeout_seconds(),
            fetch_fallback: Vec::new(),
        }
    }
}

fn default_push_parallel() -> u32 {
    4
}

fn default_prefetch() -> u32 {
    8
}

fn default_fetch_retry_seconds() -> u64 {
    60
}

fn default_copy_timeout_seconds() -> u64 {
    10
}

fn default_archive_timeout() -> u64 {
    120
}

/// The weekly restore test's own checks, on top of amcheck and row counts.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    #[serde(default)]
    pub check: Vec<SqlCheck>,
}

/// `[[verify.check]] sql = "...", expect = "..."`: the first column of the first row,
/// as text, must equal `expect`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlCheck {
    #[serde(default)]
    pub name: Option<String>,
    /// Database to run in (default: postgres).
    #[serde(default)]
    pub database: Option<String>,
    pub sql: String,
    pub expect: toml::Value,
}

impl SqlCheck {
    /// `expect` as the text PostgreSQL would print (`true` → `t`).
    pub fn expected_text(&self) -> String {
        match &self.expect {
            toml::Value::String(s) => s.clone(),
            toml::Value::Boolean(b) => if *b { "t" } else { "f" }.to_string(),
            other => other.to_string(),
        }
    }
}

/// Where failures are announced. The webhook URL usually carries a secret: it is
/// never logged or printed, only its host.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// JSON POST with a Slack-compatible `text` field.
    #[serde(skip_serializing)]
    pub webhook_url: Option<String>,
    /// A command run with the message in PGDR_NOTIFY_MESSAGE (and on stdin).
    pub command: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Address of /metrics and /health (default 127.0.0.1:9187).
    pub listen: Option<String>,
    /// Job history, JSON lines (default: in the temp directory, per cluster).
    pub history: Option<PathBuf>,
}

/// How application connections are moved to another server (`pgdr switch`, the last
/// step of `failover`): PgBouncer, a command hook, or both.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// PgBouncer's admin console, e.g. `postgresql://pgbouncer@127.0.0.1:6432/pgbouncer`
    /// (a password from `PGPASSWORD` or `.pgpass`, never here).
    pub pgbouncer_admin_url: Option<String>,
    /// The `pgbouncer.ini` pgdr rewrites (host and port of `pgbouncer_databases`).
    pub pgbouncer_ini: Option<PathBuf>,
    #[serde(default)]
    pub pgbouncer_databases: Vec<String>,
    /// How long `PAUSE` may wait for running transactions (or, in session pooling,
    /// clients) before the switch is abandoned and PgBouncer resumed.
    #[serde(default = "default_pause_timeout")]
    pub pause_timeout_seconds: u64,
    /// A command (run with `sh -c`) for DNS, a load balancer, a virtual IP: it gets
    /// `PGDR_SWITCH_NEW_HOST`, `PGDR_SWITCH_NEW_PORT`, `PGDR_SWITCH_OLD_HOST`,
    /// `PGDR_SWITCH_OLD_PORT` and must exit 0.
    pub hook: Option<String>,
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_seconds: u64,
    /// `failover`: how to fence an old primary that is neither local (`--old-data-dir`)
    /// nor reachable (a STONITH, a cloud API call); gets `PGDR_FENCE_HOST/PORT`.
    pub fence_command: Option<String>,
    /// `failover`: how long the standby may take, after the fence, to replay what the
    /// old primary wrote (streamed, or from the archive) before it is promoted.
    #[serde(default = "default_catch_up")]
    pub catch_up_seconds: u64,
}

fn default_catch_up() -> u64 {
    120
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            pgbouncer_admin_url: None,
            pgbouncer_ini: None,
            pgbouncer_databases: Vec::new(),
            pause_timeout_seconds: default_pause_timeout(),
            hook: None,
            hook_timeout_seconds: default_hook_timeout(),
            fence_command: None,
            catch_up_seconds: default_catch_up(),
        }
    }
}

fn default_pause_timeout() -> u64 {
    30
}

fn default_hook_timeout() -> u64 {
    60
}

/// The name of the primary repository in `--repository`.
pub const PRIMARY: &str = "primary";

impl Config {
    /// Load from `path` (or `PGDR_CONFIG`), then apply `PGDR_*` overrides. With no file
    /// at all, the environment alone must supply `PGDR_REPOSITORY_URL`.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path = path.map(Path::to_path_buf).or_else(|| {
            std::env::var_os("PGDR_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        if path.is_none() && std::env::var_os("PGDR_REPOSITORY_URL").is_none() {
            return Err(usage!(
                "no configuration: pass --config FILE, set PGDR_CONFIG, or set PGDR_REPOSITORY_URL"
            ));
        }
        Config::read(path.as_deref(), Overrides::Environment)
    }

    /// A configuration file alone, with no `PGDR_*` override applied: what a child
    /// given only `--config FILE` sees (a restored server's `wal-fetch`), and a
    /// drill's (nothing in the environment may point it at production).
    pub fn load_file(path: &Path) -> Result<Config> {
        Config::read(Some(path), Overrides::None)
    }

    /// This run's configuration file alone (see `load_file`), with the same
    /// repository selected; `None` when the configuration came from the environment.
    pub fn file_alone(&self) -> Result<Option<Config>> {
        let Some(path) = &self.file else { return Ok(None) };
        let mut config = Config::load_file(path)?;
        if let Some(name) = &self.selected {
            config.select_repository(name)?;
        }
        Ok(Some(config))
    }

    /// The one way in: the file's table (or an empty one), the environment's
    /// overrides when asked for, then the schema and its validation.
    fn read(path: Option<&Path>, overrides: Overrides) -> Result<Config> {
        let (mut table, source) = match path {
            Some(path) => (read_table(path)?, path.display().to_string()),
            None => (toml::Table::new(), "the environment".to_string()),
        };
        let mut config = match overrides {
            Overrides::None => Config::from_table(table, &source)?,
            Overrides::Environment => {
                let file_table = table.clone();
                env::apply_overrides(&mut table, std::env::vars())?;
                Config::from_table(table, &source)
                    .map_err(|e| env::misspelt(&file_table, std::env::vars()).unwrap_or(e))?
            }
        };
        config.file = path.map(|p| std::path::absolute(p).unwrap_or(p.to_path_buf()));
        Ok(config)
    }

    /// A configuration with every default, stored in `repository`: the start of a
    /// derived configuration (a drill's), which is then written with `to_toml`.
    pub fn new(repository: RepositoryConfig) -> Config {
        Config {
            cluster: default_cluster(),
            postgres: PostgresConfig::default(),
            repository,
            retention: RetentionConfig::default(),
            wal: WalConfig::default(),
            verify: VerifyConfig::default(),
            notify: NotifyConfig::default(),
            schedule: ScheduleConfig::default(),
            switch: SwitchConfig::default(),
            source: String::new(),
            file: None,
            selected: None,
        }
    }

    /// The configuration as a TOML file would hold it. Secrets have no place in a
    /// written file: the notification webhook is left out.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("writing the configuration as TOML")
    }

    /// The settings that decide which archive `wal-fetch` reads, where `other` (the
    /// file alone) differs from this configuration, as config keys.
    pub fn archive_differences(&self, other: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.repository, &other.repository);
        let mut out = Vec::new();
        if self.cluster != other.cluster {
            out.push("cluster");
        }
        if a.url != b.url {
            out.push("repository.url");
        }
        if a.endpoint != b.endpoint {
            out.push("repository.endpoint");
        }
        if a.region != b.region {
            out.push("repository.region");
        }
        if a.force_path_style != b.force_path_style {
            out.push("repository.force_path_style");
        }
        if a.key_file != b.key_file {
            out.push("repository.key_file");
        }
        if a.profile != b.profile {
            out.push("repository.profile");
        }
        if a.ca_file != b.ca_file {
            out.push("repository.ca_file");
        }
        out
    }

    /// The schema and its validation over a parsed table: the last step of `read`,
    /// public for the fuzz target (fuzz/fuzz_targets/config.rs).
    pub fn from_table(table: toml::Table, source: &str) -> Result<Config> {
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let inner = one_line(&e.into_inner().to_string());
            if path == "." || path.is_empty() {
                usage!("{source}: {inner}")
            } else {
                usage!("{source}: key `{path}`: {inner}")
            }
        })?;
        config.source = source.to_string();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let src = &self.source;
        if self.cluster.is_empty()
            || !self
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            || self.cluster.starts_with('.')
        {
            return Err(usage!(
                "{src}: key `cluster`: {:?} must be letters, digits, '-', '_' or '.'",
                self.cluster
            ));
        }
        self.repository
            .parsed_url()
            .with_context(|| format!("{src}: key `repository.url`"))?;
        if !(1..=19).contains(&self.repository.compress_level) {
            return Err(usage!(
                "{src}: key `repository.compress_level`: {} is out of range, expected 1 to 19",
                self.repository.compress_level
            ));
        }
        if self.repository.s3_max_attempts == 0 {
            return Err(usage!("{src}: key `repository.s3_max_attempts`: expected at least 1"));
        }
        if self.repository.s3_timeout_seconds == 0 {
            return Err(usage!(
                "{src}: key `repository.s3_timeout_seconds`: expected at least 1"
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, copy) in self.repository.copies.iter().enumerate() {
            let at = format!("{src}: key `repository.copies[{i}]`");
            let name_ok = !copy.name.is_empty()
                && copy.name.len() <= 64
                && copy
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok || copy.name == PRIMARY {
                return Err(usage!(
                    "{at}.name: {:?} must be letters, digits, '-' or '_' (and not {PRIMARY:?})",
                    copy.name
                ));
            }
            if !names.insert(copy.name.as_str()) {
                return Err(usage!("{at}.name: {:?} names two copies", copy.name));
            }
            parse_repo_url(&copy.url).with_context(|| format!("{at}.url"))?;
            if copy.url == self.repository.url && copy.endpoint == self.repository.endpoint {
                return Err(usage!(
                    "{at}.url: {:?} is the primary repository itself — a copy must be somewhere else",
                    copy.url
                ));
            }
        }
        for name in &self.wal.fetch_fallback {
            if !names.contains(name.as_str()) {
                return Err(usage!(
                    "{src}: key `wal.fetch_fallback`: {name:?} is not the name of a [[repository.copies]] entry"
                ));
            }
        }
        Ok(())
    }

    /// Use copy `name` (or the primary, `primary`) as the repository of this run:
    /// `--repository NAME` / `PGDR_REPOSITORY`. Every command then reads (and writes)
    /// there alone.
    pub fn select_repository(&mut self, name: &str) -> Result<()> {
        if name == PRIMARY || name.is_empty() {
            return Ok(());
        }
        self.repository = self.repository.copy(name)?;
        self.selected = Some(name.to_string());
        Ok(())
    }

    /// The copy this run uses, if not the primary.
    pub fn selected_repository(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    /// Where `wal-push` keeps its notes and its pusher's lock. By default inside the
    /// cluster's own pg_wal (`.pgdr-spool`): private to the postgres user (the data
    /// directory is 0700) and to this cluster and system identifier. Never a shared,
    /// predictable /tmp path, where another user could pre-create the pusher's lock.
    pub fn spool_dir(&self, wal_dir: &Path) -> Result<PathBuf> {
        match &self.wal.spool_dir {
            Some(dir) => {
                private_dir(dir).with_context(|| "[wal] spool_dir".to_string())?;
                Ok(dir.clone())
            }
            None => {
                let dir = wal_dir.join(".pgdr-spool");
                private_dir(&dir)?;
                Ok(dir)
            }
        }
    }

    /// Where the scheduler's job history goes: `[schedule] history`, or a private
    /// (0700) per-user directory under the temp directory.
    pub fn history_file(&self) -> Result<PathBuf> {
        if let Some(path) = &self.schedule.history {
            return Ok(path.clone());
        }
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let dir = std::env::temp_dir().join(format!("pgdr-{uid}"));
        private_dir(&dir)?;
        Ok(dir.join(format!("{}-history.jsonl", self.cluster)))
    }

    /// The absolute path of the configuration file, when there is one.
    pub fn file(&self) -> Option<PathBuf> {
        self.file.clone()
    }
}

/// Whether `PGDR_*` environment variables override the file.
enum Overrides {
    None,
    Environment,
}

/// The configuration file as a TOML table; errors name the file (exit 2).
fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage!("cannot read the configuration file {}: {e}", path.display()))?;
    text.parse()
        .map_err(|e: toml::de::Error| usage!("{}: {}", path.display(), one_line(&e.to_string())))
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::from_table(text.parse().unwrap(), "test.toml")
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[repository]\nurl = \"file:///tmp/r\"\n").unwrap();
        assert_eq!(c.cluster, "main");
        assert_eq!(c.repository.compress_level, 3);
        assert_eq!(c.repository.parsed_url().unwrap(), RepoUrl::Local("/tmp/r".into()));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse("[repository]\nurl = \"file:///tmp/r\"\nkeyfile = \"x\"\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("test.toml") && msg.contains("keyfile"), "{msg}");
    }

    #[test]
    fn bad_value_names_key() {
        let err = parse("[repository]\nurl = \"file:///tmp/r\"\ncompress_level = \"high\"\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("repository.compress_level"), "{msg}");
        let err = parse("[repository]\nurl = \"ftp://x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("repository.url"));
    }

    #[test]
    fn env_overrides_fields() {
        let mut t: toml::Table = "[repository]\nurl = \"file:///tmp/r\"\n".parse().unwrap();
        let vars = vec![
            ("PGDR_REPOSITORY_URL".to_string(), "s3://b/p".to_string()),
            ("PGDR_REPOSITORY_FORCE_PATH_STYLE".to_string(), "true".to_string()),
            ("PGDR_CLUSTER".to_string(), "prod".to_string()),
            ("PGDR_KEY".to_string(), "secret".to_string()),
        ];
        env::apply_overrides(&mut t, vars.into_iter()).unwrap();
        let c = Config::from_table(t, "x").unwrap();
        assert_eq!(c.cluster, "prod");
        assert!(c.repository.force_path_style);
        assert_eq!(
            c.repository.parsed_url().unwrap(),
            RepoUrl::S3 {
                bucket: "b".into(),
                prefix: "p".into()
            }
        );
    }

    #[test]
    fn unknown_env_override_is_rejected() {
        let mut t: toml::Table = "[repository]\nurl = \"file:///tmp/r\"\n".parse().unwrap();
        env::apply_overrides(
            &mut t,
            vec![("PGDR_REPOSITORY_BOGUS".to_string(), "1".to_string())].into_iter(),
        )
        .unwrap();
        assert!(Config::from_table(t, "x").is_err());
    }
}
