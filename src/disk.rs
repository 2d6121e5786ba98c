//! Local filesystems: how much room there is before writing a restore or a spool, and
//! the private files and directories pgdr makes for itself and for servers.

use std::path::Path;

use anyhow::{Context, Result};

use crate::usage;

/// A new file (never through a planted link) only its owner can read: it may hold a
/// password.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// A new directory (mode 0700) for a server: owned by the `postgres` OS user when
/// pgdr runs as root.
pub fn create_server_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    give_to_postgres(path)
}

/// Hand `path` to the `postgres` OS user when pgdr runs as root (a server, or the
/// pgdr children it runs, must read or write it); otherwise leave it as it is.
pub fn give_to_postgres(path: &Path) -> Result<()> {
    if let Some((uid, gid)) = crate::process::postgres_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// A new file holding `text` that only its owner, the postgres OS user when pgdr
/// runs as root, can read: a password, a configuration naming a key.
pub fn write_private_file(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = create_private_file(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    give_to_postgres(path)
}

/// Free bytes on the filesystem holding `path` (or its nearest existing parent).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// Create `dir` (mode 0700) if missing; refuse one that another user owns or that
/// others may write to, since what is inside steers pgdr (locks, notes).
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(anyhow::anyhow!("cannot create {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        return Err(usage!(
            "{} is not a directory of this user (uid {me}) — it may have been planted; remove it or set another path",
            dir.display()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(usage!(
            "{} may be written by other users (mode {:o}) — run chmod 700 on it",
            dir.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}
