//! Full disks (issue 14) on small filesystems the test mounts (tmpfs; the tests run as
//! root): a restore target that fills up, `wal-fetch` writing into a full `pg_wal`, and
//! a full WAL spool; too few file descriptors and a read-only spool. Each fails with
//! one clear line and the documented exit code — for `wal-fetch` never 1, which
//! PostgreSQL would take for the end of the archive — and leaves no partial file
//! behind across PostgreSQL's retries.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A tmpfs of `size` mounted at `dir` (created), owned by postgres; unmounted on drop.
struct Small(PathBuf);

impl Small {
    fn mount(dir: &Path, size: &str) -> Small {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount is needed for the full-disk tests");
        assert!(
            status.success(),
            "cannot mount a {size} tmpfs at {} (needs root)",
            dir.display()
        );
        chown_postgres(dir);
        Small(dir.to_path_buf())
    }

    /// Fill it up to the last byte.
    fn fill(&self) {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", self.0.join("filler").display()))
            .stderr(std::process::Stdio::null())
            .status();
    }

    fn files(&self) -> Vec<String> {
        let mut out: Vec<String> = walk(&self.0)
            .into_iter()
            .map(|p| p.strip_prefix(&self.0).unwrap().display().to_string())
            .filter(|p| p != "filler")
            .collect();
        out.sort();
        out
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

impl Drop for Small {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_restore_target_wal_destination_and_spool() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 10);
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let seg = a.switch_and_wait();

    // A restore target too small for the backup: one line naming the lack of space,
    // the directory marked as an incomplete restore, no recovery configured in it.
    let target = Small::mount(&a.pgdr.dir.join("small-target"), "24m");
    let data = target.0.join("data");
    let out = a
        .pgdr
        .run(&["restore", "--kind", "physical", "--to", data.to_str().unwrap()]);
    let line = assert_fails(&out, 1, "space");
    assert!(
        line.contains("small-target"),
        "the line does not name the target: {line}"
    );
    assert!(
        data.join("pgdr-restore-in-progress").exists(),
        "the half-written restore is not marked"
    );
    assert!(
        !data.join("recovery.signal").exists(),
        "a half-written restore was set up to start"
    );
    drop(target);

    // wal-fetch into a full pg_wal: not "absent" (1), which would end recovery early;
    // nothing half-written left, however often PostgreSQL asks.
    let wal = Small::mount(&a.pgdr.dir.join("small-wal"), "1m");
    wal.fill();
    let dest = wal.0.join("RECOVERYXLOG");
    for _ in 0..3 {
        let out = a.pgdr.run(&["wal-fetch", &seg, dest.to_str().unwrap()]);
        assert_clean_stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(126),
            "wal-fetch on a full disk must stop recovery: {out:?}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("space"), "{stderr}");
        assert!(wal.files().is_empty(), "left behind: {:?}", wal.files());
    }
    drop(wal);

    // A full spool: wal-push still stores the segment (the spool only speeds up
    // bursts) or fails clearly; either way nothing is left half-written in it.
    let spool = Small::mount(&a.pgdr.dir.join("small-spool"), "1m");
    let text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("spool_dir") {
                format!("spool_dir = \"{}\"", spool.0.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&a.pgdr.config, text).unwrap();
    std::fs::set_permissions(&spool.0, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    spool.fill();
    c.psql(
        "postgres",
        "CREATE TABLE after_full_spool AS SELECT g FROM generate_series(1, 1000) g",
    );
    let seg = a.switch_and_wait();
    let out = a.pgdr.run(&["cat", &format!("wal/{}/{seg}", &seg[..16])]);
    assert_success(&out, "the segment archived with a full spool");
    assert!(spool.files().is_empty(), "left in the full spool: {:?}", spool.files());
}

/// Run with an open-file limit of `soft` (hard limit `hard`).
fn with_nofile(cmd: &mut std::process::Command, soft: u64, hard: u64) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

/// Too few file descriptors: every verb fails with one line that says so and how to
/// raise the limit; `wal-fetch` stops recovery (126) rather than answer "absent" (1);
/// `wal-push` never says "archived" for a segment it did not store; nothing half-made
/// is listed. A low soft limit under a higher hard one is raised by pgdr itself. An
/// unwritable (read-only) spool does not stop archiving.
#[test]
fn too_many_open_files_and_an_unwritable_spool() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 4);
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let archived = a.switch_and_wait();
    let listed = || a.pgdr.list_json().len();
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let dest = dir.join("pg_wal").join("RECOVERYXLOG");
    pg_owned_dir(dest.parent().unwrap());
    let stored = |seg: &str| a.pgdr.run(&["cat", &format!("wal/{}/{seg}", &seg[..16])]);

    // Runs at a limit: the failures, each checked; whether it succeeded.
    let mut failures = Vec::new();
    let mut at_limit = |args: &[&str], limit: u64| -> bool {
        let out = with_nofile(&mut a.pgdr.command(args), limit, limit);
        assert_clean_stderr(&out);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // A positive "absent" (the repository answered: no such file) is wal-fetch's
        // success for a segment the archive does not have.
        if out.status.success() || (args[0] == "wal-fetch" && out.status.code() == Some(1) && err.is_empty()) {
            return true;
        }
        let want = if args[0] == "wal-fetch" { 126 } else { 1 };
        assert_eq!(out.status.code(), Some(want), "{args:?} with {limit} files: {err}");
        if args[0] != "check" {
            // One error line (a warning about what could not be tidied may precede it).
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("pgdr: error")).collect();
            assert_eq!(
                errors.len(),
                1,
                "{args:?} with {limit} files, not one error line: {err}"
            );
            assert!(
                errors[0].contains("open-file limit"),
                "{args:?} with {limit} files: no next step: {err}"
            );
        }
        failures.push(format!("{limit} {args:?}"));
        false
    };
    for limit in [8, 11, 14] {
        let before = listed();
        let backups = [&["backup", "--kind", "physical"][..], &["backup", "--kind", "logical"]];
        let made = backups.iter().filter(|args| at_limit(args, limit)).count();
        assert_eq!(listed(), before + made, "a failed backup is listed");
        let fetches: [&[&str]; 2] = [
            &["wal-fetch", "00000001000000FF000000FF", dest.to_str().unwrap()],
            &["wal-fetch", &archived, dest.to_str().unwrap()],
        ];
        for args in fetches {
            let _ = std::fs::remove_file(&dest);
            if !at_limit(args, limit) {
                assert!(!dest.exists(), "wal-fetch put something in place");
            } else if args[1] == archived {
                assert!(std::fs::read(&dest).unwrap() == stored(&archived).stdout);
            }
        }
        at_limit(&["check"], limit);
    }
    // Everything listed is whole; what the failed runs left is cleaned by check.
    a.pgdr.ok(&["check", "--clean-orphans"]);
    for label in a.pgdr.list_json() {
        let label = label["label"].as_str().unwrap().to_string();
        assert_success(&a.pgdr.run(&["verify", "--backup", &label]), &format!("verify {label}"));
    }

