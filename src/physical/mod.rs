//! Physical backups: copy a data directory between `pg_backup_start` and
//! `pg_backup_stop` into bundles with parallel workers, wait for the WAL the backup
//! needs to reach the archive, and restore it — in parallel, every file checked —
//! with the recovery settings for a point-in-time target.

pub mod basebackup;
pub mod bundle;
pub mod digest;
pub mod incremental;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::future::try_join_all;

use crate::pipeline::{self, ObjectRecord};
use crate::postgres::datadir::{self, FileToCopy, Listing};
use crate::postgres::{Segment, WalFile};
use crate::repo::manifest::{FileRecord, PhysicalInfo};
use crate::repo::{Repo, archive, layout};
use crate::storage::PutMode;
use bundle::{BundleSink, BundleSource, Target};

/// The control file, which a backup copies last.
const CONTROL_FILE: &str = "global/pg_control";
/// Plaintext bytes after which a bundle is closed.
const BUNDLE_SIZE: u64 = 64 << 20;
/// Files larger than this are stored as pieces of this size.
const PIECE_SIZE: u64 = 64 << 20;

/// Copy the listed files (or parts of files) into bundles under `label`, `jobs` at a
/// time.
pub async fn copy_files(
    repo: &Repo,
    label: &crate::repo::BackupLabel,
    listed: &[FileToCopy],
    jobs: usize,
    progress: Arc<AtomicU64>,
) -> Result<(Vec<FileRecord>, Vec<ObjectRecord>)> {
    // Large files go as pieces, so one big relation does not serialise the backup
    // (or the restore) behind a single worker. Largest first: small files fill the
    // last bundles.
    let mut files = Vec::with_capacity(listed.len());
    for f in listed {
        if let Some(extents) = &f.extents {
            files.extend(extent_pieces(f, extents));
            continue;
        }
        let end = f.len.map(|len| f.start + len);
        let mut start = f.start;
        while end.unwrap_or(f.size).saturating_sub(start) > PIECE_SIZE {
            files.push(FileToCopy {
                start,
                len: Some(PIECE_SIZE),
                size: PIECE_SIZE,
                ..f.clone()
            });
            start += PIECE_SIZE;
        }
        files.push(FileToCopy {
            start,
            len: end.map(|e| e - start),
            size: end.unwrap_or(f.size).saturating_sub(start),
            ..f.clone()
        });
    }
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    // pg_control is copied after every other file, in a bundle of its own: a backup
    // taken on a standby ends where the copied pg_control's minimum recovery point
    // says, which must be past every change in the other files (pg_basebackup, too,
    // sends it last).
    let (last, files): (Vec<FileToCopy>, Vec<FileToCopy>) = files.into_iter().partition(|f| f.path == CONTROL_FILE);
    let queue = Arc::new(Mutex::new(VecDeque::from(files)));
    let records = Arc::new(Mutex::new(Vec::new()));
    let next_bundle = Arc::new(AtomicU64::new(0));
    // Parallelism comes from the workers; each compresses on its own thread.
    let store = pipeline::Store {
        digests: pipeline::Digests::StoredOnly,
        compression: pipeline::Compression {
            threads: 0,
            ..repo.compression
        },
        ..repo.store()
    };
    // One bundle: the next files of the queue, up to BUNDLE_SIZE.
    let bundle = || async {
        let n = next_bundle.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = layout::bundle(n);
        let source = BundleSource::new(queue.clone(), name.clone(), BUNDLE_SIZE, records.clone());
        let key = layout::backup_object(label, &name)?;
        store
            .reader(&key, &name, source, PutMode::CreateNew, Some(progress.clone()))
            .await
    };
    let workers = (0..jobs.max(1)).map(|_| async {
        let mut objects = Vec::new();
        while !queue.lock().expect("queue lock").is_empty() {
            objects.push(bundle().await?);
        }
        anyhow::Ok(objects)
    });
    let mut objects: Vec<ObjectRecord> = try_join_all(workers).await?.into_iter().flatten().collect();
    if !last.is_empty() {
        queue.lock().expect("queue lock").extend(last);
        objects.push(bundle().await?);
    }
    let mut records = std::mem::take(&mut *records.lock().expect("records lock"));
    records.sort_by(|a, b| a.path.cmp(&b.path).then(a.file_offset.cmp(&b.file_offset)));
    Ok((records, objects))
}

