//! The pipeline turns plaintext into stored objects and back, streaming, in bounded
//! memory. It reads as a list:
//!
//! - store: `tally(plain) → zstd → seal → tally(stored) → storage`
//! - load:  `storage → tally(stored) → open → unzstd → tally(plain) → sink`
//! - reseal (a copy with its own key): `storage → tally → open → seal → tally → storage`
//!
//! The CPU stages run on a blocking thread; storage runs on the async runtime; a
//! bounded channel joins them. Commands call `Store` / `load_*` and never see the
//! channels.

pub mod keys;
pub mod seal;
pub mod tally;

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::mpsc;

pub use keys::{KeyId, Keyring, RepoKey};
use seal::{Opener, Sealer};
pub use tally::Tally;
use tally::{TallyReader, TallyWriter};

use crate::storage::{BodySender, DynStorage, ObjectKey, PutMode, StorageError, body_channel};

const READ_BUF: usize = 1 << 20;
const ZSTD_JOB_SIZE: u32 = 2 << 20;

/// Compression settings for new objects.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    pub level: i32,
    /// zstd worker threads; 0 compresses on the pipeline thread itself.
    pub threads: u32,
}

/// What the pipeline learned about one stored object: it goes into the manifest and
/// is checked again on every restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Key relative to the backup's directory (e.g. `databases/app.dump`).
    pub name: String,
    pub plain: Tally,
    pub stored: Tally,
}

/// A blocking writer that forwards bytes into a storage body channel.
struct ChannelWriter {
    tx: BodySender,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.tx.send_blocking(Bytes::copy_from_slice(data))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A blocking reader over a storage download channel.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, StorageError>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(data)) => self.current = data,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

fn copy_all<R: Read + ?Sized, W: Write + ?Sized>(r: &mut R, w: &mut W) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// The producing half of a store: plaintext → zstd → seal → stored bytes.
fn produce<R: Read>(
    source: R,
    out: ChannelWriter,
    key: &RepoKey,
    object: &str,
    compression: Compression,
    digests: Digests,
    progress: Option<Arc<AtomicU64>>,
) -> io::Result<(Tally, Tally, ChannelWriter)> {
    let mut plain = TallyReader::new(source, progress);
    if digests != Digests::Both {
        plain = plain.without_hash();
    }
    let mut stored = TallyWriter::new(out, None);
    if digests == Digests::None {
        stored = stored.without_hash();
    }
    let sealer = Sealer::new(stored, key, object)?;
    let mut zstd = zstd::stream::write::Encoder::new(sealer, compression.level)?;
    if compression.threads > 0 {
        zstd.multithread(compression.threads)?;
        // Smaller jobs than zstd's default (4 windows) keep memory bounded per worker.
        zstd.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
    }
    copy_all(&mut plain, &mut zstd)?;
    let sealer = zstd.finish()?;
    let stored = sealer.finish()?;
    let (_, plain_tally) = plain.finish();
    let (out, stored_tally) = stored.finish();
    Ok((plain_tally, stored_tally, out))
}

/// Which digests a store computes. Manifests list both; bundles only the stored one
/// (their files are hashed one by one); WAL segments none (no manifest lists them, and
/// the AEAD tags protect every byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digests {
    Both,
    StoredOnly,
    None,
}

/// Where and how new objects are stored: the storage, the keys (the primary one
/// encrypts) and the compression settings.
#[derive(Clone, Copy)]
pub struct Store<'a> {
    pub storage: &'a DynStorage,
    pub keys: &'a Keyring,
    pub compression: Compression,
    /// Which SHA-256 digests to compute for the manifest.
    pub digests: Digests,
}

