//! Copies of the repository in other regions (`pgdr copy`): everything a restore
//! needs — repo.json, every WAL and history file, timeline declarations, every backup —
//! is copied where it is missing, so the copy alone can restore to any point the
//! primary can. Objects are copied as they are (the same key reads both); each is
//! checked on the way (against its manifest's stored SHA-256, or by opening it when no
//! manifest records it) and read back after it is written. WAL goes first, then the
//! backups in label order, each manifest last: a backup is listed in the copy only
//! once all of it is there. What a killed copy already stored is not sent again.

mod plan;
mod transfer;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::pipeline::Keyring;
use crate::progress::{Progress, human_bytes};
use crate::repo::manifest::Manifest;
use crate::repo::{BackupLabel, Repo, info, layout, load_keyring_for};
use crate::storage::{self, DynStorage, ObjectKey, ObjectMeta};
use crate::usage;

pub use transfer::Expect;

/// What to copy where.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// One copy by name; `None`: every configured copy.
    pub to: Option<String>,
    /// `None`: every backup; else `LABEL`, `latest` or `tag:TAG`.
    pub backup: Option<String>,
    pub dry_run: bool,
    /// Objects in flight at once.
    pub jobs: usize,
}

/// How far a copy is behind the primary repository's WAL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lag {
    /// WAL and history files in the primary that the copy does not have.
    pub segments: u64,
    /// Age of the newest WAL in the primary against the newest in the copy.
    pub seconds: Option<f64>,
}

/// What one copy got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyTargetReport {
    pub name: String,
    pub repository: String,
    pub dry_run: bool,
    /// Backups completed in the copy by this run (their manifest written).
    pub backups_copied: Vec<BackupLabel>,
    /// Backups that were complete in the copy already.
    pub backups_present: usize,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    /// Objects already in the copy (a resumed run does not send them again).
    pub objects_present: u64,
    pub wal_copied: u64,
    /// After this run (for a dry run: now).
    pub lag: Lag,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CopyReport {
    pub copies: Vec<CopyTargetReport>,
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = Vec::new();
        for c in &self.copies {
            let verb = if c.dry_run { "would copy" } else { "copied" };
            lines.push(format!(
                "{}: {verb} {} object(s) ({}), {} WAL file(s), {} backup(s){}; {} object(s) already there; {:.1} s",
                c.name,
                c.objects_copied,
                human_bytes(c.bytes_copied),
                c.wal_copied,
                c.backups_copied.len(),
                if c.backups_copied.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        c.backups_copied
                            .iter()
                            .map(|l| l.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                c.objects_present,
                c.seconds
            ));
            lines.push(format!(
                "{}: {} — {} backup(s) complete; behind the primary by {} WAL file(s){}",
                c.name,
                c.repository,
                c.backups_present + if c.dry_run { 0 } else { c.backups_copied.len() },
                c.lag.segments,
                c.lag.seconds.map(|s| format!(", {s:.0} s")).unwrap_or_default()
            ));
        }
        f.write_str(&lines.join("\n"))
    }
}

/// Copy to every selected copy, one after the other.
pub async fn run(config: &Config, opts: &CopyOptions) -> Result<CopyReport> {
    if config.selected_repository().is_some() {
        return Err(usage!(
            "`pgdr copy` copies from the primary repository to its copies — run it without --repository (use --to NAME to pick a copy)"
        ));
    }
    let names: Vec<String> = match &opts.to {
        Some(name) => {
            config.repository.copy(name)?;
            vec![name.clone()]
        }
        None => config.repository.copies.iter().map(|c| c.name.clone()).collect(),
    };
    if names.is_empty() {
        return Err(usage!(
            "no repository copies are configured — add a [[repository.copies]] entry (name, url, …) to {}",
            config.source
        ));
    }
    let source = Repo::open(config).await?;
    // expire leaves every backup being copied (and their WAL) while the copy runs.
    let labels: Vec<_> = crate::repo::catalog::scan(&source.storage).await?.complete;
    let lease = crate::repo::lock::UseLease::acquire(&source, &labels, "copy").await?;
    let result = copy_leased(config, opts, names, &source).await;
    lease.release().await;
    result
}