/// A file's scattered parts as pieces of at most `PIECE_SIZE` bytes each.
fn extent_pieces(f: &FileToCopy, extents: &[[u64; 2]]) -> Vec<FileToCopy> {
    let mut pieces = Vec::new();
    let mut group: Vec<[u64; 2]> = Vec::new();
    let mut bytes = 0;
    let mut close = |group: &mut Vec<[u64; 2]>, bytes: &mut u64| {
        if let Some(first) = group.first() {
            pieces.push(FileToCopy {
                start: first[0],
                len: Some(*bytes),
                size: *bytes,
                extents: Some(std::mem::take(group)),
                ..f.clone()
            });
        }
        *bytes = 0;
    };
    for &[mut a, b] in extents {
        while a < b {
            let take = (b - a).min(PIECE_SIZE - bytes);
            group.push([a, a + take]);
            bytes += take;
            a += take;
            if bytes == PIECE_SIZE {
                close(&mut group, &mut bytes);
            }
        }
    }
    close(&mut group, &mut bytes);
    pieces
}

/// The first WAL segment a backup needs, from its backup_label.
pub fn label_start_segment(label_file: &str) -> Option<String> {
    let line = label_file.lines().find(|l| l.starts_with("START WAL LOCATION:"))?;
    let file = line.split("(file ").nth(1)?.trim_end_matches(')').trim();
    Some(file.to_string())
}

/// After `pg_backup_stop` (or pg_basebackup): wait until the WAL the backup needs to
/// become consistent, from its label's start segment through the one holding
/// `stop_lsn`, is archived. Returns the first and last segment names.
pub async fn wait_for_backup_wal(
    repo: &Repo,
    label_file: &str,
    stop_lsn: crate::postgres::Lsn,
    timeline: crate::postgres::TimelineId,
    segment_size: u64,
    timeout: Duration,
) -> Result<(String, String)> {
    let wal_start =
        label_start_segment(label_file).ok_or_else(|| anyhow!("the backup label has no START WAL LOCATION"))?;
    let first = Segment::parse(&wal_start, segment_size)
        .ok_or_else(|| anyhow!("malformed start segment {wal_start} in the backup label"))?;
    let last = Segment::containing(
        timeline,
        crate::postgres::Lsn(stop_lsn.0.saturating_sub(1)),
        segment_size,
    );
    wait_for_wal(repo, first, last, segment_size, timeout).await?;
    Ok((wal_start, last.name(segment_size)))
}