impl Store<'_> {
    /// Store everything `source` yields as object `key`. `name` is what the manifest
    /// calls it. The object becomes visible only if `source` reaches its end without
    /// error (a reader that reports a failed child process at EOF keeps it invisible).
    pub async fn reader<R: Read + Send + 'static>(
        &self,
        key: &ObjectKey,
        name: &str,
        source: R,
        mode: PutMode,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<ObjectRecord> {
        let (tx, rx) = body_channel();
        let repo_key = self.keys.primary().clone();
        let object = self.keys.context(key.as_str());
        let compression = self.compression;
        let digests = self.digests;
        let producer = tokio::task::spawn_blocking(move || {
            let out = ChannelWriter { tx };
            // On error the sender is dropped with the writer: storage sees an
            // unfinished body and discards it.
            let (plain, stored, out) = produce(source, out, &repo_key, &object, compression, digests, progress)?;
            out.tx.finish_blocking();
            io::Result::Ok((plain, stored))
        });
        let stored = self.storage.put_stream(key, rx, mode).await;
        let produced = producer.await.map_err(|e| anyhow!("pipeline thread failed: {e}"))?;
        match (produced, stored) {
            (Ok((plain, stored_tally)), Ok(size)) => {
                debug_assert_eq!(size, stored_tally.size);
                Ok(ObjectRecord {
                    name: name.to_string(),
                    plain,
                    stored: stored_tally,
                })
            }
            // The storage side failed on its own: its error is the cause.
            (_, Err(e)) if !matches!(e, StorageError::Source(_)) => Err(e).context(format!("storing {key}")),
            (Err(e), _) => Err(anyhow::Error::new(e)),
            (Ok(_), Err(e)) => Err(e).context(format!("storing {key}")),
        }
    }

    /// Store an object held whole in memory (manifests, reports) in one piece: zstd
    /// compresses it in one pass over the caller's bytes (no streaming window to copy
    /// through) and the sealed object goes to storage in one put.
    pub async fn bytes<B: AsRef<[u8]> + Send + 'static>(
        &self,
        key: &ObjectKey,
        name: &str,
        data: B,
        mode: PutMode,
    ) -> Result<ObjectRecord> {
        self.loaded(key, name, move || Ok(data), mode).await
    }

    /// As `bytes`, for an object that `load` brings into memory. `load` runs only
    /// once the object's turn to be compressed has come, so objects waiting for a
    /// core hold no memory.
    pub async fn loaded<B, F>(&self, key: &ObjectKey, name: &str, load: F, mode: PutMode) -> Result<ObjectRecord>
    where
        B: AsRef<[u8]>,
        F: FnOnce() -> Result<B> + Send + 'static,
    {
        self.sealed_whole(key, name, mode, move |repo_key, object, level, digests| {
            let data = load()?;
            Ok(seal_whole(data.as_ref(), repo_key, object, level, digests)?)
        })
        .await
    }

    /// Store a local file of at most a few tens of MiB (a WAL segment) in one put: it
    /// is read in 1 MiB pieces through a streaming zstd context, so a compression
    /// holds the window and the compressed bytes, not the file (the WAL pusher keeps
    /// several segments in flight).
    pub async fn file(
        &self,
        key: &ObjectKey,
        name: &str,
        path: &std::path::Path,
        mode: PutMode,
    ) -> Result<ObjectRecord> {
        let path = path.to_path_buf();
        self.sealed_whole(key, name, mode, move |repo_key, object, level, digests| {
            seal_file(&path, repo_key, object, level, digests)
                .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
        })
        .await
    }

    /// Seal an object whole with `seal` (on a blocking thread, once a core is
    /// free), then store it in one put.
    async fn sealed_whole<F>(&self, key: &ObjectKey, name: &str, mode: PutMode, seal: F) -> Result<ObjectRecord>
    where
        F: FnOnce(&RepoKey, &str, i32, Digests) -> Result<(Vec<u8>, Tally, Tally)> + Send + 'static,
    {
        let repo_key = self.keys.primary().clone();
        let object = self.keys.context(key.as_str());
        let level = self.compression.level;
        let digests = self.digests;
        // Compression is CPU-bound: more at once than there are cores only makes them
        // evict each other's tables from the caches. Storage calls overlap freely.
        let cpu = cpu_gate()
            .acquire()
            .await
            .map_err(|e| anyhow!("pipeline gate closed: {e}"))?;
        let (sealed, plain, stored) = tokio::task::spawn_blocking(move || seal(&repo_key, &object, level, digests))
            .await
            .map_err(|e| anyhow!("pipeline thread failed: {e}"))??;
        drop(cpu);
        self.storage
            .put(key, Bytes::from(sealed), mode)
            .await
            .with_context(|| format!("storing {key}"))?;
        Ok(ObjectRecord {
            name: name.to_string(),
            plain,
            stored,
        })
    }
}

