//! Bundles: many data-directory files concatenated into one stored object, so that
//! small files cost no per-object overhead and big backups still upload and restore
//! in parallel (one bundle per worker at a time). The manifest says which file sits at
//! which offset of which bundle, with its size and SHA-256.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::postgres::datadir::FileToCopy;
use crate::repo::manifest::FileRecord;

/// Files waiting to be copied, shared by the workers.
pub type FileQueue = Arc<Mutex<VecDeque<FileToCopy>>>;

struct Current {
    file: io::Take<File>,
    entry: FileToCopy,
    offset: u64,
    read: u64,
    hasher: Sha256,
}

/// A `Read` that concatenates files taken from the queue until the bundle holds at
/// least `limit` bytes. Files that vanish before they are opened are skipped (WAL
/// replay recreates or drops them); files that grow or shrink are copied as read.
pub struct BundleSource {
    queue: FileQueue,
    bundle: String,
    limit: u64,
    pos: u64,
    current: Option<Current>,
    records: Arc<Mutex<Vec<FileRecord>>>,
}

impl BundleSource {
    pub fn new(queue: FileQueue, bundle: String, limit: u64, records: Arc<Mutex<Vec<FileRecord>>>) -> Self {
        BundleSource {
            queue,
            bundle,
            limit,
            pos: 0,
            current: None,
            records,
        }
    }

    fn close_current(&mut self) {
        if let Some(cur) = self.current.take() {
            self.records.lock().expect("records lock").push(FileRecord {
                path: cur.entry.path,
                size: cur.read,
                sha256: hex::encode(cur.hasher.finalize()),
                mode: cur.entry.mode,
                bundle: self.bundle.clone(),
                offset: cur.offset,
                file_offset: cur.entry.start,
                backup: None,
                ranges: None,
            });
        }
    }
}

impl Read for BundleSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(cur) = &mut self.current {
                let n = cur
                    .file
                    .read(buf)
                    .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", cur.entry.source.display())))?;
                if n > 0 {
                    cur.hasher.update(&buf[..n]);
                    cur.read += n as u64;
                    self.pos += n as u64;
                    return Ok(n);
                }
                self.close_current();
            }
            if self.pos >= self.limit {
                return Ok(0);
            }
            let Some(entry) = self.queue.lock().expect("queue lock").pop_front() else {
                return Ok(0);
            };
            let opened = File::open(&entry.source).and_then(|mut f| {
                use std::io::Seek;
                f.seek(io::SeekFrom::Start(entry.start))?;
                Ok(f.take(entry.len.unwrap_or(u64::MAX)))
            });
            match opened {
                Ok(file) => {
                    self.current = Some(Current {
                        file,
                        entry,
                        offset: self.pos,
                        read: 0,
                        hasher: Sha256::new(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("opening {}: {e}", entry.source.display()),
                    ));
                }
            }
        }
    }
}

/// One file to restore from a bundle.
#[derive(Debug, Clone)]
pub struct Target {
    pub record: FileRecord,
    pub dest: PathBuf,
    /// Already identical on disk (delta restore): read past, do not write.
    pub skip: bool,
}

/// A `Write` that cuts a bundle's plaintext back into its files, checking each one's
/// SHA-256 against the manifest as it completes.
pub struct BundleSink {
    targets: Vec<Target>,
    index: usize,
    pos: u64,
    open: Option<(File, Sha256, u64)>,
    pub written_bytes: u64,
    pub written_files: u64,
    /// The targets are some of the bundle's files (an incremental takes a few from an
    /// older backup's bundle): bytes after the last one are read past.
    partial: bool,
}

impl BundleSink {
    /// `targets` must be the bundle's files, in offset order.
    pub fn new(targets: Vec<Target>) -> BundleSink {
        BundleSink {
            targets,
            index: 0,
            pos: 0,
            open: None,
            written_bytes: 0,
            written_files: 0,
            partial: false,
        }
    }

    /// A sink for some of a bundle's files: what follows the last one is not checked
    /// against the targets (the object as a whole is authenticated as it is read).
    pub fn partial(mut self) -> BundleSink {
        self.partial = true;
        self
    }

    fn start(&mut self) -> io::Result<()> {
        let t = &self.targets[self.index];
        if t.skip {
            self.open = None;
            return Ok(());
        }
        // Files were created at their full size beforehand; pieces land at their offsets.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(t.record.mode.max(0o600))
            .open(&t.dest)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", t.dest.display())))?;
        self.open = Some((file, Sha256::new(), 0));
        Ok(())
    }

    fn complete(&mut self) -> io::Result<()> {
        let t = &self.targets[self.index];
        if let Some((file, hasher, _)) = self.open.take() {
            // Start writing the piece back now, so the final flush finds little left
            // and disk writes overlap with the work on other pieces.
            {
                use std::os::fd::AsRawFd;
                // SAFETY: a hint on a descriptor we own; errors are harmless.
                unsafe {
                    libc::sync_file_range(
                        file.as_raw_fd(),
                        t.record.file_offset as i64,
                        t.record.size as i64,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
            }
            drop(file);
            let sha = hex::encode(hasher.finalize());
            if sha != t.record.sha256 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} does not match the manifest (sha256 {sha}, expected {})",
                        t.record.path, t.record.sha256
                    ),
                ));
            }
            self.written_files += 1;
        }
        self.index += 1;
        Ok(())
    }

    /// Open, and close at once, the empty files due at the current position.
    fn settle(&mut self) -> io::Result<()> {
        while self.index < self.targets.len() && self.targets[self.index].record.size == 0 {
            self.start()?;
            self.complete()?;
        }
        Ok(())
    }

    /// All files must have been seen whole.
    pub fn finish(mut self) -> io::Result<(u64, u64)> {
        self.settle()?;
        if self.index != self.targets.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("bundle ended before {}", self.targets[self.index].record.path),
            ));
        }
        Ok((self.written_files, self.written_bytes))
    }
}

