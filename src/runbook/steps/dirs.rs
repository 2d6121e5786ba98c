//! The directories a recovery's steps make and remove: a data directory recorded by
//! its identity before it is made (`Made`), so that an undo removes only what this
//! recovery made (`check_undo_allowed`); socket directories; and stopping and removing
//! a server a step started.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use crate::config::Config;
use crate::postgres::PgTools;

/// A directory this recovery made: where, and which one (inode, birth time).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Made {
    pub path: PathBuf,
    /// `None`: about to be made (the run may have been killed right after).
    #[serde(default)]
    pub inode: Option<u64>,
    #[serde(default)]
    pub born_ns: Option<i128>,
}

impl Made {
    pub fn intended(path: &Path) -> Made {
        Made {
            path: path.to_path_buf(),
            inode: None,
            born_ns: None,
        }
    }
}

fn identity(path: &Path) -> Result<(u64, Option<i128>)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128);
    Ok((meta.ino(), born))
}

/// Create `dir` (0700, the server's owner) for a step and say which directory it is.
pub fn make_own_dir(dir: &Path) -> Result<Made> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::disk::create_server_dir(dir)?;
    known_dir(dir)
}

/// An empty directory that was there already (a mount point, say): the step's to
/// fill and, if interrupted, to empty again.
pub fn known_dir(dir: &Path) -> Result<Made> {
    let (inode, born_ns) = identity(dir)?;
    Ok(Made {
        path: dir.to_path_buf(),
        inode: Some(inode),
        born_ns,
    })
}

/// Nothing at `path` (not even a dangling link); an error looking is an error.
pub fn absent(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(anyhow!("cannot tell whether {} exists: {e}", path.display())),
    }
}

/// `dir` is a directory with nothing in it.
pub fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// Remove everything inside `dir`, keeping `dir`.
fn empty_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// An interrupted step's directory may be removed only when it is the very directory
/// this recovery made; anything else at that path is someone else's.
pub fn check_undo_allowed(dir: &Path, created: &[Made], id: &str) -> Result<()> {
    if absent(dir)? {
        return Ok(());
    }
    // Nothing in it: nothing to lose.
    let empty = is_empty_dir(dir);
    if empty {
        return Ok(());
    }
    let (inode, born) = identity(dir)?;
    if created.iter().any(|m| {
        m.path == dir
            && match m.inode {
                Some(i) => i == inode && (m.born_ns.is_none() || m.born_ns == born),
                None => empty,
            }
    }) {
        return Ok(());
    }
    Err(crate::usage!(
        "{} exists and was not created by this recovery ({id}): pgdr removes only what it made — if it is a half-made copy of yours, remove it yourself; otherwise choose another directory, or move the state file away to start a new recovery",
        dir.display()
    ))
}

/// A server's socket directory: `<data_dir>.sock`, beside its data directory.
pub fn socket_dir_for(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "server".into());
    data_dir.with_file_name(format!("{name}.sock"))
}

/// A directory the server's owner can enter, 0700 for a scratch copy.
pub(super) fn make_socket_dir(dir: &Path, private: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(if private { 0o700 } else { 0o755 })
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::set_permissions(
        dir,
        std::fs::Permissions::from_mode(if private { 0o700 } else { 0o755 }),
    )?;
    crate::disk::give_to_postgres(dir)
}

/// Stop whatever runs in `dir` (immediately: it is being thrown away).
fn stop_immediate(config: &Config, dir: &Path) {
    if let Ok(tools) = PgTools::locate(config.postgres.bin_dir.as_deref())
        && let Ok(pg_ctl) = tools.path("pg_ctl")
    {
        crate::server::stop_immediate(&pg_ctl, dir);
    }
}

/// Whether `remove_server` keeps the (emptied) data directory itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum KeepDir {
    Yes,
    No,
}

/// Remove a server a step made: stop the server in `dir`, then remove its data (and
/// `dir` itself unless `keep`) and its socket directory.
pub(super) fn remove_server(config: &Config, dir: &Path, keep: KeepDir) -> Result<()> {
    // A running server, then a start a killed run left on its way.
    stop_immediate(config, dir);
    crate::server::kill_starting(dir);
    if keep == KeepDir::Yes {
        empty_dir(dir)?;
    }
    let remove = if keep == KeepDir::Yes {
        vec![socket_dir_for(dir)]
    } else {
        vec![dir.to_path_buf(), socket_dir_for(dir)]
    };
    for d in remove {
        match std::fs::remove_dir_all(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", d.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Undo what an interrupted step left in `dir` (checked first with
/// `check_undo_allowed`): stop its server and empty the directory. Emptied, not
/// removed: the directory stays the one recorded as made.
pub(super) fn empty_server_dir(config: &Config, dir: &Path) -> Result<String> {
    remove_server(config, dir, KeepDir::Yes)?;
    Ok(format!(
        "removed what was in {} (left half done by the interrupted run)",
        dir.display()
    ))
}
