//! Who a repository belongs to. A job run as root (by habit, or from root's crontab)
//! leaves files in a local repository that the owner's later jobs cannot change: a
//! mark, a removal, the next night's backup fail. So the owner's jobs refuse to run as
//! root up front, naming the user to run as; the verbs that may run as root (restore, verify, drill,
//! recover, failover) write what belongs to the owner (see `storage::local`).
//!
//! The owner is the owner of the repository's directory for a local repository, and
//! of the key file for S3 (the secret only its owner may read). Without either (a
//! repository not made yet, `PGDR_KEY` from the environment) nothing is checked.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::{Config, RepoUrl};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// The user's name, or the number when it has none.
    pub name: String,
    /// What says so: "the repository /srv/pgdr/main", "the key file /etc/pgdr/key".
    pub by: String,
}

pub use crate::process::{me, user_name};

fn owner_of(path: &Path, by: String) -> Option<Owner> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Owner {
        uid: meta.uid(),
        gid: meta.gid(),
        name: user_name(meta.uid()),
        by,
    })
}

/// The local repository's directory for this cluster (or the repository's own, before
/// the cluster's exists).
pub fn local_root(config: &Config) -> Option<PathBuf> {
    match config.repository.parsed_url() {
        Ok(RepoUrl::Local(path)) => {
            let cluster = path.join(&config.cluster);
            Some(if cluster.is_dir() { cluster } else { path })
        }
        _ => None,
    }
}

/// Whom this configuration's repository belongs to, when that can be told.
pub fn of(config: &Config) -> Option<Owner> {
    match config.repository.parsed_url() {
        Ok(RepoUrl::Local(_)) => {
            let root = local_root(config)?;
            owner_of(&root, format!("the repository {}", root.display()))
        }
        Ok(RepoUrl::S3 { .. }) => {
            if std::env::var("PGDR_KEY").is_ok_and(|k| !k.trim().is_empty()) {
                return None;
            }
            let key = config.repository.key_file.as_ref()?;
            owner_of(key, format!("the key file {}", key.display()))
        }
        Err(_) => None,
    }
}

/// Refuse `verb` when pgdr runs as root and the repository belongs to another user.
/// Another ordinary user is left to the file modes: a shared group may be the layout,
/// and a refused `wal-push` would stop archiving.
pub fn require(config: &Config, verb: &str) -> Result<()> {
    let me = me();
    if me != 0 {
        return Ok(());
    }
    let Some(owner) = of(config) else { return Ok(()) };
    if owner.uid == 0 {
        return Ok(());
    }
    Err(crate::usage!(
        "{} belongs to {}: run pgdr as {} (e.g. sudo -u {} pgdr {verb} …) — as {} it would leave files there that {}'s jobs cannot change; nothing was written",
        owner.by,
        owner.name,
        owner.name,
        owner.name,
        user_name(me),
        owner.name
    ))
}

/// Every entry under `root` (links not followed), with its metadata.
fn each_entry(root: &Path, mut f: impl FnMut(PathBuf, &std::fs::Metadata)) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            f(path, &meta);
        }
    }
}

/// Entries under `root` that do not belong to `uid`: up to `limit` paths, and the
/// count. Used by `check` to name what blocks the owner's jobs.
pub fn strays(root: &Path, uid: u32, limit: usize) -> (usize, Vec<PathBuf>) {
    use std::os::unix::fs::MetadataExt;
    let mut count = 0;
    let mut found = Vec::new();
    each_entry(root, |path, meta| {
        if meta.uid() != uid {
            count += 1;
            if found.len() < limit {
                found.push(path);
            }
        }
    });
    found.sort();
    (count, found)
}

/// How many entries under `root` belong to `uid`.
pub fn strays_of(root: &Path, uid: u32) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut count = 0;
    each_entry(root, |_, meta| count += usize::from(meta.uid() == uid));
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strays_are_found_at_any_depth() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), "x").unwrap();
        let (n, _) = strays(d.path(), me(), 5);
        assert_eq!(n, 0);
        let (n, found) = strays(d.path(), me() + 1, 2);
        assert_eq!(n, 3);
        assert_eq!(found.len(), 2);
    }
}
