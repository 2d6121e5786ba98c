//! Full disks (issue 14) on small filesystems the test mounts (tmpfs; the tests run as
//! root): a restore target that fills up, `wal-fetch` writing into a full `pg_wal`, and
//! a full WAL spool. Each fails with one clear line and the documented exit code — for
//! `wal-fetch` never 1, which PostgreSQL would take for the end of the archive — and
//! leaves no partial file behind across PostgreSQL's retries.

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
