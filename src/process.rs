//! Child processes pgdr starts: as the `postgres` OS user (PostgreSQL refuses root),
//! and detached helpers (the WAL pusher and prefetcher) that outlive the short
//! `archive_command` / `restore_command` call that started them.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// `value` as one word for `sh` (`pg_ctl -o` passes its options through the shell):
/// single-quoted, a single quote inside written `'\''`.
pub fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// Raise the soft open-file limit to the hard one (capped at 65,536), as Go programs
/// do at start: a cron or systemd environment often has a soft limit of 1,024 with far
/// more allowed, and a backup with many parallel streams should not fail on it.
pub fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = lim.rlim_max.min(65_536);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Keep freed buffers from staying resident. glibc's malloc raises its mmap threshold
/// each time a large block is freed, so after the first few bundles every multi-MiB
/// buffer (an S3 part, a bundle being sealed) comes from the heap arenas, and what is
/// freed there stays in RSS. A backup to S3 peaked at 61 MiB that way, 52 MiB with the
/// threshold fixed at 1 MiB (locally 33 → 28 MiB; `scripts/bench-s3.sh` measures it).
/// Blocks of 1 MiB and more are then mapped and unmapped on their own; growing one is a
/// `mremap`, not a copy.
pub fn bound_heap_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; it is called before
    // the runtime starts any thread.
    unsafe {
        let _ = libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// The user pgdr runs as.
pub fn me() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// A passwd entry, read with the reentrant calls: `getpwnam`/`getpwuid` share one
/// static buffer, and pgdr's threads (and tests') would read each other's half-written
/// entries — a uid of 0 where postgres was meant.
fn passwd(by: Result<&std::ffi::CStr, u32>) -> Option<(u32, u32, String)> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory this frame owns, sized as passed; the entry
    // is read only when the call says it found one.
    let rc = unsafe {
        match by {
            Ok(name) => libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found),
            Err(uid) => libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found),
        }
    };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated by the call.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some((pwd.pw_uid, pwd.pw_gid, name))
}

/// The name of user `uid`, or the number.
pub fn user_name(uid: u32) -> String {
    passwd(Err(uid))
        .map(|(_, _, name)| name)
        .unwrap_or_else(|| uid.to_string())
}

/// The `postgres` OS user, when pgdr runs as root and must hand the files over.
pub fn postgres_owner() -> Option<(u32, u32)> {
    if me() != 0 {
        return None;
    }
    passwd(Ok(c"postgres")).map(|(uid, gid, _)| (uid, gid))
}

/// Run `cmd` as the `postgres` user when pgdr runs as root; unchanged otherwise.
pub fn as_postgres(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = postgres_owner() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// The same for a tokio command.
pub fn as_postgres_async(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    if let Some((uid, gid)) = postgres_owner() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// `pgdr [--config FILE] [--repository NAME] <args>`: this binary again, with this
/// configuration file and the same repository.
pub fn pgdr_again(config: &crate::config::Config) -> Option<Command> {
    let exe = std::env::current_exe().ok()?;
    let mut cmd = Command::new(exe);
    if let Some(file) = config.file() {
        cmd.arg("--config").arg(file);
    }
    if let Some(name) = config.selected_repository() {
        cmd.arg("--repository").arg(name);
    }
    Some(cmd)
}

/// Spawn `cmd` in a session of its own (so it outlives the caller and PostgreSQL's
/// process group), stdin and stdout closed, stderr to `stderr` (or nowhere).
pub fn spawn_detached(mut cmd: Command, stderr: Option<std::fs::File>) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.map(Stdio::from).unwrap_or_else(Stdio::null));
    // SAFETY: setsid is async-signal-safe; it only detaches the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
}

/// Whether process `pid` exists (EPERM counts: it exists, another user's).
pub fn exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Resolves on SIGINT or SIGTERM, naming which.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// From now on SIGINT and SIGTERM do not end this process: they are noted, and the
/// work goes on to its end. For steps that must not be cut in the middle (a switch
/// with PgBouncer paused), which are bounded by timeouts of their own.
pub fn hold_signals(what: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            eprintln!(
                "pgdr: {what} is finishing first (it is bounded by its timeouts); it will not be cut off half-way"
            );
        }
    });
}

/// For tests of crash consistency: `PGDR_TEST_CRASH_AT=<name>` kills this process with
/// SIGKILL when it reaches the step called `name` (nothing is flushed, nothing cleaned
/// up — as a power cut or the OOM killer would leave it).
pub fn crash_point(name: &str) {
    if std::env::var("PGDR_TEST_CRASH_AT").is_ok_and(|at| at == name) {
        // SAFETY: kill on our own pid; the test wants a crash, not a clean exit.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// For tests of failures the machine will not produce on demand (a disk's write-back
/// error): `PGDR_TEST_FAIL_AT=<name>` makes the step called `name` fail with EIO.
pub fn injected_failure(name: &str) -> std::io::Result<()> {
    match std::env::var("PGDR_TEST_FAIL_AT").is_ok_and(|at| at == name) {
        true => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        false => Ok(()),
    }
}