impl Write for BundleSink {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let len = buf.len();
        while !buf.is_empty() {
            self.settle()?;
            if self.index >= self.targets.len() {
                if self.partial {
                    self.pos += buf.len() as u64;
                    return Ok(len);
                }
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bundle holds more data than its manifest says",
                ));
            }
            let t = &self.targets[self.index];
            if self.pos < t.record.offset {
                // Bytes of a file this restore does not want (not in the targets).
                let gap = ((t.record.offset - self.pos) as usize).min(buf.len());
                self.pos += gap as u64;
                buf = &buf[gap..];
                continue;
            }
            if self.open.is_none() && !t.skip {
                self.start()?;
            }
            let t = &self.targets[self.index];
            let end = t.record.offset + t.record.size;
            let take = ((end - self.pos) as usize).min(buf.len());
            if let Some((file, hasher, written)) = &mut self.open {
                // Where these bytes go in the file; of a referenced entry, only the
                // ranges the backup takes from it (the rest is newer elsewhere).
                use std::os::unix::fs::FileExt;
                let at = t.record.file_offset + (self.pos - t.record.offset);
                let chunk = [at, at + take as u64];
                for [a, b] in t.record.writes() {
                    let (a, b) = (a.max(chunk[0]), b.min(chunk[1]));
                    if a < b {
                        file.write_all_at(&buf[(a - at) as usize..(b - at) as usize], a)?;
                        self.written_bytes += b - a;
                    }
                }
                hasher.update(&buf[..take]);
                *written += take as u64;
            }
            self.pos += take as u64;
            buf = &buf[take..];
            if self.pos == end {
                self.complete()?;
            }
        }
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(files: &[(&str, PathBuf, u64, Option<u64>)]) -> FileQueue {
        Arc::new(Mutex::new(
            files
                .iter()
                .map(|(path, source, start, len)| FileToCopy {
                    path: path.to_string(),
                    source: source.clone(),
                    size: std::fs::metadata(source).map(|m| m.len()).unwrap_or(0),
                    mode: 0o600,
                    start: *start,
                    len: *len,
                })
                .collect(),
        ))
    }

    /// Files (and a large file in two pieces) concatenated into bundles come back out
    /// at their offsets, byte for byte; a vanished file is skipped, a changed byte is
    /// caught by its SHA-256.
    #[test]
    fn offsets_round_trip() {
        let src = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let big: Vec<u8> = (0..20000u32).map(|i| (i % 241) as u8).collect();
        std::fs::write(src.path().join("a"), &a).unwrap();
        std::fs::write(src.path().join("big"), &big).unwrap();
        let q = queue(&[
            ("a", src.path().join("a"), 0, None),
            ("gone", src.path().join("gone"), 0, None),
            ("big", src.path().join("big"), 0, Some(12000)),
            ("big", src.path().join("big"), 12000, None),
        ]);
        let records = Arc::new(Mutex::new(Vec::new()));
        // A limit smaller than the files: two bundles.
        let mut bundles = Vec::new();
        for n in 0..3u64 {
            let mut source = BundleSource::new(q.clone(), crate::repo::layout::bundle(n), 10000, records.clone());
            let mut bytes = Vec::new();
            source.read_to_end(&mut bytes).unwrap();
            if !bytes.is_empty() {
                bundles.push((crate::repo::layout::bundle(n), bytes));
            }
        }
        let records = records.lock().unwrap().clone();
        assert_eq!(records.len(), 3, "{records:?}");
        assert_eq!(bundles.len(), 2);
        assert_eq!(records[1].offset, 5000);
        assert_eq!(records[2].file_offset, 12000);
        assert_eq!(records[2].offset, 0);

        let dest = tempfile::tempdir().unwrap();
        let restore = |bundles: &[(String, Vec<u8>)]| -> io::Result<()> {
            for (name, bytes) in bundles {
                let targets: Vec<Target> = records
                    .iter()
                    .filter(|r| &r.bundle == name)
                    .map(|r| Target {
                        record: r.clone(),
                        dest: dest.path().join(&r.path),
                        skip: false,
                    })
                    .collect();
                let mut sink = BundleSink::new(targets);
                sink.write_all(bytes)?;
                sink.finish()?;
            }
            Ok(())
        };
        restore(&bundles).unwrap();
        assert_eq!(std::fs::read(dest.path().join("a")).unwrap(), a);
        assert_eq!(std::fs::read(dest.path().join("big")).unwrap(), big);
        let mut damaged = bundles.clone();
        damaged[0].1[4321] ^= 1;
        let err = restore(&damaged).unwrap_err();
        assert!(err.to_string().contains("does not match the manifest"), "{err}");
    }
}
