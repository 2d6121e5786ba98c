//! Physical restore, as a library: [`plan`] refuses everything that can be refused
//! before a byte is written (which backup precedes the target, whether the WAL chain
//! to it is there, whether the directory is free), then [`execute`] lays the files down
//! in parallel (each checked), writes the recovery settings and, when asked, starts the
//! server and watches its recovery to the end. `recover` and `drill` show the plan
//! before they execute it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow};

use crate::config::Config;
use crate::physical;
use crate::postgres::recovery::{RecoveryTarget, TargetAction};
use crate::postgres::{Segment, TimelineId};
use crate::repo::archive::{TimelineChoice, Until};
use crate::repo::manifest::{PhysicalInfo, PhysicalMethod};
use crate::repo::{Manifest, Repo};
use crate::restore::target::Target;
use crate::usage;

mod execute;

pub use execute::execute;

/// Which timeline recovery follows (`--target-timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetTimeline {
    /// Production's timeline, never a fork (see `repo::archive::choose_timeline`).
    #[default]
    Latest,
    /// The backup's own timeline.
    Current,
    Id(TimelineId),
}

impl FromStr for TargetTimeline {
    type Err = anyhow::Error;

    fn from_str(raw: &str) -> Result<TargetTimeline> {
        match raw {
            "latest" => Ok(TargetTimeline::Latest),
            "current" => Ok(TargetTimeline::Current),
            n => n
                .parse()
                .map(TargetTimeline::Id)
                .map_err(|_| usage!("--target-timeline {n:?}: expected latest, current or a number")),
        }
    }
}

impl TargetTimeline {
    fn resolve(self, info: &PhysicalInfo) -> Option<TimelineId> {
        match self {
            TargetTimeline::Latest => None,
            TargetTimeline::Current => Some(info.timeline),
            TargetTimeline::Id(t) => Some(t),
        }
    }
}

/// Where and how a restored server listens when it is started (`--start`).
#[derive(Debug, Clone)]
pub struct Listen {
    pub port: u16,
    /// listen_addresses; empty for the Unix socket only.
    pub addresses: String,
    pub socket_dir: Option<PathBuf>,
    /// A scratch copy's own hba_file, trusting only its private socket.
    pub scratch_hba: bool,
}

/// A physical restore, validated.
#[derive(Debug, Clone)]
pub struct PhysicalRestoreOptions {
    /// `LABEL`, `latest` or `tag:TAG`: `latest` means the newest backup that precedes
    /// the target.
    pub backup: String,
    /// The data directory to create (absolute).
    pub to: PathBuf,
    pub target: Target,
    pub action: TargetAction,
    pub exclusive: bool,
    pub timeline: TargetTimeline,
    pub standby: bool,
    pub primary_conninfo: Option<String>,
    /// A standby's replication slot on its primary.
    pub primary_slot_name: Option<String>,
    /// Rewrite only what differs in a non-empty directory.
    pub delta: bool,
    /// Tablespace OID → where it goes instead of its original place.
    pub tablespace_map: BTreeMap<String, PathBuf>,
    /// Keep archiving on: the restored server is the new primary.
    pub archive: bool,
    /// With `archive`: its promotion declares its timeline production's. Off for a
    /// recovery runbook, which declares it at its switch.
    pub declare: bool,
    /// Parallel restore workers.
    pub jobs: usize,
    /// Start the server and wait for its recovery to end.
    pub start: Option<Listen>,
}

/// `--tablespace-map OID=DIR`, each.
pub fn parse_tablespace_map(raw: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    let mut map = BTreeMap::new();
    for m in raw {
        let (oid, path) = m
            .split_once('=')
            .ok_or_else(|| usage!("--tablespace-map {m:?}: expected OID=DIR"))?;
        map.insert(oid.to_string(), PathBuf::from(path));
    }
    Ok(map)
}

/// What [`execute`] will do, decided and checked: the backup, the WAL it needs and the
/// timeline it follows. Its `Display` is what a DBA reads before saying yes.
pub struct RestorePlan {
    repo: Repo,
    pub manifest: Manifest,
    /// The older backups an incremental refers to, the full one first (empty for a
    /// full backup).
    pub chain: Vec<Manifest>,
    /// The directory holds an interrupted restore: rewrite what differs.
    pub resume: bool,
    /// What the interrupted restore's marker says (its id; a failed flush), when the
    /// directory has one (resumed, or rewritten with --delta).
    pub unfinished: Option<physical::Unfinished>,
    /// The last archived segment of the checked chain.
    pub chain_end: Segment,
    pub timeline: TimelineChoice,
    /// `recovery_target_timeline` as written: a number, or `latest` for a standby
    /// with no fork in the archive.
    pub recovery_timeline: String,
    /// Bytes of data files to lay down.
    pub bytes: u64,
    restore_command: String,
}