async fn copy_leased(config: &Config, opts: &CopyOptions, names: Vec<String>, source: &Repo) -> Result<CopyReport> {
    let source = source.clone();
    let mut report = CopyReport::default();
    for name in names {
        report.copies.push(
            copy_to(config, &source, &name, opts)
                .await
                .with_context(|| format!("copying to {name}"))?,
        );
    }
    Ok(report)
}

/// One object to copy, and what it must be.
pub struct Item {
    key: ObjectKey,
    size: u64,
    expect: Expect,
    /// Keep marks and timeline declarations: the primary rewrites them, so the copy
    /// follows (after the new one is authenticated). Everything else is never
    /// overwritten.
    mutable: bool,
}

/// The destination's objects under a prefix, by key.
async fn listed(storage: &DynStorage, prefix: &str) -> Result<HashMap<ObjectKey, ObjectMeta>> {
    Ok(storage
        .list(prefix)
        .await?
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect())
}

/// The primary's WAL and history files (keys pgdr writes; others are skipped).
async fn wal_listing(storage: &DynStorage) -> Result<Vec<ObjectMeta>> {
    let mut wal = storage.list(layout::WAL).await?;
    wal.retain(|m| {
        let ours = layout::parse_wal_key(&m.key).is_some();
        if !ours {
            tracing::warn!("not copying {}: not a key pgdr writes under wal/", m.key);
        }
        ours
    });
    // In archive order (fixed-width hex names): the copy stores them in this order.
    wal.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    Ok(wal)
}

/// The copy's own keyring when it has a key of its own (`key_file` with another
/// key): objects are then re-sealed for it. `None`: objects travel as they are.
fn copy_keyring(
    config: &Config,
    source: &Repo,
    copy_config: &crate::config::RepositoryConfig,
) -> Result<Option<Keyring>> {
    let mut keys = own_keyring(config, copy_config, source.keys.primary().id())?;
    if let Some(k) = &mut keys {
        k.bind(&source.info.cluster, &source.info.system_identifier);
    }
    Ok(keys)
}

/// A copy's keyring (unbound) when its key is not the primary's (`primary`): its
/// objects must be re-sealed for it. `None` when objects travel as they are.
pub fn own_keyring(
    config: &Config,
    copy_config: &crate::config::RepositoryConfig,
    primary: crate::pipeline::KeyId,
) -> Result<Option<Keyring>> {
    if copy_config.key_file == config.repository.key_file {
        return Ok(None);
    }
    let keys = load_keyring_for(copy_config)?;
    Ok((keys.primary().id() != primary).then_some(keys))
}

/// A copy that is the primary under another name (the same bucket through an endpoint
/// taken from the environment or a profile, a symlinked directory) would make every
/// object "present" and the lag 0 while no second region exists: a probe written into
/// the copy must not appear in the primary.
async fn refuse_same_place(source: &DynStorage, dest: &DynStorage, name: &str) -> Result<()> {
    let probe = layout::write_probe();
    dest.put(
        &probe,
        bytes::Bytes::from_static(b"pgdr copy probe"),
        storage::PutMode::CreateNew,
    )
    .await
    .with_context(|| format!("writing a probe into copy {name:?} at {}", dest.describe()))?;
    let seen = source.head(&probe).await;
    let _ = dest.delete(std::slice::from_ref(&probe)).await;
    if seen?.is_some() {
        return Err(usage!(
            "copy {name:?} ({}) is the primary repository itself ({}) — give it its own endpoint, bucket or path",
            dest.describe(),
            source.describe()
        ));
    }
    Ok(())
}

