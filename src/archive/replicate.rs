//! `wal = "sync"` copies: once a WAL file is in the primary repository, the same stored
//! object goes into every sync copy before `archive_command` returns — within a bounded
//! wait (`[wal] copy_timeout_seconds`). A copy that does not answer in time never stops
//! archiving (pgBackRest's failure mode: one unreachable repository fills `pg_wal`):
//! the file is acknowledged on the primary's strength, a warning goes to PostgreSQL's
//! log, and the copy catches up through `pgdr copy`, its lag shown by `pgdr check` and
//! `pgdr metrics`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use sha2::{Digest, Sha256};

use crate::config::{Config, CopyWal};
use crate::pipeline::{self, Keyring};
use crate::postgres::WalFile;
use crate::repo::load_keyring;
use crate::repo::{Repo, layout};
use crate::storage::{self, DynStorage, PutMode, StorageError};

/// The sync copies of this configuration, opened.
#[derive(Clone, Default)]
pub struct SyncCopies {
    targets: Arc<Vec<Target>>,
    wait: Duration,
}

struct Target {
    name: String,
    storage: DynStorage,
    /// A copy with a key of its own: the file is re-sealed for it.
    rekey: Option<Keyring>,
}

impl SyncCopies {
    /// Open every `wal = "sync"` copy; one that cannot be opened (no credentials, bad
    /// settings) is left out with a warning: archiving goes on.
    pub async fn open(config: &Config) -> SyncCopies {
        let wait = Duration::from_secs(config.wal.copy_timeout_seconds);
        let mut targets = Vec::new();
        for copy in config.repository.copies.iter().filter(|c| c.wal == CopyWal::Sync) {
            let opened = async {
                let settings = config.repository.copy(&copy.name)?;
                let rekey = crate::copy::own_keyring(config, &settings, load_keyring(config)?.primary().id())?;
                anyhow::Ok((storage::open(&settings, &config.cluster).await?, rekey))
            };
            match tokio::time::timeout(wait, opened).await {
                Ok(Ok((storage, rekey))) => targets.push(Target {
                    name: copy.name.clone(),
                    storage,
                    rekey,
                }),
                Ok(Err(e)) => tracing::warn!(
                    "copy {:?} cannot be opened ({e:#}); WAL is archived in the primary repository only until it can — `pgdr copy --to {}` catches up",
                    copy.name,
                    copy.name
                ),
                Err(_) => tracing::warn!(
                    "copy {:?} did not answer within {} s; WAL is archived in the primary repository only — `pgdr copy --to {}` catches up",
                    copy.name,
                    wait.as_secs(),
                    copy.name
                ),
            }
        }
        SyncCopies {
            targets: Arc::new(targets),
            wait,
        }
    }

    /// Store `file` (already in `repo`) in every sync copy, each within the bounded
    /// wait. Never fails: a copy that missed it is reported and caught up later.
    pub async fn replicate(&self, repo: &Repo, file: &WalFile) {
        if self.targets.is_empty() {
            return;
        }
        let key = layout::wal_file(file);
        let data = match repo.storage.get(&key).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("{file}: cannot read it back from the primary repository for the sync copies: {e}");
                return;
            }
        };
        let sha = hex::encode(Sha256::digest(&data));
        for Target { name, storage, rekey } in self.targets.iter() {
            let put = async {
                let sha = match rekey {
                    None => {
                        match storage.put(&key, data.clone(), PutMode::CreateNew).await {
                            Ok(()) | Err(StorageError::AlreadyExists(_)) => {}
                            Err(e) => return Err(anyhow::Error::new(e)),
                        }
                        sha.clone()
                    }
                    Some(keys) => {
                        if storage.head(&key).await?.is_some() {
                            return Ok(());
                        }
                        let mut keys = keys.clone();
                        keys.bind(&repo.info.cluster, &repo.info.system_identifier);
                        let written = pipeline::reseal(
                            (&repo.storage, &repo.keys),
                            &key,
                            None,
                            (storage, &keys),
                            PutMode::CreateNew,
                            Default::default(),
                        )
                        .await?;
                        written.sha256
                    }
                };
                let there = storage.get(&key).await?;
                if hex::encode(Sha256::digest(&there)) != sha {
                    return Err(anyhow!(
                        "the copy holds a different {file} — another cluster may archive there"
                    ));
                }
                Result::<()>::Ok(())
            };
            match tokio::time::timeout(self.wait, put).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(
                    "copy {name:?}: {file} not stored ({e:#}); acknowledged on the primary repository's strength — `pgdr copy --to {name}` catches up"
                ),
                Err(_) => tracing::warn!(
                    "copy {name:?}: {file} not stored within {} s; acknowledged on the primary repository's strength — `pgdr copy --to {name}` catches up",
                    self.wait.as_secs()
                ),
            }
        }
    }
}
