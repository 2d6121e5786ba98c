//! The repository: where things live (`layout`), what a backup is (`label`,
//! `manifest`), what is there (`catalog`), and the repository's identity (`info`).

pub mod archive;
pub mod catalog;
pub mod error;
pub mod info;
pub mod inventory;
pub mod label;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod owner;
pub mod verification;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::pipeline::{Compression, Keyring, RepoKey, Store};
use crate::storage::{self, DynStorage};

pub use error::RepoError;
pub use info::RepoInfo;
pub use label::{BackupKind, BackupLabel};
pub use manifest::Manifest;

/// An opened repository: storage, keys and identity, checked against each other.
#[derive(Debug, Clone)]
pub struct Repo {
    pub storage: DynStorage,
    pub keys: Keyring,
    pub info: RepoInfo,
    pub compression: Compression,
}

/// The repository key: `PGDR_KEY` (hex) if set, else `[repository] key_file`.
pub fn load_keyring(config: &Config) -> Result<Keyring> {
    load_keyring_for(&config.repository)
}

/// The key of the repository `settings` describe (the primary, or a copy with a
/// `key_file` of its own): `PGDR_KEY` (hex) if set, else its `key_file`.
pub fn load_keyring_for(settings: &crate::config::RepositoryConfig) -> Result<Keyring> {
    let key = match std::env::var("PGDR_KEY").ok().filter(|k| !k.trim().is_empty()) {
        Some(text) => RepoKey::from_hex(&text, "PGDR_KEY")?,
        None => match &settings.key_file {
            Some(path) => RepoKey::load_file(path)?,
            None => {
                return Err(RepoError::NoKey.into());
            }
        },
    };
    let mut keys = Keyring::new(key);
    // Keys retired by `pgdr key rotate` still decrypt what they encrypted.
    if let Some(path) = &settings.key_file {
        for old in crate::pipeline::keys::load_retired(path)? {
            keys.add_old(old);
        }
    }
    Ok(keys)
}

/// The repository key bound to the repository's identity (repo.json), for the
/// paths that read objects without opening the whole repository (wal-fetch, cat).
pub async fn bound_keyring(config: &Config, storage: &DynStorage) -> Result<Keyring> {
    Ok(bound_keyring_and_info(config, storage).await?.0)
}

/// The bound keyring and the `repo.json` it was bound to.
pub async fn bound_keyring_and_info(config: &Config, storage: &DynStorage) -> Result<(Keyring, RepoInfo)> {
    bound_keyring_and_info_for(&config.repository, storage).await
}

/// As `bound_keyring_and_info`, for the repository `settings` describe.
pub async fn bound_keyring_and_info_for(
    settings: &crate::config::RepositoryConfig,
    storage: &DynStorage,
) -> Result<(Keyring, RepoInfo)> {
    let mut keys = load_keyring_for(settings)?;
    let info = info::read(storage).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no repo.json: this is not the repository (unmounted? wrong [repository] url or cluster?)",
            storage.describe()
        )
    })?;
    keys.bind(&info.cluster, &info.system_identifier);
    keys.set_known(info.known_key_ids());
    Ok((keys, info))
}

pub fn compression(config: &Config) -> Compression {
    let threads = match config.repository.compress_threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        n => n,
    };
    Compression {
        level: config.repository.compress_level,
        threads,
    }
}

impl Repo {
    /// Open the configured repository: load the key, read repo.json, and refuse a key
    /// that does not belong to it.
    pub async fn open(config: &Config) -> Result<Repo> {
        let mut keys = load_keyring(config)?;
        let storage = storage::open(&config.repository, &config.cluster).await?;
        let info = info::read(&storage)
            .await?
            .ok_or_else(|| match config.selected_repository() {
                Some(name) => RepoError::CopyEmpty {
                    name: name.to_string(),
                    cluster: config.cluster.clone(),
                    place: storage.describe(),
                },
                None => RepoError::NotInitialised {
                    cluster: config.cluster.clone(),
                    place: storage.describe(),
                },
            })?;
        info.require_current(keys.primary().id(), &storage.describe())?;
        keys.bind(&info.cluster, &info.system_identifier);
        keys.set_known(info.known_key_ids());
        Ok(Repo {
            storage: storage::no_overwrite::guard(storage, info.may_overwrite()),
            keys,
            info,
            compression: compression(config),
        })
    }

    /// Refuse to work for a PostgreSQL cluster other than the repository's own.
    pub fn check_system_identifier(&self, live: &str) -> Result<()> {
        if live != self.info.system_identifier {
            return Err(RepoError::WrongCluster {
                place: self.storage.describe(),
                repo: self.info.system_identifier.clone(),
                server: live.to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Refuse a backup whose manifest names another cluster than this repository's
    /// (a backup copied in from elsewhere).
    pub fn check_manifest_identity(&self, manifest: &Manifest) -> Result<()> {
        if manifest.system_identifier != self.info.system_identifier {
            return Err(anyhow::anyhow!(
                "backup {} was taken of the cluster with system identifier {}, but the repository at {} belongs to {} — it was copied in from another cluster's area; restore it from there",
                manifest.label,
                manifest.system_identifier,
                self.storage.describe(),
                self.info.system_identifier
            ));
        }
        Ok(())
    }

    /// How this repository stores new objects.
    pub fn store(&self) -> Store<'_> {
        Store {
            storage: &self.storage,
            keys: &self.keys,
            compression: self.compression,
            digests: crate::pipeline::Digests::Both,
        }
    }

    /// Why `selector` named no usable backup: when it is the label of a backup whose
    /// manifest is there but cannot be opened (damaged, or under a key this host does
    /// not hold), that reason; otherwise `err` as it is.
    pub async fn explain_missing(&self, selector: &str, err: anyhow::Error) -> anyhow::Error {
        let Ok(label) = selector.parse::<BackupLabel>() else {
            return err;
        };
        if !matches!(self.storage.head(&layout::manifest(&label)).await, Ok(Some(_))) {
            return err;
        }
        match catalog::load_manifest(&self.storage, &self.keys, &label).await {
            Ok(_) => err,
            Err(e) => RepoError::NoSuchBackup {
                why: format!("backup {label} cannot be read: {e:#}"),
                kind: None,
            }
            .into(),
        }
    }

    /// Record timeline `tli` as production's: `latest` follows it from here on, even
    /// where its parent went on past the branch point. `by` says who declared it.
    pub async fn declare_primary_timeline(&self, tli: u32, by: &str) -> Result<()> {
        self.declare_timeline(&layout::timeline_declaration(tli), tli, by).await
    }

    /// Record that timeline `tli` was made by a recovery attempt that was given up:
    /// no later restore follows it.
    pub async fn abandon_timeline(&self, tli: u32, by: &str) -> Result<()> {
        self.declare_timeline(&layout::timeline_abandoned(tli), tli, by).await
    }

    async fn declare_timeline(&self, key: &crate::storage::ObjectKey, tli: u32, by: &str) -> Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({
            "timeline": tli,
            "declared": chrono::Utc::now(),
            "by": by,
        }))
        .expect("declaration serialises");
        self.store()
            .bytes(key, "timeline", body, crate::storage::PutMode::Overwrite)
            .await
            .map(|_| ())
    }

    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        catalog::load_manifests(&self.storage, &self.keys)
            .await
            .context("reading the backup catalog")
    }
}
