//! Repository keys. The repository key never encrypts data itself: it wraps a fresh
//! random data key per object. Its id (a hash of the key) is stored in every object
//! header and in repo.json, so a wrong key is recognised before anything is decrypted.
//! Several keys can be loaded at once (rotation): the first encrypts, all decrypt.

use std::path::Path;

use aes_gcm::{Aes256Gcm, Key, KeyInit};
use anyhow::Result;
use sha2::{Digest, Sha256};

use crate::usage;

pub const KEY_LEN: usize = 32;
pub const KEY_ID_LEN: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

/// A repository key. Its bytes are never printed: Debug shows only the id.
#[derive(Clone)]
pub struct RepoKey {
    id: KeyId,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoKey({})", self.id.to_hex())
    }
}

impl RepoKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> RepoKey {
        let mut hasher = Sha256::new();
        hasher.update(b"pgdr key id v1\0");
        hasher.update(bytes);
        let digest = hasher.finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        RepoKey {
            id: KeyId(id),
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)),
        }
    }

    /// Parse the textual form: 64 hex characters, surrounding whitespace ignored.
    /// `origin` names where it came from, for the error (never the key itself).
    pub fn from_hex(text: &str, origin: &str) -> Result<RepoKey> {
        let text = text.trim();
        let bytes = hex::decode(text).ok().filter(|b| b.len() == KEY_LEN).ok_or_else(|| {
            usage!("{origin} does not hold a repository key: expected 64 hex characters (generate one with `pgdr init --generate-key FILE`)")
        })?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&bytes);
        Ok(RepoKey::from_bytes(&key))
    }

    pub fn load_file(path: &Path) -> Result<RepoKey> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => usage!(
                "the repository key file {} does not exist — for a new repository make one with `pgdr init --generate-key {}`; for an existing one put its key there (mode 0600) or give it in PGDR_KEY",
                path.display(),
                path.display()
            ),
            _ => usage!("cannot read the repository key file {}: {e}", path.display()),
        })?;
        warn_if_open(path);
        RepoKey::from_hex(&text, &format!("the key file {}", path.display()))
    }

    /// A new random key in its textual form.
    pub fn generate_hex() -> String {
        let bytes: [u8; KEY_LEN] = rand::random();
        hex::encode(bytes)
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

/// Where the retired keys of `key_file` are kept: `<key_file>.retired/<key id>.key`.
/// `pgdr key rotate` moves the old key there; pgdr loads every key in it to decrypt
/// what the old keys encrypted.
pub fn retired_dir(key_file: &Path) -> std::path::PathBuf {
    let mut name = key_file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".retired");
    key_file.with_file_name(name)
}

/// The file a retired key with `id` is kept in.
pub fn retired_file(key_file: &Path, id: &KeyId) -> std::path::PathBuf {
    retired_dir(key_file).join(format!("{}.key", id.to_hex()))
}

/// Every key in the retired directory of `key_file` (none if there is no such
/// directory). A file there that holds no key, or whose name is not its key's id, is an
/// error: a retired key that silently fails to load is found only on restore day.
pub fn load_retired(key_file: &Path) -> Result<Vec<RepoKey>> {
    let dir = retired_dir(key_file);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(usage!("cannot read the retired keys in {}: {e}", dir.display())),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| usage!("cannot read the retired keys in {}: {e}", dir.display()))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("key") {
            continue;
        }
        let key = RepoKey::load_file(&path)?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(key.id().to_hex().as_str()) {
            return Err(usage!(
                "{} holds the key with id {}, not the one its name says — rename it to {}.key",
                path.display(),
                key.id().to_hex(),
                key.id().to_hex()
            ));
        }
        keys.push(key);
    }
    keys.sort_by_key(|k| k.id().to_hex());
    Ok(keys)
}

/// A key file others can read is a key others have: say so (once per process).
fn warn_if_open(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    static SAID: std::sync::Once = std::sync::Once::new();
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            SAID.call_once(|| {
                tracing::warn!(
                    "the repository key file {} can be read by others (mode {mode:o}) — whoever reads it can decrypt every backup: chmod 600 it",
                    path.display()
                )
            });
        }
    }
}

/// The keys in use: the first encrypts new objects; any of them decrypts.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<RepoKey>,
    /// The repository identity objects are bound to: (cluster, system identifier).
    binding: Option<(String, String)>,
    /// Every key id the repository has used (repo.json: current and retired), when
    /// known: an object naming any other id is damaged or foreign, not merely missing
    /// a key.
    known: Option<Vec<KeyId>>,
}

impl Keyring {
    pub fn new(primary: RepoKey) -> Keyring {
        Keyring {
            keys: vec![primary],
            binding: None,
            known: None,
        }
    }

    /// The key ids the repository has used (its repo.json).
    pub fn set_known(&mut self, ids: Vec<KeyId>) {
        self.known = Some(ids);
    }

    /// Whether `id` may belong to this repository: one it used, or any id when that
    /// is not known.
    pub fn may_know(&self, id: &KeyId) -> bool {
        self.known.as_ref().is_none_or(|ids| ids.contains(id))
    }

    /// Bind new objects to this repository identity (and require it of bound ones).
    pub fn bind(&mut self, cluster: &str, system_identifier: &str) {
        self.binding = Some((cluster.to_string(), system_identifier.to_string()));
    }

    /// What an object stored under `key` is authenticated with.
    pub fn context(&self, key: &str) -> String {
        match &self.binding {
            Some((cluster, sysid)) => super::seal::bound_context(cluster, sysid, key),
            None => key.to_string(),
        }
    }

    pub fn add_old(&mut self, key: RepoKey) {
        if self.get(&key.id()).is_none() {
            self.keys.push(key);
        }
    }

    pub fn primary(&self) -> &RepoKey {
        &self.keys[0]
    }

    /// The ids of every loaded key, the primary first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The same keys and binding with `primary` encrypting (the others still decrypt).
    pub fn with_primary(&self, primary: RepoKey) -> Keyring {
        let mut keys = vec![primary.clone()];
        keys.extend(self.keys.iter().filter(|k| k.id != primary.id).cloned());
        Keyring {
            keys,
            binding: self.binding.clone(),
            known: self.known.clone(),
        }
    }

    pub fn get(&self, id: &KeyId) -> Option<&RepoKey> {
        self.keys.iter().find(|k| &k.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_stable_id() {
        let text = RepoKey::generate_hex();
        let a = RepoKey::from_hex(&format!("{text}\n"), "x").unwrap();
        let b = RepoKey::from_hex(&text, "x").unwrap();
        assert_eq!(a.id(), b.id());
        assert!(!format!("{a:?}").contains(&text));
        assert!(RepoKey::from_hex("abc", "the key file k").is_err());
    }
}
