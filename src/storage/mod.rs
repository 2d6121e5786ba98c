//! Storage moves opaque bytes under keys. It knows nothing of backups or encryption;
//! two backends (local filesystem, S3) implement one small trait, and one conformance
//! suite (tests/storage_conformance.rs) holds both to the same contract.

mod direct;
pub mod dry_run;
pub mod ignore_conditions;
pub mod local;
pub mod no_overwrite;
pub mod retry;
#[cfg(feature = "s3")]
pub mod s3;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

pub use local::LocalStorage;
#[cfg(feature = "s3")]
pub use s3::S3Storage;

/// A key relative to the cluster's area of the repository, e.g.
/// `backups/20261126T020000Z-L/manifest.json`. Built only by `repo::layout`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Keys are `/`-separated relative paths of non-empty, non-dot components.
    pub fn new(key: impl Into<String>) -> Result<Self, StorageError> {
        let key = key.into();
        let valid = !key.is_empty()
            && key
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if valid {
            Ok(ObjectKey(key))
        } else {
            Err(StorageError::Permanent(format!("invalid object key {key:?}")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a listing says about one object.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub key: ObjectKey,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

/// S3 Object Lock's default retention: every new object version is kept `days` days.
/// COMPLIANCE: nobody can shorten it or delete the version, whatever their rights;
/// GOVERNANCE: users with s3:BypassGovernanceRetention can.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Compliance,
    Governance,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        })
    }
}

/// A versioned store's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Versioning {
    /// The default retention, if Object Lock is on.
    pub lock: Option<ObjectLock>,
}

/// One version of an object, or a delete marker, in a versioned store.
#[derive(Debug, Clone)]
pub struct ObjectVersion {
    pub key: ObjectKey,
    pub version_id: String,
    /// The current version (or current delete marker) of its key.
    pub is_latest: bool,
    pub delete_marker: bool,
}

/// An object a delete left in place, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    pub key: ObjectKey,
    pub reason: String,
}

/// Whether a put may replace an object that is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    Overwrite,
    /// Fail with `StorageError::AlreadyExists` if the key exists. Backends check this
    /// as atomically as they can; callers that must never overwrite (WAL, manifests)
    /// still compare what is there, because some S3 servers ignore `If-None-Match`.
    CreateNew,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0} does not exist in the repository")]
    NotFound(String),
    #[error("{0} already exists in the repository")]
    AlreadyExists(String),
    /// The repository itself cannot be reached (endpoint down, bucket missing,
    /// directory missing): nothing will work until the operator fixes it.
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    NoSpace(String),
    /// Worth retrying later (throttling, timeouts) — the backends already retried.
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
    /// Every byte arrived, and failed the store's own checksum on every read: the
    /// object is damaged where it is stored (not on the way).
    #[error("{0}")]
    Corrupt(String),
    /// A read's body broke off, or failed the store's checksum on the way (`whole`:
    /// every byte arrived). Reading again may succeed: `storage::retry` does, and
    /// never hands this on.
    #[error("{why}")]
    Interrupted { why: String, whole: bool },
    /// The producer of a streamed body failed; the object was not stored.
    #[error("{0}")]
    Source(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The storage error in an `anyhow` chain, if any.
pub fn error_in(err: &anyhow::Error) -> Option<&StorageError> {
    err.chain().find_map(|e| e.downcast_ref::<StorageError>())
}

/// Storage positively said the object is not there.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    matches!(error_in(err), Some(StorageError::NotFound(_)))
}

/// A create-if-absent put found the object there.
pub fn is_already_exists(err: &anyhow::Error) -> bool {
    matches!(error_in(err), Some(StorageError::AlreadyExists(_)))
}

/// The repository did not answer (as opposed to a bad object).
pub fn is_unreachable(err: &anyhow::Error) -> bool {
    matches!(
        error_in(err),
        Some(StorageError::Unreachable(_) | StorageError::Transient(_) | StorageError::Interrupted { .. })
    )
}

impl StorageError {
    /// The storage error a reader carried through `io::Error` (a stream that broke
    /// off while it was read), given back as itself; any other I/O error unchanged.
    pub fn from_io(err: std::io::Error) -> std::result::Result<StorageError, std::io::Error> {
        if !err.get_ref().is_some_and(|e| e.is::<StorageError>()) {
            return Err(err);
        }
        match err.into_inner().map(|e| e.downcast::<StorageError>()) {
            Some(Ok(storage)) => Ok(*storage),
            _ => Err(std::io::Error::other("a storage error that could not be unpacked")),
        }
    }
}

