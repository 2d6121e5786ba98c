//! Leases in the repository (`locks/<name>`): mutual exclusion between processes, and
//! between schedulers on different hosts. A lease names its holder and expires unless
//! renewed, so a holder that dies cannot block the job forever.
//!
//! Acquisition is a create-if-absent put; an expired lease is removed and the put
//! tried again. On a store that ignores If-None-Match (DESIGN.md: Garage) two
//! acquirers racing in the same instant could both win; the read-back below narrows
//! that to the holder whose write landed last.

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Repo, layout};
use crate::pipeline;
use crate::storage::{ObjectKey, PutMode, StorageError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseBody {
    pub holder: String,
    pub expires: DateTime<Utc>,
}

pub struct Lease {
    repo: Repo,
    key: ObjectKey,
    holder: String,
    ttl: Duration,
}

/// Who is asking: host, process and a random tag (two schedulers in one process differ).
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}:{}:{:08x}", std::process::id(), rand::random::<u32>())
}

async fn read(repo: &Repo, key: &ObjectKey) -> Result<Option<LeaseBody>> {
    match pipeline::load_bytes(&repo.storage, key, &repo.keys).await {
        Ok(data) => Ok(serde_json::from_slice(&data).ok()),
        Err(e) if matches!(e.downcast_ref::<StorageError>(), Some(StorageError::NotFound(_))) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Lease {
    /// Try to take the lease `name`; `Ok(Err(holder))` names who has it.
    pub async fn acquire(
        repo: &Repo,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lease, String>> {
        let key = layout::lock(name);
        for _ in 0..2 {
            let body = LeaseBody {
                holder: holder.to_string(),
                expires: Utc::now() + ttl,
            };
            let data = serde_json::to_vec(&body).expect("lease serialises");
            match repo.store().bytes(&key, "lock", data, PutMode::CreateNew).await {
                Ok(_) => {
                    // Read back: on a store that ignored the condition, the last writer wins.
                    if read(repo, &key).await?.is_some_and(|b| b.holder == holder) {
                        return Ok(Ok(Lease {
                            repo: repo.clone(),
                            key,
                            holder: holder.to_string(),
                            ttl,
                        }));
                    }
                }
                Err(e) if matches!(e.downcast_ref::<StorageError>(), Some(StorageError::AlreadyExists(_))) => {}
                Err(e) => return Err(e),
            }
            match read(repo, &key).await? {
                Some(current) if current.expires > Utc::now() => return Ok(Err(current.holder)),
                // Expired (its holder died) or unreadable: clear it and try once more.
                _ => {
                    repo.storage.delete(std::slice::from_ref(&key)).await?;
                }
            }
        }
        Ok(Err("another process (the lease changed hands while acquiring)".into()))
    }

    /// Extend the lease; false if it was lost (expired and taken over).
    pub async fn renew(&self) -> Result<bool> {
        match read(&self.repo, &self.key).await? {
            Some(b) if b.holder == self.holder => {
                let body = LeaseBody {
                    holder: self.holder.clone(),
                    expires: Utc::now() + self.ttl,
                };
                let data = serde_json::to_vec(&body).expect("lease serialises");
                self.repo
                    .store()
                    .bytes(&self.key, "lock", data, PutMode::Overwrite)
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub async fn release(&self) -> Result<()> {
        if read(&self.repo, &self.key)
            .await?
            .is_some_and(|b| b.holder == self.holder)
        {
            self.repo.storage.delete(std::slice::from_ref(&self.key)).await?;
        }
        Ok(())
    }
}
