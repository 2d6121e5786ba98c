//! `pgdr wal-push %p` — PostgreSQL's `archive_command`. Exit 0 only once the file is
//! durably in the repository. To keep up with bursts it also pushes, in parallel, the
//! segments PostgreSQL has already marked `.ready` after this one, and notes each
//! stored one in the spool; when PostgreSQL then asks for it, the answer is immediate.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::Ctx;
use crate::cli::WalPushArgs;
use crate::exit::Exit;
use crate::pipeline;
use crate::postgres::WalFile;
use crate::repo::{Repo, layout};
use crate::storage::{PutMode, StorageError};
use crate::usage;

/// Offset of the system identifier in a segment's first (long) page header.
const SYSID_OFFSET: usize = 24;

pub async fn run(ctx: &Ctx, args: WalPushArgs) -> Result<Exit> {
    let path = args.path;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| usage!("wal-push needs the path of a WAL file (%p), got {}", path.display()))?;
    let file = WalFile::parse(name)
        .ok_or_else(|| usage!("{name} is not a WAL segment, .partial, .backup or .history file name"))?;
    let repo = Repo::open(&ctx.config).await?;
    let spool = Spool::new(ctx.config.spool_dir().join("pushed"));

    // Already stored ahead by an earlier call?
    let data = read_file(&path)?;
    let sha = hex::encode(Sha256::digest(&data));
    if spool.has(file.name(), &sha) {
        spool.forget(file.name());
        return Ok(Exit::Success);
    }

    // This one, plus the next ones PostgreSQL has ready, in parallel.
    let mut tasks = JoinSet::new();
    let ahead = look_ahead(&path, &file, ctx.config.wal.push_parallel.saturating_sub(1) as usize);
    for (next_file, next_path) in ahead {
        let repo = repo.clone();
        let spool = spool.clone();
        tasks.spawn(async move {
            let data = read_file(&next_path)?;
            let sha = hex::encode(Sha256::digest(&data));
            if spool.has(next_file.name(), &sha) {
                return Ok(());
            }
            push_one(&repo, &next_file, data, &sha).await?;
            spool.note(next_file.name(), &sha);
            anyhow::Ok(())
        });
    }
    let result = push_one(&repo, &file, data, &sha).await;
    while let Some(done) = tasks.join_next().await {
        // Look-ahead failures do not matter: PostgreSQL will ask for those again.
        if let Ok(Err(e)) = done {
            tracing::warn!("pushing ahead: {e:#}");
        }
    }
    result?;
    Ok(Exit::Success)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
}

/// Store one WAL file unless it is already there; the same bytes again are fine,
/// different bytes under the same name are refused and never overwrite.
async fn push_one(repo: &Repo, file: &WalFile, data: Vec<u8>, sha: &str) -> Result<()> {
    if let WalFile::Segment(_) | WalFile::Partial(_) = file {
        check_system_identifier(repo, file, &data)?;
    }
    let key = layout::wal_file(file);
    // Some S3 servers ignore If-None-Match (DESIGN.md): look first, and compare.
    if repo.storage.head(&key).await?.is_some() {
        return compare_existing(repo, file, sha).await;
    }
    match repo.store().bytes(&key, file.name(), data, PutMode::CreateNew).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.downcast_ref::<StorageError>(), Some(StorageError::AlreadyExists(_))) => {
            compare_existing(repo, file, sha).await
        }
        Err(e) => Err(e.context(format!("archiving {file}"))),
    }
}

/// PostgreSQL retries a push after a crash: the same bytes succeed. A `.history`
/// file is never overwritten (a second timeline history under the same name means
/// two clusters share an archive — see WAL-G issue 420).
async fn compare_existing(repo: &Repo, file: &WalFile, sha: &str) -> Result<()> {
    let existing = pipeline::load_bytes(&repo.storage, &layout::wal_file(file), &repo.keys)
        .await
        .with_context(|| format!("{file} is already archived but cannot be read back to compare"))?;
    if hex::encode(Sha256::digest(&existing)) == sha {
        return Ok(());
    }
    Err(anyhow!(
        "{file} is already archived in {} with different content; refusing to overwrite it — two clusters may be archiving into one repository, check [repository] url and cluster",
        repo.storage.describe()
    ))
}

fn check_system_identifier(repo: &Repo, file: &WalFile, data: &[u8]) -> Result<()> {
    let Some(bytes) = data.get(SYSID_OFFSET..SYSID_OFFSET + 8) else {
        return Err(anyhow!("{file} is too short to be a WAL segment"));
    };
    let sysid = u64::from_le_bytes(bytes.try_into().expect("8 bytes")).to_string();
    if sysid != repo.info.system_identifier {
        return Err(usage!(
            "{file} belongs to the cluster with system identifier {sysid}, but the repository at {} belongs to {} — check [repository] url and cluster",
            repo.storage.describe(),
            repo.info.system_identifier
        ));
    }
    Ok(())
}

/// The next WAL files PostgreSQL has marked ready after `file`, oldest first.
fn look_ahead(path: &Path, file: &WalFile, count: usize) -> Vec<(WalFile, PathBuf)> {
    if count == 0 {
        return Vec::new();
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir.join("archive_status")) else {
        return Vec::new();
    };
    let mut ready: Vec<WalFile> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            WalFile::parse(name.strip_suffix(".ready")?)
        })
        .filter(|f| f.name() > file.name() && !matches!(f, WalFile::History(_)))
        .collect();
    ready.sort();
    ready.truncate(count);
    ready
        .into_iter()
        .map(|f| {
            let p = dir.join(f.name());
            (f, p)
        })
        .collect()
}

/// Notes of files stored ahead of PostgreSQL's asking: `<spool>/<name>` holding the
/// SHA-256 of what was stored. A note is written only after the store succeeded.
#[derive(Clone)]
struct Spool {
    dir: PathBuf,
}

impl Spool {
    fn new(dir: PathBuf) -> Spool {
        Spool { dir }
    }

    fn has(&self, name: &str, sha: &str) -> bool {
        std::fs::read_to_string(self.dir.join(name)).is_ok_and(|s| s.trim() == sha)
    }

    fn note(&self, name: &str, sha: &str) {
        // Best effort: without the note the file is simply pushed (and compared) again.
        let _ = std::fs::create_dir_all(&self.dir);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        if std::fs::write(&tmp, sha).is_ok() {
            let _ = std::fs::rename(&tmp, self.dir.join(name));
        }
    }

    fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }
}
