//! `archive_command`'s work: store one WAL file in the repository, never over a
//! different one (the same bytes again are fine: PostgreSQL retries after a crash),
//! refuse a file of another cluster, and record a declared new primary's timeline.

use std::path::Path;

use anyhow::{Context, Result, anyhow};

use super::spool::{Fingerprint, Spool, ready_after};
use crate::config::Config;
use crate::pipeline;
use crate::postgres::WalFile;
use crate::postgres::wal::LongPageHeader;
use crate::repo::{Repo, layout};
use crate::storage::PutMode;
use crate::usage;

/// `archive_command`: store the WAL file at `path`, durably, before returning Ok.
/// Uses the spool and the pusher for bursts, and stores the file itself otherwise.
pub async fn archive(config: &Config, path: &Path) -> Result<()> {
    let path = path.to_path_buf();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| usage!("wal-push needs the path of a WAL file (%p), got {}", path.display()))?;
    let file = WalFile::parse(name)
        .ok_or_else(|| usage!("{name} is not a WAL segment, .partial, .backup or .history file name"))?;
    let wal_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    // A spool that is not private (another owner, open modes) could be planted with
    // notes that fake "stored"; it is not used. But archiving must not stop over it:
    // this call stores its file itself, without the parallel pusher.
    let spool = match config.spool_dir(&wal_dir) {
        Ok(dir) => Some(Spool::new(dir)),
        Err(e) => {
            tracing::warn!("{e:#}; storing {name} without the spool (one file per call, no parallel pusher)");
            None
        }
    };
    if let Some(spool) = &spool {
        let print = Fingerprint::of(&path)?;
        // Stored ahead by the pusher? Then answer at once (waiting a little if it is on it).
        if spool.noted(file.name(), &print) || spool.wait_for_pusher(file.name(), &print).await {
            spool.forget(file.name());
            return Ok(());
        }
        // A burst (more files ready after this one): let the pusher store them all in
        // parallel, this one first, and wait for its note.
        if config.wal.push_parallel > 1 && !ready_after(&wal_dir, &file).is_empty() {
            spool.start_pusher(config, &wal_dir);
            if spool.wait_for_pusher(file.name(), &print).await {
                spool.forget(file.name());
                return Ok(());
            }
            // The pusher could not store it: do it here, and report why if it fails.
        }
    }
    let repo = Repo::open(config).await?;
    push_one(&repo, &file, &path).await?;
    if let WalFile::History(name) = &file {
        declare_if_new_primary(&repo, name, &wal_dir).await?;
    }
    super::replicate::SyncCopies::open(config)
        .await
        .replicate(&repo, &file)
        .await;
    Ok(())
}

/// A server restored with `restore --archive` carries a marker in its data directory
/// (the parent of pg_wal). When it archives its first timeline history, the
/// repository records that timeline as a declared new primary, which `latest` then
/// follows even though the old timeline went on past the branch point.
async fn declare_if_new_primary(repo: &Repo, history: &str, wal_dir: &Path) -> Result<()> {
    let data_dir = wal_dir.parent().unwrap_or(Path::new(""));
    let marker = data_dir.join(crate::postgres::recovery::NEW_PRIMARY_MARKER);
    if !marker.is_file() {
        return Ok(());
    }
    let Some(tli) = history.get(..8).and_then(|h| u32::from_str_radix(h, 16).ok()) else {
        return Ok(());
    };
    repo.declare_primary_timeline(tli, "pgdr restore --archive").await?;
    // Single use: the declaration is for the timeline this promotion created. A later
    // promotion of this server (or of a copy of its files) is judged on its own.
    if let Err(e) = std::fs::remove_file(&marker) {
        tracing::warn!("cannot remove {}: {e}", marker.display());
    }
    Ok(())
}

/// Store one WAL file unless it is already there; the same bytes again are fine,
/// different bytes under the same name are refused and never overwrite. Returns only
/// once the stored object reads back as exactly what was sent: a store may
/// acknowledge a PUT it did not keep, or keep a body damaged on the way.
pub async fn push_one(repo: &Repo, file: &WalFile, path: &Path) -> Result<()> {
    if let WalFile::Segment(_) | WalFile::Partial(_) = file {
        check_system_identifier(repo, file, path)?;
    }
    if !repo.info.ignores_conditions() {
        return store_one(repo, file, path).await;
    }
    let claim = super::claim::Claim::take(repo, file, path).await?;
    let stored = store_one(repo, file, path).await;
    claim.release(repo).await;
    stored
}

async fn store_one(repo: &Repo, file: &WalFile, path: &Path) -> Result<()> {
    let key = layout::wal_file(file);
    // PostgreSQL retries a push after a crash. On a store that honours If-None-Match
    // the create-only PUT itself finds a copy already there (one request, not a HEAD
    // first on every push); elsewhere look first, since a PUT there would overwrite.
    let mut mode = PutMode::CreateNew;
    if repo.info.may_overwrite() && repo.storage.head(&key).await?.is_some() {
        match existing(repo, file, path).await? {
            Existing::Same => return Ok(()),
            Existing::Damaged => mode = PutMode::Overwrite,
        }
    }
    match put(repo, file, path, &key, mode).await {
        Err(e) if crate::storage::is_already_exists(&e) => match existing(repo, file, path).await? {
            Existing::Same => Ok(()),
            Existing::Damaged => put(repo, file, path, &key, PutMode::Overwrite).await,
        },
        other => other,
    }
}