impl RestorePlan {
    fn info(&self) -> &PhysicalInfo {
        self.manifest.physical.as_ref().expect("checked by plan")
    }

    /// The first WAL segment recovery reads (the backup's start).
    pub fn wal_from(&self) -> String {
        let info = self.info();
        Segment::containing(info.timeline, info.start_lsn, info.segment_size).name(info.segment_size)
    }

    pub fn wal_until(&self) -> String {
        self.chain_end.name(self.info().segment_size)
    }

    /// One line for a plan a DBA confirms: the backup, what is laid down, the WAL.
    pub fn headline(&self) -> String {
        let chain = if self.chain.is_empty() {
            String::new()
        } else {
            let labels: Vec<&str> = self.chain.iter().map(|m| m.label.as_str()).collect();
            format!("incremental, with blocks from {}; ", labels.join(", "))
        };
        format!(
            "backup {} ({chain}{} to lay down), WAL {} … {} from the archive ({} segments)",
            self.manifest.label,
            crate::progress::human_bytes(self.bytes),
            self.wal_from(),
            self.wal_until(),
            self.wal_segments()
        )
    }

    /// WAL segments from the backup's start to the end of the checked chain, counted
    /// by position (timeline switches on the way do not add any).
    fn wal_segments(&self) -> u64 {
        let size = self.info().segment_size.max(1);
        let from = self.info().start_lsn.0 / size;
        let until = self.chain_end.start_lsn(size).0 / size;
        until.saturating_sub(from) + 1
    }
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timelines in the archive: {}; following {}",
            self.timeline
                .seen
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.timeline.why
        )?;
        for fork in &self.timeline.forks {
            write!(f, "\nnot following {fork}")?;
        }
        Ok(())
    }
}

/// The restore_command for the restored server: this binary and this configuration
/// file, nothing else. Environment overrides are not carried over: a password in
/// `PGDR_POSTGRES_URL` or a webhook URL would land in postgresql.auto.conf and in the
/// argv of every `wal-fetch`, readable on disk and in `ps`.
pub fn restore_command(config: &Config) -> Result<String> {
    let file = config.file().ok_or_else(|| {
        usage!("a physical restore writes restore_command = 'pgdr --config FILE wal-fetch …' — run it with --config FILE (or PGDR_CONFIG)")
    })?;
    // The server's wal-fetch reads the file only: an override that points this restore
    // at another archive (PGDR_CLUSTER, PGDR_REPOSITORY_URL) would have the server
    // replay from one archive and fetch WAL from another.
    if let Some(file_only) = config.file_alone()? {
        let differ = config.archive_differences(&file_only);
        if !differ.is_empty() {
            return Err(usage!(
                "PGDR_* environment overrides change {} from {}, but the restored server's `wal-fetch` reads only that file — put the values in a configuration file and restore with --config FILE",
                differ.join(", "),
                file.display()
            ));
        }
    }
    if config.repository.key_file.is_none() {
        return Err(usage!(
            "the restored server fetches WAL with `pgdr wal-fetch`, which needs [repository] key_file (PGDR_KEY cannot be passed on) — set key_file, readable by the postgres user"
        ));
    }
    let exe = std::env::current_exe().context("locating the pgdr binary")?;
    let sh = crate::process::sh_quote;
    let file = std::path::absolute(&file).unwrap_or(file);
    // Restored from a copy, the server fetches from that copy: the primary region
    // may be gone.
    let repository = config
        .selected_repository()
        .map(|name| format!(" --repository {}", sh(name)))
        .unwrap_or_default();
    Ok(format!(
        "{} --config {}{repository} wal-fetch \"%f\" \"%p\"",
        sh(&exe.to_string_lossy()),
        sh(&file.to_string_lossy())
    ))
}

/// The archive_command of a new primary restored from a copy: `wal-push` into the
/// repository this restore reads (same rules as [`restore_command`]).
pub fn archive_command(config: &Config) -> Result<String> {
    let fetch = restore_command(config)?;
    let base = fetch
        .strip_suffix(" wal-fetch \"%f\" \"%p\"")
        .ok_or_else(|| anyhow!("unexpected restore_command {fetch:?}"))?;
    Ok(format!("{base} wal-push \"%p\""))
}

/// The pid of a live postmaster whose pid file is in `dir`, if any.
fn running_postmaster(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    crate::process::exists(pid).then_some(pid)
}

