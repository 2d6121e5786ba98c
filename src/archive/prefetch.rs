//! The WAL prefetcher: a detached `pgdr wal-prefetch` keeps the next segments fetched,
//! in parallel, into `pg_wal/.pgdr-prefetch/`, so that replay is not bound by one
//! round trip per segment: each `restore_command` call is then a local rename.
//!
//! - `restore_command` (`fetch`) records the newest segment PostgreSQL asked for in
//!   `.wanted`, takes a prefetched file when there is one, waits for one the
//!   prefetcher is fetching right now (never fetching the same segment twice), and
//!   starts a prefetcher when none runs.
//! - The prefetcher keeps the `[wal] prefetch` segments after `.wanted` fetched, as
//!   replay moves on, and drops those replay has passed. It stops at the archive's
//!   end (a file the repository does not have), after repeated errors, or once
//!   nothing was asked for a while (recovery ended or paused); the next
//!   `restore_command` call starts another.
//!
//! A prefetched file is whole, authenticated and on disk (fsync) before it gets its
//! name: after a crash, a name in the directory never stands for a torn file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::postgres::wal::LongPageHeader;
use crate::postgres::{Segment, WalFile};
use crate::repo;
use crate::storage;

pub const PREFETCH_DIR: &str = ".pgdr-prefetch";
/// Fetches at once: enough to hide a round trip of tens of milliseconds behind the
/// others, few enough that decryption and decompression leave replay a core.
const PREFETCH_PARALLEL: usize = 4;
/// The newest segment asked for, written by each `restore_command` call.
const WANTED: &str = ".wanted";
/// A prefetcher nobody asked anything of for this long stops.
const IDLE: Duration = Duration::from_secs(30);
/// Consecutive failed fetches after which a prefetcher stops (`restore_command`
/// fetches for itself, and reports what is wrong).
const MAX_FAILURES: u32 = 3;
/// How long `restore_command` waits for a segment the prefetcher is fetching.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(60);

