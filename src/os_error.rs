//! Questions about the operating-system cause inside an error chain (a full disk, a
//! broken pipe, no file descriptors left), and the next step they call for. Errors
//! cross pgdr as `anyhow` chains with typed errors inside; callers ask a question
//! here or beside the error type, they do not downcast.

/// An error of type `T` anywhere in the chain: for a module's own small error types
/// (wal-fetch's `WrongCluster`).
pub fn chain_has<T: std::error::Error + Send + Sync + 'static>(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<T>())
}

/// A pipe to a child closed early (the child ended; its exit status says how).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A local filesystem that cannot take what is written: full, over quota, read-only.
/// Asking the repository again does not help.
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|n| [libc::ENOSPC, libc::EDQUOT, libc::EROFS].contains(&n))
    })
}

/// This process ran out of file descriptors (EMFILE): its own limit, which waiting
/// does not raise.
pub fn is_out_of_files(err: &anyhow::Error) -> bool {
    has_os_error(err, libc::EMFILE)
}

/// An I/O error `code` anywhere in the chain, or its text in an error that kept only
/// the text (the S3 client's errors carry the OS error as text).
fn has_os_error(err: &anyhow::Error, code: i32) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|n| n == code)
    }) || format!("{err:#}").contains(&format!("(os error {code})"))
}

/// The next step for an error, when its cause says more than its text does.
pub fn hint(err: &anyhow::Error) -> Option<&'static str> {
    if is_out_of_files(err) {
        Some("out of file descriptors: raise pgdr's open-file limit (`ulimit -n`, systemd `LimitNOFILE=`)")
    } else if has_os_error(err, libc::ENFILE) {
        Some("the system is out of file descriptors (fs.file-max): close what leaks them, or raise the limit")
    } else {
        None
    }
}
