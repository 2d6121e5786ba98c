//! Local filesystem backend, the embedded default. Every write goes to a temporary
//! file in the target directory, is fsynced, then renamed (or hard-linked, when it must
//! not overwrite) into place, and the directory is fsynced: a crash leaves either the
//! whole object or nothing but a hidden temporary file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::direct::DirectWriter;
use super::{BodyReceiver, ObjectKey, ObjectMeta, PutMode, Refused, Result, Storage, StorageError};

/// Temporary files carry this marker; listings never show them.
const TEMP_MARKER: &str = ".pgdr-tmp-";
const READ_CHUNK: usize = 1 << 20;
/// Objects put whole from this size on are written past the page cache.
const DIRECT_MIN: usize = 256 << 10;

#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    /// When pgdr runs as root in a repository that belongs to another user: that
    /// user, who gets every directory and file written here (root's files would stop
    /// the owner's jobs).
    owner: Option<(u32, u32)>,
}

impl LocalStorage {
    pub fn new(root: PathBuf) -> Self {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 {
            // The cluster's directory, or the repository's before it exists.
            [Some(root.as_path()), root.parent()]
                .into_iter()
                .flatten()
                .find_map(|p| fs::metadata(p).ok())
                .filter(|m| m.uid() != 0)
                .map(|m| (m.uid(), m.gid()))
        } else {
            None
        };
        LocalStorage { root, owner }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn io_error(&self, what: &str, path: &Path, err: io::Error) -> StorageError {
        if err.raw_os_error() == Some(libc::ENOSPC) || err.raw_os_error() == Some(libc::EDQUOT) {
            return StorageError::NoSpace(format!(
                "the local repository at {} is out of space while writing {}: {err} — free space there and retry; nothing partial was kept",
                self.root.display(),
                path.display()
            ));
        }
        match err.kind() {
            io::ErrorKind::NotFound => StorageError::NotFound(path.display().to_string()),
            io::ErrorKind::PermissionDenied => StorageError::Unreachable(format!(
                "cannot {what} {}: permission denied — {}",
                path.display(),
                blocking(path)
            )),
            _ => StorageError::Permanent(format!("cannot {what} {}: {err}", path.display())),
        }
    }
}

/// Which directory refused, and whose it is: the nearest existing one on the way to
/// `path` (a directory root made in the repository, say), not the repository's root.
fn blocking(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Some(meta_dir) = path
        .ancestors()
        .skip(if path.is_dir() { 0 } else { 1 })
        .find_map(|d| fs::metadata(d).ok().map(|m| (d.to_path_buf(), m)))
    else {
        return "check the owner and mode of the repository".to_string();
    };
    let (dir, meta) = meta_dir;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    format!(
        "{} belongs to {} (mode {:o}) and pgdr runs as {}: run pgdr as the repository's owner, or give it back (chown -R)",
        dir.display(),
        crate::process::user_name(meta.uid()),
        meta.mode() & 0o7777,
        crate::process::user_name(me)
    )
}

/// A temporary file that is removed unless committed.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(dir: &Path, name: &str, owner: Option<(u32, u32)>) -> io::Result<TempFile> {
        let path = dir.join(format!(
            ".{name}{TEMP_MARKER}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        let temp = TempFile { path, file: Some(file) };
        if let Some((uid, gid)) = owner {
            give_away(
                std::os::unix::fs::fchown(temp.file.as_ref().expect("just opened"), Some(uid), Some(gid)),
                &temp.path,
            )?;
        }
        Ok(temp)
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("temp file open until commit")
    }

    /// fsync, then move into place. With `no_overwrite`, a hard link makes the
    /// "does it exist" check and the publication one atomic step.
    fn commit(mut self, target: &Path, no_overwrite: bool) -> io::Result<()> {
        let file = self.file.take().expect("temp file open until commit");
        file.sync_all()?;
        drop(file);
        if no_overwrite {
            fs::hard_link(&self.path, target)?;
            let _ = fs::remove_file(&self.path);
        } else {
            fs::rename(&self.path, target)?;
        }
        sync_dir(target.parent().expect("object path has a parent"))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn modified(meta: &fs::Metadata) -> Option<DateTime<Utc>> {
    meta.modified().ok().map(DateTime::<Utc>::from)
}

/// The result of giving a new entry to the repository's owner: a filesystem that
/// cannot change owners (CIFS, some FUSE, NFS with root squashed) keeps root's, with a
/// warning, rather than failing the write.
fn give_away(r: io::Result<()>, path: &Path) -> io::Result<()> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL | libc::ENOTSUP)) => {
            tracing::warn!("cannot give {} to the repository's owner: {e}", path.display());
            Ok(())
        }
        other => other,
    }
}