/// Record that PostgreSQL asked for `file`: the prefetcher keeps the segments after
/// it fetched.
pub fn want(dir: &Path, file: &WalFile) {
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // A note the prefetcher may miss (a full disk): then it only fetches less ahead.
    // Nothing half-written stays behind.
    let tmp = dir.join(".wanted.tmp");
    match std::fs::write(&tmp, file.name()) {
        Ok(()) => {
            let _ = std::fs::rename(&tmp, dir.join(WANTED));
        }
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// The prefetcher's pid, when one is at work for `dir`.
fn running(dir: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(dir.join(".lock"))
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    // SAFETY: kill with signal 0 only checks for existence; a pid of another user
    // (EPERM) is not our prefetcher.
    (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// The temporary file a fetch of `name` into `dir` writes before it is whole.
pub(super) fn in_flight_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.pgdr-tmp"))
}

/// What `restore_command` finds for a segment in the prefetch directory.
pub enum InFlight {
    /// Prefetched: rename it into place.
    Ready(PathBuf),
    /// Nobody has it: this call claimed it (the prefetcher leaves it alone) and
    /// fetches it itself; the claim goes when the guard is dropped.
    Claimed(Claim),
    /// No prefetcher at work, or the wait ran out: fetch it without a claim.
    Unclaimed,
}

/// A `restore_command`'s claim on a segment: its in-flight file holds the claimer's
/// pid (a prefetcher's holds WAL bytes), removed on drop.
pub struct Claim(PathBuf);

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The pid in a claim's in-flight file, if it is a claim (not a download).
fn claimer(tmp: &Path) -> Option<i32> {
    let text = std::fs::read(tmp).ok()?;
    let text = std::str::from_utf8(&text).ok()?;
    (!text.is_empty() && text.len() <= 10)
        .then(|| text.parse().ok())
        .flatten()
}

/// The segment `file`, as the prefetcher stands with it: in place, being fetched
/// (wait until it is in place, or the fetch ends without it), or claimed now by this
/// call. The in-flight file is created exclusively by whichever comes first, the
/// prefetcher's download or this claim, so a segment is never fetched by both, even
/// while the prefetcher is only starting.
pub async fn claim_or_wait(dir: &Path, file: &WalFile) -> InFlight {
    let ready = dir.join(file.name());
    let tmp = in_flight_path(dir, file.name());
    let deadline = Instant::now() + IN_FLIGHT_WAIT;
    loop {
        if ready.is_file() {
            return InFlight::Ready(ready);
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(mut f) => {
                use std::io::Write;
                let claim = Claim(tmp.clone());
                return match write!(f, "{}", std::process::id()) {
                    Ok(()) if !ready.is_file() => InFlight::Claimed(claim),
                    // Placed meanwhile (the download renamed just before the claim).
                    Ok(()) => InFlight::Ready(ready),
                    Err(_) => InFlight::Unclaimed,
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A claim by a fetch that died is taken over.
                if let Some(pid) = claimer(&tmp)
                    // SAFETY: kill with signal 0 only checks for existence.
                    && unsafe { libc::kill(pid, 0) } != 0
                {
                    let _ = std::fs::remove_file(&tmp);
                    continue;
                }
                if running(dir).is_none() || Instant::now() > deadline {
                    return match ready.is_file() {
                        true => InFlight::Ready(ready),
                        false => InFlight::Unclaimed,
                    };
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(_) => return InFlight::Unclaimed,
        }
    }
}

/// Start a detached `pgdr wal-prefetch` for the segments after `file`, unless one is
/// running.
pub fn start(config: &Config, file: &WalFile, dest: &Path, dir: &Path) {
    let Ok(header) = LongPageHeader::read(dest) else { return };
    let seg_size = header.segment_size as u64;
    if !seg_size.is_power_of_two() || std::fs::create_dir_all(dir).is_err() || running(dir).is_some() {
        return;
    }
    let Some(mut cmd) = crate::process::pgdr_again(config) else {
        return;
    };
    cmd.args([
        "wal-prefetch",
        "--after",
        file.name(),
        "--segment-size",
        &seg_size.to_string(),
        "--dir",
    ])
    .arg(dir);
    if let Ok(child) = crate::process::spawn_detached(cmd, None) {
        let _ = std::fs::write(dir.join(".lock"), child.id().to_string());
    }
}

/// The detached prefetcher's work: keep the `[wal] prefetch` segments (of
/// `segment_size`) after the newest one asked for (at first `after`) fetched into
/// `dir`, in parallel, until the archive ends, fetches keep failing, or nothing is
/// asked for `IDLE`.
pub async fn run(config: &Config, after: &str, segment_size: u64, dir: &Path) -> Result<()> {
    if Segment::parse(after, segment_size).is_none() {
        return Ok(());
    }
    let storage = storage::open(&config.repository, &config.cluster).await?;
    let keys = repo::bound_keyring(config, &storage).await?;
    remove_stale_temporaries(dir);
    let window = config.wal.prefetch as usize;
    let mut wanted = after.to_string();
    let mut asked_at = Instant::now();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<(String, Result<bool>)> = JoinSet::new();
    let mut archive_ends = false;
    let mut failures = 0;
    loop {
        if let Ok(now) = std::fs::read_to_string(dir.join(WANTED))
            && Segment::parse(now.trim(), segment_size).is_some()
            && now.trim() != wanted
        {
            wanted = now.trim().to_string();
            asked_at = Instant::now();
        }
        drop_passed(dir, &wanted, &in_flight);
        if !archive_ends && failures < MAX_FAILURES {
            for name in window_after(&wanted, segment_size, window) {
                if tasks.len() >= PREFETCH_PARALLEL {
                    break;
                }
                if in_flight.contains(&name) || dir.join(&name).exists() {
                    continue;
                }
                let (storage, keys, path) = (storage.clone(), keys.clone(), dir.join(&name));
                in_flight.insert(name.clone());
                tasks.spawn(async move {
                    let fetched = match WalFile::parse(&name) {
                        // Claimed by a restore_command (Ok(None)): it fetches it itself.
                        Some(file) => super::fetch::prefetch_into(&storage, &keys, &file, &path)
                            .await
                            .map(|f| f.unwrap_or(true)),
                        None => Err(anyhow!("{name} is not a WAL file name")),
                    };
                    (name, fetched)
                });
            }
        }
        if tasks.is_empty() && (archive_ends || failures >= MAX_FAILURES || asked_at.elapsed() > IDLE) {
            break;
        }
        tokio::select! {
            Some(done) = tasks.join_next() => {
                let Ok((name, fetched)) = done else { continue };
                in_flight.remove(&name);
                match fetched {
                    Ok(true) => failures = 0,
                    // The archive ends here (for now: a standby asks again later).
                    Ok(false) => archive_ends = true,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!("prefetching {name}: {e:#}");
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    let _ = std::fs::remove_file(dir.join(".lock"));
    Ok(())
}

/// The `window` segment names after `wanted`.
fn window_after(wanted: &str, segment_size: u64, window: usize) -> Vec<String> {
    let Some(mut seg) = Segment::parse(wanted, segment_size) else {
        return Vec::new();
    };
    (0..window)
        .map(|_| {
            seg = seg.next();
            seg.name(segment_size)
        })
        .collect()
}

/// Remove the prefetched files replay has passed: names before `wanted` (an older
/// timeline's sort before it too). Not `wanted` itself: `restore_command` may be
/// taking it right now.
fn drop_passed(dir: &Path, wanted: &str, in_flight: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if WalFile::parse(&name).is_some() && name.as_str() < wanted && !in_flight.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Half-written files of a prefetcher that died: nobody is fetching them.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".pgdr-tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-flight file decides who fetches a segment: a claim by `restore_command`
    /// when nobody has it (the prefetcher then leaves it alone), a wait while the
    /// prefetcher downloads it, a claim of a dead fetch taken over. CI found the race
    /// this closes: a `restore_command` that looked while the prefetcher was only
    /// starting fetched a segment the prefetcher fetched too.
    #[tokio::test]
    async fn one_fetch_per_segment_between_restore_command_and_the_prefetcher() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let seg = WalFile::Segment("000000010000000000000003".into());
        let tmp = in_flight_path(dir, seg.name());

        // Nobody has it: claimed, with this process's pid, and given back on drop.
        let InFlight::Claimed(claim) = claim_or_wait(dir, &seg).await else {
            panic!("not claimed")
        };
        assert_eq!(claimer(&tmp), Some(std::process::id() as i32));
        // The prefetcher's exclusive create now fails: it leaves the segment alone.
        let err = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp);
        assert_eq!(err.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        drop(claim);
        assert!(!tmp.exists());

        // The prefetcher (this process stands in for it) is downloading: wait for it.
        std::fs::write(dir.join(".lock"), std::process::id().to_string()).unwrap();
        std::fs::write(&tmp, b"\x10\xd1\x05\x00 WAL bytes, not a pid").unwrap();
        let placed = dir.join(seg.name());
        let (tmp2, placed2) = (tmp.clone(), placed.clone());
        let download = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::rename(&tmp2, &placed2).unwrap();
        });
        match claim_or_wait(dir, &seg).await {
            InFlight::Ready(p) => assert_eq!(p, placed),
            _ => panic!("did not wait for the download"),
        }
        download.await.unwrap();
        std::fs::remove_file(&placed).unwrap();

        // A claim left by a fetch that died (a pid no process has) is taken over.
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        std::fs::write(&tmp, dead.to_string()).unwrap();
        assert!(matches!(claim_or_wait(dir, &seg).await, InFlight::Claimed(_)));
    }

    #[test]
    fn the_window_follows_the_newest_segment_asked_for() {
        let size = 16 * 1024 * 1024;
        assert_eq!(
            window_after("0000000100000000000000FE", size, 3),
            vec![
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        assert!(window_after("not a segment", size, 3).is_empty());
    }
}
