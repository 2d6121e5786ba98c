//! The async-archive spool (`pg_wal/.pgdr-spool` by default): notes of files the
//! detached pusher stored ahead (`pushed/<name>`, naming the exact file: device,
//! inode, size, mtime), the pusher's pid lock, and the pusher itself.
//!
//! To keep up with bursts (like pgBackRest's asynchronous archiving and WAL-G's
//! background uploader), a `wal-push` call makes sure a detached pusher is at work on
//! the segments PostgreSQL has already marked `.ready`; the pusher stores them in
//! parallel (`[wal] push_parallel`). When PostgreSQL then asks for a file that has a
//! note, the answer is immediate. A note is written only after the store succeeded,
//! so nothing is ever reported archived that was not stored.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::postgres::WalFile;
use crate::repo::Repo;

/// How long a call waits for the pusher to store the file it asks about.
const WAIT_FOR_PUSHER: Duration = Duration::from_secs(60);

/// The detached pusher's work: store every `.ready` file of `wal_dir` in parallel
/// until none is left, noting each in the spool; one log line at the end (its stderr
/// is the spool's pusher.log).
pub async fn drain(config: &Config, wal_dir: &Path) -> Result<()> {
    let spool = Spool::new(config.spool_dir(wal_dir)?);
    if !spool.claim_pusher() {
        return Ok(()); // another pusher is at work
    }
    let began = Instant::now();
    let repo = Repo::open(config).await?;
    let copies = super::replicate::SyncCopies::open(config).await;
    let parallel = config.wal.push_parallel.max(1) as usize;
    let mut tasks: JoinSet<(String, Result<()>)> = JoinSet::new();
    let mut in_flight = std::collections::HashSet::new();
    let mut failed = std::collections::HashSet::new();
    // Stored in this run: PostgreSQL may not have marked them done yet.
    let mut done = std::collections::HashSet::new();
    let mut idle_rescans = 0;
    loop {
        // Only as many as there are free slots are looked at closely (a burst leaves
        // hundreds ready, and this runs after every stored file).
        let ready: Vec<WalFile> = ready_files(wal_dir)
            .into_iter()
            .filter(|f| !in_flight.contains(f.name()) && !failed.contains(f.name()) && !done.contains(f.name()))
            .filter(|f| Fingerprint::of(&wal_dir.join(f.name())).is_ok_and(|p| !spool.noted(f.name(), &p)))
            .take(parallel.saturating_sub(tasks.len()))
            .collect();
        for file in ready {
            let repo = repo.clone();
            let copies = copies.clone();
            let path = wal_dir.join(file.name());
            let spool = spool.clone();
            in_flight.insert(file.name().to_string());
            tasks.spawn(async move {
                let name = file.name().to_string();
                let result = async {
                    let print = Fingerprint::of(&path)?;
                    super::push::push_one(&repo, &file, &path).await?;
                    copies.replicate(&repo, &file).await;
                    spool.note(file.name(), &print);
                    Ok(())
                }
                .await;
                (name, result)
            });
        }
        match tasks.join_next().await {
            Some(Ok((name, result))) => {
                in_flight.remove(&name);
                if result.is_ok() {
                    done.insert(name.clone());
                }
                if let Err(e) = result {
                    // The foreground call will try again and report it to PostgreSQL.
                    tracing::warn!("pushing {name} ahead: {e:#}");
                    failed.insert(name);
                }
                idle_rescans = 0;
            }
            Some(Err(e)) => return Err(anyhow!("pusher task failed: {e}")),
            None => {
                // Nothing in flight and nothing ready: linger briefly for new segments.
                idle_rescans += 1;
                if idle_rescans > 10 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    spool.release_pusher();
    // Its stderr is the spool's pusher.log: one line per run, for the operator.
    let (peak_rss, cpu) = own_usage();
    eprintln!(
        "{} pusher {}: stored {} file(s) in {:.2} s, {} failed, CPU {cpu:.2} s, peak RSS {peak_rss} KiB",
        chrono::Utc::now().to_rfc3339(),
        std::process::id(),
        done.len(),
        began.elapsed().as_secs_f64(),
        failed.len(),
    );
    Ok(())
}

/// Files PostgreSQL has marked ready for archiving, oldest first.
fn ready_files(wal_dir: &Path) -> Vec<WalFile> {
    let Ok(entries) = std::fs::read_dir(wal_dir.join("archive_status")) else {
        return Vec::new();
    };
    let mut ready: Vec<WalFile> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            WalFile::parse(name.strip_suffix(".ready")?)
        })
        .filter(|f| !matches!(f, WalFile::History(_)))
        .collect();
    ready.sort();
    ready
}

pub fn ready_after(wal_dir: &Path, file: &WalFile) -> Vec<WalFile> {
    ready_files(wal_dir)
        .into_iter()
        .filter(|f| f.name() > file.name())
        .collect()
}

/// Identifies one exact file: a recycled or rewritten segment never matches.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of(path: &Path) -> Result<Fingerprint> {
        let m = std::fs::metadata(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        Ok(Fingerprint(format!(
            "{}:{}:{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        )))
    }
}

/// The spool: notes of files stored ahead (`pushed/<name>`), and the pusher's lock.
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// This process's peak resident memory, for the pusher's log line.
/// This process's peak RSS (KiB) and CPU time (user + system, seconds) so far.
fn own_usage() -> (i64, f64) {
    // SAFETY: getrusage fills the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (usage.ru_maxrss, secs(usage.ru_utime) + secs(usage.ru_stime))
}

impl Spool {
    pub fn new(dir: PathBuf) -> Spool {
        Spool { dir }
    }

    fn note_path(&self, name: &str) -> PathBuf {
        self.dir.join("pushed").join(name)
    }

    pub fn noted(&self, name: &str, print: &Fingerprint) -> bool {
        std::fs::read_to_string(self.note_path(name)).is_ok_and(|s| s.trim() == print.0)
    }

    pub fn note(&self, name: &str, print: &Fingerprint) {
        // Best effort: without the note the file is simply pushed (and compared) again.
        let dir = self.dir.join("pushed");
        let _ = std::fs::create_dir_all(&dir);
        let tmp = dir.join(format!(".{name}.tmp"));
        if std::fs::write(&tmp, &print.0).is_ok() {
            let _ = std::fs::rename(&tmp, self.note_path(name));
        }
    }

    pub fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.note_path(name));
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("pusher.pid")
    }

    /// The running pusher's pid. A lock naming a process that is not pgdr's own
    /// pusher (planted, or a recycled pid) is ignored with a warning: otherwise every
    /// wal-push would wait for a pusher that never notes anything, while pg_wal fills.
    fn pusher_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.lock_path()).ok()?.trim().parse().ok()?;
        if !crate::process::exists(pid) {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = cmdline.split(|b| *b == 0).any(|a| a == b"wal-push-ahead")
            && std::fs::read_link(format!("/proc/{pid}/exe")).ok() == std::env::current_exe().ok();
        if !ours {
            tracing::warn!(
                "ignoring {}: process {pid} is not pgdr's pusher",
                self.lock_path().display()
            );
            return None;
        }
        Some(pid)
    }

    /// While a pusher runs, wait for it to note `name`.
    pub async fn wait_for_pusher(&self, name: &str, print: &Fingerprint) -> bool {
        let deadline = Instant::now() + WAIT_FOR_PUSHER;
        while self.pusher_pid().is_some() && Instant::now() < deadline {
            if self.noted(name, print) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.noted(name, print)
    }

    /// Become the pusher: the lock file names this process (the starter wrote it), or
    /// is created now, replacing a dead holder's.
    pub fn claim_pusher(&self) -> bool {
        let _ = std::fs::create_dir_all(&self.dir);
        let me = std::process::id().to_string();
        if std::fs::read_to_string(self.lock_path()).is_ok_and(|p| p.trim() == me) {
            return true;
        }
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.lock_path())
            {
                Ok(mut f) => {
                    use std::io::Write;
                    return f.write_all(me.as_bytes()).is_ok();
                }
                Err(_) => {
                    if self.pusher_pid().is_some() {
                        return false;
                    }
                    let _ = std::fs::remove_file(self.lock_path());
                }
            }
        }
        false
    }

    pub fn release_pusher(&self) {
        if std::fs::read_to_string(self.lock_path()).is_ok_and(|p| p.trim() == std::process::id().to_string()) {
            let _ = std::fs::remove_file(self.lock_path());
        }
    }

    /// Make sure a detached pusher is at work on the `.ready` files of `wal_dir`.
    pub fn start_pusher(&self, config: &Config, wal_dir: &Path) {
        if self.pusher_pid().is_some() {
            return;
        }
        let Some(mut cmd) = crate::process::pgdr_again(config) else {
            return;
        };
        let wal_dir = std::path::absolute(wal_dir).unwrap_or_else(|_| wal_dir.to_path_buf());
        let _ = std::fs::create_dir_all(&self.dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pusher.log"))
            .ok();
        cmd.args(["wal-push-ahead", "--wal-dir"]).arg(&wal_dir);
        // The lock names the child before it runs, so the next call already waits
        // for it instead of pushing the same file twice.
        if let Ok(child) = crate::process::spawn_detached(cmd, log) {
            let _ = std::fs::remove_file(self.lock_path());
            let _ = std::fs::write(self.lock_path(), child.id().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spool's states: no note → noted (this exact file) → forgotten; a rewritten
    /// file under the same name is not noted; the pusher lock is claimed once and
    /// released only by its holder; a stale lock of a dead process is taken over.
    #[test]
    fn spool_state_machine() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::new(d.path().join("spool"));
        let seg = d.path().join("000000010000000000000001");
        std::fs::write(&seg, b"first").unwrap();
        let print = Fingerprint::of(&seg).unwrap();
        assert!(!spool.noted("000000010000000000000001", &print));
        spool.note("000000010000000000000001", &print);
        assert!(spool.noted("000000010000000000000001", &print));
        // Recycled: same name, another file.
        std::fs::remove_file(&seg).unwrap();
        std::fs::write(&seg, b"second, longer").unwrap();
        let other = Fingerprint::of(&seg).unwrap();
        assert!(!spool.noted("000000010000000000000001", &other));
        spool.forget("000000010000000000000001");
        assert!(!spool.noted("000000010000000000000001", &print));

        assert!(spool.claim_pusher());
        assert!(spool.claim_pusher(), "the holder may claim again");
        spool.release_pusher();
        assert!(!spool.lock_path().exists());
        // A lock naming a pid that does not run is stale.
        std::fs::write(spool.lock_path(), "999999999").unwrap();
        assert!(spool.pusher_pid().is_none());
        assert!(spool.claim_pusher());
        assert_eq!(
            std::fs::read_to_string(spool.lock_path()).unwrap(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn ready_files_in_order_without_histories() {
        let d = tempfile::tempdir().unwrap();
        let status = d.path().join("archive_status");
        std::fs::create_dir(&status).unwrap();
        for n in [
            "000000010000000000000003.ready",
            "000000010000000000000002.ready",
            "000000010000000000000001.done",
            "00000002.history.ready",
            "junk.ready",
        ] {
            std::fs::write(status.join(n), b"").unwrap();
        }
        let names: Vec<String> = ready_files(d.path()).iter().map(|f| f.name().to_string()).collect();
        assert_eq!(names, ["000000010000000000000002", "000000010000000000000003"]);
        let file = WalFile::parse("000000010000000000000002").unwrap();
        assert_eq!(ready_after(d.path(), &file).len(), 1);
    }
}
