//! A backend wrapper that behaves like the S3 servers that ignore `If-None-Match`
//! (Garage, some MinIO versions): every `CreateNew` put silently overwrites. pgdr's
//! never-overwrite rules (WAL, manifests, leases) must hold on such stores too, so
//! they look before they write; the conformance suite runs them against this wrapper.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    BodyReceiver, DynStorage, ObjectKey, ObjectLock, ObjectMeta, ObjectVersion, PutMode, Refused, Result, Storage,
    Versioning,
};

#[derive(Debug, Clone)]
pub struct IgnoreConditions(pub DynStorage);

#[async_trait]
impl Storage for IgnoreConditions {
    fn describe(&self) -> String {
        format!("{} (ignoring If-None-Match)", self.0.describe())
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, _mode: PutMode) -> Result<()> {
        self.0.put(key, data, PutMode::Overwrite).await
    }

    async fn put_stream(&self, key: &ObjectKey, body: BodyReceiver, _mode: PutMode) -> Result<u64> {
        self.0.put_stream(key, body, PutMode::Overwrite).await
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

    async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<Refused>> {
        self.0.delete(keys).await
    }
}
