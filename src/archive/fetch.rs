//! `restore_command`'s work: fetch one archived WAL file, fully decrypted and
//! authenticated before PostgreSQL sees it. What the outcome means to PostgreSQL
//! (exit 0, 1 or 126) is decided in one place, `exit::wal_fetch`.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, anyhow};

use crate::config::Config;
use crate::pipeline::{self, Keyring};
use crate::postgres::WalFile;
use crate::repo::{self, layout};
use crate::storage::{self, DynStorage};

/// The file is in place, or the archive positively does not have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Found,
    Absent,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The archived file is damaged or failed authentication: never replay past it.
    #[error("{0:#}")]
    Damaged(anyhow::Error),
    /// The repository is another system's: its "absent" means nothing here.
    #[error("{0:#}")]
    WrongCluster(anyhow::Error),
    /// Storage did not answer (after the retries), or the file could not be put in place.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

/// The data directory of a `restore_command` call: the parent of the pg_wal that `%p`
/// (the destination) is in. PostgreSQL runs the command there, with `%p` relative to it.
pub fn data_dir_of(dest: &Path) -> std::path::PathBuf {
    match dest.parent().and_then(Path::parent) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Whether the server asking is a standby (it asks again after "not there").
pub fn on_standby(dest: &Path) -> bool {
    data_dir_of(dest).join("standby.signal").exists()
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

/// `restore_command`'s work: put `file` at `dest` (from the prefetch directory, or the
/// repository, retrying transient errors for `[wal] fetch_retry_seconds`), then make
/// sure the prefetcher works ahead.
pub async fn fetch(config: &Config, file: &WalFile, dest: &Path) -> Result<Fetched, FetchError> {
    // Timeline 1 has no history file; PostgreSQL asks for one anyway, as the parent's,
    // when it promotes onto timeline 2. No archive holds a real one (one planted there
    // would be copied into timeline 2's history), so the repository is not asked.
    if let WalFile::History(name) = file
        && name.get(..8).and_then(|tli| u32::from_str_radix(tli, 16).ok()) == Some(1)
    {
        return Ok(Fetched::Absent);
    }
    let wal_dir = dest.parent().unwrap_or(Path::new("")).to_path_buf();
    let wal_dir = wal_dir.as_path();
    let prefetch_dir = wal_dir.join(super::prefetch::PREFETCH_DIR);
    let prefetching = matches!(file, WalFile::Segment(_)) && config.wal.prefetch > 0;
    if prefetching {
        super::prefetch::want(&prefetch_dir, file);
    }
    use super::prefetch::InFlight;
    let in_flight = match prefetching {
        true => super::prefetch::claim_or_wait(&prefetch_dir, file).await,
        false => InFlight::Unclaimed,
    };
    if let InFlight::Ready(ready) = &in_flight {
        std::fs::rename(ready, dest)
            .map_err(|e| FetchError::Unavailable(anyhow!("cannot move {} into place: {e}", ready.display())))?;
    } else {
        let mut primary = Source::new(None);
        // `[wal] fetch_fallback`: copies asked when the primary does not answer. Only
        // the primary's "absent" counts (a copy may lag behind it).
        let mut fallbacks: Vec<Source> = if config.selected_repository().is_none() {
            config.wal.fetch_fallback.iter().map(|n| Source::new(Some(n))).collect()
        } else {
            Vec::new()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(config.wal.fetch_retry_seconds);
        let mut delay = std::time::Duration::from_millis(250);
        'retry: loop {
            let e = match primary.fetch(config, file, dest).await {
                Ok(true) => break,
                Ok(false) => return Ok(Fetched::Absent),
                Err(e) if crate::pipeline::is_damaged(&e) => return Err(FetchError::Damaged(e)),
                Err(e) if crate::os_error::chain_has::<WrongCluster>(&e) => return Err(FetchError::WrongCluster(e)),
                // Asking again will not bring the key, free the disk, or close files.
                Err(e)
                    if crate::pipeline::is_missing_key(&e)
                        || crate::os_error::chain_has::<LocalWrite>(&e)
                        || crate::os_error::is_out_of_files(&e) =>
                {
                    return Err(FetchError::Unavailable(e));
                }
                Err(e) => e,
            };
            for fallback in &mut fallbacks {
                match fallback.fetch(config, file, dest).await {
                    Ok(true) => {
                        tracing::warn!(
                            "fetched {file} from copy {:?}: the primary repository did not answer ({e:#})",
                            fallback.name.as_deref().unwrap_or_default()
                        );
                        break 'retry;
                    }
                    Ok(false) => {}
                    Err(f) => tracing::debug!(
                        "copy {:?} could not give {file} either: {f:#}",
                        fallback.name.as_deref().unwrap_or_default()
                    ),
                }
            }
            if std::time::Instant::now() + delay > deadline {
                return Err(FetchError::Unavailable(e.context(format!(
                    "still failing after {} s of retries ([wal] fetch_retry_seconds)",
                    config.wal.fetch_retry_seconds
                ))));
            }
            tracing::warn!("fetching {file} failed ({e:#}); retrying in {delay:?}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }
    if prefetching {
        super::prefetch::start(config, file, dest, &prefetch_dir);
    }
    Ok(Fetched::Found)
}

/// A repository wal-fetch reads from: the configured one, or a fallback copy. Opened
/// and bound lazily, so an unreachable one is retried like a fetch.
struct Source {
    /// The copy's name; `None` for the configured repository.
    name: Option<String>,
    opened: Option<(DynStorage, Keyring)>,
}

impl Source {
    fn new(name: Option<&String>) -> Source {
        Source {
            name: name.cloned(),
            opened: None,
        }
    }

    /// `Ok(false)` only if this repository positively says it does not have `file`.
    async fn fetch(&mut self, config: &Config, file: &WalFile, dest: &Path) -> Result<bool> {
        if self.opened.is_none() {
            let settings = match &self.name {
                None => config.repository.clone(),
                Some(name) => config.repository.copy(name)?,
            };
            let storage = storage::open(&settings, &config.cluster).await?;
            // The keyring is bound to repo.json, which proves the repository is there:
            // "absent" counts only from a repository that is (an unmounted volume or a
            // wrong prefix would make every file absent, and recovery end early).
            // A copy may have a key of its own. The file is asked for at the same
            // time (one round trip, not two: the calls at the end of a recovery are
            // mostly for files the archive does not have), and used only once the
            // repository is proven.
            let key = layout::wal_file(file);
            let (bound, got) = tokio::join!(repo::bound_keyring_and_info_for(&settings, &storage), storage.get(&key));
            let (keys, info) = bound?;
            check_same_cluster(dest, &info, &storage.describe())?;
            let placed = place(got, &keys, file, dest).await;
            self.opened = Some((storage, keys));
            return placed;
        }
        let (storage, keys) = self.opened.as_ref().expect("opened above");
        fetch_into(storage, keys, file, dest).await
    }
}

/// Put `file`, as a GET of it came back (`got`), at `dest` through a temporary file.
async fn place(got: storage::Result<bytes::Bytes>, keys: &Keyring, file: &WalFile, dest: &Path) -> Result<bool> {
    let tmp = dest.with_file_name(format!(".{}.pgdr-tmp", file.name()));
    let out = std::fs::File::create(&tmp)
        .map_err(|e| anyhow::Error::new(LocalWrite(format!("cannot create {}: {e}", tmp.display()))))?;
    place_through(got, keys, file, dest, &tmp, out).await
}

/// Fetch one archived file to `dest` (through a temporary file, renamed when whole
/// and authenticated). `Ok(false)` only if storage positively says it is absent.
pub(super) async fn fetch_into(storage: &DynStorage, keys: &Keyring, file: &WalFile, dest: &Path) -> Result<bool> {
    place(storage.get(&layout::wal_file(file)).await, keys, file, dest).await
}

/// The prefetcher's fetch of `file` to `dest`: its temporary file is created
/// exclusively, and a segment a `restore_command` has claimed (or another fetch
/// holds) is left to it: `Ok(None)`.
pub(super) async fn prefetch_into(
    storage: &DynStorage,
    keys: &Keyring,
    file: &WalFile,
    dest: &Path,
) -> Result<Option<bool>> {
    let dir = dest.parent().unwrap_or(Path::new(""));
    let in_flight = super::prefetch::in_flight_path(dir, file.name());
    let local =
        |e: std::io::Error| anyhow::Error::new(LocalWrite(format!("cannot create {}: {e}", in_flight.display())));
    let Some(_claim) = super::prefetch::Claim::take(&in_flight).map_err(local)? else {
        return Ok(None);
    };
    // Downloaded under this process's own name: only this download is renamed in.
    let tmp = super::prefetch::download_path(dir, file.name());
    let out = std::fs::File::create(&tmp)
        .map_err(|e| anyhow::Error::new(LocalWrite(format!("cannot create {}: {e}", tmp.display()))))?;
    let got = storage.get(&layout::wal_file(file)).await;
    place_through(got, keys, file, dest, &tmp, out).await.map(Some)
}

/// `file`, as a GET of it came back (`got`), decoded into `out` (the open temporary
/// file `tmp`), then renamed to `dest`.
async fn place_through(
    got: storage::Result<bytes::Bytes>,
    keys: &Keyring,
    file: &WalFile,
    dest: &Path,
    tmp: &Path,
    out: std::fs::File,
) -> Result<bool> {
    let key = layout::wal_file(file);
    let local =
        |what: &str, e: std::io::Error| anyhow::Error::new(LocalWrite(format!("cannot {what} {}: {e}", tmp.display())));
    let loaded = pipeline::open_whole_to_writer(got, &key, out, keys, pipeline::Verify::Authenticated).await;
    match loaded {
        Ok((mut out, _, _)) => {
            let done = out
                .flush()
                .and_then(|_| out.sync_all())
                .map_err(|e| local("write", e))
                .and_then(|_| {
                    drop(out);
                    std::fs::rename(tmp, dest).map_err(|e| local("move into place", e))
                });
            if done.is_err() {
                let _ = std::fs::remove_file(tmp);
            }
            done.map(|_| true)
        }
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            if crate::storage::is_not_found(&e) {
                Ok(false)
            } else if crate::os_error::is_disk_full(&e) {
                Err(anyhow::Error::new(LocalWrite(format!(
                    "cannot write {}: {e:#}",
                    tmp.display()
                ))))
            } else {
                Err(e)
            }
        }
    }
}

/// The destination in pg_wal could not be written (full, read-only, over quota):
/// asking the repository again will not help, and "absent" would be a lie.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LocalWrite(String);

/// Refuse a repository whose system identifier is not the data directory's (the
/// parent of pg_wal, where PostgreSQL runs restore_command). A data directory whose
/// pg_control cannot be read (not a data directory: a test, a manual call) is not
/// checked.
fn check_same_cluster(dest: &Path, info: &repo::RepoInfo, place: &str) -> Result<()> {
    match crate::postgres::datadir::control_system_identifier(&data_dir_of(dest)) {
        Ok(local) if local != info.system_identifier => Err(anyhow::Error::new(WrongCluster(format!(
            "{place} belongs to system {} (cluster {:?}), but this data directory is system {local} — wal-fetch reads the configuration file only (no PGDR_* overrides): check its [repository] url and cluster",
            info.system_identifier, info.cluster
        )))),
        _ => Ok(()),
    }
}