/// `dir` is a PostgreSQL data directory of the cluster `system_identifier`:
/// PG_VERSION, and pg_control naming that system. Otherwise why not, in words that
/// name the directory and what is in it.
fn recognise_data_dir(dir: &Path, system_identifier: &str) -> std::result::Result<(), String> {
    let some_entries = || {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let more = names.len() > 3;
        names.truncate(3);
        format!("{}{}", names.join(", "), if more { ", …" } else { "" })
    };
    if !dir.join("PG_VERSION").is_file() {
        return Err(format!(
            "{} is not a PostgreSQL data directory (no PG_VERSION; it holds {})",
            dir.display(),
            some_entries()
        ));
    }
    match crate::postgres::datadir::control_system_identifier(dir) {
        Ok(found) if found == system_identifier => Ok(()),
        Ok(found) => Err(format!(
            "{} is the data directory of another cluster (system identifier {found}; this repository's is {system_identifier})",
            dir.display()
        )),
        Err(e) => Err(format!(
            "{} has no readable global/pg_control ({e}), so it cannot be told to be this cluster's",
            dir.display()
        )),
    }
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(usage!("cannot read {}: {e}", path.display())),
    }
}

/// The manifests of the backups `manifest` refers to, the full one first; a missing
/// one is a broken chain, named before anything is written.
pub fn chain_of(manifest: &Manifest, manifests: &[Manifest]) -> Result<Vec<Manifest>> {
    let Some(info) = &manifest.physical else {
        return Ok(Vec::new());
    };
    info.chain()
        .iter()
        .map(|label| {
            let found = manifests.iter().find(|m| m.label.as_str() == label);
            match found {
                Some(m) if m.system_identifier == manifest.system_identifier && m.physical.is_some() => Ok(m.clone()),
                Some(_) => Err(anyhow!(
                    "{} refers to backup {label}, which is not a physical backup of the same cluster — the repository is damaged",
                    manifest.label
                )),
                None => Err(usage!(
                    "{} is an incremental backup and needs {label}, which is missing or unreadable — its chain is broken: restore an older backup (pgdr list shows each one's chain) or run pgdr check",
                    manifest.label
                )),
            }
        })
        .collect()
}