/// Create a directory chain, fsyncing each directory that gained an entry; each new
/// one given to `owner`.
fn create_dirs(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent, owner)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            if let Some((uid, gid)) = owner {
                // Not followed: the directory's parent is the owner's to swap for a link.
                give_away(std::os::unix::fs::lchown(dir, Some(uid), Some(gid)), dir)?;
            }
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl LocalStorage {
    fn prepare(&self, key: &ObjectKey, mode: PutMode) -> Result<(PathBuf, TempFile)> {
        let path = self.path(key);
        if mode == PutMode::CreateNew && path.exists() {
            return Err(StorageError::AlreadyExists(key.to_string()));
        }
        let dir = path.parent().expect("object path has a parent").to_path_buf();
        create_dirs(&dir, self.owner).map_err(|e| self.io_error("create directory", &dir, e))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        let temp = TempFile::create(&dir, name, self.owner).map_err(|e| self.io_error("create", &dir, e))?;
        Ok((path, temp))
    }

    fn finish(&self, key: &ObjectKey, path: &Path, temp: TempFile, mode: PutMode) -> Result<()> {
        temp.commit(path, mode == PutMode::CreateNew).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                StorageError::AlreadyExists(key.to_string())
            } else {
                self.io_error("write", path, e)
            }
        })
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn put_is_proof(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<()> {
        let this = self.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            let (path, mut temp) = this.prepare(&key, mode)?;
            let written = if data.len() >= DIRECT_MIN {
                let mut direct = DirectWriter::new(temp.file());
                direct.write_all(&data).and_then(|()| direct.finish()).map(|_| ())
            } else {
                temp.file().write_all(&data)
            };
            written.map_err(|e| this.io_error("write", &path, e))?;
            this.finish(&key, &path, temp, mode)
        })
        .await
        .map_err(|e| StorageError::Permanent(format!("write task failed: {e}")))?
    }

    async fn put_stream(&self, key: &ObjectKey, mut body: BodyReceiver, mode: PutMode) -> Result<u64> {
        let (path, temp) = self.prepare(key, mode)?;
        // Writes go through a blocking thread so a slow disk never stalls the runtime.
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let this = self.clone();
        let writer_path = path.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<(TempFile, u64)> {
            let mut temp = temp;
            let mut direct = DirectWriter::new(temp.file());
            while let Some(data) = rx.blocking_recv() {
                direct
                    .write_all(&data)
                    .map_err(|e| this.io_error("write", &writer_path, e))?;
            }
            let written = direct.finish().map_err(|e| this.io_error("write", &writer_path, e))?;
            Ok((temp, written))
        });
        let fed: Result<()> = async {
            while let Some(data) = body.next().await? {
                if tx.send(data).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer
            .await
            .map_err(|e| StorageError::Permanent(format!("write task failed: {e}")))?;
        // A write error explains a failed feed better than the feed's own error.
        let (temp, size) = written?;
        fed?;
        self.finish(key, &path, temp, mode)?;
        Ok(size)
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound(key.to_string())),
            Err(e) => Err(self.io_error("read", &path, e)),
        }
    }

    async fn get_stream(&self, key: &ObjectKey) -> Result<mpsc::Receiver<Result<Bytes>>> {
        let path = self.path(key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(key.to_string()));
            }
            Err(e) => return Err(self.io_error("read", &path, e)),
        };
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            loop {
                let mut buf = vec![0u8; READ_CHUNK];
                let n = match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(this.io_error("read", &path, e)));
                        return;
                    }
                };
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectMeta {
                key: key.clone(),
                size: meta.len(),
                modified: modified(&meta),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("inspect", &path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            // Walk only the directory that can hold matches.
            let start_rel = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            let start = this.root.join(start_rel);
            let mut out = Vec::new();
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let entries = match fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                        continue;
                    }
                    Err(e) => return Err(this.io_error("list", &dir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| this.io_error("list", &dir, e))?;
                    let path = entry.path();
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if name.contains(TEMP_MARKER) {
                        continue;
                    }
                    let meta = entry.metadata().map_err(|e| this.io_error("inspect", &path, e))?;
                    let rel = path
                        .strip_prefix(&this.root)
                        .expect("walk stays under the root")
                        .to_string_lossy()
                        .into_owned();
                    if meta.is_dir() {
                        if rel.starts_with(&prefix) || prefix.starts_with(&format!("{rel}/")) {
                            stack.push(path);
                        }
                    } else if rel.starts_with(&prefix) {
                        out.push(ObjectMeta {
                            key: ObjectKey::new(rel)?,
                            size: meta.len(),
                            modified: modified(&meta),
                        });
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::Permanent(format!("list task failed: {e}")))?
    }

    async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<Refused>> {
        let mut dirs = std::collections::BTreeSet::new();
        let mut refused = Vec::new();
        for key in keys {
            let path = self.path(key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    refused.push(Refused {
                        key: key.clone(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(self.io_error("delete", &path, e)),
            }
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        // Remove directories left empty, deepest first, never the root itself.
        for dir in dirs.into_iter().rev() {
            let mut dir = dir;
            while dir.starts_with(&self.root) && dir != self.root {
                if fs::remove_dir(&dir).is_err() {
                    break;
                }
                match dir.parent() {
                    Some(parent) => dir = parent.to_path_buf(),
                    None => break,
                }
            }
        }
        Ok(refused)
    }
}

/// Leftover temporary files (from killed writers) under the root, for `check`.
pub fn stale_temp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry.file_name().to_string_lossy().contains(TEMP_MARKER) {
                out.push(path);
            }
        }
    }
    out
}