/// Wait until every segment from `start` to `stop` is in the archive, or fail saying
/// that archiving is broken.
pub async fn wait_for_wal(
    repo: &Repo,
    start: Segment,
    stop: Segment,
    segment_size: u64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        let mut missing = None;
        let mut seg = start;
        while seg.number <= stop.number {
            let file = WalFile::Segment(seg.name(segment_size));
            if repo.storage.head(&layout::wal_file(&file)).await?.is_none() {
                missing = Some(file);
                break;
            }
            seg = seg.next();
        }
        let Some(missing) = missing else { return Ok(()) };
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "WAL segment {missing}, which this backup needs, did not reach the archive within {} s — WAL archiving is broken: check archive_command = 'pgdr wal-push %p', the server log and `pgdr check`",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Where a manifest path goes: tablespace contents to their (possibly remapped)
/// locations, everything else under the data directory.
pub struct Placement {
    pub data_dir: PathBuf,
    pub tablespaces: BTreeMap<String, PathBuf>,
}

impl Placement {
    pub fn dest(&self, path: &str) -> PathBuf {
        if let Some(rest) = path.strip_prefix("pg_tblspc/") {
            let (oid, inner) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some(location) = self.tablespaces.get(oid) {
                return if inner.is_empty() {
                    location.clone()
                } else {
                    location.join(inner)
                };
            }
        }
        self.data_dir.join(path)
    }
}

/// Every path a manifest names, checked before anything is written: the manifest
/// comes from the repository, which may be damaged or hostile, and restores often
/// run as root. Relative, no empty, `.` or `..` components, no NUL; inside
/// `pg_tblspc/` only the backup's own tablespace OIDs; tablespace locations absolute.
pub fn validate_paths(info: &PhysicalInfo) -> Result<()> {
    if !crate::postgres::wal::valid_segment_size(info.segment_size) {
        return Err(anyhow!(
            "the manifest gives a WAL segment size of {} bytes, which PostgreSQL never uses — it is damaged",
            info.segment_size
        ));
    }
    let oids: HashSet<&str> = info.tablespaces.iter().map(|t| t.oid.as_str()).collect();
    for ts in &info.tablespaces {
        if ts.oid.is_empty() || !ts.oid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(anyhow!("the manifest names a tablespace with a bad OID {:?}", ts.oid));
        }
        let loc = ts.location.to_string_lossy();
        if !ts.location.is_absolute()
            || loc.contains('\0')
            || ts
                .location
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(anyhow!(
                "the manifest names tablespace {} at a bad location {loc:?}",
                ts.oid
            ));
        }
    }
    let check = |path: &str| -> Result<()> {
        let ok = !path.is_empty()
            && !path.starts_with('/')
            && !path.contains('\0')
            && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        let in_tablespace = path
            .strip_prefix("pg_tblspc/")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        if !ok || in_tablespace.is_some_and(|oid| !oids.contains(oid)) {
            return Err(anyhow!(
                "the manifest names a path {path:?} outside the data directory and its tablespaces — it is damaged or was tampered with; nothing was written"
            ));
        }
        Ok(())
    };
    for d in &info.dirs {
        check(&d.path)?;
    }
    let mut writes: BTreeMap<&str, Vec<[u64; 2]>> = BTreeMap::new();
    let mut entries: BTreeMap<(&str, &str), Vec<[u64; 2]>> = BTreeMap::new();
    let own_copy = info.method == crate::repo::manifest::PhysicalMethod::Local;
    for f in &info.files {
        check(&f.path)?;
        check_reference(info, f)?;
        if own_copy && !digest::well_formed(f) {
            return Err(anyhow!(
                "the manifest's entry for {} has no digest to check it against — it is damaged or was tampered with; nothing was written",
                f.path
            ));
        }
        writes.entry(f.path.as_str()).or_default().extend(f.writes());
        let holder = f.backup.as_deref().unwrap_or("");
        entries
            .entry((holder, f.bundle.as_str()))
            .or_default()
            .push([f.offset, f.offset + f.size]);
    }
    // Pieces of one bundle never share bytes (pg_basebackup's records name its tar,
    // not offsets in it).
    for ((_, bundle), mut e) in entries.into_iter().filter(|_| own_copy) {
        e.sort_unstable();
        if e.windows(2).any(|p| p[1][0] < p[0][1]) {
            return Err(anyhow!(
                "the manifest places two pieces at the same bytes of {bundle} — it is damaged or was tampered with; nothing was written"
            ));
        }
    }
    // Every byte of a file comes from one record: two that write the same place
    // would race, and each would still pass its own checksum.
    for (path, mut w) in writes {
        w.sort_unstable();
        if w.windows(2).any(|p| p[1][0] < p[0][1]) {
            return Err(anyhow!(
                "the manifest has two records for the same part of {path} — it is damaged or was tampered with; nothing was written"
            ));
        }
    }
    Ok(())
}

/// A record that refers to an older backup names one of the chain, and takes sorted,
/// disjoint ranges from inside its entry.
fn check_reference(info: &PhysicalInfo, f: &FileRecord) -> Result<()> {
    let damaged = |what: &str| {
        anyhow!(
            "the manifest's entry for {} {what} — it is damaged or was tampered with; nothing was written",
            f.path
        )
    };
    if f.file_offset.checked_add(f.size).is_none() || f.offset.checked_add(f.size).is_none() {
        return Err(damaged("has an impossible size"));
    }
    if let Some(from) = &f.backup
        && !info.chain().contains(from)
    {
        return Err(damaged(&format!("refers to backup {from}, which is not in its chain")));
    }
    if let Some(extents) = &f.extents {
        let mut at = 0;
        let mut total = 0u64;
        for [a, b] in extents {
            if *a < at || a >= b {
                return Err(damaged("has parts out of order"));
            }
            total = total.saturating_add(b - a);
            at = *b;
        }
        if total != f.size || extents.first().is_some_and(|e| e[0] != f.file_offset) {
            return Err(damaged("has parts that do not add up to its size"));
        }
    }
    if let Some(ranges) = &f.ranges {
        if f.backup.is_none() {
            return Err(damaged("has ranges but refers to no older backup"));
        }
        let extents = f.extents();
        let mut at = f.file_offset;
        for [a, b] in ranges {
            // Inside one of the piece's parts (parts never touch: they are merged).
            let i = extents.partition_point(|e| e[1] <= *a);
            let inside = extents.get(i).is_some_and(|e| e[0] <= *a && *b <= e[1]);
            if *a < at || a >= b || !inside {
                return Err(damaged("takes a range outside its entry"));
            }
            at = *b;
        }
    }
    Ok(())
}

