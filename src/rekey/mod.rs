//! Key rotation, as a library: `rotate` gives the repository a new key (new objects are
//! encrypted with it) and keeps the old one as a retired key that still decrypts what
//! it encrypted; `rewrap` moves every stored object onto the current key; `list` says
//! which keys the repository has used and which of them this host holds.
//!
//! The key file keeps its path: the old key moves to `<key_file>.retired/<id>.key`, the
//! new one takes its place. Each step is durable before the next, so a rotation killed
//! anywhere is finished by running it again, and no key is ever only in memory:
//!
//! 1. the new key is written to `<key_file>.new` (0600, fsynced);
//! 2. the old key is copied to the retired directory (0600, fsynced);
//! 3. `repo.json` names the new key and lists the old one as retired;
//! 4. `<key_file>.new` is renamed over the key file.

mod rewrap;

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::pipeline::RepoKey;
use crate::pipeline::keys::{load_retired, retired_dir, retired_file};
use crate::repo::{RepoError, info};
use crate::storage;
use crate::usage;

pub use rewrap::{RewrapReport, rewrap};

#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    /// Then re-wrap every stored object's data key under the new key.
    pub rewrap: bool,
}

/// What `key rotate` did.
#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    pub old_key_id: String,
    pub new_key_id: String,
    pub key_file: PathBuf,
    /// Where the old key now lives.
    pub retired_file: PathBuf,
    /// An interrupted rotation was finished rather than a new one started.
    pub resumed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrap: Option<RewrapReport>,
}

impl fmt::Display for RotateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} the repository key: new objects are encrypted with key id {}",
            if self.resumed { "finished rotating" } else { "rotated" },
            self.new_key_id
        )?;
        writeln!(f, "  new key:     {} (id {})", self.key_file.display(), self.new_key_id)?;
        writeln!(
            f,
            "  retired key: {} (id {}) — it still decrypts what it encrypted; keep it until `pgdr key rewrap` has run",
            self.retired_file.display(),
            self.old_key_id
        )?;
        match &self.rewrap {
            Some(r) => write!(f, "{r}"),
            None => write!(
                f,
                "Copy the new key to every host that runs pgdr for this repository, and to your key escrow. Existing objects still need the retired key: `pgdr key rewrap` moves them to the new one."
            ),
        }
    }
}

/// One key the repository has used.
#[derive(Debug, Clone, Serialize)]
pub struct KeyEntry {
    pub key_id: String,
    /// "current" or "retired".
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired: Option<DateTime<Utc>>,
    /// Whether this host holds it (key_file or its retired directory).
    pub loaded: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyListReport {
    pub keys: Vec<KeyEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_dir: Option<PathBuf>,
}

impl fmt::Display for KeyListReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = vec![format!(
            "{:<32}  {:<8}  {:<20}  on this host",
            "key id", "state", "retired"
        )];
        for k in &self.keys {
            lines.push(format!(
                "{:<32}  {:<8}  {:<20}  {}",
                k.key_id,
                k.state,
                k.retired
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_default(),
                if k.loaded { "yes" } else { "MISSING" }
            ));
        }
        if let Some(dir) = &self.retired_dir {
            lines.push(format!("retired keys are kept in {}", dir.display()));
        }
        f.write_str(&lines.join("\n"))
    }
}

fn key_file_of(config: &Config) -> Result<PathBuf> {
    if std::env::var("PGDR_KEY").is_ok_and(|k| !k.trim().is_empty()) {
        return Err(usage!(
            "PGDR_KEY is set: key rotation replaces the key file, so it needs [repository] key_file and PGDR_KEY unset"
        ));
    }
    config
        .repository
        .key_file
        .clone()
        .ok_or_else(|| usage!("key rotation replaces the key file: set [repository] key_file"))
}

fn pending_file(key_file: &Path) -> PathBuf {
    let mut name = key_file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".new");
    key_file.with_file_name(name)
}

/// The keys the repository has used, and which of them this host holds.
pub async fn list(config: &Config) -> Result<KeyListReport> {
    let storage = storage::open(&config.repository, &config.cluster).await?;
    let info = read_info(config, &storage).await?;
    let keys = crate::repo::load_keyring(config)?;
    let held: Vec<String> = keys.ids().iter().map(|id| id.to_hex()).collect();
    let mut entries = vec![KeyEntry {
        loaded: held.first() == Some(&info.key_id),
        key_id: info.key_id.clone(),
        state: "current",
        retired: None,
    }];
    for r in info.retired_keys.iter().rev() {
        entries.push(KeyEntry {
            key_id: r.key_id.clone(),
            state: "retired",
            retired: Some(r.retired),
            loaded: held.contains(&r.key_id),
        });
    }
    Ok(KeyListReport {
        keys: entries,
        retired_dir: config.repository.key_file.as_deref().map(retired_dir),
    })
}