/// The copy's repo.json: written on the first copy; a copy of another cluster, or
/// initialised with another key, is refused. Returns whether the copy's store ignores
/// If-None-Match.
async fn prepare_repo_info(dest: &DynStorage, source: &Repo, key_id: &str, name: &str, dry_run: bool) -> Result<bool> {
    match info::read(dest).await? {
        Some(theirs)
            if theirs.system_identifier != source.info.system_identifier || theirs.cluster != source.info.cluster =>
        {
            Err(anyhow!(
                "{} holds cluster {:?} with system identifier {}, not this repository's {:?} ({}) — point copy {name:?} somewhere else",
                dest.describe(),
                theirs.cluster,
                theirs.system_identifier,
                source.info.cluster,
                source.info.system_identifier
            ))
        }
        // The primary's key was rotated and the copy shares it: the copy follows.
        Some(theirs)
            if theirs.key_id != key_id
                && key_id == source.info.key_id
                && source.info.retired_keys.iter().any(|r| r.key_id == theirs.key_id) =>
        {
            if !dry_run {
                info::replace(
                    dest,
                    &info::RepoInfo {
                        key_id: key_id.to_string(),
                        ignores_if_none_match: theirs.ignores_if_none_match,
                        ..source.info.clone()
                    },
                )
                .await
                .context("recording the rotated key in the copy's repo.json")?;
            }
            Ok(theirs.may_overwrite())
        }
        Some(theirs) if theirs.key_id != key_id => Err(anyhow!(
            "{} was initialised with another key (id {}, copy {name:?} uses {key_id}): objects copied there could not be opened — point the copy somewhere else, or empty it",
            dest.describe(),
            theirs.key_id,
        )),
        Some(theirs) => Ok(theirs.may_overwrite()),
        None if dry_run => Ok(false),
        None => {
            // The copy's own store: a copy may become the archive of a new primary.
            let ignores = !info::probe_conditional_put(dest)
                .await
                .context("writing a probe into the copy")?;
            let ours = info::RepoInfo {
                key_id: key_id.to_string(),
                ignores_if_none_match: Some(ignores),
                ..source.info.clone()
            };
            match info::create(dest, &ours).await {
                Ok(()) | Err(storage::StorageError::AlreadyExists(_)) => Ok(ignores),
                Err(e) => Err(e).context("writing repo.json into the copy"),
            }
        }
    }
}