    // A soft limit of 14 under a hard limit of 4096: pgdr raises its own and succeeds.
    let before = listed();
    let out = with_nofile(&mut a.pgdr.command(&["backup", "--kind", "physical"]), 14, 4096);
    assert_success(&out, "a backup with a soft limit of 14");
    assert_eq!(listed(), before + 1);

    // wal-push of a whole segment PostgreSQL has not archived (its archive_command
    // failing meanwhile): "archived" only when it is.
    let command = c.psql("postgres", "SHOW archive_command");
    c.psql("postgres", "ALTER SYSTEM SET archive_command = '/bin/false'");
    c.psql("postgres", "SELECT pg_reload_conf()");
    c.psql(
        "postgres",
        "CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g",
    );
    let seg = c.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    c.psql("postgres", "SELECT pg_switch_wal()");
    let path = c.data.join("pg_wal").join(&seg);
    let mut pushed = false;
    for limit in [8, 11, 14] {
        pushed |= at_limit(&["wal-push", path.to_str().unwrap()], limit);
        assert_eq!(
            stored(&seg).status.success(),
            pushed,
            "{seg} against wal-push's answers"
        );
    }
    let out = with_nofile(&mut a.pgdr.command(&["wal-push", path.to_str().unwrap()]), 14, 4096);
    assert_success(&out, "wal-push with a soft limit of 14");
    assert!(stored(&seg).stdout == std::fs::read(&path).unwrap(), "{seg} differs");
    assert!(failures.len() >= 5, "too few failures to show anything: {failures:?}");
    println!("failed as expected: {failures:#?}");
    c.psql(
        "postgres",
        &format!("ALTER SYSTEM SET archive_command = '{}'", command.replace('\'', "''")),
    );
    c.psql("postgres", "SELECT pg_reload_conf()");

    // A read-only spool: archiving goes on (the spool only speeds up bursts).
    let spool = Small::mount(&a.pgdr.dir.join("ro-spool"), "1m");
    std::fs::set_permissions(&spool.0, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&spool.0)
        .status()
        .unwrap();
    assert!(status.success(), "cannot remount the spool read-only");
    let text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("spool_dir") {
                format!("spool_dir = \"{}\"", spool.0.display())
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&a.pgdr.config, text.join("\n")).unwrap();
    let seg = a.switch_and_wait();
    let out = stored(&seg);
    assert_success(&out, "the segment archived with a read-only spool");
    assert!(out.stdout == std::fs::read(c.data.join("pg_wal").join(&seg)).unwrap());
    let want = c.content_hashes("postgres");
    let r = a.pgdr.restore_started(&[]);
    assert_eq!(content_hashes_at(r.port, "postgres"), want);
}

