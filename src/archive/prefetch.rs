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

/// The in-flight file of segment `name` in `dir`: created exclusively by whoever
/// fetches it (the prefetcher or a `restore_command`), holding that process's pid,
/// removed by it when done. Nobody else writes or renames it.
pub(super) fn in_flight_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.pgdr-tmp"))
}

/// Where the prefetcher downloads `name` before renaming it into place: its own
/// name per process, so that nothing but its download is ever renamed to a segment.
pub(super) fn download_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.{}.pgdr-dl", std::process::id()))
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

/// A held in-flight file (a claim): removed on drop, if it is still this process's.
pub struct Claim(PathBuf);

impl Claim {
    /// Take the in-flight file at `path` if nobody holds it: `Ok(None)` if someone does.
    pub(super) fn take(path: &Path) -> std::io::Result<Option<Claim>> {
        use std::io::Write;
        match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => match f.write_all(std::process::id().to_string().as_bytes()) {
                Ok(()) => Ok(Some(Claim(path.to_path_buf()))),
                // (A full disk: the file is ours, but holds no pid to tell by.)
                Err(e) => {
                    let _ = std::fs::remove_file(path);
                    Err(e)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if holder(&self.0) == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The pid an in-flight file holds (`None`: unreadable, or not written yet).
fn holder(path: &Path) -> Option<i32> {
    let text = std::fs::read(path).ok()?;
    let text = std::str::from_utf8(&text).ok()?;
    text.trim().parse().ok().filter(|pid| *pid > 0)
}

/// Whether `pid` is certainly gone (not merely another user's process).
fn dead(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let gone = unsafe { libc::kill(pid, 0) } != 0;
    gone && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// The segment `file`, as the prefetcher stands with it: in place, being fetched
/// (wait until it is in place, or the fetch ends without it), or claimed now by this
/// call. The in-flight file is created exclusively by whichever comes first, the
/// prefetcher or this call, so a segment is never fetched by both, even while the
/// prefetcher is only starting; one left by a process that died is taken over.
pub async fn claim_or_wait(dir: &Path, file: &WalFile) -> InFlight {
    let ready = dir.join(file.name());
    let tmp = in_flight_path(dir, file.name());
    let deadline = Instant::now() + IN_FLIGHT_WAIT;
    loop {
        if ready.is_file() {
            return InFlight::Ready(ready);
        }
        if Instant::now() > deadline {
            return InFlight::Unclaimed;
        }
        match Claim::take(&tmp) {
            // Placed meanwhile (renamed just before the claim): use it.
            Ok(Some(_)) if ready.is_file() => return InFlight::Ready(ready),
            Ok(Some(claim)) => return InFlight::Claimed(claim),
            Ok(None) => {
                if let Some(pid) = holder(&tmp)
                    && dead(pid)
                {
                    // Taken over, once: if it cannot be removed, fetch unclaimed.
                    if std::fs::remove_file(&tmp).is_err() {
                        return InFlight::Unclaimed;
                    }
                    continue;
                }
                if running(dir).is_none() {
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
    // Segments another process holds (a restore_command fetching it itself): not
    // tried again until replay has moved past them.
    let mut left: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<(String, Result<Option<bool>>)> = JoinSet::new();
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
        left.retain(|name| name.as_str() > wanted.as_str());
        if !archive_ends && failures < MAX_FAILURES {
            for name in window_after(&wanted, segment_size, window) {
                if tasks.len() >= PREFETCH_PARALLEL {
                    break;
                }
                if in_flight.contains(&name) || left.contains(&name) || dir.join(&name).exists() {
                    continue;
                }
                let (storage, keys, path) = (storage.clone(), keys.clone(), dir.join(&name));
                in_flight.insert(name.clone());
                tasks.spawn(async move {
                    let fetched = match WalFile::parse(&name) {
                        Some(file) => super::fetch::prefetch_into(&storage, &keys, &file, &path).await,
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
                    Ok(Some(true)) => failures = 0,
                    // The archive ends here (for now: a standby asks again later).
                    Ok(Some(false)) => archive_ends = true,
                    // Claimed by a restore_command: it fetches it itself.
                    Ok(None) => {
                        left.insert(name);
                    }
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

/// What a prefetcher or `restore_command` that died left: in-flight files whose
/// holder is gone (or that hold no pid: an older pgdr's downloads), and downloads
/// of processes that are gone. A live holder's are left alone.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        let stale = if name.ends_with(".pgdr-tmp") {
            holder(&e.path()).is_none_or(dead)
        } else if let Some(rest) = name.strip_suffix(".pgdr-dl") {
            rest.rsplit('.')
                .next()
                .and_then(|p| p.parse::<i32>().ok())
                .is_none_or(dead)
        } else {
            false
        };
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-flight file decides who fetches a segment: a claim by `restore_command`
    /// when nobody has it (the prefetcher then leaves it alone), a wait while a live
    /// process holds it, a takeover of one whose holder died; a claim is removed only
    /// by its holder, and the start-up clean-up spares live holders. CI found the race
    /// the claim closes: a `restore_command` that looked while the prefetcher was only
    /// starting fetched a segment the prefetcher fetched too. Review found the one the
    /// holder's pid closes: a claim removed under its holder let a download be renamed
    /// over another process's file.
    #[tokio::test]
    async fn one_fetch_per_segment_between_restore_command_and_the_prefetcher() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let seg = WalFile::Segment("000000010000000000000003".into());
        let tmp = in_flight_path(dir, seg.name());
        let me = std::process::id() as i32;

        // Nobody has it: claimed, with this process's pid, and given back on drop.
        let InFlight::Claimed(claim) = claim_or_wait(dir, &seg).await else {
            panic!("not claimed")
        };
        assert_eq!(holder(&tmp), Some(me));
        // The prefetcher's exclusive take now fails: it leaves the segment alone.
        assert!(Claim::take(&tmp).unwrap().is_none());
        drop(claim);
        assert!(!tmp.exists());

        // The prefetcher (this process stands in for it) holds it and downloads:
        // restore_command waits until the segment is in place.
        std::fs::write(dir.join(".lock"), me.to_string()).unwrap();
        let held = Claim::take(&tmp).unwrap().expect("free");
        let placed = dir.join(seg.name());
        let placed2 = placed.clone();
        let download = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::write(&placed2, b"segment").unwrap();
            drop(held);
        });
        match claim_or_wait(dir, &seg).await {
            InFlight::Ready(p) => assert_eq!(p, placed),
            _ => panic!("did not wait for the download"),
        }
        download.await.unwrap();
        std::fs::remove_file(&placed).unwrap();

        // A claim whose holder died (a pid no process has) is taken over, and the
        // start-up clean-up removes such files but not a live holder's.
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        std::fs::write(&tmp, dead.to_string()).unwrap();
        let download = dir.join(format!(".{}.{dead}.pgdr-dl", seg.name()));
        std::fs::write(&download, b"half").unwrap();
        let live = in_flight_path(dir, "000000010000000000000004");
        std::fs::write(&live, me.to_string()).unwrap();
        remove_stale_temporaries(dir);
        assert!(!tmp.exists() && !download.exists() && live.exists());
        std::fs::write(&tmp, dead.to_string()).unwrap();
        assert!(matches!(claim_or_wait(dir, &seg).await, InFlight::Claimed(_)));
        // Someone else's claim is not removed by a guard that did not make it.
        std::fs::write(&tmp, dead.to_string()).unwrap();
        drop(Claim(tmp.clone()));
        assert!(tmp.exists(), "a guard removed a claim it did not hold");
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