/// Admits as many whole-object compressions at once as there are cores.
fn cpu_gate() -> &'static tokio::sync::Semaphore {
    static GATE: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    GATE.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// zstd contexts and their output buffers, kept from object to object (allocated
/// once, not per WAL segment); never more than the gate admits at once.
static COMPRESSORS: std::sync::Mutex<Vec<Compressor>> = std::sync::Mutex::new(Vec::new());

struct Compressor {
    level: i32,
    zstd: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

/// Compress `data` in one pass and hand the compressed bytes to `then`.
fn compress_whole<T>(data: &[u8], level: i32, then: impl FnOnce(&[u8]) -> io::Result<T>) -> io::Result<T> {
    let pooled = {
        let mut pool = COMPRESSORS.lock().unwrap_or_else(|e| e.into_inner());
        pool.iter().position(|c| c.level == level).map(|i| pool.swap_remove(i))
    };
    let mut c = match pooled {
        Some(c) => c,
        None => Compressor {
            level,
            zstd: zstd::bulk::Compressor::new(level)?,
            out: Vec::new(),
        },
    };
    c.out.clear();
    c.out.reserve(zstd::zstd_safe::compress_bound(data.len()));
    c.zstd.compress_to_buffer(data, &mut c.out)?;
    let result = then(&c.out);
    COMPRESSORS.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    result
}

/// zstd in one pass, then sealed into one buffer; the tallies as `digests` asks.
fn seal_whole(
    data: &[u8],
    key: &RepoKey,
    object: &str,
    level: i32,
    digests: Digests,
) -> io::Result<(Vec<u8>, Tally, Tally)> {
    let sealed = compress_whole(data, level, |compressed| seal::seal_slice(compressed, key, object))?;
    let digest = |bytes: &[u8], wanted: bool| Tally {
        size: bytes.len() as u64,
        sha256: if wanted {
            hex::encode(sha2::Sha256::digest(bytes))
        } else {
            String::new()
        },
    };
    let plain = digest(data, digests == Digests::Both);
    let stored = digest(&sealed, digests != Digests::None);
    Ok((sealed, plain, stored))
}

/// zstd streamed from the file at `path` in 1 MiB pieces, then sealed into one
/// buffer; the tallies as `digests` asks. The file must not change while it is read
/// (a WAL segment PostgreSQL marked ready does not).
fn seal_file(
    path: &std::path::Path,
    key: &RepoKey,
    object: &str,
    level: i32,
    digests: Digests,
) -> io::Result<(Vec<u8>, Tally, Tally)> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut zstd = zstd::stream::write::Encoder::new(Vec::with_capacity(len as usize / 4), level)?;
    zstd.set_pledged_src_size(Some(len))?;
    zstd.include_contentsize(true)?;
    let mut plain_sha = (digests == Digests::Both).then(sha2::Sha256::new);
    let mut piece = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut piece)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if let Some(sha) = &mut plain_sha {
            sha.update(&piece[..n]);
        }
        zstd.write_all(&piece[..n])?;
    }
    if read != len {
        return Err(io::Error::other(format!(
            "{} changed while it was read",
            path.display()
        )));
    }
    let compressed = zstd.finish()?;
    let sealed = seal::seal_slice(&compressed, key, object)?;
    let stored = Tally {
        size: sealed.len() as u64,
        sha256: if digests != Digests::None {
            hex::encode(sha2::Sha256::digest(&sealed))
        } else {
            String::new()
        },
    };
    let plain = Tally {
        size: len,
        sha256: plain_sha.map(|h| hex::encode(h.finalize())).unwrap_or_default(),
    };
    Ok((sealed, plain, stored))
}

/// Why a load failed, when the stored bytes are at fault (not the sink).
fn damaged(key: &ObjectKey, err: io::Error) -> anyhow::Error {
    // The store, not the bytes: the body broke off on the way (read it again).
    let err = match crate::storage::StorageError::from_io(err) {
        Ok(crate::storage::StorageError::Corrupt(why)) => return Damaged(why).into(),
        Ok(storage) => return anyhow::Error::new(storage).context(format!("reading {key}")),
        Err(err) => err,
    };
    if let Some(seal @ seal::SealError::UnknownKey(_)) = seal::seal_error(&err) {
        return MissingKey(format!("{key} {seal}")).into();
    }
    if let Some(seal) = seal::seal_error(&err) {
        return Damaged(format!("{key} {seal}")).into();
    }
    if err.kind() == io::ErrorKind::InvalidData || err.kind() == io::ErrorKind::Other {
        return Damaged(format!("{key} cannot be read: {err}")).into();
    }
    anyhow::Error::new(err)
}

