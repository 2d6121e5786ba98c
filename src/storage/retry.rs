//! A backend wrapper that reads a whole object again when its body broke off or
//! failed the store's checksum on the way (`StorageError::Interrupted`), with a
//! growing pause between attempts. The S3 SDK retries a request until its headers
//! arrive; what happens to the body after that is this wrapper's: a truncated or
//! flipped download is read again, never taken for the object.
//!
//! After the last attempt the error says what the attempts showed: every byte
//! arrived and failed every time — the object is damaged where it is stored
//! (`Corrupt`) — or the reads kept breaking off (`Transient`). Streamed reads resume
//! from their offset inside the backend instead (a Range request), since only the
//! backend knows how to ask for the rest of the same version.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    BodyReceiver, DynStorage, ObjectKey, ObjectLock, ObjectMeta, ObjectVersion, PutMode, Refused, Result, Storage,
    StorageError, Versioning,
};

#[derive(Debug)]
pub struct Retry {
    inner: DynStorage,
    attempts: u32,
    first_pause: Duration,
}

impl Retry {
    /// Up to `attempts` reads per `get` (at least one), the first pause
    /// `first_pause`, doubling up to 32 times that.
    pub fn new(inner: DynStorage, attempts: u32, first_pause: Duration) -> Retry {
        Retry {
            inner,
            attempts: attempts.max(1),
            first_pause,
        }
    }

    fn pause(&self, attempt: u32) -> Duration {
        self.first_pause * (1u32 << attempt.min(5))
    }
}

#[async_trait]
impl Storage for Retry {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let mut attempt = 1;
        loop {
            match self.inner.get(key).await {
                Err(StorageError::Interrupted { why, .. }) if attempt < self.attempts => {
                    tracing::warn!("reading {key} broke off ({why}); reading it again");
                    tokio::time::sleep(self.pause(attempt)).await;
                    attempt += 1;
                }
                Err(StorageError::Interrupted { why, whole: true }) => {
                    return Err(StorageError::Corrupt(format!(
                        "{key} in {} fails the store's checksum on every read ({why}): it is damaged where it is stored",
                        self.describe()
                    )));
                }
                Err(StorageError::Interrupted { why, whole: false }) => {
                    return Err(StorageError::Transient(format!(
                        "reading {key} from {}: {why} (after {attempt} attempts)",
                        self.describe()
                    )));
                }
                other => return other,
            }
        }
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<()> {
        self.inner.put(key, data, mode).await
    }

    async fn put_stream(&self, key: &ObjectKey, body: BodyReceiver, mode: PutMode) -> Result<u64> {
        self.inner.put_stream(key, body, mode).await
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
        self.inner.delete(keys).await
    }

    async fn versioning(&self) -> Result<Option<Versioning>> {
        self.inner.versioning().await
    }

    async fn versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>> {
        self.inner.versions(prefix).await
    }

    async fn delete_version(&self, key: &ObjectKey, version: &str) -> Result<Option<String>> {
        self.inner.delete_version(key, version).await
    }

    async fn enable_object_lock(&self, lock: &ObjectLock) -> Result<()> {
        self.inner.enable_object_lock(lock).await
    }

    fn put_is_proof(&self) -> bool {
        self.inner.put_is_proof()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A store whose reads fail as scripted, then succeed.
    #[derive(Debug)]
    struct Flaky {
        failures: Mutex<Vec<StorageError>>,
        reads: Mutex<u32>,
    }

    fn flaky(failures: Vec<StorageError>) -> std::sync::Arc<Flaky> {
        std::sync::Arc::new(Flaky {
            failures: Mutex::new(failures),
            reads: Mutex::new(0),
        })
    }

    fn no_writes() -> StorageError {
        StorageError::Permanent("not in this test".into())
    }

    #[async_trait]
    impl Storage for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        async fn get(&self, _key: &ObjectKey) -> Result<Bytes> {
            *self.reads.lock().unwrap() += 1;
            let mut failures = self.failures.lock().unwrap();
            if failures.is_empty() {
                Ok(Bytes::from_static(b"whole"))
            } else {
                Err(failures.remove(0))
            }
        }
        async fn put(&self, _: &ObjectKey, _: Bytes, _: PutMode) -> Result<()> {
            Err(no_writes())
        }
        async fn put_stream(&self, _: &ObjectKey, _: BodyReceiver, _: PutMode) -> Result<u64> {
            Err(no_writes())
        }
        async fn get_stream(&self, _: &ObjectKey) -> Result<mpsc::Receiver<Result<Bytes>>> {
            Err(no_writes())
        }
        async fn head(&self, _: &ObjectKey) -> Result<Option<ObjectMeta>> {
            Err(no_writes())
        }
        async fn list(&self, _: &str) -> Result<Vec<ObjectMeta>> {
            Err(no_writes())
        }
        async fn delete(&self, _: &[ObjectKey]) -> Result<Vec<Refused>> {
            Err(no_writes())
        }
    }

    fn broke(whole: bool) -> StorageError {
        StorageError::Interrupted {
            why: "connection reset".into(),
            whole,
        }
    }

    fn key() -> ObjectKey {
        ObjectKey::new("wal/x").unwrap()
    }

    #[tokio::test]
    async fn a_body_that_broke_off_is_read_again() {
        let store = flaky(vec![broke(false), broke(true)]);
        let retry = Retry::new(store.clone(), 3, Duration::ZERO);
        assert_eq!(&retry.get(&key()).await.unwrap()[..], b"whole");
        assert_eq!(*store.reads.lock().unwrap(), 3);
    }

    #[tokio::test]
    async fn the_last_attempt_says_what_the_reads_showed() {
        let store = flaky(vec![broke(false), broke(true)]);
        let err = Retry::new(store.clone(), 2, Duration::ZERO)
            .get(&key())
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err:?}");
        let store = flaky(vec![broke(true), broke(false)]);
        let err = Retry::new(store.clone(), 2, Duration::ZERO)
            .get(&key())
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Transient(_)), "{err:?}");
        assert!(err.to_string().contains("after 2 attempts"), "{err}");
    }

    #[tokio::test]
    async fn other_errors_are_not_read_again() {
        for failure in [
            StorageError::NotFound("wal/x".into()),
            StorageError::Transient("503 SlowDown (retries exhausted)".into()),
            StorageError::Corrupt("stored damage".into()),
        ] {
            let store = flaky(vec![failure]);
            assert!(Retry::new(store.clone(), 5, Duration::ZERO).get(&key()).await.is_err());
            assert_eq!(*store.reads.lock().unwrap(), 1, "an error the backend already retried");
        }
    }
}
