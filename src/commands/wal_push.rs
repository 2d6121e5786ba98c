//! `pgdr wal-push %p` — PostgreSQL's `archive_command`. Exit 0 only once the file is
//! durably in the repository.
//!
//! To keep up with bursts (like pgBackRest's asynchronous archiving and WAL-G's
//! background uploader), a call also makes sure a detached pusher is at work on the
//! segments PostgreSQL has already marked `.ready`; the pusher stores them in parallel
//! (`[wal] push_parallel`) and leaves a note per stored file. When PostgreSQL then asks
//! for a file that has a note, the answer is immediate. A note is written only after
//! the store succeeded, and it names the exact file (device, inode, size, mtime), so
//! nothing is ever reported archived that was not stored.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::task::JoinSet;

use super::Ctx;
use crate::cli::{WalPushAheadArgs, WalPushArgs};
use crate::exit::Exit;
use crate::pipeline;
use crate::postgres::WalFile;
use crate::repo::{Repo, layout};
use crate::storage::{PutMode, StorageError};
use crate::usage;

/// Offset of the system identifier in a segment's first (long) page header.
const SYSID_OFFSET: usize = 24;
/// How long a call waits for the pusher to store the file it asks about.
const WAIT_FOR_PUSHER: Duration = Duration::from_secs(60);

pub async fn run(ctx: &Ctx, args: WalPushArgs) -> Result<Exit> {
    let path = args.path;
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
    let spool = match ctx.config.spool_dir(&wal_dir) {
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
            return Ok(Exit::Success);
        }
        // A burst (more files ready after this one): let the pusher store them all in
        // parallel, this one first, and wait for its note.
        if ctx.config.wal.push_parallel > 1 && !ready_after(&wal_dir, &file).is_empty() {
            spool.start_pusher(ctx, &wal_dir);
            if spool.wait_for_pusher(file.name(), &print) {
                spool.forget(file.name());
                return Ok(Exit::Success);
            }
            // The pusher could not store it: do it here, and report why if it fails.
        }
    }
    let repo = Repo::open(&ctx.config).await?;
    push_one(&repo, &file, &path).await?;
    if let WalFile::History(name) = &file {
        declare_if_new_primary(&repo, name, &wal_dir).await?;
    }
    Ok(Exit::Success)
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

