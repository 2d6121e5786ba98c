//! A backend wrapper for `--dry-run`: reads go through, deletes are recorded and not
//! done, writes are refused. A verb runs its real code path against it, so what a
//! dry run reports is what the real run would do, without `if dry_run` in the verb.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{BodyReceiver, DynStorage, ObjectKey, ObjectMeta, PutMode, Refused, Result, Storage, StorageError};

#[derive(Debug)]
pub struct DryRun {
    inner: DynStorage,
    deleted: Mutex<Vec<ObjectKey>>,
}

impl DryRun {
    pub fn new(inner: DynStorage) -> DryRun {
        DryRun {
            inner,
            deleted: Mutex::new(Vec::new()),
        }
    }

    /// What the run would have deleted, in order.
    pub fn would_delete(&self) -> Vec<ObjectKey> {
        self.deleted.lock().expect("dry-run lock").clone()
    }
}

fn refused(key: &ObjectKey) -> StorageError {
    StorageError::Permanent(format!("{key}: a dry run writes nothing"))
}

#[async_trait]
impl Storage for DryRun {
    fn describe(&self) -> String {
        format!("{} (dry run)", self.inner.describe())
    }

    async fn put(&self, key: &ObjectKey, _data: Bytes, _mode: PutMode) -> Result<()> {
        Err(refused(key))
    }

    async fn put_stream(&self, key: &ObjectKey, _body: BodyReceiver, _mode: PutMode) -> Result<u64> {
        Err(refused(key))
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.inner.get(key).await
    }

    async fn get_stream(&self, key: &ObjectKey) -> Result<mpsc::Receiver<Result<Bytes>>> {
        self.inner.get_stream(key).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<Refused>> {
        self.deleted.lock().expect("dry-run lock").extend_from_slice(keys);
        Ok(Vec::new())
    }

    async fn versioning(&self) -> Result<Option<super::Versioning>> {
        self.inner.versioning().await
    }

    async fn versions(&self, prefix: &str) -> Result<Vec<super::ObjectVersion>> {
        self.inner.versions(prefix).await
    }

    /// Recorded like a delete of the key; nothing is removed.
    async fn delete_version(&self, key: &ObjectKey, _version: &str) -> Result<Option<String>> {
        self.deleted.lock().expect("dry-run lock").push(key.clone());
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_pass_deletes_are_recorded_writes_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inner: DynStorage = std::sync::Arc::new(super::super::local::LocalStorage::new(dir.path().to_path_buf()));
        let key = ObjectKey::new("backups/x/manifest.json").unwrap();
        inner
            .put(&key, Bytes::from_static(b"m"), PutMode::CreateNew)
            .await
            .unwrap();
        let dry = DryRun::new(inner.clone());
        assert_eq!(dry.get(&key).await.unwrap(), Bytes::from_static(b"m"));
        assert!(dry.delete(std::slice::from_ref(&key)).await.unwrap().is_empty());
        assert_eq!(dry.would_delete(), vec![key.clone()]);
        assert!(inner.head(&key).await.unwrap().is_some(), "a dry run deleted");
        assert!(dry.put(&key, Bytes::new(), PutMode::Overwrite).await.is_err());
    }
}
