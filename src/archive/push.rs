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
        if spool.noted(file.name(), &print) || spool.wait_for_pusher(file.name(), &print) {
            spool.forget(file.name());
            return Ok(());
        }
        // A burst (more files ready after this one): let the pusher store them all in
        // parallel, this one first, and wait for its note.
        if config.wal.push_parallel > 1 && !ready_after(&wal_dir, &file).is_empty() {
            spool.start_pusher(config, &wal_dir);
            if spool.wait_for_pusher(file.name(), &print) {
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
    let body = serde_json::to_vec(&serde_json::json!({
        "timeline": tli,
        "declared": chrono::Utc::now(),
        "by": "pgdr restore --archive",
    }))
    .expect("declaration serialises");
    repo.store()
        .bytes(
            &layout::timeline_declaration(tli),
            "timeline",
            body,
            crate::storage::PutMode::Overwrite,
        )
        .await?;
    // Single use: the declaration is for the timeline this promotion created. A later
    // promotion of this server (or of a copy of its files) is judged on its own.
    if let Err(e) = std::fs::remove_file(&marker) {
        tracing::warn!("cannot remove {}: {e}", marker.display());
    }
    Ok(())
}

/// Store one WAL file unless it is already there; the same bytes again are fine,
/// different bytes under the same name are refused and never overwrite.
pub async fn push_one(repo: &Repo, file: &WalFile, path: &Path) -> Result<()> {
    if let WalFile::Segment(_) | WalFile::Partial(_) = file {
        check_system_identifier(repo, file, path)?;
    }
    let key = layout::wal_file(file);
    // Some S3 servers ignore If-None-Match (DESIGN.md): look first, and compare.
    if repo.storage.head(&key).await?.is_some() {
        return compare_existing(repo, file, path).await;
    }
    // Mapped, not read: zstd compresses straight from the page cache. PostgreSQL
    // never truncates a segment it has marked ready (it recycles one only after it
    // was archived), so the mapping stays whole while we read it.
    let source = path.to_path_buf();
    let map = move || -> Result<memmap2::Mmap> {
        let file = std::fs::File::open(&source).map_err(|e| anyhow!("cannot read {}: {e}", source.display()))?;
        // SAFETY: see above; the map is read-only and dropped once compressed.
        unsafe { memmap2::MmapOptions::new().populate().map(&file) }
            .map_err(|e| anyhow!("cannot read {}: {e}", source.display()))
    };
    let store = pipeline::Store {
        digests: pipeline::Digests::None,
        ..repo.store()
    };
    match store.loaded(&key, file.name(), map, PutMode::CreateNew).await {
        Ok(_) => Ok(()),
        Err(e) if crate::exit::is_already_exists(&e) => compare_existing(repo, file, path).await,
        Err(e) => Err(e.context(format!("archiving {file}"))),
    }
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