/// A stored object failed its integrity checks (authentication, size or digest): it
/// was modified, truncated, moved or replaced. Callers may branch on it (wal-fetch
/// stops recovery rather than let PostgreSQL take it for the end of the archive).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Damaged(pub String);

/// A stored object was encrypted with a key this host does not hold (a retired key
/// taken away, another repository's key). Nothing is known to be wrong with the
/// object: it is not `Damaged`, and nothing may replace it on that ground.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MissingKey(pub String);

/// How a load checks what it reads. Every load is authenticated chunk by chunk (AEAD);
/// digests add a check against the manifest.
#[derive(Clone, Copy)]
pub enum Verify<'a> {
    /// Authentication only (WAL fetches, `cat`).
    Authenticated,
    /// Compute both digests and return them, nothing to compare with.
    Digests,
    /// Compare stored and plaintext size and SHA-256 with the manifest's record.
    Record(&'a ObjectRecord),
    /// Compare the stored SHA-256 and both sizes; the caller checks the plaintext
    /// itself (a physical restore hashes every file).
    RecordStored(&'a ObjectRecord),
}

/// Stream object `key` through open → unzstd into `sink`, checking it as `verify`
/// says. `progress` counts plaintext bytes. Returns the sink and what was seen.
pub async fn load_to_writer<W: Write + Send + 'static>(
    storage: &DynStorage,
    key: &ObjectKey,
    sink: W,
    keys: &Keyring,
    verify: Verify<'_>,
    progress: Option<Arc<AtomicU64>>,
) -> Result<(W, Tally, Tally)> {
    let rx = storage
        .get_stream(key)
        .await
        .with_context(|| format!("reading {key}"))?;
    load_from(rx, key, sink, keys, verify, progress).await
}

/// `load_to_writer` from a body already requested.
async fn load_from<W: Write + Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<crate::storage::Result<Bytes>>,
    key: &ObjectKey,
    sink: W,
    keys: &Keyring,
    verify: Verify<'_>,
    progress: Option<Arc<AtomicU64>>,
) -> Result<(W, Tally, Tally)> {
    let keys = keys.clone();
    let object = keys.context(key.as_str());
    let task_key = key.clone();
    let (stored_digest, plain_digest) = match verify {
        Verify::Authenticated => (false, false),
        Verify::Digests | Verify::Record(_) => (true, true),
        Verify::RecordStored(_) => (true, false),
    };
    let result = tokio::task::spawn_blocking(move || -> Result<(W, Tally, Tally)> {
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        open_reader(
            reader,
            sink,
            &keys,
            &object,
            &task_key,
            (stored_digest, plain_digest),
            progress,
        )
    })
    .await
    .map_err(|e| anyhow!("pipeline thread failed: {e}"))??;
    let (_, plain, stored) = &result;
    let mismatch = match verify {
        Verify::Record(expect) => stored != &expect.stored || plain != &expect.plain,
        Verify::RecordStored(expect) => stored != &expect.stored || plain.size != expect.plain.size,
        Verify::Authenticated | Verify::Digests => false,
    };
    if let (true, Verify::Record(expect) | Verify::RecordStored(expect)) = (mismatch, verify) {
        return Err(anyhow::Error::new(Damaged(format!(
            "{key} does not match its manifest (stored sha256 {} size {}, manifest says sha256 {} size {}) — the object was replaced or damaged",
            stored.sha256, stored.size, expect.stored.sha256, expect.stored.size
        ))));
    }
    Ok(result)
}

