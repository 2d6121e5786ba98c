//! `key rewrap`: move every stored object onto the repository's current key.
//!
//! A format-3 object's chunks are not bound to the key that wraps its data key, so only
//! its 92-byte header is rewritten (the data key unwrapped with the retired key and
//! wrapped with the current one); its body is copied byte for byte — nothing is
//! decrypted or re-encrypted. Format-1/2 objects bind their chunks to the whole header:
//! those are re-encrypted under a fresh data key (their compressed contents untouched).
//!
//! A backup's manifest records each object's stored hash, which changes with the
//! header: a backup's objects are done first, its manifest last (with the new hashes).
//! A manifest under the current key therefore means its whole backup is done, and a
//! run killed half-way through a backup is finished by the next run, which re-reads the
//! objects already moved to learn their hashes.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::pipeline::seal::{HEADER_LEN, MAGIC, peek_key_id, rewrap_header};
use crate::pipeline::{self, Tally};
use crate::repo::{BackupLabel, Manifest, Repo, layout};
use crate::storage::{ObjectKey, PutMode, body_channel};

/// What `key rewrap` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RewrapReport {
    /// The key everything is now under.
    pub key_id: String,
    /// Objects whose header was rewritten (format 3).
    pub rewrapped: usize,
    /// Older-format objects re-encrypted under a new data key.
    pub reencrypted: usize,
    /// Objects already under the current key.
    pub current: usize,
    /// Plain objects (repo.json, leases) that carry no key.
    pub plain: usize,
    /// Backups whose manifest was rewritten with the new stored hashes.
    pub manifests: usize,
    /// Bytes read and written again.
    pub bytes: u64,
    /// Backups that vanished while being rewrapped (removed by `expire` meanwhile):
    /// their manifest was removed again, so no backup with holes is listed.
    pub vanished: Vec<String>,
    /// Objects that could not be moved, and why: they still need their old key.
    pub failed: Vec<Failed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    pub key: String,
    pub why: String,
}

impl fmt::Display for RewrapReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rewrap: {} object(s) re-wrapped (header only), {} re-encrypted (older format), {} already under key {}, {} manifest(s) updated, {} MiB rewritten",
            self.rewrapped,
            self.reencrypted,
            self.current,
            self.key_id,
            self.manifests,
            self.bytes / (1 << 20)
        )?;
        for label in &self.vanished {
            writeln!(
                f,
                "  backup {label} was removed while it was rewrapped; its manifest is gone too"
            )?;
        }
        for failed in &self.failed {
            writeln!(f, "  NOT moved: {} — {}", failed.key, failed.why)?;
        }
        if self.failed.is_empty() {
            write!(
                f,
                "every object is under the current key: the retired keys are no longer needed to read this repository (keep them until its copies are rewrapped too)"
            )
        } else {
            write!(
                f,
                "{} object(s) still need a retired key: keep it, fix what is named above, and run `pgdr key rewrap` again",
                self.failed.len()
            )
        }
    }
}

/// How one object was moved onto the current key.
enum Moved {
    Rewrapped(Tally),
    Reencrypted(Tally),
    /// Already under the current key; its stored tally when it was asked for.
    Current(Option<Tally>),
    Plain,
}

/// Move every object of the configured repository onto its current key.
pub async fn rewrap(config: &Config) -> Result<RewrapReport> {
    let repo = Repo::open(config).await?;
    let listing = repo.storage.list("").await.context("listing the repository")?;
    let mut report = RewrapReport {
        key_id: repo.keys.primary().id().to_hex(),
        ..RewrapReport::default()
    };
    let progress = Arc::new(AtomicU64::new(0));

    // Backups first (each: objects, then its manifest), then everything else.
    let mut backups: BTreeMap<BackupLabel, Vec<ObjectKey>> = BTreeMap::new();
    let mut rest = Vec::new();
    for meta in listing {
        match layout::parse_backup_key(&meta.key) {
            Some((label, _)) => backups.entry(label).or_default().push(meta.key),
            None => rest.push(meta.key),
        }
    }
    for (label, keys) in &backups {
        let manifest_key = layout::manifest(label);
        let mut handled: HashSet<ObjectKey> = HashSet::new();
        if keys.contains(&manifest_key) {
            handled.insert(manifest_key.clone());
            if let Err(e) = rewrap_backup(&repo, label, &mut report, &mut handled, &progress).await {
                report.failed.push(Failed {
                    key: manifest_key.to_string(),
                    why: format!("{e:#}"),
                });
            }
        }
        // Objects no manifest lists (an orphan's, keep marks): one by one.
        for key in keys.iter().filter(|k| !handled.contains(*k)) {
            one(&repo, key, None, &mut report, &progress).await;
        }
    }
    for key in &rest {
        one(&repo, key, None, &mut report, &progress).await;
    }
    report.bytes = progress.load(Ordering::Relaxed);
    Ok(report)
}