async fn read_info(config: &Config, storage: &storage::DynStorage) -> Result<info::RepoInfo> {
    info::read(storage).await?.ok_or_else(|| {
        RepoError::NotInitialised {
            cluster: config.cluster.clone(),
            place: storage.describe(),
        }
        .into()
    })
}

/// Rotate the repository key (module docs: the steps, and how a killed run resumes).
pub async fn rotate(config: &Config, opts: &RotateOptions) -> Result<RotateReport> {
    let key_file = key_file_of(config)?;
    let storage = storage::open(&config.repository, &config.cluster).await?;
    let mut info = read_info(config, &storage).await?;
    let current_text = std::fs::read_to_string(&key_file)
        .map_err(|e| usage!("cannot read the repository key file {}: {e}", key_file.display()))?;
    let current = RepoKey::load_file(&key_file)?;
    // Every retired key must load before anything changes: a broken retired
    // directory found after the rotation would be found on restore day.
    load_retired(&key_file)?;
    let pending = pending_file(&key_file);
    let pending_key = match std::fs::read_to_string(&pending) {
        Ok(text) => Some((RepoKey::from_hex(&text, &format!("{}", pending.display()))?, text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(usage!("cannot read {}: {e}", pending.display())),
    };

    let (old, old_text, new, resumed) = match pending_key {
        // Killed after repo.json named the new key: only the rename is left.
        Some((new, _)) if new.id().to_hex() == info.key_id => (current, current_text, new, true),
        // Killed before repo.json changed: go on with the key already written.
        Some((new, _)) if current.id().to_hex() == info.key_id => (current, current_text, new, true),
        Some((new, _)) => {
            return Err(usage!(
                "{} (key id {}) and {} (key id {}) are both not the repository's key (id {}) — an interrupted rotation of another repository? Sort the key files out by hand",
                pending.display(),
                new.id().to_hex(),
                key_file.display(),
                current.id().to_hex(),
                info.key_id
            ));
        }
        None => {
            info.require_current(current.id(), &storage.describe())?;
            let text = RepoKey::generate_hex();
            write_secret(&pending, &format!("{text}\n"), &key_file, true)?;
            let new = RepoKey::from_hex(&text, "the generated key")?;
            (current, current_text, new, false)
        }
    };
    let old_id = old.id().to_hex();
    let new_id = new.id().to_hex();
    let retired = retired_file(&key_file, &old.id());
    if old_id != new_id {
        keep_retired(&retired, &old_text, &key_file)?;
    }
    if info.key_id != new_id {
        info.retired_keys.retain(|r| r.key_id != old_id);
        info.retired_keys.push(info::RetiredKey {
            key_id: old_id.clone(),
            retired: Utc::now(),
        });
        info.key_id = new_id.clone();
        info::replace(&storage, &info).await?;
    }
    crate::process::crash_point("rotate-before-rename");
    std::fs::rename(&pending, &key_file)
        .with_context(|| format!("moving {} over {}", pending.display(), key_file.display()))?;
    sync_dir(&key_file)?;
    tracing::info!("rotated the repository key: {old_id} is retired, {new_id} is current");

    let rewrap = if opts.rewrap { Some(rewrap(config).await?) } else { None };
    Ok(RotateReport {
        old_key_id: old_id,
        new_key_id: new_id,
        key_file,
        retired_file: retired,
        resumed,
        rewrap,
    })
}

/// Copy the old key into the retired directory; an existing file there must hold the
/// same key (a rerun), never anything else.
fn keep_retired(path: &Path, text: &str, key_file: &Path) -> Result<()> {
    let dir = path.parent().expect("a retired key file has a directory");
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
        copy_owner(key_file, dir)?;
        sync_dir(dir)?;
    }
    match std::fs::read_to_string(path) {
        Ok(existing) if existing.trim() == text.trim() => Ok(()),
        Ok(_) => Err(usage!(
            "{} already exists with another key — pgdr never overwrites a key file; move it away by hand",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_secret(path, text, key_file, false),
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Write a key file: mode 0600, owned like `like` (the postgres user reads the key for
/// archive_command), created new (never replacing a key), fsynced with its directory.
/// `replace_stale`: a leftover of an earlier run at `path` that is not the repository's
/// key may be replaced (it never encrypted anything).
fn write_secret(path: &Path, text: &str, like: &Path, replace_stale: bool) -> Result<()> {
    if replace_stale {
        let _ = std::fs::remove_file(path);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| usage!("cannot create the key file {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    copy_owner(like, path)?;
    sync_dir(path)
}

fn copy_owner(like: &Path, path: &Path) -> Result<()> {
    let meta = std::fs::metadata(like).with_context(|| format!("reading {}", like.display()))?;
    let me = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if (me.uid(), me.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("giving {} the owner of {}", path.display(), like.display()))?;
    }
    Ok(())
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