/// open → unzstd from `reader` into `sink`, tallying the stored and plaintext bytes
/// (`digests`: whether each is hashed). Any failure to authenticate or decompress is
/// `Damaged`.
fn open_reader<R: Read, W: Write>(
    reader: R,
    sink: W,
    keys: &Keyring,
    object: &str,
    key: &ObjectKey,
    (stored_digest, plain_digest): (bool, bool),
    progress: Option<Arc<AtomicU64>>,
) -> Result<(W, Tally, Tally)> {
    let mut stored = TallyReader::new(reader, None);
    if !stored_digest {
        stored = stored.without_hash();
    }
    let opener = Opener::new(stored, keys, object).map_err(|e| damaged(key, e))?;
    let mut unzstd = zstd::stream::read::Decoder::new(opener).map_err(|e| damaged(key, e))?;
    let mut plain = TallyWriter::new(sink, progress);
    if !plain_digest {
        plain = plain.without_hash();
    }
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match unzstd.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(damaged(key, e)),
        };
        plain.write_all(&buf[..n])?;
    }
    // The decoder reads on to the end of its input; make sure the opener saw the
    // sealed end (the flagged last chunk), not just the end of a zstd frame.
    let mut opener = unzstd.finish().into_inner();
    let mut rest = Vec::new();
    opener.read_to_end(&mut rest).map_err(|e| damaged(key, e))?;
    if !rest.is_empty() {
        return Err(Damaged(format!("{key} has trailing data after its compressed stream")).into());
    }
    let (_, stored_tally) = opener.into_inner().finish();
    let (sink, plain_tally) = plain.finish();
    Ok((sink, plain_tally, stored_tally))
}

/// Authenticate a whole stored object held in memory (it is opened and decompressed
/// to nowhere): `Damaged` unless every chunk checks out under `keys`, bound to `key`.
/// Returns the stored bytes' tally.
pub fn check_sealed(data: &[u8], key: &ObjectKey, keys: &Keyring) -> Result<Tally> {
    let object = keys.context(key.as_str());
    let (_, _, stored) = open_reader(data, io::sink(), keys, &object, key, (true, false), None)?;
    Ok(stored)
}

/// Open a small stored object held in memory: its plaintext and the stored tally.
pub fn open_sealed(data: &[u8], key: &ObjectKey, keys: &Keyring) -> Result<(Vec<u8>, Tally)> {
    let object = keys.context(key.as_str());
    let (plain, _, stored) = open_reader(data, Vec::new(), keys, &object, key, (true, false), None)?;
    Ok((plain, stored))
}

/// Re-encrypt a stored object for a repository with another key, its compressed
/// contents untouched (no zstd work): `from` → tally → open under `from_keys` → seal
/// under `to_keys`' primary key → tally → `to`. The input must authenticate and, when
/// `expect` is given, match it (size and SHA-256: the manifest's record); otherwise the
/// upload is abandoned and nothing becomes visible. Returns the new stored tally.
pub async fn reseal(
    (from, from_keys): (&DynStorage, &Keyring),
    key: &ObjectKey,
    expect: Option<&Tally>,
    (to, to_keys): (&DynStorage, &Keyring),
    mode: PutMode,
    progress: Arc<AtomicU64>,
) -> Result<Tally> {
    let rx = from.get_stream(key).await.with_context(|| format!("reading {key}"))?;
    let (tx, body) = body_channel();
    let (from_keys, to_keys, task_key) = (from_keys.clone(), to_keys.clone(), key.clone());
    let expect = expect.cloned();
    let producer = tokio::task::spawn_blocking(move || -> Result<Tally> {
        let reader = TallyReader::new(
            ChannelReader {
                rx,
                current: Bytes::new(),
            },
            Some(progress),
        );
        let mut opener = Opener::new(reader, &from_keys, &from_keys.context(task_key.as_str()))
            .map_err(|e| damaged(&task_key, e))?;
        let out = TallyWriter::new(ChannelWriter { tx }, None);
        let mut sealer = Sealer::new(out, to_keys.primary(), &to_keys.context(task_key.as_str()))?;
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match opener.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(damaged(&task_key, e)),
            };
            sealer.write_all(&buf[..n])?;
        }
        let (_, read) = opener.into_inner().finish();
        if let Some(expect) = &expect
            && read != *expect
        {
            // The writer (and its sender) is dropped unfinished: storage discards it.
            return Err(Damaged(format!(
                "{task_key} does not match its manifest (stored sha256 {} size {}, the manifest says sha256 {} size {}) — it is damaged there and was not copied",
                read.sha256, read.size, expect.sha256, expect.size
            ))
            .into());
        }
        let (out, written) = sealer.finish()?.finish();
        out.tx.finish_blocking();
        Ok(written)
    });
    let stored = to.put_stream(key, body, mode).await;
    let produced = producer.await.map_err(|e| anyhow!("pipeline thread failed: {e}"))?;
    match (produced, stored) {
        (Ok(tally), Ok(_)) => Ok(tally),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e).context(format!("storing {key}")),
    }
}

