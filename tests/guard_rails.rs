//! Issue 26: the everyday mistakes (the wrong user, the wrong server, the wrong
//! directory, the wrong time) are refused up front with one line naming the problem
//! and the next step, and nothing in the repository or on disk changes.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

/// Every entry of a local repository with its owner and content, WAL left out (the
/// cluster archives on its own meanwhile).
fn local_snapshot(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
    repo_files(root)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/wal/"))
        .map(|p| {
            let uid = std::fs::metadata(&p).unwrap().uid();
            let bytes = std::fs::read(&p).unwrap();
            (p.display().to_string(), uid, bytes)
        })
        .collect()
}

/// The bucket a configuration's `s3://BUCKET/...` URL names.
fn bucket_of(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let url = text.split("s3://").nth(1).unwrap();
    url.split('/').next().unwrap().to_string()
}

fn s3_snapshot(bucket: &str) -> Vec<String> {
    let mut keys: Vec<String> = s3().keys(bucket, "").into_iter().filter(|k| !k.contains("/wal/")).collect();
    keys.sort();
    keys
}

/// The first mistake of the issue: `pgdr backup` as root against a repository that
/// belongs to postgres exited 0 and left root-owned directories that stopped
/// postgres's later jobs (keep marks, expire, the nightly backup); `check` as root
/// showed all ✓. Now the owner's jobs refuse as root, naming the user to run as, and
/// the repository is unchanged; `check` says who owns it and names root-owned entries;
/// a verify run as root (allowed) leaves only postgres's files behind.
#[test]
fn root_is_refused_the_jobs_of_a_repository_that_belongs_to_postgres() {
    assert!(is_root(), "this test makes a repository that belongs to postgres: it needs root");
    for kind in [RepoKind::Local, RepoKind::S3] {
        let a = Archiving::start_with(kind);
        a.cluster.psql("postgres", "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 100) g");
        a.pgdr.ok(&["backup"]);
        let snapshot = || match &a.pgdr.repo_dir {
            Some(root) => format!("{:?}", local_snapshot(root)),
            None => format!("{:?}", s3_snapshot(&bucket_of(&a.pgdr.config))),
        };
        let before = snapshot();
        let mut root = a.pgdr.clone_setup();
        root.as_postgres = false;
        let by = if a.pgdr.repo_dir.is_some() { "the repository" } else { "the key file" };
        for args in [
            &["backup"][..],
            &["backup", "--kind", "physical"],
            &["expire"],
            &["key", "rotate"],
            &["copy"],
        ] {
            let out = root.run(args);
            let said = assert_fails(&out, 2, "belongs to postgres: run pgdr as postgres");
            assert!(said.contains(by) && said.contains("nothing was written"), "{args:?}: {said}");
        }
        assert_eq!(snapshot(), before, "a refused job changed the repository ({by})");
        // `check` as root says whose the repository is.
        let out = root.run(&["check"]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("⚠ owner") && said.contains("belongs to postgres, but pgdr runs as root"),
            "{said}"
        );
        // Verify may run as root: what it writes belongs to postgres.
        root.ok(&["verify", "--kind", "logical"]);
        if let Some(repo) = &a.pgdr.repo_dir {
            let (postgres, _) = postgres_ids();
            for p in repo_files(repo) {
                let meta = std::fs::metadata(&p).unwrap();
                assert_eq!(meta.uid(), postgres, "{} was left to root", p.display());
                let dir = std::fs::metadata(p.parent().unwrap()).unwrap();
                assert_eq!(dir.uid(), postgres, "{} was left to root", p.parent().unwrap().display());
            }
            let out = a.pgdr.ok(&["check"]);
            assert!(out.contains("✓ owner") && !out.contains("ownership"), "{out}");
            // A directory root made by hand: check names it, and how to give it back.
            let planted = repo.join("test/backups/by-root");
            std::fs::create_dir_all(&planted).unwrap();
            let out = a.pgdr.run(&["check"]);
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(!out.status.success(), "{said}");
            assert!(
                said.contains("✗ ownership") && said.contains("by-root (root)") && said.contains("chown -R postgres:"),
                "{said}"
            );
            std::fs::remove_dir(&planted).unwrap();
        }
        // And the owner's own jobs still work.
        a.pgdr.ok(&["backup"]);
        a.pgdr.ok(&["expire"]);
    }
}

/// The second mistake: the configuration points by mistake at a restored copy of
/// production on the same host (same system identifier, timeline 2, archiving off).
/// `check` passed and a backup of the copy was stored as production's newest, so the
/// next `restore --backup latest` brought back the copy's data. Now a logical and a
/// physical backup are refused before anything is written, and `check` says why: by
/// pgdr's marker in the copy and, with the marker removed, by its timeline.
#[test]
fn a_backup_of_a_restored_copy_is_refused() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 1000) g");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.pgdr.ok(&["backup"]);
    let copy = a.pgdr.restore_started(&[]);
    assert_eq!(copy.psql("postgres", "SELECT count(*) FROM t"), "1000");
    assert_eq!(copy.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    let root = a.pgdr.repo_dir.clone().unwrap();
    let before = local_snapshot(&root);
    let mut wrong = a.pgdr.clone_setup();
    wrong.set_env(
        "PGDR_POSTGRES_URL",
        &format!("postgresql://postgres@127.0.0.1:{}/postgres", copy.port),
    );
    for args in [&["backup"][..], &["backup", "--kind", "physical"]] {
        let said = assert_fails(&wrong.run(args), 2, "is a copy pgdr restored");
        assert!(said.contains("nothing was written") && said.contains("[postgres] url"), "{said}");
    }
    assert_eq!(local_snapshot(&root), before, "a refused backup changed the repository");
    let out = wrong.run(&["check"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && said.contains("✗ primary") && said.contains("copy pgdr restored"), "{said}");
    // Without pgdr's marker (a DBA removed it), the timeline gives the copy away: the
    // archive has never seen timeline 2.
    copy.psql("postgres", "ALTER SYSTEM RESET \"pgdr.copy\"");
    copy.psql("postgres", "SELECT pg_reload_conf()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while copy.psql("postgres", "SELECT coalesce(current_setting('pgdr.copy', true), '')") != "" {
        assert!(std::time::Instant::now() < deadline, "pgdr.copy is still set after the reload");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let said = assert_fails(&wrong.run(&["backup"]), 2, "timeline 2, which this repository's archive has never seen");
    assert!(said.contains("nothing was written"), "{said}");
    assert_eq!(local_snapshot(&root), before, "a refused backup changed the repository");
    // Production itself still backs up, and check says it is the primary.
    let out = a.pgdr.ok(&["check"]);
    assert!(out.contains("✓ primary") && out.contains("is the repository's primary"), "{out}");
    a.pgdr.ok(&["backup"]);
}
