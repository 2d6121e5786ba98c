//! `pgdr wal-fetch %f %p` — PostgreSQL's `restore_command`. Exits 1 quietly when the
//! file is not in the archive (PostgreSQL relies on that at the end of recovery).
//! Every object is fully decrypted and authenticated before PostgreSQL sees it. After
//! a segment, a detached prefetcher fetches the next ones in parallel into
//! `pg_wal/.pgdr-prefetch/`, so replay is not bound by one round trip per segment.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use tokio::task::JoinSet;

use super::Ctx;
use crate::cli::{WalFetchArgs, WalPrefetchArgs};
use crate::exit::Exit;
use crate::pipeline::{self, Keyring};
use crate::postgres::{Segment, WalFile};
use crate::repo::{self, layout};
use crate::storage::{self, DynStorage, StorageError};

const PREFETCH_DIR: &str = ".pgdr-prefetch";
/// Offset of the segment size in a segment's first (long) page header.
const SEG_SIZE_OFFSET: usize = 32;
const PREFETCH_PARALLEL: usize = 4;

/// PostgreSQL's contract, in one place: 0 the file is in place; 1 the archive says
/// it does not have it (the end of the archive); 126 anything else, which stops a
/// target recovery instead of letting it promote early and fork a timeline before
/// the data it has not replayed. A standby answers 1 instead and is asked again.
pub async fn run(ctx: &Ctx, args: WalFetchArgs) -> Result<Exit> {
    let Some(file) = WalFile::parse(&args.name) else {
        tracing::debug!("{} is not a WAL file name; nothing to fetch", args.name);
        return Ok(Exit::Failure);
    };
    let dest = args.path;
    let wal_dir = dest.parent().unwrap_or(Path::new("")).to_path_buf();
    match fetch(ctx, &file, &dest, &wal_dir).await {
        Ok(Fetched::Found) => Ok(Exit::Success),
        Ok(Fetched::Absent) => {
            tracing::debug!("{file} is not in the archive");
            Ok(Exit::Failure)
        }
        Err(e) if e.chain().any(|c| c.is::<pipeline::Damaged>()) => {
            eprintln!("pgdr: error: {e:#} — stopping recovery rather than replaying past it");
            Ok(Exit::AbortRecovery)
        }
        Err(e) => {
            // The data directory is the parent of pg_wal (PostgreSQL runs
            // restore_command there, with %p relative to it).
            let data_dir = wal_dir.parent().unwrap_or(Path::new(""));
            if data_dir.join("standby.signal").exists() {
                eprintln!("pgdr: error: cannot fetch {file}: {e:#} — the standby will ask again");
                Ok(Exit::Failure)
            } else {
                eprintln!(
                    "pgdr: error: cannot fetch {file} from the archive: {e:#} — stopping recovery rather than taking this for the end of the archive; fix the repository and start the server again"
                );
                Ok(Exit::AbortRecovery)
            }
        }
    }
}

enum Fetched {
    Found,
    Absent,
}

/// The repository belongs to another cluster than the data directory asking: its
/// "absent" would be read as the end of this cluster's archive.
#[derive(Debug)]
struct WrongCluster(String);

impl std::fmt::Display for WrongCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WrongCluster {}

/// Refuse a repository whose system identifier is not the data directory's (the
/// parent of pg_wal, where PostgreSQL runs restore_command). A data directory whose
/// pg_control cannot be read (not a data directory: a test, a manual call) is not
/// checked.
fn check_same_cluster(wal_dir: &Path, info: &repo::RepoInfo, place: &str) -> Result<()> {
    let data_dir = wal_dir.parent().unwrap_or(Path::new(""));
    let data_dir = if data_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        data_dir
    };
    match crate::postgres::datadir::control_system_identifier(data_dir) {
        Ok(local) if local != info.system_identifier => Err(anyhow::Error::new(WrongCluster(format!(
            "{place} belongs to system {} (cluster {:?}), but this data directory is system {local} — wal-fetch reads the configuration file only (no PGDR_* overrides): check its [repository] url and cluster",
            info.system_identifier, info.cluster
        )))),
        _ => Ok(()),
    }
}