/// Move one object not recorded in any manifest; a failure is recorded, not raised.
async fn one(
    repo: &Repo,
    key: &ObjectKey,
    expect: Option<&Tally>,
    report: &mut RewrapReport,
    progress: &Arc<AtomicU64>,
) {
    match move_object(repo, key, expect, false, progress).await {
        Ok(moved) => count(report, &moved),
        // Removed meanwhile (expire, a finished lease): nothing to move.
        Err(e) if crate::storage::is_not_found(&e) => {}
        Err(e) => report.failed.push(Failed {
            key: key.to_string(),
            why: format!("{e:#}"),
        }),
    }
}

fn count(report: &mut RewrapReport, moved: &Moved) {
    match moved {
        Moved::Rewrapped(_) => report.rewrapped += 1,
        Moved::Reencrypted(_) => report.reencrypted += 1,
        Moved::Current(_) => report.current += 1,
        Moved::Plain => report.plain += 1,
    }
}

/// A backup: unless its manifest is already under the current key, move every object
/// it lists, then write the manifest again with their new stored hashes.
async fn rewrap_backup(
    repo: &Repo,
    label: &BackupLabel,
    report: &mut RewrapReport,
    handled: &mut HashSet<ObjectKey>,
    progress: &Arc<AtomicU64>,
) -> Result<()> {
    let manifest_key = layout::manifest(label);
    let stored = repo.storage.get(&manifest_key).await?;
    if header_key(&stored)? == Some(repo.keys.primary().id()) {
        report.current += 1;
        let manifest: Manifest = serde_json::from_slice(&pipeline::open_sealed(&stored, &manifest_key, &repo.keys)?.0)
            .with_context(|| format!("the manifest of {label} is not valid JSON"))?;
        for record in &manifest.objects {
            handled.insert(layout::backup_object(label, &record.name)?);
            report.current += 1;
        }
        return Ok(());
    }
    let (plain, _) = pipeline::open_sealed(&stored, &manifest_key, &repo.keys)?;
    let mut manifest: Manifest =
        serde_json::from_slice(&plain).with_context(|| format!("the manifest of {label} is not valid JSON"))?;
    for record in manifest.objects.iter_mut() {
        let key = layout::backup_object(label, &record.name)?;
        handled.insert(key.clone());
        // An object already moved by an interrupted run: re-read for its new hash.
        let moved = move_object(repo, &key, Some(&record.stored), true, progress)
            .await
            .with_context(|| format!("{key}"))?;
        count(report, &moved);
        match moved {
            Moved::Rewrapped(t) | Moved::Reencrypted(t) | Moved::Current(Some(t)) => record.stored = t,
            Moved::Current(None) | Moved::Plain => {
                return Err(anyhow!(
                    "{key} is not an encrypted pgdr object, but its manifest lists it"
                ));
            }
        }
    }
    manifest.key_id = repo.keys.primary().id().to_hex();
    crate::process::crash_point("rewrap-before-manifest");
    let data = serde_json::to_vec(&manifest).expect("manifest serialises");
    repo.store()
        .bytes(&manifest_key, "manifest.json", data, PutMode::Overwrite)
        .await
        .with_context(|| format!("writing the rewrapped manifest of {label}"))?;
    report.manifests += 1;
    // `expire` may have removed the backup meanwhile: a manifest written back over
    // its deletion would list a backup with holes.
    let present: HashSet<ObjectKey> = repo
        .storage
        .list(&layout::backup_prefix(label))
        .await?
        .into_iter()
        .map(|m| m.key)
        .collect();
    let complete = manifest
        .objects
        .iter()
        .all(|r| layout::backup_object(label, &r.name).is_ok_and(|k| present.contains(&k)));
    if !complete {
        let refused = repo.storage.delete(std::slice::from_ref(&manifest_key)).await?;
        if let Some(r) = refused.first() {
            return Err(anyhow!(
                "backup {label} lost objects while it was rewrapped (expire?) and its manifest cannot be removed ({}) — remove {manifest_key} by hand",
                r.reason
            ));
        }
        report.manifests -= 1;
        report.vanished.push(label.to_string());
    }
    Ok(())
}