/// A restore whose flush to disk fails (a write-back error; injected as EIO from the
/// syncfs of a filesystem it wrote to) fails with one line naming the place, leaves
/// the restore marked unfinished and not set up to start, and the same command then
/// finishes it. Here the backup's tablespace goes back to where it was, as on a new
/// host with the same paths. Before: syncfs's result was ignored; a tablespace left in
/// its place was neither flushed nor given to postgres (a restore run as root left it
/// root's); and a restore interrupted after writing there could not be finished, its
/// "non-empty" tablespace place refused.
#[test]
fn a_restore_whose_flush_fails_says_so_and_the_same_command_finishes_it() {
    let a = Archiving::start();
    let ts_dir = pg_owned_dir(&a.pgdr.dir.join("ts"));
    a.cluster.psql(
        "postgres",
        &format!("CREATE TABLESPACE kept LOCATION '{}'", ts_dir.display()),
    );
    a.cluster.psql(
        "postgres",
        "CREATE TABLE far TABLESPACE kept AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let want = a.cluster.content_hashes("postgres");
    // A new host with the same paths: the old server and its tablespace are gone.
    let mut cluster = a.cluster;
    cluster.stop();
    std::fs::rename(&ts_dir, a.pgdr.dir.join("ts-of-the-old-host")).unwrap();

    let out_dir = TestDir::new();
    chown_postgres(out_dir.path());
    let data = out_dir.join("data");
    let sock = pg_owned_dir(&out_dir.join("sock"));
    let port = free_port();
    let restore = [
        "restore",
        "--kind",
        "physical",
        "--to",
        data.to_str().unwrap(),
        "--target",
        "immediate",
        "--start",
        "--port",
        &port.to_string(),
        "--socket-dir",
        sock.to_str().unwrap(),
    ];
    for failing in [&data, &ts_dir] {
        let mut cmd = a.pgdr.command(&restore);
        cmd.env("PGDR_TEST_FAIL_AT", format!("restore-syncfs {}", failing.display()));
        let out = cmd.output().unwrap();
        let line = assert_fails(&out, 1, "flushing the restored files");
        assert!(line.contains(failing.to_str().unwrap()), "{line}");
        assert!(line.contains("same command again"), "{line}");
        assert!(data.join("pgdr-restore-in-progress").is_file(), "not marked unfinished");
        assert!(
            !data.join("recovery.signal").exists(),
            "set up to start after a failed flush"
        );
        assert!(!data.join("postmaster.pid").exists(), "started after a failed flush");
    }
    let out = a.pgdr.run(&restore);
    assert_success(&out, "the same restore again");
    // A flush failed: what reads back identical may be so only in memory, so every
    // file was written again.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(", 0 unchanged"), "{stdout}");
    assert!(!data.join("pgdr-restore-in-progress").exists());
    assert!(!ts_dir.join(".pgdr-restore-in-progress").exists());
    assert_eq!(content_hashes_at(port, "postgres"), want);
    // The tablespace's table, read by the server (as postgres) from its old place.
    let far = psql_at(port, "postgres", "SELECT count(*) FROM far");
    assert_eq!(String::from_utf8_lossy(&far.stdout).trim(), "5000", "{far:?}");
    pg_ctl_stop(&data);

    // --delta over that directory, the tablespace's disk replaced (empty): stopped
    // part-way after writing the tablespace, the same --delta command finishes it.
    for entry in std::fs::read_dir(&ts_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let mut delta = restore.to_vec();
    delta.push("--delta");
    let mut cmd = a.pgdr.command(&delta);
    cmd.env("PGDR_TEST_FAIL_AT", format!("restore-syncfs {}", ts_dir.display()));
    assert_fails(&cmd.output().unwrap(), 1, "flushing the restored files");
    assert!(
        std::fs::read_dir(&ts_dir).unwrap().count() > 1,
        "nothing written to the tablespace"
    );
    // A marker from another restore (another id) does not make the place this one's:
    // refused before anything is removed from it.
    let marker = ts_dir.join(".pgdr-restore-in-progress");
    let ours = std::fs::read_to_string(&marker).unwrap();
    let theirs: String = ours
        .lines()
        .map(|l| {
            if l.starts_with("id ") {
                "id 0000another0000\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&marker, &theirs).unwrap();
    let before = walk(&ts_dir).len();
    assert_fails(&a.pgdr.run(&delta), 2, "not empty");
    assert_eq!(
        walk(&ts_dir).len(),
        before,
        "files removed from a place not proven this restore's"
    );
    std::fs::write(&marker, &ours).unwrap();
    let out = a.pgdr.run(&delta);
    assert_success(&out, "the same --delta restore again");
    assert_eq!(content_hashes_at(port, "postgres"), want);
    pg_ctl_stop(&data);
}