/// One copy: open it, list both sides, plan what it lacks, send that (unless a dry
/// run), then measure how far behind the primary it is.
async fn copy_to(config: &Config, source: &Repo, name: &str, opts: &CopyOptions) -> Result<CopyTargetReport> {
    let started = Instant::now();
    let (dest, rekey) = open_copy(config, source, name, opts.dry_run).await?;
    let primary = plan::list_primary(source, opts.backup.as_deref()).await?;
    let have = plan::list_copy(&dest).await?;
    let plan = plan::plan(source, &primary, &have, rekey.is_some(), &dest, name).await?;
    let mut report = planned_report(name, &dest, opts.dry_run, &plan);
    if opts.dry_run {
        report.lag = lag(&primary.wal, &have);
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    send(source, &dest, rekey, plan, name, opts.jobs, &mut report).await?;
    // Against the primary as it is now: WAL kept arriving while this ran.
    let wal_now = wal_listing(&source.storage).await?;
    let after = listed(&dest, layout::WAL).await?;
    report.lag = lag(&wal_now, &after);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The copy's store, ready to be written: opened, proven not to be the primary (unless
/// a dry run), its repo.json in place. With it, the copy's own keyring when its
/// objects are re-sealed for it.
async fn open_copy(config: &Config, source: &Repo, name: &str, dry_run: bool) -> Result<(DynStorage, Option<Keyring>)> {
    let copy_config = config.repository.copy(name)?;
    let rekey = copy_keyring(config, source, &copy_config)?;
    let key_id = rekey
        .as_ref()
        .map_or_else(|| source.info.key_id.clone(), |k| k.primary().id().to_hex());
    let dest = storage::open(&copy_config, &config.cluster).await?;
    if !dry_run {
        refuse_same_place(&source.storage, &dest, name).await?;
    }
    let ignores = prepare_repo_info(&dest, source, &key_id, name, dry_run).await?;
    Ok((storage::no_overwrite::guard(dest, ignores), rekey))
}

/// The report of a copy that has not sent anything yet: what the plan would send.
fn planned_report(name: &str, dest: &DynStorage, dry_run: bool, plan: &plan::CopyPlan) -> CopyTargetReport {
    CopyTargetReport {
        name: name.to_string(),
        repository: dest.describe(),
        dry_run,
        backups_copied: plan
            .backups
            .iter()
            .filter(|b| b.manifest.is_some())
            .map(|b| b.label.clone())
            .collect(),
        backups_present: plan.backups_present,
        objects_copied: plan.objects(),
        bytes_copied: plan.bytes(),
        objects_present: plan.present,
        wal_copied: plan.wal_items.iter().filter(|i| !i.mutable).count() as u64,
        lag: Lag::default(),
        seconds: 0.0,
    }
}

/// Sends what the copy lacks, with a progress bar: WAL first, then each backup, its
/// manifest last. Objects an earlier run left that had to be sent again move from
/// `objects_present` to `objects_copied` in `report`.
async fn send(
    source: &Repo,
    dest: &DynStorage,
    rekey: Option<Keyring>,
    plan: plan::CopyPlan,
    name: &str,
    jobs: usize,
    report: &mut CopyTargetReport,
) -> Result<()> {
    let progress = Progress::start(Some(plan.bytes()));
    progress.set_message(format!("→ {name}"));
    let copier = transfer::Copier {
        from: source.storage.clone(),
        to: dest.clone(),
        keys: source.keys.clone(),
        progress: progress.counter(),
        stored: Arc::new(AtomicU64::new(0)),
        kill_after: kill_hook(),
        rekey: rekey.clone(),
        resealed: Default::default(),
    };
    let result = async {
        // WAL in order, one at a time: a copy killed half-way then holds an unbroken
        // prefix of the archive, which a restore from the copy can replay to its end;
        // segments stored out of order would leave a hole that stops `latest`.
        copier.all(plan.wal_items, 1).await?;
        for backup in plan.backups {
            let resent = copier.recheck(backup.recheck, jobs).await?;
            report.objects_copied += resent;
            report.objects_present -= resent.min(report.objects_present);
            copier.all(backup.items, jobs).await?;
            commit(
                &copier,
                dest,
                rekey.as_ref(),
                source,
                backup.label,
                backup.manifest,
                backup.parsed,
            )
            .await?;
        }
        anyhow::Ok(())
    }
    .await;
    progress.finish();
    result
}

/// The commit point, last: the backup appears in the copy now. Nothing to write for a
/// backup the copy had complete already (`manifest` is `None`).
async fn commit(
    copier: &transfer::Copier,
    dest: &DynStorage,
    rekey: Option<&Keyring>,
    source: &Repo,
    label: BackupLabel,
    manifest: Option<Vec<u8>>,
    parsed: Option<Manifest>,
) -> Result<()> {
    let key = layout::manifest(&label);
    match (manifest, parsed, rekey) {
        (Some(_), Some(m), Some(keys)) => {
            commit_rekeyed(copier, dest, keys, source, m).await?;
        }
        (Some(data), _, _) => {
            copier
                .one(Item {
                    key,
                    size: data.len() as u64,
                    expect: Expect::Bytes(data, label),
                    mutable: false,
                })
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// A re-keyed copy's manifest: the primary's, with each object's new stored tally and
/// the copy's key id, sealed under the copy's key, written last and read back.
async fn commit_rekeyed(
    copier: &transfer::Copier,
    dest: &DynStorage,
    keys: &Keyring,
    source: &Repo,
    mut manifest: Manifest,
) -> Result<()> {
    let label = manifest.label.clone();
    {
        let resealed = copier.resealed.lock().expect("resealed lock");
        for record in &mut manifest.objects {
            let key = layout::backup_object(&label, &record.name)?;
            record.stored = resealed
                .get(&key)
                .cloned()
                .ok_or_else(|| anyhow!("{key} was not re-sealed for the copy; run `pgdr copy` again"))?;
        }
    }
    manifest.key_id = keys.primary().id().to_hex();
    let data = serde_json::to_vec(&manifest).expect("manifest serialises");
    let key = layout::manifest(&label);
    let store = crate::pipeline::Store {
        storage: dest,
        keys,
        compression: source.compression,
        digests: crate::pipeline::Digests::Both,
    };
    let record = store
        .bytes(&key, "manifest.json", data, storage::PutMode::CreateNew)
        .await
        .with_context(|| format!("committing {label} in the copy"))?;
    copier.confirm(&key, &record.stored).await
}

/// For tests of crash consistency: `PGDR_TEST_COPY_KILL_AFTER=N` kills this process
/// (SIGKILL, no clean-up) once N objects are stored.
fn kill_hook() -> Option<u64> {
    std::env::var("PGDR_TEST_COPY_KILL_AFTER").ok()?.parse().ok()
}

/// How far `have` is behind the primary's WAL listing `wal`: how many files it lacks,
/// and for how long it has lacked them (since the oldest missing one reached the
/// primary: a region failure now would lose the transactions since then). Unknown when
/// the store gives no times.
fn lag(wal: &[ObjectMeta], have: &HashMap<ObjectKey, ObjectMeta>) -> Lag {
    let missing: Vec<&ObjectMeta> = wal.iter().filter(|m| !have.contains_key(&m.key)).collect();
    if missing.is_empty() {
        return Lag {
            segments: 0,
            seconds: Some(0.0),
        };
    }
    let oldest_missing = missing
        .iter()
        .map(|m| m.modified)
        .collect::<Option<Vec<_>>>()
        .and_then(|t| t.into_iter().min());
    Lag {
        segments: missing.len() as u64,
        seconds: oldest_missing.map(|o| ((chrono::Utc::now() - o).num_milliseconds().max(0) as f64) / 1000.0),
    }
}

/// How long listing a copy may take for `check` and `metrics`.
const LAG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How far each configured copy is behind the primary repository's WAL, by listing
/// both (for `pgdr check` and `pgdr metrics`); a copy that cannot be listed is an
/// error of its own.
pub async fn lags(config: &Config, primary: &DynStorage) -> Vec<(String, Result<Lag>)> {
    let mut out = Vec::new();
    if config.repository.copies.is_empty() {
        return out;
    }
    let wal = match primary.list(layout::WAL).await {
        Ok(w) => w,
        Err(e) => {
            let why = format!("{e}");
            return config
                .repository
                .copies
                .iter()
                .map(|c| (c.name.clone(), Err(anyhow!("listing the primary repository: {why}"))))
                .collect();
        }
    };
    for copy in &config.repository.copies {
        let lag = async {
            let settings = config.repository.copy(&copy.name)?;
            let storage = storage::open(&settings, &config.cluster).await?;
            let have = listed(&storage, layout::WAL).await?;
            anyhow::Ok(lag(&wal, &have))
        };
        // A copy that hangs must not hang `check` or /metrics with it.
        let lag = tokio::time::timeout(LAG_TIMEOUT, lag)
            .await
            .unwrap_or_else(|_| Err(anyhow!("the copy did not answer within {} s", LAG_TIMEOUT.as_secs())));
        out.push((copy.name.clone(), lag));
    }
    out
}

/// How many objects a copy has in flight by default.
pub fn default_jobs() -> usize {
    4
}