/// What is already archived under a WAL file's name, when it is not different bytes
/// (those are refused).
enum Existing {
    /// An authentic copy of the same file: nothing to do.
    Same,
    /// Not an authentic copy of anything: no restore can use it, and refusing would
    /// stop archiving for good. It is replaced.
    Damaged,
}

async fn existing(repo: &Repo, file: &WalFile, path: &Path) -> Result<Existing> {
    match compare_existing(repo, file, path).await {
        Ok(()) => Ok(Existing::Same),
        Err(e) if crate::pipeline::is_damaged(&e) => {
            tracing::warn!("{file} is archived but damaged ({e:#}); storing it again");
            Ok(Existing::Damaged)
        }
        Err(e) => Err(e),
    }
}

/// Compress, seal and store the file, then prove the store kept it.
async fn put(repo: &Repo, file: &WalFile, path: &Path, key: &crate::storage::ObjectKey, mode: PutMode) -> Result<()> {
    // The stored bytes' digest is what a whole read-back (a replacement) is compared
    // with; a create-only write is proven by its size.
    let store = pipeline::Store {
        digests: if repo.storage.put_is_proof() || mode == PutMode::CreateNew {
            pipeline::Digests::None
        } else {
            pipeline::Digests::StoredOnly
        },
        ..repo.store()
    };
    let record = match store.file(key, file.name(), path, mode).await {
        Ok(record) => record,
        Err(e) if crate::storage::is_already_exists(&e) => return Err(e),
        Err(e) => return Err(e.context(format!("archiving {file}"))),
    };
    read_back(repo, file, path, key, &record, mode).await
}

/// The object under `key` must be the bytes just stored, or (another pusher of the
/// same file won a race on a store that ignores conditions) an authentic copy of
/// the same WAL file.
///
/// A create-only store is proven by a HEAD: the PUT's ETag already matched the MD5
/// of what was sent (`S3Storage::put_once`), so what is left to catch is a store that
/// acknowledged a PUT it did not keep, or kept something else: absent, or another
/// size. Nothing else can be under the name (If-None-Match, or a claim on a store
/// that ignores it: a rival there stores the same WAL file). A replacement
/// (`Overwrite`) is read back whole, since the damaged copy it replaces may be what
/// the store still holds.
async fn read_back(
    repo: &Repo,
    file: &WalFile,
    path: &Path,
    key: &crate::storage::ObjectKey,
    record: &pipeline::ObjectRecord,
    mode: PutMode,
) -> Result<()> {
    use sha2::Digest;
    if repo.storage.put_is_proof() {
        return Ok(());
    }
    let lost = || {
        anyhow!(
            "{file} was acknowledged by {} but is not there when read back — the store lost it; PostgreSQL will retry",
            repo.storage.describe()
        )
    };
    let (size, matches) = if mode == PutMode::CreateNew {
        let meta = repo
            .storage
            .head(key)
            .await
            .with_context(|| format!("looking for {file} after storing it"))?
            .ok_or_else(lost)?;
        (meta.size, meta.size == record.stored.size)
    } else {
        let stored = match repo.storage.get(key).await {
            Ok(bytes) => bytes,
            Err(crate::storage::StorageError::NotFound(_)) => return Err(lost()),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {file} back after storing it"))),
        };
        let sha = hex::encode(sha2::Sha256::digest(&stored));
        (
            stored.len() as u64,
            stored.len() as u64 == record.stored.size && sha == record.stored.sha256,
        )
    };
    if matches {
        return Ok(());
    }
    compare_existing(repo, file, path).await.map_err(|e| {
        e.context(format!(
            "{file} reads back from {} as something other than what was stored ({size} bytes, expected {})",
            repo.storage.describe(),
            record.stored.size
        ))
    })
}

/// PostgreSQL retries a push after a crash: the same bytes succeed. Different bytes
/// are refused; in particular a `.history` file is never overwritten (a second
/// history under the same name means two clusters share an archive — WAL-G issue 420).
async fn compare_existing(repo: &Repo, file: &WalFile, path: &Path) -> Result<()> {
    let ours = pipeline::tally::sha256_file(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let (_, plain, _) = pipeline::load_to_writer(
        &repo.storage,
        &layout::wal_file(file),
        std::io::sink(),
        &repo.keys,
        pipeline::Verify::Digests,
        None,
    )
    .await
    .with_context(|| format!("{file} is already archived but cannot be read back to compare"))?;
    if plain.sha256 == ours {
        return Ok(());
    }
    Err(anyhow!(
        "{file} is already archived in {} with different content; refusing to overwrite it — two clusters may be archiving into one repository, check [repository] url and cluster",
        repo.storage.describe()
    ))
}

fn check_system_identifier(repo: &Repo, file: &WalFile, path: &Path) -> Result<()> {
    let header =
        LongPageHeader::read(path).map_err(|e| anyhow!("cannot read the header of {}: {e}", path.display()))?;
    let sysid = header.system_identifier.to_string();
    if sysid != repo.info.system_identifier {
        return Err(usage!(
            "{file} belongs to the cluster with system identifier {sysid}, but the repository at {} belongs to {} — check [repository] url and cluster",
            repo.storage.describe(),
            repo.info.system_identifier
        ));
    }
    Ok(())
}
