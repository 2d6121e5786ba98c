//! `repo.json`: the repository's identity — which PostgreSQL cluster it belongs to
//! (system identifier), its major version, the format, and the id of its key. It is
//! the one object stored in plain JSON: it holds no secret, and pgdr must read it to
//! say "wrong key" or "wrong cluster" before decrypting anything (docs/FORMAT.md).

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout;
use crate::pipeline::KeyId;
use crate::storage::{DynStorage, PutMode, StorageError};

pub const REPO_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoInfo {
    pub format: u32,
    pub cluster: String,
    pub system_identifier: String,
    pub pg_major: u32,
    pub key_id: String,
    pub created: DateTime<Utc>,
    /// Keys that encrypted objects here before `pgdr key rotate` replaced them, oldest
    /// first. Absent in repositories that never rotated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_keys: Vec<RetiredKey>,
    /// Whether the store overwrote a create-only write when `init` or `check` tried
    /// (Garage does); absent when never probed. A store that ignores it (or may:
    /// never probed) is written through `storage::no_overwrite`, which looks before
    /// it writes; where it is known to, `wal-push` also claims a segment's name
    /// before storing it, so two pushers of different bytes cannot both succeed
    /// (`archive::claim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignores_if_none_match: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetiredKey {
    pub key_id: String,
    pub retired: DateTime<Utc>,
}

impl RepoInfo {
    /// The store is known to ignore If-None-Match.
    pub fn ignores_conditions(&self) -> bool {
        self.ignores_if_none_match == Some(true)
    }

    /// The store may overwrite a create-only write: it does, or it was never probed.
    pub fn may_overwrite(&self) -> bool {
        self.ignores_if_none_match != Some(false)
    }

    /// `ours` must be the repository's current key (the one new objects are sealed
    /// with): a retired key and a stranger's key are refused, each with its own line.
    pub fn require_current(&self, ours: KeyId, place: &str) -> Result<()> {
        if ours == self.key_id()? {
            return Ok(());
        }
        let ours = ours.to_hex();
        match self.retired_keys.iter().find(|r| r.key_id == ours) {
            Some(retired) => Err(super::RepoError::KeyRetired {
                ours,
                when: retired.retired,
                current: self.key_id.clone(),
                place: place.to_string(),
            }
            .into()),
            None => Err(super::RepoError::WrongKey {
                ours,
                place: place.to_string(),
                theirs: self.key_id.clone(),
            }
            .into()),
        }
    }

    /// Every key id this repository has used: the current one, then the retired ones.
    /// Malformed entries are left out (they name no key anyone holds).
    pub fn known_key_ids(&self) -> Vec<KeyId> {
        std::iter::once(&self.key_id)
            .chain(self.retired_keys.iter().map(|r| &r.key_id))
            .filter_map(|id| hex::decode(id).ok().and_then(|b| <[u8; 16]>::try_from(b).ok()))
            .map(KeyId)
            .collect()
    }

    pub fn key_id(&self) -> Result<KeyId> {
        let bytes = hex::decode(&self.key_id)
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .ok_or_else(|| anyhow!("repo.json has a malformed key_id {:?}", self.key_id))?;
        Ok(KeyId(bytes))
    }
}

pub async fn read(storage: &DynStorage) -> Result<Option<RepoInfo>> {
    match storage.get(&layout::repo_info()).await {
        Ok(data) => {
            let info: RepoInfo = serde_json::from_slice(&data)
                .with_context(|| format!("{}/repo.json is not valid", storage.describe()))?;
            if info.format > REPO_FORMAT {
                return Err(anyhow!(
                    "the repository at {} uses format {}, newer than this pgdr understands ({REPO_FORMAT}) — upgrade pgdr",
                    storage.describe(),
                    info.format
                ));
            }
            Ok(Some(info))
        }
        Err(StorageError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replace repo.json (key rotation): written whole, read back to be sure.
pub async fn replace(storage: &DynStorage, info: &RepoInfo) -> Result<()> {
    let data = serde_json::to_vec_pretty(info).expect("repo info serialises");
    storage
        .put(&layout::repo_info(), Bytes::from(data), PutMode::Overwrite)
        .await
        .with_context(|| format!("writing {}/repo.json", storage.describe()))?;
    let back = read(storage).await?;
    if back.as_ref().map(|b| b.key_id.as_str()) != Some(info.key_id.as_str()) {
        return Err(anyhow!(
            "{}/repo.json does not read back as written — check the store",
            storage.describe()
        ));
    }
    Ok(())
}

/// Does the store honour `If-None-Match: *`? A throw-away object is written twice as
/// create-only: the second write must be refused.
pub async fn probe_conditional_put(storage: &DynStorage) -> Result<bool> {
    let probe = layout::write_probe();
    let body = Bytes::from_static(b"pgdr conditional-put probe");
    storage.put(&probe, body.clone(), PutMode::CreateNew).await?;
    let second = storage.put(&probe, body, PutMode::CreateNew).await;
    let gone = storage.delete(std::slice::from_ref(&probe)).await;
    let honoured = match second {
        Err(StorageError::AlreadyExists(_)) => true,
        Ok(()) => false,
        Err(e) => return Err(e.into()),
    };
    gone?;
    Ok(honoured)
}

/// Write repo.json; fails with `AlreadyExists` if another init won the race.
pub async fn create(storage: &DynStorage, info: &RepoInfo) -> Result<(), StorageError> {
    let data = serde_json::to_vec_pretty(info).expect("repo info serialises");
    storage
        .put(&layout::repo_info(), Bytes::from(data), PutMode::CreateNew)
        .await
}
