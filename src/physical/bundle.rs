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

use super::digest::{self, PieceHasher};
use crate::postgres::datadir::FileToCopy;
use crate::repo::manifest::FileRecord;

/// Files waiting to be copied, shared by the workers.
pub type FileQueue = Arc<Mutex<VecDeque<FileToCopy>>>;

/// A file's parts read one after another: one run (`start`, `len`) or an
/// incremental's extents. A file that ends early ends the piece there, and
/// `done` says which parts were read.
struct Parts {
    file: File,
    parts: Vec<[u64; 2]>,
    next: usize,
    left: u64,
    done: Vec<[u64; 2]>,
}

impl Parts {
    fn open(entry: &FileToCopy) -> io::Result<Parts> {
        let parts = match &entry.extents {
            Some(e) => e.clone(),
            None => vec![[entry.start, entry.len.map_or(u64::MAX, |len| entry.start + len)]],
        };
        Ok(Parts {
            file: File::open(&entry.source)?,
            parts,
            next: 0,
            left: 0,
            done: Vec::new(),
        })
    }
}

impl Read for Parts {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Seek;
        loop {
            if self.left == 0 {
                let Some(&[start, end]) = self.parts.get(self.next) else {
                    return Ok(0);
                };
                self.next += 1;
                self.file.seek(io::SeekFrom::Start(start))?;
                self.left = end - start;
                self.done.push([start, start]);
                continue;
            }
            let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
            let n = self.file.read(&mut buf[..want])?;
            if n == 0 {
                self.next = self.parts.len(); // the file ended: so does the piece
                self.left = 0;
                return Ok(0);
            }
            self.left -= n as u64;
            if let Some(last) = self.done.last_mut() {
                last[1] += n as u64;
            }
            return Ok(n);
        }
    }
}

