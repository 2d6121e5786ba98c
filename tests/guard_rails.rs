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
    let mut keys: Vec<String> = s3()
        .keys(bucket, "")
        .into_iter()
        .filter(|k| !k.contains("/wal/"))
        .collect();
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
    assert!(
        is_root(),
        "this test makes a repository that belongs to postgres: it needs root"
    );
    for kind in [RepoKind::Local, RepoKind::S3] {
        let a = Archiving::start_with(kind);
        a.cluster.psql(
            "postgres",
            "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 100) g",
        );
        a.pgdr.ok(&["backup"]);
        let snapshot = || match &a.pgdr.repo_dir {
            Some(root) => format!("{:?}", local_snapshot(root)),
            None => format!("{:?}", s3_snapshot(&bucket_of(&a.pgdr.config))),
        };
        let before = snapshot();
        let mut root = a.pgdr.clone_setup();
        root.as_postgres = false;
        let by = if a.pgdr.repo_dir.is_some() {
            "the repository"
        } else {
            "the key file"
        };
        for args in [
            &["backup"][..],
            &["backup", "--kind", "physical"],
            &["expire"],
            &["key", "rotate"],
            &["copy"],
        ] {
            let out = root.run(args);
            let said = assert_fails(&out, 2, "belongs to postgres: run pgdr as postgres");
            assert!(
                said.contains(by) && said.contains("nothing was written"),
                "{args:?}: {said}"
            );
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
                assert_eq!(
                    dir.uid(),
                    postgres,
                    "{} was left to root",
                    p.parent().unwrap().display()
                );
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
    c.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 1000) g",
    );
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
        assert!(
            said.contains("nothing was written") && said.contains("[postgres] url"),
            "{said}"
        );
    }
    assert_eq!(local_snapshot(&root), before, "a refused backup changed the repository");
    let out = wrong.run(&["check"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("✗ primary") && said.contains("copy pgdr restored"),
        "{said}"
    );
    // Without pgdr's marker (a DBA removed it), the timeline gives the copy away: the
    // archive has never seen timeline 2.
    copy.psql("postgres", "ALTER SYSTEM RESET \"pgdr.copy\"");
    copy.psql("postgres", "SELECT pg_reload_conf()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !copy
        .psql("postgres", "SELECT coalesce(current_setting('pgdr.copy', true), '')")
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pgdr.copy is still set after the reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let said = assert_fails(
        &wrong.run(&["backup"]),
        2,
        "timeline 2, which this repository's archive has never seen",
    );
    assert!(said.contains("nothing was written"), "{said}");
    assert_eq!(local_snapshot(&root), before, "a refused backup changed the repository");
    // Production itself still backs up, and check says it is the primary.
    let out = a.pgdr.ok(&["check"]);
    assert!(
        out.contains("✓ primary") && out.contains("is the repository's primary"),
        "{out}"
    );
    a.pgdr.ok(&["backup"]);
}

/// Every file of a directory with its content.
fn dir_snapshot(root: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    repo_files(root)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// The third mistake: the error for a non-empty target suggested `--delta`, and on a
/// directory that held only a stray `notes.txt`, `--delta` deleted it without a word.
/// Now `--delta` works only in a data directory of this cluster; a directory without
/// PG_VERSION and another cluster's data directory are refused untouched.
#[test]
fn delta_is_refused_anywhere_but_a_data_directory_of_this_cluster() {
    let a = Archiving::start();
    a.cluster.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 500) g",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let d = TestDir::new();
    chown_postgres(d.path());
    let stray = pg_owned_dir(&d.join("stray"));
    std::fs::write(stray.join("notes.txt"), "the DBA's notes\n").unwrap();
    let restore = |to: &Path, delta: bool| {
        let mut args = vec!["restore", "--kind", "physical", "--to", to.to_str().unwrap()];
        if delta {
            args.push("--delta");
        }
        a.pgdr.run(&args)
    };
    let said = assert_fails(
        &restore(&stray, true),
        2,
        "is not a PostgreSQL data directory (no PG_VERSION; it holds notes.txt)",
    );
    assert!(said.contains("nothing was changed"), "{said}");
    assert_eq!(
        std::fs::read_to_string(stray.join("notes.txt")).unwrap(),
        "the DBA's notes\n"
    );
    // Without --delta the error no longer offers it for such a directory.
    let said = assert_fails(&restore(&stray, false), 2, "not a PostgreSQL data directory");
    assert!(!said.contains("--delta"), "{said}");
    // Another cluster's data directory (stopped): refused, every file as it was.
    let mut other = Cluster::start();
    other.stop();
    let before = dir_snapshot(&other.data);
    let said = assert_fails(
        &restore(&other.data, true),
        2,
        "is the data directory of another cluster",
    );
    assert!(said.contains("nothing was changed"), "{said}");
    assert_eq!(dir_snapshot(&other.data), before, "another cluster's files changed");
    // This cluster's own earlier restore: --delta goes ahead and removes what the
    // backup does not have.
    let good = d.join("good");
    let out = restore(&good, false);
    assert_success(&out, "restore into a new directory");
    std::fs::write(good.join("base/stray-file"), "x").unwrap();
    let said = assert_fails(&restore(&good, false), 2, "a data directory of this cluster");
    assert!(said.contains("--delta"), "{said}");
    let out = restore(&good, true);
    assert_success(&out, "restore --delta into this cluster's data directory");
    assert!(!good.join("base/stray-file").exists());
}

/// The fourth mistake: a `--target-time` later than the archive's end was caught only
/// by PostgreSQL at startup, after the directory was written. Now it is refused up
/// front, as is an LSN past the end, suggesting `--target latest`; nothing is written.
/// Without `--start`, the next step printed gives the copy a port of its own.
#[test]
fn a_target_after_the_archives_end_is_refused_up_front() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 500) g",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.switch_and_wait();
    let later = c.psql("postgres", "SELECT (now() + interval '1 hour')::text");
    let past_lsn = c.psql("postgres", "SELECT (pg_current_wal_lsn() + 200000000)::text");
    let d = TestDir::new();
    chown_postgres(d.path());
    let to = d.join("data");
    let to = to.to_str().unwrap();
    let said = assert_fails(
        &a.pgdr
            .run(&["restore", "--kind", "physical", "--to", to, "--target-time", &later]),
        2,
        "is after the end of the archive",
    );
    assert!(
        said.contains("--target latest") && said.contains("nothing was written"),
        "{said}"
    );
    assert!(!Path::new(to).exists(), "a refused restore made {to}");
    let said = assert_fails(
        &a.pgdr
            .run(&["restore", "--kind", "physical", "--to", to, "--target-lsn", &past_lsn]),
        2,
        "is past the end of the archive",
    );
    assert!(said.contains("--target latest"), "{said}");
    assert!(!Path::new(to).exists(), "a refused restore made {to}");
    // Within the archive, the restore goes ahead; the next step names a port that
    // is not production's.
    let out = a.pgdr.ok(&["restore", "--kind", "physical", "--to", to]);
    let step = out
        .lines()
        .find(|l| l.contains("pg_ctl -D"))
        .unwrap_or_else(|| panic!("{out}"));
    let port: u16 = step
        .split("-p ")
        .nth(1)
        .and_then(|p| p.split('\'').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {step}"));
    assert_ne!(port, c.port, "{step}");
}