/// Load a small object whole.
/// A small object (manifest, lease, WAL file, history) read whole: a body that breaks
/// off or fails its transport checksum is read again by the store (`Storage::get`),
/// which a stream, already handed on, cannot be.
pub async fn load_bytes(storage: &DynStorage, key: &ObjectKey, keys: &Keyring) -> Result<Vec<u8>> {
    let (data, _, _) = load_whole_to_writer(storage, key, Vec::new(), keys, Verify::Authenticated).await?;
    Ok(data)
}

/// `load_to_writer` for an object small enough to read whole (a WAL segment): read
/// again by the store when it breaks off or fails its checksum on the way.
pub async fn load_whole_to_writer<W: Write + Send + 'static>(
    storage: &DynStorage,
    key: &ObjectKey,
    sink: W,
    keys: &Keyring,
    verify: Verify<'_>,
) -> Result<(W, Tally, Tally)> {
    open_whole_to_writer(storage.get(key).await, key, sink, keys, verify).await
}

/// `load_whole_to_writer` of a GET already made (`got`: its outcome), e.g. one sent
/// beside another request.
pub async fn open_whole_to_writer<W: Write + Send + 'static>(
    got: crate::storage::Result<Bytes>,
    key: &ObjectKey,
    sink: W,
    keys: &Keyring,
    verify: Verify<'_>,
) -> Result<(W, Tally, Tally)> {
    let whole = match got {
        Err(crate::storage::StorageError::Corrupt(why)) => return Err(Damaged(why).into()),
        other => other.with_context(|| format!("reading {key}"))?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.try_send(Ok(whole));
    drop(tx);
    load_from(rx, key, sink, keys, verify, None).await
}

/// A stored object failed its integrity checks (`Damaged`).
pub fn is_damaged(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Damaged>())
}

/// A stored object was sealed with a key this host does not hold.
pub fn is_missing_key(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<MissingKey>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ObjectKey, PutMode};

    /// The whole chain on a real (local) store: tally → zstd → seal → store, and
    /// back. Streamed and whole-buffer writes read back the same bytes with the
    /// recorded digests; a flipped stored byte is `Damaged`, never data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chain_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let storage: DynStorage =
            std::sync::Arc::new(crate::storage::local::LocalStorage::new(dir.path().to_path_buf()));
        let mut keys = Keyring::new(keys::RepoKey::from_bytes(&[7u8; 32]));
        keys.bind("test", "1");
        let store = Store {
            storage: &storage,
            keys: &keys,
            compression: Compression { level: 3, threads: 1 },
            digests: Digests::Both,
        };
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 97) as u8 ^ (i / 1000) as u8).collect();
        let streamed = ObjectKey::new("objects/streamed").unwrap();
        let whole = ObjectKey::new("objects/whole").unwrap();
        let rec = store
            .reader(
                &streamed,
                "streamed",
                std::io::Cursor::new(data.clone()),
                PutMode::CreateNew,
                None,
            )
            .await
            .unwrap();
        store
            .bytes(&whole, "whole", data.clone(), PutMode::CreateNew)
            .await
            .unwrap();
        assert_eq!(rec.plain.size, data.len() as u64);
        assert!(rec.stored.size < rec.plain.size, "zstd did not compress");
        for key in [&streamed, &whole] {
            assert_eq!(load_bytes(&storage, key, &keys).await.unwrap(), data);
        }
        let (_, plain, _) = load_to_writer(&storage, &streamed, std::io::sink(), &keys, Verify::Record(&rec), None)
            .await
            .unwrap();
        assert_eq!(plain.sha256, rec.plain.sha256);

        let path = dir.path().join("objects/streamed");
        let mut stored = std::fs::read(&path).unwrap();
        let mid = stored.len() / 2;
        stored[mid] ^= 0x40;
        std::fs::write(&path, stored).unwrap();
        let err = load_bytes(&storage, &streamed, &keys).await.unwrap_err();
        assert!(crate::pipeline::is_damaged(&err), "{err:#}");
    }
}
