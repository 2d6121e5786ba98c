//! Moving one object from the primary repository into a copy, checked twice: what is
//! read must be what the manifest recorded (or authenticate, when no manifest records
//! it), and what the copy then holds is read back and must hash the same. A check that
//! fails before the end of a streamed object aborts its upload, so nothing damaged
//! becomes visible in the copy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::Item;
use crate::pipeline::{self, Damaged, Keyring, Tally};
use crate::repo::BackupLabel;
use crate::storage::{DynStorage, ObjectKey, PutMode, StorageError, body_channel};

/// What an object must be.
pub enum Expect {
    /// What its manifest records: the stored bytes (checked on the way) and the
    /// plaintext (checked when a re-keyed copy's object is read back).
    Stored { stored: Tally, plain: Tally },
    /// A sealed object no manifest records (WAL, history, keep marks, timeline
    /// declarations): it must open under the repository key.
    Sealed,
    /// These bytes, already read and checked (a backup's manifest).
    Bytes(Vec<u8>, BackupLabel),
}

pub struct Copier {
    pub from: DynStorage,
    pub to: DynStorage,
    pub keys: Keyring,
    /// Bytes copied, for the progress line.
    pub progress: Arc<AtomicU64>,
    /// Objects stored by this run.
    pub stored: Arc<AtomicU64>,
    /// Tests of crash consistency: die (SIGKILL) after this many objects.
    pub kill_after: Option<u64>,
    /// A copy with a key of its own: objects are re-sealed under this keyring (bound to
    /// the same cluster), their compressed contents untouched.
    pub rekey: Option<Keyring>,
    /// Re-keyed backup objects' new stored tallies, for the copy's manifest.
    pub resealed: std::sync::Mutex<std::collections::HashMap<ObjectKey, Tally>>,
}

/// A WAL file, history or keep mark listed in the primary and deleted since: `expire`
/// removed it. Nothing the copy holds needs it — the backups being copied hold a use
/// lease, and expire keeps them and every WAL segment from their start.
fn gone(key: &ObjectKey) {
    tracing::warn!("{key} was removed from the primary (expire) since it was listed; not copied");
}

/// The largest object copied whole, in memory (a 1 GiB WAL segment, sealed).
const MAX_WHOLE: u64 = (1 << 30) + (1 << 20);

fn tally_of(data: &[u8]) -> Tally {
    Tally {
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
    }
}

impl Copier {
    /// Copy `items`, at most `jobs` at once; the first failure is returned.
    pub async fn all(&self, items: Vec<Item>, jobs: usize) -> Result<()> {
        let mut stream = futures::stream::iter(items.into_iter().map(|i| self.one(i))).buffer_unordered(jobs.max(1));
        while let Some(r) = stream.next().await {
            r?;
        }
        Ok(())
    }

    /// Objects an earlier run left in the copy, under a backup not committed there:
    /// each must read back as its manifest says, else it is removed and sent again.
    /// Returns how many were sent again.
    pub async fn recheck(&self, items: Vec<Item>, jobs: usize) -> Result<u64> {
        let mut stream = futures::stream::iter(items.into_iter().map(|item| async move {
            let Expect::Stored { stored, plain } = &item.expect else {
                return Ok(false);
            };
            if self.holds(&item.key, stored, plain).await {
                return Ok(false);
            }
            tracing::warn!("{} in the copy is not the primary's object; sending it again", item.key);
            self.remove(&item.key).await?;
            self.one(item).await.map(|_| true)
        }))
        .buffer_unordered(jobs.max(1));
        let mut resent = 0;
        while let Some(r) = stream.next().await {
            resent += u64::from(r?);
        }
        Ok(resent)
    }