struct Current {
    file: Parts,
    entry: FileToCopy,
    offset: u64,
    read: u64,
    hasher: PieceHasher,
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
            let mut record = FileRecord {
                path: cur.entry.path,
                size: cur.read,
                sha256: String::new(),
                blake3: None,
                mode: cur.entry.mode,
                bundle: self.bundle.clone(),
                offset: cur.offset,
                file_offset: cur.entry.start,
                backup: None,
                ranges: None,
                // The parts actually read (a file that shrank ends its piece early).
                extents: cur.entry.extents.is_some().then(|| {
                    let mut done = cur.file.done;
                    done.retain(|[a, b]| a < b);
                    done
                }),
            };
            cur.hasher.record_into(&mut record);
            self.records.lock().expect("records lock").push(record);
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
            let opened = Parts::open(&entry);
            match opened {
                Ok(file) => {
                    self.current = Some(Current {
                        file,
                        entry,
                        offset: self.pos,
                        read: 0,
                        hasher: PieceHasher::new(),
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

/// The piece being written: its file, the hash of its bytes so far, and where they go.
struct Open {
    file: File,
    hasher: PieceHasher,
    /// The file positions the piece's bytes fill, in order, with the piece offset
    /// each one starts at.
    extents: Vec<(u64, [u64; 2])>,
    /// The file positions to write (sorted): all of the piece, or a referred piece's
    /// ranges.
    writes: Vec<[u64; 2]>,
}

impl Open {
    /// Write the piece's bytes `buf`, which start at piece offset `from`, where they go.
    fn place(&mut self, from: u64, buf: &[u8]) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let to = from + buf.len() as u64;
        let mut written = 0;
        let first = self.extents.partition_point(|(at, [a, b])| at + (b - a) <= from);
        for &(at, [a, b]) in &self.extents[first..] {
            if at >= to {
                break;
            }
            // This extent's share of the chunk, in file positions.
            let lo = a + from.saturating_sub(at);
            let hi = a + (to - at).min(b - a);
            let w = self.writes.partition_point(|r| r[1] <= lo);
            for &[ra, rb] in &self.writes[w..] {
                if ra >= hi {
                    break;
                }
                let (x, y) = (ra.max(lo), rb.min(hi));
                if x < y {
                    let off = (at + (x - a) - from) as usize;
                    self.file.write_all_at(&buf[off..off + (y - x) as usize], x)?;
                    written += y - x;
                }
            }
        }
        self.hasher.update(buf);
        Ok(written)
    }
}

/// A `Write` that cuts a bundle's plaintext back into its files, checking each one's
/// SHA-256 against the manifest as it completes.
pub struct BundleSink {
    targets: Vec<Target>,
    index: usize,
    pos: u64,
    open: Option<Open>,
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
        let mut at = 0;
        let extents = t
            .record
            .extents()
            .into_iter()
            .map(|e| {
                let placed = (at, e);
                at += e[1] - e[0];
                placed
            })
            .collect();
        self.open = Some(Open {
            file,
            hasher: PieceHasher::for_record(&t.record),
            extents,
            writes: t.record.writes(),
        });
        Ok(())
    }

    fn complete(&mut self) -> io::Result<()> {
        let t = &self.targets[self.index];
        if let Some(Open { file, hasher, .. }) = self.open.take() {
            // Start writing the piece back now, so the final flush finds little left
            // and disk writes overlap with the work on other pieces. Not a scattered
            // piece (an incremental's changed blocks): those are written back with
            // the older bytes around them, in one run rather than block by block.
            if t.record.extents.is_none() {
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
            let got = hasher.finish();
            let (algorithm, expected) = digest::expected(&t.record);
            if !got.eq_ignore_ascii_case(expected) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} does not match the manifest ({algorithm} {got}, expected {expected})",
                        t.record.path
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
            if let Some(open) = &mut self.open {
                // Where these bytes go in the file; of a referenced entry, only the
                // ranges the backup takes from it (the rest is newer elsewhere).
                self.written_bytes += open.place(self.pos - t.record.offset, &buf[..take])?;
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
                    extents: None,
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

    /// A scattered piece (an incremental's changed blocks) goes back to its positions,
    /// and a referred piece writes only its ranges: every byte of the file once.
    #[test]
    fn extents_and_ranges_round_trip() {
        let src = tempfile::tempdir().unwrap();
        let old: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let changed = vec![[1000, 3000], [20_000, 20_500], [39_000, 40_000]];
        let mut new = old.clone();
        for [a, b] in &changed {
            for byte in &mut new[*a as usize..*b as usize] {
                *byte = byte.wrapping_add(1);
            }
        }
        let path = src.path().join("f");
        std::fs::write(&path, &new).unwrap();
        let q: FileQueue = Arc::new(Mutex::new(VecDeque::from(vec![FileToCopy {
            path: "f".into(),
            source: path.clone(),
            size: 3500,
            mode: 0o600,
            start: 1000,
            len: Some(3500),
            extents: Some(changed.clone()),
        }])));
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut bytes = Vec::new();
        BundleSource::new(q, "b1".into(), 1 << 20, records.clone())
            .read_to_end(&mut bytes)
            .unwrap();
        let piece = records.lock().unwrap()[0].clone();
        assert_eq!(piece.size, 3500);
        assert_eq!(piece.extents.as_deref(), Some(&changed[..]));
        // The older, whole piece, and the ranges of it the incremental still takes.
        let older = FileRecord {
            path: "f".into(),
            size: old.len() as u64,
            sha256: {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&old))
            },
            blake3: None,
            mode: 0o600,
            bundle: "b0".into(),
            offset: 0,
            file_offset: 0,
            backup: Some("B0".into()),
            ranges: Some(vec![[0, 1000], [3000, 20_000], [20_500, 39_000]]),
            extents: None,
        };
        let dest = tempfile::tempdir().unwrap();
        let out = dest.path().join("f");
        std::fs::File::create(&out).unwrap().set_len(40_000).unwrap();
        for (record, data) in [(older, &old), (piece, &bytes)] {
            let mut sink = BundleSink::new(vec![Target {
                record,
                dest: out.clone(),
                skip: false,
            }]);
            sink.write_all(data).unwrap();
            sink.finish().unwrap();
        }
        let got = std::fs::read(&out).unwrap();
        let first_difference = got.iter().zip(&new).position(|(a, b)| a != b);
        assert_eq!((got.len(), first_difference), (new.len(), None));
    }
}
