//! A backend wrapper that keeps `PutMode::CreateNew` true on a store that ignores
//! `If-None-Match` (Garage, some MinIO versions; `repo.json` records it as
//! `ignores_if_none_match`, probed by `init` and `check`). Such a store would let a
//! second manifest, lease or WAL file replace the first without a word, so this
//! wrapper looks before every create-new write and answers `AlreadyExists` for a key
//! that is there, as an honouring store would. Callers write one rule for both kinds
//! of store: put with `CreateNew`, and on `AlreadyExists` compare or give way.
//!
//! Looking first narrows the window, it cannot close it: two writers that both look
//! before either writes both go ahead. Where that race matters, the callers close it
//! themselves — WAL names are claimed first (`archive::claim`), a lease is read back.
//! On a store that honours the condition the wrapper is not used at all ([`guard`]),
//! so it costs nothing there.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    BodyReceiver, DynStorage, ObjectKey, ObjectLock, ObjectMeta, ObjectVersion, PutMode, Refused, Result, Storage,
    StorageError, Versioning,
};

#[derive(Debug)]
pub struct NoOverwrite(DynStorage);

/// `storage` as writers of a repository must see it: wrapped when the store ignores
/// `If-None-Match`, as it is otherwise.
pub fn guard(storage: DynStorage, ignores_if_none_match: bool) -> DynStorage {
    if ignores_if_none_match {
        std::sync::Arc::new(NoOverwrite(storage))
    } else {
        storage
    }
}

impl NoOverwrite {
    async fn refuse_if_there(&self, key: &ObjectKey, mode: PutMode) -> Result<()> {
        if mode == PutMode::CreateNew && self.0.head(key).await?.is_some() {
            return Err(StorageError::AlreadyExists(key.to_string()));
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for NoOverwrite {
    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<()> {
        self.refuse_if_there(key, mode).await?;
        self.0.put(key, data, mode).await
    }

    async fn put_stream(&self, key: &ObjectKey, body: BodyReceiver, mode: PutMode) -> Result<u64> {
        self.refuse_if_there(key, mode).await?;
        self.0.put_stream(key, body, mode).await
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.0.get(key).await
    }

    async fn get_stream(&self, key: &ObjectKey) -> Result<mpsc::Receiver<Result<Bytes>>> {
        self.0.get_stream(key).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        self.0.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.0.list(prefix).await
    }

    async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<Refused>> {
        self.0.delete(keys).await
    }

    async fn versioning(&self) -> Result<Option<Versioning>> {
        self.0.versioning().await
    }

    async fn versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>> {
        self.0.versions(prefix).await
    }

    async fn delete_version(&self, key: &ObjectKey, version: &str) -> Result<Option<String>> {
        self.0.delete_version(key, version).await
    }

    async fn enable_object_lock(&self, lock: &ObjectLock) -> Result<()> {
        self.0.enable_object_lock(lock).await
    }

    fn put_is_proof(&self) -> bool {
        self.0.put_is_proof()
    }
}