    /// Whether the copy holds the object a manifest records under `key`: the same
    /// stored bytes, or (re-keyed) an object that opens under the copy's key to the
    /// same plaintext.
    async fn holds(&self, key: &ObjectKey, stored: &Tally, plain: &Tally) -> bool {
        let Some(rekey) = &self.rekey else {
            return self.read_back(key, stored, false).await.is_ok();
        };
        let opened =
            pipeline::load_to_writer(&self.to, key, std::io::sink(), rekey, pipeline::Verify::Digests, None).await;
        match opened {
            Ok((_, got_plain, got_stored))
                if got_plain.size == plain.size && (plain.sha256.is_empty() || got_plain.sha256 == plain.sha256) =>
            {
                self.resealed
                    .lock()
                    .expect("resealed lock")
                    .insert(key.clone(), got_stored);
                true
            }
            _ => false,
        }
    }

    /// What the copy holds under `key` (written by this run) must hash as `stored`.
    pub async fn confirm(&self, key: &ObjectKey, stored: &Tally) -> Result<()> {
        self.read_back(key, stored, true).await
    }

    /// Remove an object from the copy; a store that refuses (Object Lock) is an error.
    async fn remove(&self, key: &ObjectKey) -> Result<()> {
        let refused = self
            .to
            .delete(std::slice::from_ref(key))
            .await
            .with_context(|| format!("removing {key} from the copy"))?;
        if let Some(r) = refused.first() {
            return Err(anyhow!(
                "{key} in the copy is damaged and the copy's store refuses to remove it ({}) — remove it by hand, then run `pgdr copy` again",
                r.reason
            ));
        }
        Ok(())
    }