/// The fifth group: what the output did not say. A mistyped environment variable was
/// reported as an unknown key of the configuration file; a missing key file did not
/// name the next step; a physical label given to a logical restore was "not found";
/// `list` gave no WAL ranges.
#[test]
fn small_mistakes_get_one_clear_line_and_list_shows_the_wal() {
    let a = Archiving::start();
    a.cluster.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 100) g",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.switch_and_wait();
    // A typo in a variable name: named as the variable.
    let out = a
        .pgdr
        .command(&["list"])
        .env("PGDR_REPOSITRY_URL", "file:///nowhere")
        .output()
        .unwrap();
    let said = assert_fails(
        &out,
        2,
        "the environment variable PGDR_REPOSITRY_URL names no pgdr setting",
    );
    assert!(!said.contains(a.pgdr.config.to_str().unwrap()), "{said}");
    // The key file is missing: the next step is named.
    let moved = a.pgdr.key_file.with_extension("away");
    std::fs::rename(&a.pgdr.key_file, &moved).unwrap();
    let said = assert_fails(&a.pgdr.run(&["list"]), 2, "does not exist");
    assert!(
        said.contains("pgdr init --generate-key") && said.contains("PGDR_KEY"),
        "{said}"
    );
    std::fs::rename(&moved, &a.pgdr.key_file).unwrap();
    // A physical label given to a (default, logical) restore.
    let list = a.pgdr.list_json();
    let label = list[0]["label"].as_str().unwrap().to_string();
    let said = assert_fails(&a.pgdr.run(&["restore", "--backup", &label]), 2, "is a physical backup");
    assert!(said.contains("--kind physical --to DIR"), "{said}");
    // list: the backup's WAL start and stop, and the archive's range per timeline.
    let wal = &list[0]["wal"];
    assert!(wal["start_segment"].as_str().unwrap().starts_with("00000001"), "{wal}");
    assert!(wal["stop_lsn"].as_str().unwrap().contains('/'), "{wal}");
    let text = a.pgdr.ok(&["list"]);
    assert!(
        text.contains(&format!("WAL {} (", wal["start_lsn"].as_str().unwrap())),
        "{text}"
    );
    let archive = text
        .lines()
        .find(|l| l.trim_start().starts_with("timeline 1:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        archive.contains(wal["start_segment"].as_str().unwrap()) || archive.contains(" .. "),
        "{text}"
    );
}