/// The storage contract. Every method is safe to call concurrently.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Where this backend stores things, for messages (never contains secrets).
    fn describe(&self) -> String;

    /// Store a small object in one go.
    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<()>;

    /// Store a streamed object of unknown length. The object becomes visible only if
    /// the body ends with `BodySender::finish`; if the sender fails or is dropped, the
    /// partial upload is removed (aborted) and `StorageError::Source` is returned.
    /// Memory stays bounded whatever the size. Returns the number of bytes stored.
    async fn put_stream(&self, key: &ObjectKey, body: BodyReceiver, mode: PutMode) -> Result<u64>;

    /// Read a whole object. Must return `StorageError::NotFound` if it is absent.
    async fn get(&self, key: &ObjectKey) -> Result<Bytes>;

    /// Stream an object in pieces through a bounded channel. Must return
    /// `StorageError::NotFound` if it is absent.
    async fn get_stream(&self, key: &ObjectKey) -> Result<mpsc::Receiver<Result<Bytes>>>;

    /// Size and time of an object, `None` if absent.
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix`, recursively, in key order. A
    /// prefix with nothing under it returns an empty list, not an error.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Delete objects; keys that are already gone are not an error. Keys the store
    /// refuses to delete (S3 Object Lock, a read-only file) are returned with the
    /// reason, not treated as a failure of the whole call.
    async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<Refused>>;

    /// Whether the store keeps versions of objects (S3 versioning), and the default
    /// Object Lock retention it applies to new ones. Stores without versions: `None`.
    async fn versioning(&self) -> Result<Option<Versioning>> {
        Ok(None)
    }

    /// Every version and delete marker under `prefix` (a versioned store only).
    async fn versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>> {
        let _ = prefix;
        Err(StorageError::Permanent(format!(
            "{} keeps no object versions",
            self.describe()
        )))
    }

    /// Remove one version (or delete marker) for good. `Ok(Some(reason))` when the
    /// store refuses — a version under Object Lock retention.
    async fn delete_version(&self, key: &ObjectKey, version: &str) -> Result<Option<String>> {
        let _ = (key, version);
        Err(StorageError::Permanent(format!(
            "{} keeps no object versions",
            self.describe()
        )))
    }

    /// Turn on versioning and a default Object Lock retention for every new object.
    async fn enable_object_lock(&self, lock: &ObjectLock) -> Result<()> {
        let _ = lock;
        Err(StorageError::Permanent(format!(
            "{} cannot lock objects: Object Lock needs an S3 repository",
            self.describe()
        )))
    }

    /// Whether a successful put is proof that the object is stored as sent (pgdr's own
    /// write, fsync and rename on a local filesystem). A remote store may acknowledge
    /// a body it did not keep or kept damaged: callers that must be sure read it back.
    fn put_is_proof(&self) -> bool {
        false
    }
}

pub type DynStorage = Arc<dyn Storage>;

/// Message on a body channel. The explicit `End` is what makes an object complete:
/// a channel that closes without it means the producer died.
enum Piece {
    Data(Bytes),
    End,
    Fail(String),
}

/// How many pieces may wait in a body channel: bounds memory to this many chunks.
const BODY_CHANNEL_DEPTH: usize = 4;

/// The producing side of a streamed body; used from blocking threads.
pub struct BodySender {
    tx: mpsc::Sender<Piece>,
}

/// The consuming side, handed to `Storage::put_stream`.
pub struct BodyReceiver {
    rx: mpsc::Receiver<Piece>,
}

pub fn body_channel() -> (BodySender, BodyReceiver) {
    let (tx, rx) = mpsc::channel(BODY_CHANNEL_DEPTH);
    (BodySender { tx }, BodyReceiver { rx })
}

impl BodySender {
    /// Send from a blocking (non-async) thread. Fails if the storage side gave up.
    pub fn send_blocking(&self, data: Bytes) -> std::io::Result<()> {
        self.tx
            .blocking_send(Piece::Data(data))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "storage upload stopped"))
    }

    pub async fn send(&self, data: Bytes) -> std::io::Result<()> {
        self.tx
            .send(Piece::Data(data))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "storage upload stopped"))
    }

    /// The body is complete: the object may become visible.
    pub fn finish_blocking(self) {
        let _ = self.tx.blocking_send(Piece::End);
    }

    pub async fn finish(self) {
        let _ = self.tx.send(Piece::End).await;
    }

    /// The producer failed; the storage side must discard what it has.
    pub async fn fail(self, why: String) {
        let _ = self.tx.send(Piece::Fail(why)).await;
    }

    /// As `fail`, from a blocking thread.
    pub fn fail_blocking(self, why: String) {
        let _ = self.tx.blocking_send(Piece::Fail(why));
    }
}

impl BodyReceiver {
    /// The next piece of data; `Ok(None)` at a proper end, `Err(Source)` if the
    /// producer failed or vanished.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        match self.rx.recv().await {
            Some(Piece::Data(data)) => Ok(Some(data)),
            Some(Piece::End) => Ok(None),
            Some(Piece::Fail(why)) => Err(StorageError::Source(why)),
            None => Err(StorageError::Source("the data source stopped before the end".into())),
        }
    }
}

/// Open the backend a repository URL names: `file:///path` or `s3://bucket/prefix`,
/// scoped to one cluster's area (`<root>/<cluster>/`).
pub async fn open(repo: &crate::config::RepositoryConfig, cluster: &str) -> anyhow::Result<DynStorage> {
    use crate::config::RepoUrl;
    Ok(match &repo.parsed_url()? {
        RepoUrl::Local(path) => Arc::new(LocalStorage::new(path.join(cluster))),
        #[cfg(feature = "s3")]
        RepoUrl::S3 { bucket, prefix } => {
            let prefix = if prefix.is_empty() {
                cluster.to_string()
            } else {
                format!("{prefix}/{cluster}")
            };
            let s3: DynStorage = Arc::new(S3Storage::connect(repo, bucket, &prefix).await?);
            Arc::new(retry::Retry::new(
                s3,
                repo.s3_max_attempts,
                std::time::Duration::from_millis(200),
            ))
        }
        #[cfg(not(feature = "s3"))]
        RepoUrl::S3 { .. } => {
            return Err(crate::usage!("this pgdr was built without S3 support (the s3 feature)"));
        }
    })
}