    pub async fn one(&self, item: Item) -> Result<()> {
        let key = &item.key;
        let mode = if item.mutable {
            PutMode::Overwrite
        } else {
            PutMode::CreateNew
        };
        match (item.expect, &self.rekey) {
            (Expect::Stored { stored, .. }, Some(rekey)) => {
                let written = pipeline::reseal(
                    (&self.from, &self.keys),
                    key,
                    Some(&stored),
                    (&self.to, rekey),
                    mode,
                    self.progress.clone(),
                )
                .await?;
                self.read_back(key, &written, true).await?;
                self.resealed
                    .lock()
                    .expect("resealed lock")
                    .insert(key.clone(), written);
            }
            (Expect::Sealed, Some(rekey)) => {
                let written = pipeline::reseal(
                    (&self.from, &self.keys),
                    key,
                    None,
                    (&self.to, rekey),
                    mode,
                    self.progress.clone(),
                )
                .await;
                // Gone only if the primary says so: a 404 may also come from the
                // copy's side of the reseal (an upload the store dropped).
                let vanished = match &written {
                    Err(e) if crate::storage::is_not_found(e) => matches!(self.from.head(key).await, Ok(None)),
                    _ => false,
                };
                let written = match written {
                    _ if vanished => {
                        gone(key);
                        return Ok(());
                    }
                    other => other.map_err(|e| {
                        anyhow!("{key} in the primary repository cannot be copied ({e:#}) — run `pgdr check` there")
                    })?,
                };
                self.read_back(key, &written, true).await?;
            }
            (Expect::Stored { stored, .. }, None) => self.stream(key, &stored).await?,
            (Expect::Sealed, None) => {
                // A WAL segment is at most 1 GiB; nothing pgdr reads whole is larger.
                if item.size > MAX_WHOLE {
                    return Err(anyhow!(
                        "{key} in the primary repository is {} bytes, too large for a WAL or small object — not copied; see `pgdr check`",
                        item.size
                    ));
                }
                let data = match self.from.get(key).await {
                    Err(StorageError::NotFound(_)) => {
                        gone(key);
                        return Ok(());
                    }
                    other => other.with_context(|| format!("reading {key} from the primary repository"))?,
                };
                let tally = pipeline::check_sealed(&data, key, &self.keys).map_err(|e| {
                    anyhow!(
                        "{key} in the primary repository is damaged ({e:#}) — it was not copied; run `pgdr check` there"
                    )
                })?;
                self.put_whole(key, data, &tally, mode).await?;
            }
            (Expect::Bytes(data, label), _) => {
                let tally = tally_of(&data);
                self.put_whole(key, Bytes::from(data), &tally, mode)
                    .await
                    .with_context(|| format!("committing {label} in the copy"))?;
            }
        }
        let n = self.stored.fetch_add(1, Ordering::SeqCst) + 1;
        if self.kill_after == Some(n) {
            // SAFETY: kill on our own pid; the test wants a crash, not a clean exit.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        Ok(())
    }

    async fn put_whole(&self, key: &ObjectKey, data: Bytes, tally: &Tally, mode: PutMode) -> Result<()> {
        let len = data.len() as u64;
        let ours = match self.to.put(key, data, mode).await {
            Ok(()) => true,
            // Stored meanwhile (by another copy run): fine if it is the same object.
            Err(StorageError::AlreadyExists(_)) => false,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("writing {key} into the copy"))),
        };
        self.progress.fetch_add(len, Ordering::Relaxed);
        self.read_back(key, tally, ours).await
    }

    /// Stream the object across, hashing it on the way; the upload completes only if
    /// the hash and size match the manifest.
    async fn stream(&self, key: &ObjectKey, expect: &Tally) -> Result<()> {
        let mut rx = self
            .from
            .get_stream(key)
            .await
            .with_context(|| format!("reading {key} from the primary repository"))?;
        let (tx, body) = body_channel();
        let put = self.to.put_stream(key, body, PutMode::CreateNew);
        let progress = self.progress.clone();
        let feed = async move {
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(piece) = rx.recv().await {
                let piece = match piece {
                    Ok(p) => p,
                    Err(e) => {
                        let why = format!("reading {key} from the primary repository: {e}");
                        tx.fail(why.clone()).await;
                        return Err(anyhow!(why));
                    }
                };
                hasher.update(&piece);
                size += piece.len() as u64;
                progress.fetch_add(piece.len() as u64, Ordering::Relaxed);
                if tx.send(piece).await.is_err() {
                    return Ok(false); // the copy's side stopped; its error says why
                }
            }
            let got = Tally {
                size,
                sha256: hex::encode(hasher.finalize()),
            };
            if got != *expect {
                let why = format!(
                    "{key} in the primary repository does not match its manifest (sha256 {} size {}, the manifest says sha256 {} size {}) — it is damaged there and was not copied",
                    got.sha256, got.size, expect.sha256, expect.size
                );
                tx.fail(why.clone()).await;
                return Err(anyhow::Error::new(Damaged(why)));
            }
            tx.finish().await;
            Ok(true)
        };
        let (put, fed) = tokio::join!(put, feed);
        fed?;
        let ours = match put {
            Ok(_) => true,
            Err(StorageError::AlreadyExists(_)) => false,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("writing {key} into the copy"))),
        };
        self.read_back(key, expect, ours).await
    }

    /// What the copy now holds under `key` must hash as `expect`; if not, the copy
    /// fails (and what this run wrote there is removed again: `ours`).
    async fn read_back(&self, key: &ObjectKey, expect: &Tally, ours: bool) -> Result<()> {
        let mut rx = self
            .to
            .get_stream(key)
            .await
            .with_context(|| format!("reading {key} back from the copy"))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(piece) = rx.recv().await {
            let piece = piece.with_context(|| format!("reading {key} back from the copy"))?;
            hasher.update(&piece);
            size += piece.len() as u64;
        }
        let got = Tally {
            size,
            sha256: hex::encode(hasher.finalize()),
        };
        if got != *expect {
            if ours {
                self.remove(key).await?;
            }
            return Err(anyhow!(
                "{key} in the copy differs from what was sent (sha256 {} size {}, expected {} size {}) — the copy's store lost or changed it, or another cluster wrote there; run `pgdr copy` again",
                got.sha256,
                got.size,
                expect.sha256,
                expect.size
            ));
        }
        Ok(())
    }
}