/// A restored file's mode: permission bits only (never setuid, setgid or sticky, which
/// a hostile manifest could ask for), and always readable and writable by the owner.
pub fn restored_mode(mode: u32) -> u32 {
    (mode & 0o777) | 0o600
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreStats {
    pub files_written: u64,
    pub files_unchanged: u64,
    pub bytes_written: u64,
    pub bundles_skipped: u64,
    pub files_removed: u64,
}

/// How a restore treats what is already in its places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDisk {
    /// A new or empty directory: write everything.
    Empty,
    /// `--delta`, or an interrupted restore resumed: files already identical are left
    /// alone (bundles holding only such files are not even downloaded), files not in
    /// the backup are removed.
    Delta,
    /// An interrupted restore whose flush failed: files not in the backup are
    /// removed and every file is written again (one that reads back identical may
    /// be so only in memory).
    Rewrite,
}

/// Lay the backup's files down under `placement`, `jobs` bundles at a time, treating
/// what is there as `on_disk` says; then flush each filesystem written.
pub async fn restore_files(
    repo: &Repo,
    manifest: &crate::repo::Manifest,
    chain: &[crate::repo::Manifest],
    placement: &Placement,
    jobs: usize,
    on_disk: OnDisk,
    progress: Arc<AtomicU64>,
) -> Result<RestoreStats> {
    let delta = on_disk != OnDisk::Empty;
    let info = manifest
        .physical
        .as_ref()
        .ok_or_else(|| anyhow!("{} is not a physical backup", manifest.label))?;
    validate_paths(info)?;
    let mut stats = RestoreStats::default();
    for dir in &info.dirs {
        let path = placement.dest(&dir.path);
        if dir.path.starts_with("pg_tblspc/") && !dir.path["pg_tblspc/".len()..].contains('/') {
            continue; // the tablespace link itself, made below
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    std::fs::create_dir_all(placement.data_dir.join("pg_wal/archive_status"))?;
    for ts in &info.tablespaces {
        let location = placement
            .tablespaces
            .get(&ts.oid)
            .cloned()
            .unwrap_or_else(|| ts.location.clone());
        std::fs::create_dir_all(&location)
            .with_context(|| format!("creating tablespace directory {}", location.display()))?;
        let link = placement.data_dir.join("pg_tblspc").join(&ts.oid);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&location, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    // Opened before anything is written: a write-back error reported to another
    // process's flush (a `sync -f`) in the meantime is still reported to these.
    let mut flushes = vec![Flush::open(&placement.data_dir)?];
    for location in placement.tablespaces.values() {
        flushes.push(Flush::open(location)?);
    }

    if delta {
        stats.files_removed = remove_strays(info, placement)?;
    }

    // Decide what to write (delta: pieces already identical on disk are skipped),
    // then give every file its final size, so pieces can land in parallel.
    // Keyed by the backup that holds the bundle: an incremental's own, or an older
    // one of its chain.
    let mut by_bundle: BTreeMap<(&str, &str), Vec<Target>> = BTreeMap::new();
    let mut sizes: BTreeMap<&str, (u64, u32)> = BTreeMap::new();
    for record in &info.files {
        let dest = placement.dest(&record.path);
        // (A scattered piece is always written: it holds only changed blocks.)
        let skip = on_disk == OnDisk::Delta
            && record.extents.is_none()
            && digest::on_disk_matches(&dest, record).unwrap_or(false);
        if skip {
            stats.files_unchanged += 1;
        }
        let entry = sizes.entry(record.path.as_str()).or_insert((0, record.mode));
        entry.0 = entry.0.max(record.end());
        let holder = record.backup.as_deref().unwrap_or(manifest.label.as_str());
        by_bundle
            .entry((holder, record.bundle.as_str()))
            .or_default()
            .push(Target {
                record: record.clone(),
                dest,
                skip,
            });
    }
    for (path, (size, mode)) in &sizes {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dest = placement.dest(path);
        // O_NOFOLLOW: a symlink planted where a file goes is not followed elsewhere.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(!delta)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(restored_mode(*mode))
            .open(&dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        if file.metadata()?.len() != *size {
            file.set_len(*size)
                .with_context(|| format!("sizing {}", dest.display()))?;
        }
        if delta {
            file.set_permissions(std::fs::Permissions::from_mode(restored_mode(*mode)))?;
        }
    }
    // The newest backup's bundles first, then older ones: a referred piece of an older
    // backup then finishes with the newer blocks inside its span already written, and
    // goes to disk in one run instead of around holes filled later.
    let age = |holder: &str| {
        std::iter::once(manifest.label.as_str())
            .chain(chain.iter().rev().map(|m| m.label.as_str()))
            .position(|l| l == holder)
            .unwrap_or(usize::MAX)
    };
    let mut by_bundle: Vec<_> = by_bundle.into_iter().collect();
    by_bundle.sort_by_key(|((holder, name), _)| (age(holder), *name));
    let mut queue = VecDeque::new();
    for ((holder, name), mut targets) in by_bundle {
        if targets.iter().all(|t| t.skip) {
            stats.bundles_skipped += 1;
            continue;
        }
        targets.sort_by_key(|t| t.record.offset);
        let owner = if holder == manifest.label.as_str() {
            manifest
        } else {
            chain.iter().find(|m| m.label.as_str() == holder).ok_or_else(|| {
                anyhow!(
                    "{} refers to backup {holder}, which is not in the repository — its chain is broken",
                    manifest.label
                )
            })?
        };
        let object = owner
            .object(name)
            .ok_or_else(|| anyhow!("the manifest of {} lists no bundle {name}", owner.label))?
            .clone();
        queue.push_back((owner.label.clone(), object, targets));
    }
    let queue = Arc::new(Mutex::new(queue));
    let workers = (0..jobs.max(1)).map(|_| {
        let queue = queue.clone();
        let progress = progress.clone();
        async move {
            let mut written = (0u64, 0u64);
            loop {
                let Some((owner, object, targets)) = queue.lock().expect("queue lock").pop_front() else {
                    break;
                };
                let key = layout::backup_object(&owner, &object.name)?;
                let sink = if owner == manifest.label {
                    BundleSink::new(targets)
                } else {
                    BundleSink::new(targets).partial()
                };
                let (sink, _, _) = pipeline::load_to_writer(
                    &repo.storage,
                    &key,
                    sink,
                    &repo.keys,
                    pipeline::Verify::RecordStored(&object),
                    Some(progress.clone()),
                )
                .await?;
                let (files, bytes) = sink.finish()?;
                written.0 += files;
                written.1 += bytes;
            }
            anyhow::Ok(written)
        }
    });
    for (files, bytes) in try_join_all(workers).await? {
        stats.files_written += files;
        stats.bytes_written += bytes;
    }
    // One flush of each filesystem instead of an fsync per file: the data directory's
    // and every tablespace's, moved or left where it was. A failure is noted in the
    // marker: the run that resumes writes every file again.
    for flush in flushes {
        if let Err(e) = flush.sync() {
            note_unflushed(&placement.data_dir);
            return Err(e);
        }
    }
    Ok(stats)
}

/// A descriptor on a directory, to flush its whole filesystem to disk.
struct Flush {
    path: PathBuf,
    dir: std::fs::File,
}

impl Flush {
    fn open(path: &Path) -> Result<Flush> {
        let dir =
            std::fs::File::open(path).with_context(|| format!("opening {} to flush it to disk", path.display()))?;
        Ok(Flush {
            path: path.to_path_buf(),
            dir,
        })
    }

    /// `syncfs`: a failure (a write-back error since the descriptor was opened) means
    /// some of the files written may not be on disk.
    fn sync(self) -> Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs on an open descriptor we own.
        let flushed = match unsafe { libc::syncfs(self.dir.as_raw_fd()) } {
            0 => crate::process::injected_failure(&format!("restore-syncfs {}", self.path.display())),
            _ => Err(std::io::Error::last_os_error()),
        };
        flushed.with_context(|| {
            format!(
                "flushing the restored files under {} to disk failed: some may not be on disk (check the disk: dmesg); the same command again writes every file anew",
                self.path.display()
            )
        })
    }
}

/// Delta restore: remove files under the data directory that the backup does not have
/// (stale WAL included), so the result is exactly the backup.
/// Written into a data directory before a restore lays files down, removed once the
/// directory is complete: a directory that has it was left by an interrupted restore,
/// and the next restore into it rewrites only what differs (as `--delta`).
pub const RESTORE_MARKER: &str = "pgdr-restore-in-progress";

/// The marker in each tablespace's place while a restore writes it (a dot name: a
/// backup's listing skips it, should one be left behind): the backup's label, the data
/// directory, and the restore's id from the data directory's marker.
pub const TABLESPACE_MARKER: &str = ".pgdr-restore-in-progress";

pub fn tablespace_marker(location: &Path) -> PathBuf {
    location.join(TABLESPACE_MARKER)
}

/// What an interrupted restore left in its data directory's marker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unfinished {
    /// Random, made by the restore that began it and kept by each run that resumes
    /// it; its tablespace places' markers carry it too. (An older pgdr wrote none.)
    pub id: Option<String>,
    /// Flushing its files to disk failed: what is on disk may differ from what reads
    /// back from memory, so nothing is taken as already in place.
    pub unflushed: bool,
}

/// The data directory's restore marker, when there is one.
pub fn unfinished_restore(data_dir: &Path) -> Option<Unfinished> {
    let text = std::fs::read_to_string(data_dir.join(RESTORE_MARKER)).ok()?;
    Some(Unfinished {
        id: text.lines().find_map(|l| l.strip_prefix("id ")).map(str::to_string),
        unflushed: text.lines().any(|l| l == "unflushed"),
    })
}

/// The data directory's marker text: the label, the id, and whether a flush failed.
pub fn restore_marker_text(label: &str, id: &str, unflushed: bool) -> String {
    format!("{label}\nid {id}\n{}", if unflushed { "unflushed\n" } else { "" })
}

/// Whether the tablespace place `location` holds what the interrupted restore `id`
/// left there.
pub fn tablespace_marked_for(location: &Path, id: &str) -> bool {
    std::fs::read_to_string(tablespace_marker(location))
        .is_ok_and(|text| text.lines().any(|l| l.strip_prefix("id ") == Some(id)))
}

/// Write a marker at `path`, never through a symlink planted there.
pub fn write_marker(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(text.as_bytes())
}

/// A flush failed: the data directory's marker says so, for the run that resumes.
fn note_unflushed(data_dir: &Path) {
    use std::io::Write;
    let marker = data_dir.join(RESTORE_MARKER);
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&marker) {
        let _ = f.write_all(b"unflushed\n");
    }
}

fn remove_strays(info: &PhysicalInfo, placement: &Placement) -> Result<u64> {
    let mut wanted: HashSet<PathBuf> = info.files.iter().map(|f| placement.dest(&f.path)).collect();
    wanted.insert(placement.data_dir.join(RESTORE_MARKER));
    wanted.extend(placement.tablespaces.values().map(|l| tablespace_marker(l)));
    let mut removed = 0;
    let mut stack = vec![placement.data_dir.clone()];
    stack.extend(placement.tablespaces.values().cloned());
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.file_type().is_symlink() && path.parent().is_some_and(|p| p.ends_with("pg_tblspc")) {
                continue;
            } else if !wanted.contains(&path) {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Make the restored tree belong to `uid:gid`, with PostgreSQL's modes.
pub fn set_ownership(placement: &Placement, owner: Option<(u32, u32)>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&placement.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let Some((uid, gid)) = owner else { return Ok(()) };
    // The places themselves may be symlinks (a tablespace's `/var/lib/pgsql/ts ->
    // /mnt/ssd/ts`): their directories are followed; nothing below them is.
    let mut stack = Vec::new();
    for root in std::iter::once(&placement.data_dir).chain(placement.tablespaces.values()) {
        if !root.is_dir() {
            continue; // (a tablespace pg_basebackup's tar did not bring)
        }
        std::os::unix::fs::chown(root, Some(uid), Some(gid)).with_context(|| format!("chown {}", root.display()))?;
        let entries = std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?;
        stack.extend(entries.flatten().map(|e| e.path()));
    }
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    Ok(())
}

/// Check the archive holds an unbroken chain of WAL from the backup to the target,
/// on the named timeline or the one `choose_timeline` picks; returns the chain's last
/// segment and the timeline choice (to be reported and written into the recovery
/// settings, so PostgreSQL does not pick another one itself).
pub async fn check_wal_chain(
    repo: &Repo,
    info: &PhysicalInfo,
    target_timeline: Option<crate::postgres::TimelineId>,
    until: archive::Until,
) -> Result<(Segment, archive::TimelineChoice)> {
    let listing = archive::list(&repo.storage).await?;
    // A timeline named by the DBA needs no choice: a damaged history elsewhere (which
    // makes the choice fail) must not stand in the way of following it.
    let choice = match (timeline_choice(repo, &listing, info).await, target_timeline) {
        (Ok(choice), _) => choice,
        (Err(e), None) => return Err(e),
        (Err(e), Some(target)) => {
            tracing::warn!("{e:#}");
            archive::TimelineChoice {
                followed: target,
                seen: vec![target],
                forks: Vec::new(),
                why: format!("timeline {target}: named by --target-timeline"),
                unreachable_primary: Vec::new(),
            }
        }
    };
    // The new primary was declared at a point before this backup's end: following the
    // old timeline from here would replay what was abandoned there. The DBA chooses.
    if target_timeline.is_none()
        && let Some((tli, at)) = choice.unreachable_primary.first()
    {
        return Err(crate::usage!(
            "timeline {tli} was declared the new primary at {at}, before this backup ends ({}) — restore from a backup older than that (--backup LABEL), or follow the old timeline on purpose with --target-timeline {}",
            info.stop_lsn,
            info.timeline
        ));
    }
    let target = target_timeline.unwrap_or(choice.followed);
    let path = listing.path_to(&repo.storage, &repo.keys, target).await?;
    let start = Segment::parse(&info.wal_start, info.segment_size)
        .ok_or_else(|| anyhow!("the manifest has a malformed wal_start {}", info.wal_start))?;
    past_the_end(&listing, &path, target, info.segment_size, until)?;
    let chain_end = listing.check_chain(start, &path, info.segment_size, until, &repo.storage.describe())?;
    // A target time no archived segment reaches: PostgreSQL would replay all there is
    // and stop with "recovery ended before configured recovery target was reached",
    // leaving a directory that is good for nothing. A minute of grace for the clocks
    // of the server and the storage, which need not agree.
    if let archive::Until::Time(t) = until
        && let Some(Some(archived)) = listing.segments.get(&chain_end.name(info.segment_size))
        && *archived + chrono::Duration::seconds(60) < t
    {
        return Err(crate::usage!(
            "--target-time {} is after the end of the archive: its newest WAL on timeline {target} ({}) was archived at {} — recovery would stop before reaching the target; restore with --target latest for everything archived, or wait until the WAL up to that time is archived (SELECT pg_switch_wal() on the primary); nothing was written",
            t.to_rfc3339(),
            chain_end.name(info.segment_size),
            archived.to_rfc3339()
        ));
    }
    // The backup's own WAL must be complete whatever the target.
    let stop = Segment::parse(&info.wal_stop, info.segment_size)
        .ok_or_else(|| anyhow!("the manifest has a malformed wal_stop {}", info.wal_stop))?;
    if chain_end.timeline == stop.timeline && chain_end.number < stop.number {
        return Err(crate::repo::RepoError::WalGap {
            segment: chain_end.next().name(info.segment_size),
            place: repo.storage.describe(),
            consequence: "the backup cannot become consistent without it".into(),
        }
        .into());
    }
    let choice = if target == choice.followed {
        choice
    } else {
        archive::TimelineChoice {
            followed: target,
            why: format!("timeline {target}: named by --target-timeline"),
            ..choice
        }
    };
    Ok((chain_end, choice))
}

/// An LSN target beyond the last archived segment of the timeline it would be on.
fn past_the_end(
    listing: &archive::ArchiveListing,
    path: &[archive::Stretch],
    target: crate::postgres::TimelineId,
    segment_size: u64,
    until: archive::Until,
) -> Result<()> {
    let archive::Until::Lsn(lsn) = until else { return Ok(()) };
    // The last timeline of the path starts where the one before it ended.
    let last_starts = path
        .iter()
        .rev()
        .nth(1)
        .and_then(|s| s.end)
        .unwrap_or(crate::postgres::Lsn(0));
    if lsn < last_starts {
        return Ok(());
    }
    let newest = listing.newest_segment(target, segment_size);
    let end = newest.map(|s| crate::postgres::Lsn(s.start_lsn(segment_size).0 + segment_size));
    if end.is_none_or(|e| lsn >= e) {
        return Err(crate::usage!(
            "--target-lsn {lsn} is past the end of the archive on timeline {target} ({}) — recovery would stop before reaching it; restore with --target latest for everything archived, or wait until the WAL holding {lsn} is archived; nothing was written",
            match (newest, end) {
                (Some(s), Some(e)) => format!("its newest segment {} ends at {e}", s.name(segment_size)),
                _ => "no segment of it is archived".to_string(),
            }
        ));
    }
    Ok(())
}

/// Which timeline a recovery from this backup follows when none is named.
pub async fn timeline_choice(
    repo: &Repo,
    listing: &archive::ArchiveListing,
    info: &PhysicalInfo,
) -> Result<archive::TimelineChoice> {
    let branches = listing.branches(&repo.storage, &repo.keys, info.timeline).await?;
    let declared = archive::declarations(&repo.storage).await?;
    Ok(listing.choose_timeline(info.timeline, info.stop_lsn, &branches, &declared, info.segment_size))
}

pub fn listing_for(data_dir: &Path) -> Result<Listing> {
    datadir::list(data_dir).with_context(|| format!("listing the data directory {}", data_dir.display()))
}

/// Restore a `--method basebackup` backup: unpack its tar (GNU tar) and have
/// `pg_verifybackup` check every file against PostgreSQL's own backup_manifest.
pub async fn restore_tar(
    repo: &Repo,
    manifest: &crate::repo::Manifest,
    dir: &Path,
    tools: &crate::postgres::PgTools,
    progress: Arc<AtomicU64>,
) -> Result<RestoreStats> {
    use crate::postgres::tools::ChildWriter;
    let info = manifest.physical.as_ref().expect("physical");
    let record = manifest.object(crate::repo::manifest::BASE_TAR).ok_or_else(|| {
        anyhow!(
            "the manifest of {} lists no {}",
            manifest.label,
            crate::repo::manifest::BASE_TAR
        )
    })?;
    let mut tar = std::process::Command::new("tar");
    // Whatever the archive says, members land under `dir` (GNU tar refuses `..` and
    // strips leading slashes), owned by whoever restores, without setuid bits.
    tar.args(["-x", "-f", "-", "--no-same-owner", "--no-same-permissions", "-C"])
        .arg(dir);
    let sink = ChildWriter::spawn("tar", tar)?;
    let key = layout::backup_object(&manifest.label, crate::repo::manifest::BASE_TAR)?;
    let (sink, _, _) = pipeline::load_to_writer(
        &repo.storage,
        &key,
        sink,
        &repo.keys,
        pipeline::Verify::RecordStored(record),
        Some(progress),
    )
    .await?;
    sink.finish()?;
    let verify = crate::postgres::tools::run_capture("pg_verifybackup", {
        let mut cmd = std::process::Command::new(tools.path("pg_verifybackup")?);
        cmd.args(["--no-parse-wal", "--quiet", "-m"])
            .arg(dir.join("backup_manifest"))
            .arg(dir);
        cmd
    });
    verify.context("pg_verifybackup found the restored files differ from the backup")?;
    Flush::open(dir)?.sync()?;
    Ok(RestoreStats {
        files_written: info.files.len() as u64,
        bytes_written: record.plain.size,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, file_offset: u64, size: u64, offset: u64) -> FileRecord {
        FileRecord {
            bundle: "bundle-00000".into(),
            offset,
            file_offset,
            ..crate::repo::manifest::test_support::file_record(path, size)
        }
    }

    fn info(files: Vec<FileRecord>, chain: &[&str]) -> PhysicalInfo {
        let mut json = serde_json::json!({
            "start_lsn": "0/1000000", "stop_lsn": "0/2000000", "timeline": 1,
            "segment_size": 16777216, "wal_start": "", "wal_stop": "", "backup_label": "",
            "dirs": [], "tablespaces": [], "files": files,
        });
        if !chain.is_empty() {
            json["incremental"] = serde_json::json!({
                "parent": chain.last(), "chain": chain, "wal_from": "0/0", "wal_to": "0/0",
                "changed_blocks": 0, "whole_files": {}, "referenced_bytes": 0,
            });
        }
        serde_json::from_value(json).unwrap()
    }

    /// A damaged or hostile incremental manifest is refused before anything is
    /// written: overlapping records, shared bundle bytes, references outside the
    /// chain, ranges outside a piece's parts, parts that do not add up, overflow.
    #[test]
    fn hostile_references_extents_and_overlaps_are_refused() {
        let good = || {
            let mut r = record("base/5/1", 0, 100, 0);
            r.backup = Some("B0".into());
            r.ranges = Some(vec![[0, 10], [20, 100]]);
            let mut s = record("base/5/1", 10, 10, 0);
            s.extents = Some(vec![[10, 20]]);
            vec![r, s]
        };
        assert!(validate_paths(&info(good(), &["B0"])).is_ok());
        let refused = |files: Vec<FileRecord>, chain: &[&str]| {
            let e = validate_paths(&info(files, chain)).unwrap_err().to_string();
            assert!(e.contains("nothing was written"), "{e}");
        };
        // Outside the chain.
        refused(good(), &["B9"]);
        // Two records for the same bytes of the file.
        let mut f = good();
        f[0].ranges = Some(vec![[0, 15], [20, 100]]);
        refused(f, &["B0"]);
        // Two pieces of one bundle sharing bytes.
        let mut f = good();
        f.push(record("base/5/2", 0, 10, 5));
        refused(f, &["B0"]);
        // A range in the gap between a piece's parts.
        let mut f = good();
        f[0].extents = Some(vec![[0, 40], [60, 120]]);
        f[0].size = 100;
        f[0].ranges = Some(vec![[0, 10], [40, 50]]);
        refused(f, &["B0"]);
        // Parts that do not add up to the piece's size.
        let mut f = good();
        f[1].extents = Some(vec![[10, 25]]);
        refused(f, &["B0"]);
        // Offsets that overflow.
        let mut f = good();
        f[1].offset = u64::MAX - 2;
        refused(f, &["B0"]);
    }
}
