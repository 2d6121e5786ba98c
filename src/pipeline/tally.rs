//! Observer stages: count bytes and hash them (SHA-256) as they pass, for the manifest
//! and for verification. They never change the data.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Size and SHA-256 of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub size: u64,
    pub sha256: String,
}

struct Counter {
    hasher: Option<Sha256>,
    size: u64,
    progress: Option<Arc<AtomicU64>>,
}

impl Counter {
    fn new(progress: Option<Arc<AtomicU64>>) -> Counter {
        Counter {
            hasher: Some(Sha256::new()),
            size: 0,
            progress,
        }
    }

    fn see(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.size += data.len() as u64;
        if let Some(p) = &self.progress {
            p.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }

    /// The hash is empty when hashing was switched off.
    fn tally(self) -> Tally {
        Tally {
            size: self.size,
            sha256: self.hasher.map(|h| hex::encode(h.finalize())).unwrap_or_default(),
        }
    }
}

pub struct TallyReader<R> {
    inner: R,
    counter: Counter,
}

impl<R: Read> TallyReader<R> {
    /// `progress`, if given, is advanced by every byte read.
    pub fn new(inner: R, progress: Option<Arc<AtomicU64>>) -> Self {
        TallyReader {
            inner,
            counter: Counter::new(progress),
        }
    }

    /// Count only, do not hash (for objects whose hash nobody records).
    pub fn without_hash(mut self) -> Self {
        self.counter.hasher = None;
        self
    }

    pub fn finish(self) -> (R, Tally) {
        (self.inner, self.counter.tally())
    }
}

impl<R: Read> Read for TallyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.see(&buf[..n]);
        Ok(n)
    }
}

pub struct TallyWriter<W> {
    inner: W,
    counter: Counter,
}

impl<W: Write> TallyWriter<W> {
    pub fn new(inner: W, progress: Option<Arc<AtomicU64>>) -> Self {
        TallyWriter {
            inner,
            counter: Counter::new(progress),
        }
    }

    /// Count only, do not hash.
    pub fn without_hash(mut self) -> Self {
        self.counter.hasher = None;
        self
    }

    pub fn finish(self) -> (W, Tally) {
        (self.inner, self.counter.tally())
    }
}

impl<W: Write> Write for TallyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counter.see(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 of a file on disk, streamed.
pub fn sha256_file(path: &std::path::Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