/// Every bundle the restore reads is in the repository at its recorded size: a
/// missing one (an incremental's parent damaged, say) is named before anything is
/// written. Its contents are checked as it is read.
async fn bundles_present(repo: &Repo, manifest: &Manifest, chain: &[Manifest]) -> Result<()> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let info = manifest.physical.as_ref().expect("physical");
    let mut wanted: Vec<(&Manifest, &str)> = Vec::new();
    for f in &info.files {
        let owner = match &f.backup {
            None => manifest,
            Some(label) => chain
                .iter()
                .find(|m| m.label.as_str() == label)
                .ok_or_else(|| anyhow!("{} refers to backup {label}, which is not in its chain", manifest.label))?,
        };
        if !wanted.iter().any(|(m, b)| m.label == owner.label && *b == f.bundle) {
            wanted.push((owner, f.bundle.as_str()));
        }
    }
    stream::iter(wanted)
        .map(|(owner, name)| async move {
            let object = owner
                .object(name)
                .ok_or_else(|| anyhow!("the manifest of {} lists no bundle {name}", owner.label))?;
            let key = crate::repo::layout::backup_object(&owner.label, name)?;
            match repo.storage.head(&key).await? {
                Some(meta) if meta.size == object.stored.size => Ok(()),
                Some(meta) => Err(anyhow!(
                    "bundle {name} of backup {} is {} bytes in the repository, and its manifest says {} — it is damaged; nothing was written{}",
                    owner.label,
                    meta.size,
                    object.stored.size,
                    chain_hint(manifest, owner)
                )),
                None => Err(anyhow!(
                    "bundle {name} of backup {} is missing from the repository; nothing was written{}",
                    owner.label,
                    chain_hint(manifest, owner)
                )),
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn chain_hint(manifest: &Manifest, owner: &Manifest) -> String {
    if owner.label == manifest.label {
        String::new()
    } else {
        format!(
            " ({} is an incremental and takes blocks from it: its chain is broken — restore an older backup)",
            manifest.label
        )
    }
}

/// Decide and check everything; write nothing.
pub async fn plan(config: &Config, opts: &PhysicalRestoreOptions) -> Result<RestorePlan> {
    let restore_command = restore_command(config)?;
    let dir = opts.to.as_path();
    let repo = Repo::open(config).await?;
    let manifests = repo.manifests().await?;
    let manifest = match crate::restore::choose::backup_for(
        &manifests,
        opts.backup.as_str().ne("latest").then_some(opts.backup.as_str()),
        opts.target.time,
        opts.target.lsn,
        opts.target.xid,
    ) {
        Ok(m) => m.clone(),
        Err(e) => return Err(repo.explain_missing(opts.backup.as_str(), e).await),
    };
    repo.check_manifest_identity(&manifest)?;
    let info = manifest
        .physical
        .as_ref()
        .ok_or_else(|| anyhow!("{} has no physical section", manifest.label))?;
    let chain = chain_of(&manifest, &manifests)?;
    if info.method == PhysicalMethod::Local {
        bundles_present(&repo, &manifest, &chain).await?;
    }
    if opts.delta && info.method == PhysicalMethod::Basebackup {
        return Err(usage!(
            "--delta is not available for {}, which was taken with --method basebackup — restore into an empty directory",
            manifest.label
        ));
    }
    physical::validate_paths(info)?;
    if let Some(pid) = running_postmaster(dir) {
        return Err(usage!(
            "{} is the data directory of a running server (postmaster pid {pid}) — stop it first (pg_ctl -D {} stop), or restore somewhere else",
            dir.display(),
            crate::process::sh_quote(&dir.to_string_lossy())
        ));
    }
    // A directory an interrupted restore left (its marker says so) is rewritten
    // where it differs, as with --delta: running the same command again finishes it.
    let unfinished = physical::unfinished_restore(dir);
    let resume = !opts.delta && unfinished.is_some();
    if resume && info.method == PhysicalMethod::Basebackup {
        return Err(usage!(
            "{} holds an interrupted restore of another backup's files, and {} was taken with --method basebackup, which cannot be resumed — remove the directory's contents and run the restore again",
            dir.display(),
            manifest.label
        ));
    }
    if !is_empty_dir(dir)? && !resume {
        // --delta deletes what the backup does not have: only ever in a data
        // directory of this very cluster.
        let ours = recognise_data_dir(dir, &repo.info.system_identifier);
        match (opts.delta, ours) {
            (true, Ok(())) => {}
            (true, Err(why)) => {
                return Err(usage!(
                    "--delta rewrites a data directory of this cluster, removing what the backup does not have, and {why} — nothing was changed: restore into a new or empty directory"
                ));
            }
            (false, Ok(())) => {
                return Err(usage!(
                    "{} is not empty (a data directory of this cluster) — restore into a new directory, or pass --delta to rewrite only what differs",
                    dir.display()
                ));
            }
            (false, Err(why)) => {
                return Err(usage!("{why} — restore into a new or empty directory"));
            }
        }
    }
    let mut places = HashSet::new();
    for ts in &info.tablespaces {
        let mapped = opts.tablespace_map.contains_key(&ts.oid);
        let location = opts.tablespace_map.get(&ts.oid).unwrap_or(&ts.location);
        if !places.insert(location) {
            return Err(usage!(
                "two tablespaces would be restored into {}: give each its own place with --tablespace-map OID=DIR",
                location.display()
            ));
        }
        // --delta skips the emptiness check only where the DBA named the place: an
        // unmapped tablespace goes back to its original location, which on the
        // primary's host is the live tablespace. An interrupted restore into this
        // data directory left its marker there, with its id: that place is its own
        // (with --delta too).
        let ours = unfinished
            .as_ref()
            .and_then(|u| u.id.as_deref())
            .is_some_and(|id| physical::tablespace_marked_for(location, id));
        if (!(opts.delta || resume) || !mapped) && !ours && !is_empty_dir(location)? {
            return Err(usage!(
                "tablespace {} would be restored into {}, which is not empty — remap it with --tablespace-map {}=DIR",
                ts.oid,
                location.display(),
                ts.oid
            ));
        }
    }
    let timeline = opts.timeline.resolve(info);
    // How much WAL must be there. For xid and restore-point targets only the backup's
    // own WAL can be checked; PostgreSQL reports a target it could not reach.
    let until = match (&opts.target.recovery, opts.target.time, opts.target.lsn) {
        (_, Some(t), _) => Until::Time(t),
        (_, _, Some(l)) => Until::Lsn(l),
        (RecoveryTarget::Latest, _, _) => Until::Newest,
        _ => Until::Lsn(info.stop_lsn),
    };
    let (chain_end, choice) = physical::check_wal_chain(&repo, info, timeline, until).await?;
    // Written as a number, so PostgreSQL's own `latest` (the highest-numbered
    // timeline) cannot pick a fork. A standby keeps `latest` to follow future
    // promotions, unless a fork is in the archive.
    let recovery_timeline = if opts.standby && choice.forks.is_empty() && timeline.is_none() {
        "latest".to_string()
    } else {
        choice.followed.to_string()
    };
    let bytes = info
        .files
        .iter()
        .map(|f| f.writes().iter().map(|[a, b]| b - a).sum::<u64>())
        .sum();
    Ok(RestorePlan {
        repo,
        manifest,
        chain,
        resume,
        unfinished,
        chain_end,
        timeline: choice,
        recovery_timeline,
        bytes,
        restore_command,
    })
}