async fn fetch(ctx: &Ctx, file: &WalFile, dest: &Path, wal_dir: &Path) -> Result<Fetched> {
    let prefetch_dir = wal_dir.join(PREFETCH_DIR);
    let ready = prefetch_dir.join(file.name());
    if ready.is_file() {
        std::fs::rename(&ready, dest).map_err(|e| anyhow!("cannot move {} into place: {e}", ready.display()))?;
    } else {
        let storage = storage::open(&ctx.config.repository, &ctx.config.cluster).await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(ctx.config.wal.fetch_retry_seconds);
        let mut delay = std::time::Duration::from_millis(250);
        let mut keys = None;
        loop {
            // The keyring is bound to repo.json, which proves the repository is there:
            // "absent" counts only from a repository that is (an unmounted volume or a
            // wrong prefix would make every file absent, and recovery end early).
            // Reading it is retried like any fetch.
            let attempt = async {
                if keys.is_none() {
                    let (bound, info) = repo::bound_keyring_and_info(&ctx.config, &storage).await?;
                    check_same_cluster(wal_dir, &info, &storage.describe())?;
                    keys = Some(bound);
                }
                fetch_into(&storage, keys.as_ref().expect("set above"), file, dest).await
            };
            match attempt.await {
                Ok(true) => break,
                Ok(false) => return Ok(Fetched::Absent),
                Err(e) if e.chain().any(|c| c.is::<pipeline::Damaged>() || c.is::<WrongCluster>()) => return Err(e),
                Err(e) if std::time::Instant::now() + delay > deadline => {
                    return Err(e.context(format!(
                        "still failing after {} s of retries ([wal] fetch_retry_seconds)",
                        ctx.config.wal.fetch_retry_seconds
                    )));
                }
                Err(e) => {
                    tracing::warn!("fetching {file} failed ({e:#}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }
    if let WalFile::Segment(_) = file
        && ctx.config.wal.prefetch > 0
    {
        start_prefetcher(ctx, file, dest, &prefetch_dir);
    }
    Ok(Fetched::Found)
}

/// Fetch one archived file to `dest` (through a temporary file, renamed when whole
/// and authenticated). `Ok(false)` only if storage positively says it is absent.
async fn fetch_into(storage: &DynStorage, keys: &Keyring, file: &WalFile, dest: &Path) -> Result<bool> {
    let key = layout::wal_file(file);
    let tmp = dest.with_file_name(format!(".{}.pgdr-tmp", file.name()));
    let out = std::fs::File::create(&tmp).map_err(|e| anyhow!("cannot create {}: {e}", tmp.display()))?;
    let loaded = pipeline::load_to_writer(storage, &key, out, keys, pipeline::Verify::Authenticated, None).await;
    match loaded {
        Ok((mut out, _, _)) => {
            let done = out
                .flush()
                .and_then(|_| out.sync_all())
                .map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))
                .and_then(|_| {
                    drop(out);
                    std::fs::rename(&tmp, dest).map_err(|e| anyhow!("cannot move {} into place: {e}", tmp.display()))
                });
            if done.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            done.map(|_| true)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            if matches!(e.downcast_ref::<StorageError>(), Some(StorageError::NotFound(_))) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Start a detached `pgdr wal-prefetch` for the segments after `file`, unless one is
/// still running.
fn start_prefetcher(ctx: &Ctx, file: &WalFile, dest: &Path, dir: &Path) {
    let Ok(header) = std::fs::read(dest).map(|d| d.get(SEG_SIZE_OFFSET..SEG_SIZE_OFFSET + 4).map(|b| b.to_vec()))
    else {
        return;
    };
    let Some(seg_size) = header.map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as u64) else {
        return;
    };
    if !seg_size.is_power_of_two() || std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(pid) = std::fs::read_to_string(dir.join(".lock"))
        && let Ok(pid) = pid.trim().parse::<i32>()
        && unsafe { libc::kill(pid, 0) } == 0
    {
        return; // a prefetcher is at work
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut cmd = std::process::Command::new(exe);
    if let Some(config) = ctx.config.file() {
        cmd.arg("--config").arg(config);
    }
    cmd.args([
        "wal-prefetch",
        "--after",
        file.name(),
        "--segment-size",
        &seg_size.to_string(),
        "--dir",
    ])
    .arg(dir)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; it detaches the prefetcher from PostgreSQL's
    // process group so that it outlives this short process.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if let Ok(child) = cmd.spawn() {
        let _ = std::fs::write(dir.join(".lock"), child.id().to_string());
    }
}

/// The detached prefetcher: fetch the next segments into the prefetch directory.
pub async fn prefetch(ctx: &Ctx, args: WalPrefetchArgs) -> Result<Exit> {
    let Some(first) = Segment::parse(&args.after, args.segment_size) else {
        return Ok(Exit::Failure);
    };
    let storage = storage::open(&ctx.config.repository, &ctx.config.cluster).await?;
    let keys = repo::bound_keyring(&ctx.config, &storage).await?;
    // Drop what recovery has gone past.
    if let Ok(entries) = std::fs::read_dir(&args.dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if WalFile::parse(&name).is_some() && name.as_str() <= args.after.as_str() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut wanted: Vec<PathBuf> = Vec::new();
    let mut seg = first;
    for _ in 0..ctx.config.wal.prefetch {
        seg = seg.next();
        let path = args.dir.join(seg.name(args.segment_size));
        if !path.exists() {
            wanted.push(path);
        }
    }
    let mut tasks = JoinSet::new();
    for path in wanted {
        while tasks.len() >= PREFETCH_PARALLEL {
            if let Some(Ok(Ok(false))) = tasks.join_next().await {
                break; // the archive ends here
            }
        }
        let storage = storage.clone();
        let keys = keys.clone();
        tasks.spawn(async move {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let file = WalFile::parse(&name).ok_or_else(|| anyhow!("bad name"))?;
            fetch_into(&storage, &keys, &file, &path).await
        });
    }
    while tasks.join_next().await.is_some() {}
    let _ = std::fs::remove_file(args.dir.join(".lock"));
    Ok(Exit::Success)
}