/// The key id in a stored object's header; `None` for an object that is not one of
/// pgdr's encrypted objects.
fn header_key(stored: &[u8]) -> Result<Option<crate::pipeline::KeyId>> {
    if stored.len() < MAGIC.len() || &stored[..MAGIC.len()] != MAGIC {
        return Ok(None);
    }
    Ok(Some(peek_key_id(stored).map_err(|e| anyhow!("its header {e}"))?))
}

/// Move one object onto the current key. `expect`: the manifest's record of its
/// stored bytes (a mismatch leaves it as it is). `hash_current`: for an object
/// already under the current key, read it through for its stored tally.
async fn move_object(
    repo: &Repo,
    key: &ObjectKey,
    expect: Option<&Tally>,
    hash_current: bool,
    progress: &Arc<AtomicU64>,
) -> Result<Moved> {
    let mut rx = repo.storage.get_stream(key).await?;
    let mut head = BytesMut::new();
    while head.len() < HEADER_LEN {
        match rx.recv().await {
            Some(piece) => head.extend_from_slice(&piece?),
            None => break,
        }
    }
    let Some(key_id) = header_key(&head)? else {
        return Ok(Moved::Plain);
    };
    if head.len() < HEADER_LEN {
        return Err(anyhow!("{key} is truncated inside its header"));
    }
    let primary = repo.keys.primary();
    if key_id == primary.id() {
        if !hash_current {
            return Ok(Moved::Current(None));
        }
        let mut tally = Hashing::default();
        tally.add(&head);
        while let Some(piece) = rx.recv().await {
            tally.add(&piece?);
        }
        return Ok(Moved::Current(Some(tally.finish())));
    }
    let Some(header) = rewrap_header(&head[..HEADER_LEN], &repo.keys, primary).map_err(|e| anyhow!("{key} {e}"))?
    else {
        drop(rx);
        let written = pipeline::reseal(
            (&repo.storage, &repo.keys),
            key,
            expect,
            (&repo.storage, &repo.keys),
            PutMode::Overwrite,
            progress.clone(),
        )
        .await?;
        return Ok(Moved::Reencrypted(written));
    };

    // Header swap: the new header, then the body as it is, hashing both versions.
    let (tx, body) = body_channel();
    let feed = async {
        let (mut old, mut new) = (Hashing::default(), Hashing::default());
        let mut first = BytesMut::from(&header[..]);
        first.extend_from_slice(&head[HEADER_LEN..]);
        old.add(&head);
        new.add(&first);
        progress.fetch_add(first.len() as u64, Ordering::Relaxed);
        if tx.send(first.freeze()).await.is_err() {
            return Err(anyhow!("the upload of {key} stopped"));
        }
        while let Some(piece) = rx.recv().await {
            let piece: Bytes = match piece {
                Ok(p) => p,
                Err(e) => {
                    tx.fail(format!("reading {key}: {e}")).await;
                    return Err(anyhow::Error::new(e).context(format!("reading {key}")));
                }
            };
            old.add(&piece);
            new.add(&piece);
            progress.fetch_add(piece.len() as u64, Ordering::Relaxed);
            if tx.send(piece).await.is_err() {
                return Err(anyhow!("the upload of {key} stopped"));
            }
        }
        let (old, new) = (old.finish(), new.finish());
        if let Some(expect) = expect
            && old != *expect
        {
            let why = format!(
                "{key} does not match its manifest (stored sha256 {} size {}, the manifest says sha256 {} size {}) — damaged; left as it is",
                old.sha256, old.size, expect.sha256, expect.size
            );
            tx.fail(why.clone()).await;
            return Err(anyhow!(why));
        }
        tx.finish().await;
        Ok(new)
    };
    let (fed, stored) = tokio::join!(feed, repo.storage.put_stream(key, body, PutMode::Overwrite));
    let new = fed?;
    stored.with_context(|| format!("writing {key} back"))?;
    Ok(Moved::Rewrapped(new))
}

/// Size and SHA-256 of bytes streamed through.
#[derive(Default)]
struct Hashing {
    sha: Sha256,
    size: u64,
}

impl Hashing {
    fn add(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.size += data.len() as u64;
    }

    fn finish(self) -> Tally {
        Tally {
            size: self.size,
            sha256: hex::encode(self.sha.finalize()),
        }
    }
}