/// The detached pusher: store every `.ready` file in parallel until none is left.
pub async fn push_ahead(ctx: &Ctx, args: WalPushAheadArgs) -> Result<Exit> {
    let spool = Spool::new(ctx.config.spool_dir(&args.wal_dir)?);
    if !spool.claim_pusher() {
        return Ok(Exit::Success); // another pusher is at work
    }
    let began = Instant::now();
    let repo = Repo::open(&ctx.config).await?;
    let parallel = ctx.config.wal.push_parallel.max(1) as usize;
    let mut tasks: JoinSet<(String, Result<()>)> = JoinSet::new();
    let mut in_flight = std::collections::HashSet::new();
    let mut failed = std::collections::HashSet::new();
    // Stored in this run: PostgreSQL may not have marked them done yet.
    let mut done = std::collections::HashSet::new();
    let mut idle_rescans = 0;
    loop {
        // Only as many as there are free slots are looked at closely (a burst leaves
        // hundreds ready, and this runs after every stored file).
        let ready: Vec<WalFile> = ready_files(&args.wal_dir)
            .into_iter()
            .filter(|f| !in_flight.contains(f.name()) && !failed.contains(f.name()) && !done.contains(f.name()))
            .filter(|f| Fingerprint::of(&args.wal_dir.join(f.name())).is_ok_and(|p| !spool.noted(f.name(), &p)))
            .take(parallel.saturating_sub(tasks.len()))
            .collect();
        for file in ready {
            let repo = repo.clone();
            let path = args.wal_dir.join(file.name());
            let spool = spool.clone();
            in_flight.insert(file.name().to_string());
            tasks.spawn(async move {
                let name = file.name().to_string();
                let result = async {
                    let print = Fingerprint::of(&path)?;
                    push_one(&repo, &file, &path).await?;
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
    eprintln!(
        "{} pusher {}: stored {} file(s) in {:.2} s, {} failed, peak RSS {} KiB",
        chrono::Utc::now().to_rfc3339(),
        std::process::id(),
        done.len(),
        began.elapsed().as_secs_f64(),
        failed.len(),
        peak_rss_kib()
    );
    Ok(Exit::Success)
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
        Err(e) if matches!(e.downcast_ref::<StorageError>(), Some(StorageError::AlreadyExists(_))) => {
            compare_existing(repo, file, path).await
        }
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
    use std::io::Read;
    let mut header = [0u8; SYSID_OFFSET + 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| anyhow!("cannot read the header of {}: {e}", path.display()))?;
    let sysid = u64::from_le_bytes(header[SYSID_OFFSET..].try_into().expect("8 bytes")).to_string();
    if sysid != repo.info.system_identifier {
        return Err(usage!(
            "{file} belongs to the cluster with system identifier {sysid}, but the repository at {} belongs to {} — check [repository] url and cluster",
            repo.storage.describe(),
            repo.info.system_identifier
        ));
    }
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

fn ready_after(wal_dir: &Path, file: &WalFile) -> Vec<WalFile> {
    ready_files(wal_dir)
        .into_iter()
        .filter(|f| f.name() > file.name())
        .collect()
}

/// Identifies one exact file: a recycled or rewritten segment never matches.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint(String);

impl Fingerprint {
    fn of(path: &Path) -> Result<Fingerprint> {
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
struct Spool {
    dir: PathBuf,
}

/// This process's peak resident memory, for the pusher's log line.
fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_maxrss
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

impl Spool {
    fn new(dir: PathBuf) -> Spool {
        Spool { dir }
    }

    fn note_path(&self, name: &str) -> PathBuf {
        self.dir.join("pushed").join(name)
    }

    fn noted(&self, name: &str, print: &Fingerprint) -> bool {
        std::fs::read_to_string(self.note_path(name)).is_ok_and(|s| s.trim() == print.0)
    }

    fn note(&self, name: &str, print: &Fingerprint) {
        // Best effort: without the note the file is simply pushed (and compared) again.
        let dir = self.dir.join("pushed");
        let _ = std::fs::create_dir_all(&dir);
        let tmp = dir.join(format!(".{name}.tmp"));
        if std::fs::write(&tmp, &print.0).is_ok() {
            let _ = std::fs::rename(&tmp, self.note_path(name));
        }
    }

    fn forget(&self, name: &str) {
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
        if !alive(pid) {
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
    fn wait_for_pusher(&self, name: &str, print: &Fingerprint) -> bool {
        let deadline = Instant::now() + WAIT_FOR_PUSHER;
        while self.pusher_pid().is_some() && Instant::now() < deadline {
            if self.noted(name, print) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.noted(name, print)
    }

    /// Become the pusher: the lock file names this process (the starter wrote it), or
    /// is created now, replacing a dead holder's.
    fn claim_pusher(&self) -> bool {
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

    fn release_pusher(&self) {
        if std::fs::read_to_string(self.lock_path()).is_ok_and(|p| p.trim() == std::process::id().to_string()) {
            let _ = std::fs::remove_file(self.lock_path());
        }
    }

    fn start_pusher(&self, ctx: &Ctx, wal_dir: &Path) {
        if self.pusher_pid().is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let wal_dir = std::path::absolute(wal_dir).unwrap_or_else(|_| wal_dir.to_path_buf());
        let mut cmd = std::process::Command::new(exe);
        if let Some(config) = ctx.config.file() {
            cmd.arg("--config").arg(config);
        }
        let _ = std::fs::create_dir_all(&self.dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pusher.log"));
        cmd.args(["wal-push-ahead", "--wal-dir"])
            .arg(&wal_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(
                log.map(std::process::Stdio::from)
                    .unwrap_or_else(|_| std::process::Stdio::null()),
            );
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe; it detaches the pusher from PostgreSQL's
        // archiver so that it outlives this short process.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        // The lock names the child before it runs, so the next call already waits
        // for it instead of pushing the same file twice.
        if let Ok(child) = cmd.spawn() {
            let _ = std::fs::remove_file(self.lock_path());
            let _ = std::fs::write(self.lock_path(), child.id().to_string());
        }
    }
}
